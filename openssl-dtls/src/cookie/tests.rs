//! Unit tests of the cookie keys: what verifies, for whom, and for how long.

use super::*;
use openssl::hash::MessageDigest;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
use std::sync::Arc;

const INTERVAL: Duration = Duration::from_secs(60);
const SECRET: &[u8] = b"load-balanced cluster SECRET 0123456789";

fn v4(a: u8, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(192, 0, 2, a), port))
}

fn cookie(secrets: &CookieSecrets, now: Instant, peer: SocketAddr) -> [u8; COOKIE_LEN] {
    let mut out = [0; COOKIE_LEN];
    assert_eq!(secrets.generate(now, peer, &mut out), COOKIE_LEN);
    out
}

#[test]
fn generated_cookie_verifies_for_the_same_peer() {
    let t0 = Instant::now();
    let secrets = CookieSecrets::random_from(INTERVAL, t0).unwrap();
    for peer in [v4(1, 5684), SocketAddr::from((Ipv6Addr::LOCALHOST, 5684))] {
        let c = cookie(&secrets, t0, peer);
        assert!(secrets.verify(t0, peer, &c));
        assert!(secrets.verify(t0 + Duration::from_secs(59), peer, &c));
    }
}

#[test]
fn cookie_is_stateless_and_deterministic_within_an_interval() {
    let t0 = Instant::now();
    let secrets = CookieSecrets::random_from(INTERVAL, t0).unwrap();
    let peer = v4(1, 5684);
    assert_eq!(
        cookie(&secrets, t0, peer),
        cookie(&secrets, t0 + INTERVAL - Duration::from_nanos(1), peer)
    );
    assert_ne!(
        cookie(&secrets, t0, peer),
        cookie(&secrets, t0, v4(2, 5684))
    );
}

#[test]
fn cookie_does_not_verify_for_another_ip_port_or_family() {
    let t0 = Instant::now();
    let secrets = CookieSecrets::random_from(INTERVAL, t0).unwrap();
    let peer = v4(1, 5684);
    let c = cookie(&secrets, t0, peer);
    assert!(!secrets.verify(t0, v4(2, 5684), &c), "other IP");
    assert!(!secrets.verify(t0, v4(1, 5685), &c), "other port");
    let mapped = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped(), 5684));
    assert!(!secrets.verify(t0, mapped, &c), "other family");

    let v6 = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 5684, 0, 1));
    let c6 = cookie(&secrets, t0, v6);
    assert!(secrets.verify(t0, v6, &c6));
    let other_scope = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 5684, 0, 2));
    assert!(!secrets.verify(t0, other_scope, &c6), "other interface");
    assert!(!secrets.verify(t0, peer, &c6), "other family");
}

#[test]
fn malformed_cookies_never_verify() {
    let t0 = Instant::now();
    let secrets = CookieSecrets::random_from(INTERVAL, t0).unwrap();
    let peer = v4(1, 5684);
    let c = cookie(&secrets, t0, peer);
    assert!(!secrets.verify(t0, peer, &[]), "empty");
    assert!(!secrets.verify(t0, peer, &c[..COOKIE_LEN - 1]), "short");
    let mut long = c.to_vec();
    long.push(0);
    assert!(!secrets.verify(t0, peer, &long), "long");
    assert!(!secrets.verify(t0, peer, &[0; COOKIE_LEN]), "zeros");
    assert!(!secrets.verify(t0, peer, &vec![0xAB; 300]), "huge");
    for i in 0..COOKIE_LEN {
        let mut flipped = c;
        flipped[i] ^= 0x01;
        assert!(
            !secrets.verify(t0, peer, &flipped),
            "bit flipped in byte {i}"
        );
    }
}

#[test]
fn generate_needs_room_for_a_whole_cookie() {
    let t0 = Instant::now();
    let secrets = CookieSecrets::random_from(INTERVAL, t0).unwrap();
    let peer = v4(1, 5684);
    let mut small = [0x77; COOKIE_LEN - 1];
    assert_eq!(secrets.generate(t0, peer, &mut small), 0);
    assert_eq!(secrets.generate(t0, peer, &mut []), 0);
    let mut large = [0x77; 255];
    assert_eq!(secrets.generate(t0, peer, &mut large), COOKIE_LEN);
    assert!(large[COOKIE_LEN..].iter().all(|&b| b == 0x77));
    assert!(secrets.verify(t0, peer, &large[..COOKIE_LEN]));
}

#[test]
fn cookie_still_verifies_after_one_rotation() {
    let t0 = Instant::now();
    let secrets = CookieSecrets::random_from(INTERVAL, t0).unwrap();
    let peer = v4(1, 5684);
    let late = t0 + INTERVAL - Duration::from_millis(1);
    let c = cookie(&secrets, late, peer);
    let rotated = t0 + INTERVAL;
    assert!(secrets.verify(rotated, peer, &c));
    // New cookies use the new key.
    assert_ne!(cookie(&secrets, rotated, peer), c);
    assert!(secrets.verify(rotated + INTERVAL - Duration::from_millis(1), peer, &c));
}

