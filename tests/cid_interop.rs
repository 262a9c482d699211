//! Connection IDs (RFC 9146) against an implementation nobody here wrote: Mbed TLS 3.6.5, built
//! by the test set-up (scripts/setup-mbedtls.sh) from the source in the `mbedtls-rs-sys` crate,
//! driven by a small peer program (tests/peers/mbedtls_peer.c; its options and output lines are
//! in tests/peers/README.md). Over real UDP on 127.0.0.1, in both roles, for PSK-AES128-CCM8,
//! PSK-AES128-GCM-SHA256 and ECDHE-ECDSA-AES128-GCM-SHA256, with the peer's own CID empty and
//! not; `tls12_cid` records counted on the wire by the peer; a NAT rebinding on either side with
//! no new handshake; and CIDs off on the peer's side working as before.
//!
//! A missing or unbuildable peer fails these tests: it is never a skip.

mod support;

#[path = "interop/peer.rs"]
#[allow(dead_code)]
mod peer;

use std::sync::Arc;
use std::time::Duration;

use openssl::nid::Nid;
use openssl_dtls::{DtlsClient, DtlsClientContext, DtlsServer, DtlsServerContext, PskCredentials};
use peer::{Peer, TempDir};
use support::nat::Nat;

const KEY: &[u8] = b"0123456789abcdef";
const IDENTITY: &str = "mbed-device";
const STEP: Duration = Duration::from_secs(15);

/// The suites of the issue, in OpenSSL's and Mbed TLS's names.
const SUITES: [(&str, &str); 3] = [
    ("PSK-AES128-CCM8", "TLS-PSK-WITH-AES-128-CCM-8"),
    ("PSK-AES128-GCM-SHA256", "TLS-PSK-WITH-AES-128-GCM-SHA256"),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256",
    ),
];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Credentials for one suite: our contexts' builders filled in, and the peer's arguments.
struct Creds {
    pki: Option<(support::Pki, TempDir, String, String, String)>,
}

impl Creds {
    fn new(ecdsa: bool) -> Creds {
        if !ecdsa {
            return Creds { pki: None };
        }
        let pki = support::Pki::new_ec();
        let dir = TempDir::new("cid-interop");
        let key = support::ec_key(Nid::X9_62_PRIME256V1);
        let leaf = pki.leaf("localhost", &key);
        let cert = dir.write("server.pem", &leaf.to_pem().unwrap());
        let key_pem = dir.write("server.key", &key.private_key_to_pem_pkcs8().unwrap());
        let ca = dir.write("ca.pem", &pki.ca_cert.to_pem().unwrap());
        Creds {
            pki: Some((pki, dir, cert, key_pem, ca)),
        }
    }

    fn peer_args(&self) -> Vec<String> {
        match &self.pki {
            None => vec![
                "--psk-identity".into(),
                IDENTITY.into(),
                "--psk-hex".into(),
                hex(KEY),
            ],
            Some((_, _, cert, key, ca)) => vec![
                "--cert".into(),
                cert.clone(),
                "--key".into(),
                key.clone(),
                "--ca".into(),
                ca.clone(),
            ],
        }
    }

    fn server(&self, cipher: &str, cid_len: u8) -> DtlsServerContext {
        let mut b = DtlsServerContext::builder();
        b.ciphers(cipher).connection_id(cid_len);
        match &self.pki {
            None => {
                b.psk_key_store(|id: &[u8]| (id == IDENTITY.as_bytes()).then(|| KEY.to_vec()));
            }
            Some((_, _, cert, key, _)) => {
                b.certificate_chain_file(cert).private_key_file(key);
            }
        }
        b.build().unwrap()
    }

    fn client(&self, cipher: &str, cid: Option<u8>) -> DtlsClientContext {
        let mut b = DtlsClientContext::builder();
        b.ciphers(cipher);
        if let Some(len) = cid {
            b.connection_id(len);
        }
        match &self.pki {
            None => {
                b.psk_credentials(PskCredentials::new(IDENTITY, KEY));
            }
            Some((pki, _, _, _, _)) => {
                b.root_certificates_pem(&pki.ca_cert.to_pem().unwrap());
            }
        }
        b.build().unwrap()
    }
}

