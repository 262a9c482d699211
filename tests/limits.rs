//! Idle time, eviction, refusals and handshake budgets of an endpoint, and what the application
//! and the operator see of them: only authenticated input keeps a connection alive, a full
//! endpoint makes room by evicting the least recently active idle connection (with a
//! `close_notify`) or tells the refused client, handshakes share a memory budget, and failed
//! handshakes reach the server application with the peer, its identity and a typed reason.
//!
//! Sans-IO tests drive an `Endpoint` with simulated time; the driver tests run over real UDP on
//! loopback, through a relay that forges records with the client's address.

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use openssl_dtls::{
    DtlsClient, DtlsClientContext, DtlsServer, DtlsServerContext, Endpoint, EndpointConfig, Error,
    Event, PeerIdentity, PskCredentials, Session, SessionState, SocketOptions,
};

const IDENTITY: &[u8] = b"device-1";
const KEY: &[u8] = b"secretPSK-device-1";

fn psk_server(compact: bool) -> DtlsServerContext {
    DtlsServerContext::builder()
        .psk_key_store(|id| (id == IDENTITY).then(|| KEY.to_vec()))
        .compact_connections(compact)
        .build()
        .unwrap()
}

fn psk_client(identity: &[u8], compact: bool) -> DtlsClientContext {
    DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(identity.to_vec(), KEY.to_vec()))
        .compact_connections(compact)
        .build()
        .unwrap()
}

fn addr(i: u32) -> SocketAddr {
    let [_, a, b, c] = i.to_be_bytes();
    SocketAddr::from(([10, a, b, c.max(1)], 40_000 + (i % 20_000) as u16))
}

fn is_idle_timeout(e: &Error) -> bool {
    matches!(e, Error::IdleTimeout { .. })
}

/// Moves datagrams between the endpoint and the clients until both sides are quiet.
fn pump(ep: &mut Endpoint, now: Instant, clients: &mut [(SocketAddr, &mut Session)]) {
    let mut buf = vec![0u8; 65_536];
    for _ in 0..1_000 {
        let mut moved = false;
        for (a, s) in clients.iter_mut() {
            while let Some(n) = s.poll_transmit(&mut buf) {
                ep.handle_datagram(now, *a, &buf[..n]);
                moved = true;
            }
        }
        while let Some((to, n)) = ep.poll_transmit(&mut buf) {
            if let Some((_, s)) = clients.iter_mut().find(|(a, _)| *a == to) {
                s.handle_datagram(now, &buf[..n]);
            }
            moved = true;
        }
        if !moved {
            return;
        }
    }
    panic!("the exchange did not settle");
}

/// The client's ClientHello carrying the server's cookie (after a HelloVerifyRequest).
fn hello_with_cookie(ep: &mut Endpoint, now: Instant, a: SocketAddr, c: &mut Session) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let n = c.poll_transmit(&mut buf).expect("a ClientHello");
    ep.handle_datagram(now, a, &buf[..n]);
    let (to, n) = ep.poll_transmit(&mut buf).expect("a HelloVerifyRequest");
    assert_eq!((to, buf[0], buf[13]), (a, 22, 3));
    c.handle_datagram(now, &buf[..n]);
    let n = c
        .poll_transmit(&mut buf)
        .expect("a ClientHello with the cookie");
    buf[..n].to_vec()
}

/// A client at `a` that completed its handshake with `ep`.
fn connect(ep: &mut Endpoint, now: Instant, a: SocketAddr, ctx: &DtlsClientContext) -> Session {
    let mut c = ctx.new_session(None, now).unwrap();
    let hello = hello_with_cookie(ep, now, a, &mut c);
    ep.handle_datagram(now, a, &hello);
    pump(ep, now, &mut [(a, &mut c)]);
    assert!(c.is_established(), "{:?}", c.error());
    let id = ep.connection_id(a).expect("a connection");
    assert!(ep.session(a, id).is_some_and(Session::is_established));
    c
}

/// A record with the peer's address that no key opens: application data in epoch 1.
fn forged_epoch1(seq: u64) -> Vec<u8> {
    let mut r = vec![23, 0xfe, 0xfd, 0, 1];
    r.extend_from_slice(&seq.to_be_bytes()[2..]);
    r.extend_from_slice(&40u16.to_be_bytes());
    r.extend((0..40u8).map(|i| i.wrapping_mul(37) ^ seq as u8));
    r
}

