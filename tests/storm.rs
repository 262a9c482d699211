//! Handshake storms must not starve established traffic: the endpoint checks out the steps of
//! server handshakes as jobs (`Endpoint::set_handshake_offload`), and the blocking driver runs
//! them on handshake workers, outside its lock.
//!
//! Sans-IO tests drive an `Endpoint` with simulated time and run its jobs by hand (or not, to
//! hold a handshake out); the UDP test floods a blocking server with ECDSA handshakes over
//! loopback while an established connection echoes.

mod support;

use std::net::SocketAddr;
use std::os::raw::{c_int, c_long, c_void};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use openssl::nid::Nid;
use openssl_dtls::{
    DtlsClient, DtlsClientContext, DtlsConnection, DtlsServer, DtlsServerContext, Endpoint,
    EndpointConfig, Event, PskCredentials, Session, SocketOptions, HANDSHAKE_INBOX,
};

const IDENTITY: &[u8] = b"device-1";
const KEY: &[u8] = b"secretPSK-device-1";

/// The tests of this file one at a time: the live-`SSL` count is process-wide, and the flood
/// wants the machine.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn psk_server() -> DtlsServerContext {
    DtlsServerContext::builder()
        .psk_key_store(|id| (id == IDENTITY).then(|| KEY.to_vec()))
        .build()
        .unwrap()
}

fn psk_client() -> DtlsClientContext {
    DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(IDENTITY.to_vec(), KEY.to_vec()))
        .build()
        .unwrap()
}

/// An ECDSA (P-256) server and a client that trusts it.
fn ecdsa_pair() -> (DtlsServerContext, DtlsClientContext) {
    let pki = support::Pki::new_ec();
    let key = support::ec_key(Nid::X9_62_PRIME256V1);
    let leaf = pki.leaf("storm-server", &key);
    let server = DtlsServerContext::builder()
        .certificate_chain_pem(&leaf.to_pem().unwrap())
        .private_key_pem(&key.private_key_to_pem_pkcs8().unwrap())
        .ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        .retransmit_timeout(Duration::from_millis(200), Duration::from_secs(1))
        .build()
        .unwrap();
    let client = DtlsClientContext::builder()
        .root_certificates_pem(&pki.ca_cert.to_pem().unwrap())
        .ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        .retransmit_timeout(Duration::from_millis(200), Duration::from_secs(1))
        .build()
        .unwrap();
    (server, client)
}

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 40_000 + i))
}

fn offloading(config: EndpointConfig) -> Endpoint {
    let mut ep = Endpoint::server(psk_server(), config).unwrap();
    ep.set_handshake_offload(true);
    ep
}

/// Runs and gives back every job the endpoint has checked out (what a worker does).
fn run_jobs(ep: &mut Endpoint, now: Instant) -> usize {
    let mut ran = 0;
    while let Some(mut job) = ep.poll_handshake_job() {
        job.run(now);
        ep.finish_handshake_job(now, job).unwrap();
        ran += 1;
    }
    ran
}

