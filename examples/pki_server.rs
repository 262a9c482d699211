//! A certificate DTLS echo server.
//!
//! ```text
//! cargo run --example pki_server -- --cert server.pem --key server.key [--ca ca.pem --require-client-cert]
//! ```

#[path = "common/mod.rs"]
mod common;

use openssl_dtls::{ClientAuth, DtlsServer, DtlsServerContext};

const USAGE: &str = "pki_server --cert PEM --key PEM [--listen ADDR] [--ca PEM --require-client-cert] [--cipher STR]
  --listen               address to bind (default 127.0.0.1:5684)
  --cert                 certificate chain, PEM (leaf first)
  --key                  private key, PEM
  --ca                   trust roots for client certificates, PEM
  --require-client-cert  fail handshakes without a verified client certificate
  --cipher               OpenSSL cipher string (default: the certificate preset)";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = common::Args::parse(USAGE, &["require-client-cert"]);
    let mut builder = DtlsServerContext::builder();
    builder
        .certificate_chain_file(args.required(USAGE, "cert"))
        .private_key_file(args.required(USAGE, "key"));
    if let Some(ca) = args.get("ca") {
        builder.root_certificates_file(ca);
        builder.client_auth(if args.switch("require-client-cert") {
            ClientAuth::Require
        } else {
            ClientAuth::Request
        });
    } else if args.switch("require-client-cert") {
        common::fail(USAGE, "--require-client-cert needs --ca");
    }
    if let Some(cipher) = args.get("cipher") {
        builder.ciphers(cipher);
    }
    let ctx = builder
        .build()
        .unwrap_or_else(|e| common::fail(USAGE, &e.to_string()));
    let server = DtlsServer::bind(args.get_or("listen", "127.0.0.1:5684"), ctx)
        .unwrap_or_else(|e| common::fail(USAGE, &format!("bind: {e}")));
    common::echo_forever(server)
}
