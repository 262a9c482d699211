//! The sans-IO session, in process: handshakes (PSK and certificates) through a seeded faulty
//! link, application data, MTU enforcement, timeouts.

mod support;

use std::time::{Duration, Instant};

use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{Ssl, SslContext, SslContextBuilder, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use openssl_dtls::{Error, Session, SessionConfig, SessionState, TimeoutPhase};
use support::{handshake, run_until, Dir, Faults, Link, Pki};

const IDENTITY: &[u8] = b"Client_identity";
const KEY: &[u8] = b"secretPSK";

fn psk_contexts(cipher: &str) -> (SslContext, SslContext) {
    // OpenSSL 3.1+ rates CCM8's 64-bit tag below security level 1: raw contexts (unlike ours,
    // which handle it) must ask for level 0 to use it. The Session still enforces DTLS 1.2.
    let list = if cipher.contains("CCM8") {
        format!("{cipher}:@SECLEVEL=0")
    } else {
        cipher.to_owned()
    };
    let cipher = list.as_str();
    let mut c = SslContextBuilder::new(SslMethod::dtls_client()).unwrap();
    c.set_cipher_list(cipher).unwrap();
    c.set_psk_client_callback(|_, _hint, identity, psk| {
        identity[..IDENTITY.len()].copy_from_slice(IDENTITY);
        identity[IDENTITY.len()] = 0;
        psk[..KEY.len()].copy_from_slice(KEY);
        Ok(KEY.len())
    });
    let mut s = SslContextBuilder::new(SslMethod::dtls_server()).unwrap();
    s.set_cipher_list(cipher).unwrap();
    s.set_psk_server_callback(|_, identity, psk| {
        assert_eq!(identity, Some(IDENTITY));
        psk[..KEY.len()].copy_from_slice(KEY);
        Ok(KEY.len())
    });
    (c.build(), s.build())
}

fn cert_contexts(
    pki: &Pki,
    leaf: &X509,
    key: &PKey<Private>,
    chain: &[X509],
) -> (SslContext, SslContext) {
    let mut c = SslContextBuilder::new(SslMethod::dtls_client()).unwrap();
    c.cert_store_mut().add_cert(pki.ca_cert.clone()).unwrap();
    c.set_verify(SslVerifyMode::PEER);
    c.set_cipher_list("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256")
        .unwrap();
    let mut s = SslContextBuilder::new(SslMethod::dtls_server()).unwrap();
    s.set_certificate(leaf).unwrap();
    for extra in chain {
        s.add_extra_chain_cert(extra.clone()).unwrap();
    }
    s.set_private_key(key).unwrap();
    s.check_private_key().unwrap();
    (c.build(), s.build())
}

fn test_config() -> SessionConfig {
    let mut config = SessionConfig::default();
    config.retransmit_initial = Duration::from_millis(50);
    config.retransmit_max = Duration::from_millis(400);
    config.handshake_timeout = Duration::from_secs(10);
    config.max_retransmits = 30;
    config
}

fn pair(client: &SslContext, server: &SslContext, config: &SessionConfig) -> (Session, Session) {
    let now = Instant::now();
    let c = Session::client(Ssl::new(client).unwrap(), config, now).unwrap();
    let s = Session::server(Ssl::new(server).unwrap(), config, now).unwrap();
    (c, s)
}

/// Sends `msg` from one side and runs until the other has it; returns what arrived.
fn exchange(
    from_client: bool,
    msg: &[u8],
    c: &mut Session,
    s: &mut Session,
    link: &mut Link,
) -> Vec<u8> {
    if from_client {
        c.send(msg).unwrap()
    } else {
        s.send(msg).unwrap()
    }
    let mut got = Vec::new();
    let ok = run_until(c, s, link, Duration::from_secs(5), |c, s| {
        let rx = if from_client { s } else { c };
        let mut buf = [0u8; 2048];
        if let Ok(Some(n)) = rx.recv(&mut buf) {
            got = buf[..n].to_vec();
            true
        } else {
            false
        }
    });
    assert!(ok, "message not delivered");
    got
}

fn psk_handshake_and_data(cipher: &str) {
    let (cc, sc) = psk_contexts(cipher);
    let (mut c, mut s) = pair(&cc, &sc, &test_config());
    let mut link = Link::perfect();
    assert!(handshake(&mut c, &mut s, &mut link, Duration::from_secs(5)));
    assert_eq!(c.cipher(), Some(cipher));
    assert_eq!(s.cipher(), Some(cipher));
    assert_eq!(c.protocol_version(), Some("DTLSv1.2"));
    assert_eq!(s.psk_identity(), Some(IDENTITY));
    assert_eq!(
        exchange(true, b"hello server", &mut c, &mut s, &mut link),
        b"hello server"
    );
    assert_eq!(
        exchange(false, b"hello client", &mut c, &mut s, &mut link),
        b"hello client"
    );
}

#[test]
fn psk_aes128_ccm8_handshake_then_data_both_ways() {
    psk_handshake_and_data("PSK-AES128-CCM8");
}

#[test]
fn psk_aes128_gcm_handshake_then_data_both_ways() {
    psk_handshake_and_data("PSK-AES128-GCM-SHA256");
}

#[test]
fn ecdsa_p256_certificate_handshake_then_data_both_ways() {
    let pki = Pki::new_ec();
    let key = support::ec_key(Nid::X9_62_PRIME256V1);
    let leaf = pki.leaf("server.test", &key);
    let (cc, sc) = cert_contexts(&pki, &leaf, &key, &[]);
    let (mut c, mut s) = pair(&cc, &sc, &test_config());
    let mut link = Link::perfect();
    assert!(
        handshake(&mut c, &mut s, &mut link, Duration::from_secs(5)),
        "{:?} {:?}",
        c.error(),
        s.error()
    );
    assert_eq!(c.cipher(), Some("ECDHE-ECDSA-AES128-GCM-SHA256"));
    let peer = c.peer_certificate().expect("server certificate");
    assert_eq!(peer.to_der().unwrap(), leaf.to_der().unwrap());
    assert_eq!(exchange(true, b"ping", &mut c, &mut s, &mut link), b"ping");
    assert_eq!(exchange(false, b"pong", &mut c, &mut s, &mut link), b"pong");
}

/// Number of datagrams a clean PSK handshake takes, both directions.
fn clean_handshake_datagrams(cc: &SslContext, sc: &SslContext) -> usize {
    let (mut c, mut s) = pair(cc, sc, &test_config());
    let mut link = Link::perfect();
    assert!(handshake(&mut c, &mut s, &mut link, Duration::from_secs(5)));
    link.sent
}

#[test]
fn handshake_completes_when_each_handshake_datagram_is_dropped_in_turn() {
    let (cc, sc) = psk_contexts("PSK-AES128-CCM8");
    let total = clean_handshake_datagrams(&cc, &sc);
    assert!(
        total >= 4,
        "a DTLS 1.2 handshake takes at least 4 flights, saw {total}"
    );
    for i in 0..total {
        let (mut c, mut s) = pair(&cc, &sc, &test_config());
        let mut link = Link::new(
            1,
            Faults {
                drop_indices: vec![i],
                ..Faults::default()
            },
        );
        assert!(
            handshake(&mut c, &mut s, &mut link, Duration::from_secs(8)),
            "dropping datagram {i} of {total}: client {:?} server {:?}",
            c.error(),
            s.error()
        );
        assert_eq!(link.dropped, 1);
        // Data still flows both ways afterwards (the last flight may have been the one lost).
        assert_eq!(
            exchange(true, b"after loss", &mut c, &mut s, &mut link),
            b"after loss"
        );
        assert_eq!(
            exchange(false, b"reply", &mut c, &mut s, &mut link),
            b"reply"
        );
    }
}

#[test]
fn handshake_completes_when_each_certificate_handshake_datagram_is_dropped_in_turn() {
    let pki = Pki::new_ec();
    let key = support::ec_key(Nid::X9_62_PRIME256V1);
    let leaf = pki.leaf("server.test", &key);
    let (cc, sc) = cert_contexts(&pki, &leaf, &key, &[]);
    let total = clean_handshake_datagrams(&cc, &sc);
    for i in 0..total {
        let (mut c, mut s) = pair(&cc, &sc, &test_config());
        let mut link = Link::new(
            1,
            Faults {
                drop_indices: vec![i],
                ..Faults::default()
            },
        );
        assert!(
            handshake(&mut c, &mut s, &mut link, Duration::from_secs(8)),
            "dropping datagram {i} of {total}"
        );
    }
}

#[test]
fn twenty_percent_loss_both_ways_over_200_seeds_all_complete_within_the_deadline() {
    let (cc, sc) = psk_contexts("PSK-AES128-CCM8");
    let config = test_config();
    let seeds: Vec<u64> = (0..200).collect();
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = seeds
            .chunks(25)
            .map(|chunk| {
                let (cc, sc, config) = (&cc, &sc, &config);
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    for &seed in chunk {
                        let (mut c, mut s) = pair(cc, sc, config);
                        let mut link = Link::new(
                            seed,
                            Faults {
                                drop: 0.2,
                                ..Faults::default()
                            },
                        );
                        let ok = handshake(&mut c, &mut s, &mut link, config.handshake_timeout);
                        if !ok {
                            failures.push(format!(
                                "seed {seed}: client {:?} server {:?}",
                                c.error(),
                                s.error()
                            ));
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of 200 failed: {failures:?}",
        failures.len()
    );
}

#[test]
fn reordered_handshake_datagrams_still_complete() {
    let (cc, sc) = psk_contexts("PSK-AES128-GCM-SHA256");
    for seed in 0..20 {
        let (mut c, mut s) = pair(&cc, &sc, &test_config());
        let mut link = Link::new(
            seed,
            Faults {
                reorder: 0.5,
                duplicate: 0.2,
                ..Faults::default()
            },
        );
        assert!(
            handshake(&mut c, &mut s, &mut link, Duration::from_secs(8)),
            "seed {seed}"
        );
    }
}

#[test]
fn duplicated_application_data_is_delivered_once() {
    let (cc, sc) = psk_contexts("PSK-AES128-CCM8");
    let (mut c, mut s) = pair(&cc, &sc, &test_config());
    let mut link = Link::perfect();
    assert!(handshake(&mut c, &mut s, &mut link, Duration::from_secs(5)));
    link.faults.duplicate = 1.0;
    for i in 0..20u8 {
        c.send(&[i; 100]).unwrap();
    }
    let mut got = Vec::new();
    run_until(
        &mut c,
        &mut s,
        &mut link,
        Duration::from_millis(300),
        |_, s| {
            let mut buf = [0u8; 256];
            while let Ok(Some(n)) = s.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
            false
        },
    );
    assert_eq!(got.len(), 20, "each of 20 datagrams exactly once");
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d, &vec![i as u8; 100]);
    }
}

#[test]
fn a_4kb_certificate_chain_fragments_within_an_mtu_of_500() {
    let pki = Pki::new_rsa();
    let key = support::ec_key(Nid::X9_62_PRIME256V1);
    let (leaf, chain) = pki.long_chain("server.test", &key, 3);
    let chain_len: usize = chain
        .iter()
        .map(|c| c.to_der().unwrap().len())
        .sum::<usize>()
        + leaf.to_der().unwrap().len();
    assert!(chain_len > 4096, "chain is {chain_len} bytes");
    let (cc, sc) = cert_contexts(&pki, &leaf, &key, &chain);
    let mut config = test_config();
    config.mtu = 500;
    let (mut c, mut s) = pair(&cc, &sc, &config);
    let mut link = Link::new(
        1,
        Faults {
            max_datagram: Some(500),
            ..Faults::default()
        },
    );
    assert!(
        handshake(&mut c, &mut s, &mut link, Duration::from_secs(5)),
        "{:?} {:?}",
        c.error(),
        s.error()
    );
    assert!(link.largest <= 500, "largest datagram {}", link.largest);
    assert!(
        link.sent > 10,
        "a {chain_len}-byte chain needs many 500-byte datagrams, saw {}",
        link.sent
    );
    assert_eq!(
        exchange(false, b"fragmented fine", &mut c, &mut s, &mut link),
        b"fragmented fine"
    );
}

#[test]
fn a_payload_larger_than_the_data_mtu_is_refused_and_nothing_is_sent() {
    let (cc, sc) = psk_contexts("PSK-AES128-CCM8");
    let (mut c, mut s) = pair(&cc, &sc, &test_config());
    let mut link = Link::perfect();
    assert!(handshake(&mut c, &mut s, &mut link, Duration::from_secs(5)));
    let max = c.data_mtu();
    // 1200 - 13 (header) - 8 (explicit nonce) - 8 (CCM8 tag)
    assert_eq!(max, 1200 - 13 - 8 - 8);
    let before = c.stats().app_out;
    match c.send(&vec![0u8; max + 1]) {
        Err(Error::PayloadTooLarge { len, max: m }) => {
            assert_eq!(len, max + 1);
            assert_eq!(m, max);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert!(!c.has_transmit());
    assert_eq!(c.stats().app_out, before);
    // Exactly the data MTU fits in one datagram within the MTU.
    c.send(&vec![7u8; max]).unwrap();
    let mut buf = [0u8; 2048];
    assert_eq!(c.poll_transmit(&mut buf), Some(1200));
}

#[test]
fn send_before_the_handshake_completes_is_not_connected() {
    let (cc, sc) = psk_contexts("PSK-AES128-CCM8");
    let (mut c, _s) = pair(&cc, &sc, &test_config());
    assert!(matches!(c.send(b"early"), Err(Error::NotConnected)));
}

#[test]
fn a_peer_that_disappears_mid_handshake_fails_with_timeout_at_the_deadline() {
    let (cc, _) = psk_contexts("PSK-AES128-CCM8");
    let mut config = test_config();
    config.handshake_timeout = Duration::from_millis(400);
    let start = Instant::now();
    let mut c = Session::client(Ssl::new(&cc).unwrap(), &config, start).unwrap();
    let mut buf = [0u8; 2048];
    let mut sent = 0;
    while c.state() == SessionState::Handshaking {
        while c.poll_transmit(&mut buf).is_some() {
            sent += 1; // into the void
        }
        let wake = c
            .poll_timeout()
            .expect("a handshaking session always has a deadline");
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        c.handle_timeout(Instant::now());
        assert!(start.elapsed() < Duration::from_secs(3), "no timeout");
    }
    assert!(
        matches!(
            c.error(),
            Some(Error::Timeout {
                peer: None,
                phase: TimeoutPhase::Handshake
            })
        ),
        "{:?}",
        c.error()
    );
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert!(sent >= 2, "the ClientHello was retransmitted ({sent} sent)");
    // Sticky: the same error from every call afterwards.
    assert!(matches!(c.send(b"x"), Err(Error::Timeout { .. })));
    assert!(matches!(c.recv(&mut buf), Err(Error::Timeout { .. })));
}

#[test]
fn the_retransmission_cap_fails_the_handshake_with_timeout() {
    let (cc, _) = psk_contexts("PSK-AES128-CCM8");
    let mut config = test_config();
    config.retransmit_initial = Duration::from_millis(20);
    config.retransmit_max = Duration::from_millis(20);
    config.max_retransmits = 3;
    let start = Instant::now();
    let mut c = Session::client(Ssl::new(&cc).unwrap(), &config, start).unwrap();
    let mut buf = [0u8; 2048];
    let mut sent = 0;
    while c.state() == SessionState::Handshaking && start.elapsed() < Duration::from_secs(3) {
        while c.poll_transmit(&mut buf).is_some() {
            sent += 1;
        }
        let wake = c.poll_timeout().unwrap();
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        c.handle_timeout(Instant::now());
    }
    assert!(
        matches!(
            c.error(),
            Some(Error::Timeout {
                phase: TimeoutPhase::Retransmissions,
                ..
            })
        ),
        "{:?}",
        c.error()
    );
    assert_eq!(sent, 4, "the first ClientHello and 3 retransmissions");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "the cap, not the 10 s deadline, ended it"
    );
}

#[test]
fn close_notify_ends_the_peers_receive_with_closed() {
    let (cc, sc) = psk_contexts("PSK-AES128-CCM8");
    let (mut c, mut s) = pair(&cc, &sc, &test_config());
    let mut link = Link::perfect();
    assert!(handshake(&mut c, &mut s, &mut link, Duration::from_secs(5)));
    c.send(b"last words").unwrap();
    c.close();
    assert_eq!(c.state(), SessionState::Closed);
    let mut buf = [0u8; 64];
    let ok = run_until(&mut c, &mut s, &mut link, Duration::from_secs(2), |_, s| {
        s.state() == SessionState::Closed
    });
    assert!(ok);
    assert!(s.closed_by_peer());
    assert_eq!(
        s.recv(&mut buf).unwrap(),
        Some(10),
        "data sent before close is still delivered"
    );
    assert!(matches!(s.recv(&mut buf), Err(Error::Closed)));
    assert!(matches!(s.send(b"x"), Err(Error::Closed)));
}

#[test]
fn every_datagram_respects_the_mtu_at_256_bytes() {
    let (cc, sc) = psk_contexts("PSK-AES128-CCM8");
    let mut config = test_config();
    config.mtu = 256;
    let (mut c, mut s) = pair(&cc, &sc, &config);
    let mut link = Link::new(
        1,
        Faults {
            max_datagram: Some(256),
            ..Faults::default()
        },
    );
    assert!(handshake(&mut c, &mut s, &mut link, Duration::from_secs(5)));
    let max = c.data_mtu();
    assert_eq!(
        exchange(true, &vec![1u8; max], &mut c, &mut s, &mut link).len(),
        max
    );
}

#[test]
fn an_mtu_below_openssls_minimum_is_a_config_error() {
    let (cc, _) = psk_contexts("PSK-AES128-CCM8");
    let mut config = test_config();
    config.mtu = 255;
    let err = Session::client(Ssl::new(&cc).unwrap(), &config, Instant::now()).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(err.to_string().contains("mtu"), "{err}");
}

#[test]
fn a_dtls_1_0_only_client_is_refused_with_an_alert() {
    let (_, sc) = psk_contexts("PSK-AES128-CCM8");
    let mut c = SslContextBuilder::new(SslMethod::dtls_client()).unwrap();
    c.set_cipher_list("PSK-AES128-CCM8:PSK-AES128-CBC-SHA:@SECLEVEL=0")
        .unwrap();
    c.set_max_proto_version(Some(openssl::ssl::SslVersion::DTLS1))
        .unwrap();
    c.set_psk_client_callback(|_, _, identity, psk| {
        identity[..IDENTITY.len()].copy_from_slice(IDENTITY);
        identity[IDENTITY.len()] = 0;
        psk[..KEY.len()].copy_from_slice(KEY);
        Ok(KEY.len())
    });
    let cc = c.build();
    // The raw client is not a Session (which would force 1.2): drive it by hand.
    let mut raw = Ssl::new(&cc).unwrap();
    raw.set_connect_state();
    let now = Instant::now();
    let mut server = Session::server(Ssl::new(&sc).unwrap(), &test_config(), now).unwrap();
    // A real DTLS 1.0 ClientHello, produced by OpenSSL through a memory BIO pair.
    let hello = support_dtls10_client_hello(&cc);
    server.handle_datagram(now, &hello);
    assert_eq!(server.state(), SessionState::Failed);
    match server.error() {
        Some(Error::LocalAlert { alert, .. }) => {
            assert_eq!(alert.description, 70, "protocol_version")
        }
        other => panic!("expected a protocol_version alert, got {other:?}"),
    }
    let mut buf = [0u8; 256];
    assert!(
        server.poll_transmit(&mut buf).is_some(),
        "the alert is sent"
    );
    drop(raw);
    let _ = Dir::ToClient;
}

/// A DTLS 1.0 ClientHello from OpenSSL itself (the Session would refuse to produce one).
fn support_dtls10_client_hello(ctx: &SslContext) -> Vec<u8> {
    use openssl::ssl::SslStream;
    use std::io::{Read, Write};
    #[derive(Default)]
    struct Capture(Vec<u8>);
    impl Read for Capture {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                self.0.extend_from_slice(b);
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut ssl = Ssl::new(ctx).unwrap();
    ssl.set_mtu(1200).unwrap();
    let mut stream = SslStream::new(ssl, Capture::default()).unwrap();
    let _ = stream.connect();
    let hello = stream.get_ref().0.clone();
    assert!(
        hello.len() > 13 && hello[0] == 22,
        "captured a handshake record"
    );
    hello
}

#[test]
fn a_protected_record_shorter_than_nonce_and_tag_is_dropped_and_the_session_survives() {
    let (cc, sc) = psk_contexts("PSK-AES128-GCM-SHA256");
    let (mut c, mut s) = pair(&cc, &sc, &test_config());
    let mut link = Link::perfect();
    assert!(handshake(&mut c, &mut s, &mut link, Duration::from_secs(5)));
    // Epoch 1, sequence 1000, 10 bytes: shorter than GCM's 8-byte nonce + 16-byte tag.
    let mut short = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0x03, 0xe8, 0, 10];
    short.extend_from_slice(&[0x55; 10]);
    for _ in 0..5 {
        s.handle_datagram(Instant::now(), &short);
    }
    assert_eq!(s.stats().dropped_short_records, 5);
    assert!(s.is_established());
    assert_eq!(
        exchange(true, b"still fine", &mut c, &mut s, &mut link),
        b"still fine"
    );
}
