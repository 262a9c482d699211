//! Connection IDs (RFC 9146) between this library's own client and server, sans-IO over an
//! in-memory link: negotiation in every combination of lengths, `tls12_cid` records on the wire
//! in exactly the directions that asked for them, every AEAD suite, loss during the handshake,
//! and exactly today's behaviour when either side has CIDs off. Interop with an independent
//! implementation (Mbed TLS) and the endpoint's routing are in tests/cid_interop.rs and
//! tests/cid_endpoint.rs.

mod support;

use support::cid::{client_ctx, server_ctx};

use std::time::{Duration, Instant};

use openssl_dtls::{DtlsClientContext, DtlsServerContext, Session};
use support::{Dir, Faults, Link};

/// Content types of the records of one datagram (standard headers, or `tls12_cid` with a CID
/// of `cid_len` bytes).
fn record_types(datagram: &[u8], cid_len: usize) -> Vec<u8> {
    let mut types = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 13 {
        let header = if rest[0] == 25 { 13 + cid_len } else { 13 };
        let len = u16::from_be_bytes([rest[header - 2], rest[header - 1]]) as usize;
        types.push(rest[0]);
        rest = &rest[(header + len).min(rest.len())..];
    }
    types
}

struct Run {
    client: Session,
    server: Session,
    /// Every datagram, by direction.
    to_server: Vec<Vec<u8>>,
    to_client: Vec<Vec<u8>>,
}

fn run(client_cid: Option<u8>, server_cid: u8, cipher: &str, faults: Option<Faults>) -> Run {
    let now = Instant::now();
    let cc = client_ctx(client_cid, cipher);
    let sc = server_ctx(server_cid, cipher);
    let mut client = cc.new_session(None, now).unwrap();
    let mut server = sc.new_session(now).unwrap();
    let mut link = match faults {
        Some(f) => Link::new(7, f),
        None => Link::perfect(),
    };
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let ok = support::run_until_tapped(
        &mut client,
        &mut server,
        &mut link,
        Duration::from_secs(20),
        |link, dir, d| {
            match dir {
                Dir::ToServer => to_server.push(d.to_vec()),
                Dir::ToClient => to_client.push(d.to_vec()),
            }
            link.send(dir, d)
        },
        |c, s| c.is_established() && s.is_established(),
    );
    assert!(
        ok,
        "handshake: client {:?} server {:?}",
        client.error(),
        server.error()
    );
    // Application data both ways, several records.
    for i in 0..5u8 {
        client.send(&[b'c', i]).unwrap();
        server.send(&[b's', i, 0, 0]).unwrap();
    }
    let mut got = (Vec::new(), Vec::new());
    let ok = support::run_until_tapped(
        &mut client,
        &mut server,
        &mut link,
        Duration::from_secs(10),
        |link, dir, d| {
            match dir {
                Dir::ToServer => to_server.push(d.to_vec()),
                Dir::ToClient => to_client.push(d.to_vec()),
            }
            link.send(dir, d)
        },
        |c, s| {
            let mut buf = [0u8; 100];
            while let Ok(Some(n)) = s.recv(&mut buf) {
                got.0.push(buf[..n].to_vec());
            }
            while let Ok(Some(n)) = c.recv(&mut buf) {
                got.1.push(buf[..n].to_vec());
            }
            got.0.len() == 5 && got.1.len() == 5
        },
    );
    assert!(
        ok,
        "data: {got:?} client {:?} server {:?} to_server {:?}",
        client.stats(),
        server.stats(),
        to_server
            .iter()
            .map(|d| record_types(d, 6))
            .collect::<Vec<_>>()
    );
    for i in 0..5u8 {
        assert_eq!(got.0[i as usize], vec![b'c', i]);
        assert_eq!(got.1[i as usize], vec![b's', i, 0, 0]);
    }
    Run {
        client,
        server,
        to_server,
        to_client,
    }
}