/// Moves datagrams between the endpoint and the clients, running the endpoint's jobs when
/// `jobs`, until both sides are quiet.
fn pump(ep: &mut Endpoint, now: Instant, jobs: bool, clients: &mut [(SocketAddr, &mut Session)]) {
    let mut buf = vec![0u8; 65_536];
    for _ in 0..1_000 {
        let mut moved = false;
        for (a, s) in clients.iter_mut() {
            while let Some(n) = s.poll_transmit(&mut buf) {
                ep.handle_datagram(now, *a, &buf[..n]);
                moved = true;
            }
        }
        if jobs && run_jobs(ep, now) > 0 {
            moved = true;
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

fn drain_events(ep: &mut Endpoint) -> Vec<Event> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

#[test]
fn a_checked_out_handshake_completes_once_its_jobs_run() {
    let _serial = serial();
    let mut ep = offloading(EndpointConfig::default());
    let now = Instant::now();
    let a = addr(1);
    let mut c = psk_client().new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, a, &mut c);
    ep.handle_datagram(now, a, &hello);
    // The first step (the server's first flight) waits for its runner: nothing to send yet,
    // and the handshake counts as in flight.
    let mut buf = vec![0u8; 2048];
    assert!(ep.poll_transmit(&mut buf).is_none());
    assert_eq!(ep.handshakes_out(), 1);
    assert_eq!(ep.len(), 1);
    let stats = ep.stats();
    assert_eq!((stats.handshakes, stats.handshake_jobs), (1, 1));
    assert!(ep.connection_id(a).is_none(), "the entry is out");
    pump(&mut ep, now, true, &mut [(a, &mut c)]);
    assert!(c.is_established(), "{:?}", c.error());
    let id = ep.connection_id(a).expect("back in the table");
    assert!(ep.session(a, id).is_some_and(Session::is_established));
    let stats = ep.stats();
    assert_eq!((stats.handshakes, stats.connections), (0, 1), "{stats:?}");
    assert_eq!(stats.handshakes_completed, 1);
    // The first flight and the client's second flight: two steps, two jobs.
    assert_eq!(stats.handshake_jobs, 2, "{stats:?}");
    assert_eq!(ep.handshakes_out(), 0);
    assert!(drain_events(&mut ep)
        .iter()
        .any(|e| matches!(e, Event::Connected { peer, .. } if *peer == a)));
    // Established records are not checked out.
    c.send(b"ping").unwrap();
    pump(&mut ep, now, false, &mut [(a, &mut c)]);
    assert_eq!(ep.stats().handshake_jobs, 2);
    assert_eq!(ep.recv(a, id, &mut buf).unwrap(), Some(4));
}

#[test]
fn an_ecdsa_handshake_completes_through_jobs() {
    let _serial = serial();
    let (sctx, cctx) = ecdsa_pair();
    let mut ep = Endpoint::server(sctx, EndpointConfig::default()).unwrap();
    ep.set_handshake_offload(true);
    let now = Instant::now();
    let a = addr(2);
    let mut c = cctx.new_session(Some("storm-server"), now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, a, &mut c);
    ep.handle_datagram(now, a, &hello);
    pump(&mut ep, now, true, &mut [(a, &mut c)]);
    assert!(c.is_established(), "{:?}", c.error());
    assert_eq!(ep.stats().connections, 1);
    assert!(ep.stats().handshake_jobs >= 2);
}

#[test]
fn handshakes_with_connection_ids_or_compact_connections_complete_through_jobs() {
    let _serial = serial();
    let now = Instant::now();
    let compact_server = DtlsServerContext::builder()
        .psk_key_store(|id| (id == IDENTITY).then(|| KEY.to_vec()))
        .compact_connections(true)
        .build()
        .unwrap();
    let compact_client = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(IDENTITY.to_vec(), KEY.to_vec()))
        .compact_connections(true)
        .build()
        .unwrap();
    let cases = [
        (
            support::cid::server_ctx(6, "PSK-AES128-CCM8"),
            support::cid::client_ctx(Some(4), "PSK-AES128-CCM8"),
            true,
        ),
        (compact_server, compact_client, false),
    ];
    for (i, (sctx, cctx, cids)) in cases.into_iter().enumerate() {
        let mut ep = Endpoint::server(sctx, EndpointConfig::default()).unwrap();
        ep.set_handshake_offload(true);
        let a = addr(30 + i as u16);
        let mut c = cctx.new_session(None, now).unwrap();
        let hello = hello_with_cookie(&mut ep, now, a, &mut c);
        ep.handle_datagram(now, a, &hello);
        pump(&mut ep, now, true, &mut [(a, &mut c)]);
        assert!(c.is_established(), "case {i}: {:?}", c.error());
        let id = ep.connection_id(a).expect("connected");
        assert!(ep.stats().handshake_jobs >= 2);
        if cids {
            let (own, peer) = c.connection_ids().expect("CIDs negotiated");
            assert_eq!((own.len(), peer.len()), (4, 6));
        }
        // Records (with the CID, or on the compact layer) flow both ways.
        let mut buf = vec![0u8; 2048];
        c.send(b"through").unwrap();
        pump(&mut ep, now, true, &mut [(a, &mut c)]);
        assert_eq!(ep.recv(a, id, &mut buf).unwrap(), Some(7), "case {i}");
        ep.send(a, id, b"back").unwrap();
        pump(&mut ep, now, true, &mut [(a, &mut c)]);
        assert_eq!(c.recv(&mut buf).unwrap(), Some(4), "case {i}");
    }
}

#[test]
fn datagrams_for_a_checked_out_handshake_wait_in_its_inbox_and_the_overflow_is_counted() {
    let _serial = serial();
    let mut ep = offloading(EndpointConfig::default());
    let now = Instant::now();
    let a = addr(3);
    let mut c = psk_client().new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, a, &mut c);
    ep.handle_datagram(now, a, &hello);
    let job = ep
        .poll_handshake_job()
        .expect("the first step, checked out");
    assert_eq!((job.peer(), ep.handshakes_out()), (a, 1));
    // The client retransmits its ClientHello while the step runs elsewhere: each waits, up to
    // the inbox's bound; the rest are dropped and counted.
    for _ in 0..HANDSHAKE_INBOX + 3 {
        ep.handle_datagram(now, a, &hello);
    }
    let stats = ep.stats();
    assert_eq!(stats.dropped_handshake_busy, 3, "{stats:?}");
    assert!(stats.dropped_total() >= 3);
    assert_eq!(stats.handshakes, 1, "the handshake is charged once");
    assert!(ep.poll_handshake_job().is_none(), "one job per handshake");
    let mut job = job;
    job.run(now);
    ep.finish_handshake_job(now, job).unwrap();
    // Back in the table with its first flight to send, and out again at once for the
    // datagrams that waited (the retransmitted ClientHellos: OpenSSL answers them).
    assert_eq!(ep.stats().handshake_jobs, 2);
    assert_eq!(ep.handshakes_out(), 1);
    run_jobs(&mut ep, now);
    assert_eq!(ep.handshakes_out(), 0);
    pump(&mut ep, now, true, &mut [(a, &mut c)]);
    assert!(c.is_established(), "{:?}", c.error());
    assert_eq!(ep.stats().connections, 1);
}

