//! An off-path attacker who knows both addresses forges plaintext (epoch-0) records: fatal
//! alerts and HelloVerifyRequests. A handshake in progress survives them; a real peer's refusal
//! is still reported. Sans-IO between two sessions, and over real UDP on loopback through a relay
//! that injects the forgeries with the peers' apparent addresses.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foreign_types::ForeignTypeRef;
use openssl_dtls::{
    Alert, DtlsClient, DtlsClientContext, DtlsServer, DtlsServerContext, EndpointConfig, Error,
    PskCredentials, Session, SocketOptions,
};
use support::{run_until_tapped, Dir, Link};

const IDENTITY: &[u8] = b"Client_identity";
const KEY: &[u8] = b"secretPSK";

/// Retransmission timers short enough for tests, and a deadline that bounds every test.
fn timers(b: &mut openssl_dtls::DtlsServerContextBuilder) {
    b.retransmit_timeout(Duration::from_millis(50), Duration::from_millis(400))
        .handshake_timeout(Duration::from_secs(5));
}

fn server_ctx(compact: bool) -> DtlsServerContext {
    let mut b = DtlsServerContext::builder();
    b.psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
        .compact_connections(compact);
    timers(&mut b);
    b.build().unwrap()
}

fn client_ctx(identity: &[u8]) -> DtlsClientContext {
    DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(identity, KEY))
        .retransmit_timeout(Duration::from_millis(50), Duration::from_millis(400))
        .handshake_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// An epoch-0 record of `content_type` with a sequence number not used before (OpenSSL drops
/// an epoch-0 record it has seen the number of as a replay).
fn record(content_type: u8, fragment: &[u8]) -> Vec<u8> {
    static NEXT_SEQ: AtomicU64 = AtomicU64::new(20);
    let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    let mut r = vec![content_type, 0xfe, 0xfd, 0, 0];
    r.extend_from_slice(&seq[2..]);
    r.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
    r.extend_from_slice(fragment);
    r
}

/// A forged fatal alert.
fn forged_alert(description: u8) -> Vec<u8> {
    record(21, &[2, description])
}

/// A forged, well-formed HelloVerifyRequest with `message_seq` and a cookie of junk.
fn forged_hello_verify(message_seq: u8) -> Vec<u8> {
    let mut body = vec![0xfe, 0xff, 16];
    body.extend_from_slice(&[0x5a; 16]);
    let len = body.len() as u8;
    let mut message = vec![3, 0, 0, len, 0, message_seq, 0, 0, 0, 0, 0, len];
    message.extend_from_slice(&body);
    record(22, &message)
}

/// The handshake type of each epoch-0 handshake record in `datagram`.
fn plaintext_handshake_types(datagram: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 13 {
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let Some(fragment) = rest.get(13..13 + len) else {
            break;
        };
        if rest[0] == 22 && rest[3..5] == [0, 0] && !fragment.is_empty() {
            types.push(fragment[0]);
        }
        rest = &rest[13 + len..];
    }
    types
}

const SERVER_HELLO: u8 = 2;
const HELLO_VERIFY_REQUEST: u8 = 3;

fn pair(identity: &[u8], compact: bool) -> (Session, Session) {
    let now = Instant::now();
    let c = client_ctx(identity).new_session(None, now).unwrap();
    let s = server_ctx(compact).new_session(now).unwrap();
    (c, s)
}

fn both_established(c: &mut Session, s: &mut Session) -> bool {
    c.is_established() && s.is_established()
}

fn spoofed_fatal_alert_to_the_server_as_the_server_hello_passes(compact: bool) {
    let (mut c, mut s) = pair(IDENTITY, compact);
    let mut injected = 0;
    let done = run_until_tapped(
        &mut c,
        &mut s,
        &mut Link::perfect(),
        Duration::from_secs(5),
        |link, dir, d| {
            link.send(dir, d);
            if dir == Dir::ToClient && plaintext_handshake_types(d).contains(&SERVER_HELLO) {
                link.send(Dir::ToServer, &forged_alert(Alert::HANDSHAKE_FAILURE));
                injected += 1;
            }
        },
        both_established,
    );
    assert!(done, "client {:?}, server {:?}", c.error(), s.error());
    assert!(injected >= 1);
    assert_eq!(s.stats().held_alerts, injected);
}

#[test]
fn a_spoofed_fatal_alert_to_the_server_as_the_server_hello_passes_does_not_end_the_handshake() {
    spoofed_fatal_alert_to_the_server_as_the_server_hello_passes(false);
}

