//! Tests of the pre-parser: the record and handshake header views, [`classify`] and its
//! agreement with the other classifiers on random and mutated datagrams.

use super::record::MAX_RECORD_LEN;
use super::*;

/// Builds one DTLS record.
fn record(content_type: u8, version: u16, epoch: u16, sequence: u64, fragment: &[u8]) -> Vec<u8> {
    let mut out = vec![content_type];
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&sequence.to_be_bytes()[2..]);
    out.extend_from_slice(&u16::try_from(fragment.len()).unwrap().to_be_bytes());
    out.extend_from_slice(fragment);
    out
}

/// Builds a handshake header followed by `body`.
fn handshake(msg_type: u8, length: u32, message_seq: u16, offset: u32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![msg_type];
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.extend_from_slice(&message_seq.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes()[1..]);
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    out.extend_from_slice(body);
    out
}

/// A ClientHello body offering one cipher suite and null compression.
fn client_hello_body(session_id: &[u8], cookie: &[u8]) -> Vec<u8> {
    let mut body = vec![0xFE, 0xFD];
    body.extend_from_slice(&[0x5A; 32]);
    body.push(u8::try_from(session_id.len()).unwrap());
    body.extend_from_slice(session_id);
    body.push(u8::try_from(cookie.len()).unwrap());
    body.extend_from_slice(cookie);
    body.extend_from_slice(&[0x00, 0x02, 0xC0, 0xAE]); // TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body
}

/// A complete ClientHello in one epoch-0 record with DTLS 1.0 record version.
fn client_hello(message_seq: u16, cookie: &[u8]) -> Vec<u8> {
    let body = client_hello_body(&[], cookie);
    let len = u32::try_from(body.len()).unwrap();
    record(
        22,
        DTLS1_0_VERSION,
        0,
        message_seq.into(),
        &handshake(1, len, message_seq, 0, &body),
    )
}

/// The smallest ClientHello a real client could send: no session ID, no cookie, one suite.
fn minimal_client_hello() -> Vec<u8> {
    client_hello(0, &[])
}

/// A tiny deterministic PRNG so the fuzz-style tests need no extra crate.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, bound: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(bound).unwrap()).unwrap()
    }
}

#[test]
fn minimal_client_hello_is_67_bytes_and_classified_as_client_hello() {
    let datagram = minimal_client_hello();
    assert_eq!(datagram.len(), 67);
    let info = ClientHelloInfo {
        cookie_len: 0,
        fragmented: false,
        record_version: DTLS1_0_VERSION,
    };
    assert_eq!(classify(&datagram), Ok(Datagram::ClientHello(info)));
    assert_eq!(classify_unknown_peer(&datagram), Ok(info));
    assert!(is_client_hello(&datagram));
}

#[test]
fn client_hello_with_cookie_reports_cookie_length_and_record_version() {
    let mut body = client_hello_body(&[7; 32], &[9; 32]);
    let len = u32::try_from(body.len()).unwrap();
    let datagram = record(22, DTLS1_2_VERSION, 0, 1, &handshake(1, len, 1, 0, &body));
    let info = classify_unknown_peer(&datagram).unwrap();
    assert_eq!(info.cookie_len, 32);
    assert!(!info.fragmented);
    assert_eq!(info.record_version, DTLS1_2_VERSION);

    // The largest cookie a u8 length can express is fine too.
    body = client_hello_body(&[], &[1; 255]);
    let len = u32::try_from(body.len()).unwrap();
    let datagram = record(22, DTLS1_2_VERSION, 0, 1, &handshake(1, len, 1, 0, &body));
    assert_eq!(classify_unknown_peer(&datagram).unwrap().cookie_len, 255);
}

#[test]
fn client_hello_truncated_at_every_length_is_rejected() {
    for full in [minimal_client_hello(), client_hello(1, &[3; 32])] {
        for len in 0..full.len() {
            let cut = &full[..len];
            let expected = match len {
                0 => DropReason::Empty,
                1..RECORD_HEADER_LEN => DropReason::TooShort,
                _ => DropReason::BadLength,
            };
            assert_eq!(classify(cut), Err(expected), "length {len}");
            assert_eq!(classify_unknown_peer(cut), Err(expected), "length {len}");
            assert!(!is_client_hello(cut), "length {len}");
            assert!(records(cut).all(|r| r.is_err()), "length {len}");
        }
    }
}