#[test]
fn established_connections_are_served_while_a_handshake_is_out() {
    let _serial = serial();
    let mut ep = offloading(EndpointConfig::default());
    let now = Instant::now();
    let a = addr(4);
    let mut live = psk_client().new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, a, &mut live);
    ep.handle_datagram(now, a, &hello);
    pump(&mut ep, now, true, &mut [(a, &mut live)]);
    assert!(live.is_established());
    let id = ep.connection_id(a).unwrap();
    drain_events(&mut ep);
    // A second client's handshake is checked out and never run (its worker is busy).
    let b = addr(5);
    let mut newcomer = psk_client().new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, b, &mut newcomer);
    ep.handle_datagram(now, b, &hello);
    let held = ep.poll_handshake_job().expect("checked out");
    assert_eq!(held.peer(), b);
    // The established connection echoes meanwhile.
    let mut buf = vec![0u8; 2048];
    for i in 0..20u8 {
        live.send(&[i; 100]).unwrap();
        pump(&mut ep, now, false, &mut [(a, &mut live)]);
        assert_eq!(ep.recv(a, id, &mut buf).unwrap(), Some(100));
        ep.send(a, id, &buf[..100]).unwrap();
        pump(&mut ep, now, false, &mut [(a, &mut live)]);
        assert_eq!(live.recv(&mut buf).unwrap(), Some(100));
        assert_eq!(buf[0], i);
    }
    assert_eq!(ep.handshakes_out(), 1);
    // Its timers wait while it is out; given back, it completes.
    let mut held = held;
    held.run(now);
    ep.finish_handshake_job(now, held).unwrap();
    pump(&mut ep, now, true, &mut [(b, &mut newcomer)]);
    assert!(newcomer.is_established(), "{:?}", newcomer.error());
    assert_eq!(ep.stats().connections, 2);
}

#[test]
fn limits_count_a_checked_out_handshake_once_and_the_backlog_refuses_new_ones() {
    let _serial = serial();
    // max_handshakes: a handshake that is out still holds its place.
    let mut config = EndpointConfig::default();
    config.max_handshakes = 1;
    let mut ep = offloading(config);
    let now = Instant::now();
    let (a, b) = (addr(6), addr(7));
    let mut ca = psk_client().new_session(None, now).unwrap();
    let mut cb = psk_client().new_session(None, now).unwrap();
    let ha = hello_with_cookie(&mut ep, now, a, &mut ca);
    let hb = hello_with_cookie(&mut ep, now, b, &mut cb);
    ep.handle_datagram(now, a, &ha);
    ep.handle_datagram(now, b, &hb);
    let stats = ep.stats();
    assert_eq!(stats.handshakes, 1, "{stats:?}");
    assert_eq!(stats.refused_handshake_limit, 1, "{stats:?}");
    assert_eq!(stats.refused_handshake_backlog, 0);
    pump(&mut ep, now, true, &mut [(a, &mut ca)]);
    assert!(ca.is_established());
    assert_eq!(ep.stats().handshakes, 0);

    // handshake_backlog: at the bound, a new handshake is ignored before the cookie is even
    // checked, and counted; the cookie exchange stays open.
    let mut config = EndpointConfig::default();
    config.handshake_backlog = 2;
    let mut ep = offloading(config);
    let mut clients: Vec<(SocketAddr, Session)> = (10..13)
        .map(|i| (addr(i), psk_client().new_session(None, now).unwrap()))
        .collect();
    let hellos: Vec<Vec<u8>> = clients
        .iter_mut()
        .map(|(a, c)| hello_with_cookie(&mut ep, now, *a, c))
        .collect();
    for ((a, _), hello) in clients.iter().zip(&hellos) {
        ep.handle_datagram(now, *a, hello);
    }
    let stats = ep.stats();
    assert_eq!(ep.handshakes_out(), 2);
    assert_eq!(stats.handshakes, 2, "{stats:?}");
    assert_eq!(stats.refused_handshake_backlog, 1, "{stats:?}");
    assert!(stats.dropped_total() >= 1);
    // Once the backlog drains, the refused client's retransmission gets in.
    run_jobs(&mut ep, now);
    let (a, _) = &clients[2];
    ep.handle_datagram(now, *a, &hellos[2]);
    assert_eq!(ep.stats().handshakes, 3);
    let mut refs: Vec<(SocketAddr, &mut Session)> =
        clients.iter_mut().map(|(a, c)| (*a, c)).collect();
    pump(&mut ep, now, true, &mut refs);
    assert!(clients.iter().all(|(_, c)| c.is_established()));
    assert_eq!(ep.stats().connections, 3);
}

