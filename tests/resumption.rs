//! Session resumption through the API, over real UDP on 127.0.0.1 with bounded time: our client
//! and our server (session cache, tickets, rotated ticket keys, compact connections), OpenSSL's
//! `s_client -sess_out` / `-sess_in` against our server, and our client against `s_server`.
//! A missing `openssl` program fails the test (tests/interop/peer.rs), never skips it.

mod support;

#[path = "interop/peer.rs"]
#[allow(dead_code)]
mod peer;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssl::nid::Nid;
use openssl_dtls::context::TicketKeys;
use openssl_dtls::{
    DtlsClient, DtlsClientContext, DtlsServer, DtlsServerContext, Endpoint, EndpointConfig, Event,
};

use peer::{require, spawn_server, Peer, TempDir};
use support::Pki;

const STEP: Duration = Duration::from_secs(10);
const NAME: &str = "server.test";

struct Certs {
    pki: Pki,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

fn certs() -> Certs {
    let pki = Pki::new_ec();
    let key = support::ec_key(Nid::X9_62_PRIME256V1);
    let cert = pki.leaf(NAME, &key);
    Certs {
        cert_pem: cert.to_pem().unwrap(),
        key_pem: key.private_key_to_pem_pkcs8().unwrap(),
        pki,
    }
}

fn server_builder(c: &Certs) -> openssl_dtls::DtlsServerContextBuilder {
    let mut b = DtlsServerContext::builder();
    b.certificate_chain_pem(&c.cert_pem)
        .private_key_pem(&c.key_pem);
    b
}

fn client_ctx(c: &Certs, compact: bool) -> DtlsClientContext {
    DtlsClientContext::builder()
        .root_certificates_pem(&c.pki.ca_cert.to_pem().unwrap())
        .compact_connections(compact)
        .build()
        .unwrap()
}

/// Our server on 127.0.0.1, accepting in a thread; each accepted connection's `resumed` is
/// recorded.
struct Server {
    server: Arc<DtlsServer>,
    addr: SocketAddr,
    resumed: Arc<Mutex<Vec<bool>>>,
}

impl Server {
    fn start(ctx: DtlsServerContext) -> Server {
        let server = Arc::new(DtlsServer::bind("127.0.0.1:0", ctx).unwrap());
        let addr = server.local_addr();
        let resumed = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (Arc::clone(&server), Arc::clone(&resumed));
        std::thread::spawn(move || {
            while let Ok(conn) = s.accept() {
                let facts = conn.handshake_facts().expect("facts after the handshake");
                r.lock().unwrap().push(facts.resumed);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1500];
                    while let Ok(n @ 1..) = conn.recv(&mut buf) {
                        let _ = conn.send(&buf[..n]);
                    }
                });
            }
        });
        Server {
            server,
            addr,
            resumed,
        }
    }

    fn resumed(&self) -> Vec<bool> {
        self.resumed.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.server.close();
    }
}

/// One connection from a fresh client socket: exchanges one message, closes, and returns
/// whether the handshake resumed.
fn connect_once(ctx: &DtlsClientContext, addr: SocketAddr) -> bool {
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client.connect_named(addr, NAME, ctx, STEP).unwrap();
    let resumed = conn.handshake_facts().unwrap().resumed;
    conn.send(b"hello").unwrap();
    let mut buf = [0u8; 1500];
    let n = conn.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    conn.close();
    client.close();
    resumed
}

