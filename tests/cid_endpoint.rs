//! Connection IDs at the endpoint (RFC 9146 §6), sans-IO: a client's address changes (a NAT
//! rebinding) and its connection follows without a new handshake; the rules that keep an
//! attacker from moving it (replays, reordering, forged CIDs, broken tags); the
//! anti-amplification budget towards an unconfirmed address; the statistics.

use std::net::SocketAddr;
use std::time::Instant;

use openssl_dtls::{
    DtlsClientContext, DtlsServerContext, Endpoint, EndpointConfig, Event, PskCredentials, Session,
};

const KEY: &[u8] = b"0123456789abcdef";

fn server(cid_len: u8) -> Endpoint {
    let mut b = DtlsServerContext::builder();
    b.psk_key_store(|_: &[u8]| Some(KEY.to_vec()))
        .connection_id(cid_len);
    Endpoint::server(b.build().unwrap(), EndpointConfig::default()).unwrap()
}

fn client(now: Instant) -> Session {
    DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(b"device".to_vec(), KEY.to_vec()))
        .connection_id(0)
        .build()
        .unwrap()
        .new_session(None, now)
        .unwrap()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

/// The device behind its NAT: its datagrams reach the server from `from`; the server's reach
/// it only when sent to `from` (anything else is counted as sent elsewhere).
struct Nat {
    from: SocketAddr,
    /// Datagrams the server sent to addresses other than the device's current one.
    elsewhere: Vec<(SocketAddr, usize)>,
    /// Every datagram the device sent, in order (for replays).
    sent: Vec<Vec<u8>>,
}