#[test]
fn closing_and_dropping_with_jobs_out_frees_every_ssl() {
    let _serial = serial();
    let before = live_ssl_objects();
    let now = Instant::now();
    {
        let mut ep = offloading(EndpointConfig::default());
        let mut clients: Vec<(SocketAddr, Session)> = (20..26)
            .map(|i| (addr(i), psk_client().new_session(None, now).unwrap()))
            .collect();
        for (a, c) in &mut clients {
            let hello = hello_with_cookie(&mut ep, now, *a, c);
            ep.handle_datagram(now, *a, &hello);
        }
        assert_eq!(ep.handshakes_out(), 6);
        // Two come back after close_all (closed then), two are dropped by their runner, two
        // stay queued in the endpoint when it is dropped.
        let mut jobs: Vec<_> = std::iter::from_fn(|| ep.poll_handshake_job())
            .take(4)
            .collect();
        ep.close_all();
        for mut job in jobs.drain(..2) {
            job.run(now);
            ep.finish_handshake_job(now, job).unwrap();
        }
        assert_eq!(ep.handshakes_out(), 4);
        assert_eq!(
            ep.stats().handshakes,
            4,
            "closed handshakes give their charge back"
        );
        drop(jobs);
        drop(clients);
    }
    assert_eq!(live_ssl_objects(), before, "every SSL freed");
}

/// A handshake is out; the device of an established connection, its NAT rebound, sends a CID
/// record from that handshake's address: the connection does not move there (the address is
/// busy), and the handshake, given back, completes.
#[test]
fn a_cid_record_from_the_address_of_a_checked_out_handshake_does_not_move_a_connection_there() {
    let _serial = serial();
    let now = Instant::now();
    let cipher = "PSK-AES128-CCM8";
    let mut ep = Endpoint::server(
        support::cid::server_ctx(6, cipher),
        EndpointConfig::default(),
    )
    .unwrap();
    ep.set_handshake_offload(true);
    let cctx = support::cid::client_ctx(Some(4), cipher);
    let (a, b) = (addr(40), addr(41));
    let mut ca = cctx.new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, a, &mut ca);
    ep.handle_datagram(now, a, &hello);
    pump(&mut ep, now, true, &mut [(a, &mut ca)]);
    assert!(ca.is_established(), "{:?}", ca.error());
    let id_a = ep.connection_id(a).unwrap();
    let mut cb = cctx.new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, b, &mut cb);
    ep.handle_datagram(now, b, &hello);
    let mut job = ep.poll_handshake_job().expect("B's first step, out");
    // A's record arrives from B's address.
    let mut buf = vec![0u8; 65_536];
    ca.send(b"rebound").unwrap();
    let n = ca.poll_transmit(&mut buf).unwrap();
    ep.handle_datagram(now, b, &buf[..n]);
    let stats = ep.stats();
    assert_eq!(
        (stats.cid_moves, stats.cid_moves_refused_busy),
        (0, 1),
        "{stats:?}"
    );
    assert_eq!(ep.connection_id(a), Some(id_a), "A stays where it is");
    assert_eq!(ep.recv(a, id_a, &mut buf).unwrap(), Some(7));
    job.run(now);
    ep.finish_handshake_job(now, job).unwrap();
    pump(&mut ep, now, true, &mut [(b, &mut cb)]);
    assert!(cb.is_established(), "{:?}", cb.error());
    let stats = ep.stats();
    assert_eq!(
        (
            stats.connections,
            stats.handshakes,
            stats.handshakes_failed_local
        ),
        (2, 0, 0),
        "{stats:?}"
    );
    assert_eq!(ep.handshakes_out(), 0);
}

