//! A PSK DTLS echo server: echoes every datagram back to its sender.
//!
//! ```text
//! cargo run --example psk_server -- --listen 127.0.0.1:5684 --identity Client_identity --key-hex 73656372657450534b
//! openssl s_client -dtls1_2 -connect 127.0.0.1:5684 -psk 73656372657450534b -psk_identity Client_identity -cipher PSK-AES128-CCM8
//! ```

#[path = "common/mod.rs"]
mod common;

use openssl_dtls::{DtlsServer, DtlsServerContext};

const USAGE: &str =
    "psk_server [--listen ADDR] [--identity ID] [--key-hex HEX] [--hint H] [--cipher STR] [--compact]
  --listen    address to bind (default 127.0.0.1:5684)
  --identity  the PSK identity accepted (default Client_identity)
  --key-hex   the key, in hex (default 73656372657450534b = \"secretPSK\")
  --hint      PSK identity hint sent to clients
  --cipher    OpenSSL cipher string (default: the PSK preset, PSK-AES128-CCM8 first)
  --compact   compact connections: free each SSL after the handshake (about 1 KB per idle peer)";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = common::Args::parse(USAGE, &["compact"]);
    let identity = args
        .get_or("identity", "Client_identity")
        .as_bytes()
        .to_vec();
    let key = common::hex(USAGE, args.get_or("key-hex", common::DEFAULT_KEY_HEX));
    let mut builder = DtlsServerContext::builder();
    builder.psk_key_store(move |id| (id == identity.as_slice()).then(|| key.clone()));
    if let Some(hint) = args.get("hint") {
        builder.identity_hint(hint.as_bytes());
    }
    if let Some(cipher) = args.get("cipher") {
        builder.ciphers(cipher);
    }
    builder.compact_connections(args.switch("compact"));
    let ctx = builder
        .build()
        .unwrap_or_else(|e| common::fail(USAGE, &e.to_string()));
    let server = DtlsServer::bind(args.get_or("listen", "127.0.0.1:5684"), ctx)
        .unwrap_or_else(|e| common::fail(USAGE, &format!("bind: {e}")));
    common::echo_forever(server)
}
