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
            a.seal(None, ContentType::ApplicationData, &data, &mut wire)
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
        b.seal(None, ContentType::Alert, &[1, 0], &mut wire)
            .unwrap();
        assert_eq!(
            open_one(&mut a, &wire).unwrap(),
            (ContentType::Alert, vec![1, 0])
        );
        // A record sealed for the other direction does not open on the sender.
        let mut own = Vec::new();
        a.seal(None, ContentType::ApplicationData, b"x", &mut own)
            .unwrap();
        assert_eq!(open_one(&mut a, &own), Err(OpenError::Unauthenticated));
    }
}

#[test]
fn retyping_a_record_breaks_its_tag() {
    for aead in ALL {
        let (mut a, mut b) = pair(aead);
        let mut wire = Vec::new();
        a.seal(None, ContentType::ApplicationData, b"hello", &mut wire)
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
        a.seal(None, ContentType::ApplicationData, &[i], &mut wire)
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
    a.seal(None, ContentType::ApplicationData, b"last", &mut wire)
        .unwrap();
    let mut refused = Vec::new();
    assert_eq!(
        a.seal(
            None,
            ContentType::ApplicationData,
            b"one more",
            &mut refused
        ),
        Err(SealError::SequenceExhausted)
    );
    assert!(refused.is_empty(), "nothing written on refusal");
    let mut alert = Vec::new();
    a.seal(None, ContentType::Alert, &[1, 0], &mut alert)
        .unwrap();
    assert_eq!(a.next_write_seq(), MAX_SEQUENCE);
    assert_eq!(
        a.seal(None, ContentType::Alert, &[1, 0], &mut refused),
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
            a.seal(None, ContentType::ApplicationData, &[round; 9], &mut wire)
                .unwrap();
            assert_eq!(open_one(b, &wire).unwrap().1, vec![round; 9]);
        }
    }
    assert!(cache::cached_contexts() <= CACHE_SLOTS);
}

#[test]
fn a_pair_of_another_cipher_keeps_its_contexts_in_a_cache_full_of_one_cipher() {
    // A thread whose cache is full of CCM-8 contexts (many CCM-8 connections served), then one
    // GCM connection talking: after its first records its two directions stay keyed, whatever
    // the other slots hold (they used to evict each other on every record).
    let mut ccm: Vec<_> = (0..2 * CACHE_SLOTS)
        .map(|_| pair(Aead::Aes128Ccm8))
        .collect();
    for (a, b) in ccm.iter_mut() {
        let mut wire = Vec::new();
        a.seal(None, ContentType::ApplicationData, b"ccm", &mut wire)
            .unwrap();
        open_one(b, &wire).unwrap();
    }
    let (mut a, mut b) = pair(Aead::Aes128Gcm);
    let roundtrip = |a: &mut RecordLayer, b: &mut RecordLayer| {
        let mut wire = Vec::new();
        a.seal(None, ContentType::ApplicationData, b"gcm", &mut wire)
            .unwrap();
        assert_eq!(open_one(b, &wire).unwrap().1, b"gcm");
    };
    roundtrip(&mut a, &mut b);
    roundtrip(&mut b, &mut a);
    let before = cache::rekeys();
    for _ in 0..100 {
        roundtrip(&mut a, &mut b);
        roundtrip(&mut b, &mut a);
    }
    assert_eq!(cache::rekeys(), before, "400 records, no context re-keyed");
    assert!(cache::cached_contexts() <= CACHE_SLOTS);
}

