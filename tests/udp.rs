//! One socket, many peers, over real UDP on loopback: the blocking server and client, the
//! cookie exchange, limits, reaping, reboots, close, IPv6.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl_dtls::{
    DtlsClient, DtlsClientContext, DtlsServer, DtlsServerContext, EndpointConfig, Error,
    PskCredentials, Session, SocketOptions, TimeoutPhase,
};

const IDENTITY: &[u8] = b"Client_identity";
const KEY: &[u8] = b"secretPSK";

fn server_ctx(handshake_timeout: Duration) -> DtlsServerContext {
    DtlsServerContext::builder()
        .psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
        .handshake_timeout(handshake_timeout)
        .retransmit_timeout(Duration::from_millis(100), Duration::from_millis(400))
        .build()
        .unwrap()
}

fn client_ctx() -> DtlsClientContext {
    DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(IDENTITY.to_vec(), KEY.to_vec()))
        .retransmit_timeout(Duration::from_millis(100), Duration::from_millis(400))
        .build()
        .unwrap()
}

fn server_with(config: EndpointConfig, handshake_timeout: Duration) -> DtlsServer {
    DtlsServer::bind_with(
        "127.0.0.1:0",
        server_ctx(handshake_timeout),
        config,
        SocketOptions::default(),
    )
    .unwrap()
}

fn echo_server(config: EndpointConfig) -> Arc<DtlsServer> {
    serve_echo(server_with(config, Duration::from_secs(10)))
}

/// Echoes every datagram on every connection `server` accepts, a thread per connection.
fn serve_echo(server: DtlsServer) -> Arc<DtlsServer> {
    let server = Arc::new(server);
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
    server
}

fn roomy() -> EndpointConfig {
    let mut config = EndpointConfig::default();
    config.max_handshakes_per_ip = 1024;
    config.max_handshakes = 1024;
    config.handshake_memory = 1 << 30;
    config
}