/// A plaintext (epoch-0) `close_notify` alert.
fn forged_close_notify(seq: u64) -> Vec<u8> {
    let mut r = vec![21, 0xfe, 0xfd, 0, 0];
    r.extend_from_slice(&seq.to_be_bytes()[2..]);
    r.extend_from_slice(&[0, 2, 1, 0]);
    r
}

fn drain_events(ep: &mut Endpoint) -> Vec<Event> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

#[test]
fn forged_records_with_the_peers_address_do_not_keep_an_idle_connection_alive() {
    for compact in [false, true] {
        let mut config = EndpointConfig::default();
        config.idle_timeout = Some(Duration::from_secs(10));
        let mut ep = Endpoint::server(psk_server(compact), config).unwrap();
        let t0 = Instant::now();
        let a = addr(1);
        let mut c = connect(&mut ep, t0, a, &psk_client(IDENTITY, compact));
        c.send(b"hello").unwrap();
        pump(&mut ep, t0, &mut [(a, &mut c)]);
        let id = ep.connection_id(a).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(ep.recv(a, id, &mut buf).unwrap(), Some(5));
        drain_events(&mut ep);
        // An off-path attacker sends a forged record with the peer's address every 3 s.
        let mut closed = None;
        for k in 1..=12u64 {
            let now = t0 + Duration::from_secs(3 * k);
            ep.handle_datagram(now, a, &forged_epoch1(1_000 + k));
            if compact {
                ep.handle_datagram(now, a, &forged_close_notify(100 + k));
            }
            ep.handle_timeout(now);
            pump(&mut ep, now, &mut [(a, &mut c)]);
            for e in drain_events(&mut ep) {
                if let Event::Closed { error, .. } = e {
                    closed.get_or_insert((k, error));
                }
            }
        }
        let (k, error) = closed.expect("the connection expired");
        assert_eq!(
            k, 4,
            "expired at the first deadline after 10 s (compact: {compact})"
        );
        assert!(error.as_ref().is_some_and(is_idle_timeout), "{error:?}");
        let stats = ep.stats();
        assert_eq!((stats.idle_timeouts, stats.connections), (1, 0), "{stats}");
        assert!(ep.connection_id(a).is_none());
        // The peer was told: a close_notify reached it (it may have been awake).
        assert_eq!(c.state(), SessionState::Closed);
        assert!(c.closed_by_peer());
    }
}

#[test]
fn authenticated_records_keep_a_connection_alive_past_the_idle_timeout() {
    for compact in [false, true] {
        let mut config = EndpointConfig::default();
        config.idle_timeout = Some(Duration::from_secs(10));
        let mut ep = Endpoint::server(psk_server(compact), config).unwrap();
        let t0 = Instant::now();
        let a = addr(2);
        let mut c = connect(&mut ep, t0, a, &psk_client(IDENTITY, compact));
        for k in 1..=12u64 {
            let now = t0 + Duration::from_secs(3 * k);
            c.send(format!("ping {k}").as_bytes()).unwrap();
            pump(&mut ep, now, &mut [(a, &mut c)]);
            ep.handle_timeout(now);
        }
        let id = ep.connection_id(a).expect("still connected");
        let stats = ep.connection_stats(a, id).unwrap();
        assert_eq!(stats.last_activity, t0 + Duration::from_secs(36));
        assert_eq!(stats.session.app_in, 12);
        assert!(stats.session.bytes_in > 12 * 6);
        assert_eq!(ep.stats().idle_timeouts, 0);
        assert!(c.is_established());
    }
}