/// The HelloVerifyRequests counted for: a client's handshake (out, with offload), then (if
/// `retransmitted`) its ClientHello again, then a restarted client at the same address sending
/// its first ClientHello, then everything run.
fn hello_verify_requests_after_a_restart_at_the_same_address(
    offload: bool,
    retransmitted: bool,
) -> u64 {
    let mut ep = Endpoint::server(psk_server(), EndpointConfig::default()).unwrap();
    ep.set_handshake_offload(offload);
    let now = Instant::now();
    let a = addr(42);
    let mut c1 = psk_client().new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, a, &mut c1);
    ep.handle_datagram(now, a, &hello);
    let job = ep.poll_handshake_job();
    assert_eq!(job.is_some(), offload);
    if retransmitted {
        ep.handle_datagram(now, a, &hello);
    }
    let mut c2 = psk_client().new_session(None, now).unwrap();
    let mut buf = vec![0u8; 65_536];
    let n = c2.poll_transmit(&mut buf).unwrap();
    ep.handle_datagram(now, a, &buf[..n]);
    if let Some(mut job) = job {
        job.run(now);
        ep.finish_handshake_job(now, job).unwrap();
    }
    run_jobs(&mut ep, now);
    // The restarted client is told to prove its address.
    let mut sent = 0;
    while let Some((to, _)) = ep.poll_transmit(&mut buf) {
        if (to, buf[0], buf[13]) == (a, 22, 3) {
            sent += 1;
        }
    }
    assert_eq!(sent, 1, "offload {offload}, retransmitted {retransmitted}");
    ep.stats().hello_verify_requests
}

#[test]
fn a_restarted_clients_hello_waiting_for_a_checked_out_handshake_gets_a_hello_verify_request() {
    let _serial = serial();
    for retransmitted in [false, true] {
        let inline =
            hello_verify_requests_after_a_restart_at_the_same_address(false, retransmitted);
        let offloaded =
            hello_verify_requests_after_a_restart_at_the_same_address(true, retransmitted);
        assert_eq!(inline, 2);
        assert_eq!(offloaded, inline, "retransmitted {retransmitted}");
    }
}

/// A job comes back with a retransmitted ClientHello waiting: it goes out again at once for it,
/// and the first flight it wrote is sent meanwhile.
#[test]
fn the_flight_of_a_job_checked_out_again_at_once_is_sent() {
    let _serial = serial();
    let mut ep = offloading(EndpointConfig::default());
    let now = Instant::now();
    let a = addr(43);
    let mut c = psk_client().new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, a, &mut c);
    ep.handle_datagram(now, a, &hello);
    let mut job = ep.poll_handshake_job().expect("the first step");
    ep.handle_datagram(now, a, &hello); // the client's retransmission, waiting
    job.run(now);
    ep.finish_handshake_job(now, job).unwrap();
    assert_eq!(ep.handshakes_out(), 1, "out again for the retransmission");
    let mut buf = vec![0u8; 65_536];
    let (to, n) = ep.poll_transmit(&mut buf).expect("the first flight");
    assert_eq!((to, buf[0], buf[13]), (a, 22, 2), "a ServerHello");
    c.handle_datagram(now, &buf[..n]);
    while let Some((to, n)) = ep.poll_transmit(&mut buf) {
        assert_eq!(to, a);
        c.handle_datagram(now, &buf[..n]);
    }
    pump(&mut ep, now, true, &mut [(a, &mut c)]);
    assert!(c.is_established(), "{:?}", c.error());
}

/// A job finished on an endpoint that did not check it out is refused (dropped, its `SSL`
/// freed), and leaves that endpoint as it was.
#[test]
fn a_job_given_to_another_endpoint_is_refused() {
    let _serial = serial();
    let before = live_ssl_objects();
    let now = Instant::now();
    let mut e1 = offloading(EndpointConfig::default());
    let mut e2 = offloading(EndpointConfig::default());
    let a = addr(44);
    let mut c = psk_client().new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut e1, now, a, &mut c);
    e1.handle_datagram(now, a, &hello);
    let mut job = e1.poll_handshake_job().unwrap();
    let id = job.id();
    job.run(now);
    let stats = e2.stats();
    let refused = e2.finish_handshake_job(now, job).unwrap_err();
    assert!(
        matches!(&refused, openssl_dtls::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidInput),
        "{refused:?}"
    );
    assert_eq!(e2.stats(), stats);
    assert_eq!((e2.len(), e2.handshakes_out()), (0, 0));
    // The client's datagrams reach e2: nothing there knows them.
    pump(&mut e2, now, true, &mut [(a, &mut c)]);
    assert!(!c.is_established());
    let stats = e2.stats();
    assert_eq!((stats.handshakes, stats.connections), (0, 0), "{stats:?}");
    // e1 lost the job: it gives the handshake up.
    assert!(e1.abandon_handshake_job(a, id));
    assert_eq!((e1.stats().handshakes, e1.handshakes_out()), (0, 0));
    drop(c);
    drop(e1);
    drop(e2);
    assert_eq!(live_ssl_objects(), before, "every SSL freed once");
}

