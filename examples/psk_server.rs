//! A PSK DTLS echo server: echoes every datagram back to its sender.
//!
//! ```text
//! cargo run --example psk_server -- --listen 127.0.0.1:5684 --identity Client_identity --key-hex 73656372657450534b
//! openssl s_client -dtls1_2 -connect 127.0.0.1:5684 -psk 73656372657450534b -psk_identity Client_identity -cipher PSK-AES128-CCM8
//! ```
//!
//! A datagram longer than one of its records carries (a peer with a larger MTU) is echoed
//! truncated to the connection's data MTU, with a warning; the connection stays up.
//!
//! With `--cid-len N` the server asks every client that offers Connection IDs (RFC 9146) for an
//! N-byte CID in its records, and a connection follows its client to a new address (a NAT
//! rebinding) without a new handshake:
//!
//! ```text
//! cargo run --example psk_server -- --cid-len 8
//! cargo run --example psk_client -- --cid --message hello --count 3 --interval-ms 1000
//! ```
//!
//! Besides `listening on ADDR`, it prints one line per handshake, `handshake completed: ADDR
//! cid=HEX` (the CID it asked for; `cid=-` without), and one per move, `address changed: OLD ->
//! NEW cid=HEX`.
//!
//! With `--state-file PATH` it restarts gracefully (compact connections are then on): at start
//! it restores the connections saved in PATH, if the file exists (`restored N connections`,
//! each also reported as `handshake completed`, though none ran), and deletes it (a state
//! restored twice would reuse sequence numbers); on SIGTERM or SIGINT it saves every
//! established connection to PATH (`saved N connections`) and exits. The devices notice
//! nothing: their next records are accepted without a new handshake. The file is sealed under
//! the 32-byte key in `--state-key-file` (default `PATH.key`), created with random bytes and
//! mode 0600 if it does not exist; a state older than `--state-max-age` seconds (default 3600)
//! is refused.
//!
//! ```text
//! cargo run --example psk_server -- --state-file /var/lib/psk_server/state
//! ```

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use openssl_dtls::DtlsServerContext;

const USAGE: &str = concat!(
    "\
usage: psk_server [--listen ADDR] [--identity ID] [--key-hex HEX] [--hint H] [--cipher STR]
                  [--compact] [--idle-timeout SECS] [--cid-len N] [--export LABEL:LEN]
                  [--srtp PROFILES] [--state-file PATH [--state-key-file PATH]
                  [--state-max-age SECS] [--handover SECS]]
                  [--node-id N --fleet-secret-file PATH]
  --listen        address to bind (default 127.0.0.1:5684)
  --identity      the PSK identity accepted (default Client_identity)
  --key-hex       the key, in hex (default 73656372657450534b = \"secretPSK\")
  --hint          PSK identity hint sent to clients
  --cipher        OpenSSL cipher string (default: the PSK preset, PSK-AES128-CCM8 first)
  --compact       compact connections: free each SSL after the handshake (about 0.5 KB per idle peer)
  --idle-timeout  drop a connection that received nothing for SECS seconds
                  (default and 0 or none: never)
  --cid-len       Connection IDs (RFC 9146): ask clients for an N-byte CID (1 to 16), so a
                  connection follows its client to a new address (default 0: off)
  --export        LABEL:LEN: print `exporter: HEX` per connection, LEN bytes of RFC 5705
                  keying material under LABEL (as openssl -keymatexport)
  --srtp          DTLS-SRTP profiles, e.g. SRTP_AES128_CM_SHA1_80:SRTP_AEAD_AES_128_GCM;
                  print `srtp: PROFILE HEX` (its keying material) per connection
",
    common::restart::restart_usage!(),
    "  -h, --help      this text
A datagram longer than the connection's data MTU is echoed truncated to it (logged).
Prints `handshake completed: ADDR cid=HEX` per connection (cid=- without a CID) and
`address changed: OLD -> NEW cid=HEX` per connection that moved; with --state-file,
`restored N connections` at start and `saved N connections` at exit."
);

struct Options {
    listen: SocketAddr,
    identity: Vec<u8>,
    key: Vec<u8>,
    hint: Option<String>,
    cipher: Option<String>,
    compact: bool,
    idle_timeout: Option<Option<Duration>>,
    cid_len: u8,
    keying: common::Keying,
    restart: common::restart::Restart,
}

fn parse(p: &mut lexopt::Parser) -> Result<Options, lexopt::Error> {
    use lexopt::prelude::*;
    let mut o = Options {
        listen: common::socket_addr(common::DEFAULT_ADDR)?,
        identity: common::DEFAULT_IDENTITY.into(),
        key: common::hex(common::DEFAULT_KEY_HEX)?,
        hint: None,
        cipher: None,
        compact: false,
        idle_timeout: None,
        cid_len: 0,
        keying: common::Keying::default(),
        restart: common::restart::Restart::default(),
    };
    let keying = &mut o.keying;
    while let Some(arg) = p.next()? {
        match arg {
            Long("listen") => o.listen = p.value()?.parse_with(common::socket_addr)?,
            Long("identity") => o.identity = p.value()?.string()?.into_bytes(),
            Long("key-hex") => o.key = p.value()?.parse_with(common::hex)?,
            Long("hint") => o.hint = Some(p.value()?.string()?),
            Long("cipher") => o.cipher = Some(p.value()?.string()?),
            Long("compact") => o.compact = true,
            Long("idle-timeout") => {
                o.idle_timeout = Some(p.value()?.parse_with(common::idle_timeout)?)
            }
            Long("export") => keying.export = Some(p.value()?.parse_with(common::export)?),
            Long("srtp") => keying.srtp = Some(p.value()?.string()?),
            Long("cid-len") => o.cid_len = p.value()?.parse_with(common::cid_len)?,
            Short('h') | Long("help") => return Err(common::help(p, USAGE)),
            Long(name) if common::restart::Restart::takes(name) => {
                let name = name.to_owned();
                o.restart.parse_value(&name, p)?
            }
            _ => return Err(arg.unexpected()),
        }
    }
    o.restart.check()?;
    Ok(o)
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let o = common::parse_args(USAGE, parse);
    let mut builder = DtlsServerContext::builder();
    let (identity, key) = (o.identity, o.key);
    builder.psk_key_store(move |id| (id == identity.as_slice()).then(|| key.clone()));
    if let Some(hint) = &o.hint {
        builder.identity_hint(hint.as_bytes());
    }
    if let Some(cipher) = &o.cipher {
        builder.ciphers(cipher);
    }
    builder.compact_connections(o.compact);
    if o.cid_len > 0 {
        builder.connection_id(o.cid_len);
    }
    if let Some(profiles) = &o.keying.srtp {
        builder.srtp_profiles(profiles);
    }
    builder.keep_exporter_secret(o.keying.export.is_some());
    // Compact connections for --state-file, the fleet's secrets and CID prefix for --node-id.
    let fleet = o.restart.configure(&mut builder, false);
    let ctx = builder
        .build()
        .unwrap_or_else(|e| common::fail(USAGE, &e.to_string()));
    let keying = o.keying;
    o.restart.serve(
        fleet,
        o.listen,
        ctx,
        common::server_config(o.idle_timeout),
        move |conn| keying.print(conn),
    )
}
