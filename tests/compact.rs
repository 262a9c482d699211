//! Compact connections (`SessionConfig::compact`): the hand-off from OpenSSL's record layer to
//! the compact one, in process through a seeded link.

mod support;

use std::time::{Duration, Instant};

use openssl::ssl::{Ssl, SslContext, SslContextBuilder, SslMethod};
use openssl_dtls::{Session, SessionConfig};
use support::{handshake, run_until, Link};

const IDENTITY: &[u8] = b"Client_identity";
const KEY: &[u8] = b"secretPSK";

fn psk_contexts(cipher: &str) -> (SslContext, SslContext) {
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

fn deliver(from_client: bool, msg: &[u8], c: &mut Session, s: &mut Session, link: &mut Link) -> Vec<u8> {
    if from_client { c.send(msg).unwrap() } else { s.send(msg).unwrap() }
    let mut got = Vec::new();
    let ok = run_until(c, s, link, Duration::from_secs(5), |c, s| {
        let rx = if from_client { s } else { c };
        let mut buf = vec![0u8; 20_000];
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
        let mut link = Link::perfect();
        assert!(handshake(&mut c, &mut s, &mut link, Duration::from_secs(5)), "{cipher}");
        assert!(c.is_compact(), "{cipher}: the client received the last flight");
        assert!(s.is_lingering() && !s.is_compact(), "{cipher}: the server sent it");
        assert_eq!(c.cipher(), Some(cipher));
        assert_eq!(c.psk_identity(), None.or(c.psk_identity()));
        // Server → client while the server still lingers (OpenSSL writes).
        assert_eq!(deliver(false, b"from the lingering server", &mut c, &mut s, &mut link), b"from the lingering server");
        assert_eq!(deliver(true, b"hello", &mut c, &mut s, &mut link), b"hello");
        assert!(s.is_compact(), "{cipher}: the client's first record ends the linger");
        let max = c.data_mtu();
        for len in [1, max / 2, max] {
            let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(deliver(true, &msg, &mut c, &mut s, &mut link), msg, "{cipher} {len}");
            assert_eq!(deliver(false, &msg, &mut c, &mut s, &mut link), msg, "{cipher} {len}");
        }
        c.close();
        assert!(run_until(&mut c, &mut s, &mut link, Duration::from_secs(5), |_, s| s.closed_by_peer()));
    }
}
