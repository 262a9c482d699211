//! A PSK DTLS client: sends a message N times, each a pause after the previous reply, and
//! prints each reply.
//!
//! ```text
//! cargo run --example psk_client -- --connect 127.0.0.1:5684 --message hello --count 3
//! ```
//!
//! With `--cid` it offers Connection IDs (RFC 9146) and asks for none in the records it
//! receives (`--cid-len N` asks for an N-byte one); a server that agrees gives it a CID to put
//! in every record it sends, printed as `cid: HEX` (`cid: -` if the server did not agree), and
//! keeps the connection when this client's address changes. Against `psk_server --cid-len 8`,
//! a long `--interval-ms` leaves time to change networks (or for a NAT to rebind) between
//! messages:
//!
//! ```text
//! cargo run --example psk_client -- --cid --message hello --count 10 --interval-ms 30000
//! ```

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use openssl_dtls::{DtlsClientContext, PskCredentials};

const USAGE: &str = "\
usage: psk_client --message TEXT [--connect ADDR] [--bind ADDR] [--identity ID] [--key-hex HEX]
                  [--cipher STR] [--count N] [--interval-ms MS] [--cid] [--cid-len N]
  --connect      server address (default 127.0.0.1:5684)
  --bind         local address to send from (default: any port of the server's address family)
  --identity     PSK identity (default Client_identity)
  --key-hex      the key, in hex (default 73656372657450534b = \"secretPSK\")
  --cipher       OpenSSL cipher string (default: the PSK preset)
  --message      the text to send
  --count        how many times (default 1); exits 0 once every reply arrived
  --interval-ms  pause between a reply and the next message (default 0)
  --cid          offer Connection IDs (RFC 9146), asking for none in records we receive;
                 prints `cid: HEX`, the server's CID we send (`cid: -` if it did not agree)
  --cid-len      with --cid (implied), ask for an N-byte CID (0 to 16) in records we receive
  --export       LABEL:LEN: print `exporter: HEX`, LEN bytes of RFC 5705 keying material
                 under LABEL (as openssl -keymatexport)
  --srtp         DTLS-SRTP profiles offered, e.g. SRTP_AES128_CM_SHA1_80; print
                 `srtp: PROFILE HEX` (its keying material)
  -h, --help     this text";

struct Options {
    connect: SocketAddr,
    bind: Option<SocketAddr>,
    identity: Vec<u8>,
    key: Vec<u8>,
    cipher: Option<String>,
    message: String,
    count: usize,
    interval: Duration,
    cid_len: Option<u8>,
    keying: common::Keying,
}

fn parse(p: &mut lexopt::Parser) -> Result<Options, lexopt::Error> {
    use lexopt::prelude::*;
    let mut connect = common::socket_addr(common::DEFAULT_ADDR)?;
    let mut bind = None;
    let mut identity = common::DEFAULT_IDENTITY.into();
    let mut key = common::hex(common::DEFAULT_KEY_HEX)?;
    let mut cipher = None;
    let mut message = None;
    let mut count = 1;
    let mut interval = Duration::ZERO;
    let mut cid_len = None;
    let mut keying = common::Keying::default();
    while let Some(arg) = p.next()? {
        match arg {
            Long("connect") => connect = p.value()?.parse_with(common::socket_addr)?,
            Long("bind") => bind = Some(p.value()?.parse_with(common::socket_addr)?),
            Long("identity") => identity = p.value()?.string()?.into_bytes(),
            Long("key-hex") => key = p.value()?.parse_with(common::hex)?,
            Long("cipher") => cipher = Some(p.value()?.string()?),
            Long("message") => message = Some(p.value()?.string()?),
            Long("count") => count = p.value()?.parse_with(common::count)?,
            Long("interval-ms") => interval = p.value()?.parse_with(common::millis)?,
            Long("cid") => cid_len = Some(cid_len.unwrap_or(0)),
            Long("export") => keying.export = Some(p.value()?.parse_with(common::export)?),
            Long("srtp") => keying.srtp = Some(p.value()?.string()?),
            Long("cid-len") => cid_len = Some(p.value()?.parse_with(common::cid_len)?),
            Short('h') | Long("help") => return Err(common::help(p, USAGE)),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Options {
        connect,
        bind,
        identity,
        key,
        cipher,
        message: message.ok_or("--message is required")?,
        count,
        interval,
        cid_len,
        keying,
    })
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let o = common::parse_args(USAGE, parse);
    let mut builder = DtlsClientContext::builder();
    builder.psk_credentials(PskCredentials::new(o.identity, o.key));
    if let Some(cipher) = &o.cipher {
        builder.ciphers(cipher);
    }
    if let Some(len) = o.cid_len {
        builder.connection_id(len);
    }
    if let Some(profiles) = &o.keying.srtp {
        builder.srtp_profiles(profiles);
    }
    let ctx = builder
        .build()
        .unwrap_or_else(|e| common::fail(USAGE, &e.to_string()));
    let client = common::bind_client(o.bind, o.connect);
    let conn = client
        .connect(o.connect, &ctx, Duration::from_secs(10))
        .unwrap_or_else(|e| common::die(&format!("handshake with {} failed: {e}", o.connect)));
    log::info!(
        "connected from {}: {} {}",
        conn.local_addr(),
        conn.protocol_version().unwrap_or("?"),
        conn.cipher().unwrap_or("?")
    );
    if o.cid_len.is_some() {
        common::print_cid(&conn);
    }
    o.keying.print(&conn);
    common::send_and_print(&conn, &o.message, o.count, o.interval);
}
