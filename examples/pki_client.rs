//! A certificate DTLS client: verifies the server, sends a message N times (each a pause after
//! the previous reply), prints each reply.
//!
//! ```text
//! cargo run --example pki_client -- --connect 127.0.0.1:5684 --ca ca.pem --server-name server.test --message hello
//! ```
//!
//! With `--cid` it offers Connection IDs (RFC 9146) and asks for none in the records it
//! receives (`--cid-len N` asks for an N-byte one); a server that agrees (`pki_server
//! --cid-len 8`) gives it a CID to put in every record it sends, printed as `cid: HEX` (`cid: -`
//! if the server did not agree), and keeps the connection when this client's address changes.

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use openssl_dtls::DtlsClientContext;

const USAGE: &str = "\
usage: pki_client --ca PEM --message TEXT [--connect ADDR] [--bind ADDR]
                  [--server-name NAME | --no-verify-name] [--cert PEM --key PEM] [--cipher STR]
                  [--count N] [--interval-ms MS] [--cid] [--cid-len N] [--reconnect N]
                  [--export LABEL:LEN] [--srtp PROFILES]
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
  --interval-ms  pause between a reply and the next message (default 0)
  --cid          offer Connection IDs (RFC 9146), asking for none in records we receive;
                 prints `cid: HEX`, the server's CID we send (`cid: -` if it did not agree)
  --cid-len      with --cid (implied), ask for an N-byte CID (0 to 16) in records we receive
  --reconnect    after the first connection, close it and connect N more times from new
                 sockets, offering the previous session; prints `resumed: yes|no` per connection
  --export       LABEL:LEN: print `exporter: HEX`, LEN bytes of RFC 5705 keying material
                 under LABEL (as openssl -keymatexport)
  --srtp         DTLS-SRTP profiles offered, e.g. SRTP_AES128_CM_SHA1_80; print
                 `srtp: PROFILE HEX` (its keying material)
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
    interval: Duration,
    cid_len: Option<u8>,
    reconnect: usize,
    keying: common::Keying,
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
    let mut interval = Duration::ZERO;
    let mut cid_len = None;
    let mut reconnect = 0;
    let mut keying = common::Keying::default();
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
            Long("interval-ms") => interval = p.value()?.parse_with(common::millis)?,
            Long("cid") => cid_len = Some(cid_len.unwrap_or(0)),
            Long("export") => keying.export = Some(p.value()?.parse_with(common::export)?),
            Long("srtp") => keying.srtp = Some(p.value()?.string()?),
            Long("cid-len") => cid_len = Some(p.value()?.parse_with(common::cid_len)?),
            Long("reconnect") => reconnect = p.value()?.parse_with(common::count)?,
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
        interval,
        cid_len,
        reconnect,
        keying,
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
    if let Some(len) = o.cid_len {
        builder.connection_id(len);
    }
    if o.no_verify_name {
        eprintln!("warning: --no-verify-name: the server's name and address are not checked");
        builder.danger_skip_server_name_check();
    }
    if let Some(profiles) = &o.keying.srtp {
        builder.srtp_profiles(profiles);
    }
    let ctx = builder
        .build()
        .unwrap_or_else(|e| common::fail(USAGE, &e.to_string()));
    for _ in 0..=o.reconnect {
        let client = common::bind_client(o.bind, o.connect);
        let timeout = Duration::from_secs(10);
        let result = match &o.server_name {
            Some(name) => client.connect_named(o.connect, name, &ctx, timeout),
            None => client.connect(o.connect, &ctx, timeout),
        };
        let conn = result
            .unwrap_or_else(|e| common::die(&format!("handshake with {} failed: {e}", o.connect)));
        if o.reconnect > 0 {
            let resumed = conn.handshake_facts().is_some_and(|f| f.resumed);
            common::say(if resumed {
                "resumed: yes"
            } else {
                "resumed: no"
            });
        }
        if o.cid_len.is_some() {
            common::print_cid(&conn);
        }
        o.keying.print(&conn);
        common::send_and_print(&conn, &o.message, o.count, o.interval);
        conn.close();
        client.close();
    }
}