#[test]
fn a_compact_server_survives_a_spoofed_fatal_alert_during_the_handshake() {
    spoofed_fatal_alert_to_the_server_as_the_server_hello_passes(true);
}

#[test]
fn a_spoofed_alert_and_forged_hello_verify_requests_to_the_client_do_not_end_the_handshake() {
    let (mut c, mut s) = pair(IDENTITY, false);
    let mut injected = 0;
    let done = run_until_tapped(
        &mut c,
        &mut s,
        &mut Link::perfect(),
        Duration::from_secs(5),
        |link, dir, d| {
            link.send(dir, d);
            if dir == Dir::ToClient && plaintext_handshake_types(d).contains(&SERVER_HELLO) {
                // After the ServerHello: every message_seq the client may expect next.
                for seq in 0..4 {
                    link.send(Dir::ToClient, &forged_hello_verify(seq));
                }
                link.send(Dir::ToClient, &forged_alert(Alert::UNKNOWN_PSK_IDENTITY));
                injected += 1;
            }
        },
        both_established,
    );
    assert!(done, "client {:?}, server {:?}", c.error(), s.error());
    assert!(injected >= 1);
    assert_eq!(c.stats().dropped_hello_verify_requests, 4 * injected);
    assert_eq!(c.stats().held_alerts, injected);
}

#[test]
fn a_forged_hello_verify_request_to_a_server_is_dropped() {
    let (mut c, mut s) = pair(IDENTITY, false);
    let mut injected = 0;
    let done = run_until_tapped(
        &mut c,
        &mut s,
        &mut Link::perfect(),
        Duration::from_secs(5),
        |link, dir, d| {
            link.send(dir, d);
            if dir == Dir::ToClient && plaintext_handshake_types(d).contains(&SERVER_HELLO) {
                link.send(Dir::ToServer, &forged_hello_verify(1));
                injected += 1;
            }
        },
        both_established,
    );
    assert!(done, "client {:?}, server {:?}", c.error(), s.error());
    assert_eq!(s.stats().dropped_hello_verify_requests, injected);
}

#[test]
fn a_real_unknown_psk_identity_is_still_reported_after_one_retransmission_interval() {
    let (mut c, mut s) = pair(b"stranger", false);
    let started = Instant::now();
    run_until_tapped(
        &mut c,
        &mut s,
        &mut Link::perfect(),
        Duration::from_secs(5),
        |link, dir, d| link.send(dir, d),
        |c, s| c.error().is_some() && s.error().is_some(),
    );
    // The harness stops once the server failed; its alert is in flight to the client.
    let mut buf = [0u8; 2048];
    while let Some(n) = s.poll_transmit(&mut buf) {
        c.handle_datagram(Instant::now(), &buf[..n]);
    }
    assert!(
        c.error().is_none(),
        "the alert is held, not acted on at once"
    );
    assert_eq!(c.stats().held_alerts, 1);
    assert!(support::run_timers_until_failed(
        &mut c,
        Duration::from_secs(5)
    ));
    assert!(
        matches!(c.error(), Some(Error::PeerAlert(a)) if a.description == Alert::UNKNOWN_PSK_IDENTITY),
        "{:?}",
        c.error()
    );
    // One retransmission interval (50 ms here), far from the 5 s handshake deadline.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_held_alert_is_the_error_when_the_handshake_then_stalls_and_progress_discards_it() {
    // Stalled: the server never answers after the forged alert reached the client.
    let (mut c, mut s) = pair(IDENTITY, false);
    let mut buf = [0u8; 2048];
    let now = Instant::now();
    let n = c.poll_transmit(&mut buf).unwrap();
    s.handle_datagram(now, &buf[..n]); // ClientHello; the server's answer is "lost"
    c.handle_datagram(now, &forged_alert(Alert::HANDSHAKE_FAILURE));
    assert!(c.is_handshaking());
    assert!(support::run_timers_until_failed(
        &mut c,
        Duration::from_secs(5)
    ));
    assert!(
        matches!(c.error(), Some(Error::PeerAlert(a)) if a.description == Alert::HANDSHAKE_FAILURE),
        "{:?}",
        c.error()
    );
    // It fails one initial retransmission interval after the alert, not at the 5 s deadline:
    // at most the ClientHello's one retransmission falls in between.
    assert!(c.stats().retransmits <= 1, "{:?}", c.stats());

    // Progress after the alert: the alert is discarded, the handshake completes, and no timer
    // reports it later.
    let (mut c, mut s) = pair(IDENTITY, false);
    let now = Instant::now();
    let n = c.poll_transmit(&mut buf).unwrap();
    s.handle_datagram(now, &buf[..n]);
    c.handle_datagram(now, &forged_alert(Alert::HANDSHAKE_FAILURE));
    let mut link = Link::perfect();
    assert!(support::handshake(
        &mut c,
        &mut s,
        &mut link,
        Duration::from_secs(5)
    ));
    std::thread::sleep(Duration::from_millis(120));
    c.handle_timeout(Instant::now());
    assert!(c.is_established(), "{:?}", c.error());
}

