//! Compact connections (`compact_connections(true)`) against peers nobody here wrote, over real
//! UDP on 127.0.0.1: after the hand-off our side speaks through its own AEAD record layer
//! (openssl-dtls/src/record.rs) with no `SSL` left, and `openssl s_client` / `s_server`,
//! `gnutls-cli` / `gnutls-serv` must not notice.
//!
//! Our side is the sans-IO [`Endpoint`] driven here over a plain `UdpSocket`, so a test sees the
//! peer's real datagrams before our side does: it asserts on the session itself (`is_compact`,
//! `is_lingering`, `stats`, `closed_by_peer`) and can hold, reorder, replay and corrupt records.
//!
//! - Every suite of both default presets, both roles, both peer families: the peer is forced to
//!   one suite (`-cipher`, a GnuTLS priority string), our side offers its whole default preset.
//!   Each case sends 70 records each way (more than the 64-record replay window), sizes from
//!   1 byte to the data MTU, then closes with `close_notify`.
//! - Mangling: reordered records are delivered once each; replayed records, records more than
//!   63 behind the newest, tampered, truncated and re-sent handshake records are dropped and
//!   counted; the connection then still carries data both ways and closes cleanly.
//! - Our lingering server: it answers a retransmitted final flight, writes through OpenSSL and
//!   then continues the sequence in the compact layer, reads or sends `close_notify` before any
//!   data. Our client: a record that overtakes the server's last flight is kept and opened.
//!
//! What the peers cannot do (each case says so where it stands):
//! - gnutls-cli 3.7.9 dies of SIGSEGV right after an ECDHE-PSK handshake (its own session
//!   printing; also against `openssl s_server`): with ECDHE-PSK-CHACHA20-POLY1305 only the
//!   handshake is checked against it. That suite runs in full against the other three programs.
//! - gnutls-serv's echo answers in records of at most 254 bytes, so the records our client gets
//!   from GnuTLS are at most that long (our records to it go up to the data MTU).
//!
//! Who can close first: `s_client` and `gnutls-cli` send `close_notify` at the end of their
//! stdin, so our server sees the peer's close. Neither server program can start a close:
//! `s_server` closes its socket *before* `SSL_shutdown` at the end of its stdin (checked with
//! OpenSSL 3.0: no alert leaves it), and `gnutls-serv` has no input to ask it. Against them our
//! client always closes first, and the peer's close is covered by the client programs.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use openssl_dtls::{
    ConnectionId, DtlsClientContext, DtlsServerContext, Endpoint, EndpointConfig, Error, Event,
    PskCredentials, SessionState, SessionStats,
};

use super::peer::{spawn_server, Peer, TempDir};
use super::{
    ca_pem, gnutls_cli, key_hex, material, require_gnutls, require_openssl, s_client, s_server,
    strings, IDENTITY, KEY, STEP,
};

/// gnutls-serv's UDP echo reads into a 255-byte buffer (one byte kept for a NUL, src/udp-serv.c)
/// and answers each read with one record: a longer record comes back in pieces.
const GNUTLS_SERV_ECHO_MAX: usize = 254;

/// Records sent each way in one suite's case: more than the 64-record replay window, so the
/// window slides and sequence numbers pass 64.
const RECORDS: usize = 70;

/// How the peer authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    Psk,
    Ecdsa,
    Rsa,
}

/// One cipher suite: its OpenSSL name and the GnuTLS key exchange and cipher that force it.
#[derive(Debug)]
struct Suite {
    openssl: &'static str,
    gnutls_kx: &'static str,
    gnutls_cipher: &'static str,
    auth: Auth,
}

impl Suite {
    fn gnutls_priority(&self) -> String {
        format!(
            "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+{}:-CIPHER-ALL:+{}",
            self.gnutls_kx, self.gnutls_cipher
        )
    }

    /// Bytes of explicit nonce at the start of each record's fragment.
    fn explicit_nonce_len(&self) -> usize {
        if self.openssl.contains("CHACHA20") {
            0
        } else {
            8
        }
    }
}

const fn suite(
    openssl: &'static str,
    gnutls_kx: &'static str,
    gnutls_cipher: &'static str,
    auth: Auth,
) -> Suite {
    Suite {
        openssl,
        gnutls_kx,
        gnutls_cipher,
        auth,
    }
}

/// The PSK preset (`PSK_CIPHERS`), in its order.
const PSK_SUITES: [Suite; 6] = [
    suite("PSK-AES128-CCM8", "PSK", "AES-128-CCM-8", Auth::Psk),
    suite("PSK-AES128-GCM-SHA256", "PSK", "AES-128-GCM", Auth::Psk),
    suite(
        "ECDHE-PSK-CHACHA20-POLY1305",
        "ECDHE-PSK",
        "CHACHA20-POLY1305",
        Auth::Psk,
    ),
    suite("PSK-AES128-CCM", "PSK", "AES-128-CCM", Auth::Psk),
    suite("PSK-AES256-CCM", "PSK", "AES-256-CCM", Auth::Psk),
    suite("PSK-AES256-GCM-SHA384", "PSK", "AES-256-GCM", Auth::Psk),
];

/// The certificate preset (`CERTIFICATE_CIPHERS`), in its order.
const CERTIFICATE_SUITES: [Suite; 7] = [
    suite(
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA",
        "AES-128-GCM",
        Auth::Ecdsa,
    ),
    suite(
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA",
        "AES-128-GCM",
        Auth::Rsa,
    ),
    suite(
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA",
        "AES-256-GCM",
        Auth::Ecdsa,
    ),
    suite(
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA",
        "AES-256-GCM",
        Auth::Rsa,
    ),
    suite(
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA",
        "CHACHA20-POLY1305",
        Auth::Ecdsa,
    ),
    suite(
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-RSA",
        "CHACHA20-POLY1305",
        Auth::Rsa,
    ),
    suite(
        "ECDHE-ECDSA-AES128-CCM8",
        "ECDHE-ECDSA",
        "AES-128-CCM-8",
        Auth::Ecdsa,
    ),
];

