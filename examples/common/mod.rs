//! What the example tools share: argument conventions and value parsers (over `lexopt`), the
//! server's echo loop and the client's send-and-print loop, and the lines they print about
//! Connection IDs (RFC 9146).
//!
//! Every tool parses its arguments with one `match` over lexopt's arguments (see
//! `psk_server.rs`); a new flag is one more arm. The conventions, checked by `tests/examples.rs`:
//! - `-h`/`--help` prints the usage on stdout and exits 0;
//! - an unknown flag, a stray argument, a missing or malformed value (`--key-hex 'aé'`) prints
//!   `error: ...` and the usage on stderr and exits 2, never a panic;
//! - a failure at run time (bind, handshake, no reply) prints `error: ...` and exits 1.
//!
//! What the tools print on stdout, one flushed line each, for scripts and tests to read:
//! - servers: `listening on ADDR` first; then `handshake completed: ADDR cid=HEX` per
//!   connection (HEX: the CID the server asked for, its own; `cid=-` without CIDs) and
//!   `address changed: OLD -> NEW cid=HEX` per connection that followed its peer to a new
//!   address by its CID;
//! - clients: `cid: HEX` after the handshake when asked for CIDs (`--cid`; HEX: the server's
//!   CID this client sends), then each reply;
//! - both, once per connection after its handshake: `exporter: HEX` with `--export LABEL:LEN`
//!   (RFC 5705 keying material, as `openssl s_client -keymatexport LABEL -keymatexportlen LEN`
//!   prints it) and `srtp: PROFILE HEX` with `--srtp PROFILES` (`srtp: -` if none was agreed).
#![allow(dead_code)]

pub mod restart;

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::exit;
use std::time::Duration;

use openssl_dtls::{
    cid, DtlsClient, DtlsConnection, DtlsServer, DtlsServerContext, EndpointConfig, Error,
    SocketOptions,
};

/// `secretPSK` in hex: the key dtls2's examples and Californium's interop tests use.
pub const DEFAULT_KEY_HEX: &str = "73656372657450534b";
/// The identity dtls2's examples and Californium's interop tests use.
pub const DEFAULT_IDENTITY: &str = "Client_identity";
/// Where servers listen and clients connect by default (CoAPS's port on loopback).
pub const DEFAULT_ADDR: &str = "127.0.0.1:5684";

/// Runs `parse` over the process arguments. Its errors (lexopt's: unknown flag, missing or
/// malformed value; or a message such as `"--message is required"`) end the process with
/// [`fail`].
pub fn parse_args<T>(
    usage: &str,
    parse: impl FnOnce(&mut lexopt::Parser) -> Result<T, lexopt::Error>,
) -> T {
    let mut parser = lexopt::Parser::from_env();
    parse(&mut parser).unwrap_or_else(|e| fail(usage, &e.to_string()))
}

/// `-h`/`--help`: the usage on stdout, exit 0. Returns the error for `--help=VALUE`, which is
/// not help: `Short('h') | Long("help") => return Err(common::help(p, USAGE))`.
pub fn help(p: &mut lexopt::Parser, usage: &str) -> lexopt::Error {
    if let Some(value) = p.optional_value() {
        return lexopt::Error::UnexpectedValue {
            option: "--help".into(),
            value,
        };
    }
    println!("{usage}");
    exit(0)
}

/// A usage error: the message and the usage on stderr, exit 2.
pub fn fail(usage: &str, message: &str) -> ! {
    eprintln!("error: {message}\n\n{usage}");
    exit(2)
}

/// A run-time failure: the message on stderr, exit 1.
pub fn die(message: &str) -> ! {
    eprintln!("error: {message}");
    exit(1)
}

/// Prints `line` on stdout and flushes it: a reader (a script, a test) sees it at once. A
/// closed stdout is ignored; the tool keeps running.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Decodes a hex string (`"73656372657450534b"`), upper or lower case.
pub fn hex(s: &str) -> Result<Vec<u8>, String> {
    let digits = s.as_bytes();
    if digits.len() % 2 != 0 {
        return Err(format!("{s:?} has an odd number of hex digits"));
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("{s:?} is not hex")),
    };
    digits
        .chunks(2)
        .map(|pair| Ok((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect()
}

/// `--count N`: a whole number.
pub fn count(s: &str) -> Result<usize, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a whole number"))
}

/// `--cid-len N`: a Connection ID length in bytes, 0 to 16 (0: none).
pub fn cid_len(s: &str) -> Result<u8, String> {
    s.parse::<u8>()
        .ok()
        .filter(|&n| usize::from(n) <= cid::MAX_CID_LEN)
        .ok_or_else(|| format!("{s:?} is not a length from 0 to {}", cid::MAX_CID_LEN))
}

/// `--interval-ms MS`: whole milliseconds.
pub fn millis(s: &str) -> Result<Duration, String> {
    s.parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("{s:?} is not a whole number of milliseconds"))
}