#[test]
fn a_full_endpoint_evicts_the_least_recently_active_idle_connection_with_close_notify() {
    let mut config = EndpointConfig::default();
    config.max_connections = 2;
    config.evict_idle_after = Some(Duration::from_secs(60));
    let mut ep = Endpoint::server(psk_server(false), config).unwrap();
    let ctx = psk_client(IDENTITY, false);
    let t0 = Instant::now();
    let (a, b, n) = (addr(10), addr(11), addr(12));
    let mut ca = connect(&mut ep, t0, a, &ctx);
    let mut cb = connect(&mut ep, t0 + Duration::from_secs(1), b, &ctx);
    drain_events(&mut ep);

    // 30 s later nobody has been idle for 60 s: the newcomer is told at once.
    let t1 = t0 + Duration::from_secs(30);
    ca.send(b"a is awake").unwrap();
    pump(&mut ep, t1, &mut [(a, &mut ca)]);
    let mut cn = ctx.new_session(None, t1).unwrap();
    let hello = hello_with_cookie(&mut ep, t1, n, &mut cn);
    ep.handle_datagram(t1, n, &hello);
    pump(&mut ep, t1, &mut [(n, &mut cn)]);
    assert!(ep.connection_id(n).is_none());
    // The alert is unauthenticated: our client holds it for one retransmission interval (a
    // spoofed one must not end a handshake), then reports it as the reason.
    assert_eq!(cn.stats().held_alerts, 1);
    cn.handle_timeout(t1 + Duration::from_secs(2));
    assert_eq!(cn.state(), SessionState::Failed);
    assert!(
        matches!(cn.error(), Some(Error::PeerAlert(al)) if al.description == 80),
        "refused with internal_error: {:?}",
        cn.error()
    );
    let stats = ep.stats();
    assert_eq!(
        (stats.refused_connection_limit, stats.refusal_alerts_sent),
        (1, 1),
        "{stats}"
    );

    // At 70 s, b (silent since 1 s) has been idle for 69 s, a only for 40 s: b makes room.
    let t2 = t0 + Duration::from_secs(70);
    let mut cn = ctx.new_session(None, t2).unwrap();
    let hello = hello_with_cookie(&mut ep, t2, n, &mut cn);
    ep.handle_datagram(t2, n, &hello);
    pump(&mut ep, t2, &mut [(n, &mut cn), (b, &mut cb), (a, &mut ca)]);
    assert!(cn.is_established(), "{:?}", cn.error());
    assert!(ca.is_established() && ep.connection_id(a).is_some());
    assert_eq!(cb.state(), SessionState::Closed, "b was sent close_notify");
    assert!(ep.connection_id(b).is_none());
    let evicted = drain_events(&mut ep).into_iter().find_map(|e| match e {
        Event::Closed { peer, error, .. } if peer == b => error,
        _ => None,
    });
    match evicted {
        Some(Error::Evicted { peer, idle }) => {
            assert_eq!(peer, Some(b));
            assert_eq!(idle, Duration::from_secs(69));
        }
        other => panic!("b's connection should end as evicted: {other:?}"),
    }
    let stats = ep.stats();
    assert_eq!((stats.evicted, stats.connections), (1, 2), "{stats}");
}

#[test]
fn without_eviction_a_full_endpoint_refuses_and_keeps_everyone() {
    let mut config = EndpointConfig::default();
    config.max_connections = 1;
    config.evict_idle_after = None;
    let mut ep = Endpoint::server(psk_server(false), config).unwrap();
    let ctx = psk_client(IDENTITY, false);
    let t0 = Instant::now();
    let mut ca = connect(&mut ep, t0, addr(20), &ctx);
    let later = t0 + Duration::from_secs(24 * 3600);
    let n = addr(21);
    let mut cn = ctx.new_session(None, later).unwrap();
    let hello = hello_with_cookie(&mut ep, later, n, &mut cn);
    ep.handle_datagram(later, n, &hello);
    pump(&mut ep, later, &mut [(n, &mut cn), (addr(20), &mut ca)]);
    cn.handle_timeout(later + Duration::from_secs(2));
    assert!(matches!(cn.error(), Some(Error::PeerAlert(al)) if al.description == 80));
    assert!(ca.is_established() && ep.connection_id(addr(20)).is_some());
    assert_eq!(ep.stats().evicted, 0);
}

