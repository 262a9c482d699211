//! Round trips of the whole record layer: every AEAD sealing and opening, tampering, replays,
//! reordering, the end of the sequence space, more connections than cache slots, the hand-off
//! of explicit nonces, and a known answer against OpenSSL's one-shot AES-GCM.

use super::cache::{self, CACHE_SLOTS};
use super::*;
use crate::wire::RECORD_HEADER_LEN;

fn pair(aead: Aead) -> (RecordLayer, RecordLayer) {
    let len = 2 * aead.key_len() + 2 * aead.fixed_iv_len();
    let block: Vec<u8> = (0..len as u8)
        .map(|b| b.wrapping_mul(31).wrapping_add(7))
        .collect();
    (
        RecordLayer::from_key_block(aead, &block, true, 1, 0),
        RecordLayer::from_key_block(aead, &block, false, 1, 0),
    )
}

const ALL: [Aead; 7] = [
    Aead::Aes128Gcm,
    Aead::Aes256Gcm,
    Aead::Aes128Ccm,
    Aead::Aes256Ccm,
    Aead::Aes128Ccm8,
    Aead::Aes256Ccm8,
    Aead::ChaCha20Poly1305,
];

fn open_one(rx: &mut RecordLayer, wire: &[u8]) -> Result<(ContentType, Vec<u8>), OpenError> {
    let record = RecordHeader::new_checked(wire).map_err(|_| OpenError::Malformed)?;
    let mut out = Vec::new();
    rx.open(&record, &mut out).map(|t| (t, out))
}

#[test]
fn every_aead_round_trips_and_detects_tampering() {
    for aead in ALL {
        let (mut a, mut b) = pair(aead);
        for len in [0usize, 1, 15, 16, 17, 1000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut wire = Vec::new();
            a.seal(ContentType::ApplicationData, &data, &mut wire)
                .unwrap();
            assert_eq!(
                wire.len(),
                RECORD_HEADER_LEN + len + aead.overhead(),
                "{aead:?}"
            );
            for i in 0..wire.len() {
                let mut bad = wire.clone();
                bad[i] ^= 0x40;
                if i < 3 || (11..13).contains(&i) {
                    continue; // type/version/length: caught by parsing or the AAD below
                }
                assert!(
                    open_one(&mut b, &bad).is_err(),
                    "{aead:?} byte {i} of {len}"
                );
            }
            let (t, got) = open_one(&mut b, &wire).unwrap();
            assert_eq!((t, got), (ContentType::ApplicationData, data), "{aead:?}");
            // A replayed record is refused before any decryption, whatever its type.
            let mut retyped = wire.clone();
            retyped[0] = ContentType::Alert as u8;
            assert_eq!(open_one(&mut b, &retyped), Err(OpenError::Replayed));
            assert_eq!(open_one(&mut b, &wire), Err(OpenError::Replayed));
        }
        // And the other way.
        let mut wire = Vec::new();
        b.seal(ContentType::Alert, &[1, 0], &mut wire).unwrap();
        assert_eq!(
            open_one(&mut a, &wire).unwrap(),
            (ContentType::Alert, vec![1, 0])
        );
        // A record sealed for the other direction does not open on the sender.
        let mut own = Vec::new();
        a.seal(ContentType::ApplicationData, b"x", &mut own)
            .unwrap();
        assert_eq!(open_one(&mut a, &own), Err(OpenError::Unauthenticated));
    }
}

#[test]
fn retyping_a_record_breaks_its_tag() {
    for aead in ALL {
        let (mut a, mut b) = pair(aead);
        let mut wire = Vec::new();
        a.seal(ContentType::ApplicationData, b"hello", &mut wire)
            .unwrap();
        wire[0] = ContentType::Alert as u8;
        assert_eq!(
            open_one(&mut b, &wire),
            Err(OpenError::Unauthenticated),
            "{aead:?}"
        );
        // The failure left the window alone: the genuine record still opens.
        wire[0] = ContentType::ApplicationData as u8;
        assert!(open_one(&mut b, &wire).is_ok());
    }
}

#[test]
fn reordered_records_open_once_each() {
    let (mut a, mut b) = pair(Aead::Aes128Ccm8);
    let mut records = Vec::new();
    for i in 0..80u8 {
        let mut wire = Vec::new();
        a.seal(ContentType::ApplicationData, &[i], &mut wire)
            .unwrap();
        records.push(wire);
    }
    // Newest first: the first 64 open, older ones fall out of the window.
    let mut opened = 0;
    for wire in records.iter().rev() {
        if open_one(&mut b, wire).is_ok() {
            opened += 1;
        }
    }
    assert_eq!(opened, 64);
    for wire in &records {
        assert!(open_one(&mut b, wire).is_err());
    }
}

