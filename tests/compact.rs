//! Compact connections (`SessionConfig::compact`): the hand-off from OpenSSL's record layer to
//! the compact one, in process through a seeded link.
//!
//! Every test watches the wire: each datagram either session emits is parsed by an independent
//! record parser here, and no epoch-1 `(direction, epoch, sequence)` — nor, for GCM and CCM, no
//! explicit nonce — may ever carry two different records (that would be AEAD nonce reuse across
//! the hand-off from OpenSSL's sequence numbers to the compact layer's).

mod support;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslMethod, SslSession, SslSessionCacheMode,
};
use openssl_dtls::{Error, Session, SessionConfig, SessionStats};
use support::{handshake, run_until_tapped, Dir, Faults, Link, Rng};

const IDENTITY: &[u8] = b"Client_identity";
const KEY: &[u8] = b"secretPSK";

const CCS: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

fn psk_builders(cipher: &str) -> (SslContextBuilder, SslContextBuilder) {
    let list = format!("{cipher}:@SECLEVEL=0");
    let mut c = SslContextBuilder::new(SslMethod::dtls_client()).unwrap();
    c.set_cipher_list(&list).unwrap();
    c.set_psk_client_callback(|_, _hint, identity, psk| {
        identity[..IDENTITY.len()].copy_from_slice(IDENTITY);
        identity[IDENTITY.len()] = 0;
        psk[..KEY.len()].copy_from_slice(KEY);
        Ok(KEY.len())
    });
    let mut s = SslContextBuilder::new(SslMethod::dtls_server()).unwrap();
    s.set_cipher_list(&list).unwrap();
    s.set_psk_server_callback(|_, _identity, psk| {
        psk[..KEY.len()].copy_from_slice(KEY);
        Ok(KEY.len())
    });
    (c, s)
}

fn psk_contexts(cipher: &str) -> (SslContext, SslContext) {
    let (c, s) = psk_builders(cipher);
    (c.build(), s.build())
}

fn compact_config() -> SessionConfig {
    let mut config = SessionConfig::default();
    config.retransmit_initial = Duration::from_millis(50);
    config.retransmit_max = Duration::from_millis(400);
    config.handshake_timeout = Duration::from_secs(10);
    config.max_retransmits = 30;
    config.compact = true;
    config
}

fn pair(cipher: &str, config: &SessionConfig) -> (Session, Session) {
    let (cc, sc) = psk_contexts(cipher);
    let now = Instant::now();
    let c = Session::client(Ssl::new(&cc).unwrap(), config, now).unwrap();
    let s = Session::server(Ssl::new(&sc).unwrap(), config, now).unwrap();
    (c, s)
}

// ---------------------------------------------------------------------------------------------
// The wire, as an observer sees it
// ---------------------------------------------------------------------------------------------

/// One DTLS record, parsed here independently of the library.
#[derive(Debug, Clone, Copy)]
struct Rec<'a> {
    ty: u8,
    epoch: u16,
    seq: u64,
    /// Header and fragment.
    bytes: &'a [u8],
    fragment: &'a [u8],
}

/// The records of a datagram, or `None` if its framing is invalid (unknown content type or
/// version, a length past the end, a partial header): what the endpoint's pre-parser drops.
fn parse_records(mut d: &[u8]) -> Option<Vec<Rec<'_>>> {
    let mut out = Vec::new();
    while !d.is_empty() {
        if d.len() < 13 || !(CCS..=APPLICATION_DATA).contains(&d[0]) {
            return None;
        }
        if d[1..3] != [0xfe, 0xfd] && d[1..3] != [0xfe, 0xff] {
            return None;
        }
        let epoch = u16::from_be_bytes([d[3], d[4]]);
        let seq = u64::from_be_bytes([0, 0, d[5], d[6], d[7], d[8], d[9], d[10]]);
        let len = usize::from(u16::from_be_bytes([d[11], d[12]]));
        if d.len() < 13 + len {
            return None;
        }
        out.push(Rec {
            ty: d[0],
            epoch,
            seq,
            bytes: &d[..13 + len],
            fragment: &d[13..13 + len],
        });
        d = &d[13 + len..];
    }
    Some(out)
}

fn records(d: &[u8]) -> Vec<Rec<'_>> {
    parse_records(d).unwrap_or_else(|| panic!("malformed datagram on the wire: {d:02x?}"))
}

/// The datagram carries the sender's final flight: a ChangeCipherSpec or an epoch-1 handshake
/// record (Finished).
fn is_final_flight(d: &[u8]) -> bool {
    records(d)
        .iter()
        .any(|r| r.ty == CCS || (r.ty == HANDSHAKE && r.epoch == 1))
}

fn is_application_data(d: &[u8]) -> bool {
    records(d).iter().any(|r| r.ty == APPLICATION_DATA)
}

/// Every protected record seen on the wire, per direction, checked for nonce reuse.
#[derive(Debug, Default)]
struct Wire {
    label: String,
    explicit_nonce: bool,
    by_seq: HashMap<(usize, u16, u64), Vec<u8>>,
    by_nonce: HashMap<(usize, [u8; 8]), Vec<u8>>,
    /// Protected records observed, per direction (`Dir as usize`).
    protected: [usize; 2],
    /// Highest epoch-1 sequence number seen per direction.
    top_seq: [Option<u64>; 2],
    violations: Vec<String>,
}

impl Wire {
    fn new(label: impl Into<String>, cipher: &str) -> Wire {
        Wire {
            label: label.into(),
            explicit_nonce: cipher.contains("GCM") || cipher.contains("CCM"),
            ..Wire::default()
        }
    }

    fn observe(&mut self, dir: Dir, d: &[u8]) {
        let Some(recs) = parse_records(d) else {
            self.violations.push(format!(
                "{}: {dir:?}: malformed datagram {d:02x?}",
                self.label
            ));
            return;
        };
        let side = dir as usize;
        for r in recs.iter().filter(|r| r.epoch >= 1) {
            self.protected[side] += 1;
            self.top_seq[side] = Some(self.top_seq[side].map_or(r.seq, |t| t.max(r.seq)));
            match self.by_seq.get(&(side, r.epoch, r.seq)) {
                Some(old) if old != r.bytes => self.violations.push(format!(
                    "{}: {dir:?}: epoch {} sequence {} sent twice with different records \
                     (type {} then {}): nonce reuse",
                    self.label, r.epoch, r.seq, old[0], r.ty
                )),
                Some(_) => {}
                None => {
                    self.by_seq.insert((side, r.epoch, r.seq), r.bytes.to_vec());
                }
            }
            if self.explicit_nonce {
                let Some(nonce) = r.fragment.get(..8) else {
                    self.violations.push(format!(
                        "{}: {dir:?}: protected record shorter than its explicit nonce",
                        self.label
                    ));
                    continue;
                };
                let nonce: [u8; 8] = nonce.try_into().unwrap();
                match self.by_nonce.get(&(side, nonce)) {
                    Some(old) if old != r.fragment => self.violations.push(format!(
                        "{}: {dir:?}: explicit nonce {nonce:02x?} reused for a different record \
                         (epoch {} sequence {})",
                        self.label, r.epoch, r.seq
                    )),
                    Some(_) => {}
                    None => {
                        self.by_nonce.insert((side, nonce), r.fragment.to_vec());
                    }
                }
            }
        }
    }