#[test]
fn handshake_limits_refuse_silently_until_the_client_has_retransmitted_then_tell_it() {
    let mut config = EndpointConfig::default();
    config.max_handshakes = 1;
    let mut ep = Endpoint::server(psk_server(false), config).unwrap();
    let ctx = psk_client(IDENTITY, false);
    let t0 = Instant::now();
    // One handshake stalls after the server's flight: it holds the only slot.
    let mut stalled = ctx.new_session(None, t0).unwrap();
    let hello = hello_with_cookie(&mut ep, t0, addr(30), &mut stalled);
    ep.handle_datagram(t0, addr(30), &hello);
    let mut buf = vec![0u8; 65_536];
    while ep.poll_transmit(&mut buf).is_some() {}
    assert_eq!(ep.stats().handshakes, 1);

    let n = addr(31);
    let mut cn = ctx.new_session(None, t0).unwrap();
    let mut hello = hello_with_cookie(&mut ep, t0, n, &mut cn);
    let first_seq = u64::from_be_bytes([
        0, 0, hello[5], hello[6], hello[7], hello[8], hello[9], hello[10],
    ]);
    assert_eq!(
        first_seq, 1,
        "the cookie-bearing ClientHello is the second record"
    );
    // It and its first two retransmissions (record sequence 1 to 3): ignored, nothing sent.
    for seq in 1..=3u64 {
        hello[5..11].copy_from_slice(&seq.to_be_bytes()[2..]);
        ep.handle_datagram(t0, n, &hello);
        assert!(ep.poll_transmit(&mut buf).is_none(), "sequence {seq}");
    }
    // The third retransmission is answered with internal_error, mirroring the ClientHello's
    // record version and sequence number.
    hello[5..11].copy_from_slice(&4u64.to_be_bytes()[2..]);
    ep.handle_datagram(t0, n, &hello);
    let (to, len) = ep.poll_transmit(&mut buf).expect("a refusal alert");
    assert_eq!(to, n);
    let mut expected = vec![21, hello[1], hello[2], 0, 0];
    expected.extend_from_slice(&4u64.to_be_bytes()[2..]);
    expected.extend_from_slice(&[0, 2, 2, 80]);
    assert_eq!(&buf[..len], &expected[..]);
    let stats = ep.stats();
    assert_eq!(stats.refused_handshake_limit, 4, "{stats}");
    assert!(stats.refusal_alerts_sent >= 1);
    assert!(ep.connection_id(n).is_none());
}

#[test]
fn handshakes_share_a_memory_budget_at_their_worst_case() {
    let probe = Endpoint::server(psk_server(false), EndpointConfig::default()).unwrap();
    let worst = probe.handshake_worst_case();
    // Every term of the worst case is there: OpenSSL's buffers and our queues at the MTU.
    assert!(worst > 300 * 1024 && worst < 1024 * 1024, "{worst}");
    let mut config = EndpointConfig::default();
    config.handshake_memory = 3 * worst + worst / 2;
    let mut ep = Endpoint::server(psk_server(false), config.clone()).unwrap();
    let ctx = psk_client(IDENTITY, false);
    let t0 = Instant::now();
    let mut buf = vec![0u8; 65_536];
    for i in 0..5 {
        let a = addr(40 + i);
        let mut c = ctx.new_session(None, t0).unwrap();
        let hello = hello_with_cookie(&mut ep, t0, a, &mut c);
        ep.handle_datagram(t0, a, &hello);
        while ep.poll_transmit(&mut buf).is_some() {}
    }
    let stats = ep.stats();
    assert_eq!(stats.handshakes, 3, "{stats}");
    assert_eq!(stats.refused_handshake_memory, 2, "{stats}");
    assert_eq!(stats.handshake_memory_in_use, 3 * worst);
    assert!(stats.handshake_memory_in_use <= config.handshake_memory);
}

#[test]
fn the_default_per_ip_limit_lets_a_carrier_grade_nat_reconnect_at_once() {
    let config = EndpointConfig::default();
    assert!(config.max_handshakes_per_ip >= 100);
    assert!(config.max_handshakes_per_ip < config.max_handshakes);
    let mut ep = Endpoint::server(psk_server(false), config).unwrap();
    let ctx = psk_client(IDENTITY, false);
    let t0 = Instant::now();
    // Sixty devices behind one address, different ports, all handshaking at once.
    let clients: Vec<(SocketAddr, Session, Vec<u8>)> = (0..60u16)
        .map(|i| {
            let a = SocketAddr::from(([100, 64, 0, 1], 20_000 + i));
            let mut c = ctx.new_session(None, t0).unwrap();
            let hello = hello_with_cookie(&mut ep, t0, a, &mut c);
            (a, c, hello)
        })
        .collect();
    for (a, _, hello) in &clients {
        ep.handle_datagram(t0, *a, hello);
    }
    let mut clients: Vec<(SocketAddr, Session)> =
        clients.into_iter().map(|(a, c, _)| (a, c)).collect();
    let mut refs: Vec<(SocketAddr, &mut Session)> =
        clients.iter_mut().map(|(a, c)| (*a, c)).collect();
    pump(&mut ep, t0, &mut refs);
    assert!(clients.iter().all(|(_, c)| c.is_established()));
    let stats = ep.stats();
    assert_eq!((stats.connections, stats.refused_per_ip_limit), (60, 0));
}