/// The peer program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    /// `openssl s_client` against our server: sends its stdin lines, prints what it receives.
    SClient,
    /// `gnutls-cli --udp` against our server: the same.
    GnutlsCli,
    /// `openssl s_server -listen` against our client: sends its stdin lines, prints what it
    /// receives.
    SServer,
    /// `gnutls-serv --udp --echo` against our client: echoes each record.
    GnutlsServ,
}

impl Program {
    fn is_client(self) -> bool {
        matches!(self, Program::SClient | Program::GnutlsCli)
    }

    fn require(self) {
        match self {
            Program::SClient | Program::SServer => require_openssl(),
            Program::GnutlsCli | Program::GnutlsServ => require_gnutls(),
        }
    }

    /// What the peer prints once it has read our `close_notify`.
    fn saw_our_close(self) -> &'static str {
        match self {
            Program::SClient => "\nclosed\n",
            Program::GnutlsCli => "- Peer has closed the GnuTLS connection",
            Program::SServer => "DONE",
            Program::GnutlsServ => "\nEOF\n",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Our side: an Endpoint over a UdpSocket

/// What the session looked like after the last call that touched it (the endpoint forgets a
/// session once it has closed and sent its last datagram).
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    state: SessionState,
    compact: bool,
    lingering: bool,
    closed_by_peer: bool,
    stats: SessionStats,
    data_mtu: usize,
    cipher: Option<&'static str>,
    version: Option<&'static str>,
}

/// Our endpoint with one connection, driven over a socket on 127.0.0.1.
struct Ours {
    socket: UdpSocket,
    endpoint: Endpoint,
    /// The connection, once its handshake completed.
    conn: Option<(SocketAddr, ConnectionId)>,
    /// The peer we connected to (client role), or the first one that talked to us.
    remote: Option<SocketAddr>,
    snapshot: Option<Snapshot>,
    /// Application records received, in order.
    received: VecDeque<Vec<u8>>,
    /// The `Closed` event's error, once it came.
    closed: Option<Option<Error>>,
    /// The datagram whose arrival completed our handshake (the peer's last flight).
    handshake_end: Vec<u8>,
    last_fed: Vec<u8>,
    /// Datagrams fed so far.
    fed: usize,
    /// Lose (never send) what our side queues when its handshake completes: our server's last
    /// flight.
    lose_last_flight: bool,
    /// Datagrams lost that way.
    lost: usize,
    out: Vec<u8>,
    inbuf: Vec<u8>,
}

impl Ours {
    fn new(endpoint: Endpoint) -> Ours {
        Ours {
            socket: UdpSocket::bind("127.0.0.1:0").expect("bind our socket"),
            endpoint,
            conn: None,
            remote: None,
            snapshot: None,
            received: VecDeque::new(),
            closed: None,
            handshake_end: Vec::new(),
            last_fed: Vec::new(),
            fed: 0,
            lose_last_flight: false,
            lost: 0,
            out: vec![0; 65_536],
            inbuf: vec![0; 65_536],
        }
    }

    fn server(ctx: DtlsServerContext) -> Ours {
        Ours::new(Endpoint::server(ctx, EndpointConfig::default()).unwrap())
    }

    fn client(to: SocketAddr, ctx: &DtlsClientContext, server_name: Option<&str>) -> Ours {
        let mut ours = Ours::new(Endpoint::client(EndpointConfig::default()).unwrap());
        ours.endpoint
            .connect(Instant::now(), to, ctx, server_name)
            .unwrap();
        ours.remote = Some(to);
        ours.settle();
        ours
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    fn snapshot(&self) -> Snapshot {
        self.snapshot.expect("a session")
    }

    fn conn(&self) -> (SocketAddr, ConnectionId) {
        self.conn.expect("an established connection")
    }

    /// Sends what the endpoint has queued.
    fn flush(&mut self) {
        while let Some((to, n)) = self.endpoint.poll_transmit(&mut self.out) {
            self.socket.send_to(&self.out[..n], to).expect("send_to");
        }
    }

    /// After any call into the endpoint: record the session, take events and data, send.
    fn settle(&mut self) {
        if let Some(remote) = self.remote {
            if let Some(id) = self.endpoint.connection_id(remote) {
                if let Some(s) = self.endpoint.session(remote, id) {
                    self.snapshot = Some(Snapshot {
                        state: s.state(),
                        compact: s.is_compact(),
                        lingering: s.is_lingering(),
                        closed_by_peer: s.closed_by_peer(),
                        stats: s.stats(),
                        data_mtu: s.data_mtu(),
                        cipher: s.cipher(),
                        version: s.protocol_version(),
                    });
                }
            }
        }
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::Connected { peer, id } => {
                    assert!(self.conn.is_none(), "a second connection from {peer}");
                    self.conn = Some((peer, id));
                    self.handshake_end = self.last_fed.clone();
                    if self.lose_last_flight {
                        while self.endpoint.poll_transmit(&mut self.out).is_some() {
                            self.lost += 1;
                        }
                    }
                }
                Event::Readable { peer, id } => {
                    let mut buf = [0u8; 2048];
                    while let Ok(Some(n)) = self.endpoint.recv(peer, id, &mut buf) {
                        self.received.push_back(buf[..n].to_vec());
                    }
                }
                Event::Closed { error, .. } => self.closed = Some(error),
                _ => {}
            }
        }
        self.flush();
    }

