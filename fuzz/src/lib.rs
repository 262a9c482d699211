//! The bodies of the fuzz targets in `fuzz_targets/`, shared with the seed-corpus generator
//! (`examples/seed_corpus.rs`), so that the seeds are written in the very format the targets
//! read.
//!
//! The endpoint and session targets interpret their input as a little program: a sequence of
//! operations (raw datagrams from chosen addresses, steps of a real client's handshake, mutations
//! of what that client sent, time passing, application data). A real client takes the fuzzer
//! past the cookie and deep into the handshake; the raw and mutated datagrams attack every state
//! it reaches. After every operation the target checks its invariants and panics if one fails.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use openssl_dtls::__fuzz::{self, Cookies, COOKIE_LEN};
use openssl_dtls::{
    DtlsClientContext, DtlsServerContext, Endpoint, EndpointConfig, PskCredentials, Session,
    SessionState,
};

/// The link MTU of the fuzzed sessions.
pub const MTU: usize = 600;

const IDENTITY: &[u8] = b"fuzz-device";
const KEY: &[u8] = b"fuzz pre-shared key";

/// Limits small enough for the fuzzer to reach them.
pub fn endpoint_config() -> EndpointConfig {
    let mut config = EndpointConfig::default();
    config.max_connections = 3;
    config.max_handshakes = 2;
    config.max_handshakes_per_ip = 2;
    config.max_pending_replies = 4;
    config.idle_timeout = Some(Duration::from_secs(60));
    config
}

/// A fixed origin for the targets' clocks.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// The server context (PSK, every PSK suite of the preset).
pub fn server_ctx() -> &'static DtlsServerContext {
    static CTX: OnceLock<DtlsServerContext> = OnceLock::new();
    CTX.get_or_init(|| build_server_ctx(false))
}

/// The same server with compact connections on (a short linger, so fuzz runs reach it).
pub fn compact_server_ctx() -> &'static DtlsServerContext {
    static CTX: OnceLock<DtlsServerContext> = OnceLock::new();
    CTX.get_or_init(|| build_server_ctx(true))
}

fn build_server_ctx(compact: bool) -> DtlsServerContext {
    DtlsServerContext::builder()
        .psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
        .mtu(MTU)
        .retransmit_timeout(Duration::from_millis(50), Duration::from_millis(400))
        .handshake_timeout(Duration::from_secs(5))
        .compact_connections(compact)
        .compact_linger(Duration::from_millis(500))
        .build()
        .expect("server context")
}

/// Client contexts, one per suite family (CCM8, GCM, ChaCha20 with ECDHE), first with OpenSSL's
/// record layer, then with compact connections ([`is_compact_choice`]).
pub fn client_ctx(which: u8) -> &'static DtlsClientContext {
    static CTX: OnceLock<Vec<DtlsClientContext>> = OnceLock::new();
    let all = CTX.get_or_init(|| {
        [false, true]
            .into_iter()
            .flat_map(|compact| {
                [
                    "PSK-AES128-CCM8",
                    "PSK-AES128-GCM-SHA256",
                    "ECDHE-PSK-CHACHA20-POLY1305",
                ]
                .into_iter()
                .map(move |cipher| {
                    DtlsClientContext::builder()
                        .psk_credentials(PskCredentials::new(IDENTITY, KEY))
                        .ciphers(cipher)
                        .mtu(MTU)
                        .retransmit_timeout(Duration::from_millis(50), Duration::from_millis(400))
                        .handshake_timeout(Duration::from_secs(5))
                        .compact_connections(compact)
                        .build()
                        .expect("client context")
                })
            })
            .collect()
    });
    &all[usize::from(which) % all.len()]
}

/// Whether [`client_ctx`]`(which)` has compact connections on.
pub fn is_compact_choice(which: u8) -> bool {
    usize::from(which) % 6 >= 3
}

