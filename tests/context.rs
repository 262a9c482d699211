//! Contexts, in process: handshakes made from `DtlsClientContext` / `DtlsServerContext` through
//! `new_session` and the seeded link, and every build-time error.

mod support;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    HandshakeError, Ssl, SslContextBuilder, SslMethod, SslOptions, SslVerifyMode, SslVersion,
};
use openssl_dtls::context::{CipherPreset, CERTIFICATE_CIPHERS, PSK_CIPHERS};
use openssl_dtls::{
    Alert, ClientAuth, ConfigError, DtlsClientContext, DtlsClientContextBuilder, DtlsServerContext,
    DtlsServerContextBuilder, Error, PskCredentials, Session, VerifyReason,
};
use support::{ec_key, handshake, rsa_key, Link, Pki};

const IDENTITY: &[u8] = b"Client_identity";
const KEY: &[u8] = b"secretPSK";
const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// helpers

fn psk_server() -> DtlsServerContextBuilder {
    let mut b = DtlsServerContext::builder();
    b.psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()));
    b
}

fn psk_client() -> DtlsClientContextBuilder {
    let mut b = DtlsClientContext::builder();
    b.psk_credentials(PskCredentials::new(IDENTITY, KEY));
    b
}

/// A leaf certificate for `dns` with its key, both PEM.
struct Leaf {
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn leaf(pki: &Pki, dns: &str, key: &PKey<Private>) -> Leaf {
    Leaf {
        cert: pki.leaf(dns, key).to_pem().unwrap(),
        key: key.private_key_to_pem_pkcs8().unwrap(),
    }
}

fn cert_server(leaf: &Leaf) -> DtlsServerContextBuilder {
    let mut b = DtlsServerContext::builder();
    b.certificate_chain_pem(&leaf.cert)
        .private_key_pem(&leaf.key);
    b
}

fn cert_client(pki: &Pki) -> DtlsClientContextBuilder {
    let mut b = DtlsClientContext::builder();
    b.root_certificates_pem(&pki.ca_cert.to_pem().unwrap());
    b
}

/// Makes a session pair and runs the handshake; returns (client, server, completed).
fn connect(
    client: &DtlsClientContext,
    server: &DtlsServerContext,
    server_name: Option<&str>,
) -> (Session, Session, bool) {
    let now = Instant::now();
    let mut c = client.new_session(server_name, now).unwrap();
    let mut s = server.new_session(now).unwrap();
    let ok = handshake(&mut c, &mut s, &mut Link::perfect(), DEADLINE);
    (c, s, ok)
}

fn config_error(result: Result<impl std::fmt::Debug, Error>) -> ConfigError {
    match result {
        Err(Error::Config(e)) => e,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

fn alert_of(session: &Session) -> (&'static str, u8) {
    match session.error() {
        Some(Error::LocalAlert { alert, .. }) => ("sent", alert.description),
        Some(Error::Verification(failure)) => ("sent", failure.alert.description),
        Some(Error::PeerAlert(alert)) => ("received", alert.description),
        other => panic!("expected an alert, got {other:?}"),
    }
}

/// The first datagram a fresh client session sends.
fn first_datagram(client: &DtlsClientContext) -> (Vec<u8>, Session) {
    let mut c = client
        .new_session(Some("server.test"), Instant::now())
        .unwrap();
    let mut buf = vec![0u8; 65_536];
    let n = c.poll_transmit(&mut buf).expect("a ClientHello");
    buf.truncate(n);
    (buf, c)
}

/// Checks that `datagram` is exactly one DTLS record holding one unfragmented ClientHello, and
/// returns the cipher suite names it offers.
fn single_record_client_hello(datagram: &[u8]) -> Vec<String> {
    assert!(
        datagram.len() >= 13 + 12,
        "too short for a record and a handshake header"
    );
    assert_eq!(datagram[0], 22, "content type handshake");
    let record_len = usize::from(u16::from_be_bytes([datagram[11], datagram[12]]));
    assert_eq!(
        13 + record_len,
        datagram.len(),
        "the datagram is exactly one record"
    );
    let hs = &datagram[13..];
    assert_eq!(hs[0], 1, "handshake type ClientHello");
    let u24 = |b: &[u8]| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
    let (length, frag_off, frag_len) = (u24(&hs[1..4]), u24(&hs[6..9]), u24(&hs[9..12]));
    assert_eq!(
        (frag_off, frag_len),
        (0, length),
        "the ClientHello is not fragmented"
    );
    let body = &hs[12..12 + length];
    let mut at = 2 + 32; // client_version, random
    at += 1 + usize::from(body[at]); // session_id
    at += 1 + usize::from(body[at]); // cookie
    let suites_len = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    let suites = &body[at + 2..at + 2 + suites_len];
    let probe = SslContextBuilder::new(SslMethod::dtls()).unwrap().build();
    let ssl = Ssl::new(&probe).unwrap();
    let lists = ssl.bytes_to_cipher_list(suites, false).unwrap();
    lists.suites.iter().map(|c| c.name().to_owned()).collect()
}

/// A datagram-preserving in-memory stream for a raw OpenSSL client (one write = one datagram).
#[derive(Debug, Default)]
struct Pipe {
    inbound: VecDeque<Vec<u8>>,
    outbound: VecDeque<Vec<u8>>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbound.pop_front() {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound.push_back(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// handshakes

#[test]
fn handshake_completes_with_each_default_psk_suite() {
    let server = psk_server().build().unwrap();
    for suite in PSK_CIPHERS.split(':') {
        let client = psk_client().ciphers(suite).build().unwrap();
        let (c, s, ok) = connect(&client, &server, None);
        assert!(
            ok,
            "{suite}: client {:?}, server {:?}",
            c.error(),
            s.error()
        );
        assert_eq!(c.cipher(), Some(suite));
        assert_eq!(s.cipher(), Some(suite));
        assert_eq!(c.protocol_version(), Some("DTLSv1.2"));
        assert_eq!(s.psk_identity(), Some(IDENTITY));
    }
}

#[test]
fn default_psk_contexts_negotiate_ccm8_first() {
    let (c, s, ok) = connect(
        &psk_client().build().unwrap(),
        &psk_server().build().unwrap(),
        None,
    );
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
    assert_eq!(s.cipher(), Some("PSK-AES128-CCM8"));
}

#[test]
fn psk_credentials_callback_sees_the_identity_hint() {
    let server = psk_server().identity_hint(b"hint-1").build().unwrap();
    let seen = Arc::new(Mutex::new(None));
    let seen2 = Arc::clone(&seen);
    let client = DtlsClientContext::builder()
        .psk_credentials_callback(move |hint| {
            *seen2.lock().unwrap() = hint.map(<[u8]>::to_vec);
            Some(PskCredentials::new(IDENTITY, KEY))
        })
        .build()
        .unwrap();
    let (c, s, ok) = connect(&client, &server, None);
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
    assert_eq!(seen.lock().unwrap().as_deref(), Some(&b"hint-1"[..]));
}

#[test]
fn ecdsa_p256_and_p384_certificates_verify() {
    let pki = Pki::new_ec();
    for nid in [Nid::X9_62_PRIME256V1, Nid::SECP384R1] {
        let leaf = leaf(&pki, "server.test", &ec_key(nid));
        let server = cert_server(&leaf).build().unwrap();
        let client = cert_client(&pki).build().unwrap();
        let (c, s, ok) = connect(&client, &server, Some("server.test"));
        assert!(
            ok,
            "{nid:?}: client {:?}, server {:?}",
            c.error(),
            s.error()
        );
        assert!(
            c.cipher().unwrap().starts_with("ECDHE-ECDSA-"),
            "{:?}",
            c.cipher()
        );
        assert_eq!(s.server_name(), Some("server.test"));
        assert!(c.peer_certificate().is_some());
    }
}

#[test]
fn rsa_2048_certificate_verifies() {
    let pki = Pki::new_rsa();
    let leaf = leaf(&pki, "server.test", &rsa_key(2048));
    let server = cert_server(&leaf).build().unwrap();
    let client = cert_client(&pki).build().unwrap();
    let (c, s, ok) = connect(&client, &server, Some("server.test"));
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
    assert!(
        c.cipher().unwrap().starts_with("ECDHE-RSA-"),
        "{:?}",
        c.cipher()
    );
}

/// Ed25519 certificates do not work for a DTLS 1.2 server in OpenSSL 3.0: `ssl_set_masks()`
/// enables an EdDSA certificate for the ECDHE-ECDSA suites only when
/// `TLS1_get_version(s) == TLS1_2_VERSION`, never true for DTLS (its version is 0xFEFD), so the
/// server finds "no shared cipher" even when both sides list the `ed25519` sigalg. The builder
/// therefore refuses such a certificate; a raw OpenSSL server shows the handshake failing.
#[test]
fn ed25519_server_certificate_cannot_complete_a_dtls_1_2_handshake() {
    let pki = Pki::new_ec();
    let key = PKey::generate_ed25519().unwrap();
    let cert = pki.leaf("server.test", &key);
    let leaf = Leaf {
        cert: cert.to_pem().unwrap(),
        key: key.private_key_to_pem_pkcs8().unwrap(),
    };
    let err = config_error(cert_server(&leaf).build());
    assert!(
        matches!(&err, ConfigError::Invalid(m) if m.contains("Ed25519")),
        "{err:?}"
    );

    let mut raw = SslContextBuilder::new(SslMethod::dtls_server()).unwrap();
    raw.set_cipher_list(CERTIFICATE_CIPHERS).unwrap();
    raw.set_sigalgs_list("ed25519").unwrap();
    raw.set_certificate(&cert).unwrap();
    raw.set_private_key(&key).unwrap();
    let raw = raw.build();
    let client = cert_client(&pki)
        .signature_algorithms("ed25519:ECDSA+SHA256")
        .build()
        .unwrap();
    let now = Instant::now();
    let mut c = client.new_session(Some("server.test"), now).unwrap();
    let config = client.session_config().clone();
    let mut s = Session::server(Ssl::new(&raw).unwrap(), &config, now).unwrap();
    assert!(!handshake(&mut c, &mut s, &mut Link::perfect(), DEADLINE));
    match s.error() {
        Some(Error::LocalAlert { alert, reason }) => {
            assert_eq!(alert.description, Alert::HANDSHAKE_FAILURE);
            assert!(reason.contains("no shared cipher"), "{reason}");
        }
        other => panic!("expected the server to fail: {other:?}"),
    }
}

#[test]
fn mutual_auth_accepts_a_client_certificate_from_a_trusted_root() {
    let pki = Pki::new_ec();
    let server_leaf = leaf(&pki, "server.test", &ec_key(Nid::X9_62_PRIME256V1));
    let client_leaf = leaf(&pki, "client.test", &ec_key(Nid::X9_62_PRIME256V1));
    let server = cert_server(&server_leaf)
        .client_auth(ClientAuth::Require)
        .root_certificates_pem(&pki.ca_cert.to_pem().unwrap())
        .build()
        .unwrap();
    let client = cert_client(&pki)
        .certificate_chain_pem(&client_leaf.cert)
        .private_key_pem(&client_leaf.key)
        .build()
        .unwrap();
    let (c, s, ok) = connect(&client, &server, Some("server.test"));
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
    let peer = s
        .peer_certificate()
        .expect("the server saw the client's certificate");
    let cn = peer
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .unwrap();
    assert_eq!(cn.data().as_slice(), b"client.test");
}

#[test]
fn mutual_auth_require_refuses_a_client_without_a_certificate() {
    let pki = Pki::new_ec();
    let server_leaf = leaf(&pki, "server.test", &ec_key(Nid::X9_62_PRIME256V1));
    let server = cert_server(&server_leaf)
        .client_auth(ClientAuth::Require)
        .root_certificates_pem(&pki.ca_cert.to_pem().unwrap())
        .build()
        .unwrap();
    let client = cert_client(&pki).build().unwrap();
    let (c, s, ok) = connect(&client, &server, Some("server.test"));
    assert!(!ok);
    assert_eq!(
        alert_of(&s),
        ("sent", Alert::HANDSHAKE_FAILURE),
        "server: {:?}",
        s.error()
    );
    let (c, _s) = deliver_alerts(c, s);
    assert_eq!(
        alert_of(&c),
        ("received", Alert::HANDSHAKE_FAILURE),
        "client: {:?}",
        c.error()
    );
}

#[test]
fn mutual_auth_request_accepts_a_client_without_a_certificate() {
    let pki = Pki::new_ec();
    let server_leaf = leaf(&pki, "server.test", &ec_key(Nid::X9_62_PRIME256V1));
    let server = cert_server(&server_leaf)
        .client_auth(ClientAuth::Request)
        .root_certificates_pem(&pki.ca_cert.to_pem().unwrap())
        .build()
        .unwrap();
    let client = cert_client(&pki).build().unwrap();
    let (c, s, ok) = connect(&client, &server, Some("server.test"));
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
    assert!(s.peer_certificate().is_none());
}

/// Delivers what both sides still have to send (the failed side's alert), a few rounds.
fn deliver_alerts(mut c: Session, mut s: Session) -> (Session, Session) {
    let mut buf = vec![0u8; 65_536];
    let now = Instant::now();
    for _ in 0..4 {
        while let Some(n) = c.poll_transmit(&mut buf) {
            s.handle_datagram(now, &buf[..n]);
        }
        while let Some(n) = s.poll_transmit(&mut buf) {
            c.handle_datagram(now, &buf[..n]);
        }
    }
    // An epoch-0 alert is held, not acted on at once (a spoofer could have sent it): the side
    // that received it fails at its next retransmission timeout without progress.
    for side in [&mut c, &mut s] {
        support::run_timers_until_failed(side, Duration::from_secs(5));
    }
    (c, s)
}

#[test]
fn hostname_mismatch_is_refused_by_the_client() {
    let pki = Pki::new_ec();
    let leaf = leaf(&pki, "server.test", &ec_key(Nid::X9_62_PRIME256V1));
    let server = cert_server(&leaf).build().unwrap();
    let client = cert_client(&pki).build().unwrap();
    let (c, s, ok) = connect(&client, &server, Some("other.test"));
    assert!(!ok);
    assert!(
        matches!(c.error(), Some(Error::Verification(f)) if f.reason == VerifyReason::HostnameMismatch),
        "client: {:?}",
        c.error()
    );
    let (c, s) = deliver_alerts(c, s);
    assert!(
        matches!(s.error(), Some(Error::PeerAlert(_))),
        "server: {:?}",
        s.error()
    );
    drop(c);
}

#[test]
fn an_untrusted_server_certificate_is_refused() {
    let pki = Pki::new_ec();
    let other = Pki::new_ec();
    let leaf = leaf(&pki, "server.test", &ec_key(Nid::X9_62_PRIME256V1));
    let server = cert_server(&leaf).build().unwrap();
    let client = cert_client(&other).build().unwrap();
    let (c, _s, ok) = connect(&client, &server, Some("server.test"));
    assert!(!ok);
    assert_eq!(alert_of(&c).0, "sent", "client: {:?}", c.error());
}

#[test]
fn disabled_verification_accepts_any_certificate() {
    let pki = Pki::new_ec();
    let leaf = leaf(&pki, "server.test", &ec_key(Nid::X9_62_PRIME256V1));
    let server = cert_server(&leaf).build().unwrap();
    let client = DtlsClientContext::builder()
        .danger_disable_verification()
        .build()
        .unwrap();
    let (c, s, ok) = connect(&client, &server, Some("other.test"));
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
}

#[test]
fn verify_callback_decides_and_a_panicking_one_refuses() {
    let pki = Pki::new_ec();
    let other = Pki::new_ec();
    let leaf = leaf(&pki, "server.test", &ec_key(Nid::X9_62_PRIME256V1));
    let server = cert_server(&leaf).build().unwrap();
    // Trusts nothing, but the callback accepts everything.
    let lenient = DtlsClientContext::builder()
        .root_certificates_pem(&other.ca_cert.to_pem().unwrap())
        .verify_callback(|_preverified, _store| true)
        .build()
        .unwrap();
    let (c, s, ok) = connect(&lenient, &server, Some("server.test"));
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
    let panicking = cert_client(&pki)
        .verify_callback(|_, _| panic!("verify callback panics (expected in this test)"))
        .build()
        .unwrap();
    let (c, _s, ok) = connect(&panicking, &server, Some("server.test"));
    assert!(!ok);
    assert_eq!(alert_of(&c).0, "sent", "client: {:?}", c.error());
}

#[test]
fn unknown_psk_identity_is_refused_with_unknown_psk_identity() {
    let server = psk_server().build().unwrap();
    let client = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(&b"stranger"[..], KEY))
        .build()
        .unwrap();
    let (c, s, ok) = connect(&client, &server, None);
    assert!(!ok);
    assert_eq!(
        alert_of(&s),
        ("sent", Alert::UNKNOWN_PSK_IDENTITY),
        "server: {:?}",
        s.error()
    );
    let (c, _s) = deliver_alerts(c, s);
    assert_eq!(
        alert_of(&c),
        ("received", Alert::UNKNOWN_PSK_IDENTITY),
        "client: {:?}",
        c.error()
    );
}

/// DTLS drops records that fail authentication (RFC 6347 §4.1.2.7), so a wrong key shows only
/// as a Finished the server cannot decrypt; without help the client retransmits until its
/// budget is spent.
#[test]
fn wrong_psk_key_fails_both_sides_without_a_retransmission_loop() {
    let server = psk_server().build().unwrap();
    let client = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(IDENTITY, &b"not the key"[..]))
        .build()
        .unwrap();
    let started = Instant::now();
    let now = Instant::now();
    let mut c = client.new_session(None, now).unwrap();
    let mut s = server.new_session(now).unwrap();
    let mut link = Link::perfect();
    support::run_until(&mut c, &mut s, &mut link, Duration::from_secs(5), |c, s| {
        c.error().is_some() && s.error().is_some()
    });
    // The harness stops at the first failure; deliver what the failed side still sends (its
    // alert) to the other.
    let mut buf = [0u8; 2048];
    while let Some(n) = s.poll_transmit(&mut buf) {
        c.handle_datagram(Instant::now(), &buf[..n]);
    }
    // The client holds the unauthenticated alert until its next retransmission timeout.
    support::run_timers_until_failed(&mut c, Duration::from_secs(5));
    let elapsed = started.elapsed();
    match s.error() {
        Some(Error::LocalAlert { alert, .. }) => {
            assert_eq!(alert.description, Alert::DECRYPT_ERROR)
        }
        other => panic!("server: {other:?}"),
    }
    match c.error() {
        Some(Error::PeerAlert(alert)) => assert_eq!(alert.description, Alert::DECRYPT_ERROR),
        other => panic!("client: {other:?}"),
    }
    assert!(
        c.error().is_some() && s.error().is_some(),
        "client {:?}, server {:?}",
        c.error(),
        s.error()
    );
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    assert!(c.stats().retransmits <= 1, "{:?}", c.stats());
}

#[test]
fn one_server_serves_psk_and_certificate_clients() {
    let pki = Pki::new_ec();
    let leaf = leaf(&pki, "server.test", &ec_key(Nid::X9_62_PRIME256V1));
    let server = psk_server()
        .certificate_chain_pem(&leaf.cert)
        .private_key_pem(&leaf.key)
        .build()
        .unwrap();
    let (c, s, ok) = connect(&psk_client().build().unwrap(), &server, None);
    assert!(ok, "PSK: client {:?}, server {:?}", c.error(), s.error());
    assert!(s.cipher().unwrap().contains("PSK"), "{:?}", s.cipher());
    let (c, s, ok) = connect(
        &cert_client(&pki).build().unwrap(),
        &server,
        Some("server.test"),
    );
    assert!(
        ok,
        "certificate: client {:?}, server {:?}",
        c.error(),
        s.error()
    );
    assert!(
        s.cipher().unwrap().starts_with("ECDHE-ECDSA-"),
        "{:?}",
        s.cipher()
    );
}

#[test]
fn alpn_agrees_on_the_server_preferred_protocol() {
    let server = psk_server()
        .alpn_protocols(&[b"coap", b"h2"])
        .build()
        .unwrap();
    let client = psk_client()
        .alpn_protocols(&[b"h2", b"x-test", b"coap"])
        .build()
        .unwrap();
    let (c, s, ok) = connect(&client, &server, None);
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
    assert_eq!(c.alpn_protocol(), Some(&b"coap"[..]));
    assert_eq!(s.alpn_protocol(), Some(&b"coap"[..]));
}

#[test]
fn alpn_without_a_common_protocol_is_refused() {
    let server = psk_server().alpn_protocols(&[b"coap"]).build().unwrap();
    let client = psk_client().alpn_protocols(&[b"h2"]).build().unwrap();
    let (_c, s, ok) = connect(&client, &server, None);
    assert!(!ok);
    assert_eq!(
        alert_of(&s),
        ("sent", 120),
        "no_application_protocol: {:?}",
        s.error()
    );
}

#[test]
fn a_client_forced_to_dtls_1_0_is_refused() {
    let server = psk_server().build().unwrap();
    let mut raw = SslContextBuilder::new(SslMethod::dtls_client()).unwrap();
    raw.set_min_proto_version(Some(SslVersion::DTLS1)).unwrap();
    raw.set_max_proto_version(Some(SslVersion::DTLS1)).unwrap();
    raw.set_security_level(0);
    raw.set_cipher_list("PSK:@SECLEVEL=0").unwrap();
    raw.set_options(SslOptions::NO_QUERY_MTU);
    raw.set_verify(SslVerifyMode::NONE);
    raw.set_psk_client_callback(|_, _, identity, key| {
        identity[..IDENTITY.len()].copy_from_slice(IDENTITY);
        identity[IDENTITY.len()] = 0;
        key[..KEY.len()].copy_from_slice(KEY);
        Ok(KEY.len())
    });
    let raw = raw.build();
    let mut ssl = Ssl::new(&raw).unwrap();
    ssl.set_mtu(1200).unwrap();
    let mut mid = match ssl.connect(Pipe::default()) {
        Err(HandshakeError::WouldBlock(mid)) => mid,
        other => panic!("expected the handshake to wait, got {:?}", other.err()),
    };
    let hello = mid.get_mut().outbound.pop_front().expect("a ClientHello");
    assert_eq!(&hello[1..3], &[0xfe, 0xff], "the record says DTLS 1.0");
    let now = Instant::now();
    let mut s = server.new_session(now).unwrap();
    s.handle_datagram(now, &hello);
    assert_eq!(
        alert_of(&s),
        ("sent", Alert::PROTOCOL_VERSION),
        "server: {:?}",
        s.error()
    );
    let mut buf = vec![0u8; 2048];
    while let Some(n) = s.poll_transmit(&mut buf) {
        mid.get_mut().inbound.push_back(buf[..n].to_vec());
    }
    assert!(
        matches!(mid.handshake(), Err(HandshakeError::Failure(_))),
        "the raw client fails too"
    );
}

#[test]
fn a_panicking_psk_key_store_fails_only_its_handshake() {
    let server = DtlsServerContext::builder()
        .psk_key_store(|identity| {
            if identity == b"boom" {
                panic!("key store panics (expected in this test)");
            }
            (identity == IDENTITY).then(|| KEY.to_vec())
        })
        .build()
        .unwrap();
    let boom = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(&b"boom"[..], KEY))
        .build()
        .unwrap();
    let (_c, s, ok) = connect(&boom, &server, None);
    assert!(!ok);
    assert_eq!(
        alert_of(&s),
        ("sent", Alert::UNKNOWN_PSK_IDENTITY),
        "server: {:?}",
        s.error()
    );
    let (c, s, ok) = connect(&psk_client().build().unwrap(), &server, None);
    assert!(
        ok,
        "the next handshake: client {:?}, server {:?}",
        c.error(),
        s.error()
    );
}

#[test]
fn a_panicking_psk_credentials_callback_fails_only_its_handshake() {
    let server = psk_server().build().unwrap();
    let client = DtlsClientContext::builder()
        .psk_credentials_callback(|_| panic!("credentials callback panics (expected in this test)"))
        .build()
        .unwrap();
    let (c, _s, ok) = connect(&client, &server, None);
    assert!(!ok);
    assert_eq!(
        alert_of(&c),
        ("sent", Alert::HANDSHAKE_FAILURE),
        "client: {:?}",
        c.error()
    );
    let (c, s, ok) = connect(&psk_client().build().unwrap(), &server, None);
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
}

#[test]
fn a_callback_returning_a_nul_identity_fails_the_handshake() {
    let server = psk_server().build().unwrap();
    let client = DtlsClientContext::builder()
        .psk_credentials_callback(|_| Some(PskCredentials::new(&b"Client\0identity"[..], KEY)))
        .build()
        .unwrap();
    let (c, _s, ok) = connect(&client, &server, None);
    assert!(!ok);
    assert_eq!(
        alert_of(&c),
        ("sent", Alert::HANDSHAKE_FAILURE),
        "client: {:?}",
        c.error()
    );
}

// ---------------------------------------------------------------------------------------------
// what goes on the wire

#[test]
fn default_psk_client_hello_is_one_record_within_1200_bytes_and_offers_only_psk() {
    let (hello, c) = first_datagram(&psk_client().build().unwrap());
    assert!(hello.len() <= 1200, "{} bytes", hello.len());
    assert!(!c.has_transmit(), "one datagram");
    let suites = single_record_client_hello(&hello);
    let expected: Vec<&str> = PSK_CIPHERS.split(':').collect();
    let offered: Vec<&str> = suites
        .iter()
        .map(String::as_str)
        .filter(|s| !s.contains("SCSV"))
        .collect();
    assert_eq!(offered, expected);
}

#[test]
fn default_certificate_client_hello_is_one_record_within_1200_bytes() {
    let pki = Pki::new_ec();
    let (hello, c) = first_datagram(&cert_client(&pki).build().unwrap());
    assert!(hello.len() <= 1200, "{} bytes", hello.len());
    assert!(!c.has_transmit(), "one datagram");
    let suites = single_record_client_hello(&hello);
    let expected: Vec<&str> = CERTIFICATE_CIPHERS.split(':').collect();
    let offered: Vec<&str> = suites
        .iter()
        .map(String::as_str)
        .filter(|s| !s.contains("SCSV"))
        .collect();
    assert_eq!(offered, expected);
}

#[test]
fn key_log_callback_receives_nss_client_random_lines() {
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&lines);
    let client = psk_client()
        .key_log_callback(move |line| sink.lock().unwrap().push(line.to_owned()))
        .build()
        .unwrap();
    let (c, s, ok) = connect(&client, &psk_server().build().unwrap(), None);
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
    let lines = lines.lock().unwrap();
    assert!(!lines.is_empty());
    let is_hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    for line in lines.iter() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert_eq!(fields[0], "CLIENT_RANDOM", "{line}");
        assert!(is_hex(fields[1], 64) && is_hex(fields[2], 96), "{line}");
    }
}

#[test]
fn key_log_file_gets_the_same_lines() {
    let path = std::env::temp_dir().join(format!("openssl-dtls-keylog-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let server = psk_server().key_log_file(&path).build().unwrap();
    let (c, s, ok) = connect(&psk_client().build().unwrap(), &server, None);
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        text.lines().count() >= 1 && text.lines().all(|l| l.starts_with("CLIENT_RANDOM ")),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// sharing and secrets

#[test]
fn contexts_are_clone_send_sync_and_shared_across_threads() {
    fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
    assert_shareable::<DtlsClientContext>();
    assert_shareable::<DtlsServerContext>();
    let server = psk_server().build().unwrap();
    let client = psk_client().build().unwrap();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (client, server) = (client.clone(), server.clone());
            std::thread::spawn(move || connect(&client, &server, None).2)
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap());
    }
}

#[test]
fn psk_credentials_debug_never_shows_the_key() {
    let creds = PskCredentials::new(&b"device-7"[..], &b"hunter2-secret"[..]);
    let shown = format!("{creds:?}");
    assert!(shown.contains("device-7"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert_eq!(creds.key(), b"hunter2-secret");
}

#[test]
fn builders_are_reusable_and_settings_reach_the_sessions() {
    let mut b = psk_client();
    b.mtu(1400)
        .handshake_timeout(Duration::from_secs(5))
        .max_retransmits(3);
    b.retransmit_timeout(Duration::from_millis(200), Duration::from_secs(2));
    let first = b.build().unwrap();
    let second = b.mtu(600).build().unwrap();
    assert_eq!(first.session_config().mtu, 1400);
    assert_eq!(second.session_config().mtu, 600);
    let session = first.new_session(None, Instant::now()).unwrap();
    assert_eq!(session.mtu(), 1400);
    assert_eq!(session.config().max_retransmits, 3);
    assert_eq!(
        session.config().retransmit_initial,
        Duration::from_millis(200)
    );
}

// ---------------------------------------------------------------------------------------------
// build-time errors

#[test]
fn malformed_pem_fails_build_as_unreadable() {
    let err = config_error(
        DtlsServerContext::builder()
            .certificate_chain_pem(
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            )
            .private_key_pem(b"garbage")
            .build(),
    );
    assert!(matches!(err, ConfigError::Unreadable { .. }), "{err:?}");
    let err = config_error(
        DtlsServerContext::builder()
            .certificate_chain_pem(b"no pem here")
            .private_key_pem(b"garbage")
            .build(),
    );
    assert!(matches!(err, ConfigError::Unreadable { .. }), "{err:?}");
    let err = config_error(psk_client().root_certificates_pem(b"nothing").build());
    assert!(matches!(err, ConfigError::Unreadable { .. }), "{err:?}");
}

#[test]
fn unreadable_files_fail_build_naming_the_file() {
    let missing = "/nonexistent/openssl-dtls/cert.pem";
    let err = config_error(
        DtlsServerContext::builder()
            .certificate_chain_file(missing)
            .private_key_file(missing)
            .build(),
    );
    match &err {
        ConfigError::Unreadable { what, .. } => assert!(what.contains(missing), "{what}"),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains(missing));
}

#[test]
fn certificate_files_pem_and_der_load() {
    let pki = Pki::new_ec();
    let key = ec_key(Nid::X9_62_PRIME256V1);
    let cert = pki.leaf("server.test", &key);
    let dir = std::env::temp_dir().join(format!("openssl-dtls-ctx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.der"), cert.to_der().unwrap()).unwrap();
    std::fs::write(dir.join("key.pem"), key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), pki.ca_cert.to_pem().unwrap()).unwrap();
    let server = DtlsServerContext::builder()
        .certificate_chain_file(dir.join("cert.der"))
        .private_key_file(dir.join("key.pem"))
        .build()
        .unwrap();
    let client = DtlsClientContext::builder()
        .root_certificates_file(dir.join("ca.pem"))
        .build()
        .unwrap();
    let (c, s, ok) = connect(&client, &server, Some("server.test"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
    // DER bytes work too.
    let server = DtlsServerContext::builder()
        .certificate_der(&cert.to_der().unwrap())
        .private_key_der(&key.private_key_to_der().unwrap())
        .build()
        .unwrap();
    let client = DtlsClientContext::builder()
        .root_certificate_der(&pki.ca_cert.to_der().unwrap())
        .build()
        .unwrap();
    let (c, s, ok) = connect(&client, &server, Some("server.test"));
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
}

#[test]
fn key_that_does_not_match_the_certificate_fails_build() {
    let pki = Pki::new_ec();
    let cert = pki.leaf("server.test", &ec_key(Nid::X9_62_PRIME256V1));
    let other = ec_key(Nid::X9_62_PRIME256V1);
    let err = config_error(
        DtlsServerContext::builder()
            .certificate_chain_pem(&cert.to_pem().unwrap())
            .private_key_pem(&other.private_key_to_pem_pkcs8().unwrap())
            .build(),
    );
    assert_eq!(err, ConfigError::KeyMismatch);
}

#[test]
fn server_without_psk_or_certificate_fails_build() {
    assert_eq!(
        config_error(DtlsServerContext::builder().build()),
        ConfigError::NoCredentials
    );
}

#[test]
fn cipher_string_openssl_rejects_fails_build_naming_it() {
    let err = config_error(psk_client().ciphers("NOPE").build());
    match &err {
        ConfigError::Ciphers { ciphers, .. } => assert_eq!(ciphers, "NOPE"),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("NOPE"));
}

#[test]
fn cipher_string_with_only_anonymous_suites_fails_build() {
    let err = config_error(psk_server().ciphers("aNULL").build());
    assert!(
        matches!(&err, ConfigError::Ciphers { ciphers, .. } if ciphers == "aNULL"),
        "{err:?}"
    );
}

#[test]
fn cipher_string_unusable_with_the_credentials_fails_build() {
    // A PSK-only server cannot use certificate suites.
    let err = config_error(
        psk_server()
            .cipher_preset(CipherPreset::Certificates)
            .build(),
    );
    assert!(matches!(err, ConfigError::Ciphers { .. }), "{err:?}");
    // An RSA certificate cannot serve ECDSA suites.
    let pki = Pki::new_rsa();
    let leaf = leaf(&pki, "server.test", &rsa_key(2048));
    let err = config_error(
        cert_server(&leaf)
            .ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
            .build(),
    );
    assert!(matches!(err, ConfigError::Ciphers { .. }), "{err:?}");
    // A PSK-only client has no use for certificate suites... unless it says so.
    let err = config_error(
        psk_client()
            .ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
            .build(),
    );
    assert!(matches!(err, ConfigError::Ciphers { .. }), "{err:?}");
}

#[test]
fn unknown_group_fails_build() {
    let err = config_error(psk_client().groups("X25519:NOPE-999").build());
    assert_eq!(
        err,
        ConfigError::Groups {
            groups: "X25519:NOPE-999".to_owned()
        }
    );
}

#[test]
fn unknown_signature_algorithm_fails_build() {
    let err = config_error(psk_server().signature_algorithms("NOPE+SHA256").build());
    assert!(
        matches!(err, ConfigError::SignatureAlgorithms { .. }),
        "{err:?}"
    );
}

#[test]
fn mtu_zero_or_below_openssl_minimum_fails_build() {
    for mtu in [0, 100] {
        let err = config_error(psk_client().mtu(mtu).build());
        assert!(
            matches!(err, ConfigError::OutOfRange { setting: "mtu", value, .. } if value == mtu as u64),
            "{err:?}"
        );
        let err = config_error(psk_server().mtu(mtu).build());
        assert!(
            matches!(err, ConfigError::OutOfRange { setting: "mtu", .. }),
            "{err:?}"
        );
    }
}

#[test]
fn fixed_psk_identity_with_nul_or_too_long_fails_build() {
    let err = config_error(
        DtlsClientContext::builder()
            .psk_credentials(PskCredentials::new(&b"Client\0identity"[..], KEY))
            .build(),
    );
    assert!(
        matches!(&err, ConfigError::Invalid(m) if m.contains("NUL")),
        "{err:?}"
    );
    let err = config_error(
        DtlsClientContext::builder()
            .psk_credentials(PskCredentials::new(vec![b'a'; 129], KEY))
            .build(),
    );
    assert!(
        matches!(&err, ConfigError::Invalid(m) if m.contains("128")),
        "{err:?}"
    );
    let err = config_error(
        DtlsClientContext::builder()
            .psk_credentials(PskCredentials::new(IDENTITY, Vec::new()))
            .build(),
    );
    assert!(matches!(err, ConfigError::Invalid(_)), "{err:?}");
}

#[test]
fn identity_hint_with_nul_fails_build() {
    let err = config_error(psk_server().identity_hint(b"a\0b").build());
    assert!(
        matches!(&err, ConfigError::Invalid(m) if m.contains("NUL")),
        "{err:?}"
    );
}

#[test]
fn certificate_client_without_trust_fails_build() {
    let err = config_error(DtlsClientContext::builder().build());
    assert!(
        matches!(&err, ConfigError::Invalid(m) if m.contains("root")),
        "{err:?}"
    );
}

#[test]
fn client_auth_without_roots_fails_build() {
    let pki = Pki::new_ec();
    let leaf = leaf(&pki, "server.test", &ec_key(Nid::X9_62_PRIME256V1));
    let err = config_error(cert_server(&leaf).client_auth(ClientAuth::Require).build());
    assert!(matches!(err, ConfigError::Invalid(_)), "{err:?}");
}

#[test]
fn short_cookie_secret_and_out_of_range_settings_fail_build() {
    let err = config_error(psk_server().cookie_secret(b"short").build());
    assert!(
        matches!(&err, ConfigError::Invalid(m) if m.contains("cookie")),
        "{err:?}"
    );
    assert!(psk_server().cookie_secret(&[7u8; 32]).build().is_ok());
    let err = config_error(psk_server().cookie_secret_rotation(Duration::ZERO).build());
    assert!(matches!(err, ConfigError::OutOfRange { .. }), "{err:?}");
    let err = config_error(psk_server().security_level(6).build());
    assert!(
        matches!(
            err,
            ConfigError::OutOfRange {
                setting: "security_level",
                ..
            }
        ),
        "{err:?}"
    );
    let err = config_error(psk_client().alpn_protocols(&[b""]).build());
    assert!(matches!(err, ConfigError::Invalid(_)), "{err:?}");
}

#[test]
fn nul_bytes_in_strings_fail_build_instead_of_panicking() {
    assert!(matches!(
        config_error(psk_client().ciphers("PSK\0").build()),
        ConfigError::Ciphers { .. }
    ));
    assert!(matches!(
        config_error(psk_client().groups("P-256\0").build()),
        ConfigError::Groups { .. }
    ));
    let client = psk_client().build().unwrap();
    assert!(matches!(
        client.new_session(Some("a\0b"), Instant::now()),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        client.new_session(Some(""), Instant::now()),
        Err(Error::Config(_))
    ));
}

#[test]
fn lowered_security_level_keeps_the_dtls_1_2_floor() {
    let server = psk_server().security_level(0).build().unwrap();
    let mut raw = SslContextBuilder::new(SslMethod::dtls_client()).unwrap();
    raw.set_max_proto_version(Some(SslVersion::DTLS1)).unwrap();
    raw.set_cipher_list("PSK:@SECLEVEL=0").unwrap();
    raw.set_psk_client_callback(|_, _, identity, key| {
        identity[..IDENTITY.len()].copy_from_slice(IDENTITY);
        identity[IDENTITY.len()] = 0;
        key[..KEY.len()].copy_from_slice(KEY);
        Ok(KEY.len())
    });
    let raw = raw.build();
    let mut mid = match Ssl::new(&raw).unwrap().connect(Pipe::default()) {
        Err(HandshakeError::WouldBlock(mid)) => mid,
        other => panic!("expected the handshake to wait, got {:?}", other.err()),
    };
    let hello = mid.get_mut().outbound.pop_front().expect("a ClientHello");
    let now = Instant::now();
    let mut s = server.new_session(now).unwrap();
    s.handle_datagram(now, &hello);
    assert_eq!(
        alert_of(&s),
        ("sent", Alert::PROTOCOL_VERSION),
        "server: {:?}",
        s.error()
    );
}

#[test]
fn openssl_version_decides_whether_ccm8_needs_security_level_0() {
    // On 3.0 CCM8 works at the default level; on 3.1+ the context lowers the level itself.
    // Either way a CCM8-only context builds and completes a handshake.
    let client = psk_client().ciphers("PSK-AES128-CCM8").build().unwrap();
    let server = psk_server().ciphers("PSK-AES128-CCM8").build().unwrap();
    let (c, s, ok) = connect(&client, &server, None);
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
    assert_eq!(c.cipher(), Some("PSK-AES128-CCM8"));
    let fresh = SslContextBuilder::new(SslMethod::dtls_client())
        .unwrap()
        .build();
    let default_level = Ssl::new(&fresh).unwrap().security_level();
    let expected_level = if openssl::version::number() >= 0x3010_0000 {
        0
    } else {
        default_level
    };
    assert_eq!(c.ssl().unwrap().security_level(), expected_level);
    // An explicit level is respected: at level 1 on 3.1+ CCM8 is gone, and the build says so.
    let explicit = psk_client()
        .ciphers("PSK-AES128-CCM8")
        .security_level(1)
        .build();
    if openssl::version::number() >= 0x3010_0000 {
        assert!(matches!(
            config_error(explicit),
            ConfigError::Ciphers { .. }
        ));
    } else {
        assert!(explicit.is_ok());
    }
}

#[test]
fn the_server_cipher_order_wins_over_the_clients() {
    // The client prefers AES-256-GCM; the server's preset puts CCM8 first and decides.
    let client = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(IDENTITY, KEY))
        .ciphers("PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:PSK-AES128-CCM8")
        .build()
        .unwrap();
    let server = psk_server().build().unwrap();
    let (c, s, ok) = connect(&client, &server, None);
    assert!(ok, "client {:?}, server {:?}", c.error(), s.error());
    assert_eq!(s.cipher(), Some("PSK-AES128-CCM8"));
    assert_eq!(c.cipher(), Some("PSK-AES128-CCM8"));
}

/// A raw rust-openssl PSK client context (our client contexts never offer a saved session).
fn raw_psk_client() -> openssl::ssl::SslContext {
    let mut c =
        openssl::ssl::SslContextBuilder::new(openssl::ssl::SslMethod::dtls_client()).unwrap();
    c.set_cipher_list("PSK-AES128-GCM-SHA256").unwrap();
    c.set_psk_client_callback(|_, _, identity, psk| {
        identity[..IDENTITY.len()].copy_from_slice(IDENTITY);
        identity[IDENTITY.len()] = 0;
        psk[..KEY.len()].copy_from_slice(KEY);
        Ok(KEY.len())
    });
    c.build()
}

#[test]
fn servers_do_not_resume_sessions_so_every_handshake_rechecks_credentials() {
    let server = psk_server().build().unwrap();
    let raw = raw_psk_client();
    let config = server.session_config().clone();
    let now = Instant::now();
    let mut c = Session::client(openssl::ssl::Ssl::new(&raw).unwrap(), &config, now).unwrap();
    let mut s = server.new_session(now).unwrap();
    assert!(handshake(
        &mut c,
        &mut s,
        &mut Link::perfect(),
        Duration::from_secs(5)
    ));
    let saved = c
        .ssl()
        .unwrap()
        .session()
        .expect("a session to offer again")
        .to_owned();
    let mut ssl = openssl::ssl::Ssl::new(&raw).unwrap();
    // SAFETY: the session comes from a handshake on a context of the same method.
    unsafe { ssl.set_session(&saved).unwrap() };
    let mut c = Session::client(ssl, &config, Instant::now()).unwrap();
    let mut s = server.new_session(Instant::now()).unwrap();
    assert!(handshake(
        &mut c,
        &mut s,
        &mut Link::perfect(),
        Duration::from_secs(5)
    ));
    assert!(
        !s.ssl().unwrap().session_reused(),
        "the server resumed a session instead of a full handshake"
    );
    assert!(!c.ssl().unwrap().session_reused());
}

#[test]
fn a_certificate_chain_beyond_max_cert_list_is_refused_by_the_client() {
    use openssl::x509::extension::SubjectAlternativeName;
    // One leaf certificate of > 32 KiB (thousands of SAN names), self-signed and trusted, so
    // that only its size can fail the handshake.
    let key = ec_key(Nid::X9_62_PRIME256V1);
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "big.test").unwrap();
    let name = name.build();
    let mut b = openssl::x509::X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::from_unix(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    let mut san = SubjectAlternativeName::new();
    for i in 0..2000 {
        san.dns(&format!("host-{i:05}.a-rather-long-domain-name.test"));
    }
    let san = san.build(&b.x509v3_context(None, None)).unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    let cert = b.build();
    assert!(cert.to_der().unwrap().len() > openssl_dtls::context::MAX_CERT_LIST);
    let server = DtlsServerContext::builder()
        .certificate_der(&cert.to_der().unwrap())
        .private_key_der(&key.private_key_to_der().unwrap())
        .build()
        .unwrap();
    let client = DtlsClientContext::builder()
        .root_certificate_der(&cert.to_der().unwrap())
        .build()
        .unwrap();
    let (c, _s, ok) = connect(&client, &server, Some("big.test"));
    assert!(
        !ok,
        "a {}-byte certificate was accepted",
        cert.to_der().unwrap().len()
    );
    assert!(
        c.error().is_some(),
        "the client fails rather than waiting out its deadline"
    );
}