    fn assert_clean(&self) {
        assert!(self.violations.is_empty(), "{:#?}", self.violations);
    }
}

/// What the test's tap does with one datagram a session emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Onto the link.
    Pass,
    /// Lost.
    Drop,
    /// Kept aside in [`Net::withheld`] (delayed indefinitely: the test may deliver it later).
    Withhold,
    /// Onto the link twice.
    Duplicate,
}

type Filter = Box<dyn FnMut(Dir, &[u8]) -> Verdict>;

/// A link with a watching, optionally meddling tap in front of it.
struct Net {
    link: Link,
    wire: Wire,
    filter: Option<Filter>,
    withheld: Vec<(Dir, Vec<u8>)>,
    /// Every datagram the sessions emitted, in order.
    log: Vec<(Dir, Vec<u8>)>,
}

impl Net {
    fn new(link: Link, wire: Wire) -> Net {
        Net {
            link,
            wire,
            filter: None,
            withheld: Vec::new(),
            log: Vec::new(),
        }
    }

    fn perfect(label: &str, cipher: &str) -> Net {
        Net::new(Link::perfect(), Wire::new(label, cipher))
    }

    fn run(
        &mut self,
        c: &mut Session,
        s: &mut Session,
        deadline: Duration,
        done: impl FnMut(&mut Session, &mut Session) -> bool,
    ) -> bool {
        let Net {
            link,
            wire,
            filter,
            withheld,
            log,
        } = self;
        run_until_tapped(
            c,
            s,
            link,
            deadline,
            |link, dir, d| {
                wire.observe(dir, d);
                log.push((dir, d.to_vec()));
                match filter.as_mut().map_or(Verdict::Pass, |f| f(dir, d)) {
                    Verdict::Pass => link.send(dir, d),
                    Verdict::Drop => {}
                    Verdict::Withhold => withheld.push((dir, d.to_vec())),
                    Verdict::Duplicate => {
                        link.send(dir, d);
                        link.send(dir, d);
                    }
                }
            },
            done,
        )
    }

    /// Everything `session` has to send, observed but not delivered.
    fn drain(&mut self, session: &mut Session, dir: Dir) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while let Some(n) = session.poll_transmit(&mut buf) {
            self.wire.observe(dir, &buf[..n]);
            self.log.push((dir, buf[..n].to_vec()));
            out.push(buf[..n].to_vec());
        }
        out
    }

    /// Sends `msg` one way and runs until it arrives; returns what arrived.
    fn deliver(
        &mut self,
        from_client: bool,
        msg: &[u8],
        c: &mut Session,
        s: &mut Session,
    ) -> Vec<u8> {
        let sender = if from_client { &mut *c } else { &mut *s };
        sender.send(msg).unwrap();
        let mut got = Vec::new();
        let ok = self.run(c, s, Duration::from_secs(5), |c, s| {
            let rx = if from_client { s } else { c };
            let mut buf = vec![0u8; 20_000];
            if let Ok(Some(n)) = rx.recv(&mut buf) {
                got = buf[..n].to_vec();
                true
            } else {
                false
            }
        });
        assert!(ok, "{}: message not delivered", self.wire.label);
        got
    }
}

fn recv_all(session: &mut Session) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 20_000];
    while let Ok(Some(n)) = session.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// All drop counters of the compact layer, summed.
fn drops(stats: &SessionStats) -> u64 {
    stats.dropped_replayed_records
        + stats.dropped_unauthenticated_records
        + stats.dropped_handshake_records
        + stats.dropped_short_records
}

/// Application data in both directions, then checks both sides are compact.
fn assert_flows(net: &mut Net, c: &mut Session, s: &mut Session, tag: &str) {
    for (from_client, what) in [
        (true, "c->s"),
        (false, "s->c"),
        (true, "c->s 2"),
        (false, "s->c 2"),
    ] {
        let msg = format!("{tag}: {what}");
        assert_eq!(
            net.deliver(from_client, msg.as_bytes(), c, s),
            msg.as_bytes()
        );
    }
    assert!(
        c.is_compact() && s.is_compact(),
        "{tag}: both sides handed off"
    );
    assert!(c.error().is_none() && s.error().is_none());
}

// ---------------------------------------------------------------------------------------------
// Basics
// ---------------------------------------------------------------------------------------------