/// A cursor over the fuzz input; reads past the end give zeros and empty slices.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        let (&b, rest) = self.data.split_first().unwrap_or((&0, &[]));
        self.data = rest;
        b
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

// ---------------------------------------------------------------------------------------------
// record_preparser

/// Target `record_preparser`.
pub fn record_preparser(data: &[u8]) {
    __fuzz::classify(data);
}

// ---------------------------------------------------------------------------------------------
// cookie_verifier

/// Reads a peer address: family byte, address, port (and an IPv6 scope id).
fn peer_from(input: &mut Input<'_>) -> SocketAddr {
    let family = input.u8();
    if family.is_multiple_of(2) {
        let ip = Ipv4Addr::from(input.u32());
        SocketAddr::new(IpAddr::V4(ip), input.u16())
    } else {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&[input.bytes(16), &[0; 16]].concat()[..16]);
        let port = input.u16();
        let scope = if family % 4 == 3 { input.u32() } else { 0 };
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), port, 0, scope))
    }
}

/// The same peer with one bit changed (address or port).
fn other_peer(peer: SocketAddr, bit: u8) -> SocketAddr {
    match (peer, bit % 2) {
        (_, 0) => SocketAddr::new(peer.ip(), peer.port() ^ (1 << (bit / 2 % 16))),
        (SocketAddr::V4(a), _) => {
            let ip = u32::from(*a.ip()) ^ (1 << (bit / 2 % 32));
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), a.port())
        }
        (SocketAddr::V6(a), _) => {
            let ip = u128::from(*a.ip()) ^ (1 << (bit / 2 % 128));
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                a.port(),
                0,
                a.scope_id(),
            ))
        }
    }
}

/// Target `cookie_verifier`. Input: mode, peer, clock offset (ms), a bit to flip, then the
/// cookie to check (and, in shared-secret mode, the secret before it).
pub fn cookie_verifier(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let interval = Duration::from_secs(1 + u64::from(mode >> 2) % 60);
    let peer = peer_from(&mut input);
    let offset = Duration::from_millis(u64::from(input.u32()));
    let bit = input.u8();
    let random = mode.is_multiple_of(2);
    let cookies = if random {
        Cookies::random(interval, base())
    } else {
        let len = 16 + usize::from(mode >> 1) % 80;
        match Cookies::shared(input.bytes(len), interval) {
            Some(c) => c,
            None => return, // a secret under 16 bytes is refused: nothing to fuzz
        }
    };
    let cookie = input.rest();
    let now = base() + offset;
    let mut mine = [0u8; COOKIE_LEN];
    assert_eq!(cookies.generate(now, peer, &mut mine), COOKIE_LEN);
    assert!(cookies.verify(now, peer, &mine), "our own cookie verifies");
    if cookies.verify(now, peer, cookie) {
        assert_eq!(cookie, &mine[..], "only the genuine cookie verifies");
    }
    let other = other_peer(peer, bit);
    assert!(!cookies.verify(now, other, &mine), "{peer} -> {other}");
    assert!(
        !cookies.verify(now, other, cookie) || cookie.len() != COOKIE_LEN || {
            let mut theirs = [0u8; COOKIE_LEN];
            cookies.generate(now, other, &mut theirs);
            cookie == theirs
        }
    );
    let mut short = [0u8; COOKIE_LEN - 1];
    assert_eq!(cookies.generate(now, peer, &mut short), 0);
    if random {
        // Two rotations later the cookie is dead.
        let later = now + interval * 2 + Duration::from_millis(1);
        assert!(!cookies.verify(later, peer, &mine));
    }
}

// ---------------------------------------------------------------------------------------------
// Operations shared by the endpoint and session targets.

