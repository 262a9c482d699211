//! Shared test support: a seeded lossy link between two sessions, and certificates made on the fly.
#![allow(dead_code)]

pub mod cid;
pub mod mbedtls;
pub mod nat;

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509NameBuilder, X509};
use openssl_dtls::Session;

/// A tiny deterministic PRNG (xorshift64*), so every fault pattern is reproducible from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Direction of a datagram on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToServer,
    ToClient,
}

/// What the link does to datagrams. Probabilities apply independently to each datagram.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub drop: f64,
    pub duplicate: f64,
    /// Hold a datagram back and deliver it after the next one in the same direction.
    pub reorder: f64,
    /// Drop exactly these datagrams (0-based index over all datagrams sent, both directions).
    pub drop_indices: Vec<usize>,
    /// Apply faults only to the first `limit` datagrams (e.g. only the handshake); `None`: all.
    pub limit: Option<usize>,
    /// Panic if any datagram is longer than this.
    pub max_datagram: Option<usize>,
}

/// A seeded faulty link between a client and a server session.
#[derive(Debug)]
pub struct Link {
    pub rng: Rng,
    pub faults: Faults,
    pub sent: usize,
    pub delivered: usize,
    pub dropped: usize,
    pub largest: usize,
    held: [Option<Vec<u8>>; 2],
    queue: VecDeque<(Dir, Vec<u8>)>,
}

impl Link {
    pub fn new(seed: u64, faults: Faults) -> Link {
        Link {
            rng: Rng::new(seed),
            faults,
            sent: 0,
            delivered: 0,
            dropped: 0,
            largest: 0,
            held: [None, None],
            queue: VecDeque::new(),
        }
    }

    pub fn perfect() -> Link {
        Link::new(1, Faults::default())
    }

    pub fn send(&mut self, dir: Dir, datagram: &[u8]) {
        let index = self.sent;
        self.sent += 1;
        self.largest = self.largest.max(datagram.len());
        if let Some(max) = self.faults.max_datagram {
            assert!(
                datagram.len() <= max,
                "datagram of {} bytes exceeds the MTU {max}",
                datagram.len()
            );
        }
        let faulty = self.faults.limit.is_none_or(|limit| index < limit);
        if self.faults.drop_indices.contains(&index)
            || (faulty && self.rng.chance(self.faults.drop))
        {
            self.dropped += 1;
            return;
        }
        let slot = dir as usize;
        if faulty && self.held[slot].is_none() && self.rng.chance(self.faults.reorder) {
            self.held[slot] = Some(datagram.to_vec());
            return;
        }
        self.queue.push_back((dir, datagram.to_vec()));
        if faulty && self.rng.chance(self.faults.duplicate) {
            self.queue.push_back((dir, datagram.to_vec()));
        }
        if let Some(held) = self.held[slot].take() {
            self.queue.push_back((dir, held));
        }
    }

    /// Releases held datagrams (when nothing else moves, so reordering never stalls the link).
    pub fn flush_held(&mut self) {
        for (slot, dir) in [(0, Dir::ToServer), (1, Dir::ToClient)] {
            if let Some(held) = self.held[slot].take() {
                self.queue.push_back((dir, held));
            }
        }
    }

    pub fn pop(&mut self) -> Option<(Dir, Vec<u8>)> {
        let d = self.queue.pop_front();
        if d.is_some() {
            self.delivered += 1;
        }
        d
    }
}

/// Moves datagrams and timers between two sessions until `done` holds, a session fails, or the
/// deadline passes. Real time passes: OpenSSL's retransmission timer reads the system clock.
/// Returns whether `done` held.
pub fn run_until(
    client: &mut Session,
    server: &mut Session,
    link: &mut Link,
    deadline: Duration,
    done: impl FnMut(&mut Session, &mut Session) -> bool,
) -> bool {
    run_until_tapped(
        client,
        server,
        link,
        deadline,
        |link, dir, d| link.send(dir, d),
        done,
    )
}

/// [`run_until`] with a tap between the sessions and the link: every datagram a session emits is
/// passed to `tap` (instead of straight to `link.send`), which may record it, alter it, drop it
/// or send it on (`link.send`), once or more.
pub fn run_until_tapped(
    client: &mut Session,
    server: &mut Session,
    link: &mut Link,
    deadline: Duration,
    mut tap: impl FnMut(&mut Link, Dir, &[u8]),
    mut done: impl FnMut(&mut Session, &mut Session) -> bool,
) -> bool {
    let end = Instant::now() + deadline;
    let mut buf = vec![0u8; 65_536];
    loop {
        let now = Instant::now();
        let mut moved = false;
        while let Some(n) = client.poll_transmit(&mut buf) {
            tap(link, Dir::ToServer, &buf[..n]);
            moved = true;
        }
        while let Some(n) = server.poll_transmit(&mut buf) {
            tap(link, Dir::ToClient, &buf[..n]);
            moved = true;
        }
        if !moved {
            link.flush_held();
        }
        while let Some((dir, datagram)) = link.pop() {
            match dir {
                Dir::ToServer => server.handle_datagram(now, &datagram),
                Dir::ToClient => client.handle_datagram(now, &datagram),
            }
            moved = true;
        }
        client.handle_timeout(now);
        server.handle_timeout(now);
        if done(client, server) {
            return true;
        }
        if client.error().is_some() || server.error().is_some() || now >= end {
            return false;
        }
        if !moved && !client.has_transmit() && !server.has_transmit() {
            let next = [client.poll_timeout(), server.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let wake = next.unwrap_or(now + Duration::from_millis(5)).min(end);
            let nap = wake
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(20));
            std::thread::sleep(nap.max(Duration::from_micros(200)));
        }
    }
}