#[test]
fn two_hundred_clients_handshake_concurrently_and_echo_100_messages_each() {
    let server = echo_server(roomy());
    let addr = server.local_addr();
    let ctx = client_ctx();
    let results: Vec<usize> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..200)
            .map(|i| {
                let ctx = &ctx;
                scope.spawn(move || {
                    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
                    let conn = client.connect(addr, ctx, Duration::from_secs(20)).unwrap();
                    let mut delivered = 0;
                    let mut buf = [0u8; 2048];
                    for j in 0..100u32 {
                        let msg = format!("client {i} message {j}");
                        conn.send(msg.as_bytes()).unwrap();
                        // Loopback does not lose datagrams; a lost one would show as a timeout.
                        let n = conn
                            .recv_timeout(&mut buf, Duration::from_secs(10))
                            .unwrap()
                            .expect("echo");
                        assert_eq!(&buf[..n], msg.as_bytes());
                        delivered += 1;
                    }
                    delivered
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().sum::<usize>(), 200 * 100);
    let stats = server.stats();
    assert_eq!(stats.handshakes_completed, 200);
    assert!(
        stats.hello_verify_requests >= 200,
        "every client went through the cookie exchange"
    );
}

/// A real ClientHello (no cookie) from OpenSSL, as a spoofer would replay it.
fn client_hello() -> Vec<u8> {
    let mut session = client_ctx().new_session(None, Instant::now()).unwrap();
    let mut buf = [0u8; 2048];
    let n = session.poll_transmit(&mut buf).unwrap();
    buf[..n].to_vec()
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[test]
fn a_spoofed_client_hello_gets_a_smaller_hello_verify_request_and_creates_no_session() {
    let server = server_with(EndpointConfig::default(), Duration::from_secs(10));
    let hello = client_hello();
    let spoofer = UdpSocket::bind("127.0.0.1:0").unwrap();
    spoofer
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    spoofer.send_to(&hello, server.local_addr()).unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = spoofer.recv_from(&mut buf).unwrap();
    assert_eq!(from, server.local_addr());
    assert!(
        n <= hello.len(),
        "HelloVerifyRequest {n} bytes > ClientHello {} bytes",
        hello.len()
    );
    assert_eq!(buf[0], 22, "a handshake record");
    assert_eq!(buf[13], 3, "HelloVerifyRequest");
    let stats = server.stats();
    assert_eq!(stats.hello_verify_requests, 1);
    assert_eq!((stats.connections, stats.handshakes), (0, 0));

    // 10,000 more: no state, no retransmission, memory flat.
    let before = rss_bytes();
    let mut sockets: Vec<UdpSocket> = (0..50)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for i in 0..10_000 {
        let s = &sockets[i % sockets.len()];
        s.send_to(&hello, server.local_addr()).unwrap();
        if i % 500 == 499 {
            std::thread::sleep(Duration::from_millis(5)); // let the server keep up (no loss)
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().hello_verify_requests < 10_001 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = server.stats();
    assert!(stats.hello_verify_requests > 9_000, "{stats:?}");
    assert_eq!((stats.connections, stats.handshakes), (0, 0));
    let growth = rss_bytes().saturating_sub(before);
    assert!(growth < 4 << 20, "RSS grew by {growth} bytes");
    // Nothing is retransmitted: after the replies, the spoofers' sockets stay silent.
    for s in &mut sockets {
        s.set_nonblocking(true).unwrap();
        while s.recv_from(&mut buf).is_ok() {}
    }
    std::thread::sleep(Duration::from_millis(1500));
    for s in &sockets {
        assert!(
            s.recv_from(&mut buf).is_err(),
            "a HelloVerifyRequest was retransmitted"
        );
    }
}

#[test]
fn garbage_from_other_addresses_is_counted_and_the_live_session_is_unaffected() {
    let server = echo_server(EndpointConfig::default());
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(server.local_addr(), &client_ctx(), Duration::from_secs(5))
        .unwrap();
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = server.stats();
    let mut rng = support::Rng::new(7);
    let mut buf = [0u8; 2048];
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 5],
        vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 0, 5, 1, 2, 3, 4, 5],
        vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
    ];
    let mut sent = 0u64;
    for i in 0..200 {
        let g = if i < garbage.len() {
            garbage[i].clone()
        } else {
            (0..rng.below(300) + 1)
                .map(|_| rng.next_u64() as u8)
                .collect()
        };
        junk.send_to(&g, server.local_addr()).unwrap();
        sent += 1;
        let msg = format!("live {i}");
        conn.send(msg.as_bytes()).unwrap();
        let n = conn
            .recv_timeout(&mut buf, Duration::from_secs(5))
            .unwrap()
            .expect("echo");
        assert_eq!(&buf[..n], msg.as_bytes());
    }
    std::thread::sleep(Duration::from_millis(100));
    let stats = server.stats();
    // Every garbage datagram is accounted for (most by the pre-parser; a random one can look
    // like a ClientHello and be answered or ignored by the listener).
    let accounted = |s: &openssl_dtls::EndpointStats| {
        s.dropped_total() + s.hello_verify_requests + s.listener_ignored
    };
    assert_eq!(accounted(&stats) - accounted(&before), sent, "{stats:?}");
    assert_eq!(
        stats.datagrams_in - before.datagrams_in,
        sent + 200,
        "garbage plus the 200 live datagrams"
    );
    assert_eq!(stats.connections, 1);
}

/// Drives a sans-IO client session over a raw socket until `done` holds or the deadline passes.
fn drive_raw(
    session: &mut Session,
    sock: &UdpSocket,
    server: SocketAddr,
    deadline: Duration,
    done: impl Fn(&Session) -> bool,
) -> bool {
    let end = Instant::now() + deadline;
    let mut buf = [0u8; 2048];
    sock.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    while Instant::now() < end {
        while let Some(n) = session.poll_transmit(&mut buf) {
            sock.send_to(&buf[..n], server).unwrap();
        }
        if done(session) {
            return true;
        }
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            session.handle_datagram(Instant::now(), &buf[..n]);
        }
        session.handle_timeout(Instant::now());
        if session.error().is_some() {
            return false;
        }
    }
    false
}

/// A client that completes the cookie exchange, receives the server's flight, and then stalls.
fn stalled_client(server: SocketAddr) -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    stall_on(&sock, server);
    sock
}