    /// The next datagram for us, not yet fed; `None` at `deadline`. Timers run meanwhile.
    fn recv_raw(&mut self, deadline: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            if self.endpoint.poll_timeout().is_some_and(|at| at <= now) {
                self.endpoint.handle_timeout(now);
                self.settle();
            }
            let until = self
                .endpoint
                .poll_timeout()
                .map_or(deadline, |at| at.min(deadline));
            let wait = until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            self.socket.set_read_timeout(Some(wait)).unwrap();
            match self.socket.recv_from(&mut self.inbuf) {
                Ok((n, from)) => return Some((from, self.inbuf[..n].to_vec())),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("recv_from: {e}"),
            }
        }
    }

    /// Hands one datagram to the endpoint, as if it had just arrived from `from`.
    fn feed(&mut self, from: SocketAddr, datagram: &[u8]) {
        self.remote.get_or_insert(from);
        self.fed += 1;
        self.last_fed.clear();
        self.last_fed.extend_from_slice(datagram);
        self.endpoint
            .handle_datagram(Instant::now(), from, datagram);
        self.settle();
    }

    /// Receives and feeds datagrams until `done` holds; panics with `what` and the peer's
    /// transcript after `timeout`.
    fn run_until(
        &mut self,
        peer: &Peer,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Ours) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            match self.recv_raw(deadline) {
                Some((from, datagram)) => self.feed(from, &datagram),
                None => panic!(
                    "no {what} within {timeout:?}: {:?}, {:?}, {:?}\n{}",
                    self.snapshot,
                    self.closed,
                    self.endpoint.stats(),
                    peer.transcript()
                ),
            }
        }
    }

    fn send(&mut self, data: &[u8]) {
        let (peer, id) = self.conn();
        self.endpoint
            .send(peer, id, data)
            .unwrap_or_else(|e| panic!("send of {} bytes: {e:?} {:?}", data.len(), self.snapshot));
        self.settle();
    }

    fn close(&mut self) {
        let (peer, id) = self.conn();
        self.endpoint.close(peer, id);
        self.settle();
    }
}

// ---------------------------------------------------------------------------------------------
// Our contexts, compact

fn server_ctx(auth: Auth) -> DtlsServerContext {
    let m = material();
    let mut builder = DtlsServerContext::builder();
    match auth {
        Auth::Psk => builder
            .psk_key_store(|identity| (identity == IDENTITY.as_bytes()).then(|| KEY.to_vec())),
        Auth::Ecdsa => builder
            .certificate_chain_pem(&m.ec_server.chain_pem())
            .private_key_pem(&m.ec_server.key_pem()),
        Auth::Rsa => builder
            .certificate_chain_pem(&m.rsa_server.chain_pem())
            .private_key_pem(&m.rsa_server.key_pem()),
    };
    builder
        .handshake_timeout(STEP)
        .compact_connections(true)
        .build()
        .unwrap()
}