#[test]
fn records_of_later_epochs_never_reach_openssl() {
    let mut ep = Endpoint::server(psk_server(false), EndpointConfig::default()).unwrap();
    let t0 = Instant::now();
    let a = addr(50);
    let mut c = connect(&mut ep, t0, a, &psk_client(IDENTITY, false));
    // Epoch-2 handshake records: OpenSSL would keep up to 100 of them, ≈ 18 KB each, for the
    // next epoch that never comes.
    for i in 0..200u64 {
        let mut r = vec![22, 0xfe, 0xfd, 0, 2];
        r.extend_from_slice(&i.to_be_bytes()[2..]);
        r.extend_from_slice(&64u16.to_be_bytes());
        r.extend_from_slice(&[7u8; 64]);
        ep.handle_datagram(t0, a, &r);
    }
    let id = ep.connection_id(a).unwrap();
    let stats = ep.connection_stats(a, id).unwrap().session;
    assert_eq!(stats.dropped_excess_records, 200);
    c.send(b"still fine").unwrap();
    pump(&mut ep, t0, &mut [(a, &mut c)]);
    let mut buf = [0u8; 64];
    assert_eq!(ep.recv(a, id, &mut buf).unwrap(), Some(10));
}

#[test]
fn endpoint_statistics_print_labelled_fields() {
    let mut ep = Endpoint::server(psk_server(false), EndpointConfig::default()).unwrap();
    ep.handle_datagram(Instant::now(), addr(60), &[1, 2, 3]);
    let stats = ep.stats();
    let line = stats.to_string();
    assert!(line.contains("datagrams_in=1"), "{line}");
    assert!(line.contains("dropped_total=1"), "{line}");
    assert!(line.contains("connections=0"), "{line}");
    let debug = format!("{stats:?}");
    assert!(debug.contains("\"dropped_too_short\": 1"), "{debug}");
    assert!(!debug.contains("dropped: ["), "{debug}");
    let fields = stats.fields();
    assert!(fields.iter().any(|(k, v)| k == "bytes_in" && *v == 3));
}

// ---------------------------------------------------------------------------------------------
// Over UDP on loopback.

/// A UDP relay between one client and a server: the server sees the relay's address as the
/// client's. `forge` datagrams are sent to the server from the relay's socket every `every`,
/// which is spoofing the client's address as far as the server can tell.
fn relay(server: SocketAddr, forge: Vec<Vec<u8>>, every: Duration) -> (SocketAddr, SocketAddr) {
    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    front
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    back.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let (front_addr, back_addr) = (front.local_addr().unwrap(), back.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut client = None;
        let mut buf = [0u8; 65_536];
        let mut next_forge = Instant::now() + every;
        let mut forged = forge.into_iter().cycle();
        let stop = Instant::now() + Duration::from_secs(30);
        while Instant::now() < stop {
            if let Ok((n, from)) = front.recv_from(&mut buf) {
                client = Some(from);
                let _ = back.send_to(&buf[..n], server);
            }
            if let Ok((n, _)) = back.recv_from(&mut buf) {
                if let Some(c) = client {
                    let _ = front.send_to(&buf[..n], c);
                }
            }
            if client.is_some() && Instant::now() >= next_forge {
                if let Some(d) = forged.next() {
                    let _ = back.send_to(&d, server);
                }
                next_forge += every;
            }
        }
    });
    (front_addr, back_addr)
}

