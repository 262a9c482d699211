//! Writes the checked-in seed corpus, `corpus/<target>/seed-*`, in the targets' own input
//! formats: real datagrams of real handshakes, and programs that run a handshake to its end.
//!
//! ```text
//! cd fuzz && cargo run --example seed_corpus          # every target
//! cd fuzz && cargo run --example seed_corpus -- cid   # only cid_record_parser, cid_transcode
//! ```
//!
//! The handshakes' datagrams differ from run to run (randoms, cookies); the CID seeds are
//! sealed under `__fuzz::CidLink`'s fixed keys and do not.

use std::path::Path;
use std::time::Instant;

use openssl_dtls::__fuzz::{CidLink, CID_SUITES};
use openssl_dtls::Endpoint;
use openssl_dtls_fuzz::{
    cid_op, client_ctx, compact_server_ctx, endpoint_config, is_compact_choice, op, peers,
    server_ctx, ENDPOINT_CID_LEN,
};

/// Every datagram of a complete handshake with suite `suite` through an endpoint, both ways,
/// then a datagram of data each way and the client's close_notify.
fn handshake_datagrams(suite: u8) -> Vec<Vec<u8>> {
    let now = Instant::now();
    let addr = peers()[0];
    let ctx = if is_compact_choice(suite) {
        compact_server_ctx()
    } else {
        server_ctx()
    };
    let mut ep = Endpoint::server(ctx.clone(), endpoint_config()).unwrap();
    let mut client = client_ctx(suite).new_session(None, now).unwrap();
    let mut buf = vec![0u8; 65_536];
    let mut all = Vec::new();
    for round in 0..12 {
        if round == 8 {
            client.send(b"seed data from the client").unwrap();
            let id = ep.connection_id(addr).unwrap();
            ep.send(addr, id, b"seed data from the server").unwrap();
        }
        if round == 10 {
            client.close();
        }
        while let Some(n) = client.poll_transmit(&mut buf) {
            all.push(buf[..n].to_vec());
            ep.handle_datagram(now, addr, &buf[..n]);
        }
        while let Some((_, n)) = ep.poll_transmit(&mut buf) {
            all.push(buf[..n].to_vec());
            client.handle_datagram(now, &buf[..n]);
        }
    }
    all
}

/// A program that runs the whole handshake, exchanges data and closes.
fn handshake_program(suite: u8) -> Vec<u8> {
    let mut p = vec![suite];
    for _ in 0..4 {
        p.extend([op::CLIENT_TO_SERVER, op::SERVER_TO_CLIENT]);
    }
    p.extend([
        op::CLIENT_DATA,
        20,
        op::CLIENT_TO_SERVER,
        op::SERVER_ACTION,
        0,
    ]);
    p.extend([
        op::SERVER_TO_CLIENT,
        op::SERVER_ACTION,
        1,
        op::SERVER_ACTION,
        2,
    ]);
    p.extend([op::SERVER_TO_CLIENT, op::TIME, 0, 250]);
    p
}