fn client_ctx(auth: Auth) -> DtlsClientContext {
    let m = material();
    let mut builder = DtlsClientContext::builder();
    match auth {
        Auth::Psk => builder.psk_credentials(PskCredentials::new(IDENTITY, KEY)),
        Auth::Ecdsa => builder.root_certificates_pem(&ca_pem(&m.ec)),
        Auth::Rsa => builder.root_certificates_pem(&ca_pem(&m.rsa)),
    };
    builder
        .handshake_timeout(STEP)
        .compact_connections(true)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// One connection with one peer program on one suite

/// A line of `len - 1` printable bytes (the peer adds the newline: a record of `len` bytes),
/// starting with digits (never one of s_client's or s_server's command letters).
fn line(index: usize, len: usize, tag: char) -> String {
    let head = format!("{index:03}{tag}");
    head.chars()
        .chain((0..).map(|i| char::from(b'a' + (i % 26) as u8)))
        .take(len - 1)
        .collect()
}

/// `count` record sizes from 1 byte to `data_mtu`, the edges first.
fn sizes(data_mtu: usize, count: usize) -> Vec<usize> {
    let mut sizes = vec![
        1,
        2,
        3,
        13,
        16,
        17,
        64,
        255,
        256,
        257,
        512,
        1000,
        data_mtu - 1,
        data_mtu,
    ];
    let mut x = 7usize;
    while sizes.len() < count {
        x = (x * 31 + 17) % data_mtu + 1;
        sizes.push(x);
    }
    sizes
}

/// One of the peer's records, captured before our side saw it.
struct Captured {
    line: String,
    from: SocketAddr,
    datagram: Vec<u8>,
    seq: u64,
}

struct Case {
    program: Program,
    peer: Peer,
    ours: Ours,
    /// Records our side received so far (all checked).
    received: usize,
    /// Records our side sent so far.
    sent: usize,
    _dir: TempDir,
}

impl Case {
    /// Starts the peer and completes the handshake; checks the hand-off state.
    fn start(program: Program, suite: &'static Suite) -> Case {
        Case::start_losing(program, suite, false)
    }

    /// [`start`](Self::start); with `lose_last_flight`, our server's last flight never leaves.
    fn start_losing(program: Program, suite: &'static Suite, lose_last_flight: bool) -> Case {
        program.require();
        let m = material();
        let dir = TempDir::new("compact");
        let key = key_hex();
        let priority = suite.gnutls_priority();
        let (mut ours, peer) = if program.is_client() {
            let mut ours = Ours::server(server_ctx(suite.auth));
            ours.lose_last_flight = lose_last_flight;
            let addr = ours.addr();
            let ca = match suite.auth {
                Auth::Psk => String::new(),
                Auth::Ecdsa => dir.write("ca.pem", &ca_pem(&m.ec)),
                Auth::Rsa => dir.write("ca.pem", &ca_pem(&m.rsa)),
            };
            let peer = match program {
                Program::SClient => {
                    let mut extra = vec!["-nocommands", "-cipher", suite.openssl];
                    if suite.auth == Auth::Psk {
                        extra.extend(["-psk", key.as_str(), "-psk_identity", IDENTITY]);
                    } else {
                        extra.extend([
                            "-CAfile",
                            ca.as_str(),
                            "-verify_return_error",
                            "-verify_hostname",
                            "localhost",
                        ]);
                    }
                    Peer::spawn("openssl", "openssl", &s_client(addr, &extra))
                }
                _ => {
                    let mut extra = vec!["--priority", priority.as_str()];
                    if suite.auth == Auth::Psk {
                        extra.extend(["--pskusername", IDENTITY, "--pskkey", key.as_str()]);
                    } else {
                        extra.extend([
                            "--x509cafile",
                            ca.as_str(),
                            "--verify-hostname",
                            "localhost",
                        ]);
                    }
                    Peer::spawn("gnutls-cli", "gnutls-bin", &gnutls_cli(addr, &extra))
                }
            };
            (ours, peer)
        } else {
            let (cert, cert_key) = match suite.auth {
                Auth::Psk => (String::new(), String::new()),
                Auth::Ecdsa => {
                    let (c, k, _) = m.ec_server.write(&dir, "server");
                    (c, k)
                }
                Auth::Rsa => {
                    let (c, k, _) = m.rsa_server.write(&dir, "server");
                    (c, k)
                }
            };
            let passwd = dir.write("psk.passwd", format!("{IDENTITY}:{key}\n").as_bytes());
            let (peer, port) = match program {
                Program::SServer => spawn_server("openssl", "openssl", "ACCEPT", STEP, |port| {
                    let mut extra = vec!["-cipher", suite.openssl];
                    if suite.auth == Auth::Psk {
                        extra.extend(["-nocert", "-psk", key.as_str(), "-psk_identity", IDENTITY]);
                    } else {
                        extra.extend(["-cert", cert.as_str(), "-key", cert_key.as_str()]);
                    }
                    s_server(port, &extra)
                }),
                _ => spawn_server("stdbuf", "coreutils", "listening on IPv4", STEP, |port| {
                    let port = port.to_string();
                    let mut args = strings(&[
                        "-oL",
                        "gnutls-serv",
                        "--udp",
                        "--echo",
                        "--port",
                        &port,
                        "--priority",
                        &priority,
                    ]);
                    if suite.auth == Auth::Psk {
                        args.extend(strings(&["--pskpasswd", &passwd]));
                    } else {
                        args.extend(strings(&[
                            "--x509certfile",
                            &cert,
                            "--x509keyfile",
                            &cert_key,
                        ]));
                    }
                    args
                }),
            };
            let name = (suite.auth != Auth::Psk).then_some("localhost");
            let ours = Ours::client(([127, 0, 0, 1], port).into(), &client_ctx(suite.auth), name);
            (ours, peer)
        };
        ours.run_until(&peer, "handshake", STEP, |o| o.conn.is_some());
        let s = ours.snapshot();
        assert_eq!(s.state, SessionState::Established);
        assert_eq!(s.cipher, Some(suite.openssl), "{}", peer.transcript());
        assert_eq!(s.version, Some("DTLSv1.2"));
        if program.is_client() {
            // Our server sent the last flight: it keeps its SSL until the peer's first record.
            assert!(s.lingering && !s.compact, "{s:?}");
        } else {
            // Our client received the last flight: handed off at once.
            assert!(s.compact && !s.lingering, "{s:?}");
        }
        Case {
            program,
            peer,
            ours,
            received: 0,
            sent: 0,
            _dir: dir,
        }
    }

    /// Makes the peer send `line` and a newline as one record: on its stdin, or (gnutls-serv)
    /// by sending it for the echo.
    fn provoke(&mut self, line: &str) {
        if self.program == Program::GnutlsServ {
            self.ours.send(format!("{line}\n").as_bytes());
            self.sent += 1;
        } else {
            self.peer.send_line(line);
        }
    }

    /// Checks that the next record our side received (waiting for it) is `line` and a newline.
    fn expect_record(&mut self, line: &str) {
        self.ours
            .run_until(&self.peer, "record from the peer", STEP, |o| {
                !o.received.is_empty()
            });
        self.check_received(line);
    }

    /// gnutls-serv's answer to `line` and a newline: the same bytes, in records of at most
    /// [`GNUTLS_SERV_ECHO_MAX`] bytes.
    fn expect_echo(&mut self, line: &str) {
        let want = format!("{line}\n");
        let mut got = Vec::new();
        while got.len() < want.len() {
            self.ours
                .run_until(&self.peer, "echo", STEP, |o| !o.received.is_empty());
            let record = self.ours.received.pop_front().unwrap();
            assert!(
                record.len() <= GNUTLS_SERV_ECHO_MAX,
                "{} bytes",
                record.len()
            );
            got.extend(record);
            self.received += 1;
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            want,
            "{}",
            self.peer.transcript()
        );
    }

    /// The peer's record(s) after [`provoke`](Self::provoke).
    fn expect_from_peer(&mut self, line: &str) {
        if self.program == Program::GnutlsServ {
            self.expect_echo(line);
        } else {
            self.expect_record(line);
        }
    }

    /// Checks that our side has received exactly `line` and a newline since the last check.
    fn check_received(&mut self, line: &str) {
        let got = self.ours.received.pop_front().unwrap_or_else(|| {
            panic!(
                "nothing received where {} bytes were due: {:?}",
                line.len() + 1,
                self.ours.snapshot
            )
        });
        assert_eq!(
            String::from_utf8_lossy(&got),
            format!("{line}\n"),
            "{}",
            self.peer.transcript()
        );
        assert!(self.ours.received.is_empty(), "more than one record");
        self.received += 1;
    }

    fn nothing_received(&self) {
        assert!(
            self.ours.received.is_empty(),
            "delivered: {:?}",
            self.ours.received
        );
        assert_eq!(self.ours.snapshot().state, SessionState::Established);
    }

    /// The peer sends one record per line, lock-step (a program reading its stdin could join
    /// lines written back to back), and our side receives each exactly.
    fn peer_to_us(&mut self, lines: &[String]) {
        for l in lines {
            self.provoke(l);
            self.expect_from_peer(l);
            let s = self.ours.snapshot();
            assert!(s.compact && !s.lingering, "after a peer record: {s:?}");
        }
    }

    /// We send each line and a newline as one record; the peer prints them all in order (or
    /// echoes each). Sent in bursts of 8, each burst checked before the next, so the peer's
    /// socket buffer never overflows.
    fn us_to_peer(&mut self, lines: &[String]) {
        let mut expected = String::new();
        for burst in lines.chunks(8) {
            for l in burst {
                assert!(self.ours.snapshot().compact);
                self.ours.send(format!("{l}\n").as_bytes());
                self.sent += 1;
                expected.push_str(l);
                expected.push('\n');
            }
            if self.program == Program::GnutlsServ {
                for l in burst {
                    self.expect_echo(l);
                }
            } else {
                self.peer.expect_output(&expected, STEP);
            }
        }
    }

    /// [`us_to_peer`](Self::us_to_peer) before the hand-off: through OpenSSL's record layer.
    fn us_to_peer_lingering(&mut self, lines: &[String]) {
        let mut expected = String::new();
        for l in lines {
            assert!(self.ours.snapshot().lingering);
            self.ours.send(format!("{l}\n").as_bytes());
            self.sent += 1;
            expected.push_str(l);
            expected.push('\n');
        }
        self.peer.expect_output(&expected, STEP);
    }

    /// Makes the peer send one record and captures it before our side sees it.
    fn capture(&mut self, index: usize, previous: Option<u64>) -> Captured {
        let line = line(index, 24, 'm');
        self.provoke(&line);
        let (from, datagram) = self
            .ours
            .recv_raw(Instant::now() + STEP)
            .unwrap_or_else(|| panic!("no record from the peer\n{}", self.peer.transcript()));
        // One epoch-1 application-data record, nothing else in the datagram.
        assert_eq!(datagram[0], 23, "not application data: {datagram:02x?}");
        assert_eq!(&datagram[3..5], &[0, 1], "not epoch 1");
        let len = usize::from(u16::from_be_bytes([datagram[11], datagram[12]]));
        assert_eq!(13 + len, datagram.len(), "one record per datagram");
        let mut seq = [0u8; 8];
        seq[2..].copy_from_slice(&datagram[5..11]);
        let seq = u64::from_be_bytes(seq);
        if let Some(previous) = previous {
            assert_eq!(seq, previous + 1, "the peer numbers its records one by one");
        }
        Captured {
            line,
            from,
            datagram,
            seq,
        }
    }

    fn check_counts(&self) {
        let s = self.ours.snapshot();
        assert_eq!(s.stats.app_in, self.received as u64, "{s:?}");
        assert_eq!(s.stats.app_out, self.sent as u64, "{s:?}");
    }

    /// We close: the peer reads our `close_notify`.
    fn close_by_us(mut self) {
        self.ours.close();
        self.peer.expect_output(self.program.saw_our_close(), STEP);
        if self.program != Program::GnutlsServ {
            // gnutls-serv waits for the next connection; the others exit.
            self.peer.expect_success(STEP);
        }
        let s = self.ours.snapshot();
        assert!(!s.closed_by_peer, "{s:?}");
        assert_eq!(s.state, SessionState::Closed);
        assert!(
            matches!(self.ours.closed, Some(None)),
            "an orderly close: {:?}",
            self.ours.closed
        );
        let (peer, id) = self.ours.conn();
        assert!(matches!(
            self.ours.endpoint.send(peer, id, b"after close"),
            Err(Error::Closed)
        ));
    }

    /// The peer closes (end of its stdin): our session reads its `close_notify`.
    fn close_by_peer(mut self) {
        assert!(
            self.program.is_client(),
            "only the client programs can close first"
        );
        self.peer.close_stdin();
        self.ours
            .run_until(&self.peer, "close_notify", STEP, |o| o.closed.is_some());
        let s = self.ours.snapshot();
        assert!(s.closed_by_peer, "{s:?}\n{}", self.peer.transcript());
        assert!(s.compact, "{s:?}");
        assert_eq!(s.state, SessionState::Closed);
        assert!(
            matches!(self.ours.closed, Some(None)),
            "an orderly close: {:?}",
            self.ours.closed
        );
        self.peer.expect_success(STEP);
    }
}

// ---------------------------------------------------------------------------------------------
// Every suite

/// One suite's case: hand-off, 70 records each way from 1 byte to the data MTU, close.
fn exchange_on(program: Program, suite: &'static Suite, peer_closes: bool) {
    let mut case = Case::start(program, suite);
    if program == Program::GnutlsCli
        && suite.gnutls_kx == "ECDHE-PSK"
        && gnutls_cli_crashed(&case.peer)
    {
        return;
    }
    let data_mtu = case.ours.snapshot().data_mtu;
    assert!(
        (1100..1200).contains(&data_mtu),
        "data MTU {data_mtu} at MTU 1200"
    );
    let (peer, id) = case.ours.conn();
    assert!(
        matches!(
            case.ours.endpoint.send(peer, id, &vec![b'x'; data_mtu + 1]),
            Err(Error::PayloadTooLarge { len, max }) if len == data_mtu + 1 && max == data_mtu
        ),
        "one byte over the data MTU is refused"
    );
    let sizes = sizes(data_mtu, RECORDS);
    let from_peer: Vec<String> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| line(i, n, 'p'))
        .collect();
    let from_us: Vec<String> = sizes
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &n)| line(i, n, 'u'))
        .collect();
    case.peer_to_us(&from_peer);
    case.us_to_peer(&from_us);
    case.check_counts();
    let s = case.ours.snapshot();
    assert!(s.compact, "{s:?}");
    assert_eq!(
        (
            s.stats.dropped_replayed_records,
            s.stats.dropped_unauthenticated_records,
            s.stats.dropped_handshake_records,
            s.stats.dropped_short_records,
            s.stats.recv_dropped,
            s.stats.send_dropped,
        ),
        (0, 0, 0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(case.ours.endpoint.stats().compact_handoffs, 1);
    match program {
        Program::SClient => assert!(
            case.peer
                .output_contains(&format!("Cipher is {}", suite.openssl)),
            "{}",
            case.peer.transcript()
        ),
        Program::SServer => assert!(
            case.peer
                .output_contains(&format!("CIPHER is {}", suite.openssl)),
            "{}",
            case.peer.transcript()
        ),
        Program::GnutlsCli => assert!(
            case.peer
                .output_contains(&format!("-({})\n", suite.gnutls_cipher)),
            "{}",
            case.peer.transcript()
        ),
        Program::GnutlsServ => {}
    }
    if peer_closes {
        case.close_by_peer();
    } else {
        case.close_by_us();
    }
}

/// gnutls-cli 3.7.9 (Debian 12) cannot do ECDHE-PSK-CHACHA20-POLY1305: it completes the
/// handshake, then dies of SIGSEGV printing the session (its `print_info` calls
/// `gnutls_psk_server_get_username()` on a client session; the same against `openssl s_server`,
/// in TLS as in DTLS). [`Case::start`] has checked our server's side of that handshake
/// (established, the suite, lingering); the data and the close need a gnutls-cli that survives
/// it, so the case ends here, saying so, if the peer died of that signal and runs in full
/// otherwise. The same suite runs in full against gnutls-serv and both OpenSSL programs.
fn gnutls_cli_crashed(peer: &Peer) -> bool {
    use std::os::unix::process::ExitStatusExt;
    match peer.wait_exit(Duration::from_secs(2)) {
        Some(status) if status.signal() == Some(11) => {
            eprintln!(
                "gnutls-cli died of SIGSEGV after the ECDHE-PSK handshake (GnuTLS bug, see \
                 gnutls_cli_crashed): data and close not tested with it on this suite"
            );
            true
        }
        Some(status) => panic!(
            "`{}` ended: {status}\n{}",
            peer.command(),
            peer.transcript()
        ),
        None => false,
    }
}

/// Every suite of `suites` against `program`. The client programs close first in every other
/// case, our side in the rest.
fn every_suite(program: Program, suites: &'static [Suite]) {
    for (i, suite) in suites.iter().enumerate() {
        exchange_on(program, suite, program.is_client() && i % 2 == 0);
    }
}

#[test]
fn compact_our_server_with_openssl_s_client_on_every_psk_suite() {
    every_suite(Program::SClient, &PSK_SUITES);
}

#[test]
fn compact_our_server_with_openssl_s_client_on_every_certificate_suite() {
    every_suite(Program::SClient, &CERTIFICATE_SUITES);
}

#[test]
fn compact_our_server_with_gnutls_cli_on_every_psk_suite() {
    every_suite(Program::GnutlsCli, &PSK_SUITES);
}

#[test]
fn compact_our_server_with_gnutls_cli_on_every_certificate_suite() {
    every_suite(Program::GnutlsCli, &CERTIFICATE_SUITES);
}

#[test]
fn compact_our_client_with_openssl_s_server_on_every_psk_suite() {
    every_suite(Program::SServer, &PSK_SUITES);
}

#[test]
fn compact_our_client_with_openssl_s_server_on_every_certificate_suite() {
    every_suite(Program::SServer, &CERTIFICATE_SUITES);
}

#[test]
fn compact_our_client_with_gnutls_serv_on_every_psk_suite() {
    every_suite(Program::GnutlsServ, &PSK_SUITES);
}

#[test]
fn compact_our_client_with_gnutls_serv_on_every_certificate_suite() {
    every_suite(Program::GnutlsServ, &CERTIFICATE_SUITES);
}

// ---------------------------------------------------------------------------------------------
// Reordered, replayed, too old, tampered

/// Copies of `c`'s datagram, each changed so that it must not authenticate.
fn tampered(c: &Captured, suite: &Suite) -> Vec<(&'static str, Vec<u8>)> {
    let d = &c.datagram;
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut copy = d.clone();
        f(&mut copy);
        copy
    };
    let body = 13 + suite.explicit_nonce_len();
    vec![
        ("a ciphertext bit", with(&|d| d[body + 3] ^= 0x01)),
        ("a tag bit", with(&|d| *d.last_mut().unwrap() ^= 0x80)),
        ("the first fragment byte", with(&|d| d[13] ^= 0x01)),
        // A sequence number far ahead: if it moved the window, every genuine record after it
        // would be refused as too old.
        ("the sequence number's top bit", with(&|d| d[5] ^= 0x80)),
        ("the content type (alert)", with(&|d| d[0] = 21)),
        ("the epoch (2)", with(&|d| d[4] = 2)),
        (
            "the version (DTLS 1.0)",
            with(&|d| d[1..3].copy_from_slice(&[0xfe, 0xff])),
        ),
        (
            "one byte appended to the fragment",
            with(&|d| {
                d.push(0);
                let len = u16::from_be_bytes([d[11], d[12]]) + 1;
                d[11..13].copy_from_slice(&len.to_be_bytes());
            }),
        ),
    ]
}