#[test]
fn cookie_expires_after_two_rotations() {
    let t0 = Instant::now();
    let secrets = CookieSecrets::random_from(INTERVAL, t0).unwrap();
    let peer = v4(1, 5684);
    let c = cookie(&secrets, t0, peer);
    assert!(secrets.verify(t0 + INTERVAL, peer, &c));
    assert!(!secrets.verify(t0 + 2 * INTERVAL, peer, &c));
}

#[test]
fn a_gap_of_two_intervals_replaces_both_keys() {
    let t0 = Instant::now();
    let secrets = CookieSecrets::random_from(INTERVAL, t0).unwrap();
    let peer = v4(1, 5684);
    let c = cookie(&secrets, t0, peer);
    // No call during the first rotation: both rotations happen at once.
    assert!(!secrets.verify(t0 + 2 * INTERVAL, peer, &c));
    let later = t0 + 5 * INTERVAL + Duration::from_secs(7);
    let c2 = cookie(&secrets, later, peer);
    assert!(secrets.verify(later + INTERVAL, peer, &c2));
    assert!(!secrets.verify(later + 2 * INTERVAL, peer, &c2));
}

#[test]
fn an_earlier_instant_neither_rotates_nor_panics() {
    let t0 = Instant::now() + Duration::from_secs(3600);
    let secrets = CookieSecrets::random_from(INTERVAL, t0).unwrap();
    let peer = v4(1, 5684);
    let c = cookie(&secrets, t0, peer);
    let past = t0 - Duration::from_secs(1800);
    assert_eq!(cookie(&secrets, past, peer), c);
    assert!(secrets.verify(past, peer, &c));
}

#[test]
fn interval_is_at_least_one_second() {
    let t0 = Instant::now();
    assert_eq!(
        CookieSecrets::random_from(Duration::ZERO, t0)
            .unwrap()
            .interval(),
        MIN_INTERVAL
    );
    assert_eq!(
        CookieSecrets::random_from(INTERVAL, t0).unwrap().interval(),
        INTERVAL
    );
    let shared = CookieSecrets::with_secret(SECRET, Duration::ZERO).unwrap();
    assert_eq!(shared.interval(), MIN_INTERVAL);
    // A zero interval must not mean "rotate on every call".
    let secrets = CookieSecrets::random_from(Duration::ZERO, t0).unwrap();
    let peer = v4(1, 5684);
    assert!(secrets.verify(t0, peer, &cookie(&secrets, t0, peer)));
}

#[test]
fn servers_sharing_a_secret_accept_each_others_cookies() {
    let a = CookieSecrets::with_secret(SECRET, INTERVAL).unwrap();
    let b = CookieSecrets::with_secret(SECRET, INTERVAL).unwrap();
    let now = Instant::now();
    let peer = v4(9, 40000);
    let from_a = cookie(&a, now, peer);
    assert!(b.verify(now, peer, &from_a));
    assert!(a.verify(now, peer, &from_a));
    assert!(!b.verify(now, v4(9, 40001), &from_a));

    let other = CookieSecrets::with_secret(b"another secret, same length....", INTERVAL).unwrap();
    assert!(!other.verify(now, peer, &from_a));
}

#[test]
fn shared_secret_cookie_survives_one_interval_but_not_two() {
    let secrets = CookieSecrets::with_secret(SECRET, INTERVAL).unwrap();
    let Keys::Shared { master, derived } = &secrets.keys else {
        panic!("with_secret must use shared keys");
    };
    let keys_at = |secs: u64| {
        secrets
            .shared_keys(master, derived, Duration::from_secs(secs))
            .unwrap()
    };
    let peer = v4(3, 5684);
    let start = 1_700_000_040; // a multiple of 60: the start of an interval
    let mut c = [0; COOKIE_LEN];
    assert_eq!(
        generate_with(&keys_at(start + 59), peer, &mut c),
        COOKIE_LEN
    );
    assert!(verify_with(&keys_at(start), peer, &c));
    assert!(verify_with(&keys_at(start + 60), peer, &c));
    assert!(verify_with(&keys_at(start + 119), peer, &c));
    assert!(!verify_with(&keys_at(start + 120), peer, &c));
    // Going back (a stepped clock) re-derives and accepts it again.
    assert!(verify_with(&keys_at(start + 30), peer, &c));

    // A second server computing the same interval from scratch agrees.
    let other = CookieSecrets::with_secret(SECRET, INTERVAL).unwrap();
    let Keys::Shared { master, derived } = &other.keys else {
        panic!("with_secret must use shared keys");
    };
    let keys = other
        .shared_keys(master, derived, Duration::from_secs(start + 61))
        .unwrap();
    assert!(verify_with(&keys, peer, &c));
}