#[test]
fn every_aead_suite_hands_off_and_carries_data_both_ways() {
    for cipher in [
        "PSK-AES128-CCM8",
        "PSK-AES256-CCM8",
        "PSK-AES128-CCM",
        "PSK-AES256-CCM",
        "PSK-AES128-GCM-SHA256",
        "PSK-AES256-GCM-SHA384",
        "PSK-CHACHA20-POLY1305",
        "ECDHE-PSK-CHACHA20-POLY1305",
    ] {
        let (mut c, mut s) = pair(cipher, &compact_config());
        let mut net = Net::perfect(cipher, cipher);
        assert!(
            net.run(&mut c, &mut s, Duration::from_secs(5), |c, s| c
                .is_established()
                && s.is_established()),
            "{cipher}"
        );
        assert!(
            c.is_compact() && c.ssl().is_none(),
            "{cipher}: the client received the last flight"
        );
        assert!(
            s.is_lingering() && !s.is_compact() && s.ssl().is_some(),
            "{cipher}: the server sent it"
        );
        assert_eq!(
            c.cipher(),
            Some(cipher),
            "the handshake's facts outlive the SSL"
        );
        assert_eq!(s.cipher(), Some(cipher));
        assert_eq!(s.psk_identity(), Some(IDENTITY));
        assert_eq!(c.protocol_version(), Some("DTLSv1.2"));
        // Server → client while the server still lingers (OpenSSL writes).
        assert_eq!(
            net.deliver(false, b"from the lingering server", &mut c, &mut s),
            b"from the lingering server"
        );
        assert!(
            s.is_lingering(),
            "{cipher}: its own records do not end the linger"
        );
        assert_eq!(net.deliver(true, b"hello", &mut c, &mut s), b"hello");
        assert!(
            s.is_compact() && !s.is_lingering(),
            "{cipher}: the client's first record ends the linger"
        );
        assert_eq!(
            s.psk_identity(),
            Some(IDENTITY),
            "facts kept at the hand-off"
        );
        let max = c.data_mtu();
        for len in [1, max / 2, max] {
            let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(
                net.deliver(true, &msg, &mut c, &mut s),
                msg,
                "{cipher} {len}"
            );
            assert_eq!(
                net.deliver(false, &msg, &mut c, &mut s),
                msg,
                "{cipher} {len}"
            );
        }
        assert!(
            c.send(&vec![0u8; max + 1]).is_err(),
            "{cipher}: over the data MTU"
        );
        assert_eq!(
            drops(&c.stats()) + drops(&s.stats()),
            0,
            "{cipher}: nothing dropped on a perfect link"
        );
        assert_eq!((c.stats().app_out, s.stats().app_in), (4, 4));
        assert_eq!((s.stats().app_out, c.stats().app_in), (4, 4));
        c.close();
        assert!(net.run(&mut c, &mut s, Duration::from_secs(5), |_, s| s
            .closed_by_peer()));
        net.wire.assert_clean();
        assert!(net.wire.protected[0] > 0 && net.wire.protected[1] > 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-off hazards
// ---------------------------------------------------------------------------------------------

/// Which transmission of one side's final flight a datagram belongs to, by the sequence numbers
/// of its ChangeCipherSpec and epoch-1 Finished records (each retransmission takes new ones).
#[derive(Debug, Default)]
struct Flights {
    ccs: Vec<u64>,
    finished: Vec<u64>,
}

impl Flights {
    /// The transmission (0 = first) of the flight `d` carries, if it carries one.
    fn rank(&mut self, d: &[u8]) -> Option<usize> {
        let mut rank = None;
        for r in records(d) {
            let list = match (r.ty, r.epoch) {
                (CCS, _) => &mut self.ccs,
                (HANDSHAKE, 1) => &mut self.finished,
                _ => continue,
            };
            let i = list.iter().position(|&s| s == r.seq).unwrap_or_else(|| {
                list.push(r.seq);
                list.len() - 1
            });
            rank = Some(rank.map_or(i, |x: usize| x.min(i)));
        }
        rank
    }

    fn transmissions(&self) -> usize {
        self.finished.len()
    }
}

const HAZARD_SUITES: [&str; 3] = [
    "PSK-AES128-CCM8",
    "PSK-AES128-GCM-SHA256",
    "ECDHE-PSK-CHACHA20-POLY1305",
];

/// A filter that drops the first `lost` transmissions of `dir`'s final flight and tracks them.
fn lose_final_flights(dir: Dir, lost: usize) -> (Filter, Rc<RefCell<Flights>>) {
    let flights = Rc::new(RefCell::new(Flights::default()));
    let tracker = flights.clone();
    let filter = Box::new(move |d: Dir, datagram: &[u8]| {
        if d == dir
            && tracker
                .borrow_mut()
                .rank(datagram)
                .is_some_and(|r| r < lost)
        {
            Verdict::Drop
        } else {
            Verdict::Pass
        }
    });
    (filter, flights)
}

/// Loses the server's first final flight and duplicates its application data: data it sends
/// while lingering reaches the client (twice) before the client completes.
fn lose_first_final_flight_and_duplicate_data() -> Filter {
    let (mut lose, _) = lose_final_flights(Dir::ToClient, 1);
    Box::new(move |dir, d| match lose(dir, d) {
        Verdict::Pass if dir == Dir::ToClient && is_application_data(d) => Verdict::Duplicate,
        v => v,
    })
}

#[test]
fn a_lost_final_flight_is_retransmitted_by_the_lingering_server_and_the_client_completes() {
    for cipher in HAZARD_SUITES {
        for lost in [1, 2] {
            let label = format!("{cipher}, {lost} server flight(s) lost");
            let (mut c, mut s) = pair(cipher, &compact_config());
            let mut net = Net::perfect(&label, cipher);
            let (filter, server_flights) = lose_final_flights(Dir::ToClient, lost);
            net.filter = Some(filter);
            assert!(
                net.run(&mut c, &mut s, Duration::from_secs(5), |_, s| s
                    .is_established()),
                "{label}"
            );
            assert!(s.is_lingering(), "{label}: the server sent the last flight");
            assert!(!c.is_established(), "{label}: its flight was lost");
            assert!(
                net.run(&mut c, &mut s, Duration::from_secs(5), |c, _| c
                    .is_established()),
                "{label}"
            );
            assert!(c.is_compact(), "{label}: the client hands off at once");
            assert!(s.is_lingering(), "{label}: no record from the client yet");
            assert!(
                c.stats().retransmits >= lost as u32,
                "{label}: the client's timer fired"
            );
            assert_eq!(
                server_flights.borrow().transmissions(),
                lost + 1,
                "{label}: the lingering server sent its flight again for each retransmission"
            );
            assert_flows(&mut net, &mut c, &mut s, &label);
            net.wire.assert_clean();
        }
    }
}

#[test]
fn data_from_the_lingering_server_before_the_client_completes_is_delivered_once_and_replays_are_rejected(
) {
    for cipher in HAZARD_SUITES {
        let (mut c, mut s) = pair(cipher, &compact_config());
        let mut net = Net::perfect(cipher, cipher);
        // The server's first final flight is lost; its application data arrives twice.
        net.filter = Some(lose_first_final_flight_and_duplicate_data());
        assert!(net.run(&mut c, &mut s, Duration::from_secs(5), |_, s| s
            .is_established()));
        let early: Vec<Vec<u8>> = (0..3)
            .map(|i| format!("{cipher}: early {i}").into_bytes())
            .collect();
        for m in &early {
            s.send(m).unwrap(); // through the lingering SSL
        }
        // The early records reach the handshaking client and wait in its early buffer.
        assert!(net.run(&mut c, &mut s, Duration::from_secs(5), |c, _| c
            .stats()
            .datagrams_in
            >= 4 + 6
            || c.is_established()));
        assert!(!c.is_established() || c.is_compact());
        assert!(
            net.run(&mut c, &mut s, Duration::from_secs(5), |c, _| c
                .is_established()),
            "{cipher}"
        );
        assert!(c.is_compact() && s.is_lingering());
        assert_eq!(
            recv_all(&mut c),
            early,
            "{cipher}: each early message exactly once, in order"
        );
        assert_eq!(c.stats().app_in, 3);
        assert_eq!(
            c.stats().dropped_replayed_records,
            3,
            "{cipher}: the duplicates"
        );
        // Replayed after the hand-off: rejected by the window, never delivered again.
        let early_datagrams: Vec<Vec<u8>> = net
            .log
            .iter()
            .filter(|(dir, d)| *dir == Dir::ToClient && is_application_data(d))
            .map(|(_, d)| d.clone())
            .collect();
        assert_eq!(early_datagrams.len(), 3);
        for d in &early_datagrams {
            c.handle_datagram(Instant::now(), d);
        }
        assert!(recv_all(&mut c).is_empty());
        assert!(!c.has_transmit());
        assert_eq!(c.stats().dropped_replayed_records, 6);
        assert_eq!(c.stats().app_in, 3);
        net.filter = None;
        assert_flows(&mut net, &mut c, &mut s, cipher);
        // And once more after the server handed off too.
        for d in &early_datagrams {
            c.handle_datagram(Instant::now(), d);
        }
        assert!(recv_all(&mut c).is_empty());
        assert_eq!(c.stats().dropped_replayed_records, 9);
        assert_eq!(c.stats().app_in, 5);
        net.wire.assert_clean();
    }
}

#[test]
fn the_early_buffer_keeps_eight_records_and_counts_the_rest() {
    let cipher = "PSK-AES128-CCM8";
    let (mut c, mut s) = pair(cipher, &compact_config());
    let mut net = Net::perfect(cipher, cipher);
    let (filter, _) = lose_final_flights(Dir::ToClient, 1);
    net.filter = Some(filter);
    assert!(net.run(&mut c, &mut s, Duration::from_secs(5), |_, s| s
        .is_established()));
    let early: Vec<Vec<u8>> = (0..10).map(|i| format!("early {i}").into_bytes()).collect();
    for m in &early {
        s.send(m).unwrap();
    }
    assert!(net.run(&mut c, &mut s, Duration::from_secs(5), |c, _| c
        .is_established()));
    assert_eq!(
        recv_all(&mut c),
        early[..8].to_vec(),
        "the first eight, once each"
    );
    assert!(c.stats().dropped_handshake_records >= 2, "{:?}", c.stats());
    assert_flows(&mut net, &mut c, &mut s, cipher);
    net.wire.assert_clean();
}

#[test]
fn a_retransmitted_client_finished_is_answered_while_lingering_and_dropped_after_the_hand_off() {
    for cipher in HAZARD_SUITES {
        let (mut c, mut s) = pair(cipher, &compact_config());
        let mut net = Net::perfect(cipher, cipher);
        // The server's first flight is lost; the client's first two retransmissions are delayed
        // (withheld) and its third gets through.
        let (mut lose, _) = lose_final_flights(Dir::ToClient, 1);
        let mut client_flights = Flights::default();
        net.filter = Some(Box::new(move |dir, d| {
            if dir == Dir::ToServer && matches!(client_flights.rank(d), Some(1 | 2)) {
                Verdict::Withhold
            } else {
                lose(dir, d)
            }
        }));
        assert!(
            net.run(&mut c, &mut s, Duration::from_secs(5), |c, s| c
                .is_established()
                && s.is_established()),
            "{cipher}"
        );
        assert!(c.is_compact() && s.is_lingering());
        let held: Vec<Vec<u8>> = net.withheld.drain(..).map(|(_, d)| d).collect();
        assert_eq!(
            held.len(),
            2,
            "{cipher}: two delayed retransmissions, one datagram each"
        );

        // 1. The original final flight, replayed verbatim while the server lingers: the
        //    connection is intact whatever OpenSSL's replay check makes of it.
        let original = net
            .log
            .iter()
            .find(|(dir, d)| *dir == Dir::ToServer && is_final_flight(d))
            .map(|(_, d)| d.clone())
            .unwrap();
        s.handle_datagram(Instant::now(), &original);
        let answer = net.drain(&mut s, Dir::ToClient);
        assert!(
            s.is_lingering() && s.is_established() && s.error().is_none(),
            "{cipher}"
        );
        for d in &answer {
            c.handle_datagram(Instant::now(), d);
        }

        // 2. A genuine (never seen) retransmission while the server lingers: OpenSSL answers
        //    with its flight again.
        let before = s.stats();
        s.handle_datagram(Instant::now(), &held[0]);
        let answer = net.drain(&mut s, Dir::ToClient);
        assert!(
            answer.iter().any(|d| is_final_flight(d)),
            "{cipher}: the lingering server answers with its final flight"
        );
        assert!(
            s.is_lingering() && s.is_established() && s.error().is_none(),
            "{cipher}"
        );
        assert_eq!(
            drops(&s.stats()),
            drops(&before),
            "{cipher}: nothing dropped while lingering"
        );
        // The compact client drops that flight and counts it; it sends nothing back.
        let before = c.stats().dropped_handshake_records;
        for d in &answer {
            c.handle_datagram(Instant::now(), d);
        }
        assert!(c.stats().dropped_handshake_records > before, "{cipher}");
        assert!(!c.has_transmit() && c.is_established());

        // Data through the lingering SSL (after its retransmitted Finished), then the client's
        // first record ends the linger.
        assert_eq!(
            net.deliver(false, b"lingering", &mut c, &mut s),
            b"lingering"
        );
        assert_eq!(
            net.deliver(true, b"ends the linger", &mut c, &mut s),
            b"ends the linger"
        );
        assert!(s.is_compact(), "{cipher}");

        // 3. The other delayed retransmission and the original flight after the hand-off:
        //    dropped, every record counted, nothing sent, the connection intact.
        for d in [&held[1], &original] {
            let before = s.stats();
            s.handle_datagram(Instant::now(), d);
            assert_eq!(
                s.stats().dropped_handshake_records - before.dropped_handshake_records,
                records(d).len() as u64,
                "{cipher}"
            );
            assert!(
                !s.has_transmit(),
                "{cipher}: a compact server never answers a final flight"
            );
            assert!(recv_all(&mut s).is_empty());
        }
        assert_flows(&mut net, &mut c, &mut s, cipher);
        net.wire.assert_clean();
    }
}

#[test]
fn the_linger_ends_at_its_deadline_when_the_client_never_sends() {
    for cipher in HAZARD_SUITES {
        let mut config = compact_config();
        config.compact_linger = Duration::from_millis(200);
        let (mut c, mut s) = pair(cipher, &config);
        let mut net = Net::perfect(cipher, cipher);
        let t0 = Instant::now();
        assert!(net.run(&mut c, &mut s, Duration::from_secs(5), |c, s| c
            .is_established()
            && s.is_established()));
        let t1 = Instant::now();
        assert!(s.is_lingering() && c.is_compact());
        assert_eq!(
            c.poll_timeout(),
            None,
            "{cipher}: a compact client has no timer"
        );
        let deadline = s.poll_timeout().expect("the linger deadline");
        assert!(
            deadline >= t0 + config.compact_linger && deadline <= t1 + config.compact_linger,
            "{cipher}: poll_timeout reports the linger deadline"
        );
        // Nothing from the client: the deadline alone ends the linger.
        s.handle_timeout(deadline - Duration::from_millis(1));
        assert!(s.is_lingering(), "{cipher}: not before the deadline");
        s.handle_timeout(deadline);
        assert!(
            s.is_compact() && !s.is_lingering() && s.ssl().is_none(),
            "{cipher}"
        );
        assert_eq!(s.poll_timeout(), None, "{cipher}: no timer left");
        assert!(!s.has_transmit());
        assert_eq!(s.stats().datagrams_in, c.stats().datagrams_out);
        // Data flows both ways, the server now sealing on the compact layer.
        for (from_client, msg) in [(false, "s->c"), (true, "c->s"), (false, "s->c again")] {
            assert_eq!(
                net.deliver(from_client, msg.as_bytes(), &mut c, &mut s),
                msg.as_bytes()
            );
        }
        net.wire.assert_clean();
    }
}

// ---------------------------------------------------------------------------------------------
// Forged, tampered and truncated records
// ---------------------------------------------------------------------------------------------

/// Feeds every single-byte corruption of `genuine` (one protected record) to `rx`: none is ever
/// delivered or answered; each is counted by the session: as the record it dropped, or, when its
/// framing is broken, as a malformed datagram (the endpoint's pre-parser would count it before
/// any session saw it).
fn tamper_every_byte(rx: &mut Session, genuine: &[u8], label: &str) {
    let now = Instant::now();
    for i in 0..genuine.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = genuine.to_vec();
            bad[i] ^= mask;
            let before = rx.stats();
            rx.handle_datagram(now, &bad);
            let counted = drops(&rx.stats()) - drops(&before);
            assert!(
                recv_all(rx).is_empty(),
                "{label}: byte {i} ^ {mask:#x} delivered"
            );
            assert!(!rx.has_transmit(), "{label}: byte {i} ^ {mask:#x} answered");
            assert!(
                rx.is_established() && rx.error().is_none(),
                "{label}: byte {i}"
            );
            if parse_records(&bad).is_some() {
                assert!(counted >= 1, "{label}: byte {i} ^ {mask:#x} not counted");
            } else {
                // Broken framing: the datagram does not parse, so none of it (not even the
                // well-formed records before the garbage) goes further; it is counted once.
                assert_eq!(counted, 0, "{label}: byte {i} ^ {mask:#x}: framing garbage");
                assert_eq!(
                    rx.stats().dropped_malformed - before.dropped_malformed,
                    1,
                    "{label}: byte {i} ^ {mask:#x}: framing garbage counted"
                );
            }
        }
    }
}

/// The record truncated to `keep` bytes of fragment, its length field adjusted.
fn truncated(genuine: &[u8], keep: usize) -> Vec<u8> {
    let mut t = genuine[..13 + keep].to_vec();
    t[11..13].copy_from_slice(&(keep as u16).to_be_bytes());
    t
}

fn overhead(cipher: &str) -> usize {
    if cipher.contains("CHACHA20") || cipher.ends_with("CCM8") {
        16
    } else {
        24
    }
}

#[test]
fn tampered_forged_and_truncated_records_are_dropped_counted_and_harmless() {
    for cipher in HAZARD_SUITES {
        let (mut c, mut s) = pair(cipher, &compact_config());
        let mut net = Net::perfect(cipher, cipher);
        assert!(handshake(
            &mut c,
            &mut s,
            &mut net.link,
            Duration::from_secs(5)
        ));
        assert_flows(&mut net, &mut c, &mut s, cipher);
        for from_client in [true, false] {
            let label = format!(
                "{cipher}, from the {}",
                if from_client { "client" } else { "server" }
            );
            let (tx, rx, dir) = if from_client {
                (&mut c, &mut s, Dir::ToServer)
            } else {
                (&mut s, &mut c, Dir::ToClient)
            };
            tx.send(b"genuine").unwrap();
            let sealed = net.drain(tx, dir);
            assert_eq!(sealed.len(), 1);
            let genuine = &sealed[0];
            assert_eq!(records(genuine).len(), 1);
            assert_eq!(genuine.len(), 13 + 7 + overhead(cipher), "{label}");
            tamper_every_byte(rx, genuine, &label);

            // Forged: a well-formed header with the next sequence number and random contents.
            let before = rx.stats();
            let mut forged = genuine.clone();
            let mut rng = Rng::new(7);
            for b in &mut forged[13..] {
                *b = rng.next_u64() as u8;
            }
            rx.handle_datagram(Instant::now(), &forged);
            assert_eq!(
                rx.stats().dropped_unauthenticated_records,
                before.dropped_unauthenticated_records + 1,
                "{label}"
            );

            // Truncated below nonce plus tag: counted as short.
            let before = rx.stats();
            for keep in 0..overhead(cipher) {
                rx.handle_datagram(Instant::now(), &truncated(genuine, keep));
            }
            assert_eq!(
                rx.stats().dropped_short_records,
                before.dropped_short_records + overhead(cipher) as u64,
                "{label}"
            );
            // Exactly nonce plus tag (an empty plaintext) but not the genuine tag: unauthenticated.
            rx.handle_datagram(Instant::now(), &truncated(genuine, overhead(cipher)));
            assert_eq!(
                rx.stats().dropped_unauthenticated_records,
                before.dropped_unauthenticated_records + 1,
                "{label}"
            );
            assert!(
                recv_all(rx).is_empty() && !rx.has_transmit() && rx.is_established(),
                "{label}"
            );

            // Nothing above moved the replay window: the genuine record opens, once.
            let app_in = rx.stats().app_in;
            rx.handle_datagram(Instant::now(), genuine);
            assert_eq!(recv_all(rx), vec![b"genuine".to_vec()], "{label}");
            let before = rx.stats();
            rx.handle_datagram(Instant::now(), genuine);
            assert!(recv_all(rx).is_empty());
            assert_eq!(
                rx.stats().dropped_replayed_records,
                before.dropped_replayed_records + 1
            );
            assert_eq!(rx.stats().app_in, app_in + 1);
        }
        assert_flows(&mut net, &mut c, &mut s, cipher);
        net.wire.assert_clean();
    }
}

#[test]
fn short_records_are_counted_while_lingering_and_during_the_handshake() {
    let cipher = "PSK-AES128-GCM-SHA256";
    let (mut c, mut s) = pair(cipher, &compact_config());
    let mut net = Net::perfect(cipher, cipher);
    let (filter, _) = lose_final_flights(Dir::ToClient, 1);
    net.filter = Some(filter);
    assert!(net.run(&mut c, &mut s, Duration::from_secs(5), |_, s| s
        .is_established()));
    // Its final flight goes out (and is lost) first.
    assert!(net.run(&mut c, &mut s, Duration::from_secs(5), |_, s| !s
        .has_transmit()));
    s.send(b"template").unwrap();
    let template = net.drain(&mut s, Dir::ToClient).remove(0);
    assert!(is_application_data(&template));
    // The handshaking client buffers it; then a short copy of it arrives before completion.
    c.handle_datagram(Instant::now(), &truncated(&template, 3));
    c.handle_datagram(Instant::now(), &template);
    let ok = net.run(&mut c, &mut s, Duration::from_secs(5), |c, _| {
        c.is_established()
    });
    assert!(
        ok,
        "client {:?} {:?} server {:?} {:?}",
        c.error(),
        c.stats(),
        s.error(),
        s.stats()
    );
    assert_eq!(recv_all(&mut c), vec![b"template".to_vec()]);
    assert_eq!(c.stats().dropped_short_records, 1);
    // The lingering server: the client's record, short, does not end the linger.
    c.send(b"to the lingering server").unwrap();
    let record = net.drain(&mut c, Dir::ToServer).remove(0);
    s.handle_datagram(Instant::now(), &truncated(&record, 23));
    assert_eq!(s.stats().dropped_short_records, 1);
    assert!(s.is_lingering(), "an unauthenticated record proves nothing");
    let mut bad = record.clone();
    *bad.last_mut().unwrap() ^= 1;
    s.handle_datagram(Instant::now(), &bad);
    assert_eq!(s.stats().dropped_unauthenticated_records, 1);
    assert!(s.is_lingering(), "a forged record does not end the linger");
    // Short epoch-1 handshake and ChangeCipherSpec records (23 bytes) never reach the
    // lingering OpenSSL, which some versions answer with a fatal internal_error
    // (CVE-2026-75806).
    for content_type in [22u8, 20] {
        let mut short = vec![
            content_type,
            0xfe,
            0xfd,
            0,
            1,
            0,
            0,
            0,
            0,
            0x03,
            0xe8,
            0,
            10,
        ];
        short.extend_from_slice(&[0u8; 10]);
        s.handle_datagram(Instant::now(), &short);
        assert!(s.error().is_none(), "{:?}", s.error());
        assert!(s.is_lingering());
    }
    assert_eq!(s.stats().dropped_short_records, 3);
    s.handle_datagram(Instant::now(), &record);
    assert!(s.is_compact());
    assert_eq!(recv_all(&mut s), vec![b"to the lingering server".to_vec()]);
    net.filter = None;
    assert_flows(&mut net, &mut c, &mut s, cipher);
    net.wire.assert_clean();
}

// ---------------------------------------------------------------------------------------------
// Suites and handshakes the compact layer does not take, or takes the other way round
// ---------------------------------------------------------------------------------------------

#[test]
fn early_records_on_a_non_aead_suite_go_to_openssl_once_established() {
    // Compact mode withholds epoch-1 application records from OpenSSL during the handshake;
    // when the suite turns out not to be AEAD they must reach OpenSSL after all.
    let cipher = "PSK-AES128-CBC-SHA256";
    let (mut c, mut s) = pair(cipher, &compact_config());
    let mut net = Net::perfect(cipher, cipher);
    net.filter = Some(lose_first_final_flight_and_duplicate_data());
    assert!(net.run(&mut c, &mut s, Duration::from_secs(5), |_, s| s
        .is_established()));
    let early: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("cbc early {i}").into_bytes())
        .collect();
    for m in &early {
        s.send(m).unwrap();
    }
    assert!(
        net.run(&mut c, &mut s, Duration::from_secs(5), |c, _| c
            .is_established()),
        "{:?}",
        c.error()
    );
    assert!(!c.is_compact() && c.ssl().is_some(), "CBC stays on OpenSSL");
    assert_eq!(
        recv_all(&mut c),
        early,
        "each early message once, in order (OpenSSL drops the duplicates)"
    );
    net.filter = None;
    assert_eq!(
        net.deliver(true, b"after", &mut c, &mut s),
        b"after".to_vec()
    );
}