/// Against the real peer on `suite`: records held back and delivered out of order are
/// delivered once each; replays, records more than 63 behind the newest, tampered copies and
/// re-sent handshake records are dropped and counted; afterwards data still flows both ways
/// and the connection closes cleanly.
fn mangled_records_from(program: Program, suite: &'static Suite) {
    let mut case = Case::start(program, suite);
    let handshake_end = case.ours.handshake_end.clone();
    assert!(!handshake_end.is_empty());
    // The first record, tampered: dropped, and it does not end our server's linger. The
    // genuine one does (our client is compact already).
    let first = case.capture(0, None);
    let lingering = case.ours.snapshot().lingering;
    assert_eq!(lingering, program.is_client());
    let mut forged = first.datagram.clone();
    *forged.last_mut().unwrap() ^= 1;
    case.ours.feed(first.from, &forged);
    case.nothing_received();
    let s = case.ours.snapshot();
    assert_eq!(s.lingering, lingering, "{s:?}");
    assert_eq!(s.stats.dropped_unauthenticated_records, 1, "{s:?}");
    case.ours.feed(first.from, &first.datagram);
    case.check_received(&first.line);
    let s = case.ours.snapshot();
    assert!(s.compact && !s.lingering, "{s:?}");
    let (peer_addr, _) = case.ours.conn();
    let base = case.ours.snapshot().stats;
    let mut index = 1;
    let mut capture = |case: &mut Case, previous: Option<u64>| {
        index += 1;
        case.capture(index, previous)
    };

    // Held back: `a`, `b`, `c` end up 65, 64 and 63 records behind the newest.
    let a = capture(&mut case, None);
    let b = capture(&mut case, Some(a.seq));
    let c = capture(&mut case, Some(b.seq));

    // Reordered: the newer first, then the older; each delivered once.
    let x1 = capture(&mut case, Some(c.seq));
    let x2 = capture(&mut case, Some(x1.seq));
    case.ours.feed(x2.from, &x2.datagram);
    case.check_received(&x2.line);
    case.ours.feed(x1.from, &x1.datagram);
    case.check_received(&x1.line);

    // Replayed: dropped, counted.
    case.ours.feed(x1.from, &x1.datagram);
    case.ours.feed(x2.from, &x2.datagram);
    case.nothing_received();
    let mut replayed = 2;

    // Tampered: dropped, counted, and the genuine record still opens afterwards.
    let x3 = capture(&mut case, Some(x2.seq));
    let variants = tampered(&x3, suite);
    for (what, datagram) in &variants {
        case.ours.feed(x3.from, datagram);
        assert!(
            case.ours.received.is_empty(),
            "delivered with {what} changed: {:?}",
            case.ours.received
        );
    }
    let unauthenticated = variants.len() as u64;
    // Shorter than explicit nonce plus tag: dropped as short.
    let mut short = x3.datagram[..13 + 7].to_vec();
    short[11..13].copy_from_slice(&7u16.to_be_bytes());
    case.ours.feed(x3.from, &short);
    // Cut off inside the record: the endpoint's pre-parser drops it before the session.
    let endpoint_drops = case.ours.endpoint.stats().dropped_total();
    case.ours
        .feed(x3.from, &x3.datagram[..x3.datagram.len() - 1]);
    assert_eq!(
        case.ours.endpoint.stats().dropped_total(),
        endpoint_drops + 1
    );
    case.nothing_received();
    case.ours.feed(x3.from, &x3.datagram);
    case.check_received(&x3.line);
    case.ours.feed(x3.from, &x3.datagram);
    replayed += 1;

    // The peer's last handshake flight again (a retransmission): the SSL is gone, its records
    // are dropped and counted.
    let handshake_records = count_records(&handshake_end);
    case.ours.feed(peer_addr, &handshake_end);
    case.nothing_received();

    // The window slides: genuine records until the newest is 63 past `c`.
    let mut last = x3.seq;
    while last < c.seq + 63 {
        let x = capture(&mut case, Some(last));
        case.ours.feed(x.from, &x.datagram);
        case.check_received(&x.line);
        last = x.seq;
    }
    // 63 behind: still inside the window, delivered now, once.
    case.ours.feed(c.from, &c.datagram);
    case.check_received(&c.line);
    case.ours.feed(c.from, &c.datagram);
    replayed += 1;
    // 64 and 65 behind: too old, never delivered.
    case.ours.feed(b.from, &b.datagram);
    case.ours.feed(a.from, &a.datagram);
    replayed += 2;
    case.nothing_received();

    let s = case.ours.snapshot().stats;
    assert_eq!(
        (
            s.dropped_replayed_records - base.dropped_replayed_records,
            s.dropped_unauthenticated_records - base.dropped_unauthenticated_records,
            s.dropped_short_records - base.dropped_short_records,
            s.dropped_handshake_records - base.dropped_handshake_records,
        ),
        (replayed, unauthenticated, 1, handshake_records),
        "(replayed, unauthenticated, short, handshake): {s:?}"
    );
    case.check_counts();

    // Still a working connection, both ways, from 1 byte to the data MTU.
    let data_mtu = case.ours.snapshot().data_mtu;
    let after: Vec<String> = [1, 100, data_mtu]
        .iter()
        .enumerate()
        .map(|(i, &n)| line(i, n, 'z'))
        .collect();
    case.peer_to_us(&after);
    case.us_to_peer(&after);
    case.check_counts();
    if program.is_client() {
        case.close_by_peer();
    } else {
        case.close_by_us();
    }
}

