//! A certificate DTLS client: verifies the server, sends a message N times, prints each reply.
//!
//! ```text
//! cargo run --example pki_client -- --connect 127.0.0.1:5684 --ca ca.pem --server-name server.test --message hello
//! ```

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use openssl_dtls::DtlsClientContext;

const USAGE: &str = "\
usage: pki_client --ca PEM --message TEXT [--connect ADDR] [--bind ADDR]
                  [--server-name NAME | --no-verify-name] [--cert PEM --key PEM] [--cipher STR]
                  [--count N]
  --connect      server address (default 127.0.0.1:5684)
  --bind         local address to send from (default: any port of the server's address family)
  --ca           trust roots for the server certificate, PEM
  --server-name  name sent (SNI) and checked against the certificate; without it the
                 certificate must name the server's IP address
  --no-verify-name  DANGEROUS: accept any certificate the CA issued, for any name or address
  --cert/--key   client certificate and key, PEM (mutual authentication)
  --cipher       OpenSSL cipher string (default: the certificate preset)
  --message      the text to send
  --count        how many times (default 1)
  -h, --help     this text";

struct Options {
    connect: SocketAddr,
    bind: Option<SocketAddr>,
    ca: PathBuf,
    server_name: Option<String>,
    no_verify_name: bool,
    client_cert: Option<(PathBuf, PathBuf)>,
    cipher: Option<String>,
    message: String,
    count: usize,
}

fn parse(p: &mut lexopt::Parser) -> Result<Options, lexopt::Error> {
    use lexopt::prelude::*;
    let mut connect = common::socket_addr(common::DEFAULT_ADDR)?;
    let mut bind = None;
    let (mut ca, mut cert, mut key) = (None, None, None);
    let mut server_name = None;
    let mut no_verify_name = false;
    let mut cipher = None;
    let mut message = None;
    let mut count = 1;
    while let Some(arg) = p.next()? {
        match arg {
            Long("connect") => connect = p.value()?.parse_with(common::socket_addr)?,
            Long("bind") => bind = Some(p.value()?.parse_with(common::socket_addr)?),
            Long("ca") => ca = Some(PathBuf::from(p.value()?)),
            Long("server-name") => server_name = Some(p.value()?.string()?),
            Long("no-verify-name") => no_verify_name = true,
            Long("cert") => cert = Some(PathBuf::from(p.value()?)),
            Long("key") => key = Some(PathBuf::from(p.value()?)),
            Long("cipher") => cipher = Some(p.value()?.string()?),
            Long("message") => message = Some(p.value()?.string()?),
            Long("count") => count = p.value()?.parse_with(common::count)?,
            Short('h') | Long("help") => return Err(common::help(p, USAGE)),
            _ => return Err(arg.unexpected()),
        }
    }
    let client_cert = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--cert and --key go together".into()),
    };
    Ok(Options {
        connect,
        bind,
        ca: ca.ok_or("--ca is required")?,
        server_name,
        no_verify_name,
        client_cert,
        cipher,
        message: message.ok_or("--message is required")?,
        count,
    })
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let o = common::parse_args(USAGE, parse);
    let mut builder = DtlsClientContext::builder();
    builder.root_certificates_file(&o.ca);
    if let Some((cert, key)) = &o.client_cert {
        builder.certificate_chain_file(cert).private_key_file(key);
    }
    if let Some(cipher) = &o.cipher {
        builder.ciphers(cipher);
    }
    if o.no_verify_name {
        eprintln!("warning: --no-verify-name: the server's name and address are not checked");
        builder.danger_skip_server_name_check();
    }
    let ctx = builder
        .build()
        .unwrap_or_else(|e| common::fail(USAGE, &e.to_string()));
    let client = common::bind_client(o.bind, o.connect);
    let timeout = Duration::from_secs(10);
    let result = match &o.server_name {
        Some(name) => client.connect_named(o.connect, name, &ctx, timeout),
        None => client.connect(o.connect, &ctx, timeout),
    };
    let conn = result
        .unwrap_or_else(|e| common::die(&format!("handshake with {} failed: {e}", o.connect)));
    common::send_and_print(&conn, &o.message, o.count);
}