/// An address, `IP:PORT` or `HOST:PORT` (the first address the name resolves to).
pub fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not an address: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// `--idle-timeout SECS`: whole seconds; `0` or `none` keeps idle connections forever.
pub fn idle_timeout(s: &str) -> Result<Option<Duration>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let secs: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds (or `none`)"))?;
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

/// `--export LABEL:LEN` and `--srtp PROFILES`: what a tool exports and prints per connection.
#[derive(Debug, Clone, Default)]
pub struct Keying {
    /// RFC 5705 label and length.
    pub export: Option<(String, usize)>,
    /// SRTP profiles (OpenSSL's syntax), offered or accepted.
    pub srtp: Option<String>,
}

impl Keying {
    /// Prints `exporter: HEX` and `srtp: PROFILE HEX` for `conn`, as asked.
    pub fn print(&self, conn: &DtlsConnection) {
        if let Some((label, len)) = &self.export {
            let mut out = vec![0u8; *len];
            match conn.export_keying_material(label, None, &mut out) {
                Ok(()) => say(&format!("exporter: {}", cid::to_hex(&out))),
                Err(e) => eprintln!("export failed: {e}"),
            }
        }
        if self.srtp.is_some() {
            match conn.srtp_keying_material() {
                Ok(Some(m)) => say(&format!(
                    "srtp: {} {}",
                    m.profile(),
                    cid::to_hex(m.as_bytes())
                )),
                Ok(None) => say("srtp: -"),
                Err(e) => eprintln!("SRTP keying material: {e}"),
            }
        }
    }
}

/// Parses `--export`'s `LABEL:LEN` (LEN 1 to 16384).
pub fn export(s: &str) -> Result<(String, usize), String> {
    let (label, len) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not LABEL:LEN"))?;
    let len: usize = len
        .parse()
        .ok()
        .filter(|n| (1..=16_384).contains(n))
        .ok_or_else(|| format!("{len:?} is not a length from 1 to 16384"))?;
    Ok((label.to_owned(), len))
}

/// The endpoint limits for a server whose `--idle-timeout` was `idle` (the library's default,
/// no idle timeout, when the flag is absent).
pub fn server_config(idle: Option<Option<Duration>>) -> EndpointConfig {
    let mut config = EndpointConfig::default();
    if let Some(idle) = idle {
        config.idle_timeout = idle;
    }
    config
}

/// Binds a server on `listen` with `config`; exits 1 if it cannot.
pub fn bind_server(
    listen: SocketAddr,
    ctx: DtlsServerContext,
    config: EndpointConfig,
) -> DtlsServer {
    DtlsServer::bind_with(listen, ctx, config, SocketOptions::default())
        .unwrap_or_else(|e| die(&format!("bind {listen}: {e}")))
}

/// A client socket on `bind` (`--bind`: a fixed local address, as a device has), or on any port
/// of the peer's address family; exits 1 if it cannot bind.
pub fn bind_client(bind: Option<SocketAddr>, peer: SocketAddr) -> DtlsClient {
    let addr = bind.unwrap_or_else(|| {
        if peer.is_ipv6() {
            "[::]:0".parse().expect("an address")
        } else {
            "0.0.0.0:0".parse().expect("an address")
        }
    });
    DtlsClient::bind(addr).unwrap_or_else(|e| die(&format!("bind {addr}: {e}")))
}

/// Accepts connections forever, echoing every datagram back to its sender on its own thread.
/// Prints `handshake completed: ADDR cid=HEX` per connection, then `resumed: ADDR` if its
/// handshake resumed a session, and `address changed: OLD -> NEW cid=HEX` per connection that
/// followed its peer to a new address by its Connection ID.
pub fn echo_forever(server: DtlsServer) -> ! {
    echo_forever_with(server, |_| {})
}