#[test]
fn one_shot_and_generic_records_share_the_context_cache() {
    // Standard records with data take OpenSSL's TLS one-shot AEAD, CID and empty records the
    // generic sequence; one-shot contexts serve only one-shot records (`Aead::set_fixed_iv`).
    // Mixed on one thread, with more directions than cache slots, every record still opens.
    let mut plain: Vec<_> = (0..CACHE_SLOTS).map(|i| pair(ALL[i % ALL.len()])).collect();
    let mut cid: Vec<_> = (0..CACHE_SLOTS)
        .map(|i| cid_pair(ALL[(i + 3) % ALL.len()], false))
        .collect();
    for round in 0..4u8 {
        for ((a, b), (c, d)) in plain.iter_mut().zip(cid.iter_mut()) {
            for data in [&[round; 9][..], &[], &[round; 300][..]] {
                let mut wire = Vec::new();
                a.seal(None, ContentType::ApplicationData, data, &mut wire)
                    .unwrap();
                assert_eq!(open_one(b, &wire).unwrap().1, data, "{:?}", a.aead());
                wire.clear();
                c.seal(ContentType::ApplicationData, data, &mut wire)
                    .unwrap();
                let got = open_cid(d, &wire, SERVER_CID.len()).unwrap().1;
                assert_eq!(got, data, "{:?}", c.layer.aead());
            }
        }
    }
    assert!(cache::cached_contexts() <= CACHE_SLOTS);
    // A CCM direction continuing OpenSSL's explicit nonces seals generically, and its reader
    // opens one-shot: both directions of one connection, on the same thread's cache.
    for aead in [Aead::Aes128Ccm, Aead::Aes256Ccm8] {
        let (mut a, mut b) = pair(aead);
        for i in 0..3u8 {
            if i == 1 {
                a.continue_explicit_nonce_after(41u64.to_be_bytes());
            }
            let mut wire = Vec::new();
            a.seal(None, ContentType::ApplicationData, &[i; 20], &mut wire)
                .unwrap();
            assert_eq!(open_one(&mut b, &wire).unwrap().1, [i; 20], "{aead:?}");
        }
    }
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
            a.seal(None, ContentType::ApplicationData, b"n", &mut wire)
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
fn gcm_explicit_nonces_follow_the_sequence_across_hand_offs_and_re_keying() {
    // A GCM sealer gives OpenSSL the whole nonce only when its context's count is not at the
    // record's (`Protect::seal_one_shot`): the explicit nonce on the wire is still exactly the
    // record's, whether the context counted on, was re-keyed, or the layer jumped ahead.
    for aead in [Aead::Aes128Gcm, Aead::Aes256Gcm] {
        let (mut a, mut b) = pair(aead);
        let mut want = Vec::new();
        let mut got = Vec::new();
        for i in 0u64..12 {
            match i {
                4 => a.continue_explicit_nonce_after(999u64.to_be_bytes()),
                // Evict this connection's contexts: the next record is sealed on a fresh key.
                8 => cache::evict(a.id),
                _ => {}
            }
            let expected = if i < 4 { (1 << 48) | i } else { 1000 + i - 4 };
            want.push(expected.to_be_bytes());
            let mut wire = Vec::new();
            a.seal(None, ContentType::ApplicationData, &[i as u8; 5], &mut wire)
                .unwrap();
            got.push(<[u8; 8]>::try_from(&wire[13..21]).unwrap());
            assert_eq!(open_one(&mut b, &wire).unwrap().1, [i as u8; 5], "{aead:?}");
        }
        assert_eq!(got, want, "{aead:?}");
    }
}

#[test]
fn a_gcm_count_out_of_step_discards_the_record() {
    // If the count a context is believed to be at were wrong, OpenSSL would seal under its own
    // count: the explicit nonce it wrote is checked and such a record never leaves.
    let aead = Aead::Aes128Gcm;
    let keys = keys::Keys::from_key_block(aead, &[9; 2 * 16 + 2 * 4], true);
    let protect = |seq: u64| Protect {
        epoch_seq: ((1 << 48) | seq).to_be_bytes(),
        explicit: ((1 << 48) | seq).to_be_bytes(),
        content_type: ContentType::ApplicationData,
        cid: None,
        padding: 0,
        no_type: false,
    };
    let mut out = Vec::new();
    fresh_ctx(aead, &keys.write_key, &keys.write_iv, true, |ctx, state| {
        assert!(protect(0).seal(aead, ctx, &keys.write_iv, state, b"one", &mut out));
        assert_eq!(
            state.next_explicit,
            Some(((1 << 48) | 1u64).to_be_bytes()),
            "counts on"
        );
        let sealed = out.len();
        // Claim the count is at record 5's nonce while OpenSSL's is at record 1's.
        state.next_explicit = Some(((1 << 48) | 5u64).to_be_bytes());
        assert!(!protect(5).seal(aead, ctx, &keys.write_iv, state, b"two", &mut out));
        assert_eq!(out.len(), sealed, "nothing appended");
        assert_eq!(state.next_explicit, None, "the count is unknown again");
        // With the count unknown, the whole nonce is given again and the record is record 5's.
        assert!(protect(5).seal(aead, ctx, &keys.write_iv, state, b"two", &mut out));
        assert_eq!(
            out[sealed + 13..sealed + 21],
            ((1 << 48) | 5u64).to_be_bytes()
        );
        Ok(())
    })
    .unwrap();
    evp::clear_error();
}

#[test]
fn gcm_matches_a_known_answer() {
    // RFC 5288's construction checked against OpenSSL's own AES-128-GCM one-shot.
    let (mut a, _) = pair(Aead::Aes128Gcm);
    let mut wire = Vec::new();
    a.seal(None, ContentType::ApplicationData, b"abc", &mut wire)
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

/// A pair whose records carry Connection IDs: the client sends the server's 6-byte CID, the
/// server sends none (a device that asked for an empty CID), or `both` ways.
fn cid_pair(aead: Aead, both: bool) -> (CidLayer, CidLayer) {
    let (mut client, mut server) = pair(aead);
    client.set_read_cid(both);
    server.set_read_cid(true);
    (
        CidLayer {
            layer: client,
            peer: SERVER_CID.to_vec(),
        },
        CidLayer {
            layer: server,
            peer: if both {
                CLIENT_CID.to_vec()
            } else {
                Vec::new()
            },
        },
    )
}

const SERVER_CID: [u8; 6] = [0x01, 0xa2, 0xb3, 0xc4, 0xd5, 0xe6];
const CLIENT_CID: [u8; 2] = [0x77, 0x88];

/// A record layer and the peer's CID its records carry.
struct CidLayer {
    layer: RecordLayer,
    peer: Vec<u8>,
}

impl CidLayer {
    fn seal(&mut self, t: ContentType, data: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        self.layer.seal(Some(&self.peer), t, data, out)
    }
    fn open(&mut self, r: &RecordHeader<'_>, out: &mut Vec<u8>) -> Result<ContentType, OpenError> {
        self.layer.open(r, out)
    }
    fn transcode_outbound(&self, r: &RecordHeader<'_>, out: &mut Vec<u8>) -> Result<(), OpenError> {
        self.layer.transcode_outbound(&self.peer, r, out)
    }
    fn transcode_inbound(
        &mut self,
        r: &RecordHeader<'_>,
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<ContentType, OpenError> {
        self.layer.transcode_inbound(r, plain, out)
    }
}

fn open_cid(
    rx: &mut CidLayer,
    wire: &[u8],
    cid_len: usize,
) -> Result<(ContentType, Vec<u8>), OpenError> {
    let record = RecordHeader::new_checked_cid(wire, cid_len).map_err(|_| OpenError::Malformed)?;
    let mut out = Vec::new();
    rx.open(&record, &mut out).map(|t| (t, out))
}

#[test]
fn cid_records_with_long_peer_cids_round_trip() {
    // Peers' CIDs may be up to 255 bytes, longer than the ones this library issues: their
    // additional data takes the long stack buffer (`with_additional_data`).
    for aead in ALL {
        for cid_len in [crate::cid::MAX_CID_LEN, crate::cid::MAX_CID_LEN + 1, 255] {
            let (client, server) = pair(aead);
            let cid: Vec<u8> = (0..cid_len as u8).map(|b| b | 1).collect();
            let mut client = CidLayer {
                layer: client,
                peer: cid.clone(),
            };
            let mut server = CidLayer {
                layer: server,
                peer: Vec::new(),
            };
            server.layer.set_read_cid(true);
            let mut wire = Vec::new();
            client
                .seal(ContentType::ApplicationData, b"long cid", &mut wire)
                .unwrap();
            assert_eq!(&wire[11..11 + cid_len], &cid[..]);
            let (t, plain) = open_cid(&mut server, &wire, cid_len).unwrap();
            assert_eq!(
                (t, &plain[..]),
                (ContentType::ApplicationData, &b"long cid"[..])
            );
            let mut bad = wire.clone();
            bad[11] ^= 0x40; // the CID is authenticated
            assert!(open_cid(&mut server, &bad, cid_len).is_err(), "{aead:?}");
        }
    }
}

#[test]
fn cid_records_round_trip_with_the_inner_type_and_detect_tampering() {
    for aead in ALL {
        for both in [false, true] {
            let (mut client, mut server) = cid_pair(aead, both);
            for (t, len) in [
                (ContentType::ApplicationData, 0usize),
                (ContentType::Alert, 2),
                (ContentType::ApplicationData, 300),
            ] {
                let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
                let mut wire = Vec::new();
                client.seal(t, &data, &mut wire).unwrap();
                assert_eq!(wire[0], 25, "{aead:?}: a tls12_cid record");
                assert_eq!(&wire[11..17], &[0x01, 0xa2, 0xb3, 0xc4, 0xd5, 0xe6]);
                assert_eq!(
                    wire.len(),
                    RECORD_HEADER_LEN + 6 + len + 1 + aead.overhead()
                );
                for i in 0..wire.len() {
                    if i == 0 || (17..19).contains(&i) {
                        continue; // type and length: caught by parsing
                    }
                    let mut bad = wire.clone();
                    bad[i] ^= 0x20;
                    assert!(open_cid(&mut server, &bad, 6).is_err(), "{aead:?} byte {i}");
                }
                let (got, plain) = open_cid(&mut server, &wire, 6).unwrap();
                assert_eq!((got, plain), (t, data.clone()));
                assert_eq!(open_cid(&mut server, &wire, 6), Err(OpenError::Replayed));
                // The other way: CID records only if the client asked for a non-empty CID.
                let mut back = Vec::new();
                server.seal(t, &data, &mut back).unwrap();
                if both {
                    assert_eq!(back[0], 25);
                    assert_eq!(open_cid(&mut client, &back, 2).unwrap(), (t, data));
                } else {
                    assert_eq!(back[0], t as u8, "a standard record");
                    assert_eq!(open_one(&mut client.layer, &back).unwrap(), (t, data));
                }
            }
        }
    }
}

#[test]
fn a_receiver_of_cids_refuses_standard_records_and_the_reverse() {
    let (mut client, mut server) = cid_pair(Aead::Aes128Ccm8, false);
    let (mut plain_client, _) = pair(Aead::Aes128Ccm8);
    let mut standard = Vec::new();
    plain_client
        .seal(None, ContentType::ApplicationData, b"x", &mut standard)
        .unwrap();
    assert_eq!(
        open_one(&mut server.layer, &standard),
        Err(OpenError::Malformed)
    );
    let mut cid = Vec::new();
    client
        .seal(ContentType::ApplicationData, b"x", &mut cid)
        .unwrap();
    let (_, plain_server) = pair(Aead::Aes128Ccm8);
    let mut plain_server = CidLayer {
        layer: plain_server,
        peer: Vec::new(),
    };
    assert_eq!(
        open_cid(&mut plain_server, &cid, 6),
        Err(OpenError::Malformed)
    );
}

#[test]
fn cid_padding_is_stripped_and_an_all_zero_inner_plaintext_is_refused() {
    for aead in ALL {
        let len = 2 * aead.key_len() + 2 * aead.fixed_iv_len();
        let block: Vec<u8> = (0..len as u8)
            .map(|b| b.wrapping_mul(31).wrapping_add(7))
            .collect();
        let writer = keys::Keys::from_key_block(aead, &block, true);
        let cid = [0x01, 0xa2, 0xb3, 0xc4, 0xd5, 0xe6];
        // A record as Mbed TLS pads them: content ‖ type ‖ zeros (to 16 bytes here).
        let seal_padded = |content: &[u8], content_type: Option<ContentType>, padding, seq: u64| {
            let mut epoch_seq = seq.to_be_bytes();
            epoch_seq[..2].copy_from_slice(&1u16.to_be_bytes());
            let p = Protect {
                epoch_seq,
                explicit: epoch_seq,
                content_type: content_type.unwrap_or(ContentType::ApplicationData),
                cid: Some(&cid),
                padding,
                no_type: content_type.is_none(),
            };
            let mut out = Vec::new();
            fresh_ctx(
                aead,
                &writer.write_key,
                &writer.write_iv,
                true,
                |ctx, state| Ok(p.seal(aead, ctx, &writer.write_iv, state, content, &mut out)),
            )
            .unwrap()
            .then_some(out)
            .unwrap()
        };
        let (_, mut server) = cid_pair(aead, false);
        // Content that itself ends in zero bytes keeps them: only what follows the type goes.
        let wire = seal_padded(b"hi\0\0", Some(ContentType::ApplicationData), 11, 1);
        assert_eq!(
            open_cid(&mut server, &wire, 6).unwrap(),
            (ContentType::ApplicationData, b"hi\0\0".to_vec())
        );
        let wire = seal_padded(&[1, 0], Some(ContentType::Alert), 200, 2);
        assert_eq!(
            open_cid(&mut server, &wire, 6).unwrap(),
            (ContentType::Alert, vec![1, 0])
        );
        // No non-zero byte at all: no content type, refused (RFC 9146 §4).
        let wire = seal_padded(&[0; 5], None, 0, 3);
        assert_eq!(open_cid(&mut server, &wire, 6), Err(OpenError::Malformed));
        // An inner type that is no content type (or is tls12_cid itself) is refused too.
        let wire = seal_padded(&[b'x', 24], None, 3, 4);
        assert_eq!(open_cid(&mut server, &wire, 6), Err(OpenError::Malformed));
        let wire = seal_padded(&[b'x', 25], None, 3, 5);
        assert_eq!(open_cid(&mut server, &wire, 6), Err(OpenError::Malformed));
    }
}

#[test]
fn transcoding_rewrites_handshake_records_between_the_two_formats() {
    for aead in ALL {
        // OpenSSL's side of the client writes a standard epoch-1 Finished; the wire carries it
        // as a CID record the server opens; the server's reply goes the other way.
        let (client, mut server) = cid_pair(aead, true);
        let (mut openssl_client, mut openssl_server) = pair(aead);
        let finished = [
            20u8, 0, 0, 12, 0, 1, 0, 0, 0, 0, 0, 12, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9,
        ];
        openssl_client.set_next_write_seq(0);
        let mut standard = Vec::new();
        openssl_client
            .seal(None, ContentType::Handshake, &finished, &mut standard)
            .unwrap();
        let record = RecordHeader::new_checked(&standard).unwrap();
        let mut on_wire = Vec::new();
        client.transcode_outbound(&record, &mut on_wire).unwrap();
        assert_eq!(on_wire[0], 25);
        assert_eq!(
            &on_wire[3..11],
            &standard[3..11],
            "same epoch and sequence number"
        );
        // The server's record layer opens it and hands OpenSSL a standard record it can read.
        let record = RecordHeader::new_checked_cid(&on_wire, 6).unwrap();
        let (mut plain, mut for_openssl) = (Vec::new(), Vec::new());
        let t = server
            .transcode_inbound(&record, &mut plain, &mut for_openssl)
            .unwrap();
        assert_eq!((t, &plain[..]), (ContentType::Handshake, &finished[..]));
        assert_eq!(for_openssl, standard, "byte for byte what OpenSSL sealed");
        assert_eq!(
            open_one(&mut openssl_server, &for_openssl).unwrap(),
            (ContentType::Handshake, finished.to_vec())
        );
        // A replay of the CID record is refused by the window; a broken one does not open.
        let record = RecordHeader::new_checked_cid(&on_wire, 6).unwrap();
        assert_eq!(
            server.transcode_inbound(&record, &mut plain, &mut for_openssl),
            Err(OpenError::Replayed)
        );
        let mut bad = on_wire.clone();
        *bad.last_mut().unwrap() ^= 1;
        bad[10] = 9; // a fresh sequence number
        let record = RecordHeader::new_checked_cid(&bad, 6).unwrap();
        assert_eq!(
            server.transcode_inbound(&record, &mut plain, &mut for_openssl),
            Err(OpenError::Unauthenticated)
        );
        // Standard records under the wrong key are not transcoded either.
        let (mut stranger, _) = pair(aead);
        stranger.set_next_write_seq(100);
        let mut forged = Vec::new();
        let mut junk = finished;
        junk[12] = 1;
        let _ = &mut junk;
        stranger
            .seal(None, ContentType::Handshake, &junk, &mut forged)
            .unwrap();
        forged[20] ^= 0xff;
        let record = RecordHeader::new_checked(&forged).unwrap();
        assert!(client.transcode_outbound(&record, &mut Vec::new()).is_err());
    }
}

/// OpenSSL's own DTLS 1.2 record layer next to ours, byte for byte: two `SSL`s handshaken in
/// memory per suite; our layers derived from them (`RecordLayer::from_ssl`) seal exactly the
/// record OpenSSL sealed for the same plaintext, epoch, sequence number and explicit nonce,
/// open OpenSSL's records, and seal the next records, which OpenSSL opens.
mod against_openssl {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::io::{self, Read, Write};
    use std::rc::Rc;

    use openssl::ssl::{
        HandshakeError, MidHandshakeSslStream, Ssl, SslContextBuilder, SslMethod, SslOptions,
        SslStream, SslVersion,
    };

    use super::*;

    type Pipe = Rc<RefCell<VecDeque<Vec<u8>>>>;

    /// One end of an in-memory datagram pipe.
    #[derive(Debug)]
    struct End {
        rx: Pipe,
        tx: Pipe,
    }

    impl Read for End {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let d = self
                .rx
                .borrow_mut()
                .pop_front()
                .ok_or(io::ErrorKind::WouldBlock)?;
            buf[..d.len()].copy_from_slice(&d);
            Ok(d.len())
        }
    }

    impl Write for End {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.tx.borrow_mut().push_back(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const KEY: &[u8] = b"a PSK of thirty-two bytes, fixed";

    enum Side {
        Start(Ssl, End),
        Mid(MidHandshakeSslStream<End>),
        Done(SslStream<End>),
    }

    fn step(side: Side, server: bool) -> Side {
        let r = match side {
            Side::Start(ssl, io) if server => ssl.accept(io),
            Side::Start(ssl, io) => ssl.connect(io),
            Side::Mid(m) => m.handshake(),
            done => return done,
        };
        match r {
            Ok(s) => Side::Done(s),
            Err(HandshakeError::WouldBlock(m)) => Side::Mid(m),
            Err(e) => panic!("handshake: {e}"),
        }
    }

    /// A handshaken (client, server, client→server pipe, server→client pipe) over `suite`.
    fn handshake(suite: &str) -> (SslStream<End>, SslStream<End>, Pipe, Pipe) {
        let ctx = |method| {
            let mut b = SslContextBuilder::new(method).unwrap();
            b.set_min_proto_version(Some(SslVersion::DTLS1_2)).unwrap();
            b.set_max_proto_version(Some(SslVersion::DTLS1_2)).unwrap();
            // CCM-8's 64-bit tags need security level 0 from OpenSSL 3.1 on.
            b.set_security_level(0);
            b.set_cipher_list(suite).unwrap();
            b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET);
            b.set_psk_client_callback(|_, _, identity, psk| {
                identity[..2].copy_from_slice(b"c\0");
                psk[..KEY.len()].copy_from_slice(KEY);
                Ok(KEY.len())
            });
            b.set_psk_server_callback(|_, _, psk| {
                psk[..KEY.len()].copy_from_slice(KEY);
                Ok(KEY.len())
            });
            b.build()
        };
        let (c2s, s2c) = (Pipe::default(), Pipe::default());
        let mut c = Ssl::new(&ctx(SslMethod::dtls_client())).unwrap();
        let mut s = Ssl::new(&ctx(SslMethod::dtls_server())).unwrap();
        c.set_mtu(1500).unwrap();
        s.set_mtu(1500).unwrap();
        let mut client = Side::Start(
            c,
            End {
                rx: s2c.clone(),
                tx: c2s.clone(),
            },
        );
        let mut server = Side::Start(
            s,
            End {
                rx: c2s.clone(),
                tx: s2c.clone(),
            },
        );
        for _ in 0..20 {
            client = step(client, false);
            server = step(server, true);
            if let (Side::Done(c), Side::Done(_)) = (&client, &server) {
                assert_eq!(c.ssl().current_cipher().unwrap().name(), suite);
                assert!(c2s.borrow().is_empty() && s2c.borrow().is_empty());
                let (Side::Done(c), Side::Done(s)) = (client, server) else {
                    unreachable!()
                };
                return (c, s, c2s, s2c);
            }
        }
        panic!("{suite}: handshake did not finish");
    }

    /// One direction: `writer` (OpenSSL) writes records that our `ours` (derived from the same
    /// side) must reproduce and our `peer` (derived from the other side) must open; our next
    /// records go to `reader` (OpenSSL), which must read them.
    fn one_direction(
        suite: &str,
        writer: &mut SslStream<End>,
        reader: &mut SslStream<End>,
        pipe: &Pipe,
        writer_is_client: bool,
    ) {
        let aead = Aead::from_suite_name(suite).unwrap();
        let mut ours = RecordLayer::from_ssl(writer.ssl(), writer_is_client, 1, 0)
            .unwrap()
            .expect("a compact suite");
        let mut peer = RecordLayer::from_ssl(reader.ssl(), !writer_is_client, 1, 0)
            .unwrap()
            .unwrap();
        assert_eq!(ours.aead(), aead);
        let mut buf = vec![0u8; 2048];
        for (i, len) in [1usize, 16, 100, 1000].into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
            assert_eq!(writer.write(&data).unwrap(), len);
            let theirs = pipe.borrow_mut().pop_front().expect("a datagram");
            assert!(pipe.borrow().is_empty(), "{suite}: one record per write");
            let record = RecordHeader::new_checked(&theirs).unwrap();
            assert_eq!(record.total_len(), theirs.len(), "{suite}: one record");
            assert_eq!(record.epoch(), 1);
            // Same sequence number and, for GCM and CCM, the explicit nonce OpenSSL chose.
            ours.set_next_write_seq(record.sequence());
            let ccm = matches!(
                aead,
                Aead::Aes128Ccm | Aead::Aes256Ccm | Aead::Aes128Ccm8 | Aead::Aes256Ccm8
            );
            if ccm {
                // OpenSSL's CCM explicit nonce is the epoch and sequence number, as ours.
                assert_eq!(record.fragment()[..8], record.bytes()[3..11]);
            } else if aead.explicit_nonce_len() == 8 {
                // OpenSSL's GCM counts its own from a random start: ours continues it.
                let explicit = u64::from_be_bytes(*record.fragment().first_chunk().unwrap());
                ours.continue_explicit_nonce_after(explicit.wrapping_sub(1).to_be_bytes());
            }
            let mut mine = Vec::new();
            ours.seal(None, ContentType::ApplicationData, &data, &mut mine)
                .unwrap();
            assert_eq!(mine, theirs, "{suite}: {len} bytes, byte for byte");
            // Ours opens OpenSSL's record…
            let mut plain = Vec::new();
            assert_eq!(
                peer.open(&record, &mut plain),
                Ok(ContentType::ApplicationData)
            );
            assert_eq!(plain, data, "{suite}");
            // …and OpenSSL reads it (ours is dropped: each nonce protects one record).
            pipe.borrow_mut().push_back(theirs);
            assert_eq!(reader.read(&mut buf).unwrap(), len);
            assert_eq!(&buf[..len], &data[..]);
        }
        // OpenSSL writes no more in this direction: ours continues after its last record
        // (sequence number and explicit nonce), and OpenSSL reads what ours seals.
        for len in [1usize, 100, 1000] {
            let data: Vec<u8> = (0..len).map(|b| !(b as u8)).collect();
            let mut mine = Vec::new();
            ours.seal(None, ContentType::ApplicationData, &data, &mut mine)
                .unwrap();
            pipe.borrow_mut().push_back(mine);
            assert_eq!(
                reader.read(&mut buf).unwrap(),
                len,
                "{suite}: OpenSSL opens ours"
            );
            assert_eq!(&buf[..len], &data[..]);
        }
    }

    #[test]
    fn every_suite_seals_what_openssl_seals_and_each_opens_the_other() {
        for suite in [
            "PSK-AES128-GCM-SHA256",
            "PSK-AES256-GCM-SHA384",
            "PSK-AES128-CCM",
            "PSK-AES256-CCM",
            "PSK-AES128-CCM8",
            "PSK-AES256-CCM8",
            "PSK-CHACHA20-POLY1305",
        ] {
            let (mut client, mut server, c2s, s2c) = handshake(suite);
            one_direction(suite, &mut client, &mut server, &c2s, true);
            one_direction(suite, &mut server, &mut client, &s2c, false);
        }
    }
}

/// Payloads of a run: sizes that switch between the one-shot and the generic path (empty
/// records) and cross the 16-byte block size.
fn run_payloads() -> Vec<Vec<u8>> {
    [100usize, 1, 0, 16, 17, 1000, 0, 0, 33, 1200, 5]
        .iter()
        .enumerate()
        .map(|(i, &len)| (0..len).map(|b| (b + i) as u8).collect())
        .collect()
}

/// The layers of `pair(aead)` twice over (two sealers of the same keys) and a receiver; with
/// `cid`, records carry the 6-byte server CID.
fn sealed_both_ways(aead: Aead, cid: Option<&[u8]>, start: u64, explicit: Option<u64>) {
    let (mut one, _) = pair(aead);
    let (mut run, _) = pair(aead);
    for l in [&mut one, &mut run] {
        l.next_write_seq = start;
        if let Some(e) = explicit {
            l.continue_explicit_nonce_after(e.to_be_bytes());
        }
    }
    let payloads = run_payloads();
    let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
    // Several runs: the GCM count carries from one to the next, and a context cache shared
    // with the one-by-one sealer (same thread) is re-keyed in between.
    for round in 0..3 {
        let mut singles = Vec::new();
        for p in &refs {
            let mut w = Vec::new();
            let r = one.seal(cid, ContentType::ApplicationData, p, &mut w);
            singles.push((r, w));
        }
        let mut outs: Vec<Vec<u8>> = vec![Vec::new(); refs.len()];
        let (n, r) = run.seal_run(cid, ContentType::ApplicationData, &refs, &mut outs);
        let stop = singles.iter().position(|(r, _)| r.is_err());
        assert_eq!(n, stop.unwrap_or(refs.len()), "{aead:?} round {round}");
        assert_eq!(r, stop.map_or(Ok(()), |i| singles[i].0), "{aead:?}");
        for (i, (_, w)) in singles.iter().enumerate().take(n) {
            assert_eq!(&outs[i], w, "{aead:?} cid {cid:?} round {round} record {i}");
        }
        assert!(
            outs[n..].iter().all(Vec::is_empty),
            "nothing after the stop"
        );
        assert_eq!(run.next_write_seq(), one.next_write_seq());
        if stop.is_some() {
            break;
        }
    }
}

#[test]
fn a_run_sealed_in_one_call_is_byte_for_byte_what_sealing_one_by_one_gives() {
    for aead in ALL {
        sealed_both_ways(aead, None, 0, None);
        sealed_both_ways(aead, Some(&SERVER_CID), 0, None);
        sealed_both_ways(aead, Some(&[]), 7, None); // an empty CID: standard records
                                                    // After a hand-off from OpenSSL: explicit nonces continuing its counter (CCM takes
                                                    // the generic path then).
        sealed_both_ways(aead, None, 9, Some(0x1234_5678));
        sealed_both_ways(aead, Some(&SERVER_CID), 9, Some(u64::MAX));
    }
}

#[test]
fn sequence_exhaustion_midway_through_a_run_stops_it_as_one_by_one_does() {
    for aead in [Aead::Aes128Gcm, Aead::Aes128Ccm8, Aead::ChaCha20Poly1305] {
        // Records MAX − 4, MAX − 3, MAX − 2 seal; MAX − 1 is kept for close_notify.
        sealed_both_ways(aead, None, MAX_SEQUENCE - 4, None);
        sealed_both_ways(aead, Some(&SERVER_CID), MAX_SEQUENCE - 4, None);
        let (mut a, mut b) = pair(aead);
        a.next_write_seq = MAX_SEQUENCE - 3;
        let payloads: [&[u8]; 4] = [b"a", b"b", b"c", b"d"];
        let mut outs: [Vec<u8>; 4] = Default::default();
        let (n, r) = a.seal_run(None, ContentType::ApplicationData, &payloads, &mut outs);
        assert_eq!((n, r), (2, Err(SealError::SequenceExhausted)), "{aead:?}");
        assert!(outs[2].is_empty() && outs[3].is_empty());
        assert_eq!(a.next_write_seq(), MAX_SEQUENCE - 1);
        for (out, p) in outs.iter().zip(payloads).take(2) {
            assert_eq!(open_one(&mut b, out).unwrap().1, p);
        }
        // The reserved number still seals the close_notify.
        let mut alert = Vec::new();
        a.seal(None, ContentType::Alert, &[1, 0], &mut alert)
            .unwrap();
        // A run refused at its first record seals nothing; one too long stops there too.
        let (n, r) = a.seal_run(None, ContentType::Alert, &payloads, &mut outs);
        assert_eq!((n, r), (0, Err(SealError::SequenceExhausted)));
        let (mut c, _) = pair(aead);
        let long = vec![0u8; MAX_PLAINTEXT + 1];
        let mut outs: [Vec<u8>; 3] = Default::default();
        let (n, r) = c.seal_run(
            None,
            ContentType::ApplicationData,
            &[b"x", &long, b"y"],
            &mut outs,
        );
        assert_eq!((n, r), (1, Err(SealError::TooLong)));
        assert_eq!(c.next_write_seq(), 1);
    }
}

/// Opens `wires` (one record each) in one call of `open_run`, for a receiver of `cid_len`-byte
/// CIDs.
fn open_run_of(
    rx: &mut RecordLayer,
    wires: &[Vec<u8>],
    cid_len: usize,
) -> Vec<Result<(ContentType, Vec<u8>), OpenError>> {
    let headers: Vec<RecordHeader<'_>> = wires
        .iter()
        .map(|w| RecordHeader::new_checked_cid(w, cid_len).unwrap())
        .collect();
    let mut outs = vec![Vec::new(); wires.len()];
    let mut results = vec![Err(OpenError::Malformed); wires.len()];
    rx.open_run(&headers, &mut outs, &mut results);
    results
        .into_iter()
        .zip(outs)
        .map(|(r, o)| r.map(|t| (t, o[PLAINTEXT_AT..].to_vec())))
        .collect()
}

#[test]
fn a_run_opened_in_one_call_refuses_a_tampered_or_replayed_record_alone() {
    for aead in ALL {
        for cid in [None, Some(&SERVER_CID[..])] {
            let (mut a, mut b) = pair(aead);
            b.set_read_cid(cid.is_some());
            let cid_len = cid.map_or(0, <[u8]>::len);
            let payloads = run_payloads();
            let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
            let mut wires = vec![Vec::new(); refs.len()];
            let (n, r) = a.seal_run(cid, ContentType::ApplicationData, &refs, &mut wires);
            assert_eq!((n, r), (refs.len(), Ok(())));
            // Record 3 tampered, record 5 replaying record 1, record 8 twice.
            if let Some(b) = wires[3].last_mut() {
                *b ^= 1;
            }
            let mut run = wires.clone();
            run[5] = wires[1].clone();
            run.push(wires[8].clone());
            let results = open_run_of(&mut b, &run, cid_len);
            for (i, r) in results.iter().enumerate() {
                match i {
                    3 => assert_eq!(r, &Err(OpenError::Unauthenticated), "{aead:?} {i}"),
                    5 | 11 => assert_eq!(r, &Err(OpenError::Replayed), "{aead:?} {i}"),
                    _ => assert_eq!(
                        r,
                        &Ok((ContentType::ApplicationData, payloads[i].clone())),
                        "{aead:?} cid {cid:?} record {i}"
                    ),
                }
            }
            // The tampered one changed nothing: its genuine self still opens, and the record
            // the replay displaced (5) too; then all of them are replays.
            let (mut a2, _) = pair(aead);
            let mut genuine = vec![Vec::new(); refs.len()];
            let sealed = a2.seal_run(cid, ContentType::ApplicationData, &refs, &mut genuine);
            assert_eq!(sealed, (refs.len(), Ok(())));
            let results = open_run_of(&mut b, &genuine[3..6], cid_len);
            assert!(results[0].is_ok() && results[2].is_ok(), "{aead:?}");
            assert_eq!(results[1], Err(OpenError::Replayed));
            let again = open_run_of(&mut b, &genuine, cid_len);
            assert!(again.iter().all(|r| r == &Err(OpenError::Replayed)));
            // What one call opens, opening one by one opens the same way.
            let (mut c, mut d) = pair(aead);
            d.set_read_cid(cid.is_some());
            let mut fresh = vec![Vec::new(); refs.len()];
            let sealed = c.seal_run(cid, ContentType::ApplicationData, &refs, &mut fresh);
            assert_eq!(sealed, (refs.len(), Ok(())));
            for (w, p) in fresh.iter().zip(&payloads) {
                let header = RecordHeader::new_checked_cid(w, cid_len).unwrap();
                let mut out = Vec::new();
                assert_eq!(d.open(&header, &mut out), Ok(ContentType::ApplicationData));
                assert_eq!(&out, p);
            }
        }
    }
}

#[test]
fn batch_calls_reuse_the_buffers_they_are_given() {
    // No allocation of their own: with buffers that have room, every record is sealed and
    // opened in place (same allocation, same capacity).
    let (mut a, mut b) = pair(Aead::Aes128Gcm);
    let payload = [0x5au8; 100];
    let refs = [&payload[..]; RUN];
    let mut wires: [Vec<u8>; RUN] = std::array::from_fn(|_| Vec::with_capacity(256));
    let mut plains: [Vec<u8>; RUN] = std::array::from_fn(|_| Vec::with_capacity(256));
    let ptrs: Vec<*const u8> = wires.iter().chain(&plains).map(|v| v.as_ptr()).collect();
    for _ in 0..3 {
        wires.iter_mut().for_each(Vec::clear);
        assert_eq!(
            a.seal_run(None, ContentType::ApplicationData, &refs, &mut wires),
            (RUN, Ok(()))
        );
        let headers: [RecordHeader<'_>; RUN] =
            std::array::from_fn(|i| RecordHeader::new_checked(&wires[i]).unwrap());
        let mut results = [Err(OpenError::Malformed); RUN];
        b.open_run(&headers, &mut plains, &mut results);
        assert!(results
            .iter()
            .all(|r| r == &Ok(ContentType::ApplicationData)));
        assert!(plains.iter().all(|p| p[PLAINTEXT_AT..] == payload));
    }
    let after: Vec<*const u8> = wires.iter().chain(&plains).map(|v| v.as_ptr()).collect();
    assert_eq!(ptrs, after);
}