/// Runs a handshake from `sock` through the cookie exchange and the server's flight, then stops.
fn stall_on(sock: &UdpSocket, server: SocketAddr) {
    let mut session = client_ctx().new_session(None, Instant::now()).unwrap();
    let mut buf = [0u8; 2048];
    // ClientHello -> HelloVerifyRequest -> ClientHello with cookie -> server flight.
    let mut flights = 0;
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    while flights < 2 {
        while let Some(n) = session.poll_transmit(&mut buf) {
            sock.send_to(&buf[..n], server).unwrap();
        }
        let (n, _) = sock.recv_from(&mut buf).expect("server answers");
        session.handle_datagram(Instant::now(), &buf[..n]);
        flights += 1;
    }
    // The session is dropped: the client never sends its second flight.
}

#[test]
fn at_the_handshake_limit_new_clients_are_refused_and_established_ones_keep_echoing() {
    let mut config = EndpointConfig::default();
    config.max_handshakes = 2;
    let server = Arc::new(server_with(config, Duration::from_millis(800)));
    let s = Arc::clone(&server);
    std::thread::spawn(move || {
        for conn in s.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok(n @ 1..) = conn.recv(&mut buf) {
                    let _ = conn.send(&buf[..n]);
                }
            });
        }
    });
    let addr = server.local_addr();
    let live_client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let live = live_client
        .connect(addr, &client_ctx(), Duration::from_secs(5))
        .unwrap();
    let _stalled: Vec<UdpSocket> = (0..2).map(|_| stalled_client(addr)).collect();
    assert_eq!(server.stats().handshakes, 2);
    // A third client cannot start while the two stalled handshakes hold the budget.
    let blocked = DtlsClient::bind("127.0.0.1:0").unwrap();
    let err = blocked
        .connect(addr, &client_ctx(), Duration::from_millis(300))
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { peer: Some(p), phase: TimeoutPhase::Connect } if p == addr),
        "{err:?}"
    );
    assert!(server.stats().refused_handshake_limit >= 1);
    let mut buf = [0u8; 64];
    live.send(b"still here").unwrap();
    assert_eq!(
        live.recv_timeout(&mut buf, Duration::from_secs(2)).unwrap(),
        Some(10)
    );
    // The stalled handshakes are reaped at their deadline; then the new client gets in.
    let conn = blocked
        .connect(addr, &client_ctx(), Duration::from_secs(5))
        .unwrap();
    assert!(server.stats().handshakes_timed_out >= 2);
    conn.send(b"in").unwrap();
    assert_eq!(
        conn.recv_timeout(&mut buf, Duration::from_secs(2)).unwrap(),
        Some(2)
    );
}

#[test]
fn a_client_that_stops_mid_handshake_is_reaped_at_the_deadline() {
    let server = server_with(EndpointConfig::default(), Duration::from_millis(300));
    let _sock = stalled_client(server.local_addr());
    assert_eq!(server.stats().handshakes, 1);
    std::thread::sleep(Duration::from_millis(700));
    let stats = server.stats();
    assert_eq!(stats.handshakes, 0, "{stats:?}");
    assert_eq!(stats.handshakes_timed_out, 1);
}