fn raw(peer: u8, datagram: &[u8]) -> Vec<u8> {
    let mut p = vec![op::RAW, peer];
    p.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    p.extend_from_slice(datagram);
    p
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

/// A `cid_transcode` seal operation carrying `plain` (its length a multiple of 8, < 1500).
fn seal_op(op: u8, content_type: u8, plain: &[u8]) -> Vec<u8> {
    assert!(plain.len().is_multiple_of(8) && plain.len() < 1500);
    let mut p = vec![op, content_type, (plain.len() / 8) as u8];
    p.extend_from_slice(plain);
    p
}

/// A `cid_transcode` operation delivering `datagram` (TO_SERVER or TO_CLIENT).
fn deliver_op(op: u8, datagram: &[u8]) -> Vec<u8> {
    let mut p = vec![op];
    p.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    p.extend_from_slice(datagram);
    p
}

/// Seeds of the CID targets: records sealed under `CidLink`'s fixed keys.
fn cid_seeds() {
    let server_cid: Vec<u8> = (0..ENDPOINT_CID_LEN).map(|i| 0xA0 + i).collect();
    let data = [0x5au8; 64];
    // cid_record_parser: CID records of each suite with the endpoint's CID length, two
    // back to back, one with an 8-byte CID, standard records, a ClientHello.
    for (suite, (name, _)) in CID_SUITES.iter().enumerate() {
        let mut link = CidLink::new(suite as u8, &server_cid, &[]);
        let a = link.client_seal(3, &data[..40]).unwrap();
        let h = link.client_seal(2, &data[..16]).unwrap();
        let name = name.to_ascii_lowercase();
        write(
            "cid_record_parser",
            &format!("{name}-app"),
            &[&[ENDPOINT_CID_LEN][..], &a].concat(),
        );
        write(
            "cid_record_parser",
            &format!("{name}-two"),
            &[&[ENDPOINT_CID_LEN][..], &h, &a].concat(),
        );
    }
    let mut link = CidLink::new(0, &[7; 8], &[]);
    let r = link.client_seal(3, &data[..8]).unwrap();
    write("cid_record_parser", "cid8", &[&[8u8][..], &r].concat());
    let mut plain_link = CidLink::new(1, &[], &[]);
    let std = plain_link.server_seal(3, &data[..24]).unwrap();
    write(
        "cid_record_parser",
        "standard",
        &[&[0u8][..], &std].concat(),
    );
    let hello = &handshake_datagrams(0)[0];
    write(
        "cid_record_parser",
        "client-hello",
        &[&[ENDPOINT_CID_LEN][..], hello].concat(),
    );

    // cid_transcode: per suite, the server's 6-byte CID (and none of the client's), every
    // operation once: seals both ways, a transcoded record, records delivered raw, mutations
    // and a replay.
    for (suite, (name, _)) in CID_SUITES.iter().enumerate() {
        for client_cid in [&[][..], &[0x11, 0x22, 0x33, 0x44][..]] {
            let mut p = vec![suite as u8, ENDPOINT_CID_LEN, client_cid.len() as u8];
            p.extend_from_slice(&server_cid);
            p.extend_from_slice(client_cid);
            // Records of a twin link (same keys), delivered raw: they authenticate.
            let mut twin = CidLink::new(suite as u8, &server_cid, client_cid);
            let r0 = twin.client_seal(3, &data[..32]).unwrap();
            let r1 = twin.client_seal(2, &data[..16]).unwrap();
            let s0 = twin.server_seal(3, &data[..8]).unwrap();
            p.extend(deliver_op(cid_op::TO_SERVER, &[r0, r1].concat()));
            p.extend(deliver_op(cid_op::TO_CLIENT, &s0));
            p.extend(seal_op(cid_op::CLIENT_SEAL, 3, &data[..48]));
            p.extend(seal_op(cid_op::CLIENT_SEAL, 2, &data[..24]));
            p.extend(seal_op(cid_op::CLIENT_TRANSCODE, 2, &data[..32]));
            p.extend(seal_op(cid_op::CLIENT_TRANSCODE, 1, &data[..8]));
            p.extend(seal_op(cid_op::SERVER_SEAL, 3, &data[..16]));
            p.extend([cid_op::MUTATE, 0, 0, 11, 0x01]); // a CID byte
            p.extend([cid_op::MUTATE, 1, 0, 40, 0x80]); // ciphertext
            p.extend([cid_op::MUTATE, 2, 0, 0, 0x00]); // an exact replay
            p.extend([cid_op::MUTATE, 4, 0, 3, 0x01]); // the server's record, epoch
            let tag = if client_cid.is_empty() { "" } else { "-both" };
            let name = name.to_ascii_lowercase();
            write("cid_transcode", &format!("{name}{tag}"), &p);
        }
    }
    // No CIDs at all: the layers stay standard, transcoding is a copy.
    let mut p = vec![0u8, 0, 0];
    p.extend(seal_op(cid_op::CLIENT_SEAL, 3, &data[..16]));
    p.extend(seal_op(cid_op::CLIENT_TRANSCODE, 2, &data[..16]));
    p.extend(seal_op(cid_op::SERVER_SEAL, 3, &data[..16]));
    write("cid_transcode", "no-cids", &p);
}

fn main() {
    cid_seeds();
    if std::env::args().nth(1).as_deref() == Some("cid") {
        return;
    }
    // The order of `client_ctx`: three suites on OpenSSL's record layer, then compact.
    let suites = [
        "ccm8",
        "gcm",
        "chacha",
        "compact-ccm8",
        "compact-gcm",
        "compact-chacha",
    ];
    for (suite, name) in suites.iter().enumerate() {
        let datagrams = handshake_datagrams(suite as u8);
        for (i, d) in datagrams.iter().enumerate() {
            write("record_preparser", &format!("{name}-{i:02}"), d);
        }
        let program = handshake_program(suite as u8);
        write("server_endpoint", &format!("{name}-handshake"), &program);
        write("server_session", &format!("{name}-handshake"), &program);
        // A spoofed copy of the first ClientHello from another address, then the handshake.
        let mut p = vec![suite as u8];
        p.extend(raw(1, &datagrams[0]));
        p.extend_from_slice(&program[1..]);
        write("server_endpoint", &format!("{name}-spoofed-hello"), &p);
        // The handshake, then a mutated replay of each client datagram.
        let mut p = program.clone();
        for which in 0..4u8 {
            p.extend([op::MUTATE, 0, which, 0, 20, 0x40, 0]);
        }
        write("server_endpoint", &format!("{name}-mutations"), &p);
        write("server_session", &format!("{name}-mutations"), &p);
        // Raw datagrams of the handshake straight at a server session.
        let mut p = vec![suite as u8];
        for d in datagrams.iter().take(4) {
            p.extend(raw(0, d));
        }
        write("server_session", &format!("{name}-raw"), &p);
    }
    // Cookies: random keys and a shared secret, IPv4 and IPv6 peers, a zero cookie.
    let v4 = [0u8, 0, 192, 0, 2, 1, 0x16, 0x34, 0, 0, 0x03, 0xE8, 3];
    write(
        "cookie_verifier",
        "random-v4",
        &[&v4[..], &[0; 32]].concat(),
    );
    let mut v6 = vec![4u8, 3];
    v6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    v6.extend_from_slice(&[0x16, 0x34, 0, 0, 0, 2, 0, 0, 0x27, 0x10, 7]);
    write(
        "cookie_verifier",
        "random-v6",
        &[&v6[..], &[0xAB; 32]].concat(),
    );
    let mut shared = vec![1u8, 0, 10, 0, 0, 1, 0x16, 0x34, 0, 0, 0, 0, 9];
    shared.extend_from_slice(b"a shared cookie secret, 32 bytes");
    shared.extend_from_slice(&[0; 32]);
    write("cookie_verifier", "shared-v4", &shared);
}