#[test]
fn client_hello_body_truncated_inside_a_consistent_record_is_bad_length() {
    let body = client_hello_body(&[1; 16], &[2; 20]);
    // Every cut up to and including the last cookie byte leaves the cookie incomplete.
    for cut in 0..(2 + 32 + 1 + 16 + 1 + 20) {
        let part = &body[..cut];
        let len = u32::try_from(part.len()).unwrap();
        let datagram = record(22, DTLS1_2_VERSION, 0, 0, &handshake(1, len, 0, 0, part));
        assert_eq!(classify(&datagram), Err(DropReason::BadLength), "cut {cut}");
        assert!(is_client_hello(&datagram));
    }
}

#[test]
fn session_id_longer_than_32_bytes_is_bad_length() {
    let body = client_hello_body(&[1; 33], &[]);
    let len = u32::try_from(body.len()).unwrap();
    let datagram = record(22, DTLS1_2_VERSION, 0, 0, &handshake(1, len, 0, 0, &body));
    assert_eq!(classify(&datagram), Err(DropReason::BadLength));
}

#[test]
fn only_the_four_dtls_content_types_are_accepted() {
    for content_type in 0..=u8::MAX {
        let datagram = record(content_type, DTLS1_2_VERSION, 1, 7, &[0; 24]);
        let result = classify(&datagram);
        if (20..=23).contains(&content_type) {
            assert_eq!(
                result,
                Ok(Datagram::Records {
                    first_epoch: 1,
                    records: 1
                }),
                "type {content_type}"
            );
            let header = RecordHeader::new_checked(&datagram).unwrap();
            assert_eq!(header.content_type().to_u8(), content_type);
        } else {
            assert_eq!(
                result,
                Err(DropReason::BadContentType),
                "type {content_type}"
            );
        }
    }
    // Heartbeat and tls12_cid are named explicitly in the design: refused.
    for content_type in [24, 25] {
        let datagram = record(content_type, DTLS1_2_VERSION, 1, 7, &[0; 24]);
        assert_eq!(classify(&datagram), Err(DropReason::BadContentType));
    }
}

#[test]
fn only_dtls_1_2_and_1_0_record_versions_are_accepted() {
    for version in 0..=u16::MAX {
        let datagram = record(23, version, 1, 7, &[0; 8]);
        let result = classify(&datagram);
        if version == DTLS1_2_VERSION || version == DTLS1_0_VERSION {
            assert!(result.is_ok(), "version {version:#06x}");
            let header = RecordHeader::new_checked(&datagram).unwrap();
            assert_eq!(header.version(), version);
        } else {
            assert_eq!(
                result,
                Err(DropReason::BadVersion),
                "version {version:#06x}"
            );
        }
    }
}

#[test]
fn record_header_accessors_read_every_field() {
    let datagram = record(23, DTLS1_2_VERSION, 0xABCD, 0x0000_1234_5678_9ABC, b"hello");
    let header = RecordHeader::new_checked(&datagram).unwrap();
    assert_eq!(header.content_type(), ContentType::ApplicationData);
    assert_eq!(header.version(), DTLS1_2_VERSION);
    assert_eq!(header.epoch(), 0xABCD);
    assert_eq!(header.sequence(), 0x1234_5678_9ABC);
    assert_eq!(header.length(), 5);
    assert_eq!(header.fragment(), b"hello");
    assert_eq!(header.total_len(), RECORD_HEADER_LEN + 5);

    let max = record(23, DTLS1_2_VERSION, 0, 0xFFFF_FFFF_FFFF, &[]);
    let header = RecordHeader::new_checked(&max).unwrap();
    assert_eq!(header.sequence(), 0xFFFF_FFFF_FFFF);
    assert_eq!(header.length(), 0);
}