/// A job lost by its runner (it panicked) is given up: the endpoint's counts go back to
/// nothing, the failure is reported, and the client's next attempt from that address works.
#[test]
fn an_abandoned_job_gives_its_handshake_up() {
    let _serial = serial();
    let before = live_ssl_objects();
    let mut ep = offloading(EndpointConfig::default());
    let now = Instant::now();
    let a = addr(45);
    let mut c = psk_client().new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, a, &mut c);
    ep.handle_datagram(now, a, &hello);
    let job = ep.poll_handshake_job().unwrap();
    ep.handle_datagram(now, a, &hello); // waiting for it
    let (peer, id) = (job.peer(), job.id());
    drop(job); // lost with its runner
    drain_events(&mut ep);
    assert!(!ep.abandon_handshake_job(peer, id + 1), "not that one");
    assert!(ep.abandon_handshake_job(peer, id));
    assert!(!ep.abandon_handshake_job(peer, id), "once");
    let stats = ep.stats();
    assert_eq!(
        (
            stats.handshakes,
            stats.handshakes_failed_local,
            stats.handshake_memory_in_use
        ),
        (0, 1, 0),
        "{stats:?}"
    );
    assert_eq!((ep.handshakes_out(), ep.len()), (0, 0));
    let events = drain_events(&mut ep);
    assert!(
        matches!(&events[..], [Event::HandshakeFailed(f), Event::Closed { peer: p, id: i, established: false, error: Some(_) }] if f.peer == a && *p == a && *i == id),
        "{events:?}"
    );
    assert!(ep.poll_handshake_job().is_none());
    // The client starts over from the same address: it gets in.
    drop(c);
    let mut c = psk_client().new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, a, &mut c);
    ep.handle_datagram(now, a, &hello);
    pump(&mut ep, now, true, &mut [(a, &mut c)]);
    assert!(c.is_established(), "{:?}", c.error());
    let stats = ep.stats();
    assert_eq!((stats.handshakes, stats.connections), (0, 1), "{stats:?}");
    drop(c);
    drop(ep);
    assert_eq!(live_ssl_objects(), before, "every SSL freed once");
}

/// A blocking server closed in the middle of an ECDSA flood, with handshakes queued for its
/// worker or running on it: every `SSL` is freed once the server, its workers and the clients
/// are gone.
#[test]
fn closing_a_server_during_a_flood_frees_every_ssl() {
    let _serial = serial();
    let before = live_ssl_objects();
    let (sctx, cctx) = ecdsa_pair();
    let server = DtlsServer::bind_with(
        "127.0.0.1:0",
        sctx,
        EndpointConfig::default(),
        SocketOptions::default(),
    )
    .unwrap();
    let addr = server.local_addr();
    let (tx, started) = std::sync::mpsc::channel::<()>();
    let flooders: Vec<_> = (0..3)
        .map(|_| {
            let cctx = cctx.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
                    let _ = tx.send(());
                    let conn =
                        client.connect_named(addr, "storm-server", &cctx, Duration::from_secs(2));
                    if conn.is_err() {
                        return; // the server is gone
                    }
                }
            })
        })
        .collect();
    // Close once the flood is under way (not timed: whatever is out at that moment).
    for _ in 0..6 {
        started.recv().unwrap();
    }
    server.close();
    drop(server);
    for f in flooders {
        f.join().unwrap();
    }
    assert_eq!(live_ssl_objects(), before, "every SSL freed");
}