#[test]
fn forged_datagrams_through_a_relay_do_not_keep_an_association_alive_over_udp() {
    let mut config = EndpointConfig::default();
    config.idle_timeout = Some(Duration::from_millis(800));
    let server = DtlsServer::bind_with(
        "127.0.0.1:0",
        psk_server(false),
        config,
        SocketOptions::default(),
    )
    .unwrap();
    let forged: Vec<Vec<u8>> = (0..100).map(|k| forged_epoch1(5_000 + k)).collect();
    let (front, apparent) = relay(server.local_addr(), forged, Duration::from_millis(150));
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(front, &psk_client(IDENTITY, false), Duration::from_secs(5))
        .unwrap();
    let accepted = server
        .accept_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert_eq!(accepted.peer_addr(), apparent);
    conn.send(b"hello").unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(accepted.recv(&mut buf).unwrap(), 5);
    // The relay now forges a record with the client's apparent address every 150 ms; the
    // association must still expire 800 ms after the last authenticated record.
    let started = Instant::now();
    let err = accepted
        .recv(&mut buf)
        .expect_err("the association expires");
    assert!(is_idle_timeout(&err), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let stats = server.stats();
    assert_eq!(stats.idle_timeouts, 1, "{stats}");
    // The client, awake, was told with a close_notify.
    assert_eq!(
        conn.recv_timeout(&mut buf, Duration::from_secs(3)).unwrap(),
        Some(0)
    );
}

#[test]
fn the_server_application_sees_failed_handshakes_with_peer_identity_and_reason() {
    let server = DtlsServer::bind("127.0.0.1:0", psk_server(false)).unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    server.on_handshake_failure(move |f| {
        let _ = tx.lock().unwrap().send((
            f.peer,
            f.identity.clone(),
            f.reason.to_string(),
            f.to_string(),
        ));
    });
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let err = client
        .connect(
            server.local_addr(),
            &psk_client(b"stranger", false),
            Duration::from_secs(5),
        )
        .expect_err("unknown identity");
    assert!(err.to_string().contains("unknown PSK identity"), "{err}");
    let (peer, identity, reason, line) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(peer, client.local_addr());
    assert_eq!(identity, Some(PeerIdentity::Psk(b"stranger".to_vec())));
    assert!(reason.contains("unknown PSK identity"), "{reason}");
    assert!(line.starts_with(&format!("{peer}: ")), "{line}");
    assert!(line.contains("\"stranger\""), "{line}");
    let stats = server.stats();
    assert_eq!(stats.handshakes_failed_local, 1, "{stats}");
}

#[cfg(feature = "tokio")]
#[test]
fn the_tokio_server_reports_failed_handshakes_too() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = openssl_dtls::tokio::DtlsServer::bind("127.0.0.1:0", psk_server(false))
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        server.on_handshake_failure(move |f| {
            let _ = tx.send((f.peer, f.identity.clone()));
        });
        let client = openssl_dtls::tokio::DtlsClient::bind("127.0.0.1:0")
            .await
            .unwrap();
        let err = client
            .connect(
                server.local_addr(),
                &psk_client(b"stranger", false),
                Duration::from_secs(5),
            )
            .await
            .expect_err("unknown identity");
        assert!(err.to_string().contains("unknown PSK identity"), "{err}");
        let (peer, identity) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(peer, client.local_addr());
        assert_eq!(identity, Some(PeerIdentity::Psk(b"stranger".to_vec())));
    });
}

#[test]
fn a_connection_reports_its_own_statistics() {
    let server = DtlsServer::bind("127.0.0.1:0", psk_server(false)).unwrap();
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let before = Instant::now();
    let conn = client
        .connect(
            server.local_addr(),
            &psk_client(IDENTITY, false),
            Duration::from_secs(5),
        )
        .unwrap();
    let accepted = server
        .accept_timeout(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    for i in 0..5 {
        conn.send(format!("message {i}").as_bytes()).unwrap();
    }
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        accepted.recv(&mut buf).unwrap();
    }
    let stats = accepted.stats().expect("live");
    assert_eq!(stats.session.app_in, 5);
    assert!(stats.session.bytes_in >= 5 * 9);
    assert!(stats.session.datagrams_out >= 1);
    assert!(stats.last_activity >= before);
    let client_stats = conn.stats().expect("live");
    assert_eq!(client_stats.session.app_out, 5);
}