#[test]
fn a_non_aead_suite_stays_on_openssl_and_works() {
    let cipher = "PSK-AES128-CBC-SHA256";
    let (mut c, mut s) = pair(cipher, &compact_config());
    let faults = Faults {
        drop: 0.1,
        duplicate: 0.1,
        reorder: 0.1,
        ..Faults::default()
    };
    let mut net = Net::new(Link::new(5, faults), Wire::new(cipher, cipher));
    assert!(net.run(&mut c, &mut s, Duration::from_secs(10), |c, s| c
        .is_established()
        && s.is_established()));
    assert_eq!(c.cipher(), Some(cipher));
    for session in [&c, &s] {
        assert!(!session.is_compact() && !session.is_lingering());
        assert!(session.ssl().is_some(), "the SSL is kept");
    }
    net.link.faults = Faults::default();
    for i in 0..5 {
        let msg = format!("cbc {i}");
        assert_eq!(
            net.deliver(i % 2 == 0, msg.as_bytes(), &mut c, &mut s),
            msg.as_bytes()
        );
    }
    for session in [&c, &s] {
        assert!(!session.is_compact() && session.ssl().is_some());
        let st = session.stats();
        assert_eq!(
            st.dropped_handshake_records + st.dropped_unauthenticated_records,
            0
        );
    }
    c.close();
    assert!(net.run(&mut c, &mut s, Duration::from_secs(5), |_, s| s
        .closed_by_peer()));
    net.wire.assert_clean();
}