fn count_records(datagram: &[u8]) -> u64 {
    let mut rest = datagram;
    let mut count = 0;
    while rest.len() >= 13 {
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        rest = &rest[(13 + len).min(rest.len())..];
        count += 1;
    }
    count
}

#[test]
fn compact_our_server_drops_replayed_old_and_tampered_records_from_openssl_s_client() {
    mangled_records_from(Program::SClient, &PSK_SUITES[0]); // PSK-AES128-CCM8
}

#[test]
fn compact_our_server_drops_replayed_old_and_tampered_records_from_gnutls_cli() {
    mangled_records_from(Program::GnutlsCli, &CERTIFICATE_SUITES[4]); // ECDHE-ECDSA-CHACHA20-POLY1305
}

#[test]
fn compact_our_client_drops_replayed_old_and_tampered_records_from_openssl_s_server() {
    mangled_records_from(Program::SServer, &CERTIFICATE_SUITES[3]); // ECDHE-RSA-AES256-GCM-SHA384
}

#[test]
fn compact_our_client_drops_replayed_old_and_tampered_records_from_gnutls_serv() {
    mangled_records_from(Program::GnutlsServ, &PSK_SUITES[4]); // PSK-AES256-CCM
}

// ---------------------------------------------------------------------------------------------
// Our server while it lingers (it sent the last flight and keeps its SSL)