#[test]
fn an_idle_connection_is_dropped_at_the_idle_timeout() {
    let mut config = EndpointConfig::default();
    config.idle_timeout = Some(Duration::from_millis(300));
    let server = server_with(config, Duration::from_secs(5));
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let _conn = client
        .connect(server.local_addr(), &client_ctx(), Duration::from_secs(5))
        .unwrap();
    let accepted = server
        .accept_timeout(Duration::from_secs(2))
        .unwrap()
        .expect("accepted");
    let mut buf = [0u8; 64];
    let started = Instant::now();
    let err = accepted.recv(&mut buf).unwrap_err();
    assert!(
        matches!(err, Error::IdleTimeout { peer: Some(_), idle } if idle == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(server.stats().idle_timeouts, 1);
    assert_eq!(server.stats().connections, 0);
}

#[test]
fn a_rebooted_client_on_the_same_port_gets_a_fresh_handshake_and_is_served() {
    let server = Arc::new(server_with(
        EndpointConfig::default(),
        Duration::from_secs(5),
    ));
    let addr = server.local_addr();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ctx = client_ctx();
    let mut first = ctx.new_session(None, Instant::now()).unwrap();
    assert!(drive_raw(
        &mut first,
        &sock,
        addr,
        Duration::from_secs(5),
        Session::is_established
    ));
    let old = server
        .accept_timeout(Duration::from_secs(2))
        .unwrap()
        .expect("first connection");
    // Reboot: the device forgets its session and starts over from the same port.
    drop(first);
    let mut second = ctx.new_session(None, Instant::now()).unwrap();
    assert!(drive_raw(
        &mut second,
        &sock,
        addr,
        Duration::from_secs(5),
        Session::is_established
    ));
    let new = server
        .accept_timeout(Duration::from_secs(2))
        .unwrap()
        .expect("second connection");
    assert_eq!(new.peer_addr(), sock.local_addr().unwrap());
    // The old connection ended in an orderly way when the new one proved the address.
    let mut buf = [0u8; 64];
    assert_eq!(
        old.recv_timeout(&mut buf, Duration::from_secs(2)).unwrap(),
        Some(0)
    );
    assert_eq!(server.stats().connections_replaced, 1);
    // The new one is served.
    new.send(b"welcome back").unwrap();
    assert!(drive_raw(
        &mut second,
        &sock,
        addr,
        Duration::from_secs(2),
        |s| s.has_received()
    ));
    assert_eq!(second.recv(&mut buf).unwrap(), Some(12));
}

#[test]
fn close_from_the_client_ends_the_servers_recv_with_end_of_stream() {
    let server = server_with(EndpointConfig::default(), Duration::from_secs(5));
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(server.local_addr(), &client_ctx(), Duration::from_secs(5))
        .unwrap();
    let accepted = server
        .accept_timeout(Duration::from_secs(2))
        .unwrap()
        .unwrap();
    conn.close();
    let mut buf = [0u8; 64];
    assert_eq!(
        accepted
            .recv_timeout(&mut buf, Duration::from_secs(2))
            .unwrap(),
        Some(0)
    );
    assert!(matches!(conn.send(b"x"), Err(Error::Closed)));
}

#[test]
fn close_from_the_server_ends_the_clients_recv_with_end_of_stream() {
    let server = server_with(EndpointConfig::default(), Duration::from_secs(5));
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(server.local_addr(), &client_ctx(), Duration::from_secs(5))
        .unwrap();
    let accepted = server
        .accept_timeout(Duration::from_secs(2))
        .unwrap()
        .unwrap();
    // The server may send first, as soon as its side of the handshake is done.
    accepted.send(b"server first").unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        conn.recv_timeout(&mut buf, Duration::from_secs(2)).unwrap(),
        Some(12)
    );
    accepted.close();
    assert_eq!(
        conn.recv_timeout(&mut buf, Duration::from_secs(2)).unwrap(),
        Some(0)
    );
}

#[test]
fn one_client_socket_holds_connections_to_two_servers() {
    let a = echo_server(EndpointConfig::default());
    let b = echo_server(EndpointConfig::default());
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let ctx = client_ctx();
    let ca = client
        .connect(a.local_addr(), &ctx, Duration::from_secs(5))
        .unwrap();
    let cb = client
        .connect(b.local_addr(), &ctx, Duration::from_secs(5))
        .unwrap();
    assert_eq!(ca.local_addr(), cb.local_addr());
    let mut buf = [0u8; 64];
    ca.send(b"to a").unwrap();
    cb.send(b"to b").unwrap();
    assert_eq!(
        ca.recv_timeout(&mut buf, Duration::from_secs(2)).unwrap(),
        Some(4)
    );
    assert_eq!(&buf[..4], b"to a");
    assert_eq!(
        cb.recv_timeout(&mut buf, Duration::from_secs(2)).unwrap(),
        Some(4)
    );
    assert_eq!(&buf[..4], b"to b");
    // Closing the client ends both.
    client.close();
    assert_eq!(ca.recv(&mut buf).unwrap(), 0);
    assert_eq!(cb.recv(&mut buf).unwrap(), 0);
}

#[test]
fn ipv6_loopback_works() {
    let server = DtlsServer::bind("[::1]:0", server_ctx(Duration::from_secs(5))).unwrap();
    let client = DtlsClient::bind("[::1]:0").unwrap();
    let conn = client
        .connect(server.local_addr(), &client_ctx(), Duration::from_secs(5))
        .unwrap();
    let accepted = server
        .accept_timeout(Duration::from_secs(2))
        .unwrap()
        .unwrap();
    assert!(accepted.peer_addr().is_ipv6());
    assert_eq!(accepted.psk_identity(), Some(IDENTITY));
    conn.send(b"over v6").unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        accepted
            .recv_timeout(&mut buf, Duration::from_secs(2))
            .unwrap(),
        Some(7)
    );
    assert_eq!(conn.protocol_version(), Some("DTLSv1.2"));
}