/// Contexts that resume: the client keeps the session it gets, the server caches sessions and
/// issues tickets.
fn resumable_contexts(cipher: &str) -> (SslContext, SslContext, Arc<Mutex<Option<SslSession>>>) {
    let (mut c, mut s) = psk_builders(cipher);
    let saved = Arc::new(Mutex::new(None));
    let slot = saved.clone();
    c.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    c.set_new_session_callback(move |_, session| *slot.lock().unwrap() = Some(session));
    s.set_session_cache_mode(SslSessionCacheMode::SERVER);
    s.set_session_id_context(b"compact-tests").unwrap();
    (c.build(), s.build(), saved)
}

/// A full handshake on resumable contexts (compact or not), then a compact client and server,
/// the client offering the session of the first handshake.
fn resuming_pair(cipher: &str, first_compact: bool) -> (Session, Session) {
    let (cc, sc, saved) = resumable_contexts(cipher);
    let config = compact_config();
    let mut first = config.clone();
    first.compact = first_compact;
    let now = Instant::now();
    let mut c = Session::client(Ssl::new(&cc).unwrap(), &first, now).unwrap();
    let mut s = Session::server(Ssl::new(&sc).unwrap(), &first, now).unwrap();
    let mut net = Net::perfect(cipher, cipher);
    assert!(handshake(
        &mut c,
        &mut s,
        &mut net.link,
        Duration::from_secs(5)
    ));
    for (from_client, msg) in [(true, "first c->s"), (false, "first s->c")] {
        assert_eq!(
            net.deliver(from_client, msg.as_bytes(), &mut c, &mut s),
            msg.as_bytes()
        );
    }
    assert_eq!(c.is_compact(), first_compact);
    assert_eq!(s.is_compact(), first_compact);
    c.close();
    assert!(net.run(&mut c, &mut s, Duration::from_secs(5), |_, s| s
        .closed_by_peer()));
    let session = saved.lock().unwrap().take().expect("a session to resume");
    let mut ssl = Ssl::new(&cc).unwrap();
    // SAFETY: the session comes from a handshake on a context of the same method.
    unsafe { ssl.set_session(&session).unwrap() };
    let c = Session::client(ssl, &config, Instant::now()).unwrap();
    let s = Session::server(Ssl::new(&sc).unwrap(), &config, Instant::now()).unwrap();
    (c, s)
}

