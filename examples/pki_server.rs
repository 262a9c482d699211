//! A certificate DTLS echo server.
//!
//! ```text
//! cargo run --example pki_server -- --cert server.pem --key server.key [--ca ca.pem --require-client-cert]
//! ```
//!
//! A datagram longer than one of its records carries (a peer with a larger MTU) is echoed
//! truncated to the connection's data MTU, with a warning; the connection stays up.
//!
//! With `--cid-len N` the server asks every client that offers Connection IDs (RFC 9146) for an
//! N-byte CID in its records, and a connection follows its client to a new address (a NAT
//! rebinding) without a new handshake. Besides `listening on ADDR`, it prints one line per
//! handshake, `handshake completed: ADDR cid=HEX` (the CID it asked for; `cid=-` without), and
//! one per move, `address changed: OLD -> NEW cid=HEX`.

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use openssl_dtls::context::{TicketKeys, DEFAULT_TICKET_ROTATION};
use openssl_dtls::{ClientAuth, DtlsServerContext};

const USAGE: &str = concat!(
    "\
usage: pki_server --cert PEM --key PEM [--listen ADDR] [--ca PEM [--require-client-cert]]
                  [--cipher STR] [--idle-timeout SECS] [--cid-len N]
                  [--session-cache N [--session-lifetime SECS]] [--tickets]
                  [--export LABEL:LEN] [--srtp PROFILES]
                  [--state-file PATH [--state-key-file PATH] [--state-max-age SECS]
                  [--handover SECS]] [--node-id N --fleet-secret-file PATH]
  --listen               address to bind (default 127.0.0.1:5684)
  --cert                 certificate chain, PEM (leaf first)
  --key                  private key, PEM
  --ca                   trust roots for client certificates, PEM
  --require-client-cert  fail handshakes without a verified client certificate
  --cipher               OpenSSL cipher string (default: the certificate preset)
  --idle-timeout         drop a connection that received nothing for SECS seconds
                         (default and 0 or none: never)
  --cid-len              Connection IDs (RFC 9146): ask clients for an N-byte CID (1 to 16),
                         so a connection follows its client to a new address (default 0: off)
  --session-cache        resume sessions from a cache of N sessions (default: no resumption)
  --session-lifetime     how long a session may be resumed, seconds (default 300)
  --tickets              resume sessions with session tickets (random keys rotated hourly;
                         in a fleet, keys derived from the fleet secret)
  --export               LABEL:LEN: print `exporter: HEX` per connection, LEN bytes of
                         RFC 5705 keying material under LABEL (as openssl -keymatexport)
  --srtp                 DTLS-SRTP profiles accepted, e.g. SRTP_AES128_CM_SHA1_80; print
                         `srtp: PROFILE HEX` (its keying material) per connection
",
    common::restart::restart_usage!(),
    "  -h, --help             this text
Prints `handshake completed: ADDR cid=HEX` per connection (cid=- without a CID), `resumed: ADDR`
after it when the handshake resumed a session, and `address changed: OLD -> NEW cid=HEX` per connection that moved."
);

struct Options {
    listen: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
    require_client_cert: bool,
    cipher: Option<String>,
    idle_timeout: Option<Option<Duration>>,
    cid_len: u8,
    session_cache: Option<usize>,
    session_lifetime: Duration,
    tickets: bool,
    keying: common::Keying,
    restart: common::restart::Restart,
}

fn parse(p: &mut lexopt::Parser) -> Result<Options, lexopt::Error> {
    use lexopt::prelude::*;
    let mut listen = common::socket_addr(common::DEFAULT_ADDR)?;
    let (mut cert, mut key, mut ca) = (None, None, None);
    let mut require_client_cert = false;
    let mut cipher = None;
    let mut idle_timeout = None;
    let mut cid_len = 0;
    let mut session_cache = None;
    let mut session_lifetime = Duration::from_secs(300);
    let mut tickets = false;
    let mut keying = common::Keying::default();
    let mut restart = common::restart::Restart::default();
    while let Some(arg) = p.next()? {
        match arg {
            Long("listen") => listen = p.value()?.parse_with(common::socket_addr)?,
            Long("cert") => cert = Some(PathBuf::from(p.value()?)),
            Long("key") => key = Some(PathBuf::from(p.value()?)),
            Long("ca") => ca = Some(PathBuf::from(p.value()?)),
            Long("require-client-cert") => require_client_cert = true,
            Long("cipher") => cipher = Some(p.value()?.string()?),
            Long("idle-timeout") => {
                idle_timeout = Some(p.value()?.parse_with(common::idle_timeout)?)
            }
            Long("export") => keying.export = Some(p.value()?.parse_with(common::export)?),
            Long("srtp") => keying.srtp = Some(p.value()?.string()?),
            Long("cid-len") => cid_len = p.value()?.parse_with(common::cid_len)?,
            Long("session-cache") => session_cache = Some(p.value()?.parse_with(common::count)?),
            Long("session-lifetime") => {
                session_lifetime = Duration::from_secs(p.value()?.parse_with(common::count)? as u64)
            }
            Long("tickets") => tickets = true,
            Short('h') | Long("help") => return Err(common::help(p, USAGE)),
            Long(name) if common::restart::Restart::takes(name) => {
                let name = name.to_owned();
                restart.parse_value(&name, p)?
            }
            _ => return Err(arg.unexpected()),
        }
    }
    restart.check()?;
    if require_client_cert && ca.is_none() {
        return Err("--require-client-cert needs --ca".into());
    }
    Ok(Options {
        listen,
        cert: cert.ok_or("--cert is required")?,
        key: key.ok_or("--key is required")?,
        ca,
        require_client_cert,
        cipher,
        idle_timeout,
        cid_len,
        session_cache,
        session_lifetime,
        tickets,
        keying,
        restart,
    })
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let o = common::parse_args(USAGE, parse);
    let mut builder = DtlsServerContext::builder();
    builder
        .certificate_chain_file(&o.cert)
        .private_key_file(&o.key);
    if let Some(ca) = &o.ca {
        builder.root_certificates_file(ca);
        builder.client_auth(if o.require_client_cert {
            ClientAuth::Require
        } else {
            ClientAuth::Request
        });
    }
    if let Some(cipher) = &o.cipher {
        builder.ciphers(cipher);
    }
    if o.cid_len > 0 {
        builder.connection_id(o.cid_len);
    }
    if let Some(size) = o.session_cache {
        builder.session_cache(size, o.session_lifetime);
    }
    // Compact connections for --state-file; the fleet's secrets, CID prefix and (with
    // --tickets) ticket keys for --node-id.
    let fleet = o.restart.configure(&mut builder, o.tickets);
    if o.tickets && o.restart.node_id.is_none() {
        let keys = TicketKeys::random(DEFAULT_TICKET_ROTATION)
            .unwrap_or_else(|e| common::fail(USAGE, &e.to_string()));
        builder.session_tickets(keys);
    }
    if let Some(profiles) = &o.keying.srtp {
        builder.srtp_profiles(profiles);
    }
    builder.keep_exporter_secret(o.keying.export.is_some());
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