/// The operations of a program, as their first byte (mod 7) encodes them.
pub mod op {
    /// `RAW, peer, len_hi, len_lo, bytes..`: a datagram from peer `peer % 4` (0 is the client).
    pub const RAW: u8 = 0;
    /// Everything the client has to send goes to the server.
    pub const CLIENT_TO_SERVER: u8 = 1;
    /// Everything the server sent the client goes to it.
    pub const SERVER_TO_CLIENT: u8 = 2;
    /// `MUTATE, which, pos_hi, pos_lo, xor, cut`: one of the client's datagrams so far, a byte
    /// changed and maybe cut short, sent again from the client's address.
    pub const MUTATE: u8 = 3;
    /// `TIME, ms_hi, ms_lo`: time passes; timers run.
    pub const TIME: u8 = 4;
    /// `CLIENT_DATA, len`: the client sends application data (once established).
    pub const CLIENT_DATA: u8 = 5;
    /// `SERVER_ACTION, what`: the server sends data, or closes.
    pub const SERVER_ACTION: u8 = 6;
    /// How many operations there are.
    pub const COUNT: u8 = 7;
}

/// The addresses of the programs: the client first, then three others.
pub fn peers() -> [SocketAddr; 4] {
    [
        "192.0.2.10:5684".parse().unwrap(),
        "192.0.2.66:5684".parse().unwrap(),
        "192.0.2.10:5685".parse().unwrap(),
        "[2001:db8::66]:5684".parse().unwrap(),
    ]
}

/// Applies a MUTATE operation's parameters to one of `sent`.
fn mutate(input: &mut Input<'_>, sent: &[Vec<u8>]) -> Option<Vec<u8>> {
    let which = usize::from(input.u8());
    let pos = usize::from(input.u16());
    let xor = input.u8();
    let cut = usize::from(input.u8());
    let mut d = sent.get(which % sent.len().max(1))?.clone();
    if d.is_empty() {
        return None;
    }
    let at = pos % d.len();
    d[at] ^= xor.max(1);
    if cut > 0 && cut < d.len() {
        d.truncate(d.len() - cut);
    }
    Some(d)
}

// ---------------------------------------------------------------------------------------------
// server_endpoint

struct EndpointRun {
    ep: Endpoint,
    now: Instant,
    client: Session,
    client_addr: SocketAddr,
    to_client: Vec<Vec<u8>>,
    client_sent: Vec<Vec<u8>>,
    buf: Vec<u8>,
}

impl EndpointRun {
    /// Sends what the endpoint has queued; returns (total bytes, destinations).
    fn drain(&mut self) -> (usize, Vec<SocketAddr>) {
        let mut total = 0;
        let mut to = Vec::new();
        while let Some((dest, n)) = self.ep.poll_transmit(&mut self.buf) {
            assert!(n <= MTU, "a {n}-byte datagram over the MTU {MTU}");
            total += n;
            to.push(dest);
            if dest == self.client_addr && self.to_client.len() < 64 {
                self.to_client.push(self.buf[..n].to_vec());
            }
        }
        (total, to)
    }

    /// Hands `datagram` from `peer` to the endpoint and checks the pre-cookie invariants.
    fn inject(&mut self, peer: SocketAddr, datagram: &[u8]) {
        let known_before = self.ep.connection_id(peer).is_some();
        // The drivers' classification (handshake datagrams behind established records): it
        // never panics and changes nothing; a datagram answered with a HelloVerifyRequest was
        // classified as a handshake's.
        let stats_before = self.ep.stats();
        let handshake = self.ep.is_handshake_datagram(peer, datagram);
        assert!(self.ep.stats() == stats_before, "the classification counted something");
        assert_eq!(self.ep.connection_id(peer).is_some(), known_before);
        self.ep.handle_datagram(self.now, peer, datagram);
        if self.ep.stats().hello_verify_requests > stats_before.hello_verify_requests {
            assert!(handshake, "a ClientHello from {peer} classified as established traffic");
        }
        let (out, to) = self.drain();
        let known_after = self.ep.connection_id(peer).is_some();
        if !known_before && !known_after {
            // Before a cookie verifies: nothing allocated, and never more out than in.
            assert!(
                out <= datagram.len(),
                "{out} bytes out for a {}-byte datagram from {peer}",
                datagram.len()
            );
            assert!(to.iter().all(|&d| d == peer), "replies only to the sender");
        }
        self.check_limits();
    }