#[test]
fn a_resumed_handshake_flips_the_roles_the_client_lingers_and_the_server_hands_off() {
    for cipher in HAZARD_SUITES {
        let (mut c, mut s) = resuming_pair(cipher, false);
        let mut net = Net::perfect(cipher, cipher);
        assert!(
            net.run(&mut c, &mut s, Duration::from_secs(5), |c, s| c
                .is_established()
                && s.is_established()),
            "{cipher}"
        );
        assert!(
            c.ssl()
                .expect("the lingering client keeps its SSL")
                .session_reused(),
            "{cipher}: resumed"
        );
        assert!(
            c.is_lingering() && !c.is_compact(),
            "{cipher}: the client sent the last flight"
        );
        assert!(
            s.is_compact(),
            "{cipher}: the server received it and handed off at once"
        );
        assert!(c.poll_timeout().is_some(), "{cipher}: the linger deadline");
        assert_eq!(
            net.deliver(true, b"through the lingering SSL", &mut c, &mut s),
            b"through the lingering SSL"
        );
        assert!(c.is_lingering());
        assert_eq!(
            net.deliver(false, b"ends the linger", &mut c, &mut s),
            b"ends the linger"
        );
        assert!(c.is_compact());
        assert_flows(&mut net, &mut c, &mut s, cipher);
        net.wire.assert_clean();
    }
}