/// Waits until the server recorded `n` handshakes.
fn server_saw(server: &Server, n: usize) -> Vec<bool> {
    let end = std::time::Instant::now() + STEP;
    loop {
        let seen = server.resumed();
        if seen.len() >= n || std::time::Instant::now() > end {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn servers_resume_nothing_by_default_so_every_handshake_is_full() {
    let c = certs();
    let server = Server::start(server_builder(&c).build().unwrap());
    let ctx = client_ctx(&c, false);
    assert!(!connect_once(&ctx, server.addr));
    assert!(!connect_once(&ctx, server.addr));
    assert_eq!(server_saw(&server, 2), vec![false, false]);
}

#[test]
fn our_client_resumes_from_our_servers_session_cache_and_both_report_it() {
    let c = certs();
    let server = Server::start(
        server_builder(&c)
            .session_cache(16, Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let ctx = client_ctx(&c, false);
    assert!(!connect_once(&ctx, server.addr));
    assert_eq!(ctx.stored_sessions(), 1);
    assert!(connect_once(&ctx, server.addr));
    assert!(connect_once(&ctx, server.addr));
    assert_eq!(server_saw(&server, 3), vec![false, true, true]);
}

#[test]
fn our_client_resumes_with_our_servers_tickets_on_compact_connections() {
    let c = certs();
    let keys = TicketKeys::random(Duration::from_secs(3600)).unwrap();
    let server = Server::start(
        server_builder(&c)
            .session_tickets(keys)
            .compact_connections(true)
            .build()
            .unwrap(),
    );
    let ctx = client_ctx(&c, true);
    assert!(!connect_once(&ctx, server.addr));
    assert!(connect_once(&ctx, server.addr));
    assert!(connect_once(&ctx, server.addr));
    assert_eq!(server_saw(&server, 3), vec![false, true, true]);
    assert!(server.server.stats().compact_handoffs >= 3);
}

#[test]
fn a_rotated_ticket_key_still_decrypts_once_and_an_unknown_key_gets_a_full_handshake() {
    let c = certs();
    let keys = TicketKeys::random(Duration::from_secs(3600)).unwrap();
    let server = Server::start(
        server_builder(&c)
            .session_tickets(keys.clone())
            .build()
            .unwrap(),
    );
    let ctx = client_ctx(&c, false);
    assert!(!connect_once(&ctx, server.addr));
    assert!(keys.rotate_now().unwrap());
    // The previous key decrypts (the ticket is renewed under the new key).
    assert!(connect_once(&ctx, server.addr));
    assert!(keys.rotate_now().unwrap());
    assert!(keys.rotate_now().unwrap());
    // The client's ticket is under a key the server forgot: a full handshake, no error.
    assert!(!connect_once(&ctx, server.addr));
    assert!(connect_once(&ctx, server.addr));
}

#[test]
fn servers_sharing_a_ticket_secret_resume_each_others_sessions_and_another_secret_does_not() {
    let c = certs();
    let secret = b"a fleet's shared ticket secret, 32 B";
    let rotation = Duration::from_secs(3600);
    let a = Server::start(
        server_builder(&c)
            .session_tickets(TicketKeys::with_secret(secret, rotation).unwrap())
            .build()
            .unwrap(),
    );
    let b = Server::start(
        server_builder(&c)
            .session_tickets(TicketKeys::with_secret(secret, rotation).unwrap())
            .build()
            .unwrap(),
    );
    let other = Server::start(
        server_builder(&c)
            .session_tickets(
                TicketKeys::with_secret(b"another secret of 16+ bytes", rotation).unwrap(),
            )
            .build()
            .unwrap(),
    );
    // Sessions are stored per server name, so one session follows the client between servers.
    let ctx = client_ctx(&c, false);
    assert!(!connect_once(&ctx, a.addr));
    assert!(connect_once(&ctx, b.addr));
    assert!(!connect_once(&ctx, other.addr));
}

#[test]
fn a_client_without_resumption_and_another_context_never_resume() {
    let c = certs();
    let server = Server::start(
        server_builder(&c)
            .session_cache(16, Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let off = DtlsClientContext::builder()
        .root_certificates_pem(&c.pki.ca_cert.to_pem().unwrap())
        .session_resumption(false)
        .build()
        .unwrap();
    assert!(!connect_once(&off, server.addr));
    assert!(!connect_once(&off, server.addr));
    assert_eq!(off.stored_sessions(), 0);
    let first = client_ctx(&c, false);
    let second = client_ctx(&c, false);
    assert!(!connect_once(&first, server.addr));
    assert!(!connect_once(&second, server.addr));
    assert!(connect_once(&first, server.addr));
    first.clear_sessions();
    assert!(!connect_once(&first, server.addr));
}

#[test]
fn resumption_settings_out_of_range_fail_at_build() {
    let c = certs();
    assert!(server_builder(&c)
        .session_cache(0, Duration::from_secs(60))
        .build()
        .is_err());
    assert!(server_builder(&c)
        .session_cache(16, Duration::from_secs(2 * 24 * 3600))
        .build()
        .is_err());
    assert!(TicketKeys::random(Duration::from_millis(10)).is_err());
    assert!(TicketKeys::with_secret(b"short", Duration::from_secs(60)).is_err());
    assert!(DtlsClientContext::builder()
        .root_certificates_pem(&c.pki.ca_cert.to_pem().unwrap())
        .session_store_capacity(0)
        .build()
        .is_err());
}

// ---------------------------------------------------------------------------------------------
// OpenSSL's tools

fn require_openssl() {
    require("openssl", &["version"], "openssl");
}

/// `openssl s_client`'s arguments against our server at `addr`, verifying it with `ca`, with
/// session flag `flag` (`-sess_out` / `-sess_in`) on file `session`.
fn s_client_args(addr: SocketAddr, ca: &str, flag: &str, session: &str) -> Vec<String> {
    [
        "s_client",
        "-dtls1_2",
        "-connect",
        &addr.to_string(),
        "-CAfile",
        ca,
        "-servername",
        NAME,
        "-verify_return_error",
        flag,
        session,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `openssl s_client` against our server once, saving (`-sess_out`) or offering (`-sess_in`)
/// `session`; returns its transcript after it exchanged a line and exited.
fn s_client(addr: SocketAddr, ca: &str, session: &str, save: bool) -> String {
    let flag = if save { "-sess_out" } else { "-sess_in" };
    let args = s_client_args(addr, ca, flag, session);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut peer = Peer::spawn("openssl", "openssl", &args);
    assert!(
        peer.wait_for("Cipher is", STEP),
        "no handshake: {}",
        peer.transcript()
    );
    peer.send_line("ping");
    assert!(peer.wait_for("ping", STEP), "{}", peer.transcript());
    peer.close_stdin();
    peer.expect_success(STEP);
    peer.transcript()
}

/// Where s_client keeps its session: next to `ca`, in the test's temporary directory.
fn session_path(ca: &str) -> String {
    std::path::Path::new(ca)
        .with_file_name("session.pem")
        .to_string_lossy()
        .into_owned()
}

fn s_client_resumes_against(ctx: DtlsServerContext, c: &Certs) {
    require_openssl();
    let dir = TempDir::new("resumption");
    let ca = dir.write("ca.pem", &c.pki.ca_cert.to_pem().unwrap());
    let session = session_path(&ca);
    let server = Server::start(ctx);
    let first = s_client(server.addr, &ca, &session, true);
    assert!(first.contains("New, TLSv1.2"), "{first}");
    let second = s_client(server.addr, &ca, &session, false);
    assert!(second.contains("Reused, TLSv1.2"), "{second}");
    assert_eq!(server_saw(&server, 2), vec![false, true]);
}

#[test]
fn openssl_s_client_resumes_a_saved_session_from_our_servers_cache() {
    let c = certs();
    let ctx = server_builder(&c)
        .session_cache(16, Duration::from_secs(60))
        .build()
        .unwrap();
    s_client_resumes_against(ctx, &c);
}

#[test]
fn openssl_s_client_resumes_a_saved_ticket_with_our_server() {
    let c = certs();
    let ctx = server_builder(&c)
        .session_tickets(TicketKeys::random(Duration::from_secs(60)).unwrap())
        .build()
        .unwrap();
    s_client_resumes_against(ctx, &c);
}

/// `s_client -sess_in … -reconnect`: the saved session, then five reconnections on new
/// sockets, each offering the session again — every one abbreviated.
fn s_client_reconnects_resuming(ctx: DtlsServerContext, c: &Certs) {
    require_openssl();
    let dir = TempDir::new("resumption");
    let ca = dir.write("ca.pem", &c.pki.ca_cert.to_pem().unwrap());
    let session = session_path(&ca);
    let server = Server::start(ctx);
    let first = s_client(server.addr, &ca, &session, true);
    assert!(first.contains("New, TLSv1.2"), "{first}");
    let mut args = s_client_args(server.addr, &ca, "-sess_in", &session);
    args.push("-reconnect".to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut peer = Peer::spawn("openssl", "openssl", &args);
    // The first connection and the five reconnections, then the interactive session.
    let seen = server_saw(&server, 1 + 6);
    peer.send_line("ping");
    assert!(peer.wait_for("ping", STEP), "{}", peer.transcript());
    peer.close_stdin();
    peer.expect_success(STEP);
    let transcript = peer.transcript();
    assert_eq!(
        transcript.matches("Reused, TLSv1.2").count(),
        6,
        "every connection of -reconnect resumed: {transcript}"
    );
    assert!(!transcript.contains("New, TLSv1.2"), "{transcript}");
    assert_eq!(seen, vec![false, true, true, true, true, true, true]);
}

#[test]
fn openssl_s_client_reconnect_resumes_from_our_servers_cache_every_time() {
    let c = certs();
    let ctx = server_builder(&c)
        .session_cache(16, Duration::from_secs(60))
        .build()
        .unwrap();
    s_client_reconnects_resuming(ctx, &c);
}

#[test]
fn openssl_s_client_reconnect_resumes_our_servers_ticket_every_time() {
    let c = certs();
    let ctx = server_builder(&c)
        .session_tickets(TicketKeys::random(Duration::from_secs(60)).unwrap())
        .build()
        .unwrap();
    s_client_reconnects_resuming(ctx, &c);
}

#[test]
fn openssl_s_client_with_a_ticket_under_a_rotated_away_key_gets_a_full_handshake() {
    require_openssl();
    let c = certs();
    let keys = TicketKeys::random(Duration::from_secs(60)).unwrap();
    let ctx = server_builder(&c)
        .session_tickets(keys.clone())
        .build()
        .unwrap();
    let dir = TempDir::new("resumption");
    let ca = dir.write("ca.pem", &c.pki.ca_cert.to_pem().unwrap());
    let session = session_path(&ca);
    let server = Server::start(ctx);
    let first = s_client(server.addr, &ca, &session, true);
    assert!(first.contains("New, TLSv1.2"), "{first}");
    keys.rotate_now().unwrap();
    keys.rotate_now().unwrap();
    let second = s_client(server.addr, &ca, &session, false);
    assert!(second.contains("New, TLSv1.2"), "{second}");
    assert_eq!(server_saw(&server, 2), vec![false, false]);
}

#[test]
fn our_client_resumes_with_openssl_s_server() {
    require_openssl();
    let c = certs();
    let dir = TempDir::new("resumption");
    let cert = dir.write("server.pem", &c.cert_pem);
    let key = dir.write("server.key", &c.key_pem);
    let (peer, port) = spawn_server("openssl", "openssl", "ACCEPT", STEP, |port| {
        let accept = format!("127.0.0.1:{port}");
        [
            "s_server", "-dtls1_2", "-listen", "-naccept", "3", "-accept", &accept, "-cert", &cert,
            "-key", &key,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    });
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ctx = client_ctx(&c, false);
    let mut resumed = Vec::new();
    // s_server keeps its UDP socket connected to its first client's address: every
    // connection comes from the same local port (a fresh socket each time).
    let mut local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    for _ in 0..3 {
        let client = DtlsClient::bind(local).unwrap();
        local = client.local_addr();
        let conn = client
            .connect_named(addr, NAME, &ctx, STEP)
            .unwrap_or_else(|e| panic!("{e} after {resumed:?}: {}", peer.transcript()));
        resumed.push(conn.handshake_facts().unwrap().resumed);
        conn.close();
        client.close();
        assert!(peer.wait_for("DONE", STEP), "{}", peer.transcript());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(resumed, vec![false, true, true], "{}", peer.transcript());
    peer.expect_success(STEP);
}

/// Runs every handshake job `s` has out, inline, and gives it back.
fn run_jobs(s: &mut Endpoint, now: std::time::Instant) {
    while let Some(mut job) = s.poll_handshake_job() {
        job.run(now);
        s.finish_handshake_job(now, job).unwrap();
    }
}

/// Moves datagrams between the server endpoint `s` (jobs run inline) and the client endpoint
/// `c` at `at` until both are quiet.
fn pump_endpoints(s: &mut Endpoint, c: &mut Endpoint, at: SocketAddr, now: std::time::Instant) {
    let server: SocketAddr = "10.0.0.1:5684".parse().unwrap();
    let mut buf = vec![0u8; 65_536];
    for _ in 0..50 {
        run_jobs(s, now);
        let mut moved = false;
        while let Some((_, n)) = c.poll_transmit(&mut buf) {
            s.handle_datagram(now, at, &buf[..n]);
            moved = true;
        }
        while let Some((_, n)) = s.poll_transmit(&mut buf) {
            c.handle_datagram(now, server, &buf[..n]);
            moved = true;
        }
        if !moved && s.handshakes_out() == 0 {
            return;
        }
    }
}

#[test]
fn a_resumed_handshake_that_completes_and_ends_in_one_step_is_still_reported_connected() {
    // As with a handshake worker that sends its flight at once: the client's Finished and its
    // close_notify reach the server while the handshake is out, and are read in one step. The
    // server must still report the connection (with its facts) before it reports its end.
    let c = certs();
    let now = std::time::Instant::now();
    let server: SocketAddr = "10.0.0.1:5684".parse().unwrap();
    let sctx = server_builder(&c)
        .session_cache(16, Duration::from_secs(60))
        .build()
        .unwrap();
    let cctx = client_ctx(&c, false);
    let mut s = Endpoint::server(sctx, EndpointConfig::default()).unwrap();
    s.set_handshake_offload(true);
    let mut buf = vec![0u8; 65_536];

    // A full handshake first: the client keeps its session.
    let first: SocketAddr = "192.0.2.7:40001".parse().unwrap();
    let mut c1 = Endpoint::client(EndpointConfig::default()).unwrap();
    c1.connect(now, server, &cctx, Some(NAME)).unwrap();
    pump_endpoints(&mut s, &mut c1, first, now);
    assert_eq!(cctx.stored_sessions(), 1);
    std::iter::from_fn(|| s.poll_event()).for_each(drop);

    // The resumption, from another port; the server's first step is out as a job.
    let at: SocketAddr = "192.0.2.7:40002".parse().unwrap();
    let mut c2 = Endpoint::client(EndpointConfig::default()).unwrap();
    let id2 = c2.connect(now, server, &cctx, Some(NAME)).unwrap();
    for _ in 0..2 {
        // ClientHello, then the ClientHello with the cookie.
        while let Some((_, n)) = c2.poll_transmit(&mut buf) {
            s.handle_datagram(now, at, &buf[..n]);
        }
        while let Some((_, n)) = s.poll_transmit(&mut buf) {
            c2.handle_datagram(now, server, &buf[..n]);
        }
    }
    let mut job = s.poll_handshake_job().expect("the first step, out");
    job.run(now);
    // The runner sends the flight (ServerHello, ChangeCipherSpec, Finished) itself...
    while let Some(n) = job.poll_transmit(&mut buf) {
        c2.handle_datagram(now, server, &buf[..n]);
    }
    assert!(
        std::iter::from_fn(|| c2.poll_event()).any(|e| matches!(e, Event::Connected { .. })),
        "the client resumed"
    );
    // ... and the client's Finished and close_notify arrive before the job is back.
    c2.close(server, id2);
    let mut sent = 0;
    while let Some((_, n)) = c2.poll_transmit(&mut buf) {
        s.handle_datagram(now, at, &buf[..n]);
        sent += 1;
    }
    assert!(sent >= 2, "Finished and close_notify: {sent} datagrams");
    s.finish_handshake_job(now, job).unwrap();
    run_jobs(&mut s, now);

    let mut connected = None;
    let mut order = Vec::new();
    while let Some(e) = s.poll_event() {
        match e {
            Event::Connected { peer, id } if peer == at => {
                // Whoever takes the event finds the connection's session and its facts.
                let facts = s
                    .session(peer, id)
                    .and_then(|session| session.handshake_facts())
                    .expect("the session of a connection that already ended");
                connected = Some(facts.resumed);
                order.push("connected");
            }
            Event::Closed { peer, .. } if peer == at => order.push("closed"),
            _ => {}
        }
    }
    assert_eq!(connected, Some(true), "reported connected, resumed");
    assert_eq!(order, ["connected", "closed"]);
}