/// A server with the default configuration whose accepted connections echo, and one live
/// connection to it that has exchanged a first record: (server, its address, the client, the
/// connection).
fn echo_server_and_live(
    sctx: DtlsServerContext,
    cctx: &DtlsClientContext,
) -> (Arc<DtlsServer>, SocketAddr, DtlsClient, DtlsConnection) {
    let server = Arc::new(
        DtlsServer::bind_with(
            "127.0.0.1:0",
            sctx,
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
    let addr = server.local_addr();
    let live_client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let live = live_client
        .connect_named(addr, "storm-server", cctx, Duration::from_secs(10))
        .unwrap();
    let mut buf = [0u8; 2048];
    live.send(b"first").unwrap();
    assert_eq!(
        live.recv_timeout(&mut buf, Duration::from_secs(10))
            .unwrap(),
        Some(5)
    );
    (server, addr, live_client, live)
}

/// Flood: `FLOODERS` threads each complete `PER_FLOODER` ECDSA handshakes with a blocking
/// server as fast as it answers, while one established connection echoes 100-byte datagrams
/// one at a time. Every echo comes back (the flood may slow it, never starve it), and every
/// flood handshake either completes or is counted as shed by the server.
#[test]
fn an_ecdsa_handshake_flood_does_not_starve_an_established_connection() {
    let _serial = serial();
    const FLOODERS: usize = 3;
    const PER_FLOODER: usize = 20;
    const ECHOES: usize = 200;
    let (sctx, cctx) = ecdsa_pair();
    // Established traffic first: the drivers offload handshakes only while there is some
    // (`OFFLOAD_WHILE_TRAFFIC`), and the echo loop below keeps it going through the flood.
    let (server, addr, _live_client, live) = echo_server_and_live(sctx, &cctx);
    let mut buf = [0u8; 2048];
    let connected = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let cctx = cctx.clone();
            let (connected, failed) = (Arc::clone(&connected), Arc::clone(&failed));
            let finished = Arc::clone(&finished);
            std::thread::spawn(move || {
                let _finished = Finished(finished);
                for _ in 0..PER_FLOODER {
                    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
                    match client.connect_named(addr, "storm-server", &cctx, Duration::from_secs(10))
                    {
                        Ok(conn) => {
                            connected.fetch_add(1, Ordering::SeqCst);
                            drop(conn);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    let mut answered = 0;
    // Echo for the whole flood, and at least ECHOES times.
    let mut i = 0;
    while i < ECHOES || finished.load(Ordering::SeqCst) < FLOODERS {
        i += 1;
        let msg = [(i % 251) as u8; 100];
        live.send(&msg).unwrap();
        let n = live
            .recv_timeout(&mut buf, Duration::from_secs(10))
            .unwrap()
            .expect("every echo gets its answer");
        assert_eq!(&buf[..n], &msg[..]);
        answered += 1;
    }
    for f in flooders {
        f.join().unwrap();
    }
    assert_eq!(answered, i);
    assert!(answered >= ECHOES);
    let connected = connected.load(Ordering::SeqCst);
    let failed = failed.load(Ordering::SeqCst);
    // A client is connected once the worker sent the server's last flight; the server counts
    // the handshake when the job comes back, which a thread taking its own record back does
    // not wait for (the driver thread does it soon after): wait for the counts, bounded.
    let settle = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let stats = server.stats();
        if stats.handshakes_completed as usize > connected || Instant::now() > settle {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(connected + failed, FLOODERS * PER_FLOODER);
    // Every flood handshake the server completed was offloaded (two steps each), and a client
    // that gave up was shed by a counted limit, not lost.
    assert!(stats.handshakes_completed as usize > connected, "{stats:?}");
    assert!(stats.handshake_jobs as usize >= 2 * connected, "{stats:?}");
    // Every ClientHello (two a handshake: before and with the cookie) waited behind the
    // established records read with it, then was handled.
    assert!(
        stats.handshake_datagrams_deferred as usize >= 2 * connected,
        "{stats:?}"
    );
    if failed > 0 {
        assert!(
            stats.refused_handshake_backlog
                + stats.dropped_handshake_busy
                + stats.handshakes_timed_out
                > 0,
            "{failed} failed, nothing counted: {stats:?}"
        );
    }
}

/// Counts a flood thread as finished when it ends, however it ends.
struct Finished(Arc<AtomicUsize>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Live SSL objects (as tests/robustness counts them).

static LIVE_SSL: AtomicI64 = AtomicI64::new(0);
static MARK: u8 = 0;

unsafe extern "C" fn count_new(
    parent: *mut c_void,
    _ptr: *mut c_void,
    _ad: *mut openssl_sys::CRYPTO_EX_DATA,
    idx: c_int,
    _argl: c_long,
    _argp: *mut c_void,
) {
    // SAFETY: OpenSSL calls this from SSL_new with the SSL being created; setting our own index
    // marks it as one we counted.
    unsafe {
        openssl_sys::SSL_set_ex_data(parent.cast(), idx, std::ptr::addr_of!(MARK) as *mut c_void);
    }
    LIVE_SSL.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn count_free(
    _parent: *mut c_void,
    ptr: *mut c_void,
    _ad: *mut openssl_sys::CRYPTO_EX_DATA,
    _idx: c_int,
    _argl: c_long,
    _argp: *mut c_void,
) {
    if !ptr.is_null() {
        LIVE_SSL.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The number of live OpenSSL `SSL` objects created since the first call (process-wide).
fn live_ssl_objects() -> i64 {
    static INDEX: OnceLock<c_int> = OnceLock::new();
    INDEX.get_or_init(|| {
        openssl_sys::init();
        // SAFETY: registers an ex_data index for SSL objects with plain counting callbacks.
        let idx = unsafe {
            openssl_sys::SSL_get_ex_new_index(
                0,
                std::ptr::null_mut(),
                Some(count_new),
                None,
                Some(count_free),
            )
        };
        assert!(idx >= 0, "SSL_get_ex_new_index failed");
        idx
    });
    LIVE_SSL.load(Ordering::SeqCst)
}

/// The same flood on the tokio driver: the handshake workers are threads of their own and wake
/// the driver task; the established connection's echoes all come back.
#[cfg(feature = "tokio")]
#[test]
fn an_ecdsa_handshake_flood_on_tokio_does_not_starve_an_established_connection() {
    let _serial = serial();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(tokio_flood());
}

#[cfg(feature = "tokio")]
async fn tokio_flood() {
    use openssl_dtls::tokio::{DtlsClient as AsyncClient, DtlsServer as AsyncServer};
    const FLOODERS: usize = 2;
    const PER_FLOODER: usize = 15;
    const ECHOES: usize = 100;
    let (sctx, cctx) = ecdsa_pair();
    let server = AsyncServer::bind_with(
        "127.0.0.1:0",
        sctx,
        EndpointConfig::default(),
        SocketOptions::default(),
    )
    .await
    .unwrap();
    let server = Arc::new(server);
    let addr = server.local_addr();
    let s = Arc::clone(&server);
    tokio::spawn(async move {
        while let Ok(conn) = s.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok(n @ 1..) = conn.recv(&mut buf).await {
                    if conn.send(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let live_client = AsyncClient::bind("127.0.0.1:0").await.unwrap();
    let live = live_client
        .connect_named(addr, "storm-server", &cctx, Duration::from_secs(10))
        .await
        .unwrap();
    // Established traffic first (see the blocking test).
    let mut buf = [0u8; 2048];
    live.send(b"first").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), live.recv(&mut buf))
        .await
        .expect("the first echo")
        .unwrap();
    assert_eq!(&buf[..n], b"first");
    let connected = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let cctx = cctx.clone();
            let (connected, finished) = (Arc::clone(&connected), Arc::clone(&finished));
            tokio::spawn(async move {
                let _finished = Finished(finished);
                for _ in 0..PER_FLOODER {
                    let client = AsyncClient::bind("127.0.0.1:0").await.unwrap();
                    let conn = client
                        .connect_named(addr, "storm-server", &cctx, Duration::from_secs(10))
                        .await;
                    if conn.is_ok() {
                        connected.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let mut i = 0;
    while i < ECHOES || finished.load(Ordering::SeqCst) < FLOODERS {
        i += 1;
        let msg = [(i % 251) as u8; 100];
        live.send(&msg).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(10), live.recv(&mut buf))
            .await
            .expect("every echo gets its answer")
            .unwrap();
        assert_eq!(&buf[..n], &msg[..]);
    }
    for f in flooders {
        f.await.unwrap();
    }
    let stats = server.stats();
    let connected = connected.load(Ordering::SeqCst);
    assert!(connected > 0, "{stats:?}");
    assert!(stats.handshake_jobs as usize >= 2 * connected, "{stats:?}");
    // Every ClientHello (two a handshake: before and with the cookie) waited behind the
    // established records read with it, then was handled.
    assert!(
        stats.handshake_datagrams_deferred as usize >= 2 * connected,
        "{stats:?}"
    );
}

/// Handshakes go on while other threads keep every CPU busy: the default worker runs in
/// `SCHED_IDLE` (it gets almost nothing then), and the rescue worker at
/// `handshake_worker_nice` runs the jobs that waited 250 ms for it.
#[test]
fn handshakes_complete_while_other_threads_keep_every_cpu_busy() {
    let _serial = serial();
    const CLIENTS: usize = 6;
    let (sctx, cctx) = ecdsa_pair();
    assert!(
        EndpointConfig::default().handshake_worker_idle_class,
        "the default this test is about"
    );
    let (server, addr, _live_client, live) = echo_server_and_live(sctx, &cctx);
    let mut buf = [0u8; 2048];
    // Busy threads, two per CPU, until the clients are through (bounded: 60 s at most).
    let stop = Arc::new(AtomicUsize::new(0));
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..2 * cpus)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(60);
                let mut x = 0u64;
                while stop.load(Ordering::Relaxed) == 0 && Instant::now() < until {
                    for i in 0..10_000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
                x
            })
        })
        .collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let cctx = cctx.clone();
            std::thread::spawn(move || {
                let client = DtlsClient::bind("127.0.0.1:0").unwrap();
                client
                    .connect_named(addr, "storm-server", &cctx, Duration::from_secs(30))
                    .map(drop)
            })
        })
        .collect();
    // Established traffic all along (offload is on only while there is some).
    let mut i = 0u32;
    let mut results = Vec::new();
    for c in clients {
        while !c.is_finished() {
            i += 1;
            live.send(&i.to_be_bytes()).unwrap();
            let n = live
                .recv_timeout(&mut buf, Duration::from_secs(30))
                .unwrap();
            assert_eq!(n, Some(4));
            std::thread::sleep(Duration::from_millis(5));
        }
        results.push(c.join().unwrap());
    }
    stop.store(1, Ordering::Relaxed);
    for h in hogs {
        let _ = h.join();
    }
    let stats = server.stats();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}; {stats:?}");
    assert!(stats.handshake_jobs >= 2 * CLIENTS as u64, "{stats:?}");
    assert!(stats.handshake_jobs_rescued >= 1, "{stats:?}");
}