#[test]
fn shared_secret_shorter_than_16_bytes_is_rejected() {
    assert!(CookieSecrets::with_secret(&[], INTERVAL).is_err());
    let err = CookieSecrets::with_secret(&[7; 15], INTERVAL).unwrap_err();
    assert!(err.contains("16 bytes"), "{err}");
    assert!(CookieSecrets::with_secret(&[7; 16], INTERVAL).is_ok());
}

#[test]
fn long_shared_secret_is_hashed_like_hmac_does() {
    let long = [0x5C; 200];
    let prehashed = openssl::hash::hash(MessageDigest::sha256(), &long).unwrap();
    let mut direct = [0; KEY_LEN];
    let mut via_hash = [0; KEY_LEN];
    hmac_sha256(&MacKey::new(&long), &[b"x"], &mut direct).unwrap();
    hmac_sha256(&MacKey::new(&prehashed), &[b"x"], &mut via_hash).unwrap();
    assert_eq!(direct, via_hash);

    let a = CookieSecrets::with_secret(&long, INTERVAL).unwrap();
    let b = CookieSecrets::with_secret(&long, INTERVAL).unwrap();
    let now = Instant::now();
    let peer = v4(4, 1);
    assert!(b.verify(now, peer, &cookie(&a, now, peer)));
}

#[test]
fn debug_does_not_print_secret_bytes() {
    let shared = CookieSecrets::with_secret(SECRET, INTERVAL).unwrap();
    let text = format!("{shared:?} {shared:#?}");
    assert!(text.contains("CookieSecrets"), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
    assert!(!text.contains("0123456789"), "{text}");
    assert!(!text.contains("5345435245"), "hex of the secret: {text}"); // "SECRE"
    let random = CookieSecrets::random_from(INTERVAL, Instant::now()).unwrap();
    let text = format!("{random:?}");
    assert!(text.contains("random") && !text.contains("PKey"), "{text}");
}

#[test]
fn cookie_secrets_are_send_and_sync_and_work_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CookieSecrets>();

    let t0 = Instant::now();
    let secrets = Arc::new(CookieSecrets::random_from(Duration::from_secs(1), t0).unwrap());
    let threads: Vec<_> = (0..4_u8)
        .map(|i| {
            let secrets = Arc::clone(&secrets);
            std::thread::spawn(move || {
                for step in 0..200_u16 {
                    // Exactly one rotation happens, in whichever thread first passes
                    // t0 + 1 s; a cookie from before it verifies under the previous key.
                    let now = t0 + Duration::from_millis(u64::from(step % 2) * 1500);
                    let peer = v4(i, 1000 + step);
                    let c = cookie(&secrets, now, peer);
                    assert!(secrets.verify(now, peer, &c));
                    assert!(secrets.verify(t0 + Duration::from_millis(1999), peer, &c));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn wipe_zeroes_the_buffer() {
    let mut bytes = SecretBytes([0xA5; KEY_LEN]);
    wipe(&mut bytes.0);
    assert_eq!(bytes.0, [0; KEY_LEN]);
}

#[test]
fn random_keys_start_their_first_interval_at_the_first_use() {
    let secrets = CookieSecrets::random(INTERVAL).unwrap();
    let peer = v4(1, 5684);
    // Made long after the keys were: still the first interval, which starts now.
    let t0 = Instant::now() + Duration::from_secs(3600);
    let c = cookie(&secrets, t0, peer);
    assert!(secrets.verify(t0 + INTERVAL - Duration::from_millis(1), peer, &c));
    assert_eq!(
        cookie(&secrets, t0 + INTERVAL - Duration::from_millis(1), peer),
        c
    );
    assert!(
        secrets.verify(t0 + INTERVAL, peer, &c),
        "one rotation later"
    );
    assert!(
        !secrets.verify(t0 + 2 * INTERVAL, peer, &c),
        "two rotations later"
    );
}

/// The precomputed HMAC-SHA256 is HMAC-SHA256: RFC 4231 test case 2, and OpenSSL's own HMAC
/// (`EVP_DigestSign` over an HMAC key) for keys shorter than, equal to and longer than a block,
/// with the input in one part or several.
#[test]
fn mac_key_is_hmac_sha256() {
    use openssl::pkey::PKey;
    use openssl::sign::Signer;
    let mut out = [0; KEY_LEN];
    hmac_sha256(
        &MacKey::new(b"Jefe"),
        &[b"what do ya want ", b"for nothing?"],
        &mut out,
    )
    .unwrap();
    let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, expected);
    for len in [1usize, 16, 32, 63, 64, 65, 100, 200] {
        let key: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let data = b"openssl-dtls cookie v1\x04\x7f\x00\x00\x01\x9c\x40";
        let mut signer = Signer::new(MessageDigest::sha256(), &PKey::hmac(&key).unwrap()).unwrap();
        signer.update(data).unwrap();
        let reference = signer.sign_to_vec().unwrap();
        hmac_sha256(&MacKey::new(&key), &[&data[..5], &data[5..]], &mut out).unwrap();
        assert_eq!(&out[..], &reference[..], "key length {len}");
    }
}