// ---------------------------------------------------------------------------------------------
// over UDP, through an injecting relay

/// A UDP relay between one client and `server`: the client talks to `relay_addr`, the server
/// sees the relay's upstream socket as the client. Whenever the server's ServerHello passes,
/// the relay forges a fatal alert to the server (from the client's apparent address) and a
/// HelloVerifyRequest and a fatal alert to the client (from the server's); after the server's
/// real HelloVerifyRequest it forges a second one with another cookie.
struct Relay {
    addr: SocketAddr,
    injected: Arc<AtomicUsize>,
}

fn relay(server: SocketAddr) -> Relay {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    back.connect(server).unwrap();
    let addr = front.local_addr().unwrap();
    let injected = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&injected);
    let front_rx = front.try_clone().unwrap();
    let back_tx = back.try_clone().unwrap();
    let client = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let client_rx = Arc::clone(&client);
    // client → server
    std::thread::spawn(move || {
        let mut buf = [0u8; 65_536];
        while let Ok((n, from)) = front_rx.recv_from(&mut buf) {
            *client_rx.lock().unwrap() = Some(from);
            let _ = back_tx.send(&buf[..n]);
        }
    });
    // server → client, with the forgeries
    std::thread::spawn(move || {
        let mut buf = [0u8; 65_536];
        let deadline = Instant::now() + Duration::from_secs(20);
        back.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        while Instant::now() < deadline {
            let Ok(n) = back.recv(&mut buf) else { continue };
            let Some(to) = *client.lock().unwrap() else {
                continue;
            };
            let d = &buf[..n];
            let _ = front.send_to(d, to);
            let types = plaintext_handshake_types(d);
            if types.contains(&HELLO_VERIFY_REQUEST) {
                let _ = front.send_to(&forged_hello_verify(0), to);
                count.fetch_add(1, Ordering::Relaxed);
            }
            if types.contains(&SERVER_HELLO) {
                let _ = back.send(&forged_alert(Alert::HANDSHAKE_FAILURE));
                let _ = front.send_to(&forged_hello_verify(1), to);
                let _ = front.send_to(&forged_alert(Alert::UNKNOWN_PSK_IDENTITY), to);
                count.fetch_add(3, Ordering::Relaxed);
            }
        }
    });
    Relay { addr, injected }
}