#[test]
fn a_resumed_handshake_whose_final_flight_is_lost_delivers_the_clients_early_data_once() {
    for cipher in HAZARD_SUITES {
        let (mut c, mut s) = resuming_pair(cipher, false);
        let mut net = Net::perfect(cipher, cipher);
        let (mut lose, client_flights) = lose_final_flights(Dir::ToServer, 1);
        net.filter = Some(Box::new(move |dir, d| match lose(dir, d) {
            Verdict::Pass if dir == Dir::ToServer && is_application_data(d) => Verdict::Duplicate,
            v => v,
        }));
        assert!(net.run(&mut c, &mut s, Duration::from_secs(5), |c, _| c
            .is_established()));
        assert!(c.is_lingering() && !s.is_established());
        let early: Vec<Vec<u8>> = (0..3)
            .map(|i| format!("{cipher}: early {i}").into_bytes())
            .collect();
        for m in &early {
            c.send(m).unwrap();
        }
        // The server retransmits its flight on its timer; the lingering client answers.
        assert!(
            net.run(&mut c, &mut s, Duration::from_secs(5), |_, s| s
                .is_established()),
            "{cipher}"
        );
        assert!(s.is_compact() && c.is_lingering(), "{cipher}");
        assert_eq!(
            client_flights.borrow().transmissions(),
            2,
            "{cipher}: the client's flight, again"
        );
        assert!(s.stats().retransmits >= 1);
        assert_eq!(recv_all(&mut s), early, "{cipher}: once each, in order");
        assert_eq!(
            s.stats().dropped_replayed_records,
            3,
            "{cipher}: the duplicates"
        );
        let early_datagrams: Vec<Vec<u8>> = net
            .log
            .iter()
            .filter(|(dir, d)| *dir == Dir::ToServer && is_application_data(d))
            .map(|(_, d)| d.clone())
            .collect();
        for d in &early_datagrams {
            s.handle_datagram(Instant::now(), d);
        }
        assert!(recv_all(&mut s).is_empty());
        assert_eq!(s.stats().dropped_replayed_records, 6);
        assert_eq!(s.stats().app_in, 3);
        net.filter = None;
        assert_flows(&mut net, &mut c, &mut s, cipher);
        net.wire.assert_clean();
    }
}

// ---------------------------------------------------------------------------------------------
// Closing
// ---------------------------------------------------------------------------------------------

#[test]
fn close_notify_after_the_hand_off_closes_either_way() {
    for client_closes in [true, false] {
        let cipher = "PSK-AES128-CCM8";
        let (mut c, mut s) = pair(cipher, &compact_config());
        let mut net = Net::perfect(cipher, cipher);
        assert!(handshake(
            &mut c,
            &mut s,
            &mut net.link,
            Duration::from_secs(5)
        ));
        assert_flows(&mut net, &mut c, &mut s, cipher);
        let closer = if client_closes { &mut c } else { &mut s };
        closer.send(b"last words").unwrap();
        closer.close();
        assert!(matches!(closer.send(b"more"), Err(Error::Closed)));
        assert!(net.run(&mut c, &mut s, Duration::from_secs(5), |c, s| {
            if client_closes {
                s.closed_by_peer()
            } else {
                c.closed_by_peer()
            }
        }));
        let (closer, other) = if client_closes {
            (&mut c, &mut s)
        } else {
            (&mut s, &mut c)
        };
        assert_eq!(
            other.recv(&mut [0u8; 64]).unwrap(),
            Some(10),
            "data before close_notify"
        );
        assert!(matches!(other.recv(&mut [0u8; 64]), Err(Error::Closed)));
        assert!(matches!(other.send(b"x"), Err(Error::Closed)));
        assert!(!closer.closed_by_peer());
        assert!(closer.error().is_none() && other.error().is_none());
        assert_eq!(closer.poll_timeout(), None);
        net.wire.assert_clean();
    }
}

#[test]
fn close_notify_from_the_lingering_server_reaches_the_compact_client() {
    let cipher = "PSK-AES128-GCM-SHA256";
    let (mut c, mut s) = pair(cipher, &compact_config());
    let mut net = Net::perfect(cipher, cipher);
    assert!(handshake(
        &mut c,
        &mut s,
        &mut net.link,
        Duration::from_secs(5)
    ));
    assert!(s.is_lingering());
    s.close(); // SSL_shutdown, then the SSL goes
    assert!(s.ssl().is_none() && !s.is_lingering());
    assert!(net.run(&mut c, &mut s, Duration::from_secs(5), |c, _| c
        .closed_by_peer()));
    assert!(c.error().is_none() && s.error().is_none());
    net.wire.assert_clean();
}

#[test]
fn a_session_from_a_compact_connection_can_be_resumed() {
    // Same as the resumption tests above, but the first handshake runs in compact mode too.
    let (mut c, mut s) = resuming_pair("PSK-AES128-CCM8", true);
    let mut net = Net::perfect("resume after compact", "PSK-AES128-CCM8");
    assert!(handshake(
        &mut c,
        &mut s,
        &mut net.link,
        Duration::from_secs(5)
    ));
    assert!(
        c.is_lingering() && c.ssl().is_some_and(|ssl| ssl.session_reused()),
        "the session of a compact connection was not resumed (client compact: {})",
        c.is_compact()
    );
}

// ---------------------------------------------------------------------------------------------
// Property: no nonce reuse, at-most-once delivery, under loss, duplication and reordering
// ---------------------------------------------------------------------------------------------

/// What one chaotic connection did.
#[derive(Debug, Default)]
struct ChaosOutcome {
    delivered: usize,
    early_delivered: usize,
    replayed: u64,
    /// The client gave up because a very short linger ended first (see [`chaos`]).
    stranded: bool,
}