impl Nat {
    fn pump(&mut self, ep: &mut Endpoint, c: &mut Session, now: Instant) {
        let mut buf = vec![0u8; 65_536];
        for _ in 0..100 {
            let mut moved = false;
            while let Some(n) = c.poll_transmit(&mut buf) {
                self.sent.push(buf[..n].to_vec());
                ep.handle_datagram(now, self.from, &buf[..n]);
                moved = true;
            }
            while let Some((to, n)) = ep.poll_transmit(&mut buf) {
                if to == self.from {
                    c.handle_datagram(now, &buf[..n]);
                } else {
                    self.elsewhere.push((to, n));
                }
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("no quiet");
    }
}

fn established(now: Instant) -> (Endpoint, Session, Nat, u64) {
    let mut ep = server(8);
    let mut c = client(now);
    let mut nat = Nat {
        from: addr(40_000),
        elsewhere: Vec::new(),
        sent: Vec::new(),
    };
    nat.pump(&mut ep, &mut c, now);
    assert!(c.is_established(), "{:?}", c.error());
    let id = ep.connection_id(nat.from).unwrap();
    let mut events = Vec::new();
    while let Some(e) = ep.poll_event() {
        events.push(e);
    }
    assert!(events.iter().any(|e| matches!(e, Event::Connected { .. })));
    (ep, c, nat, id)
}

/// Sends `msg` from the device and returns what the server's application received.
fn send_from_device(
    ep: &mut Endpoint,
    c: &mut Session,
    nat: &mut Nat,
    now: Instant,
    msg: &[u8],
    id: u64,
) -> Option<Vec<u8>> {
    c.send(msg).unwrap();
    nat.pump(ep, c, now);
    let mut buf = [0u8; 2048];
    ep.recv(addr(40_000), id, &mut buf)
        .ok()
        .flatten()
        .map(|n| buf[..n].to_vec())
}

fn drain(ep: &mut Endpoint) -> Vec<Event> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

#[test]
fn a_rebound_device_keeps_its_connection_and_the_old_address_gets_nothing() {
    let now = Instant::now();
    let (mut ep, mut c, mut nat, id) = established(now);
    assert_eq!(ep.stats().cid_connections, 1);
    let (own, peer) = ep
        .session(addr(40_000), id)
        .unwrap()
        .connection_ids()
        .unwrap();
    assert_eq!((own.len(), peer.len()), (8, 0));
    assert_eq!(
        send_from_device(&mut ep, &mut c, &mut nat, now, b"one", id).unwrap(),
        b"one"
    );
    // The NAT mapping expired while the device slept: a new port.
    nat.from = addr(40_001);
    assert_eq!(
        send_from_device(&mut ep, &mut c, &mut nat, now, b"two", id).unwrap(),
        b"two"
    );
    let events = drain(&mut ep);
    assert!(
        events.iter().any(|e| matches!(e, Event::AddressChanged { id: i, from, to } if *i == id && *from == addr(40_000) && *to == addr(40_001))),
        "{events:?}"
    );
    assert_eq!(ep.peer_addr(addr(40_000), id), addr(40_001));
    // The server's answer goes to the new address (within what the device sent from there),
    // and the old address gets nothing.
    ep.send(addr(40_000), id, b"reply").unwrap();
    nat.pump(&mut ep, &mut c, now);
    let mut buf = [0u8; 100];
    assert_eq!(c.recv(&mut buf).unwrap(), Some(5));
    assert!(nat.elsewhere.is_empty(), "{:?}", nat.elsewhere);
    let s = ep.stats();
    assert_eq!(
        (s.cid_moves, s.handshakes_completed, s.connections),
        (1, 1, 1)
    );
    assert_eq!(ep.connection_id(addr(40_000)), None);
    assert_eq!(ep.connection_id(addr(40_001)), Some(id));
}

#[test]
fn replayed_and_reordered_records_from_a_new_address_do_not_move_the_connection() {
    let now = Instant::now();
    let (mut ep, mut c, mut nat, id) = established(now);
    send_from_device(&mut ep, &mut c, &mut nat, now, b"one", id).unwrap();
    let recorded = nat.sent.last().unwrap().clone();
    // A replay of a delivered record, from an attacker's address.
    ep.handle_datagram(now, addr(50_000), &recorded);
    // Two records: the newer delivered first from the device's address, the older one then
    // from a new address (reordered in the network, or captured and sent on by an attacker).
    c.send(b"older").unwrap();
    c.send(b"newer").unwrap();
    let mut buf = vec![0u8; 2048];
    let n1 = c.poll_transmit(&mut buf).unwrap();
    let older = buf[..n1].to_vec();
    let n2 = c.poll_transmit(&mut buf).unwrap();
    let newer = buf[..n2].to_vec();
    ep.handle_datagram(now, addr(40_000), &newer);
    ep.handle_datagram(now, addr(50_001), &older);
    let s = ep.stats();
    assert_eq!(s.cid_moves, 0);
    assert_eq!(s.cid_moves_refused_not_newest, 2, "{s}");
    assert_eq!(
        ep.connection_id(addr(40_000)),
        Some(id),
        "still at the device's address"
    );
    // The reordered record still carried genuine data: delivered once, no move.
    let mut got = Vec::new();
    let mut b = [0u8; 100];
    while let Ok(Some(n)) = ep.recv(addr(40_000), id, &mut b) {
        got.push(b[..n].to_vec());
    }
    assert_eq!(got, vec![b"newer".to_vec(), b"older".to_vec()]);
    assert!(drain(&mut ep)
        .iter()
        .all(|e| !matches!(e, Event::AddressChanged { .. })));
}

#[test]
fn forged_cids_and_broken_tags_are_dropped_and_counted() {
    let now = Instant::now();
    let (mut ep, mut c, mut nat, id) = established(now);
    c.send(b"x").unwrap();
    let mut buf = vec![0u8; 2048];
    let n = c.poll_transmit(&mut buf).unwrap();
    let genuine = buf[..n].to_vec();
    assert_eq!(genuine[0], 25);
    // A valid CID and a broken tag, from a new address: no move.
    let mut broken = genuine.clone();
    *broken.last_mut().unwrap() ^= 1;
    ep.handle_datagram(now, addr(50_000), &broken);
    // A CID nobody holds, from anywhere: dropped before any cryptography.
    let mut forged = genuine.clone();
    forged[12] ^= 0xff;
    for port in [40_000, 50_002] {
        ep.handle_datagram(now, addr(port), &forged);
    }
    // Truncated in the CID, and a type-25 record shorter than a header.
    ep.handle_datagram(now, addr(50_003), &genuine[..15]);
    ep.handle_datagram(now, addr(50_003), &[25, 0xfe, 0xfd, 0, 1]);
    let s = ep.stats();
    assert_eq!(s.cid_moves_refused_unauthenticated, 1, "{s}");
    assert_eq!(s.dropped_unknown_cid, 2, "{s}");
    assert_eq!(s.cid_moves, 0);
    assert!(s.dropped_total() >= 4, "{s}");
    // The genuine record still works, from the old address, and nothing was disturbed.
    ep.handle_datagram(now, addr(40_000), &genuine);
    let mut b = [0u8; 10];
    assert_eq!(ep.recv(addr(40_000), id, &mut b).unwrap(), Some(1));
    let _ = &mut nat;
}

#[test]
fn an_unconfirmed_new_address_gets_no_more_than_it_sent_until_the_device_answers() {
    let now = Instant::now();
    let (mut ep, mut c, mut nat, id) = established(now);
    send_from_device(&mut ep, &mut c, &mut nat, now, b"one", id).unwrap();
    // An on-path attacker takes a fresh genuine record and sends it on from a victim's address:
    // it authenticates and is the newest, so the connection moves there...
    c.send(b"tiny").unwrap();
    let mut buf = vec![0u8; 2048];
    let n = c.poll_transmit(&mut buf).unwrap();
    let victim = addr(60_000);
    ep.handle_datagram(now, victim, &buf[..n]);
    assert_eq!(ep.stats().cid_moves, 1);
    // ...but the server may send there only as many bytes as came from there (n bytes).
    let big = vec![7u8; 1000];
    for _ in 0..5 {
        ep.send(victim, id, &big).unwrap();
    }
    let mut to_victim = 0usize;
    while let Some((to, len)) = ep.poll_transmit(&mut buf) {
        assert_eq!(to, victim);
        to_victim += len;
    }
    assert!(
        to_victim <= n,
        "sent {to_victim} bytes to an address that sent {n}"
    );
    assert_eq!(ep.stats().cid_amplification_dropped, 5);
    // The genuine device, from its own (new) address, is newer again: the connection follows,
    // and once it has answered there the budget ends.
    nat.from = addr(40_002);
    send_from_device(&mut ep, &mut c, &mut nat, now, b"back", id);
    assert_eq!(ep.peer_addr(victim, id), addr(40_002));
    ep.send(victim, id, b"small").unwrap(); // fits the budget: the device gets it
    nat.pump(&mut ep, &mut c, now);
    send_from_device(&mut ep, &mut c, &mut nat, now, b"answer", id); // confirms the address
    ep.send(victim, id, &big).unwrap();
    nat.pump(&mut ep, &mut c, now);
    let mut got = Vec::new();
    let mut b = [0u8; 2048];
    while let Ok(Some(n)) = c.recv(&mut b) {
        got.push(n);
    }
    assert!(
        got.contains(&1000),
        "{got:?}: the confirmed address gets full-size data"
    );
}

#[test]
fn a_server_without_cids_routes_as_before_and_drops_type_25() {
    let now = Instant::now();
    let mut ep = server(0);
    let mut c = client(now);
    let mut nat = Nat {
        from: addr(40_000),
        elsewhere: Vec::new(),
        sent: Vec::new(),
    };
    nat.pump(&mut ep, &mut c, now);
    assert!(c.is_established());
    assert!(c.connection_ids().is_none());
    let id = ep.connection_id(addr(40_000)).unwrap();
    assert_eq!(
        send_from_device(&mut ep, &mut c, &mut nat, now, b"plain", id).unwrap(),
        b"plain"
    );
    ep.handle_datagram(
        now,
        addr(40_009),
        &[
            25, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 0, 0,
        ],
    );
    assert_eq!(
        ep.stats().dropped(openssl_dtls::DropReason::BadContentType),
        1
    );
}

#[test]
fn a_rebooted_cid_device_reconnects_from_its_old_address_and_its_old_cid_is_forgotten() {
    let now = Instant::now();
    let (mut ep, mut c, mut nat, id) = established(now);
    c.send(b"old").unwrap();
    let mut buf = vec![0u8; 2048];
    let n = c.poll_transmit(&mut buf).unwrap();
    let old_record = buf[..n].to_vec();
    // The device reboots and keeps its address (RFC 6347 §4.2.8): a new handshake, whose
    // Finished is a tls12_cid record with the new CID, reaches the replacement session.
    let mut rebooted = client(now);
    nat.pump(&mut ep, &mut rebooted, now);
    assert!(
        rebooted.is_established(),
        "{:?} {}",
        rebooted.error(),
        ep.stats()
    );
    let s = ep.stats();
    assert_eq!(
        (s.connections_replaced, s.connections, s.cid_connections),
        (1, 1, 1),
        "{s}"
    );
    let new_id = ep.connection_id(addr(40_000)).unwrap();
    assert_ne!(new_id, id);
    assert_ne!(
        c.connection_ids().unwrap().1,
        rebooted.connection_ids().unwrap().1,
        "a new CID"
    );
    // The old connection's CID is gone: its records are dropped before any cryptography.
    ep.handle_datagram(now, addr(40_000), &old_record);
    assert_eq!(ep.stats().dropped_unknown_cid, 1);
    assert_eq!(
        send_from_device(&mut ep, &mut rebooted, &mut nat, now, b"new", new_id).unwrap(),
        b"new"
    );
}

#[test]
fn another_device_handshaking_from_a_cid_connections_last_address_completes_and_both_go_on() {
    // Behind a load balancer or a NAT, a CID device's last address is soon another device's:
    // nginx hands the upstream port of an expired session to a new one. The new device's
    // handshake must complete, and the CID device must keep its connection.
    let now = Instant::now();
    let (mut ep, mut a, mut nat_a, id_a) = established(now);
    nat_a.from = addr(40_001);
    a.send(b"moved").unwrap();
    nat_a.pump(&mut ep, &mut a, now);
    assert_eq!(ep.peer_addr(addr(40_000), id_a), addr(40_001));
    drain(&mut ep);
    // Device B, without CID, from 40_001 (A's last address; A has gone elsewhere).
    let mut b = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(b"other".to_vec(), KEY.to_vec()))
        .build()
        .unwrap()
        .new_session(None, now)
        .unwrap();
    let mut nat_b = Nat {
        from: addr(40_001),
        elsewhere: Vec::new(),
        sent: Vec::new(),
    };
    nat_a.from = addr(40_002);
    nat_b.pump(&mut ep, &mut b, now);
    assert!(b.is_established(), "B's handshake: {:?}", b.error());
    // A goes on from yet another address, by its CID: its records reach its connection.
    a.send(b"still here").unwrap();
    nat_a.pump(&mut ep, &mut a, now);
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(Some(n)) = ep.recv(addr(40_000), id_a, &mut buf) {
        got.push(buf[..n].to_vec());
    }
    assert_eq!(got, [b"moved".to_vec(), b"still here".to_vec()]);
    assert_eq!(ep.peer_addr(addr(40_000), id_a), addr(40_002));
    let s = ep.stats();
    assert_eq!(
        (s.connections, s.cid_parked, s.connections_replaced),
        (2, 1, 0),
        "{s}"
    );
    // And the server's answers reach A there (it confirmed the address by sending from it).
    ep.send(addr(40_000), id_a, b"answer").unwrap();
    nat_a.pump(&mut ep, &mut a, now);
    let n = a.recv(&mut buf).unwrap().expect("A got the answer");
    assert_eq!(&buf[..n], b"answer");
}

#[test]
fn a_cid_device_moving_onto_another_connections_last_address_parks_that_connection() {
    // The other way round: nginx's (or a NAT's) new port for a waking CID device is the last
    // address of another device's connection, stale since that device left it. The moving
    // device must not be locked out for as long as the stale connection lives.
    let now = Instant::now();
    let (mut ep, mut a, mut nat_a, id_a) = established(now);
    let mut b = client(now);
    let mut nat_b = Nat {
        from: addr(40_010),
        elsewhere: Vec::new(),
        sent: Vec::new(),
    };
    nat_b.pump(&mut ep, &mut b, now);
    assert!(b.is_established(), "{:?}", b.error());
    let id_b = ep.connection_id(addr(40_010)).unwrap();
    let mut c = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(b"plain".to_vec(), KEY.to_vec()))
        .build()
        .unwrap()
        .new_session(None, now)
        .unwrap();
    let mut nat_c = Nat {
        from: addr(40_020),
        elsewhere: Vec::new(),
        sent: Vec::new(),
    };
    nat_c.pump(&mut ep, &mut c, now);
    assert!(c.is_established(), "{:?}", c.error());
    let id_c = ep.connection_id(addr(40_020)).unwrap();
    drain(&mut ep);
    let recv = |ep: &mut Endpoint, at: SocketAddr, id: u64| {
        let mut buf = [0u8; 2048];
        let n = ep.recv(at, id, &mut buf).ok().flatten()?;
        Some(buf[..n].to_vec())
    };