/// [`echo_forever`], calling `on_connection` for each connection after its
/// `handshake completed` line (the `--export` / `--srtp` lines).
pub fn echo_forever_with(
    server: impl std::borrow::Borrow<DtlsServer>,
    on_connection: impl Fn(&DtlsConnection),
) -> ! {
    let server = server.borrow();
    // The hooks first: a client that starts once it reads `listening on` finds them set.
    // One line per failed handshake: who, and why (a wrong key, an unknown identity, a
    // certificate that did not verify, a timeout).
    server.on_handshake_failure(|failure| eprintln!("handshake failed: {failure}"));
    // One line per move (a NAT rebinding): the connection goes on at the new address.
    server.on_address_change(|change| say(&format!("address changed: {change}")));
    say(&format!("listening on {}", server.local_addr()));
    for conn in server.incoming() {
        match conn {
            Ok(conn) => {
                // The CID the server asked for: the one the client puts in its records.
                let own = conn.connection_ids().map(|(own, _)| own).unwrap_or(&[]);
                say(&format!(
                    "handshake completed: {} cid={}",
                    conn.peer_addr(),
                    cid::to_hex(own)
                ));
                if conn.handshake_facts().is_some_and(|f| f.resumed) {
                    say(&format!("resumed: {}", conn.peer_addr()));
                }
                on_connection(&conn);
                log::info!(
                    "connection from {} ({} {})",
                    conn.peer_addr(),
                    conn.protocol_version().unwrap_or("?"),
                    conn.cipher().unwrap_or("?")
                );
                std::thread::spawn(move || echo(conn));
            }
            Err(e) => log::warn!("accept: {e}"),
        }
    }
    // A tool finishing its own exit (psk_server saving its state) exits from its thread.
    while EXITING.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::park();
    }
    exit(0)
}

/// Set by a tool whose own thread ends the process (psk_server saving its state on SIGTERM):
/// the accept loop of [`echo_forever_with`] then waits for it instead of exiting first.
pub static EXITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Echoes every datagram of `conn` back until it ends.
///
/// A peer whose MTU is larger than ours can send a datagram longer than one of our records
/// carries ([`DtlsConnection::data_mtu`]). DTLS never splits a datagram, so such a datagram is
/// echoed truncated to the first `data_mtu` bytes, as UDP truncates, with a warning in the log;
/// the connection stays up.
fn echo(conn: DtlsConnection) {
    // Where the peer is now: its address changes when it moves by its Connection ID.
    let peer = || conn.peer_addr();
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = match conn.recv(&mut buf) {
            Ok(0) => {
                log::info!("{} closed the connection", peer());
                return;
            }
            Ok(n) => n,
            Err(Error::IdleTimeout { .. }) => {
                eprintln!("idle timeout: {}", peer());
                return;
            }
            Err(e) => {
                log::info!("{}: {e}", peer());
                return;
            }
        };
        let mut reply = &buf[..n];
        if n > conn.data_mtu() {
            log::warn!(
                "{}: a {n}-byte datagram does not fit one of our records \
                 (data MTU {}): echoing its first {} bytes",
                peer(),
                conn.data_mtu(),
                conn.data_mtu()
            );
            reply = &reply[..conn.data_mtu()];
        }
        match conn.send(reply) {
            Ok(()) => {}
            Err(e @ Error::PayloadTooLarge { .. }) => log::warn!("{}: not echoed: {e}", peer()),
            Err(e) => {
                log::warn!("echo to {}: {e}", peer());
                return;
            }
        }
    }
}

/// Prints `cid: HEX`, the server's Connection ID this client puts in its records (`cid: -` if
/// the server did not agree to CIDs).
pub fn print_cid(conn: &DtlsConnection) {
    let peer = conn.connection_ids().map(|(_, peer)| peer).unwrap_or(&[]);
    say(&format!("cid: {}", cid::to_hex(peer)));
}

/// Sends `message` `count` times, each `interval` after the previous reply, printing each reply
/// on its own line; exits 1 on failure.
pub fn send_and_print(conn: &DtlsConnection, message: &str, count: usize, interval: Duration) {
    let mut buf = vec![0u8; 65_536];
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(interval);
        }
        if let Err(e) = conn.send(message.as_bytes()) {
            die(&format!("send failed: {e}"));
        }
        match conn.recv_timeout(&mut buf, Duration::from_secs(5)) {
            Ok(Some(0)) => die("the server closed the connection"),
            Ok(Some(n)) => say(&String::from_utf8_lossy(&buf[..n])),
            Ok(None) => die("no reply within 5 s"),
            Err(e) => die(&e.to_string()),
        }
    }
    conn.close();
}

/// The parser of a tool that takes no arguments but `--help`.
pub fn only_help(
    usage: &'static str,
) -> impl FnOnce(&mut lexopt::Parser) -> Result<(), lexopt::Error> {
    move |p| {
        use lexopt::prelude::*;
        match p.next()? {
            None => Ok(()),
            Some(Short('h') | Long("help")) => Err(help(p, usage)),
            Some(arg) => Err(arg.unexpected()),
        }
    }
}