#[test]
fn several_records_in_one_datagram_are_all_checked_and_counted() {
    let mut datagram = record(22, DTLS1_2_VERSION, 0, 5, &handshake(16, 4, 2, 0, &[1; 4]));
    datagram.extend(record(20, DTLS1_2_VERSION, 0, 6, &[1]));
    datagram.extend(record(22, DTLS1_2_VERSION, 1, 0, &[0xEE; 40]));
    assert_eq!(
        classify(&datagram),
        Ok(Datagram::Records {
            first_epoch: 0,
            records: 3
        })
    );
    let epochs: Vec<u16> = records(&datagram).map(|r| r.unwrap().epoch()).collect();
    assert_eq!(epochs, [0, 0, 1]);
    // Not a ClientHello: an unknown peer sending it is refused.
    assert_eq!(
        classify_unknown_peer(&datagram),
        Err(DropReason::NotClientHello)
    );
    assert!(!is_client_hello(&datagram));
}

#[test]
fn trailing_garbage_after_valid_records_is_rejected() {
    let valid = record(23, DTLS1_2_VERSION, 1, 1, &[0; 32]);

    let mut short_tail = valid.clone();
    short_tail.extend_from_slice(&[23, 0xFE, 0xFD]);
    assert_eq!(classify(&short_tail), Err(DropReason::TooShort));

    let mut partial_record = valid.clone();
    partial_record.extend_from_slice(&record(23, DTLS1_2_VERSION, 1, 2, &[0; 32])[..30]);
    assert_eq!(classify(&partial_record), Err(DropReason::BadLength));

    let mut bad_type = valid.clone();
    bad_type.extend_from_slice(&[0xFF; 20]);
    assert_eq!(classify(&bad_type), Err(DropReason::BadContentType));

    let mut hello_then_garbage = minimal_client_hello();
    hello_then_garbage.push(0);
    assert_eq!(
        classify_unknown_peer(&hello_then_garbage),
        Err(DropReason::TooShort)
    );

    // The iterator reports the error once, then stops.
    let mut iter = records(&partial_record);
    assert!(iter.next().unwrap().is_ok());
    assert_eq!(iter.next(), Some(Err(DropReason::BadLength)));
    assert_eq!(iter.next(), None);
    assert_eq!(iter.next(), None);
}

#[test]
fn empty_datagram_is_rejected() {
    assert_eq!(classify(&[]), Err(DropReason::Empty));
    assert_eq!(classify_unknown_peer(&[]), Err(DropReason::Empty));
    assert!(!is_client_hello(&[]));
    assert_eq!(records(&[]).count(), 0);
    assert_eq!(RecordHeader::new_checked(&[]), Err(DropReason::TooShort));
}

#[test]
fn record_longer_than_2_pow_14_plus_2048_is_oversized() {
    let at_limit = record(23, DTLS1_2_VERSION, 1, 0, &vec![0; MAX_RECORD_LEN]);
    assert!(classify(&at_limit).is_ok());
    let over = record(23, DTLS1_2_VERSION, 1, 0, &vec![0; MAX_RECORD_LEN + 1]);
    assert_eq!(classify(&over), Err(DropReason::Oversized));
    // A header claiming too much is oversized even when the bytes are not there.
    let mut header_only = record(23, DTLS1_2_VERSION, 1, 0, &[]);
    header_only[11..13].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(classify(&header_only), Err(DropReason::Oversized));
}

#[test]
fn fragmented_client_hello_is_flagged() {
    let body = client_hello_body(&[], &[]);
    let len = u32::try_from(body.len()).unwrap();

    let first_half = record(
        22,
        DTLS1_2_VERSION,
        0,
        0,
        &handshake(1, len, 0, 0, &body[..20]),
    );
    let info = classify_unknown_peer(&first_half).unwrap();
    assert!(info.fragmented);
    assert_eq!(info.cookie_len, 0);

    let second_half = record(
        22,
        DTLS1_2_VERSION,
        0,
        1,
        &handshake(1, len, 0, 20, &body[20..]),
    );
    assert!(classify_unknown_peer(&second_half).unwrap().fragmented);
    assert!(is_client_hello(&second_half));

    // Both fragments in one datagram: two records, so not a lone ClientHello.
    let mut both = first_half.clone();
    both.extend(second_half);
    assert_eq!(
        classify(&both),
        Ok(Datagram::Records {
            first_epoch: 0,
            records: 2
        })
    );
    assert_eq!(
        classify_unknown_peer(&both),
        Err(DropReason::NotClientHello)
    );
    assert!(is_client_hello(&both));
}