#[test]
fn a_device_with_an_empty_cid_sends_the_servers_cid_and_gets_standard_records() {
    for cipher in [
        "PSK-AES128-CCM8",
        "PSK-AES128-GCM-SHA256",
        "PSK-CHACHA20-POLY1305",
        "PSK-AES256-CCM",
    ] {
        let r = run(Some(0), 8, cipher, None);
        let (own, peer) = r.server.connection_ids().expect("negotiated");
        assert_eq!((own.len(), peer.len()), (8, 0), "{cipher}");
        assert_eq!(own[0], 0, "the default one-byte prefix");
        let (c_own, c_peer) = r.client.connection_ids().unwrap();
        assert_eq!((c_own, c_peer), (&[][..], own), "{cipher}");
        assert!(
            r.client.is_compact() && r.server.is_compact(),
            "CID connections are compact"
        );
        // Client to server: every epoch-1 record is a tls12_cid record with the server's CID
        // (the Finished too, rewritten from OpenSSL's format); server to client: none.
        let cid_records: usize = r
            .to_server
            .iter()
            .flat_map(|d| record_types(d, 8))
            .filter(|&t| t == 25)
            .count();
        assert!(
            cid_records >= 6,
            "{cipher}: Finished and 5 records, saw {cid_records}"
        );
        for d in &r.to_server {
            if d[0] == 25 {
                assert_eq!(&d[11..19], own, "{cipher}: the server's CID in the header");
            }
            for t in record_types(d, 8) {
                assert!(
                    t == 25 || t == 22 || t == 20,
                    "{cipher}: a standard epoch-1 record {t}"
                );
            }
        }
        assert!(
            r.to_client
                .iter()
                .all(|d| !record_types(d, 0).contains(&25)),
            "{cipher}"
        );
        assert!(r.to_client.iter().any(|d| record_types(d, 0).contains(&23)));
    }
}

#[test]
fn cids_both_ways_and_a_lossy_handshake() {
    let r = run(Some(4), 6, "PSK-AES128-CCM8", None);
    let (own, peer) = r.server.connection_ids().unwrap();
    assert_eq!((own.len(), peer.len()), (6, 4));
    assert!(r
        .to_client
        .iter()
        .flat_map(|d| record_types(d, 4))
        .any(|t| t == 25));
    // Drop each of the four handshake datagrams in turn (ClientHello, the server's flight, the
    // client's flight with its Finished, the server's Finished): retransmitted Finished records
    // are rewritten too, and the handshake completes.
    for i in 0..4 {
        let faults = Faults {
            drop_indices: vec![i],
            ..Faults::default()
        };
        let r = run(Some(0), 8, "PSK-AES128-GCM-SHA256", Some(faults));
        assert!(r.server.connection_ids().is_some(), "drop {i}");
    }
}

#[test]
fn with_cids_off_on_either_side_nothing_changes() {
    for (client, server) in [(None, 8), (Some(0), 0), (None, 0)] {
        let r = run(client, server, "PSK-AES128-CCM8", None);
        assert!(r.client.connection_ids().is_none() && r.server.connection_ids().is_none());
        assert!(
            !r.server.is_compact(),
            "compact mode stays opt-in without CIDs"
        );
        for d in r.to_server.iter().chain(&r.to_client) {
            assert!(!record_types(d, 0).contains(&25));
        }
    }
}

#[test]
fn a_cbc_suite_gets_no_cid() {
    let r = run(Some(0), 8, "PSK-AES128-CBC-SHA256", None);
    assert!(r.server.connection_ids().is_none());
    assert!(r.client.connection_ids().is_none());
}

#[test]
fn an_ecdsa_certificate_handshake_negotiates_cids_too() {
    use openssl::nid::Nid;
    let pki = support::Pki::new_ec();
    let key = support::ec_key(Nid::X9_62_PRIME256V1);
    let leaf = pki.leaf("device-server", &key);
    let now = Instant::now();
    let sc = DtlsServerContext::builder()
        .certificate_chain_pem(&leaf.to_pem().unwrap())
        .private_key_pem(&key.private_key_to_pem_pkcs8().unwrap())
        .ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        .connection_id(6)
        .build()
        .unwrap();
    let cc = DtlsClientContext::builder()
        .root_certificates_pem(&pki.ca_cert.to_pem().unwrap())
        .ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        .connection_id(0)
        .build()
        .unwrap();
    let mut client = cc.new_session(Some("device-server"), now).unwrap();
    let mut server = sc.new_session(now).unwrap();
    let mut link = Link::perfect();
    assert!(support::handshake(
        &mut client,
        &mut server,
        &mut link,
        Duration::from_secs(20)
    ));
    let (own, peer) = server.connection_ids().unwrap();
    assert_eq!((own.len(), peer.len()), (6, 0));
    assert_eq!(client.connection_ids().unwrap().1, own);
    client.send(b"over ECDSA").unwrap();
    let ok = support::run_until(
        &mut client,
        &mut server,
        &mut link,
        Duration::from_secs(5),
        |_, s| s.has_received(),
    );
    assert!(ok);
    let mut buf = [0u8; 64];
    assert_eq!(server.recv(&mut buf).unwrap(), Some(10));
}

