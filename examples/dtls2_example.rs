//! Dart dtls2's example (`example/example.dart`, dtls2 0.18) ported line by line: a PSK server
//! and a client in one program. The client says "Hello World", the server prints it, answers
//! "Bye World" and closes; the client prints the answer and closes; then the server closes.
//! The README's "Porting from dtls2" table maps each dtls2 name to ours.
//!
//! ```text
//! cargo run --example dtls2_example              # on [::1]:5684, as dtls2's
//! cargo run --example dtls2_example -- --port 0  # on any free port
//! ```
//!
//! Where dtls2 registers callbacks on streams (`listen(onData, onDone: ...)`), the blocking API
//! loops over `recv` on a thread; the comments quote the dtls2 line each block replaces.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use openssl_dtls::{
    DtlsClient, DtlsClientContext, DtlsConnection, DtlsServer, DtlsServerContext, PskCredentials,
};

const USAGE: &str = "\
usage: dtls2_example [--port PORT]
Dart dtls2's example, ported: a PSK server and a client exchanging one message each.
  --port      the server's port on [::] (default 5684; 0: any free port)
  -h, --help  this text";

// const _identity = "Client_identity";
const IDENTITY: &str = "Client_identity";
// const _preSharedKey = "secretPSK";
const PRE_SHARED_KEY: &str = "secretPSK";
// const _ciphers = "PSK-AES128-CCM8";
// (dtls2 0.18 also lowers `securityLevel` to 0 for CCM8 on OpenSSL 3; our builder does that
// itself when, and only when, the OpenSSL in use needs it.)
const CIPHERS: &str = "PSK-AES128-CCM8";

// final _serverKeyStore = {_identity: _preSharedKey};
fn server_key_store() -> HashMap<&'static str, &'static str> {
    HashMap::from([(IDENTITY, PRE_SHARED_KEY)])
}

// Iterable<int>? _serverPskCallback(List<int> identity)
fn server_psk_callback(identity: &[u8]) -> Option<Vec<u8>> {
    // final identityString = utf8.decode(identity);
    let identity_string = std::str::from_utf8(identity).ok()?;
    // final psk = _serverKeyStore[identityString]; if (psk == null) return null;
    let psk = server_key_store().get(identity_string).copied()?;
    // return utf8.encode(psk);
    Some(psk.as_bytes().to_vec())
}

// final context = DtlsClientContext(withTrustedRoots: true, ciphers: _ciphers,
//                                   pskCredentialsCallback: (identityHint) { ... });
fn context() -> openssl_dtls::Result<DtlsClientContext> {
    DtlsClientContext::builder()
        .with_trusted_roots(true)
        .ciphers(CIPHERS)
        .psk_credentials_callback(|identity_hint| {
            // print(identityHint);
            println!("{:?}", identity_hint.map(String::from_utf8_lossy));
            // return PskCredentials(identity: ..., preSharedKey: ...);
            Some(PskCredentials::new(IDENTITY, PRE_SHARED_KEY))
        })
        .build()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = common::parse_args(USAGE, |p| {
        use lexopt::prelude::*;
        let mut port = 5684;
        while let Some(arg) = p.next()? {
            match arg {
                Long("port") => port = p.value()?.parse()?,
                Short('h') | Long("help") => return Err(common::help(p, USAGE)),
                _ => return Err(arg.unexpected()),
            }
        }
        Ok(port)
    });
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();

    // const bindAddress = "::";
    let bind_address: IpAddr = "::".parse()?;
    // final peerAddress = InternetAddress("::1");
    let peer_address: IpAddr = "::1".parse()?;
    // const peerPort = 5684;
    let peer_port: u16 = port;

    // final dtlsServer = await DtlsServer.bind(bindAddress, peerPort, DtlsServerContext(
    //     pskKeyStoreCallback: _serverPskCallback, ciphers: _ciphers,
    //     identityHint: "This is the identity hint!"));
    let dtls_server = DtlsServer::bind(
        (bind_address, peer_port),
        DtlsServerContext::builder()
            .psk_key_store(server_psk_callback)
            .ciphers(CIPHERS)
            .identity_hint(b"This is the identity hint!")
            .build()?,
    )?;
    // With `--port 0` the system chose the port: the client connects to that one.
    let peer_port = dtls_server.local_addr().port();

    // dtlsServer.listen((connection) { ... }, onDone: () => print("Server closed."));
    let server = std::thread::spawn(move || -> openssl_dtls::Result<()> {
        for connection in dtls_server.incoming() {
            let connection = connection?;
            // connection.listen((event) async { ... }, onDone: () async { ... });
            listen(&connection, |connection, data| {
                // print(utf8.decode(event.data));
                println!("{}", String::from_utf8_lossy(data));
                // connection.send(utf8.encode("Bye World"));
                connection.send(b"Bye World")?;
                // await connection.close();
                connection.close();
                Ok(())
            })?;
            // onDone: await dtlsServer.close(); print("Server connection closed.");
            dtls_server.close();
            println!("Server connection closed.");
        }
        // onDone: () => print("Server closed.")
        println!("Server closed.");
        Ok(())
    });

    // final dtlsClient = await DtlsClient.bind(bindAddress, 0);
    let dtls_client = DtlsClient::bind((bind_address, 0))?;

    // final DtlsConnection connection;
    // try { connection = await dtlsClient.connect(peerAddress, peerPort, context,
    //                                             timeout: const Duration(seconds: 5)); }
    // on TimeoutException { await dtlsClient.close(); rethrow; }
    let connection = match dtls_client.connect(
        SocketAddr::new(peer_address, peer_port),
        &context()?,
        Duration::from_secs(5),
    ) {
        Ok(connection) => connection,
        Err(e) => {
            dtls_client.close();
            return Err(e.into());
        }
    };

    // connection..send(utf8.encode("Hello World"));
    // (sent before listening: a blocking `recv` below waits for the answer.)
    connection.send(b"Hello World")?;
    // connection..listen((datagram) async { ... }, onDone: () async { ... });
    listen(&connection, |connection, data| {
        // print(utf8.decode(datagram.data));
        println!("{}", String::from_utf8_lossy(data));
        // await connection.close(); print("Client connection closed.");
        connection.close();
        println!("Client connection closed.");
        Ok(())
    })?;
    // onDone: await dtlsClient.close(); print("Client closed.");
    dtls_client.close();
    println!("Client closed.");

    server.join().map_err(|_| "the server thread panicked")??;
    Ok(())
}

/// dtls2's `connection.listen(onData)`: calls `on_data` for every datagram until the
/// connection ends (dtls2's `onDone`, which the caller runs after this returns).
fn listen(
    connection: &DtlsConnection,
    mut on_data: impl FnMut(&DtlsConnection, &[u8]) -> openssl_dtls::Result<()>,
) -> openssl_dtls::Result<()> {
    let mut buf = [0u8; 1500];
    loop {
        match connection.recv(&mut buf)? {
            0 => return Ok(()),
            n => on_data(connection, &buf[..n])?,
        }
    }
}