const CLIENT_PROGRAMS: [Program; 2] = [Program::SClient, Program::GnutlsCli];

/// Our server's last flight is lost: the client program retransmits its own, our lingering
/// `SSL` answers with ours again, and the client's first record then ends the linger.
#[test]
fn compact_our_server_answers_a_retransmitted_final_flight_while_lingering() {
    for (program, suite) in CLIENT_PROGRAMS
        .into_iter()
        .zip([&PSK_SUITES[1], &CERTIFICATE_SUITES[0]])
    {
        let mut case = Case::start_losing(program, suite, true);
        assert!(case.ours.lost >= 1, "our last flight was not lost");
        let fed = case.ours.fed;
        // The client still waits for our Finished; it retransmits after its timer (1 s).
        let first = line(0, 40, 'r');
        case.provoke(&first);
        case.expect_record(&first);
        let s = case.ours.snapshot();
        assert!(s.compact, "{s:?}");
        assert!(
            case.ours.fed >= fed + 2,
            "a retransmitted flight and the record: {} datagrams\n{}",
            case.ours.fed - fed,
            case.peer.transcript()
        );
        assert_eq!(s.stats.dropped_handshake_records, 0, "{s:?}");
        let more: Vec<String> = (1..10).map(|i| line(i, 50 * i, 'r')).collect();
        case.peer_to_us(&more);
        case.us_to_peer(&more);
        case.check_counts();
        case.close_by_peer();
    }
}