    fn check_limits(&self) {
        let config = endpoint_config();
        let stats = self.ep.stats();
        assert!(self.ep.len() <= config.max_connections, "{stats:?}");
        assert!(stats.handshakes <= config.max_handshakes, "{stats:?}");
        assert!(stats.connections <= config.max_connections, "{stats:?}");
        assert!(stats.connections + stats.handshakes <= config.max_connections);
    }
}

/// Target `server_endpoint`. Input: the client's suite, then operations (see [`op`]).
pub fn server_endpoint(data: &[u8]) {
    let mut input = Input::new(data);
    let which = input.u8();
    let ctx = client_ctx(which);
    let now = base();
    let peers = peers();
    let mut client = ctx.new_session(None, now).expect("client session");
    client.set_peer_addr("192.0.2.1:5684".parse().unwrap());
    let mut run = EndpointRun {
        ep: Endpoint::server(
            if is_compact_choice(which) {
                compact_server_ctx().clone()
            } else {
                server_ctx().clone()
            },
            endpoint_config(),
        )
        .expect("endpoint"),
        now,
        client,
        client_addr: peers[0],
        to_client: Vec::new(),
        client_sent: Vec::new(),
        buf: vec![0; 65_536],
    };
    let mut steps = 0;
    while !input.is_empty() && steps < 200 {
        steps += 1;
        match input.u8() % op::COUNT {
            op::RAW => {
                let peer = peers[usize::from(input.u8()) % peers.len()];
                let len = usize::from(input.u16()) % 2048;
                let datagram = input.bytes(len);
                run.inject(peer, datagram);
            }
            op::CLIENT_TO_SERVER => {
                let mut out = Vec::new();
                while let Some(n) = run.client.poll_transmit(&mut run.buf) {
                    assert!(n <= MTU);
                    out.push(run.buf[..n].to_vec());
                }
                for d in out {
                    run.inject(run.client_addr, &d);
                    if run.client_sent.len() < 32 {
                        run.client_sent.push(d);
                    }
                }
            }
            op::SERVER_TO_CLIENT => {
                for d in std::mem::take(&mut run.to_client) {
                    run.client.handle_datagram(run.now, &d);
                }
            }
            op::MUTATE => {
                let from_attacker = input.u8() % 2 == 1;
                if let Some(d) = mutate(&mut input, &run.client_sent) {
                    let peer = if from_attacker {
                        peers[1]
                    } else {
                        run.client_addr
                    };
                    run.inject(peer, &d);
                }
            }
            op::TIME => {
                run.now += Duration::from_millis(u64::from(input.u16()) * 4);
                run.ep.handle_timeout(run.now);
                run.client.handle_timeout(run.now);
                run.drain();
                run.check_limits();
            }
            op::CLIENT_DATA => {
                let len = usize::from(input.u8());
                if run.client.is_established() {
                    let _ = run.client.send(input.bytes(len));
                }
            }
            _ => {
                let what = input.u8();
                if let Some(id) = run.ep.connection_id(run.client_addr) {
                    match what % 3 {
                        0 => {
                            let _ = run.ep.send(run.client_addr, id, b"server data");
                        }
                        1 => {
                            let mut buf = [0u8; 64];
                            let _ = run.ep.recv(run.client_addr, id, &mut buf);
                        }
                        _ => run.ep.close(run.client_addr, id),
                    }
                    run.drain();
                }
            }
        }
        while run.ep.poll_event().is_some() {}
    }
    // Whatever happened, the deadlines clean up: nothing is held forever (once the
    // application has read what arrived).
    for peer in peers {
        if let Some(id) = run.ep.connection_id(peer) {
            let mut buf = [0u8; 64];
            while let Ok(Some(_)) = run.ep.recv(peer, id, &mut buf) {}
        }
    }
    let later = run.now + Duration::from_secs(3600);
    run.ep.handle_timeout(later);
    run.drain();
    run.ep.handle_timeout(later + Duration::from_secs(3600));
    run.drain();
    while run.ep.poll_event().is_some() {}
    for peer in peers {
        if let Some(id) = run.ep.connection_id(peer) {
            let mut buf = [0u8; 64];
            while let Ok(Some(_)) = run.ep.recv(peer, id, &mut buf) {}
        }
    }
    assert!(
        run.ep.is_empty(),
        "{} peers left after two idle timeouts",
        run.ep.len()
    );
}

