//! A PSK server and client in one process, exchanging messages over real UDP on loopback.
//!
//! ```text
//! cargo run --example demo            # RUST_LOG=debug shows the handshake
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use openssl_dtls::{DtlsClient, DtlsClientContext, DtlsServer, DtlsServerContext, PskCredentials};

const IDENTITY: &[u8] = b"Client_identity";
const KEY: &[u8] = b"secretPSK";

const USAGE: &str = "\
usage: demo
A PSK server and client in one process, exchanging three messages over UDP on loopback.
RUST_LOG=debug shows the handshake.
  -h, --help  this text";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    common::parse_args(USAGE, common::only_help(USAGE));
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    // The server: PSK key store (identity -> key), default PSK ciphers (PSK-AES128-CCM8 first).
    let server_ctx = DtlsServerContext::builder()
        .psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
        .identity_hint(b"openssl-dtls demo")
        .build()?;
    let server = DtlsServer::bind("127.0.0.1:0", server_ctx)?;
    let addr = server.local_addr();
    println!("server: listening on {addr}");

    let server_thread = std::thread::spawn(move || -> Result<(), openssl_dtls::Error> {
        let conn = server.accept()?;
        println!(
            "server: {} connected with identity {:?}, {} {}",
            conn.peer_addr(),
            String::from_utf8_lossy(conn.psk_identity().unwrap_or_default()),
            conn.protocol_version().unwrap_or("?"),
            conn.cipher().unwrap_or("?"),
        );
        let mut buf = [0u8; 1500];
        loop {
            let n = conn.recv(&mut buf)?;
            if n == 0 {
                println!("server: the client closed the connection");
                break;
            }
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            println!("server: received {text:?}");
            conn.send(format!("echo: {text}").as_bytes())?;
        }
        let stats = server.stats();
        println!(
            "server: {} datagrams in, {} out, {} HelloVerifyRequest(s), {} handshake(s) completed",
            stats.datagrams_in,
            stats.datagrams_out,
            stats.hello_verify_requests,
            stats.handshakes_completed
        );
        Ok(())
    });

    // The client: fixed PSK credentials; one socket could hold connections to several servers.
    let client_ctx = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(IDENTITY, KEY))
        .build()?;
    let client = DtlsClient::bind("127.0.0.1:0")?;
    let conn = client.connect(addr, &client_ctx, Duration::from_secs(5))?;
    println!(
        "client: connected to {} with {} (up to {} bytes per datagram)",
        conn.peer_addr(),
        conn.cipher().unwrap_or("?"),
        conn.data_mtu()
    );
    let mut buf = [0u8; 1500];
    for message in [
        "Hello World",
        "Datagrams keep their boundaries",
        "Bye World",
    ] {
        conn.send(message.as_bytes())?;
        let n = conn.recv(&mut buf)?;
        println!("client: got {:?}", String::from_utf8_lossy(&buf[..n]));
    }
    conn.close();
    server_thread
        .join()
        .map_err(|_| "server thread panicked")??;
    println!("demo: done");
    Ok(())
}