    // A wakes at B's last address (B left it): A moves there, B parks.
    nat_a.from = addr(40_010);
    a.send(b"a at b's old port").unwrap();
    nat_a.pump(&mut ep, &mut a, now);
    assert_eq!(
        recv(&mut ep, addr(40_000), id_a).as_deref(),
        Some(&b"a at b's old port"[..])
    );
    assert_eq!(ep.peer_addr(addr(40_000), id_a), addr(40_010));
    let parked_b = ep.peer_addr(addr(40_010), id_b);
    assert!(
        matches!(parked_b.ip(), std::net::IpAddr::V6(v6) if v6.segments()[..4] == [0x100, 0, 0, 0]),
        "B parked in 100::/64: {parked_b}"
    );
    let events = drain(&mut ep);
    assert!(
        events.iter().any(
            |e| matches!(e, Event::AddressChanged { id, to, .. } if *id == id_b && *to == parked_b)
        ),
        "{events:?}"
    );
    // Nothing goes to the parking address: what the application sends B meanwhile is dropped
    // and counted, as towards any address that has not answered.
    ep.send(addr(40_010), id_b, b"to parked b").unwrap();
    let mut buf = vec![0u8; 2048];
    while let Some((to, _)) = ep.poll_transmit(&mut buf) {
        assert_ne!(to, parked_b, "a datagram sent to the parking address");
    }
    // B comes back from a new port of its own: it moves there, and the answers reach it.
    nat_b.from = addr(40_011);
    b.send(b"b is back").unwrap();
    nat_b.pump(&mut ep, &mut b, now);
    assert_eq!(
        recv(&mut ep, addr(40_010), id_b).as_deref(),
        Some(&b"b is back"[..])
    );
    assert_eq!(ep.peer_addr(addr(40_010), id_b), addr(40_011));
    ep.send(addr(40_011), id_b, b"answer").unwrap();
    nat_b.pump(&mut ep, &mut b, now);
    let mut got = Vec::new();
    while let Ok(Some(n)) = b.recv(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    assert_eq!(got, [b"answer".to_vec()]);
    assert_eq!(ep.stats().cid_amplification_dropped, 1);

    // A moves again, onto the address of C, a connection without CID: C parks too (its device
    // is a stranger anywhere else); A goes on.
    nat_a.from = addr(40_020);
    a.send(b"a at c's old port").unwrap();
    nat_a.pump(&mut ep, &mut a, now);
    assert_eq!(
        recv(&mut ep, addr(40_010), id_a).as_deref(),
        Some(&b"a at c's old port"[..])
    );
    assert_eq!(ep.peer_addr(addr(40_010), id_a), addr(40_020));
    assert_ne!(ep.peer_addr(addr(40_020), id_c), addr(40_020));
    let s = ep.stats();
    assert_eq!(
        (
            s.connections,
            s.cid_parked,
            s.cid_moves,
            s.cid_moves_refused_busy,
            s.handshakes_completed
        ),
        (3, 2, 5, 0, 3),
        "{s}"
    );
}