#[test]
fn the_server_reports_handshake_facts_on_its_connections() {
    let server = server_with(EndpointConfig::default(), Duration::from_secs(5));
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(server.local_addr(), &client_ctx(), Duration::from_secs(5))
        .unwrap();
    let accepted = server
        .accept_timeout(Duration::from_secs(2))
        .unwrap()
        .unwrap();
    assert_eq!(accepted.peer_addr(), client.local_addr());
    assert_eq!(accepted.cipher(), conn.cipher());
    assert!(accepted.cipher().is_some());
    assert_eq!(accepted.protocol_version(), Some("DTLSv1.2"));
    assert!(accepted.data_mtu() > 1100);
}

#[test]
fn a_dual_stack_server_on_the_ipv6_wildcard_serves_ipv4_clients() {
    let server = DtlsServer::bind("[::]:0", server_ctx(Duration::from_secs(5))).unwrap();
    let port = server.local_addr().port();
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &client_ctx(),
            Duration::from_secs(5),
        )
        .unwrap();
    let accepted = server
        .accept_timeout(Duration::from_secs(2))
        .unwrap()
        .unwrap();
    // The kernel reports the IPv4 client as an IPv4-mapped IPv6 address.
    match accepted.peer_addr() {
        SocketAddr::V6(v6) => assert_eq!(
            v6.ip().to_ipv4_mapped(),
            Some(std::net::Ipv4Addr::LOCALHOST)
        ),
        other => panic!("expected a mapped address, got {other}"),
    }
    conn.send(b"v4 to v6").unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        accepted
            .recv_timeout(&mut buf, Duration::from_secs(2))
            .unwrap(),
        Some(8)
    );
}

#[test]
fn a_client_that_restarts_its_handshake_from_the_same_port_is_served_before_the_old_deadline() {
    // The old handshake would linger for 5 s; the new one must not wait for it.
    let server = server_with(EndpointConfig::default(), Duration::from_secs(5));
    let addr = server.local_addr();
    let sock = stalled_client(addr);
    assert_eq!(server.stats().handshakes, 1);
    let mut fresh = client_ctx().new_session(None, Instant::now()).unwrap();
    let started = Instant::now();
    assert!(
        drive_raw(
            &mut fresh,
            &sock,
            addr,
            Duration::from_secs(3),
            Session::is_established
        ),
        "{:?}",
        fresh.error()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let accepted = server
        .accept_timeout(Duration::from_secs(2))
        .unwrap()
        .expect("the new handshake's connection");
    assert_eq!(accepted.peer_addr(), sock.local_addr().unwrap());
    let stats = server.stats();
    assert_eq!((stats.connections, stats.handshakes), (1, 0), "{stats:?}");
}

#[test]
fn a_replacement_handshake_from_an_established_peer_counts_against_the_handshake_limit() {
    let mut config = EndpointConfig::default();
    config.max_handshakes = 1;
    let server = server_with(config, Duration::from_secs(5));
    let addr = server.local_addr();
    // An established connection from `sock` ...
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut first = client_ctx().new_session(None, Instant::now()).unwrap();
    assert!(drive_raw(
        &mut first,
        &sock,
        addr,
        Duration::from_secs(5),
        Session::is_established
    ));
    assert_eq!(server.stats().handshakes, 0);
    // ... whose address then starts a new handshake that stalls after the cookie exchange.
    stall_on(&sock, addr);
    assert_eq!(
        server.stats().handshakes,
        1,
        "the replacement handshake is in flight"
    );
    // The budget of one handshake is used: another client is refused until it is reaped.
    let other = DtlsClient::bind("127.0.0.1:0").unwrap();
    let err = other
        .connect(addr, &client_ctx(), Duration::from_millis(400))
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { peer: Some(p), phase: TimeoutPhase::Connect } if p == addr),
        "{err:?}"
    );
    let stats = server.stats();
    assert!(stats.refused_handshake_limit >= 1, "{stats:?}");
    assert_eq!(stats.connections, 1, "the old connection is untouched");
}