#[test]
fn one_handshake_facts_value_outlives_the_compact_hand_off() {
    let mut ep = Endpoint::server(psk_server(true), EndpointConfig::default()).unwrap();
    let t0 = Instant::now();
    let a = addr(70);
    let mut c = connect(&mut ep, t0, a, &psk_client(IDENTITY, true));
    let id = ep.connection_id(a).unwrap();
    let before = ep
        .session(a, id)
        .and_then(|s| s.handshake_facts())
        .expect("facts at establishment");
    assert!(
        !ep.session(a, id).unwrap().is_compact(),
        "the server lingers"
    );
    assert_eq!(before.cipher, Some("PSK-AES128-CCM8"));
    assert_eq!(before.psk_identity.as_deref(), Some(IDENTITY));
    assert!(!before.resumed);
    assert_eq!(before.started, t0);
    // The client's first record ends the server's linger: the SSL is freed, the facts stay.
    c.send(b"hello").unwrap();
    pump(&mut ep, t0, &mut [(a, &mut c)]);
    let s = ep.session(a, id).unwrap();
    assert!(s.is_compact() && s.ssl().is_none());
    let after = s.handshake_facts().unwrap();
    assert_eq!(
        (after.cipher, after.cipher_standard_name, after.version),
        (before.cipher, before.cipher_standard_name, before.version)
    );
    assert_eq!(after.psk_identity, before.psk_identity);
    assert_eq!(
        (after.started, after.completed),
        (before.started, before.completed)
    );
    assert_eq!(after.resumed, before.resumed);
    assert_eq!(s.cipher(), Some("PSK-AES128-CCM8"));
    assert_eq!(s.psk_identity(), Some(IDENTITY));
    let stats = ep.connection_stats(a, id).unwrap();
    assert_eq!(stats.handshake_duration, Some(before.duration()));
    // The client side holds its own, with the same suite.
    let mine = c.handshake_facts().unwrap();
    assert_eq!((mine.cipher, mine.version), (before.cipher, before.version));
}

#[test]
fn a_rebooted_peers_new_connection_keeps_its_timers() {
    let mut config = EndpointConfig::default();
    config.idle_timeout = Some(Duration::from_secs(60));
    let mut ep = Endpoint::server(psk_server(false), config).unwrap();
    let ctx = psk_client(IDENTITY, false);
    let t0 = Instant::now();
    let a = addr(80);
    let _old = connect(&mut ep, t0, a, &ctx);
    // The device reboots and keeps its port: its new handshake replaces the connection.
    let t1 = t0 + Duration::from_secs(5);
    let mut new = ctx.new_session(None, t1).unwrap();
    let hello = hello_with_cookie(&mut ep, t1, a, &mut new);
    ep.handle_datagram(t1, a, &hello);
    pump(&mut ep, t1, &mut [(a, &mut new)]);
    assert!(new.is_established(), "{:?}", new.error());
    assert_eq!(ep.stats().connections_replaced, 1);
    drain_events(&mut ep);
    // The new connection idles out like any other (its timer was scheduled anew).
    let mut idled = false;
    for s in 1..=120 {
        ep.handle_timeout(t1 + Duration::from_secs(s));
        idled |= drain_events(&mut ep)
            .iter()
            .any(|e| matches!(e, Event::Closed { error: Some(err), .. } if is_idle_timeout(err)));
    }
    assert!(idled, "the replacing connection never idled out");
    assert_eq!(ep.stats().idle_timeouts, 1);
}

/// The records of a datagram, as (epoch, content type, whole record bytes).
fn split_records(d: &[u8]) -> Vec<(u16, u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = d;
    while rest.len() >= 13 {
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let (record, tail) = rest.split_at(13 + len);
        out.push((
            u16::from_be_bytes([record[3], record[4]]),
            record[0],
            record.to_vec(),
        ));
        rest = tail;
    }
    out
}