/// The client program closes before sending any data: its `close_notify` is the first record
/// our lingering server reads, and ends the connection in order.
#[test]
fn compact_our_server_reads_close_notify_while_lingering() {
    for (program, suite) in CLIENT_PROGRAMS
        .into_iter()
        .zip([&CERTIFICATE_SUITES[1], &PSK_SUITES[0]])
    {
        let case = Case::start(program, suite);
        case.close_by_peer();
    }
}

/// Our server closes while it lingers: OpenSSL still holds the write side, its `close_notify`
/// reaches the client program.
#[test]
fn compact_our_server_closes_while_lingering() {
    for (program, suite) in CLIENT_PROGRAMS
        .into_iter()
        .zip([&PSK_SUITES[3], &CERTIFICATE_SUITES[5]])
    {
        let case = Case::start(program, suite);
        assert!(case.ours.snapshot().lingering);
        case.close_by_us();
    }
}

/// Our server writes while it lingers (through OpenSSL's record layer), then the client's first
/// record hands it off: the compact layer continues the write sequence after OpenSSL's last
/// record. A reused sequence number would be dropped by the client program as a replay.
#[test]
fn compact_our_server_sends_while_lingering_and_continues_the_sequence_after_hand_off() {
    for (program, suite) in CLIENT_PROGRAMS
        .into_iter()
        .zip([&PSK_SUITES[5], &CERTIFICATE_SUITES[2]])
    {
        let mut case = Case::start(program, suite);
        let before: Vec<String> = (0..5).map(|i| line(i, 30 + i, 'b')).collect();
        case.us_to_peer_lingering(&before);
        assert!(case.ours.snapshot().lingering);
        case.peer_to_us(&[line(0, 10, 'h')]);
        let after: Vec<String> = (0..RECORDS).map(|i| line(i, 20 + 7 * i, 'a')).collect();
        case.us_to_peer(&after);
        case.check_counts();
        case.close_by_us();
    }
}

// ---------------------------------------------------------------------------------------------
// Our client: a record that overtakes the handshake's last flight

fn record_types(datagram: &[u8]) -> Vec<(u8, u16)> {
    let mut rest = datagram;
    let mut types = Vec::new();
    while rest.len() >= 13 {
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        types.push((rest[0], u16::from_be_bytes([rest[3], rest[4]])));
        rest = &rest[(13 + len).min(rest.len())..];
    }
    types
}

/// `openssl s_server` is established once it has sent its last flight, and sends a record at
/// once: held back here, its last flight arrives after that record. Our client keeps the early
/// record until the handshake completes, then opens it with the compact layer: delivered once.
#[test]
fn compact_our_client_opens_a_record_that_overtook_openssl_s_server_last_flight() {
    let suite = &PSK_SUITES[0];
    require_openssl();
    let key = key_hex();
    let (mut peer, port) = spawn_server("openssl", "openssl", "ACCEPT", STEP, |port| {
        s_server(
            port,
            &[
                "-cipher",
                suite.openssl,
                "-nocert",
                "-psk",
                &key,
                "-psk_identity",
                IDENTITY,
            ],
        )
    });
    let mut ours = Ours::client(([127, 0, 0, 1], port).into(), &client_ctx(suite.auth), None);
    // Feed everything up to the server's ChangeCipherSpec; hold it and what follows, up to and
    // including its Finished (epoch 1).
    let deadline = Instant::now() + STEP;
    let mut held = Vec::new();
    loop {
        let (from, datagram) = ours
            .recv_raw(deadline)
            .unwrap_or_else(|| panic!("no last flight\n{}", peer.transcript()));
        let types = record_types(&datagram);
        if held.is_empty() && !types.iter().any(|&(t, _)| t == 20) {
            ours.feed(from, &datagram);
            continue;
        }
        let finished = types.iter().any(|&(t, epoch)| t == 22 && epoch == 1);
        held.push((from, datagram));
        if finished {
            break;
        }
    }
    assert!(ours.conn.is_none());
    peer.expect_output("CIPHER is PSK-AES128-CCM8", STEP);
    let early = line(1, 33, 'e');
    peer.send_line(&early);
    let (from, record) = ours
        .recv_raw(Instant::now() + STEP)
        .unwrap_or_else(|| panic!("no record\n{}", peer.transcript()));
    assert_eq!(record_types(&record), [(23, 1)]);
    ours.feed(from, &record);
    let s = ours.snapshot();
    assert_eq!(s.state, SessionState::Handshaking, "{s:?}");
    assert!(ours.received.is_empty());
    for (from, datagram) in &held {
        ours.feed(*from, datagram);
    }
    let s = ours.snapshot();
    assert!(ours.conn.is_some(), "{s:?}\n{}", peer.transcript());
    assert!(s.compact, "{s:?}");
    assert_eq!(
        ours.received
            .iter()
            .map(|r| r.as_slice())
            .collect::<Vec<_>>(),
        [format!("{early}\n").as_bytes()]
    );
    ours.received.clear();
    // The early record is in the replay window: a copy is dropped.
    ours.feed(from, &record);
    assert!(ours.received.is_empty());
    assert_eq!(ours.snapshot().stats.dropped_replayed_records, 1);
    // And the connection carries on.
    let mut case = Case {
        program: Program::SServer,
        peer,
        ours,
        received: 1,
        sent: 0,
        _dir: TempDir::new("compact-early"),
    };
    let more: Vec<String> = (2..6).map(|i| line(i, 100 * i, 'e')).collect();
    case.peer_to_us(&more);
    case.us_to_peer(&more);
    case.check_counts();
    case.close_by_us();
}
