//! Robustness under faults and attack, in process: a seeded faulty network between a server
//! [`Endpoint`] and client [`Session`]s (drop, delay, duplicate, reorder, MTU), replays, and
//! hostile datagrams from spoofed addresses, with assertions on outcomes (handshakes complete,
//! sessions survive, nothing amplifies, nothing leaks).
//!
//! Modelled on how DTLS stacks test themselves: mbedTLS's `udp_proxy` "3d" runs (drop, delay and
//! duplicate one datagram in five), OpenSSL's `dtlstest` (every datagram dropped in turn, replays
//! after the window moved), GnuTLS's "all orders of a flight" reordering test, and pion's
//! fuzzed-record and flood tests.
//!
//! Tests that measure RSS or count live `SSL` objects take [`harness::exclusive`] and run alone;
//! all others take [`harness::shared`] and run in parallel. The fuzz targets in `fuzz/`
//! (`scripts/fuzz.sh`) complement this suite with coverage-guided inputs.

mod support;

#[path = "robustness/craft.rs"]
mod craft;
#[path = "robustness/harness.rs"]
mod harness;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use openssl_dtls::{
    DropReason, DtlsClientContext, DtlsServerContext, Endpoint, EndpointConfig, Error, Event,
    PskCredentials, Session, SessionState,
};

use craft::{ClientHelloParts, Record};
use harness::{
    ccm8_pair, client_addr, exclusive, fast_client, fast_server, live_ssl_objects, ms, psk_client,
    psk_client_builder, psk_server, psk_server_builder, random_addr, rss_bytes, shared,
    slow_client, slow_server, Fate, Net, Packet, Wire, EXPECTED_PANIC,
};
use support::{Pki, Rng};

// ---------------------------------------------------------------------------------------------
// Certificates.

/// A server certificate signed through one intermediate, and a CA the client trusts: the
/// server's flight spans several datagrams at small MTUs.
struct Certs {
    pki: Pki,
    chain_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl Certs {
    fn new() -> Certs {
        let pki = Pki::new_ec();
        let key = support::ec_key(Nid::X9_62_PRIME256V1);
        let inter_key = support::ec_key(Nid::X9_62_PRIME256V1);
        let inter = Pki {
            ca_cert: intermediate(&pki, &inter_key),
            ca_key: inter_key,
        };
        let leaf = inter.leaf("server.test", &key);
        let mut chain_pem = leaf.to_pem().unwrap();
        chain_pem.extend(inter.ca_cert.to_pem().unwrap());
        Certs {
            pki,
            chain_pem,
            key_pem: key.private_key_to_pem_pkcs8().unwrap(),
        }
    }

    fn ca_pem(&self) -> Vec<u8> {
        self.pki.ca_cert.to_pem().unwrap()
    }

    fn server(&self, mtu: usize) -> DtlsServerContext {
        self.server_with(mtu, true)
    }

    fn client(&self, mtu: usize) -> DtlsClientContext {
        self.client_with(mtu, true)
    }

    /// With fast (lossy-link) or slow (lock-step) retransmission timers.
    fn server_with(&self, mtu: usize, fast: bool) -> DtlsServerContext {
        let mut b = DtlsServerContext::builder();
        b.certificate_chain_pem(&self.chain_pem)
            .private_key_pem(&self.key_pem)
            .mtu(mtu);
        if fast {
            fast_server(&mut b)
        } else {
            slow_server(&mut b)
        }
        .build()
        .unwrap()
    }

    fn client_with(&self, mtu: usize, fast: bool) -> DtlsClientContext {
        let mut b = DtlsClientContext::builder();
        // These tests are about loss, faults and limits, and their sessions carry no name:
        // the certificate's identity is not what they check.
        b.root_certificates_pem(&self.ca_pem())
            .mtu(mtu)
            .danger_skip_server_name_check();
        if fast {
            fast_client(&mut b)
        } else {
            slow_client(&mut b)
        }
        .build()
        .unwrap()
    }

    /// A client certificate for `cn`, signed by the CA, as (chain PEM, key PEM).
    fn client_cert(&self, cn: &str) -> (Vec<u8>, Vec<u8>) {
        let key = support::ec_key(Nid::X9_62_PRIME256V1);
        let leaf = self.pki.leaf(cn, &key);
        (
            leaf.to_pem().unwrap(),
            key.private_key_to_pem_pkcs8().unwrap(),
        )
    }
}

/// An intermediate CA certificate for `key`, signed by `pki`'s CA.
fn intermediate(pki: &Pki, key: &PKey<Private>) -> X509 {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::hash::MessageDigest;
    use openssl::x509::extension::{BasicConstraints, KeyUsage};
    use openssl::x509::{X509Builder, X509NameBuilder};
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text(
        "CN",
        "openssl-dtls robustness intermediate CA with a long name",
    )
    .unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(pki.ca_cert.subject_name()).unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .unwrap(),
    )
    .unwrap();
    b.sign(&pki.ca_key, MessageDigest::sha256()).unwrap();
    b.build()
}

fn roomy() -> EndpointConfig {
    let mut config = EndpointConfig::default();
    config.max_handshakes = 4096;
    config.max_handshakes_per_ip = 4096;
    config.handshake_memory = 4 << 30;
    config
}