#[test]
fn application_records_after_the_ccs_cannot_pile_up_in_a_handshake() {
    let mut ep = Endpoint::server(psk_server(false), EndpointConfig::default()).unwrap();
    let t0 = Instant::now();
    let a = addr(90);
    let mut c = psk_client(IDENTITY, false).new_session(None, t0).unwrap();
    let hello = hello_with_cookie(&mut ep, t0, a, &mut c);
    ep.handle_datagram(t0, a, &hello);
    let mut buf = vec![0u8; 65_536];
    let mut server_flight = Vec::new();
    while let Some((_, n)) = ep.poll_transmit(&mut buf) {
        server_flight.push(buf[..n].to_vec());
    }
    for d in &server_flight {
        c.handle_datagram(t0, d);
    }
    // The client's last flight: everything but its Finished reaches the server, which has then
    // read the ChangeCipherSpec and waits for the Finished.
    let mut finished = Vec::new();
    while let Some(n) = c.poll_transmit(&mut buf) {
        for (epoch, kind, record) in split_records(&buf[..n]) {
            if epoch == 1 && kind == 22 {
                finished.push(record);
            } else {
                ep.handle_datagram(t0, a, &record);
            }
        }
    }
    assert_eq!(finished.len(), 1);
    // Twelve epoch-1 application records now (a hostile peer knows the keys and could make
    // them genuine; OpenSSL would keep every one that decrypts until the handshake ends): only
    // two reach OpenSSL.
    let id = ep.connection_id(a).unwrap();
    for k in 0..12u64 {
        ep.handle_datagram(t0, a, &forged_epoch1(10 + k));
    }
    let stats = ep.connection_stats(a, id).unwrap().session;
    assert_eq!(stats.dropped_excess_records, 10);
    // The genuine Finished still completes the handshake.
    ep.handle_datagram(t0, a, &finished[0]);
    while let Some((_, n)) = ep.poll_transmit(&mut buf) {
        c.handle_datagram(t0, &buf[..n]);
    }
    assert!(c.is_established(), "{:?}", c.error());
    assert!(ep.session(a, id).is_some_and(Session::is_established));
}

/// Every log line of this test binary at `info` and above, for the tests that read them.
fn captured_logs() -> &'static std::sync::Mutex<Vec<String>> {
    struct Capture;
    static LINES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    impl log::Log for Capture {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::Level::Info
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                if let Ok(mut lines) = LINES.lock() {
                    lines.push(format!("{} {}", r.level(), r.args()));
                }
            }
        }
        fn flush(&self) {}
    }
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = log::set_logger(&Capture);
        log::set_max_level(log::LevelFilter::Info);
    });
    &LINES
}

#[test]
fn refusals_are_logged_at_info_with_the_limit_and_its_value() {
    let logs = captured_logs();
    let mut config = EndpointConfig::default();
    config.max_connections = 1;
    config.evict_idle_after = None;
    let mut ep = Endpoint::server(psk_server(false), config).unwrap();
    let ctx = psk_client(IDENTITY, false);
    let t0 = Instant::now();
    let _held = connect(&mut ep, t0, addr(100), &ctx);
    let n = addr(101);
    let mut cn = ctx.new_session(None, t0).unwrap();
    let hello = hello_with_cookie(&mut ep, t0, n, &mut cn);
    ep.handle_datagram(t0, n, &hello);
    assert_eq!(ep.stats().refused_connection_limit, 1);
    let lines = logs.lock().unwrap().clone();
    let line = lines
        .iter()
        .find(|l| l.contains(&n.to_string()) && l.contains("max_connections (1) reached"))
        .unwrap_or_else(|| panic!("no refusal line for {n} in {lines:#?}"));
    assert!(line.starts_with("INFO "), "{line}");
}

#[test]
fn a_timeout_budget_runs_that_many_due_timers_and_leaves_the_rest_due() {
    // Five handshakes that stall after the server's first flight; past their deadline, a
    // budget of 2 ends two of them and says more are due, the next call the rest.
    let now = Instant::now();
    let ctx = {
        let mut b = DtlsServerContext::builder();
        b.psk_key_store(|id| (id == IDENTITY).then(|| KEY.to_vec()))
            .handshake_timeout(Duration::from_secs(2));
        b.build().unwrap()
    };
    let mut ep = Endpoint::server(ctx, EndpointConfig::default()).unwrap();
    let client = psk_client(IDENTITY, false);
    let mut buf = vec![0u8; 65_536];
    for i in 0..5 {
        let mut c = client.new_session(None, now).unwrap();
        let hello = hello_with_cookie(&mut ep, now, addr(i), &mut c);
        ep.handle_datagram(now, addr(i), &hello);
        while ep.poll_transmit(&mut buf).is_some() {} // its flight, lost
    }
    assert_eq!(ep.stats().handshakes, 5);
    let later = now + Duration::from_secs(3);
    assert!(ep.handle_timeout_budget(later, 2), "more timers are due");
    assert_eq!(
        (ep.stats().handshakes, ep.stats().handshakes_timed_out),
        (3, 2)
    );
    assert!(!ep.handle_timeout_budget(later, 100), "none left");
    assert_eq!(
        (ep.stats().handshakes, ep.stats().handshakes_timed_out),
        (0, 5)
    );
    assert!(
        !ep.handle_timeout_budget(later, 0),
        "nothing due, nothing left"
    );
}