#[test]
fn sequence_numbers_end_with_a_reserved_one_for_close_notify() {
    let (mut a, mut b) = pair(Aead::Aes128Gcm);
    a.next_write_seq = MAX_SEQUENCE - 2;
    let mut wire = Vec::new();
    a.seal(ContentType::ApplicationData, b"last", &mut wire)
        .unwrap();
    let mut refused = Vec::new();
    assert_eq!(
        a.seal(ContentType::ApplicationData, b"one more", &mut refused),
        Err(SealError::SequenceExhausted)
    );
    assert!(refused.is_empty(), "nothing written on refusal");
    let mut alert = Vec::new();
    a.seal(ContentType::Alert, &[1, 0], &mut alert).unwrap();
    assert_eq!(a.next_write_seq(), MAX_SEQUENCE);
    assert_eq!(
        a.seal(ContentType::Alert, &[1, 0], &mut refused),
        Err(SealError::SequenceExhausted)
    );
    // Both records open: sequence numbers 2^48 − 3 and 2^48 − 2, the highest ever used.
    assert_eq!(open_one(&mut b, &wire).unwrap().1, b"last");
    assert_eq!(open_one(&mut b, &alert).unwrap().0, ContentType::Alert);
    assert_eq!(&alert[5..11], &(MAX_SEQUENCE - 1).to_be_bytes()[2..]);
}

#[test]
fn more_connections_than_cache_slots_still_work() {
    let mut pairs: Vec<_> = (0..CACHE_SLOTS + 5)
        .map(|i| pair(ALL[i % ALL.len()]))
        .collect();
    for round in 0..3u8 {
        for (a, b) in pairs.iter_mut() {
            let mut wire = Vec::new();
            a.seal(ContentType::ApplicationData, &[round; 9], &mut wire)
                .unwrap();
            assert_eq!(open_one(b, &wire).unwrap().1, vec![round; 9]);
        }
    }
    assert!(cache::cached_contexts() <= CACHE_SLOTS);
}

#[test]
fn explicit_nonces_continue_after_openssls_last_one() {
    for aead in [Aead::Aes128Gcm, Aead::Aes128Ccm8, Aead::ChaCha20Poly1305] {
        let (mut a, mut b) = pair(aead);
        a.next_write_seq = 5;
        a.continue_explicit_nonce_after(u64::MAX.to_be_bytes()); // wraps to 0
        let mut explicit = Vec::new();
        for _ in 0..3 {
            let mut wire = Vec::new();
            a.seal(ContentType::ApplicationData, b"n", &mut wire)
                .unwrap();
            explicit.push(wire[13..21].to_vec());
            assert_eq!(open_one(&mut b, &wire).unwrap().1, b"n", "{aead:?}");
        }
        if aead.explicit_nonce_len() == 8 {
            let want: Vec<Vec<u8>> = (0u64..3).map(|n| n.to_be_bytes().to_vec()).collect();
            assert_eq!(
                explicit, want,
                "{aead:?}: counts on from OpenSSL's last nonce"
            );
        }
        assert_eq!(a.next_write_seq(), 8);
    }
}

#[test]
fn gcm_matches_a_known_answer() {
    // RFC 5288's construction checked against OpenSSL's own AES-128-GCM one-shot.
    let (mut a, _) = pair(Aead::Aes128Gcm);
    let mut wire = Vec::new();
    a.seal(ContentType::ApplicationData, b"abc", &mut wire)
        .unwrap();
    let key = &a.keys.write_key[..16];
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&a.keys.write_iv[..4]);
    nonce[4..].copy_from_slice(&wire[3..11]);
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&wire[3..11]);
    aad[8] = 23;
    aad[9..11].copy_from_slice(&DTLS1_2);
    aad[11..13].copy_from_slice(&3u16.to_be_bytes());
    let mut tag = [0u8; 16];
    let ct = openssl::symm::encrypt_aead(
        openssl::symm::Cipher::aes_128_gcm(),
        key,
        Some(&nonce),
        &aad,
        b"abc",
        &mut tag,
    )
    .unwrap();
    assert_eq!(
        &wire[13..21],
        &wire[3..11],
        "explicit nonce = epoch and sequence"
    );
    assert_eq!(&wire[21..24], &ct[..]);
    assert_eq!(&wire[24..], &tag[..]);
}