#[test]
fn inconsistent_handshake_header_is_bad_length() {
    let body = client_hello_body(&[], &[]);
    let len = u32::try_from(body.len()).unwrap();

    // fragment_offset + fragment_length beyond the message length.
    let beyond = record(22, DTLS1_2_VERSION, 0, 0, &handshake(1, len, 0, 1, &body));
    assert_eq!(classify(&beyond), Err(DropReason::BadLength));

    // fragment_length not matching the record.
    let mut mismatch = minimal_client_hello();
    mismatch[RECORD_HEADER_LEN + 11] ^= 1;
    assert_eq!(classify(&mismatch), Err(DropReason::BadLength));

    // A record too short to hold a handshake header is not taken for a ClientHello.
    let tiny = record(22, DTLS1_2_VERSION, 0, 0, &[1, 0, 0]);
    assert!(!is_client_hello(&tiny));
    assert_eq!(
        classify_unknown_peer(&tiny),
        Err(DropReason::NotClientHello)
    );
    assert!(HandshakeHeader::new_checked(&[1, 0, 0]).is_err());
}

#[test]
fn epoch_1_record_from_unknown_peer_is_not_client_hello() {
    let body = client_hello_body(&[], &[]);
    let len = u32::try_from(body.len()).unwrap();
    let datagram = record(22, DTLS1_2_VERSION, 1, 0, &handshake(1, len, 0, 0, &body));
    assert_eq!(
        classify_unknown_peer(&datagram),
        Err(DropReason::NotClientHello)
    );
    assert_eq!(
        classify(&datagram),
        Ok(Datagram::Records {
            first_epoch: 1,
            records: 1
        })
    );
    assert!(!is_client_hello(&datagram));

    let app_data = record(23, DTLS1_2_VERSION, 1, 3, &[0; 40]);
    assert_eq!(
        classify_unknown_peer(&app_data),
        Err(DropReason::NotClientHello)
    );
}

#[test]
fn other_handshake_messages_from_unknown_peer_are_not_client_hello() {
    for msg_type in [0, 2, 3, 11, 12, 14, 16, 20] {
        let datagram = record(
            22,
            DTLS1_2_VERSION,
            0,
            0,
            &handshake(msg_type, 8, 0, 0, &[0; 8]),
        );
        assert_eq!(
            classify_unknown_peer(&datagram),
            Err(DropReason::NotClientHello)
        );
        assert!(!is_client_hello(&datagram));
    }
}

#[test]
fn client_hello_with_message_seq_above_1_is_not_client_hello() {
    assert!(classify_unknown_peer(&client_hello(1, &[4; 16])).is_ok());
    for message_seq in [2, 3, 0xFFFF] {
        let datagram = client_hello(message_seq, &[]);
        assert_eq!(classify(&datagram), Err(DropReason::NotClientHello));
        assert_eq!(
            classify_unknown_peer(&datagram),
            Err(DropReason::NotClientHello)
        );
    }
}

#[test]
fn hello_verify_request_len_follows_rfc_6347_layout() {
    assert_eq!(hello_verify_request_len(0), 28);
    assert_eq!(hello_verify_request_len(32), 60);
    assert_eq!(hello_verify_request_len(usize::MAX), usize::MAX);
    // A minimal ClientHello is larger than the HelloVerifyRequest it triggers.
    assert!(minimal_client_hello().len() >= hello_verify_request_len(32));
}