/// Runs until both sessions are established.
pub fn handshake(
    client: &mut Session,
    server: &mut Session,
    link: &mut Link,
    deadline: Duration,
) -> bool {
    run_until(client, server, link, deadline, |c, s| {
        c.is_established() && s.is_established()
    })
}

/// A certificate authority and leaf certificates signed by it.
pub struct Pki {
    pub ca_cert: X509,
    pub ca_key: PKey<Private>,
}

pub fn ec_key(nid: Nid) -> PKey<Private> {
    let group = EcGroup::from_curve_name(nid).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

pub fn rsa_key(bits: u32) -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(bits).unwrap()).unwrap()
}

/// What goes into a test certificate.
pub struct Spec<'a> {
    pub cn: &'a str,
    pub dns: &'a [&'a str],
    pub ips: &'a [&'a str],
    /// Validity, in days from now.
    pub from: i64,
    pub until: i64,
    pub ca: bool,
}

impl Spec<'_> {
    pub fn leaf(cn: &str) -> Spec<'_> {
        Spec {
            cn,
            dns: &[],
            ips: &[],
            from: -1,
            until: 30,
            ca: false,
        }
    }
}

fn days_from_now(days: i64) -> Asn1Time {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Asn1Time::from_unix(now + days * 24 * 60 * 60).unwrap()
}

/// A certificate for `spec` with `key`, signed by `issuer` (or self-signed).
pub fn issue(
    spec: &Spec<'_>,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", spec.cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&name, |(c, _)| c.subject_name()))
        .unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&days_from_now(spec.from)).unwrap();
    b.set_not_after(&days_from_now(spec.until)).unwrap();
    if spec.ca {
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
    } else {
        b.append_extension(BasicConstraints::new().critical().build().unwrap())
            .unwrap();
    }
    if !spec.dns.is_empty() || !spec.ips.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for dns in spec.dns {
            san.dns(dns);
        }
        for ip in spec.ips {
            san.ip(ip);
        }
        let san = san
            .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
            .unwrap();
        b.append_extension(san).unwrap();
    }
    b.sign(issuer.map_or(key, |(_, k)| k), MessageDigest::sha256())
        .unwrap();
    b.build()
}

/// A certificate valid from now for 30 days: a CA, or a leaf for `dns` when given.
fn build_cert(
    subject_cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    is_ca: bool,
    dns: Option<&str>,
) -> X509 {
    let dns = dns.map(|d| [d]);
    let mut spec = Spec::leaf(subject_cn);
    // Valid from a day ago: a certificate dated "now" (whole seconds) was once found not yet
    // valid by OpenSSL 4.0 in the same second it was made.
    spec.from = -1;
    spec.ca = is_ca;
    spec.dns = dns.as_ref().map_or(&[][..], |d| &d[..]);
    issue(&spec, key, issuer)
}

impl Pki {
    pub fn new_ec() -> Pki {
        let ca_key = ec_key(Nid::X9_62_PRIME256V1);
        let ca_cert = build_cert("openssl-dtls test CA", &ca_key, None, true, None);
        Pki { ca_cert, ca_key }
    }

    pub fn new_rsa() -> Pki {
        let ca_key = rsa_key(2048);
        let ca_cert = build_cert("openssl-dtls test RSA CA", &ca_key, None, true, None);
        Pki { ca_cert, ca_key }
    }

    /// A leaf for `dns`, signed by the CA.
    pub fn leaf(&self, dns: &str, key: &PKey<Private>) -> X509 {
        build_cert(
            dns,
            key,
            Some((&self.ca_cert, &self.ca_key)),
            false,
            Some(dns),
        )
    }

    /// A leaf signed through `depth` intermediates of RSA-4096 keys (a chain of several KB).
    /// Returns (leaf, intermediates from the leaf's issuer upwards).
    pub fn long_chain(&self, dns: &str, key: &PKey<Private>, depth: usize) -> (X509, Vec<X509>) {
        let mut issuer_cert = self.ca_cert.clone();
        let mut issuer_key = self.ca_key.clone();
        let mut chain = Vec::new();
        for i in 0..depth {
            let k = rsa_key(4096);
            let c = build_cert(
                &format!("intermediate {i} with a deliberately long name to grow the chain"),
                &k,
                Some((&issuer_cert, &issuer_key)),
                true,
                None,
            );
            chain.push(c.clone());
            issuer_cert = c;
            issuer_key = k;
        }
        let leaf = build_cert(
            dns,
            key,
            Some((&issuer_cert, &issuer_key)),
            false,
            Some(dns),
        );
        chain.reverse();
        (leaf, chain)
    }
}

/// Runs `session`'s timers alone (what it sends is lost) until it has failed or `limit` passed:
/// for a side that holds an unauthenticated alert from a failed peer, which it reports once its
/// handshake makes no progress by the next retransmission timeout. Returns whether it failed.
pub fn run_timers_until_failed(session: &mut Session, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    let mut sink = vec![0u8; 65_536];
    while session.error().is_none() {
        let now = Instant::now();
        if now >= end {
            return false;
        }
        session.handle_timeout(now);
        while session.poll_transmit(&mut sink).is_some() {}
        if let Some(at) = session.poll_timeout() {
            std::thread::sleep(at.saturating_duration_since(Instant::now()).min(end - now));
        } else if session.error().is_none() {
            return false; // no timer: nothing will change
        }
    }
    true
}

/// The path of example `name`: `target/<profile>/examples/<name>`, beside this test's
/// `target/<profile>/deps/` (built by a plain `cargo test` or `cargo build --examples`).
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples, `cargo test --test NAME` alone does \
         not (run `cargo build --examples` first)",
        path.display()
    );
    path
}