/// One connection from the handshake on through linger and hand-off, with sends both ways on a
/// seeded schedule over a link that loses, duplicates and reorders. Checks the wire for nonce
/// reuse and every delivery against what was sent.
fn chaos(cipher: &str, seed: u64) -> Result<ChaosOutcome, String> {
    let label = format!("{cipher} seed {seed}");
    let mut rng = Rng::new(seed ^ 0x5eed_c0de);
    let mut config = compact_config();
    config.retransmit_initial = Duration::from_millis(20);
    config.retransmit_max = Duration::from_millis(160);
    config.compact_linger = Duration::from_millis([20, 60, 10_000][rng.below(3) as usize]);
    let faults = Faults {
        drop: 0.05 + rng.below(20) as f64 / 100.0,
        duplicate: rng.below(25) as f64 / 100.0,
        reorder: rng.below(25) as f64 / 100.0,
        ..Faults::default()
    };
    let (mut c, mut s) = pair(cipher, &config);
    let mut net = Net::new(Link::new(seed, faults), Wire::new(&label, cipher));
    // A schedule of sends: (when, from the client?). The client starts late in some runs, so
    // that the linger ends by its deadline rather than by the client's first record.
    let start = Instant::now();
    let client_from = Duration::from_millis(rng.below(150));
    let mut schedule: Vec<(Duration, bool)> = (0..24)
        .map(|_| {
            let from_client = rng.chance(0.5);
            let at = Duration::from_millis(rng.below(150));
            (
                if from_client { at.max(client_from) } else { at },
                from_client,
            )
        })
        .collect();
    schedule.sort();
    let mut next = 0;
    // sent[0]: by the client, sent[1]: by the server.
    let mut sent: [HashSet<Vec<u8>>; 2] = [HashSet::new(), HashSet::new()];
    let mut early: HashSet<Vec<u8>> = HashSet::new();
    let mut delivered: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    let mut n = 0;
    let end = Duration::from_millis(200);
    let ok = net.run(&mut c, &mut s, Duration::from_secs(10), |c, s| {
        delivered[0].extend(recv_all(s));
        delivered[1].extend(recv_all(c));
        let now = start.elapsed();
        while next < schedule.len() && schedule[next].0 <= now {
            let from_client = schedule[next].1;
            let (tx, rx) = if from_client {
                (&mut *c, &*s)
            } else {
                (&mut *s, &*c)
            };
            if !tx.is_established() {
                break; // waits for the handshake
            }
            let msg = format!(
                "{label}: message {n} from the {}",
                if from_client { "client" } else { "server" }
            );
            let msg = msg.into_bytes();
            n += 1;
            tx.send(&msg).unwrap();
            if !rx.is_established() {
                early.insert(msg.clone());
            }
            sent[usize::from(!from_client)].insert(msg);
            next += 1;
        }
        next == schedule.len() && now >= end
    });
    let mut outcome = ChaosOutcome::default();
    if !ok {
        // The one acceptable failure: a linger far shorter than the client's retransmission
        // schedule ended (by its deadline) while the server's final flight was still being lost,
        // so the compact server dropped the client's retransmissions and the client gave up.
        let stranded = matches!(c.error(), Some(Error::Timeout { .. }))
            && s.is_compact()
            && s.error().is_none()
            && config.compact_linger < Duration::from_secs(1);
        if !stranded {
            return Err(format!(
                "{label}: chaos phase failed: client {:?} {:?}, server {:?} {:?} (linger {:?})",
                c.error(),
                c.state(),
                s.error(),
                s.state(),
                config.compact_linger
            ));
        }
        outcome.stranded = true;
    } else {
        // Then a clean link: the connection must still work, both sides handed off.
        net.link.faults = Faults::default();
        net.link.flush_held();
        final_messages(&label, &mut c, &mut s, &mut net, &mut sent, &mut delivered)?;
        if !(c.is_compact() && s.is_compact()) {
            return Err(format!("{label}: not both compact at the end"));
        }
    }
    if !net.wire.violations.is_empty() {
        return Err(format!("{:#?}", net.wire.violations));
    }
    for (side, (got, rx)) in delivered.iter().zip([&s, &c]).enumerate() {
        let mut unique = HashSet::new();
        for m in got {
            if !sent[side].contains(m) {
                return Err(format!(
                    "{label}: delivered but never sent: {:?}",
                    String::from_utf8_lossy(m)
                ));
            }
            if !unique.insert(m) {
                return Err(format!(
                    "{label}: delivered twice: {:?}",
                    String::from_utf8_lossy(m)
                ));
            }
            outcome.early_delivered += usize::from(early.contains(m));
        }
        if rx.stats().app_in != got.len() as u64 {
            return Err(format!(
                "{label}: app_in {} but {} delivered",
                rx.stats().app_in,
                got.len()
            ));
        }
        outcome.delivered += got.len();
        outcome.replayed += rx.stats().dropped_replayed_records;
    }
    Ok(outcome)
}

/// One message each way over a clean link; each must arrive.
fn final_messages(
    label: &str,
    c: &mut Session,
    s: &mut Session,
    net: &mut Net,
    sent: &mut [HashSet<Vec<u8>>; 2],
    delivered: &mut [Vec<Vec<u8>>; 2],
) -> Result<(), String> {
    let mut last = [Vec::new(), Vec::new()];
    for from_client in [true, false] {
        let msg = format!(
            "{label}: final from the {}",
            if from_client { "client" } else { "server" }
        )
        .into_bytes();
        let (tx, side) = if from_client {
            (&mut *c, 0)
        } else {
            (&mut *s, 1)
        };
        tx.send(&msg)
            .map_err(|e| format!("{label}: final send: {e}"))?;
        sent[side].insert(msg.clone());
        last[side] = msg;
        let ok = net.run(c, s, Duration::from_secs(5), |c, s| {
            delivered[0].extend(recv_all(s));
            delivered[1].extend(recv_all(c));
            delivered[side].contains(&last[side])
        });
        if !ok {
            return Err(format!(
                "{label}: the final message from side {side} was not delivered"
            ));
        }
    }
    Ok(())
}

#[test]
fn no_nonce_reuse_and_at_most_once_delivery_under_loss_duplication_and_reordering() {
    const SEEDS: u64 = 120;
    let jobs: Vec<(&str, u64)> = HAZARD_SUITES
        .iter()
        .flat_map(|&cipher| (0..SEEDS).map(move |seed| (cipher, seed)))
        .collect();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..24 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(cipher, seed)) = jobs.get(i) else {
                    break;
                };
                let r = chaos(cipher, seed);
                results.lock().unwrap().push((cipher, seed, r));
            });
        }
    });
    let results = results.into_inner().unwrap();
    assert_eq!(results.len(), jobs.len());
    let failures: Vec<&String> = results
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} runs failed: {failures:#?}",
        failures.len(),
        jobs.len()
    );
    for cipher in HAZARD_SUITES {
        let ok: Vec<&ChaosOutcome> = results
            .iter()
            .filter(|(c, _, _)| *c == cipher)
            .map(|(_, _, r)| r.as_ref().unwrap())
            .collect();
        let delivered: usize = ok.iter().map(|o| o.delivered).sum();
        let early: usize = ok.iter().map(|o| o.early_delivered).sum();
        let replayed: u64 = ok.iter().map(|o| o.replayed).sum();
        let stranded = ok.iter().filter(|o| o.stranded).count();
        eprintln!(
            "{cipher}: {delivered} delivered ({early} through the early buffer), \
             {replayed} replays dropped, {stranded} of {} clients stranded by a linger of 20 or 60 ms",
            ok.len()
        );
        assert!(
            stranded * 10 < ok.len(),
            "{cipher}: stranded clients stay rare"
        );
        assert!(
            delivered > ok.len() * 10,
            "{cipher}: most messages get through"
        );
        assert!(early > 0, "{cipher}: the early buffer was exercised");
        assert!(
            replayed > 0,
            "{cipher}: duplicates reached the replay window"
        );
    }
}

#[test]
fn the_wire_observer_catches_nonce_reuse() {
    // The checks above can fail: two different records under one sequence number, or one
    // explicit nonce, are reported.
    let record = |seq: u8, nonce: u8, body: u8| {
        let mut r = vec![
            APPLICATION_DATA,
            0xfe,
            0xfd,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            seq,
            0,
            17,
        ];
        r.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, nonce]);
        r.extend_from_slice(&[body; 9]);
        r
    };
    let mut wire = Wire::new("self-test", "PSK-AES128-GCM-SHA256");
    wire.observe(Dir::ToServer, &record(1, 1, 0));
    wire.observe(Dir::ToServer, &record(1, 1, 0)); // a duplicate: fine
    wire.observe(Dir::ToClient, &record(1, 1, 5)); // the other direction: other keys
    assert!(wire.violations.is_empty());
    wire.observe(Dir::ToServer, &record(1, 9, 1));
    assert_eq!(wire.violations.len(), 1, "same sequence, different record");
    wire.observe(Dir::ToServer, &record(2, 1, 2));
    assert_eq!(
        wire.violations.len(),
        2,
        "same explicit nonce, different record"
    );
    let mut alert = record(3, 3, 3);
    alert[0] = ALERT;
    wire.observe(Dir::ToServer, &alert);
    assert_eq!(wire.violations.len(), 2);
}