#[test]
fn compact_connections_echo_through_the_blocking_driver_and_a_rebooted_peer_takes_the_cookie_path()
{
    let server_ctx = DtlsServerContext::builder()
        .psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
        .retransmit_timeout(Duration::from_millis(100), Duration::from_millis(400))
        .compact_connections(true)
        .build()
        .unwrap();
    let client_ctx = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(IDENTITY.to_vec(), KEY.to_vec()))
        .retransmit_timeout(Duration::from_millis(100), Duration::from_millis(400))
        .compact_connections(true)
        .build()
        .unwrap();
    let server = serve_echo(
        DtlsServer::bind_with("127.0.0.1:0", server_ctx, roomy(), SocketOptions::default())
            .unwrap(),
    );
    let addr = server.local_addr();
    // 20 clients × 50 echoes, every connection on the compact layer at both ends.
    std::thread::scope(|scope| {
        for i in 0..20 {
            let ctx = &client_ctx;
            scope.spawn(move || {
                let client = DtlsClient::bind("127.0.0.1:0").unwrap();
                let conn = client.connect(addr, ctx, Duration::from_secs(20)).unwrap();
                assert_eq!(
                    client.stats().compact_handoffs,
                    1,
                    "the client hands off at once"
                );
                let mut buf = [0u8; 2048];
                for j in 0..50u32 {
                    let msg = format!("compact client {i} message {j}");
                    conn.send(msg.as_bytes()).unwrap();
                    let n = conn
                        .recv_timeout(&mut buf, Duration::from_secs(10))
                        .unwrap()
                        .expect("echo");
                    assert_eq!(&buf[..n], msg.as_bytes());
                }
            });
        }
    });
    let stats = server.stats();
    assert_eq!(stats.handshakes_completed, 20);
    assert_eq!(
        stats.compact_handoffs, 20,
        "each server connection handed off after its client's first record: {stats:?}"
    );
    // A rebooted device on the same port: its new ClientHello takes the cookie path and
    // replaces the compact connection.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut first = client_ctx.new_session(None, Instant::now()).unwrap();
    assert!(drive_raw(
        &mut first,
        &sock,
        addr,
        Duration::from_secs(5),
        Session::is_established
    ));
    assert!(first.is_compact());
    first.send(b"hello").unwrap();
    assert!(drive_raw(
        &mut first,
        &sock,
        addr,
        Duration::from_secs(5),
        |s| s.has_received()
    ));
    let hvr_before = server.stats().hello_verify_requests;
    drop(first);
    let mut second = client_ctx.new_session(None, Instant::now()).unwrap();
    assert!(drive_raw(
        &mut second,
        &sock,
        addr,
        Duration::from_secs(5),
        Session::is_established
    ));
    let stats = server.stats();
    assert_eq!(stats.connections_replaced, 1, "{stats:?}");
    assert!(
        stats.hello_verify_requests > hvr_before,
        "the cookie exchange ran again"
    );
    second.send(b"welcome back").unwrap();
    assert!(drive_raw(
        &mut second,
        &sock,
        addr,
        Duration::from_secs(5),
        |s| s.has_received()
    ));
    let mut buf = [0u8; 64];
    assert_eq!(second.recv(&mut buf).unwrap(), Some(12));
    assert_eq!(&buf[..12], b"welcome back");
    assert_eq!(server.stats().compact_handoffs, 22);
}
