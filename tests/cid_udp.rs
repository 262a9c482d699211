//! Connection IDs over real UDP on 127.0.0.1 (RFC 9146): a device behind a NAT whose mapping
//! expires between messages keeps its connection, with no new handshake, and the old address
//! gets nothing more; OpenSSL's `s_client` and `s_server`, which know nothing of CIDs, work
//! against CID-enabled contexts exactly as before.

mod support;

use support::cid::{client_ctx, server_ctx, KEY};

#[path = "interop/peer.rs"]
#[allow(dead_code)]
mod peer;

use std::sync::Arc;
use std::time::Duration;

use openssl_dtls::{DtlsClient, DtlsServer, DtlsServerContext};
use support::nat::Nat;

const STEP: Duration = Duration::from_secs(10);

/// An echo server on 127.0.0.1 for one connection at a time.
fn echo_server(ctx: DtlsServerContext) -> (Arc<DtlsServer>, std::thread::JoinHandle<()>) {
    let server = Arc::new(DtlsServer::bind("127.0.0.1:0", ctx).unwrap());
    let accept = Arc::clone(&server);
    let t = std::thread::spawn(move || {
        while let Ok(conn) = accept.accept() {
            let mut buf = [0u8; 2048];
            while let Ok(n) = conn.recv(&mut buf) {
                if conn.send(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    (server, t)
}

#[test]
fn a_device_whose_nat_mapping_expires_keeps_its_connection() {
    let _ = env_logger::builder().is_test(true).try_init();
    for (cipher, own) in [
        ("PSK-AES128-CCM8", 0),
        ("PSK-AES128-GCM-SHA256", 0),
        ("PSK-AES128-CCM8", 4),
    ] {
        let (server, _t) = echo_server(server_ctx(8, cipher));
        let mut nat = Nat::start(server.local_addr());
        let client = DtlsClient::bind("127.0.0.1:0").unwrap();
        let conn = client
            .connect(nat.inside(), &client_ctx(Some(own), cipher), STEP)
            .unwrap();
        let mut buf = [0u8; 100];
        for round in 0..4u8 {
            if round >= 2 {
                // The device slept; its mapping expired: a new outside port each time.
                nat.rebind();
            }
            let msg = [b'm', round];
            conn.send(&msg).unwrap();
            let n = conn.recv_timeout(&mut buf, STEP).unwrap().expect("an echo");
            assert_eq!(&buf[..n], &msg, "{cipher}: round {round}");
        }
        let nat_stats = nat.stats();
        let s = server.stats();
        assert_eq!(s.handshakes_completed, 1, "{cipher}: no new handshake: {s}");
        assert_eq!(s.cid_moves, 2, "{cipher}: {s}");
        assert_eq!(s.connections, 1);
        assert!(nat_stats.client_hellos <= 2, "{nat_stats:?}");
        assert_eq!(
            nat_stats.to_old_address, 0,
            "{cipher}: the old address got {nat_stats:?}"
        );
        assert!(nat_stats.cid_records_to_server >= 4, "{nat_stats:?}");
        assert_eq!(
            nat_stats.cid_records_to_device > 0,
            own > 0,
            "{cipher}: CID records to the device only if it asked for a CID: {nat_stats:?}"
        );
        assert_eq!(client.stats().handshakes_completed, 1);
        server.close();
    }
}

#[test]
fn without_cids_a_rebound_device_is_a_stranger() {
    // The control: the same NAT with CIDs off. The server cannot know the new address: the
    // device's records from there are dropped (not a ClientHello from an unknown peer).
    let (server, _t) = echo_server(server_ctx(0, "PSK-AES128-CCM8"));
    let mut nat = Nat::start(server.local_addr());
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(nat.inside(), &client_ctx(Some(0), "PSK-AES128-CCM8"), STEP)
        .unwrap();
    let mut buf = [0u8; 100];
    conn.send(b"one").unwrap();
    assert!(conn.recv_timeout(&mut buf, STEP).unwrap().is_some());
    nat.rebind();
    conn.send(b"two").unwrap();
    assert_eq!(
        conn.recv_timeout(&mut buf, Duration::from_millis(500))
            .unwrap(),
        None
    );
    let s = server.stats();
    assert_eq!(s.cid_moves, 0);
    assert!(
        s.dropped(openssl_dtls::DropReason::NotClientHello) >= 1,
        "{s}"
    );
}

#[test]
fn openssl_s_client_and_s_server_work_against_cid_enabled_contexts() {
    peer::require("openssl", &["version"], "openssl");
    // s_client (no CID) against our server with CIDs on.
    let (server, _t) = echo_server(server_ctx(8, "PSK-AES128-CCM8"));
    let port = server.local_addr().port();
    let mut c = peer::Peer::spawn(
        "openssl",
        "openssl",
        &[
            "s_client".into(),
            "-dtls1_2".into(),
            "-connect".into(),
            format!("127.0.0.1:{port}"),
            "-psk_identity".into(),
            "device".into(),
            "-psk".into(),
            hex(KEY),
            "-cipher".into(),
            "PSK-AES128-CCM8".into(),
            "-quiet".into(),
        ],
    );
    c.send_line("hello from s_client");
    assert!(
        c.wait_for("hello from s_client", STEP),
        "{}",
        c.transcript()
    );
    c.close_stdin();
    assert_eq!(server.stats().cid_connections, 0);
    assert_eq!(server.stats().handshakes_completed, 1);
    // Our client offering CIDs against s_server (which ignores the extension).
    let (s, port) = peer::spawn_server("openssl", "openssl", "ACCEPT", STEP, |port| {
        vec![
            "s_server".into(),
            "-dtls1_2".into(),
            "-listen".into(),
            "-naccept".into(),
            "1".into(),
            "-accept".into(),
            format!("127.0.0.1:{port}"),
            "-nocert".into(),
            "-psk".into(),
            hex(KEY),
            "-cipher".into(),
            "PSK-AES128-CCM8".into(),
        ]
    });
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(
            format!("127.0.0.1:{port}").parse().unwrap(),
            &client_ctx(Some(0), "PSK-AES128-CCM8"),
            STEP,
        )
        .unwrap();
    conn.send(b"hello s_server\n").unwrap();
    assert!(s.wait_for("hello s_server", STEP), "{}", s.transcript());
    conn.close();
    assert!(s.wait_for("DONE", STEP), "{}", s.transcript());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn our_client_moving_to_a_new_socket_keeps_its_cid_connection() {
    let (server, _t) = echo_server(server_ctx(8, "PSK-AES128-CCM8"));
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(
            server.local_addr(),
            &client_ctx(Some(0), "PSK-AES128-CCM8"),
            STEP,
        )
        .unwrap();
    let mut buf = [0u8; 100];
    conn.send(b"before").unwrap();
    assert_eq!(conn.recv_timeout(&mut buf, STEP).unwrap(), Some(6));
    let old = client.local_addr();
    let new = client.rebind("127.0.0.1:0").unwrap();
    assert_ne!(old, new);
    assert_eq!((client.local_addr(), conn.local_addr()), (new, new));
    for msg in [&b"after one"[..], b"after two"] {
        conn.send(msg).unwrap();
        let n = conn.recv_timeout(&mut buf, STEP).unwrap().expect("an echo");
        assert_eq!(&buf[..n], msg);
    }
    let s = server.stats();
    assert_eq!((s.handshakes_completed, s.cid_moves), (1, 1), "{s}");
    // The same without CIDs: the server does not know the new address.
    let (server, _t) = echo_server(server_ctx(0, "PSK-AES128-CCM8"));
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(
            server.local_addr(),
            &client_ctx(Some(0), "PSK-AES128-CCM8"),
            STEP,
        )
        .unwrap();
    conn.send(b"before").unwrap();
    assert_eq!(conn.recv_timeout(&mut buf, STEP).unwrap(), Some(6));
    client.rebind("127.0.0.1:0").unwrap();
    conn.send(b"after").unwrap();
    assert_eq!(
        conn.recv_timeout(&mut buf, Duration::from_millis(500))
            .unwrap(),
        None
    );
}