/// An echo server of ours on 127.0.0.1.
fn echo_server(ctx: DtlsServerContext) -> Arc<DtlsServer> {
    let server = Arc::new(DtlsServer::bind("127.0.0.1:0", ctx).unwrap());
    let accept = Arc::clone(&server);
    std::thread::spawn(move || {
        while let Ok(conn) = accept.accept() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok(n) = conn.recv(&mut buf) {
                    if conn.send(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    server
}

/// The value after `key=` in the peer's line starting with `prefix`.
fn field(transcript: &str, prefix: &str, key: &str) -> Option<String> {
    let line = transcript.lines().find(|l| l.contains(prefix))?;
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    Some(line[start..].split_whitespace().next()?.to_owned())
}

fn count(transcript: &str, key: &str) -> u64 {
    field(transcript, "records:", key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in:\n{transcript}"))
}

fn mbed(args: &[String]) -> Peer {
    let bin = support::mbedtls::mbedtls_peer();
    Peer::spawn(
        bin.to_str().unwrap(),
        "(built by scripts/setup-mbedtls.sh)",
        args,
    )
}

/// The peer as a server on an ephemeral port: the process and its port.
fn mbed_server(args: &[String]) -> (Peer, u16) {
    let server = mbed(args);
    assert!(
        server.wait_for("listening on ", STEP),
        "{}",
        server.transcript()
    );
    let port = server
        .transcript()
        .lines()
        .find_map(|l| l.split("listening on ").nth(1))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in {}", server.transcript()));
    (server, port)
}

#[test]
fn mbedtls_clients_with_cids_against_our_server() {
    for (ours, theirs) in SUITES {
        let creds = Creds::new(ours.starts_with("ECDHE"));
        for own in ["0", "4"] {
            let server = echo_server(creds.server(ours, 8));
            let mut args = vec![
                "--role".into(),
                "client".into(),
                "--connect".into(),
                server.local_addr().to_string(),
                "--ciphersuite".into(),
                theirs.into(),
                "--cid".into(),
                own.into(),
                "--count".into(),
                "5".into(),
                "--interval-ms".into(),
                "20".into(),
                // The device's socket changes after two echoes: a new port, as after a NAT
                // rebinding on its side.
                "--rebind-after".into(),
                "2".into(),
            ];
            args.extend(creds.peer_args());
            let client = mbed(&args);
            client.expect_success(STEP);
            let t = client.transcript();
            assert_eq!(t.matches("echo: ").count(), 5, "{ours} own {own}:\n{t}");
            assert!(t.contains("rebound: "), "{t}");
            let cid_out = field(&t, "handshake completed:", "cid_out").unwrap();
            assert_eq!(
                cid_out.len(),
                16,
                "{ours}: the server's 8-byte CID in the client's records:\n{t}"
            );
            assert!(cid_out.starts_with("00"), "the default prefix: {t}");
            let cid_in = field(&t, "handshake completed:", "cid_in").unwrap();
            assert_eq!(cid_in == "-", own == "0", "{t}");
            // Type-25 records on the wire, in the directions that asked for them.
            assert!(count(&t, "sent_cid") >= 6, "{ours}: {t}");
            assert_eq!(
                count(&t, "sent_other_epoch1"),
                0,
                "{ours}: every epoch-1 record with a CID: {t}"
            );
            assert_eq!(
                count(&t, "recv_cid") > 0,
                own != "0",
                "{ours} own {own}: {t}"
            );
            let s = server.stats();
            assert_eq!(
                s.handshakes_completed, 1,
                "{ours}: no new handshake after the rebinding: {s}"
            );
            assert_eq!(s.cid_moves, 1, "{ours}: {s}");
            server.close();
        }
    }
}

#[test]
fn our_client_with_cids_against_mbedtls_servers_through_a_rebinding_nat() {
    for (ours, theirs) in SUITES {
        let creds = Creds::new(ours.starts_with("ECDHE"));
        for (server_cid, our_cid) in [("6", 0u8), ("0", 4), ("6", 4)] {
            let mut args = vec![
                "--role".into(),
                "server".into(),
                "--port".into(),
                "0".into(),
                "--ciphersuite".into(),
                theirs.into(),
                "--cid".into(),
                server_cid.into(),
            ];
            args.extend(creds.peer_args());
            let (server, port) = mbed_server(&args);
            let mut nat = Nat::start(format!("127.0.0.1:{port}").parse().unwrap());
            let client = DtlsClient::bind("127.0.0.1:0").unwrap();
            let ctx = creds.client(ours, Some(our_cid));
            let conn = if creds.pki.is_some() {
                client.connect_named(nat.inside(), "localhost", &ctx, STEP)
            } else {
                client.connect(nat.inside(), &ctx, STEP)
            }
            .unwrap_or_else(|e| panic!("{ours}: {e}\n{}", server.transcript()));
            let mut buf = [0u8; 256];
            // Only a server that asked for a CID can find us at a new address: with an empty
            // CID of its own, our records carry none (RFC 9146 §3), so no rebinding then.
            let rebinds = server_cid != "0";
            for round in 0..4u8 {
                if round == 2 && rebinds {
                    nat.rebind();
                }
                let msg = format!("message {round}");
                conn.send(msg.as_bytes()).unwrap();
                let n = conn
                    .recv_timeout(&mut buf, STEP)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{ours}: no echo of {msg}\n{}", server.transcript()));
                assert_eq!(&buf[..n], msg.as_bytes());
            }
            conn.close();
            assert!(server.wait_for("bye", STEP), "{}", server.transcript());
            let t = server.transcript();
            let nat_stats = nat.stats();
            assert_eq!(t.contains("address changed: "), rebinds, "{ours}: {t}");
            assert!(
                t.contains("handshakes: 1") && !t.contains("handshakes: 2"),
                "{t}"
            );
            assert_eq!(nat_stats.to_old_address, 0, "{nat_stats:?}");
            // The server asked for a CID (6 bytes) or not (0): our records carry it or none.
            assert_eq!(count(&t, "recv_cid") > 0, server_cid != "0", "{ours}: {t}");
            assert_eq!(count(&t, "sent_cid") > 0, our_cid > 0, "{ours}: {t}");
        }
    }
}

#[test]
fn cids_off_on_the_mbedtls_side_work_as_before() {
    let creds = Creds::new(false);
    let (ours, theirs) = SUITES[0];
    // Their client without the extension, our server with CIDs on.
    let server = echo_server(creds.server(ours, 8));
    let mut args = vec![
        "--role".into(),
        "client".into(),
        "--connect".into(),
        server.local_addr().to_string(),
        "--ciphersuite".into(),
        theirs.into(),
        "--cid".into(),
        "off".into(),
        "--count".into(),
        "3".into(),
    ];
    args.extend(creds.peer_args());
    let client = mbed(&args);
    client.expect_success(STEP);
    let t = client.transcript();
    assert_eq!(t.matches("echo: ").count(), 3, "{t}");
    assert_eq!(count(&t, "sent_cid") + count(&t, "recv_cid"), 0, "{t}");
    assert_eq!(server.stats().cid_connections, 0);
    // Their server without the extension, our client offering it.
    let mut args = vec![
        "--role".into(),
        "server".into(),
        "--port".into(),
        "0".into(),
        "--ciphersuite".into(),
        theirs.into(),
        "--cid".into(),
        "off".into(),
    ];
    args.extend(creds.peer_args());
    let (mserver, port) = mbed_server(&args);
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(
            format!("127.0.0.1:{port}").parse().unwrap(),
            &creds.client(ours, Some(0)),
            STEP,
        )
        .unwrap();
    conn.send(b"plain").unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(conn.recv_timeout(&mut buf, STEP).unwrap(), Some(5));
    conn.close();
    assert!(mserver.wait_for("bye", STEP), "{}", mserver.transcript());
    let t = mserver.transcript();
    assert_eq!(count(&t, "sent_cid") + count(&t, "recv_cid"), 0, "{t}");
}

#[test]
fn our_client_on_a_new_socket_keeps_its_connection_with_an_mbedtls_server() {
    let creds = Creds::new(false);
    let (ours, theirs) = SUITES[0];
    let mut args = vec![
        "--role".into(),
        "server".into(),
        "--port".into(),
        "0".into(),
        "--ciphersuite".into(),
        theirs.into(),
        "--cid".into(),
        "6".into(),
    ];
    args.extend(creds.peer_args());
    let (server, port) = mbed_server(&args);
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(
            format!("127.0.0.1:{port}").parse().unwrap(),
            &creds.client(ours, Some(0)),
            STEP,
        )
        .unwrap();
    let mut buf = [0u8; 64];
    for round in 0..4u8 {
        if round == 2 {
            client.rebind("127.0.0.1:0").unwrap();
        }
        conn.send(&[b'r', b'0' + round]).unwrap();
        let n = conn.recv_timeout(&mut buf, STEP).unwrap().expect("an echo");
        assert_eq!(&buf[..n], &[b'r', b'0' + round]);
    }
    conn.close();
    assert!(server.wait_for("bye", STEP), "{}", server.transcript());
    let t = server.transcript();
    assert!(
        t.contains("address changed: ") && t.contains("handshakes: 1"),
        "{t}"
    );
    assert!(!t.contains("handshakes: 2"), "{t}");
}