#[test]
fn a_malformed_connection_id_extension_is_refused_with_decode_error() {
    let now = Instant::now();
    let cc = client_ctx(Some(0), "PSK-AES128-CCM8");
    let sc = server_ctx(8, "PSK-AES128-CCM8");
    let mut client = cc.new_session(None, now).unwrap();
    let mut server = sc.new_session(now).unwrap();
    let mut buf = vec![0u8; 2048];
    let n = client.poll_transmit(&mut buf).unwrap();
    let mut hello = buf[..n].to_vec();
    // The extension as our client sends it: type 54, length 1, an empty CID (one 0 byte).
    let at = hello
        .windows(5)
        .position(|w| w == [0, 54, 0, 1, 0])
        .expect("the connection_id extension in the ClientHello");
    hello[at + 4] = 5; // claims a 5-byte CID in a 1-byte extension
    server.handle_datagram(now, &hello);
    let error = server.error().expect("refused").to_string();
    assert!(error.contains("decode"), "{error}");
    let n = server.poll_transmit(&mut buf).expect("an alert");
    // A plaintext fatal alert: level 2, decode_error (50).
    assert_eq!((buf[0], buf[n - 2], buf[n - 1]), (21, 2, 50));
}

/// Epoch and sequence number of each record of one datagram (`tls12_cid` headers with a CID of
/// `cid_len` bytes).
fn epoch_seqs(datagram: &[u8], cid_len: usize) -> Vec<(u16, u64)> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 13 {
        let header = if rest[0] == 25 { 13 + cid_len } else { 13 };
        let epoch = u16::from_be_bytes([rest[3], rest[4]]);
        let mut seq = [0u8; 8];
        seq[2..].copy_from_slice(&rest[5..11]);
        out.push((epoch, u64::from_be_bytes(seq)));
        let len = u16::from_be_bytes([rest[header - 2], rest[header - 1]]) as usize;
        rest = &rest[(header + len).min(rest.len())..];
    }
    out
}

/// Notes each record's (direction, epoch, sequence number) of a datagram going `dir` (the
/// server's CIDs are 8 bytes, the client's 4), then sends it on.
fn tap(seen: &mut Vec<(bool, u16, u64)>, link: &mut Link, dir: Dir, d: &[u8]) {
    let to_server = dir == Dir::ToServer;
    let cid_len = if to_server { 8 } else { 4 };
    seen.extend(
        epoch_seqs(d, cid_len)
            .into_iter()
            .map(|(e, s)| (to_server, e, s)),
    );
    link.send(dir, d)
}

#[test]
fn a_resumed_cid_handshake_never_reuses_an_epoch1_sequence_number() {
    // An abbreviated handshake: the server writes its Finished in the very call that negotiates
    // the CIDs, then its compact layer must continue after that record.
    let now = Instant::now();
    let sc = DtlsServerContext::builder()
        .psk_key_store(|_: &[u8]| Some(support::cid::KEY.to_vec()))
        .ciphers("PSK-AES128-CCM8")
        .connection_id(8)
        .session_cache(16, Duration::from_secs(60))
        .build()
        .unwrap();
    let cc = client_ctx(Some(4), "PSK-AES128-CCM8");
    let peer: std::net::SocketAddr = "127.0.0.1:5684".parse().unwrap();
    let mut resumed = false;
    for round in 0..2 {
        let mut client = cc.new_session_to(peer, None, now).unwrap();
        let mut server = sc.new_session(now).unwrap();
        let mut link = Link::perfect();
        let mut seen: Vec<(bool, u16, u64)> = Vec::new();
        let ok = support::run_until_tapped(
            &mut client,
            &mut server,
            &mut link,
            Duration::from_secs(10),
            |link, dir, d| tap(&mut seen, link, dir, d),
            |c, s| c.is_established() && s.is_established(),
        );
        assert!(
            ok,
            "round {round}: {:?} {:?}",
            client.error(),
            server.error()
        );
        for i in 0..3u8 {
            server.send(&[b's', i]).unwrap();
            client.send(&[b'c', i]).unwrap();
        }
        let ok = support::run_until_tapped(
            &mut client,
            &mut server,
            &mut link,
            Duration::from_secs(5),
            |link, dir, d| tap(&mut seen, link, dir, d),
            |c, s| {
                let mut b = [0u8; 8];
                let mut n = 0;
                while let Ok(Some(_)) = s.recv(&mut b) {
                    n += 1;
                }
                while let Ok(Some(_)) = c.recv(&mut b) {
                    n += 1;
                }
                n > 0 && !c.has_transmit() && !s.has_transmit()
            },
        );
        assert!(ok);
        resumed = server.handshake_facts().is_some_and(|f| f.resumed);
        assert_eq!(resumed, round == 1, "the second handshake resumes");
        assert!(server.connection_ids().is_some());
        // Every epoch-1 (direction, sequence number) pair appears once: retransmissions get new
        // numbers, and the compact layers continue after OpenSSL's Finished.
        let mut epoch1: Vec<_> = seen.iter().filter(|(_, e, _)| *e == 1).collect();
        let before = epoch1.len();
        epoch1.sort();
        epoch1.dedup();
        assert_eq!(
            epoch1.len(),
            before,
            "round {round}: a sequence number used twice: {seen:?}"
        );
    }
    assert!(resumed);
}