/// Runs `work` for each seed on `threads` threads (the work is mostly waiting for timers).
fn par_seeds<T: Send>(
    seeds: std::ops::Range<u64>,
    threads: usize,
    work: impl Fn(u64) -> T + Sync,
) -> Vec<(u64, T)> {
    let seeds: Vec<u64> = seeds.collect();
    let chunk = seeds.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = seeds
            .chunks(chunk)
            .map(|chunk| {
                let work = &work;
                scope.spawn(move || chunk.iter().map(|&s| (s, work(s))).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

// ---------------------------------------------------------------------------------------------
// Fault injection.

/// mbedTLS's `udp_proxy drop=5 delay=5 duplicate=5`: each handshake datagram is dropped with
/// probability 1/5, else delayed (held back, at most 2 at once) with 1/5, else duplicated with
/// 1/5. Returns the failures.
fn three_d(
    server: &DtlsServerContext,
    client: &DtlsClientContext,
    seeds: std::ops::Range<u64>,
) -> (Vec<String>, [usize; 3]) {
    let results = par_seeds(seeds, 10, |seed| {
        let wire = Wire::new(seed, |_, _, rng| {
            if rng.below(5) == 0 {
                Fate::Drop
            } else if rng.below(5) == 0 {
                Fate::Delay
            } else if rng.below(5) == 0 {
                Fate::Duplicate
            } else {
                Fate::Deliver
            }
        });
        let mut net = Net::new(server.clone(), EndpointConfig::default(), wire);
        let c = net.connect(client, client_addr(seed as u32));
        let ok = net.handshake(c, Duration::from_secs(12));
        let faults = [net.wire.dropped, net.wire.delayed, net.wire.duplicated];
        if !ok {
            return (
                Some(format!(
                    "seed {seed}: client {:?} server events {:?}",
                    net.clients[c].session.error(),
                    net.events
                )),
                faults,
            );
        }
        // Afterwards, on a clean link, data flows both ways.
        net.wire.policy = Box::new(|_, _, _| Fate::Deliver);
        net.clients[c].session.send(b"after 3d").unwrap();
        net.server_send(c, b"reply").unwrap();
        let delivered = net.run_until(Duration::from_secs(2), |n| {
            !n.server_received.is_empty() && !n.clients[c].received.is_empty()
        });
        let failure = (!delivered).then(|| format!("seed {seed}: no data after the handshake"));
        (failure, faults)
    });
    let mut failures = Vec::new();
    let mut totals = [0; 3];
    for (_, (failure, faults)) in results {
        failures.extend(failure);
        for (t, f) in totals.iter_mut().zip(faults) {
            *t += f;
        }
    }
    (failures, totals)
}

#[test]
fn three_d_drop_delay_duplicate_one_in_five_handshake_datagrams_always_completes() {
    let _g = shared();
    let (psk_failures, psk_faults) = three_d(&psk_server(), &psk_client(), 0..120);
    let certs = Certs::new();
    let (cert_failures, cert_faults) = three_d(&certs.server(500), &certs.client(500), 0..60);
    assert!(
        psk_failures.is_empty() && cert_failures.is_empty(),
        "PSK: {psk_failures:?}\ncertificates at MTU 500: {cert_failures:?}"
    );
    for (name, faults) in [("PSK", psk_faults), ("certificates", cert_faults)] {
        assert!(
            faults.iter().all(|&f| f > 10),
            "{name}: the pattern did drop, delay and duplicate: {faults:?}"
        );
    }
}

/// Uniform loss `loss` on every datagram, both directions, for each seed: the handshake within
/// its deadline, then 30 messages each way. Returns (completed, failures, delivered messages).
fn uniform_loss(loss: f64, seeds: std::ops::Range<u64>) -> (usize, Vec<String>, usize) {
    let server = psk_server();
    let client = psk_client();
    let deadline = client.session_config().handshake_timeout;
    let results = par_seeds(seeds, 16, |seed| {
        let wire = Wire::new(seed, move |_, _, rng| {
            if rng.chance(loss) {
                Fate::Drop
            } else {
                Fate::Deliver
            }
        });
        let mut net = Net::new(server.clone(), EndpointConfig::default(), wire);
        let c = net.connect(&client, client_addr(seed as u32));
        let started = Instant::now();
        if !net.handshake(c, deadline + ms(500)) {
            return Err(format!(
                "seed {seed}: no handshake in {:?}: client {:?}",
                started.elapsed(),
                net.clients[c].session.error()
            ));
        }
        // Application data under the same loss: what arrives is a subset of what was sent,
        // intact, each message at most once.
        for i in 0..30u32 {
            let len = 16 + (seed as usize * 7 + i as usize * 13) % 900;
            net.clients[c]
                .session
                .send(&harness::message(seed, i, len))
                .unwrap();
            net.server_send(c, &harness::message(!seed, i, len))
                .unwrap();
            net.step(Instant::now());
        }
        net.settle();
        let mut problems = Vec::new();
        let mut delivered = 0;
        for (who, key, got) in [
            (
                "server",
                seed,
                net.server_received
                    .iter()
                    .map(|(_, d)| d.clone())
                    .collect::<Vec<_>>(),
            ),
            ("client", !seed, net.clients[c].received.clone()),
        ] {
            let mut seen = BTreeSet::new();
            for d in &got {
                match harness::check_message(key, d) {
                    Some(i) if i < 30 => {
                        if !seen.insert(i) {
                            problems.push(format!("{who} got message {i} twice"));
                        }
                    }
                    _ => problems.push(format!("{who} got a corrupt or unsent message")),
                }
            }
            delivered += seen.len();
        }
        if problems.is_empty() {
            Ok(delivered)
        } else {
            Err(format!("seed {seed}: {problems:?}"))
        }
    });
    let mut completed = 0;
    let mut failures = Vec::new();
    let mut delivered = 0;
    for (_, r) in results {
        match r {
            Ok(d) => {
                completed += 1;
                delivered += d;
            }
            Err(e) => failures.push(e),
        }
    }
    (completed, failures, delivered)
}

fn assert_loss(loss: f64, seeds: u64, min_complete: f64) {
    let (completed, failures, delivered) = uniform_loss(loss, 0..seeds);
    let ratio = completed as f64 / seeds as f64;
    // Failures of the data check (duplicates, corruption) are never tolerated.
    let bad_data: Vec<_> = failures
        .iter()
        .filter(|f| !f.contains("no handshake"))
        .collect();
    assert!(bad_data.is_empty(), "{bad_data:?}");
    assert!(
        ratio >= min_complete,
        "{:.0}% loss: {completed} of {seeds} handshakes completed ({:.1}%), want {:.0}%: {failures:?}",
        loss * 100.0,
        ratio * 100.0,
        min_complete * 100.0
    );
    eprintln!(
        "{:.0}% loss: {completed} of {seeds} handshakes completed, {delivered} messages delivered",
        loss * 100.0
    );
    if std::env::var_os("ROBUSTNESS_VERBOSE").is_some() {
        eprintln!("{failures:?}");
    }
    let expected = completed as f64 * 60.0 * (1.0 - loss);
    assert!(
        delivered as f64 > expected * 0.5,
        "{delivered} messages delivered, about {expected:.0} expected"
    );
}

#[test]
fn ten_percent_loss_completes_99_percent_and_delivers_a_clean_subset() {
    let _g = shared();
    assert_loss(0.10, 200, 0.99);
}

#[test]
fn twenty_percent_loss_completes_99_percent_and_delivers_a_clean_subset() {
    let _g = shared();
    assert_loss(0.20, 200, 0.99);
}

#[test]
fn fifty_percent_loss_completes_90_percent_and_delivers_a_clean_subset() {
    let _g = shared();
    assert_loss(0.50, 200, 0.90);
}

// ---------------------------------------------------------------------------------------------
// Lock-step driving: every datagram delivered at once, no timers.

/// Drains one side's output: the client's (`from_client`) or the server's.
fn drain(net: &mut Net, c: usize, from_client: bool) -> Vec<Packet> {
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::new();
    if from_client {
        let addr = net.clients[c].addr;
        while let Some(n) = net.clients[c].session.poll_transmit(&mut buf) {
            out.push(Packet {
                from: addr,
                to: net.addr,
                data: buf[..n].to_vec(),
            });
        }
    } else {
        while let Some((to, n)) = net.server.poll_transmit(&mut buf) {
            out.push(Packet {
                from: net.addr,
                to,
                data: buf[..n].to_vec(),
            });
        }
    }
    out
}

/// Runs client `c`'s handshake in lock step: each batch (everything one side emits before the
/// other side is given anything) is delivered at once, batch `shuffle.0` in the order
/// `shuffle.1`. Returns the batches (as sent) and whether both sides are established, without
/// any retransmission timer having run.
fn lockstep(
    net: &mut Net,
    c: usize,
    shuffle: Option<(usize, &[usize])>,
) -> (Vec<Vec<Packet>>, bool) {
    let now = Instant::now();
    let mut batches = Vec::new();
    for batch in 0..16 {
        let mut out = drain(net, c, batch % 2 == 0);
        batches.push(out.clone());
        if let Some((k, order)) = shuffle {
            if k == batch {
                assert_eq!(
                    order.len(),
                    out.len(),
                    "batch {batch} has {} datagrams",
                    out.len()
                );
                out = order.iter().map(|&i| out[i].clone()).collect();
            }
        }
        for p in &out {
            net.deliver(now, p);
        }
        net.drain_events();
        if net.established(c) && batches.len() >= 2 && out.is_empty() {
            batches.pop();
            return (batches, true);
        }
    }
    (batches, net.established(c))
}

/// Every permutation of `0..n` (Heap's algorithm).
fn permutations(n: usize) -> Vec<Vec<usize>> {
    fn heap(k: usize, a: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if k <= 1 {
            out.push(a.clone());
            return;
        }
        for i in 0..k {
            heap(k - 1, a, out);
            let j = if k % 2 == 0 { i } else { 0 };
            a.swap(j, k - 1);
        }
    }
    let mut out = Vec::new();
    heap(n, &mut (0..n).collect(), &mut out);
    out
}

fn mutual_contexts(
    certs: &Certs,
    mtu: usize,
    fast: bool,
) -> (DtlsServerContext, DtlsClientContext) {
    let (chain, key) = certs.client_cert("client.test");
    let mut sb = DtlsServerContext::builder();
    sb.certificate_chain_pem(&certs.chain_pem)
        .private_key_pem(&certs.key_pem)
        .mtu(mtu)
        .client_auth(openssl_dtls::ClientAuth::Require)
        .root_certificates_pem(&certs.ca_pem());
    let mut cb = DtlsClientContext::builder();
    cb.root_certificates_pem(&certs.ca_pem())
        .certificate_chain_pem(&chain)
        .private_key_pem(&key)
        .mtu(mtu)
        .danger_skip_server_name_check();
    if fast {
        (
            fast_server(&mut sb).build().unwrap(),
            fast_client(&mut cb).build().unwrap(),
        )
    } else {
        (
            slow_server(&mut sb).build().unwrap(),
            slow_client(&mut cb).build().unwrap(),
        )
    }
}

/// Whether `order` puts a datagram with a ChangeCipherSpec ahead of one with an epoch-0
/// handshake message of the same flight. OpenSSL cannot buffer a CCS that arrives before the
/// messages preceding it (DTLS 1.2 gives it no message sequence number), so it drops it and the
/// flight completes only when retransmitted.
fn ccs_early(flight: &[Packet], order: &[usize]) -> bool {
    let has = |i: usize, pred: &dyn Fn(&Record) -> bool| {
        craft::parse(&flight[i].data).is_some_and(|rs| rs.iter().any(pred))
    };
    order.iter().enumerate().any(|(pos, &i)| {
        has(i, &|r| r.content_type == craft::CHANGE_CIPHER_SPEC)
            && order[pos + 1..]
                .iter()
                .any(|&j| has(j, &|r| r.handshake_type().is_some()))
    })
}

/// For each flight of several datagrams, every order of its datagrams: the handshake completes
/// in lock step with no retransmission, unless the order puts the ChangeCipherSpec early, when
/// it completes after one. Returns (flight sizes, handshakes run, orders that needed a
/// retransmission).
fn every_order(
    server: &DtlsServerContext,
    client: &DtlsClientContext,
) -> (Vec<usize>, usize, usize) {
    let mut net = Net::new(server.clone(), roomy(), Wire::perfect());
    let c = net.connect(client, client_addr(1));
    let (batches, ok) = lockstep(&mut net, c, None);
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert!(ok, "the clean lock-step handshake completes: {sizes:?}");
    let mut runs = 0;
    let mut retransmitted = 0;
    for (batch, flight) in batches.iter().enumerate() {
        if flight.len() < 2 {
            continue;
        }
        for order in permutations(flight.len()) {
            let mut net = Net::new(server.clone(), roomy(), Wire::perfect());
            let c = net.connect(client, client_addr(1));
            let (got, ok) = lockstep(&mut net, c, Some((batch, &order)));
            runs += 1;
            if ccs_early(flight, &order) {
                if !ok {
                    retransmitted += 1;
                }
                assert!(
                    ok || net.handshake(c, Duration::from_secs(5)),
                    "flight {batch} in order {order:?}: not established after retransmission: \
                     client {:?}",
                    net.clients[c].session.error()
                );
            } else {
                assert!(
                    ok && net.clients[c].session.stats().retransmits == 0,
                    "flight {batch} in order {order:?}: not established without retransmission \
                     (batches {:?}; client {:?})",
                    got.iter().map(Vec::len).collect::<Vec<_>>(),
                    net.clients[c].session.error()
                );
            }
        }
    }
    (sizes, runs, retransmitted)
}

#[test]
fn every_order_of_each_flights_datagrams_completes_and_only_an_early_ccs_needs_a_retransmission() {
    let _g = shared();
    let certs = Certs::new();
    // Server authentication at MTU 500: the certificate flight spans several datagrams.
    let (sizes, runs, _) = every_order(
        &certs.server_with(500, false),
        &certs.client_with(500, false),
    );
    assert!(
        sizes.iter().any(|&n| n >= 3),
        "the certificate flight at MTU 500 spans several datagrams: {sizes:?}"
    );
    assert!(runs >= 6);
    // Mutual authentication at MTU 300: both certificate flights and the final one fragment.
    let (server, client) = mutual_contexts(&certs, 300, false);
    let (sizes, runs, retransmitted) = every_order(&server, &client);
    assert!(
        sizes.iter().filter(|&&n| n >= 3).count() >= 2,
        "several multi-datagram flights: {sizes:?}"
    );
    assert!(runs >= 120, "{runs} orders tried");
    eprintln!("mutual authentication at MTU 300: flights {sizes:?}, {runs} orders, {retransmitted} needed a retransmission");
    assert!(
        retransmitted > 0 && retransmitted < runs / 2,
        "{retransmitted} of {runs}"
    );
}

/// Sends `msg` from client `c` and runs until the server has it.
fn client_to_server(net: &mut Net, c: usize, msg: &[u8]) -> bool {
    let before = net.server_received.len();
    net.clients[c].session.send(msg).unwrap();
    net.run_until(Duration::from_secs(2), |n| n.server_received.len() > before)
}

/// Sends `msg` from the server to client `c` and runs until the client has it.
fn server_to_client(net: &mut Net, c: usize, msg: &[u8]) -> bool {
    let before = net.clients[c].received.len();
    net.server_send(c, msg).unwrap();
    net.run_until(Duration::from_secs(2), |n| {
        n.clients[c].received.len() > before
    })
}

#[test]
fn every_datagram_fits_the_mtu_at_256_512_1200_and_1500_and_handshakes_complete() {
    let _g = shared();
    let certs = Certs::new();
    for mtu in [256, 512, 1200, 1500] {
        let psk = (
            psk_server_builder().mtu(mtu).build().unwrap(),
            psk_client_builder().mtu(mtu).build().unwrap(),
        );
        let cert = (certs.server(mtu), certs.client(mtu));
        let mutual = mutual_contexts(&certs, mtu, true);
        for (kind, (server, client)) in [("PSK", psk), ("certificate", cert), ("mutual", mutual)] {
            let mut wire = Wire::perfect();
            wire.mtu = mtu;
            let mut net = Net::new(server, roomy(), wire);
            let c = net.connect(&client, client_addr(1));
            assert!(
                net.handshake(c, Duration::from_secs(5)),
                "{kind} at MTU {mtu}: client {:?}, events {:?}",
                net.clients[c].session.error(),
                net.events
            );
            // Application data at the largest size each side allows, both ways.
            let max = net.clients[c].session.data_mtu();
            assert!(max > 0 && max < mtu, "{kind} at MTU {mtu}: data MTU {max}");
            let big = vec![0x5A; max];
            assert!(client_to_server(&mut net, c, &big), "{kind} at MTU {mtu}");
            assert!(server_to_client(&mut net, c, &big), "{kind} at MTU {mtu}");
            assert!(matches!(
                net.clients[c].session.send(&vec![0; max + 1]),
                Err(Error::PayloadTooLarge { .. })
            ));
            assert_eq!(
                net.wire.oversized, 0,
                "{kind} at MTU {mtu}: largest datagram {}",
                net.wire.largest
            );
            assert!(net.wire.largest <= mtu);
            assert!(
                net.wire.largest > mtu * 3 / 4 || mtu > 1000,
                "{kind} at MTU {mtu}: the MTU was actually used (largest {})",
                net.wire.largest
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Replays.

/// The application-data datagrams client `c` sent, in order.
fn app_datagrams(net: &Net, from: SocketAddr) -> Vec<Packet> {
    net.wire
        .captured
        .iter()
        .filter(|p| p.from == from)
        .filter(|p| {
            craft::parse(&p.data)
                .is_some_and(|rs| rs.iter().all(|r| r.content_type == craft::APPLICATION_DATA))
        })
        .cloned()
        .collect()
}

#[test]
fn replayed_records_are_dropped_immediately_after_the_window_moved_and_after_the_epoch_change() {
    let _g = shared();
    // A short handshake deadline: the replayed ClientHello below starts a replacement handshake
    // (RFC 6347 §4.2.8: the address must be proven again) that can never complete.
    let server = psk_server_builder()
        .handshake_timeout(ms(800))
        .build()
        .unwrap();
    let mut wire = Wire::perfect();
    wire.capture = true;
    let mut net = Net::new(server, roomy(), wire);
    let c = net.connect(&psk_client(), client_addr(7));
    let addr = net.clients[c].addr;
    assert!(net.handshake(c, Duration::from_secs(5)));
    let id = net.server.connection_id(addr).unwrap();
    let seed = 77;
    let mut sent = 0u32;
    let mut send_n = |net: &mut Net, n: u32| {
        for _ in 0..n {
            assert!(client_to_server(net, c, &harness::message(seed, sent, 64)));
            sent += 1;
        }
    };
    send_n(&mut net, 10);
    let app = app_datagrams(&net, addr);
    assert_eq!(app.len(), 10);
    let now = Instant::now();

    // Immediately: the last record again, three times.
    for _ in 0..3 {
        net.deliver(now, &app[9]);
    }
    net.settle();
    assert_eq!(
        net.server_received.len(),
        10,
        "an immediate replay is dropped"
    );

    // After the window moved: 100 more records, then the oldest (outside the 64-record window)
    // and a recent one (inside it, already seen).
    send_n(&mut net, 100);
    let app = app_datagrams(&net, addr);
    for p in [&app[0], &app[5], &app[100], &app[109]] {
        net.deliver(now, p);
    }
    net.settle();
    assert_eq!(
        net.server_received.len(),
        110,
        "old and in-window replays are dropped"
    );

    // After the epoch change: every epoch-0 handshake datagram of the handshake, both ways.
    let handshake: Vec<Packet> = net
        .wire
        .captured
        .iter()
        .filter(|p| craft::parse(&p.data).is_some_and(|rs| rs[0].epoch == 0))
        .cloned()
        .collect();
    assert!(
        handshake.len() >= 6,
        "{} handshake datagrams",
        handshake.len()
    );
    for p in &handshake {
        net.deliver(now, p);
    }
    net.settle();
    assert!(net.clients[c].session.is_established());
    assert_eq!(net.server.connection_id(addr), Some(id), "same connection");
    assert!(net.server.session(addr, id).unwrap().is_established());
    // The replayed ClientHello carried a valid cookie: it started a replacement handshake that
    // cannot complete; at its deadline it is reaped and the connection is untouched.
    std::thread::sleep(ms(900));
    net.run_until(ms(300), |_| false);
    let stats = net.server.stats();
    assert_eq!(stats.connections_replaced, 0, "{stats:?}");
    assert_eq!(stats.connections, 1);
    assert!(net.closed(addr).is_empty(), "{:?}", net.events);

    // Fresh data both ways, each exactly once; nothing replayed was ever delivered twice.
    send_n(&mut net, 5);
    assert!(server_to_client(&mut net, c, b"still here"));
    let mut got: Vec<u32> = net
        .server_received
        .iter()
        .map(|(_, d)| harness::check_message(seed, d).expect("intact"))
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (0..sent).collect::<Vec<_>>(),
        "every message exactly once"
    );
}

// ---------------------------------------------------------------------------------------------
// Driving an endpoint by hand, with a clock of our own (the cookie keys and handshake deadlines
// follow the `now` passed in).

/// Runs the cookie exchange for `client` at `addr`: ClientHello in, HelloVerifyRequest out,
/// back to the client. Returns the client's ClientHello with the cookie, not yet delivered.
fn hello_with_cookie(
    ep: &mut Endpoint,
    now: Instant,
    addr: SocketAddr,
    client: &mut Session,
) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let n = client.poll_transmit(&mut buf).expect("a ClientHello");
    ep.handle_datagram(now, addr, &buf[..n]);
    let hvr = expect_hello_verify_request(ep, addr);
    client.handle_datagram(now, &hvr);
    // OpenSSL's retransmission timer runs on the real clock, and these clients retransmit fast:
    // on a loaded machine the first ClientHello may be re-sent before the one with the cookie.
    // The cookie-bearing one comes last.
    let mut last = None;
    while let Some(n) = client.poll_transmit(&mut buf) {
        last = Some(buf[..n].to_vec());
    }
    last.expect("a ClientHello with the cookie")
}

/// The one datagram the endpoint sends next: a HelloVerifyRequest to `to`.
fn expect_hello_verify_request(ep: &mut Endpoint, to: SocketAddr) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let (dest, n) = ep.poll_transmit(&mut buf).expect("a HelloVerifyRequest");
    assert_eq!(dest, to);
    assert_eq!(
        (buf[0], buf[13]),
        (craft::HANDSHAKE, craft::HELLO_VERIFY_REQUEST)
    );
    assert!(ep.poll_transmit(&mut buf).is_none(), "exactly one reply");
    buf[..n].to_vec()
}

/// Moves datagrams between `ep` and `clients` until nothing moves; returns how many moved.
fn pump(ep: &mut Endpoint, now: Instant, clients: &mut [(SocketAddr, Session)]) -> usize {
    let mut buf = vec![0u8; 65_536];
    let mut total = 0;
    loop {
        let mut moved = 0;
        for (addr, s) in clients.iter_mut() {
            while let Some(n) = s.poll_transmit(&mut buf) {
                ep.handle_datagram(now, *addr, &buf[..n]);
                moved += 1;
            }
        }
        while let Some((to, n)) = ep.poll_transmit(&mut buf) {
            if let Some((_, s)) = clients.iter_mut().find(|(a, _)| *a == to) {
                s.handle_datagram(now, &buf[..n]);
            }
            moved += 1;
        }
        if moved == 0 {
            return total;
        }
        total += moved;
    }
}

/// Whether `ep` has an established connection with `addr`.
fn server_established(ep: &Endpoint, addr: SocketAddr) -> bool {
    ep.connection_id(addr)
        .and_then(|id| ep.session(addr, id))
        .is_some_and(Session::is_established)
}

/// Real ClientHellos (no cookie) from the library's client contexts, as templates.
fn real_client_hellos() -> Vec<Vec<u8>> {
    let certs = Certs::new();
    let mut out = Vec::new();
    for ctx in [psk_client(), certs.client(1200), ccm8_pair().1] {
        let mut s = ctx.new_session(None, Instant::now()).unwrap();
        let mut buf = [0u8; 2048];
        let n = s.poll_transmit(&mut buf).unwrap();
        out.push(buf[..n].to_vec());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Attacks before the cookie.

#[test]
fn a_flood_of_100k_spoofed_client_hellos_never_amplifies_allocates_or_retransmits() {
    let _g = exclusive();
    let ssl_before = live_ssl_objects();
    let mut ep = Endpoint::server(psk_server(), EndpointConfig::default()).unwrap();
    let templates: Vec<ClientHelloParts> = real_client_hellos()
        .iter()
        .map(|d| ClientHelloParts::parse(d).expect("a real ClientHello parses"))
        .collect();
    let mut rng = Rng::new(0xF100D);
    let mut buf = vec![0u8; 65_536];
    let now = Instant::now();
    let (mut bytes_in, mut bytes_out, mut replies, mut with_cookie) = (0usize, 0usize, 0, 0);
    let mut flood = |ep: &mut Endpoint, n: usize, rng: &mut Rng| {
        for _ in 0..n {
            let size = craft::MIN_CLIENT_HELLO + rng.below(1200 - 67 + 1) as usize;
            let mut parts = if rng.chance(0.3) {
                ClientHelloParts::minimal(rng)
            } else {
                let mut p = templates[rng.below(templates.len() as u64) as usize].clone();
                p.random.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
                p
            };
            match rng.below(6) {
                0 => parts.cookie = craft::random_bytes(rng, 32),
                1 => {
                    let len = 1 + rng.below(255) as usize;
                    parts.cookie = craft::random_bytes(rng, len);
                }
                2 => {
                    let len = rng.below(33) as usize;
                    parts.session_id = craft::random_bytes(rng, len);
                }
                _ => {}
            }
            let datagram = parts
                .to_datagram_of_size(size)
                .or_else(|| {
                    // Too long for this size: the minimal form with the same cookie, or none.
                    let mut small = ClientHelloParts::minimal(rng);
                    small.cookie = parts.cookie.clone();
                    small.to_datagram_of_size(size).or_else(|| {
                        small.cookie.clear();
                        small.to_datagram_of_size(size)
                    })
                })
                .expect("every size from 67 bytes has a ClientHello");
            assert_eq!(datagram.len(), size);
            with_cookie += usize::from(!parts.cookie.is_empty());
            let peer = random_addr(rng);
            ep.handle_datagram(now, peer, &datagram);
            let mut out = 0;
            while let Some((to, m)) = ep.poll_transmit(&mut buf) {
                assert_eq!(to, peer, "replies go only to the sender");
                assert_eq!(buf[13], craft::HELLO_VERIFY_REQUEST);
                out += m;
                replies += 1;
            }
            assert!(
                out <= datagram.len(),
                "{out} bytes out for a {}-byte ClientHello",
                datagram.len()
            );
            assert!(ep.is_empty(), "no state before the cookie");
            bytes_in += datagram.len();
            bytes_out += out;
        }
    };
    // Warm up (allocator arenas, the listener's buffers), then measure.
    flood(&mut ep, 2_000, &mut rng);
    let rss_before = rss_bytes();
    let started = Instant::now();
    flood(&mut ep, 100_000, &mut rng);
    let elapsed = started.elapsed();
    let growth = rss_bytes().saturating_sub(rss_before);

    let stats = ep.stats();
    assert_eq!((stats.connections, stats.handshakes), (0, 0), "{stats:?}");
    assert_eq!(
        live_ssl_objects() - ssl_before,
        1,
        "only the listening SSL exists"
    );
    assert!(
        replies > 90_000,
        "most ClientHellos are answered: {replies} of 102,000 ({stats:?})"
    );
    assert!(stats.cookies_rejected > 0 && with_cookie > 0);
    assert!(
        bytes_out < bytes_in / 4,
        "{bytes_out} out for {bytes_in} in"
    );
    // No HelloVerifyRequest is ever retransmitted: no timer, nothing more to send.
    assert_eq!(ep.poll_timeout(), None);
    ep.handle_timeout(now + Duration::from_secs(600));
    assert!(ep.poll_transmit(&mut buf).is_none());
    assert!(
        growth < 4 << 20,
        "RSS grew by {growth} bytes over 100,000 ClientHellos"
    );
    eprintln!(
        "pre-cookie flood: 100,000 ClientHellos in {elapsed:?}, {bytes_in} bytes in, \
         {bytes_out} out, RSS growth {growth} bytes"
    );
    drop(ep);
    assert_eq!(live_ssl_objects(), ssl_before);
}

/// Completes the handshake of `client` (whose ClientHello with cookie `hello` is accepted at
/// `now`) in lock step; returns whether both sides are established.
fn finish_handshake(
    ep: &mut Endpoint,
    now: Instant,
    addr: SocketAddr,
    client: Session,
    hello: &[u8],
) -> bool {
    ep.handle_datagram(now, addr, hello);
    let mut clients = [(addr, client)];
    pump(ep, now, &mut clients);
    clients[0].1.is_established() && server_established(ep, addr)
}

/// A client whose ClientHellos each meet a fresh stateless listener (a retransmission after a
/// refusal, a restart) must not see the server's record numbers repeat: GnuTLS discards a
/// refusal alert numbered like one it already saw. OpenSSL 3.0 numbers the server's epoch-0
/// records from the accepted ClientHello's record number; 3.2 and later from 1, which the
/// library shifts to match (`BioState::write`).
#[test]
fn the_servers_epoch0_records_continue_from_the_accepted_client_hellos_record_number() {
    let _g = shared();
    let (server, client) = ccm8_pair();
    let mut ep = Endpoint::server(server, EndpointConfig::default()).unwrap();
    let now = Instant::now();
    let addr = client_addr(1);
    let mut session = client.new_session(None, now).unwrap();
    let mut hello = hello_with_cookie(&mut ep, now, addr, &mut session);
    // As if the cookie-bearing ClientHello were the client's ninth (record number 9).
    hello[5..11].copy_from_slice(&9u64.to_be_bytes()[2..]);
    ep.handle_datagram(now, addr, &hello);
    let mut buf = vec![0u8; 65_536];
    let mut numbers = Vec::new();
    let mut flight = Vec::new();
    while let Some((to, n)) = ep.poll_transmit(&mut buf) {
        assert_eq!(to, addr);
        let records = craft::parse(&buf[..n]).expect("records");
        numbers.extend(records.iter().filter(|r| r.epoch == 0).map(|r| r.seq));
        flight.push(buf[..n].to_vec());
    }
    assert!(!numbers.is_empty());
    assert_eq!(
        numbers,
        (9..9 + numbers.len() as u64).collect::<Vec<_>>(),
        "the server's flight"
    );
    // The handshake completes with the renumbered flight.
    for d in &flight {
        session.handle_datagram(now, d);
    }
    let mut clients = [(addr, session)];
    pump(&mut ep, now, &mut clients);
    assert!(clients[0].1.is_established() && server_established(&ep, addr));
}

#[test]
fn a_bad_cookie_or_one_echoed_from_another_address_or_port_gets_a_new_hello_verify_request() {
    let _g = shared();
    let (server, client) = ccm8_pair();
    let mut ep = Endpoint::server(server, EndpointConfig::default()).unwrap();
    let now = Instant::now();
    let addr = client_addr(1);
    let mut session = client.new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, addr, &mut session);
    let parts = ClientHelloParts::parse(&hello).unwrap();
    assert_eq!(parts.cookie.len(), 32);
    let mut bad = Vec::new();
    for (i, mask) in [(0, 0x01), (15, 0x80), (31, 0xFF)] {
        let mut p = parts.clone();
        p.cookie[i] ^= mask;
        bad.push(p);
    }
    for cookie in [
        vec![0; 32],
        parts.cookie[..31].to_vec(),
        [&parts.cookie[..], &[0]].concat(),
    ] {
        let mut p = parts.clone();
        p.cookie = cookie;
        bad.push(p);
    }
    for p in &bad {
        ep.handle_datagram(now, addr, &p.to_datagram());
        expect_hello_verify_request(&mut ep, addr);
        assert!(ep.is_empty(), "a bad cookie creates no session");
    }
    // The genuine cookie, echoed from another port, another address, another family.
    let others = [
        SocketAddr::new(addr.ip(), addr.port() + 1),
        SocketAddr::new(harness::v4(10, 9, 9, 9, 0).ip(), addr.port()),
        "[2001:db8::1]:40001".parse().unwrap(),
    ];
    for other in others {
        ep.handle_datagram(now, other, &hello);
        expect_hello_verify_request(&mut ep, other);
        assert!(
            ep.is_empty(),
            "a cookie for {addr} creates no session for {other}"
        );
    }
    let stats = ep.stats();
    assert_eq!(stats.cookies_rejected, (bad.len() + others.len()) as u64);
    assert_eq!(
        stats.hello_verify_requests,
        (1 + bad.len() + others.len()) as u64
    );
    // From its own address it is accepted, and the handshake completes.
    assert!(finish_handshake(&mut ep, now, addr, session, &hello));
    assert_eq!(ep.len(), 1);
}

#[test]
fn a_cookie_is_accepted_across_one_rotation_and_not_after_two() {
    let _g = shared();
    let builder = || {
        let mut b = psk_server_builder();
        b.ciphers("PSK-AES128-CCM8");
        b
    };
    // The builder refuses a rotation under its one-second minimum.
    assert!(builder().cookie_secret_rotation(ms(999)).build().is_err());
    let client = ccm8_pair().1;
    let rotation = Duration::from_secs(1);
    let addr = client_addr(2);

    // Issued at t0, echoed after one rotation: the previous key still verifies it.
    let mut ep = Endpoint::server(
        builder().cookie_secret_rotation(rotation).build().unwrap(),
        EndpointConfig::default(),
    )
    .unwrap();
    let t0 = Instant::now();
    let mut session = client.new_session(None, t0).unwrap();
    let hello = hello_with_cookie(&mut ep, t0, addr, &mut session);
    let later = t0 + rotation + rotation / 2;
    assert!(finish_handshake(&mut ep, later, addr, session, &hello));
    assert_eq!(ep.stats().cookies_rejected, 0);

    // Echoed after two rotations: both keys are new, so a fresh HelloVerifyRequest and no
    // session. (An OpenSSL client cannot answer it: the server's HelloVerifyRequests all carry
    // message_seq 0, which the client has consumed; it starts over with a new session.)
    let mut ep = Endpoint::server(
        builder().cookie_secret_rotation(rotation).build().unwrap(),
        EndpointConfig::default(),
    )
    .unwrap();
    let t0 = Instant::now();
    let mut session = client.new_session(None, t0).unwrap();
    let hello = hello_with_cookie(&mut ep, t0, addr, &mut session);
    let much_later = t0 + 2 * rotation + rotation / 2;
    ep.handle_datagram(much_later, addr, &hello);
    expect_hello_verify_request(&mut ep, addr);
    assert!(ep.is_empty());
    assert_eq!(ep.stats().cookies_rejected, 1);
    let mut again = client.new_session(None, much_later).unwrap();
    let fresh = hello_with_cookie(&mut ep, much_later, addr, &mut again);
    assert_ne!(
        ClientHelloParts::parse(&fresh).unwrap().cookie,
        ClientHelloParts::parse(&hello).unwrap().cookie
    );
    assert!(finish_handshake(&mut ep, much_later, addr, again, &fresh));
}

/// Application data the endpoint received, per its `Readable` events (other events dropped).
fn server_recv_all(ep: &mut Endpoint) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while let Some(e) = ep.poll_event() {
        if let Event::Readable { peer, id } = e {
            while let Ok(Some(n)) = ep.recv(peer, id, &mut buf) {
                out.push((peer, buf[..n].to_vec()));
            }
        }
    }
    out
}

/// Hostile datagrams built around `real`, a genuine epoch-1 application record of the live
/// session: (category, datagram).
fn garbage_for(real: &[u8], rng: &mut Rng) -> Vec<(&'static str, Vec<u8>)> {
    let r = &craft::parse(real).unwrap()[0];
    assert_eq!((r.content_type, r.epoch), (craft::APPLICATION_DATA, 1));
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut seq = r.seq + 1_000;
    let mut fresh = || {
        seq += 1;
        seq
    };
    out.push(("empty", Vec::new()));
    for _ in 0..300 {
        let len = 1 + rng.below(1400) as usize;
        out.push(("random", craft::random_bytes(rng, len)));
    }
    for k in 1..real.len() {
        out.push(("truncated", real[..k].to_vec()));
    }
    for version in [0xFEFCu16, 0x0303, 0x0000, 0xFFFF, 0xFEFE] {
        let mut d = real.to_vec();
        d[1..3].copy_from_slice(&version.to_be_bytes());
        out.push(("wrong version", d));
    }
    for t in [0u8, 1, 19, 24, 25, 26, 127, 255] {
        let mut d = real.to_vec();
        d[0] = t;
        out.push(("wrong type", d));
    }
    for i in 0..300 {
        let mut rec = r.clone();
        rec.seq = fresh();
        if i % 3 != 0 {
            let at = rng.below(rec.fragment.len() as u64) as usize;
            rec.fragment[at] ^= 1 << rng.below(8);
        }
        out.push(("bad MAC", rec.to_bytes()));
    }
    // Shorter than explicit nonce plus tag (8 + 16 for GCM, 8 + 8 for CCM8, 0 + 16 for ChaCha).
    for len in 0..=24 {
        for _ in 0..4 {
            let body = craft::random_bytes(rng, len);
            out.push((
                "short AEAD",
                craft::record(craft::APPLICATION_DATA, craft::DTLS1_2, 1, fresh(), &body),
            ));
        }
    }
    for _ in 0..50 {
        let epoch = 2 + rng.below(u64::from(u16::MAX) - 1) as u16;
        let len = rng.below(200) as usize;
        let body = craft::random_bytes(rng, len);
        out.push((
            "future epoch",
            craft::record(
                craft::APPLICATION_DATA,
                craft::DTLS1_2,
                epoch,
                fresh(),
                &body,
            ),
        ));
    }
    for _ in 0..10 {
        let finished = craft::handshake(craft::FINISHED, 12, 3, 0, &[0x42; 12]);
        for (t, body) in [
            (craft::APPLICATION_DATA, b"plaintext".to_vec()),
            (craft::HANDSHAKE, finished),
            (craft::CHANGE_CIPHER_SPEC, vec![1]),
            (craft::ALERT, vec![2, 40]),
        ] {
            out.push((
                "epoch 0",
                craft::record(t, craft::DTLS1_2, 0, fresh(), &body),
            ));
        }
    }
    for _ in 0..20 {
        let mut bad = r.clone();
        bad.seq = fresh();
        bad.fragment[0] ^= 0xFF;
        let mut d = bad.to_bytes();
        bad.seq = fresh();
        d.extend(bad.to_bytes());
        out.push(("two bad records", d));
        let mut d = real.to_vec();
        d.extend_from_slice(&real[..10]);
        out.push(("record and a partial one", d));
    }
    // A length past the end of the datagram, and past the 2^14 + 2048 maximum.
    let mut d = craft::record(
        craft::APPLICATION_DATA,
        craft::DTLS1_2,
        1,
        fresh(),
        &[0; 40],
    );
    d[11..13].copy_from_slice(&0xFFFFu16.to_be_bytes());
    out.push(("length past the end", d));
    let mut d = craft::record(
        craft::APPLICATION_DATA,
        craft::DTLS1_2,
        1,
        fresh(),
        &[0; 40],
    );
    d[11..13].copy_from_slice(&18_433u16.to_be_bytes());
    out.push(("oversized length", d));
    // Spoofed ClientHellos from the peer's own address (a reboot, as far as anyone can tell).
    for i in 0..10 {
        let mut p = ClientHelloParts::minimal(rng);
        if i % 2 == 1 {
            p.cookie = craft::random_bytes(rng, 32);
        }
        out.push(("ClientHello", p.to_datagram_of_size(200).unwrap()));
    }
    out
}

#[test]
fn a_garbage_flood_at_the_live_peers_address_is_counted_and_the_session_survives() {
    let _g = shared();
    let mut rng = Rng::new(0x6A7BA6E);
    for cipher in [
        "PSK-AES128-CCM8",
        "PSK-AES128-GCM-SHA256",
        "ECDHE-PSK-CHACHA20-POLY1305",
    ] {
        let client = psk_client_builder().ciphers(cipher).build().unwrap();
        let mut ep = Endpoint::server(psk_server(), EndpointConfig::default()).unwrap();
        let now = Instant::now();
        let addr = client_addr(3);
        let mut session = client.new_session(None, now).unwrap();
        let hello = hello_with_cookie(&mut ep, now, addr, &mut session);
        ep.handle_datagram(now, addr, &hello);
        let mut clients = [(addr, session)];
        pump(&mut ep, now, &mut clients);
        assert!(server_established(&ep, addr), "{cipher}");
        let id = ep.connection_id(addr).unwrap();
        assert_eq!(ep.session(addr, id).unwrap().cipher(), Some(cipher));
        // A genuine record to mutate.
        clients[0].1.send(b"a genuine record").unwrap();
        let mut buf = vec![0u8; 2048];
        let n = clients[0].1.poll_transmit(&mut buf).unwrap();
        let real = buf[..n].to_vec();
        ep.handle_datagram(now, addr, &real);
        let mut got = server_recv_all(&mut ep);

        let garbage = garbage_for(&real, &mut rng);
        let before = ep.stats();
        let session_in = |ep: &Endpoint| ep.session(addr, id).unwrap().stats().datagrams_in;
        let session_before = session_in(&ep);
        let client_out_before = clients[0].1.stats().datagrams_out;
        let mut sent_by_client = Vec::new();
        let mut sent_by_server = 0;
        for (k, (_, g)) in garbage.iter().enumerate() {
            ep.handle_datagram(now, addr, g);
            pump(&mut ep, now, &mut clients);
            if k % 50 == 49 {
                // The session still works, both ways.
                let msg = format!("{cipher} live {k}").into_bytes();
                clients[0].1.send(&msg).unwrap();
                ep.send(addr, id, &msg).unwrap();
                sent_by_client.push(msg);
                sent_by_server += 1;
                pump(&mut ep, now, &mut clients);
            }
            got.extend(server_recv_all(&mut ep));
        }
        let mut client_got = 0;
        while let Ok(Some(_)) = clients[0].1.recv(&mut buf) {
            client_got += 1;
        }
        let stats = ep.stats();
        assert!(clients[0].1.is_established(), "{cipher}");
        assert_eq!(
            ep.connection_id(addr),
            Some(id),
            "{cipher}: same connection"
        );
        assert!(server_established(&ep, addr), "{cipher}");
        assert_eq!(client_got, sent_by_server, "{cipher}: server to client");
        let expected: Vec<Vec<u8>> = std::iter::once(b"a genuine record".to_vec())
            .chain(sent_by_client)
            .collect();
        assert_eq!(
            got.into_iter().map(|(_, d)| d).collect::<Vec<_>>(),
            expected,
            "{cipher}: exactly the genuine data, in order"
        );
        // Every datagram is counted, in exactly one place: dropped by the pre-parser, answered
        // or ignored by the listener (spoofed ClientHellos), or handed to the session (which
        // drops what does not authenticate).
        let client_out = clients[0].1.stats().datagrams_out - client_out_before;
        let received = stats.datagrams_in - before.datagrams_in;
        assert_eq!(received, garbage.len() as u64 + client_out, "{cipher}");
        let listener = |s: &openssl_dtls::EndpointStats| {
            s.dropped_total() + s.hello_verify_requests + s.listener_ignored
        };
        let to_session = session_in(&ep) - session_before;
        assert_eq!(
            listener(&stats) - listener(&before) + to_session,
            received,
            "{cipher}: {stats:?}"
        );
        for reason in [
            DropReason::Empty,
            DropReason::TooShort,
            DropReason::BadContentType,
            DropReason::BadVersion,
            DropReason::BadLength,
            DropReason::Oversized,
        ] {
            assert!(
                stats.dropped(reason) > 0,
                "{cipher}: nothing dropped as {reason}"
            );
        }
        assert!(
            to_session > 400,
            "{cipher}: the well-formed forgeries reached OpenSSL ({to_session})"
        );
        assert_eq!(
            stats.hello_verify_requests - before.hello_verify_requests,
            10
        );
        assert_eq!((stats.connections, stats.connections_failed), (1, 0));
    }
}

// ---------------------------------------------------------------------------------------------
// Attacks after the cookie.

#[test]
fn a_post_cookie_stall_flood_stays_within_the_handshake_limit_is_reaped_and_a_real_client_connects()
{
    let _g = exclusive();
    let (server, client) = ccm8_pair();
    let deadline = server.session_config().handshake_timeout;
    let config = EndpointConfig::default();
    let ssl_before = live_ssl_objects();
    let mut ep = Endpoint::server(server, config.clone()).unwrap();
    // Whichever binds first: the count, or the memory at each handshake's worst case.
    let limit = config
        .max_handshakes
        .min(config.handshake_memory / ep.handshake_worst_case());
    assert!(
        limit >= 64,
        "the default memory budget admits {limit} handshakes"
    );
    let t0 = Instant::now();
    let mut sink = vec![0u8; 65_536];
    // Warm up the allocator with a few complete handshakes first.
    for i in 0..20 {
        let addr = client_addr(900_000 + i);
        let mut s = client.new_session(None, t0).unwrap();
        let hello = hello_with_cookie(&mut ep, t0, addr, &mut s);
        assert!(finish_handshake(&mut ep, t0, addr, s, &hello));
        ep.close(addr, ep.connection_id(addr).unwrap());
        while ep.poll_transmit(&mut sink).is_some() {}
    }
    while ep.poll_event().is_some() {}
    assert!(ep.is_empty());
    let rss_before = rss_bytes();

    let stalled = 3_000;
    for i in 0..stalled {
        let addr = client_addr(i);
        let mut s = client.new_session(None, t0).unwrap();
        let hello = hello_with_cookie(&mut ep, t0, addr, &mut s);
        ep.handle_datagram(t0, addr, &hello);
        // The server's flight goes out into the void; the client says no more.
        while ep.poll_transmit(&mut sink).is_some() {}
        let stats = ep.stats();
        assert!(stats.handshakes <= limit && ep.len() <= limit, "{stats:?}");
    }
    let stats = ep.stats();
    assert_eq!(stats.handshakes, limit, "{stats:?}");
    assert_eq!(
        stats.refused_handshake_limit + stats.refused_handshake_memory,
        (stalled - limit as u32) as u64,
        "{stats:?}"
    );
    assert!(
        stats.handshake_memory_in_use <= config.handshake_memory,
        "{stats:?}"
    );
    // Refused silently: the stalled clients never retransmitted (their record sequence stays
    // below the patience), so no alert went out.
    assert_eq!(stats.refusal_alerts_sent, 0);
    let live = live_ssl_objects() - ssl_before;
    assert_eq!(
        live,
        limit as i64 + 1,
        "the stalled handshakes and the listener"
    );
    let growth = rss_bytes().saturating_sub(rss_before);
    let per_handshake = growth / limit;
    eprintln!(
        "post-cookie stall flood: {limit} handshakes held, RSS +{growth} bytes \
         ({per_handshake} per handshake)"
    );
    assert!(
        per_handshake < 150 * 1024,
        "{per_handshake} bytes per stalled handshake"
    );

    // A legitimate client is refused while the budget is used up ...
    let legit = client_addr(999_999);
    let mut s = client.new_session(None, t0).unwrap();
    let hello = hello_with_cookie(&mut ep, t0, legit, &mut s);
    ep.handle_datagram(t0, legit, &hello);
    assert!(ep.connection_id(legit).is_none());
    drop(s);

    // ... the stalled handshakes are reaped at their deadline ...
    let reap = t0 + deadline;
    assert!(ep.poll_timeout().is_some_and(|t| t <= reap));
    ep.handle_timeout(reap);
    while ep.poll_transmit(&mut sink).is_some() {}
    let stats = ep.stats();
    assert_eq!((stats.handshakes, ep.len()), (0, 0), "{stats:?}");
    assert_eq!(stats.handshakes_timed_out, limit as u64);
    assert_eq!(
        live_ssl_objects() - ssl_before,
        1,
        "only the listener is left"
    );

    // ... and then it connects.
    let mut s = client.new_session(None, reap).unwrap();
    let hello = hello_with_cookie(&mut ep, reap, legit, &mut s);
    assert!(finish_handshake(&mut ep, reap, legit, s, &hello));
    drop(ep);
    assert_eq!(live_ssl_objects(), ssl_before);
}

/// A handshake waiting for the client's second flight: the server has sent its flight, which
/// the client has processed; the client's answer is held back (returned, not delivered).
fn victim(
    ep: &mut Endpoint,
    now: Instant,
    client: &DtlsClientContext,
    addr: SocketAddr,
) -> (Session, Vec<Vec<u8>>) {
    let mut s = client.new_session(None, now).unwrap();
    let hello = hello_with_cookie(ep, now, addr, &mut s);
    ep.handle_datagram(now, addr, &hello);
    let mut buf = vec![0u8; 65_536];
    while let Some((to, n)) = ep.poll_transmit(&mut buf) {
        assert_eq!(to, addr);
        s.handle_datagram(now, &buf[..n]);
    }
    let mut flight = Vec::new();
    while let Some(n) = s.poll_transmit(&mut buf) {
        flight.push(buf[..n].to_vec());
    }
    assert!(!flight.is_empty() && ep.connection_id(addr).is_some());
    (s, flight)
}

/// Delivers `datagrams` to the server from `addr`, then the genuine client flight, and runs the
/// rest of the handshake. Returns whether both sides are established.
fn attack_then_finish(
    ep: &mut Endpoint,
    now: Instant,
    addr: SocketAddr,
    mut client: Session,
    flight: &[Vec<u8>],
    datagrams: &[Vec<u8>],
) -> (bool, Session) {
    for d in datagrams {
        ep.handle_datagram(now, addr, d);
    }
    for d in flight {
        ep.handle_datagram(now, addr, d);
    }
    let mut clients = [(addr, client)];
    pump(ep, now, &mut clients);
    client = clients.into_iter().next().unwrap().1;
    let ok = client.is_established() && server_established(ep, addr);
    (ok, client)
}

#[test]
fn hostile_fragments_future_epochs_and_absurd_lengths_stay_bounded_and_never_crash() {
    let _g = exclusive();
    let (server, client) = ccm8_pair();
    // A PSK-only context sets max_cert_list to PSK_MAX_CERT_LIST, below OpenSSL's floor: the
    // largest message it reassembles is then `dtls1_max_handshake_message_len`, a header plus
    // SSL3_RT_MAX_ENCRYPTED_LENGTH, which depends on how OpenSSL was configured: 12 + 320 +
    // 16,384 = 16,716 bytes built `no-comp` (openssl-src's builds: the `vendored` feature and
    // scripts/openssl-versions.sh), 12 + 320 + 17,408 = 17,740 with compression compiled in (the
    // system's). A fragment of a longer message is the fatal case below, so the buffered ones
    // stay within the smaller limit and the fatal ones exceed the larger.
    const { assert!(openssl_dtls::context::PSK_MAX_CERT_LIST < 16_716) };
    let max_message = 16_716u32;
    let over_max_message = 17_741u32;
    let ssl_before = live_ssl_objects();
    let mut ep = Endpoint::server(server, roomy()).unwrap();
    let now = Instant::now();
    let mut rng = Rng::new(0xF4A6);
    let mut n = 0;
    let mut next_addr = || {
        n += 1;
        client_addr(7_000 + n)
    };
    // The client's second flight is message_seq 2 (ClientKeyExchange, epoch 0, record sequence
    // numbers 2 and 3 for it and the CCS) and 3 (Finished, epoch 1). Forged epoch-0 records use
    // record sequence numbers inside the 64-record replay window above the genuine ones: a
    // higher number would move the window past the genuine records (an attacker can stall an
    // unauthenticated handshake that way; see the test below it can also fail it outright).
    type Forge = Box<dyn Fn(&mut Rng) -> Vec<Vec<u8>>>;
    let survivable: [(&str, Forge); 3] = [
        (
            "epochs 2 and up (never buffered)",
            Box::new(|rng: &mut Rng| {
                (0..300)
                    .map(|i| {
                        let epoch = 2 + rng.below(u64::from(u16::MAX) - 1) as u16;
                        let body = craft::random_bytes(rng, 100);
                        craft::record(craft::HANDSHAKE, craft::DTLS1_2, epoch, i, &body)
                    })
                    .collect()
            }),
        ),
        (
            "epoch 1 records (OpenSSL buffers at most 100)",
            Box::new(|rng: &mut Rng| {
                (0..300)
                    .map(|i| {
                        let body = craft::random_bytes(rng, 100);
                        craft::record(craft::HANDSHAKE, craft::DTLS1_2, 1, 1_000 + i, &body)
                    })
                    .collect()
            }),
        ),
        (
            "out-of-order fragments of 9 future messages, max_cert_list each",
            Box::new(move |rng: &mut Rng| {
                (4..61u64)
                    .map(|seq| {
                        let msg_seq = 4 + (seq % 9) as u16;
                        let frag = 1 + rng.below(200) as u32;
                        let offset = rng.below(u64::from(max_message - frag)) as u32;
                        let body = craft::random_bytes(rng, frag as usize);
                        let hs = craft::handshake(16, max_message, msg_seq, offset, &body);
                        craft::record(craft::HANDSHAKE, craft::DTLS1_2, 0, seq, &hs)
                    })
                    .collect()
            }),
        ),
    ];
    let mut worst = 0;
    for (name, make) in &survivable {
        for _ in 0..6 {
            let addr = next_addr();
            let (s, flight) = victim(&mut ep, now, &client, addr);
            let datagrams = make(&mut rng);
            let rss = rss_bytes();
            for d in &datagrams {
                ep.handle_datagram(now, addr, d);
            }
            worst = worst.max(rss_bytes().saturating_sub(rss));
            let (ok, _) = attack_then_finish(&mut ep, now, addr, s, &flight, &[]);
            assert!(ok, "{name}: the genuine handshake completes afterwards");
        }
    }
    eprintln!("buffering attacks: at most {worst} bytes of RSS per handshake");
    assert!(worst < 2 << 20, "{worst} bytes held for one handshake");

    // Lengths over max_cert_list, absurd lengths, fragments past their message's end: that
    // handshake fails (one spoofed datagram is enough before the keys are in place), nothing
    // else does, and the client's retry connects.
    let fatal: [(&str, u32, u16, u32, usize); 6] = [
        (
            "over max_cert_list, current message",
            over_max_message,
            2,
            0,
            20,
        ),
        ("over max_cert_list, future message", 100_000, 3, 10, 20),
        ("2^24 - 1 bytes, current message", 0xFF_FFFF, 2, 0, 20),
        ("2^24 - 1 bytes, future message", 0xFF_FFFF, 5, 0, 20),
        ("fragment past the message end", 100, 3, 90, 20),
        ("fragment longer than its message", 20, 2, 0, 30),
    ];
    for (name, len, msg_seq, offset, frag) in fatal {
        let addr = next_addr();
        let (s, flight) = victim(&mut ep, now, &client, addr);
        let failed_before = ep.stats().handshakes_failed_local;
        let body = craft::random_bytes(&mut rng, frag);
        let hs = craft::handshake(16, len, msg_seq, offset, &body);
        let forged = craft::record(craft::HANDSHAKE, craft::DTLS1_2, 0, 10, &hs);
        let (ok, s) = attack_then_finish(&mut ep, now, addr, s, &flight, &[forged]);
        assert!(!ok && ep.connection_id(addr).is_none(), "{name}");
        assert_eq!(
            ep.stats().handshakes_failed_local,
            failed_before + 1,
            "{name}"
        );
        drop(s);
        let mut retry = client.new_session(None, now).unwrap();
        let hello = hello_with_cookie(&mut ep, now, addr, &mut retry);
        assert!(
            finish_handshake(&mut ep, now, addr, retry, &hello),
            "{name}: retry"
        );
    }
    let stats = ep.stats();
    assert_eq!(stats.connections, 18 + fatal.len(), "{stats:?}");
    ep.close_all();
    let mut sink = vec![0u8; 65_536];
    while ep.poll_transmit(&mut sink).is_some() {}
    while ep.poll_event().is_some() {}
    assert!(ep.is_empty());
    drop(ep);
    assert_eq!(live_ssl_objects(), ssl_before);
}

// ---------------------------------------------------------------------------------------------
// Protocol abuse by an authenticated or spoofing peer.

extern "C" {
    // Not in openssl-sys; libssl is linked through it.
    fn SSL_renegotiate(s: *mut openssl_sys::SSL) -> std::os::raw::c_int;
}

/// The (content type, epoch) of every record in `packets`.
fn record_kinds(packets: &[Packet]) -> Vec<(u8, u16)> {
    packets
        .iter()
        .flat_map(|p| craft::parse(&p.data).unwrap_or_default())
        .map(|r| (r.content_type, r.epoch))
        .collect()
}

#[test]
fn a_renegotiation_attempt_is_refused_and_the_connection_keeps_its_data() {
    let _g = shared();
    let (server, client) = ccm8_pair();
    let mut net = Net::new(server, roomy(), Wire::perfect());
    let c = net.connect(&client, client_addr(11));
    let addr = net.clients[c].addr;
    assert!(net.handshake(c, Duration::from_secs(5)));
    let id = net.server.connection_id(addr).unwrap();
    let before = net.server.stats();
    // Application data sent before the attempt, held back and delivered after it.
    for i in 0..3u32 {
        net.clients[c]
            .session
            .send(&harness::message(11, i, 100))
            .unwrap();
    }
    let held = drain(&mut net, c, true);
    assert_eq!(held.len(), 3);
    // The client's OpenSSL asks for a new handshake: a ClientHello in epoch 1 (encrypted), the
    // only form of renegotiation a peer with the keys can attempt. The session refuses to do
    // it itself (SSL_OP_NO_RENEGOTIATION), so lift that on the raw SSL first.
    let ssl = foreign_types::ForeignTypeRef::as_ptr(net.clients[c].session.ssl().unwrap());
    // SAFETY: a live SSL owned by the session; these calls only set flags and write a
    // ClientHello to its BIO.
    unsafe {
        openssl_dtls_sys::SSL_clear_options(ssl, openssl_sys::SSL_OP_NO_RENEGOTIATION);
        assert_eq!(SSL_renegotiate(ssl), 1);
        assert!(
            openssl_sys::SSL_do_handshake(ssl) <= 0,
            "it needs the server's answer"
        );
        openssl_sys::ERR_clear_error();
    }
    let hello = drain(&mut net, c, true);
    assert_eq!(
        record_kinds(&hello),
        vec![(craft::HANDSHAKE, 1)],
        "one encrypted handshake record"
    );
    let now = Instant::now();
    for p in &hello {
        net.deliver(now, p);
    }
    net.drain_events();
    let answer = drain(&mut net, c, false);
    // The server answers with a no_renegotiation warning alert, never with a ServerHello.
    assert!(!answer.is_empty(), "the server answers");
    assert!(
        record_kinds(&answer)
            .iter()
            .all(|&kind| kind == (craft::ALERT, 1)),
        "{:?}",
        record_kinds(&answer)
    );
    // No handshake started, no listener state, the connection carries on.
    let stats = net.server.stats();
    assert_eq!(stats.hello_verify_requests, before.hello_verify_requests);
    assert_eq!((stats.handshakes, stats.connections), (0, 1), "{stats:?}");
    assert_eq!(net.server.connection_id(addr), Some(id));
    assert!(net.server.session(addr, id).unwrap().is_established());
    for p in &held {
        net.deliver(now, p);
    }
    net.drain_events();
    let got: Vec<u32> = net
        .server_received
        .iter()
        .map(|(_, d)| harness::check_message(11, d).unwrap())
        .collect();
    assert_eq!(
        got,
        vec![0, 1, 2],
        "data sent before the attempt arrives intact"
    );
    assert!(net.closed(addr).is_empty());
}

/// Runs `client` and `ep` in real time (retransmission timers included) until both are
/// established or `deadline` passes.
fn run_real_time(
    ep: &mut Endpoint,
    addr: SocketAddr,
    client: Session,
    deadline: Duration,
) -> (bool, Session) {
    let end = Instant::now() + deadline;
    let mut clients = [(addr, client)];
    loop {
        let now = Instant::now();
        ep.handle_timeout(now);
        clients[0].1.handle_timeout(now);
        pump(ep, now, &mut clients);
        if clients[0].1.is_established() && server_established(ep, addr) {
            break;
        }
        if now >= end || clients[0].1.error().is_some() {
            break;
        }
        std::thread::sleep(ms(2));
    }
    let client = clients.into_iter().next().unwrap().1;
    let ok = client.is_established() && server_established(ep, addr);
    (ok, client)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The forgery is dropped; the handshake completes at once.
    Dropped,
    /// The genuine flight, as rearranged, completes once the client retransmits it.
    AfterRetransmission,
    /// The genuine flight with its (epoch-1) Finished ahead of the ChangeCipherSpec completes,
    /// at once or once the client retransmits: OpenSSL 4.0 keeps the early Finished until the
    /// ChangeCipherSpec gives it the keys and then reads it, 3.x drops it and waits for the
    /// retransmission (a reordering the network can cause, RFC 6347 §4.1). Either way the
    /// handshake ends only on a Finished that authenticated under the new keys, and nothing
    /// reaches the application before it.
    AtOnceOrAfterRetransmission,
    /// That handshake fails with a fatal alert; the client's retry connects.
    Fails,
}

#[test]
fn finished_first_early_or_double_ccs_and_data_before_finished_are_refused_without_state() {
    let _g = shared();
    let (server, client) = ccm8_pair();
    let mut ep = Endpoint::server(server, roomy()).unwrap();
    let now = Instant::now();
    let finished = |seq: u16| craft::handshake(craft::FINISHED, 12, seq, 0, &[0x42; 12]);
    let plain = |t: u8, body: &[u8]| craft::record(t, craft::DTLS1_2, 0, 10, body);

    // From unknown peers, none of these reaches OpenSSL: no listener state, no reply.
    let mut rng = Rng::new(12);
    let strays = [
        plain(craft::HANDSHAKE, &finished(0)),
        plain(craft::CHANGE_CIPHER_SPEC, &[1]),
        plain(craft::APPLICATION_DATA, b"hello?"),
        plain(craft::ALERT, &[2, 40]),
        plain(
            craft::HANDSHAKE,
            &craft::handshake(craft::SERVER_HELLO, 38, 0, 0, &[0; 38]),
        ),
        craft::record(craft::APPLICATION_DATA, craft::DTLS1_2, 1, 5, &[9; 40]),
    ];
    for d in &strays {
        ep.handle_datagram(now, random_addr(&mut rng), d);
    }
    let stats = ep.stats();
    assert_eq!(
        stats.dropped(DropReason::NotClientHello),
        strays.len() as u64
    );
    assert_eq!(
        (stats.hello_verify_requests, stats.listener_ignored),
        (0, 0)
    );
    assert!(ep.is_empty());
    let mut sink = vec![0u8; 2048];
    assert!(ep.poll_transmit(&mut sink).is_none());

    // Against a handshake waiting for the client's second flight (ClientKeyExchange with
    // message_seq 2, ChangeCipherSpec, then Finished with message_seq 3 in epoch 1).
    type Forge = Box<dyn Fn(&[Record]) -> Vec<Vec<u8>>>;
    let cases: Vec<(&str, Outcome, bool, Forge)> = vec![
        (
            "Finished first, in place of the key exchange",
            Outcome::Fails,
            true,
            Box::new(move |_| vec![plain(craft::HANDSHAKE, &finished(2))]),
        ),
        (
            "Finished first, as a future message",
            Outcome::Fails,
            true,
            Box::new(move |_| vec![plain(craft::HANDSHAKE, &finished(3))]),
        ),
        (
            "CCS before the key exchange",
            Outcome::Dropped,
            true,
            Box::new(move |_| vec![plain(craft::CHANGE_CIPHER_SPEC, &[1])]),
        ),
        (
            "plaintext application data before Finished",
            Outcome::Fails,
            true,
            Box::new(move |_| vec![plain(craft::APPLICATION_DATA, b"injected")]),
        ),
        (
            "undecryptable epoch-1 application data before Finished",
            Outcome::Dropped,
            true,
            Box::new(|_| {
                vec![craft::record(
                    craft::APPLICATION_DATA,
                    craft::DTLS1_2,
                    1,
                    10,
                    &[7; 40],
                )]
            }),
        ),
        (
            "double CCS within the flight",
            Outcome::Dropped,
            false,
            Box::new(|f| {
                let mut f = f.to_vec();
                let mut ccs = f[1].clone();
                ccs.seq += 1;
                f.insert(2, ccs);
                vec![craft::join(&f)]
            }),
        ),
        (
            "double CCS after the flight",
            Outcome::Dropped,
            false,
            Box::new(|f| {
                let mut ccs = f[1].clone();
                ccs.seq += 5;
                vec![craft::join(f), ccs.to_bytes()]
            }),
        ),
        (
            "Finished before CCS",
            Outcome::AtOnceOrAfterRetransmission,
            false,
            Box::new(|f| vec![craft::join(&[f[0].clone(), f[2].clone(), f[1].clone()])]),
        ),
        (
            "CCS and Finished without the key exchange",
            Outcome::AfterRetransmission,
            false,
            Box::new(|f| vec![craft::join(&f[1..])]),
        ),
    ];
    for (k, (name, outcome, then_genuine, forge)) in cases.iter().enumerate() {
        let addr = client_addr(8_000 + k as u32);
        let (s, flight) = victim(&mut ep, now, &client, addr);
        assert_eq!(flight.len(), 1, "the client's flight is one datagram");
        let records = craft::parse(&flight[0]).unwrap();
        assert_eq!(
            records
                .iter()
                .map(|r| (r.content_type, r.epoch))
                .collect::<Vec<_>>(),
            [
                (craft::HANDSHAKE, 0),
                (craft::CHANGE_CIPHER_SPEC, 0),
                (craft::HANDSHAKE, 1)
            ]
        );
        let forged = forge(&records);
        let genuine: &[Vec<u8>] = if *then_genuine { &flight } else { &[] };
        let (ok, s) = attack_then_finish(&mut ep, now, addr, s, genuine, &forged);
        match outcome {
            Outcome::Dropped => assert!(ok, "{name}: completes"),
            Outcome::AfterRetransmission => {
                assert!(!ok, "{name}: waits for a retransmission");
                let (ok, _) = run_real_time(&mut ep, addr, s, Duration::from_secs(5));
                assert!(ok, "{name}: completes after the client retransmits");
            }
            Outcome::AtOnceOrAfterRetransmission => {
                assert!(
                    server_recv_all(&mut ep).is_empty(),
                    "{name}: nothing is delivered before the handshake ends"
                );
                if ok {
                    eprintln!("{name}: completed at once (the early Finished was kept)");
                } else {
                    let (ok, _) = run_real_time(&mut ep, addr, s, Duration::from_secs(5));
                    assert!(ok, "{name}: completes after the client retransmits");
                }
            }
            Outcome::Fails => {
                assert!(!ok && ep.connection_id(addr).is_none(), "{name}: fails");
                drop(s);
                let mut retry = client.new_session(None, now).unwrap();
                let hello = hello_with_cookie(&mut ep, now, addr, &mut retry);
                assert!(
                    finish_handshake(&mut ep, now, addr, retry, &hello),
                    "{name}: retry"
                );
            }
        }
        assert!(
            server_recv_all(&mut ep).is_empty(),
            "{name}: nothing forged is delivered as data"
        );
    }
    let stats = ep.stats();
    assert_eq!(stats.handshakes, 0, "{stats:?}");
    assert_eq!(stats.connections, cases.len(), "{stats:?}");
    assert_eq!(stats.handshakes_failed_local, 3, "{stats:?}");
}

/// A server that has read the client's ChangeCipherSpec fails at once with `decrypt_error` when
/// the client's Finished does not authenticate (a wrong key), rather than wait out the
/// retransmissions; an epoch-1 handshake record too short to hold a whole Finished is not judged
/// so: it can be the first fragment of one (OpenSSL 3.5 and later split a Finished that does not
/// fit the rest of a datagram, at MTU 256 with client certificates). On every release: an
/// undecryptable short record after the ChangeCipherSpec, then the genuine Finished.
#[test]
fn an_epoch1_record_too_short_for_a_whole_finished_is_not_taken_for_a_wrong_key() {
    let _g = shared();
    let (server, client) = ccm8_pair();
    let mut ep = Endpoint::server(server, roomy()).unwrap();
    let now = Instant::now();
    let addr = client_addr(31);
    let (s, flight) = victim(&mut ep, now, &client, addr);
    assert_eq!(flight.len(), 1, "the client's flight is one datagram");
    let records = craft::parse(&flight[0]).unwrap();
    let [kx, ccs, finished] = &records[..] else {
        panic!("{records:?}")
    };
    assert_eq!(
        (ccs.content_type, finished.epoch),
        (craft::CHANGE_CIPHER_SPEC, 1)
    );
    // CCM8: a whole Finished is 24 bytes of plaintext, 8 of nonce and 8 of tag.
    assert_eq!(finished.fragment.len(), 40);
    let mut fragment = finished.clone();
    fragment.seq = 7;
    fragment.fragment = craft::random_bytes(&mut Rng::new(31), 39);
    let first = craft::join(&[kx.clone(), ccs.clone(), fragment]);
    let (ok, _) = attack_then_finish(&mut ep, now, addr, s, &[finished.to_bytes()], &[first]);
    assert!(ok, "the Finished that follows completes the handshake");
    assert_eq!(ep.stats().handshakes_failed_local, 0, "{:?}", ep.stats());
}

#[test]
fn spoofed_plaintext_alerts_are_ignored_after_the_handshake() {
    let _g = shared();
    let (server, client) = ccm8_pair();
    let mut ep = Endpoint::server(server, roomy()).unwrap();
    let now = Instant::now();
    let addr = client_addr(21);
    let mut s = client.new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, addr, &mut s);
    assert!(finish_handshake_keep(&mut ep, now, addr, &mut s, &hello));
    let id = ep.connection_id(addr).unwrap();
    // Every alert, warning and fatal, in epoch 0 (plaintext, what an off-path attacker can
    // forge) at both ends, with record sequence numbers from low to high.
    let mut seq = 0;
    for level in [1u8, 2] {
        for description in [0u8, 10, 20, 40, 42, 47, 48, 51, 70, 80, 90, 100, 115] {
            for epoch in [0u16, 1] {
                seq += 7;
                let alert = craft::record(
                    craft::ALERT,
                    craft::DTLS1_2,
                    epoch,
                    seq,
                    &[level, description],
                );
                ep.handle_datagram(now, addr, &alert);
                s.handle_datagram(now, &alert);
            }
        }
    }
    let mut clients = [(addr, s)];
    pump(&mut ep, now, &mut clients);
    assert!(clients[0].1.is_established(), "{:?}", clients[0].1.error());
    assert!(server_established(&ep, addr));
    clients[0].1.send(b"after the alerts").unwrap();
    ep.send(addr, id, b"still here").unwrap();
    pump(&mut ep, now, &mut clients);
    let got = server_recv_all(&mut ep);
    assert_eq!(got, vec![(addr, b"after the alerts".to_vec())]);
    let mut buf = [0u8; 64];
    assert_eq!(clients[0].1.recv(&mut buf).unwrap(), Some(10));
    assert_eq!(ep.stats().connections_failed, 0);
}

/// [`finish_handshake`] keeping the client session.
fn finish_handshake_keep(
    ep: &mut Endpoint,
    now: Instant,
    addr: SocketAddr,
    client: &mut Session,
    hello: &[u8],
) -> bool {
    ep.handle_datagram(now, addr, hello);
    let mut buf = vec![0u8; 65_536];
    for _ in 0..20 {
        let mut moved = false;
        while let Some(n) = client.poll_transmit(&mut buf) {
            ep.handle_datagram(now, addr, &buf[..n]);
            moved = true;
        }
        while let Some((to, n)) = ep.poll_transmit(&mut buf) {
            if to == addr {
                client.handle_datagram(now, &buf[..n]);
            }
            moved = true;
        }
        if !moved {
            break;
        }
    }
    client.is_established() && server_established(ep, addr)
}

#[test]
fn a_spoofed_alert_during_the_handshake_is_held_and_the_handshake_completes() {
    let _g = shared();
    let (server, client) = ccm8_pair();
    let mut ep = Endpoint::server(server, roomy()).unwrap();
    let now = Instant::now();
    let fatal = craft::record(craft::ALERT, craft::DTLS1_2, 0, 9, &[2, 40]);
    let mut sink = vec![0u8; 65_536];

    // At the server, racing its first flight (which is lost): an epoch-0 alert is not
    // authenticated, so the pending handshake holds it instead of failing; the client's
    // retransmitted ClientHello gets in (with the same handshake, or a new one if the held alert
    // ended the first at its retransmission timeout).
    let addr = client_addr(31);
    let mut s = client.new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, addr, &mut s);
    ep.handle_datagram(now, addr, &hello);
    while ep.poll_transmit(&mut sink).is_some() {}
    ep.handle_datagram(now, addr, &fatal);
    while ep.poll_transmit(&mut sink).is_some() {}
    let id = ep
        .connection_id(addr)
        .expect("the pending handshake lives on");
    let pending = ep.session(addr, id).unwrap();
    assert!(pending.is_handshaking(), "{:?}", pending.error());
    assert_eq!(pending.stats().held_alerts, 1);
    assert_eq!(ep.stats().handshakes_failed_peer_alert, 0);
    let (ok, _) = run_real_time(&mut ep, addr, s, Duration::from_secs(5));
    assert!(ok, "the client's retransmitted ClientHello completes");

    // At the client, while it waits for the server's flight: the alert is held, the server's
    // flight arrives and the same handshake completes.
    let addr = client_addr(32);
    let mut s = client.new_session(None, now).unwrap();
    let hello = hello_with_cookie(&mut ep, now, addr, &mut s);
    s.handle_datagram(now, &fatal);
    assert!(s.is_handshaking(), "{:?}", s.error());
    assert_eq!(s.stats().held_alerts, 1);
    assert!(finish_handshake_keep(&mut ep, now, addr, &mut s, &hello));
    assert!(ep
        .session(addr, ep.connection_id(addr).unwrap())
        .unwrap()
        .is_established());
}

// ---------------------------------------------------------------------------------------------
// Callbacks that panic.

#[test]
fn panicking_psk_verify_and_admission_callbacks_fail_only_their_own_handshake() {
    let _g = shared();
    let panic_now = || -> ! { panic!("{EXPECTED_PANIC}") };
    // PSK key store and admission hook on the server; credentials callback on a client.
    let server = psk_server_builder()
        .psk_key_store(move |identity| {
            if identity == b"panic" {
                panic_now()
            }
            (identity == harness::IDENTITY).then(|| harness::KEY.to_vec())
        })
        .admission(move |peer| {
            if peer.port() == 6666 {
                panic_now()
            }
            true
        })
        .build()
        .unwrap();
    let doomed = |b: &mut openssl_dtls::DtlsClientContextBuilder| {
        b.handshake_timeout(ms(1500));
    };
    let good = psk_client();
    let mut b = psk_client_builder();
    b.psk_credentials(PskCredentials::new(&b"panic"[..], harness::KEY));
    doomed(&mut b);
    let bad_identity = b.build().unwrap();
    let mut b = psk_client_builder();
    b.psk_credentials_callback(move |_hint| panic_now());
    doomed(&mut b);
    let bad_callback = b.build().unwrap();
    let mut b = psk_client_builder();
    doomed(&mut b);
    let refused = b.build().unwrap();

    let mut net = Net::new(server, roomy(), Wire::perfect());
    let ok = net.connect(&good, client_addr(41));
    let identity = net.connect(&bad_identity, client_addr(42));
    let callback = net.connect(&bad_callback, client_addr(43));
    let admission = net.connect(&refused, harness::v4(10, 0, 0, 44, 6666));
    let done = net.run_until(Duration::from_secs(5), |n| {
        n.established(ok)
            && [identity, callback, admission]
                .iter()
                .all(|&c| n.clients[c].session.error().is_some())
    });
    assert!(done, "events {:?}", net.events);
    // The key store's panic is an unknown identity for that handshake.
    assert!(
        matches!(net.clients[identity].session.error(), Some(Error::PeerAlert(a)) if a.description == 115),
        "{:?}",
        net.clients[identity].session.error()
    );
    // The credentials callback's panic fails that client before it sends its key exchange.
    assert!(net.clients[callback].session.error().is_some());
    // The admission hook's panic refuses the peer: it never gets a session and times out.
    assert!(matches!(
        net.clients[admission].session.error(),
        Some(Error::Timeout { .. })
    ));
    let stats = net.server.stats();
    assert!(stats.refused_by_admission >= 1, "{stats:?}");
    assert!(net
        .server
        .connection_id(net.clients[admission].addr)
        .is_none());
    // Everyone else is unaffected.
    assert!(client_to_server(&mut net, ok, b"unaffected"));
    assert!(server_to_client(&mut net, ok, b"indeed"));
    assert_eq!(stats.connections, 1);

    // A certificate verification callback that panics on one client's certificate.
    let certs = Certs::new();
    let mut b = DtlsServerContext::builder();
    b.certificate_chain_pem(&certs.chain_pem)
        .private_key_pem(&certs.key_pem)
        .client_auth(openssl_dtls::ClientAuth::Require)
        .root_certificates_pem(&certs.ca_pem())
        .verify_callback(move |preverified, store| {
            let evil = store.current_cert().is_some_and(|c| {
                c.subject_name()
                    .entries()
                    .any(|e| e.data().as_slice().starts_with(b"evil"))
            });
            if evil {
                panic_now()
            }
            preverified
        });
    let server = fast_server(&mut b).build().unwrap();
    let client_with = |cn: &str| {
        let (chain, key) = certs.client_cert(cn);
        let mut b = DtlsClientContext::builder();
        b.root_certificates_pem(&certs.ca_pem())
            .certificate_chain_pem(&chain)
            .private_key_pem(&key)
            .danger_skip_server_name_check();
        fast_client(&mut b).build().unwrap()
    };
    let mut net = Net::new(server, roomy(), Wire::perfect());
    let good = net.connect(&client_with("good.test"), client_addr(51));
    let evil = net.connect(&client_with("evil.test"), client_addr(52));
    let done = net.run_until(Duration::from_secs(5), |n| {
        n.established(good) && n.clients[evil].session.error().is_some()
    });
    assert!(done, "events {:?}", net.events);
    assert!(net.server.connection_id(net.clients[evil].addr).is_none());
    assert!(client_to_server(&mut net, good, b"verified"));
}

// ---------------------------------------------------------------------------------------------
// Leaks.

#[test]
fn ten_thousand_handshakes_then_dropping_everything_leaves_no_ssl_objects_and_flat_rss() {
    let _g = exclusive();
    let (server, client) = ccm8_pair();
    let ssl_before = live_ssl_objects();
    let mut ep = Endpoint::server(server, roomy()).unwrap();
    let now = Instant::now();
    let batch = 100;
    let batches = 100;
    let mut rss_warm = 0;
    let mut peak_ssl = 0;
    let started = Instant::now();
    for b in 0..batches {
        let mut clients: Vec<(SocketAddr, Session)> = (0..batch)
            .map(|i| {
                let addr = client_addr((b * batch + i) as u32);
                (addr, client.new_session(None, now).unwrap())
            })
            .collect();
        pump(&mut ep, now, &mut clients);
        let mut ids = Vec::with_capacity(batch);
        for (addr, s) in &mut clients {
            assert!(
                s.is_established(),
                "{addr}: {:?} {:?} server {:?} {:?}",
                s.state(),
                s.error(),
                ep.connection_id(*addr),
                ep.stats()
            );
            let id = ep.connection_id(*addr).unwrap();
            s.send(b"ping").unwrap();
            ids.push((*addr, id));
        }
        pump(&mut ep, now, &mut clients);
        assert_eq!(server_recv_all(&mut ep).len(), batch);
        peak_ssl = peak_ssl.max(live_ssl_objects() - ssl_before);
        // The server forgets them (close_notify out), the clients go away.
        for (addr, id) in ids {
            ep.release(addr, id);
        }
        pump(&mut ep, now, &mut clients);
        assert!(clients
            .iter()
            .all(|(_, s)| s.state() == SessionState::Closed));
        drop(clients);
        while ep.poll_event().is_some() {}
        assert!(ep.is_empty(), "batch {b}: {} left", ep.len());
        if b == 9 {
            rss_warm = rss_bytes();
        }
    }
    let growth = rss_bytes().saturating_sub(rss_warm);
    let stats = ep.stats();
    assert_eq!(stats.handshakes_completed, (batch * batches) as u64);
    assert_eq!(
        live_ssl_objects() - ssl_before,
        1,
        "only the listener is left"
    );
    assert!(
        peak_ssl <= 2 * batch as i64 + 1,
        "{peak_ssl} SSL objects at once"
    );
    eprintln!(
        "10,000 handshakes in {:?}; RSS growth after warm-up {growth} bytes",
        started.elapsed()
    );
    assert!(growth < 8 << 20, "RSS grew by {growth} bytes after warm-up");
    drop(ep);
    assert_eq!(live_ssl_objects(), ssl_before, "every SSL freed");
}