// ---------------------------------------------------------------------------------------------
// server_session

/// Target `server_session`. Input: the client's suite, then operations (see [`op`]; RAW's
/// peer byte is ignored: everything goes to the one server session).
pub fn server_session(data: &[u8]) {
    let mut input = Input::new(data);
    let which = input.u8();
    let ctx = client_ctx(which);
    let mut now = base();
    let server_ctx = if is_compact_choice(which) {
        compact_server_ctx()
    } else {
        server_ctx()
    };
    let mut server = server_ctx.new_session(now).expect("server session");
    let mut client = ctx.new_session(None, now).expect("client session");
    let mut buf = vec![0u8; 65_536];
    let mut to_client: Vec<Vec<u8>> = Vec::new();
    let mut client_sent: Vec<Vec<u8>> = Vec::new();
    let mut failed = false;
    let mut steps = 0;
    let mut feed = |server: &mut Session, d: &[u8], now: Instant, to_client: &mut Vec<Vec<u8>>| {
        server.handle_datagram(now, d);
        while let Some(n) = server.poll_transmit(&mut buf) {
            assert!(n <= MTU, "a {n}-byte datagram over the MTU {MTU}");
            if to_client.len() < 64 {
                to_client.push(buf[..n].to_vec());
            }
        }
    };
    while !input.is_empty() && steps < 200 {
        steps += 1;
        match input.u8() % op::COUNT {
            op::RAW => {
                let _peer = input.u8();
                let len = usize::from(input.u16()) % 2048;
                feed(&mut server, input.bytes(len), now, &mut to_client);
            }
            op::CLIENT_TO_SERVER => {
                let mut cbuf = vec![0u8; 65_536];
                while let Some(n) = client.poll_transmit(&mut cbuf) {
                    let d = cbuf[..n].to_vec();
                    feed(&mut server, &d, now, &mut to_client);
                    if client_sent.len() < 32 {
                        client_sent.push(d);
                    }
                }
            }
            op::SERVER_TO_CLIENT => {
                for d in std::mem::take(&mut to_client) {
                    client.handle_datagram(now, &d);
                }
            }
            op::MUTATE => {
                let _ = input.u8();
                if let Some(d) = mutate(&mut input, &client_sent) {
                    feed(&mut server, &d, now, &mut to_client);
                }
            }
            op::TIME => {
                now += Duration::from_millis(u64::from(input.u16()) * 4);
                server.handle_timeout(now);
                client.handle_timeout(now);
                feed(&mut server, &[], now, &mut to_client);
            }
            op::CLIENT_DATA => {
                let len = usize::from(input.u8());
                if client.is_established() {
                    let _ = client.send(input.bytes(len));
                }
            }
            _ => {
                let what = input.u8();
                match what % 3 {
                    0 => {
                        let r = server.send(b"server data");
                        assert_eq!(r.is_ok(), server.is_established(), "{r:?}");
                    }
                    1 => {
                        let mut small = [0u8; 16];
                        while let Ok(Some(_)) = server.recv(&mut small) {}
                    }
                    _ => server.close(),
                }
            }
        }
        // Errors are sticky; data flows only on an established session.
        if failed {
            assert_eq!(server.state(), SessionState::Failed);
            assert!(server.error().is_some());
        }
        failed = server.state() == SessionState::Failed;
        if server.is_established() {
            assert!(server.cipher().is_some() && server.data_mtu() > 0);
            assert!(server.data_mtu() < MTU);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cid_record_parser

/// The CID length of the `cid_record_parser` endpoint's server.
pub const ENDPOINT_CID_LEN: u8 = 6;

/// The server context of the `cid_record_parser` endpoint: Connection IDs of
/// [`ENDPOINT_CID_LEN`] bytes (CID connections run on the compact layer).
pub fn cid_server_ctx() -> &'static DtlsServerContext {
    static CTX: OnceLock<DtlsServerContext> = OnceLock::new();
    CTX.get_or_init(|| {
        DtlsServerContext::builder()
            .psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
            .mtu(MTU)
            .connection_id(ENDPOINT_CID_LEN)
            .build()
            .expect("CID server context")
    })
}

/// Target `cid_record_parser`. Input: the CID length (first byte, mod 17: 0..=16), then one
/// datagram. The `tls12_cid` parser (`wire::parse_cid`) with its record views checked against
/// the bytes; then the same bytes at a fresh server `Endpoint` with 6-byte CIDs from a fixed
/// address: never a panic, never a connection, never more bytes out than in, and the datagram
/// counted where it belongs (a parse error under its reason, an unknown CID as one).
pub fn cid_record_parser(data: &[u8]) {
    let mut input = Input::new(data);
    let cid_len = input.u8() % 17;
    let datagram = input.rest();
    let _ = __fuzz::parse_cid(datagram, cid_len);
    let parsed = __fuzz::parse_cid(datagram, ENDPOINT_CID_LEN);
    let now = base();
    let mut ep = Endpoint::server(cid_server_ctx().clone(), endpoint_config()).expect("endpoint");
    let peer = peers()[0];
    ep.handle_datagram(now, peer, datagram);
    let mut buf = vec![0u8; 2048];
    while ep.poll_transmit(&mut buf).is_some() {}
    while ep.poll_event().is_some() {}
    let stats = ep.stats();
    assert_eq!(stats.datagrams_in, 1);
    assert_eq!(stats.bytes_in, datagram.len() as u64);
    assert!(
        stats.bytes_out <= stats.bytes_in,
        "amplification before a cookie: {} bytes out for {} in",
        stats.bytes_out,
        stats.bytes_in
    );
    assert_eq!(stats.connections, 0);
    assert_eq!(stats.cid_connections, 0);
    assert_eq!(stats.handshakes, 0, "no state before a cookie");
    let dropped: u64 = stats.dropped.iter().sum();
    if matches!(datagram.first(), Some(128..=191)) {
        // RTP/RTCP by RFC 7983's first byte: never parsed, and without `demux_rtp` (off here)
        // dropped and counted under its own name.
        assert_eq!((stats.dropped_non_dtls, dropped), (1, 0), "RTP-looking datagram");
        return;
    }
    match parsed {
        Err(reason) => {
            assert_eq!(stats.dropped[reason.index()], 1, "{reason} not counted");
            assert_eq!(dropped, 1);
        }
        Ok(true) => {
            assert_eq!(stats.dropped_unknown_cid, 1, "an unknown CID not counted");
            assert_eq!(dropped, 0);
        }
        Ok(false) => assert_eq!(stats.dropped_unknown_cid, 0),
    }
}

// ---------------------------------------------------------------------------------------------
// cid_transcode

/// The operations of a `cid_transcode` program, as their first byte (mod [`cid_op::COUNT`]).
pub mod cid_op {
    /// `CLIENT_SEAL, type, len, bytes..`: the client's compact layer seals a record; the
    /// server's compact layer and handshake transcoder open it.
    pub const CLIENT_SEAL: u8 = 0;
    /// `CLIENT_TRANSCODE, type, len, bytes..`: the client's OpenSSL (stand-in) seals a standard
    /// record, `transcode_outbound` rewrites it with the server's CID; the server opens it.
    pub const CLIENT_TRANSCODE: u8 = 1;
    /// `SERVER_SEAL, type, len, bytes..`: the server seals, the client opens.
    pub const SERVER_SEAL: u8 = 2;
    /// `TO_SERVER, len_hi, len_lo, bytes..`: an arbitrary datagram at the server's layers.
    pub const TO_SERVER: u8 = 3;
    /// `TO_CLIENT, len_hi, len_lo, bytes..`: an arbitrary datagram at the client.
    pub const TO_CLIENT: u8 = 4;
    /// `MUTATE, which, pos_hi, pos_lo, xor`: a record sealed so far, one byte XORed (0: an
    /// exact replay), back at its receiver.
    pub const MUTATE: u8 = 5;
    /// Number of operations.
    pub const COUNT: u8 = 6;
}

/// Target `cid_transcode`. Input: suite, the server CID's length (mod 17), the client CID's
/// length (mod 17), the CIDs' bytes, then operations (see [`cid_op`]). Fixed keys (see
/// `__fuzz::CidLink`): sealed records round-trip through the compact layers and both
/// transcoding directions, and any record that authenticates is exactly one the sealer makes.
pub fn cid_transcode(data: &[u8]) {
    let mut input = Input::new(data);
    let suite = input.u8();
    let server_len = usize::from(input.u8() % 17);
    let client_len = usize::from(input.u8() % 17);
    let mut server_cid = input.bytes(server_len).to_vec();
    server_cid.resize(server_len, 0);
    let mut client_cid = input.bytes(client_len).to_vec();
    client_cid.resize(client_len, 0);
    let mut link = __fuzz::CidLink::new(suite, &server_cid, &client_cid);
    // Records sealed so far, with whether the server receives them.
    let mut sealed: Vec<(bool, Vec<u8>)> = Vec::new();
    let mut steps = 0;
    while !input.is_empty() && steps < 64 {
        steps += 1;
        match input.u8() % cid_op::COUNT {
            op @ (cid_op::CLIENT_SEAL | cid_op::CLIENT_TRANSCODE | cid_op::SERVER_SEAL) => {
                let content_type = input.u8();
                let len = usize::from(input.u8()) * 8 % 1500;
                let plain = input.bytes(len);
                let record = match op {
                    cid_op::CLIENT_SEAL => link.client_seal(content_type, plain),
                    cid_op::CLIENT_TRANSCODE => link.client_transcode(content_type, plain),
                    _ => link.server_seal(content_type, plain),
                };
                if let Some(r) = record {
                    if sealed.len() < 32 {
                        sealed.push((op != cid_op::SERVER_SEAL, r));
                    }
                }
            }
            cid_op::TO_SERVER => {
                let len = usize::from(input.u16()) % 4096;
                link.to_server(input.bytes(len));
            }
            cid_op::TO_CLIENT => {
                let len = usize::from(input.u16()) % 4096;
                link.to_client(input.bytes(len));
            }
            _ => {
                let which = usize::from(input.u8());
                let pos = usize::from(input.u16());
                let xor = input.u8();
                if sealed.is_empty() {
                    continue;
                }
                let (to_server, mut record) = sealed[which % sealed.len()].clone();
                let at = pos % record.len();
                record[at] ^= xor;
                let authentic = if to_server {
                    link.to_server(&record)
                } else {
                    link.to_client(&record)
                };
                // A changed record never authenticates; an exact replay is refused too.
                assert_eq!(authentic, 0, "a mutated or replayed record was accepted");
            }
        }
    }
}
