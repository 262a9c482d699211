//! A PSK DTLS client: sends a message N times and prints each reply.
//!
//! ```text
//! cargo run --example psk_client -- --connect 127.0.0.1:5684 --message hello --count 3
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use openssl_dtls::{DtlsClientContext, PskCredentials};

const USAGE: &str = "psk_client --message TEXT [--connect ADDR] [--identity ID] [--key-hex HEX] [--cipher STR] [--count N]
  --connect   server address (default 127.0.0.1:5684)
  --identity  PSK identity (default Client_identity)
  --key-hex   the key, in hex (default 73656372657450534b = \"secretPSK\")
  --cipher    OpenSSL cipher string (default: the PSK preset)
  --message   the text to send
  --count     how many times (default 1); exits 0 once every reply arrived";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = common::Args::parse(USAGE, &[]);
    let identity = args
        .get_or("identity", "Client_identity")
        .as_bytes()
        .to_vec();
    let key = common::hex(USAGE, args.get_or("key-hex", common::DEFAULT_KEY_HEX));
    let message = args.required(USAGE, "message").to_owned();
    let count: usize = args
        .get_or("count", "1")
        .parse()
        .unwrap_or_else(|_| common::fail(USAGE, "--count is not a number"));
    let peer = common::peer(USAGE, &args);
    let mut builder = DtlsClientContext::builder();
    builder.psk_credentials(PskCredentials::new(identity, key));
    if let Some(cipher) = args.get("cipher") {
        builder.ciphers(cipher);
    }
    let ctx = builder
        .build()
        .unwrap_or_else(|e| common::fail(USAGE, &e.to_string()));
    let client = common::client_for(USAGE, peer);
    let conn = client
        .connect(peer, &ctx, Duration::from_secs(10))
        .unwrap_or_else(|e| {
            eprintln!("error: handshake with {peer} failed: {e}");
            std::process::exit(1)
        });
    log::info!(
        "connected: {} {}",
        conn.protocol_version().unwrap_or("?"),
        conn.cipher().unwrap_or("?")
    );
    common::send_and_print(&conn, &message, count);
}