#[test]
fn over_udp_forged_records_injected_by_a_relay_do_not_stop_the_handshake() {
    let server = Arc::new(
        DtlsServer::bind_with(
            "127.0.0.1:0",
            server_ctx(false),
            EndpointConfig::default(),
            SocketOptions::default(),
        )
        .unwrap(),
    );
    let s = Arc::clone(&server);
    std::thread::spawn(move || {
        for conn in s.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok(n @ 1..) = conn.recv(&mut buf) {
                    if conn.send(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let relay = relay(server.local_addr());
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let conn = client
        .connect(relay.addr, &client_ctx(IDENTITY), Duration::from_secs(5))
        .unwrap();
    conn.send(b"through the relay").unwrap();
    let mut buf = [0u8; 64];
    let n = conn
        .recv_timeout(&mut buf, Duration::from_secs(5))
        .unwrap()
        .expect("the echo");
    assert_eq!(&buf[..n], b"through the relay");
    assert!(
        relay.injected.load(Ordering::Relaxed) >= 4,
        "the relay forged a second HelloVerifyRequest and the ServerHello's three records"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.stats().handshakes_failed_peer_alert, 0);
}

// ---------------------------------------------------------------------------------------------
// renegotiation requests on compact connections

/// What a server's side of a connection answers when the client asks to renegotiate after the
/// handshake (the client's OpenSSL is told to allow it; ours never does).
struct RenegotiationOutcome {
    /// The datagrams the server sent in reply: (content type, epoch) of each record.
    replies: Vec<Vec<(u8, u16)>>,
    server: Session,
    client: Session,
}

/// (content type, epoch) of each record of a datagram.
fn record_kinds(datagram: &[u8]) -> Vec<(u8, u16)> {
    let mut kinds = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 13 {
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        kinds.push((rest[0], u16::from_be_bytes([rest[3], rest[4]])));
        rest = rest.get(13 + len..).unwrap_or_default();
    }
    kinds
}

/// Handshakes, moves one message so that a compact server hands off, then (before `request`)
/// replays `replay` (datagrams the client sent during the handshake) and makes the client's
/// OpenSSL send a renegotiating ClientHello.
fn renegotiate_against(compact: bool, replay: bool) -> RenegotiationOutcome {
    let (mut c, mut s) = pair(IDENTITY, compact);
    let mut link = Link::perfect();
    let mut client_flights = Vec::new();
    let ok = run_until_tapped(
        &mut c,
        &mut s,
        &mut link,
        Duration::from_secs(5),
        |link, dir, d| {
            if dir == Dir::ToServer {
                client_flights.push(d.to_vec());
            }
            link.send(dir, d)
        },
        both_established,
    );
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
    c.send(b"hand off").unwrap();
    let mut buf = vec![0u8; 65_536];
    let ok = support::run_until(&mut c, &mut s, &mut link, Duration::from_secs(5), |_, s| {
        matches!(s.recv(&mut buf), Ok(Some(_)))
    });
    assert!(ok);
    assert_eq!(s.is_compact(), compact, "a compact server hands off");
    let now = Instant::now();
    if replay {
        // The client's final flight again (its Finished, an authenticated epoch-1 handshake
        // record) and its first ClientHello (epoch 0): neither is a renegotiation request.
        for d in &client_flights {
            s.handle_datagram(now, d);
        }
    }
    let ssl = c
        .ssl()
        .expect("a non-compact client keeps its SSL")
        .as_ptr();
    // SAFETY: `ssl` is the client session's live SSL; no other call into it runs meanwhile. The
    // ClientHello OpenSSL writes goes to the session's BIO queue.
    unsafe {
        openssl_dtls_sys::SSL_clear_options(ssl, openssl::ssl::SslOptions::NO_RENEGOTIATION.bits());
        assert_eq!(openssl_dtls_sys::SSL_renegotiate(ssl), 1);
        openssl_sys::SSL_do_handshake(ssl);
    }
    let mut replies = Vec::new();
    for _ in 0..4 {
        while let Some(n) = c.poll_transmit(&mut buf) {
            s.handle_datagram(now, &buf[..n]);
        }
        while let Some(n) = s.poll_transmit(&mut buf) {
            replies.push(record_kinds(&buf[..n]));
            c.handle_datagram(now, &buf[..n]);
        }
    }
    RenegotiationOutcome {
        replies,
        server: s,
        client: c,
    }
}

#[test]
fn a_compact_server_refuses_a_renegotiation_with_a_warning_as_openssl_does() {
    let openssl = renegotiate_against(false, false);
    let compact = renegotiate_against(true, false);
    // Both answer with one epoch-1 alert record (the no_renegotiation warning; its contents are
    // encrypted), and the client's OpenSSL takes it the same way.
    assert_eq!(openssl.replies, vec![vec![(21, 1)]]);
    assert_eq!(compact.replies, openssl.replies);
    assert_eq!(compact.server.stats().renegotiations_refused, 1);
    // OpenSSL's client ends a renegotiation the server refused with a fatal handshake_failure:
    // both servers see the same, and so do both clients.
    assert_eq!(compact.server.state(), openssl.server.state());
    assert_eq!(
        compact.server.error().map(ToString::to_string),
        openssl.server.error().map(ToString::to_string)
    );
    assert_eq!(compact.client.state(), openssl.client.state());
    assert_eq!(
        compact.client.error().map(ToString::to_string),
        openssl.client.error().map(ToString::to_string)
    );
}

#[test]
fn a_retransmitted_finished_or_a_plaintext_client_hello_is_not_a_renegotiation_request() {
    let compact = renegotiate_against(true, true);
    let stats = compact.server.stats();
    // Only the real request is answered; the replayed flights are counted and dropped.
    assert_eq!(stats.renegotiations_refused, 1);
    assert_eq!(compact.replies, vec![vec![(21, 1)]]);
    assert!(stats.dropped_handshake_records >= 2, "{stats:?}");
}