#[test]
fn drop_reason_index_and_name_are_consistent() {
    for (i, reason) in DropReason::ALL.iter().enumerate() {
        assert_eq!(reason.index(), i);
        assert_eq!(reason.to_string(), reason.as_str());
    }
    let mut names: Vec<&str> = DropReason::ALL.iter().map(DropReason::as_str).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), DropReason::ALL.len());
}

#[test]
fn random_and_mutated_datagrams_never_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let seed = client_hello(1, &[0x42; 32]);
    let mut buf = Vec::new();
    for i in 0..10_000 {
        buf.clear();
        if i % 2 == 0 {
            // Pure noise, sometimes starting like a record to get past the first checks.
            let len = rng.below(200);
            buf.extend((0..len).map(|_| rng.next() as u8));
            if let Some(first) = buf.first_mut() {
                *first = 20 + (rng.next() % 4) as u8;
            }
            if buf.len() >= 3 && rng.next() % 2 == 0 {
                buf[1] = 0xFE;
                buf[2] = 0xFD;
            }
        } else {
            // A valid ClientHello with a few bytes flipped, then cut short or extended.
            buf.extend_from_slice(&seed);
            for _ in 0..=rng.below(4) {
                let at = rng.below(buf.len());
                buf[at] = rng.next() as u8;
            }
            match rng.below(3) {
                0 => buf.truncate(rng.below(seed.len() + 1)),
                1 => buf.extend((0..rng.below(40)).map(|_| rng.next() as u8)),
                _ => {}
            }
        }
        let classified = classify(&buf);
        let unknown = classify_unknown_peer(&buf);
        let _ = is_client_hello(&buf);
        // The two classifiers agree with each other.
        match classified {
            Ok(Datagram::ClientHello(info)) => assert_eq!(unknown, Ok(info)),
            Ok(Datagram::Records { records, .. }) => {
                assert!(records >= 1);
                assert_eq!(unknown, Err(DropReason::NotClientHello));
            }
            Err(reason) => assert_eq!(unknown, Err(reason)),
        }
        for record in records(&buf).flatten() {
            let _ = (record.sequence(), record.epoch(), record.fragment().len());
        }
    }
}

#[test]
fn tls12_cid_records_parse_only_with_the_receivers_cid_length() {
    // type 25, DTLS 1.2, epoch 1, seq 7, a 4-byte CID, length 3, fragment.
    let mut cid_record = vec![
        25, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 7, 0xA, 0xB, 0xC, 0xD, 0, 3, 1, 2, 3,
    ];
    let parsed = super::parse_cid(&cid_record, 4).unwrap();
    let r = parsed.records().next().unwrap();
    assert!(r.is_cid());
    assert_eq!(
        (r.cid(), r.fragment(), r.epoch(), r.sequence()),
        (&[0xA, 0xB, 0xC, 0xD][..], &[1, 2, 3][..], 1, 7)
    );
    assert_eq!(parsed.cid(), Some(&[0xA, 0xB, 0xC, 0xD][..]));
    // Without CIDs type 25 is refused; with another length the lengths do not add up.
    assert_eq!(
        super::parse(&cid_record).unwrap_err(),
        DropReason::BadContentType
    );
    assert_eq!(
        super::parse_cid(&cid_record, 6).unwrap_err(),
        DropReason::BadLength
    );
    assert_eq!(
        super::parse_cid(&cid_record[..15], 4).unwrap_err(),
        DropReason::TooShort
    );
    // A CID record never carries the DTLS 1.0 version.
    cid_record[2] = 0xFF;
    assert_eq!(
        super::parse_cid(&cid_record, 4).unwrap_err(),
        DropReason::BadVersion
    );
    // Standard records after a CID record in one datagram parse too, and routing takes the
    // first CID.
    let mut mixed = record(22, DTLS1_2_VERSION, 0, 3, &[0; 4]);
    cid_record[2] = 0xFD;
    mixed.extend_from_slice(&cid_record);
    let parsed = super::parse_cid(&mixed, 4).unwrap();
    assert_eq!(parsed.records().count(), 2);
    assert_eq!(parsed.cid(), Some(&[0xA, 0xB, 0xC, 0xD][..]));
}
