//! A certificate DTLS client: verifies the server, sends a message N times, prints each reply.
//!
//! ```text
//! cargo run --example pki_client -- --connect 127.0.0.1:5684 --ca ca.pem --server-name server.test --message hello
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use openssl_dtls::DtlsClientContext;

const USAGE: &str = "pki_client --ca PEM --message TEXT [--connect ADDR] [--server-name NAME | --no-verify-name] [--cert PEM --key PEM] [--cipher STR] [--count N]
  --connect      server address (default 127.0.0.1:5684)
  --ca           trust roots for the server certificate, PEM
  --server-name  name sent (SNI) and checked against the certificate; without it the
                 certificate must name the server's IP address
  --no-verify-name  DANGEROUS: accept any certificate the CA issued, for any name or address
  --cert/--key   client certificate and key, PEM (mutual authentication)
  --cipher       OpenSSL cipher string (default: the certificate preset)
  --message      the text to send
  --count        how many times (default 1)";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = common::Args::parse(USAGE, &["no-verify-name"]);
    let message = args.required(USAGE, "message").to_owned();
    let count: usize = args
        .get_or("count", "1")
        .parse()
        .unwrap_or_else(|_| common::fail(USAGE, "--count is not a number"));
    let peer = common::peer(USAGE, &args);
    let mut builder = DtlsClientContext::builder();
    builder.root_certificates_file(args.required(USAGE, "ca"));
    match (args.get("cert"), args.get("key")) {
        (Some(cert), Some(key)) => {
            builder.certificate_chain_file(cert).private_key_file(key);
        }
        (None, None) => {}
        _ => common::fail(USAGE, "--cert and --key go together"),
    }
    if let Some(cipher) = args.get("cipher") {
        builder.ciphers(cipher);
    }
    if args.switch("no-verify-name") {
        eprintln!("warning: --no-verify-name: the server's name and address are not checked");
        builder.danger_skip_server_name_check();
    }
    let ctx = builder
        .build()
        .unwrap_or_else(|e| common::fail(USAGE, &e.to_string()));
    let client = common::client_for(USAGE, peer);
    let result = match args.get("server-name") {
        Some(name) => client.connect_named(peer, name, &ctx, Duration::from_secs(10)),
        None => client.connect(peer, &ctx, Duration::from_secs(10)),
    };
    let conn = result.unwrap_or_else(|e| {
        eprintln!("error: handshake with {peer} failed: {e}");
        std::process::exit(1)
    });
    common::send_and_print(&conn, &message, count);
}
