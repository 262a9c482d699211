//! RFC 5705 exporters and DTLS-SRTP (RFC 5764) against OpenSSL's own tools, over real UDP on
//! 127.0.0.1, every process bounded in time (tests/interop/peer.rs); a missing `openssl` fails.
//!
//! - the example tools' `--export LABEL:LEN` line equals what `openssl s_client` /
//!   `s_server -keymatexport LABEL -keymatexportlen LEN` print (`Keying material: HEX`), our
//!   tool as server and as client;
//! - `--srtp`: the profile is negotiated against `-use_srtp`, and our SRTP keying material
//!   equals OpenSSL's export under `EXTRACTOR-dtls_srtp`;
//! - a compact client exports after its hand-off (the `SSL` freed) the values OpenSSL gives,
//!   with `keep_exporter_secret`, and refuses to without;
//! - RTP-looking datagrams (first byte 128–191) reach the application with
//!   `EndpointConfig::demux_rtp`, and are dropped and counted without it.
//!
//! Cargo builds the examples for a plain `cargo test`; `cargo test --test exporter` alone does
//! not (run `cargo build --examples` first).

#[allow(dead_code)]
#[path = "interop/peer.rs"]
mod peer;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use openssl_dtls::endpoint::{Endpoint, Event};
use openssl_dtls::{
    DtlsClient, DtlsClientContext, DtlsServerContext, EndpointConfig, PskCredentials,
};

const KEY_HEX: &str = "73656372657450534b";
const IDENTITY: &str = "Client_identity";
const WAIT: Duration = Duration::from_secs(20);

/// The path of example `name`, beside this test's `target/<profile>/deps/`.
fn example(name: &str) -> String {
    let exe = std::env::current_exe().expect("the test's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let path: PathBuf = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples` first",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

fn require_openssl() {
    peer::require("openssl", &["version"], "openssl");
}

/// The hex after `prefix` on the first line of `peer`'s output that has it, lower case.
fn value_after(peer: &peer::Peer, prefix: &str) -> String {
    let transcript = peer.transcript();
    transcript
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_else(|| panic!("no {prefix:?} line:\n{transcript}"))
}

/// Waits until `peer` printed `needle`, else fails with its transcript.
fn expect(peer: &peer::Peer, needle: &str) {
    assert!(
        peer.wait_for(needle, WAIT),
        "no {needle:?}:\n{}",
        peer.transcript()
    );
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// `psk_server` with `extra` against `openssl s_client` with `client_extra`: both transcripts.
fn our_server_with_s_client(extra: &[&str], client_extra: &[&str]) -> (peer::Peer, peer::Peer) {
    require_openssl();
    let (server, port) =
        peer::spawn_server(&example("psk_server"), "-", "listening on", WAIT, |port| {
            let mut args = strings(&["--listen", &format!("127.0.0.1:{port}")]);
            args.extend(strings(extra));
            args
        });
    let mut args = strings(&[
        "s_client",
        "-dtls1_2",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-psk",
        KEY_HEX,
        "-psk_identity",
        IDENTITY,
        "-cipher",
        "PSK-AES128-CCM8",
    ]);
    args.extend(strings(client_extra));
    let client = peer::Peer::spawn("openssl", "openssl", &args);
    expect(&client, "Keying material:");
    expect(&server, "handshake completed");
    (server, client)
}

/// `psk_client` with `extra` against `openssl s_server` with `server_extra`.
fn our_client_with_s_server(extra: &[&str], server_extra: &[&str]) -> (peer::Peer, peer::Peer) {
    require_openssl();
    let (server, port) = peer::spawn_server("openssl", "openssl", "ACCEPT", WAIT, |port| {
        let mut args = strings(&[
            "s_server",
            "-dtls1_2",
            "-listen",
            "-naccept",
            "1",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-nocert",
            "-psk",
            KEY_HEX,
            "-cipher",
            "PSK-AES128-CCM8",
        ]);
        args.extend(strings(server_extra));
        args
    });
    let mut args = strings(&[
        "--connect",
        &format!("127.0.0.1:{port}"),
        "--message",
        "hello",
        "--cipher",
        "PSK-AES128-CCM8",
    ]);
    args.extend(strings(extra));
    let client = peer::Peer::spawn(&example("psk_client"), "-", &args);
    expect(&server, "Keying material:");
    (server, client)
}

#[test]
fn exporter_lines_equal_openssls_both_roles() {
    for compact in [false, true] {
        let mut extra = vec!["--export", "EXPERIMENTAL-parity:32"];
        if compact {
            extra.push("--compact");
        }
        let (server, client) = our_server_with_s_client(
            &extra,
            &[
                "-keymatexport",
                "EXPERIMENTAL-parity",
                "-keymatexportlen",
                "32",
            ],
        );
        expect(&server, "exporter: ");
        let ours = value_after(&server, "exporter: ");
        assert_eq!(ours.len(), 64, "32 bytes");
        assert_eq!(
            ours,
            value_after(&client, "Keying material:"),
            "compact={compact}"
        );
    }
    let (server, client) = our_client_with_s_server(
        &["--export", "EXPERIMENTAL-parity:32"],
        &[
            "-keymatexport",
            "EXPERIMENTAL-parity",
            "-keymatexportlen",
            "32",
        ],
    );
    expect(&client, "exporter: ");
    assert_eq!(
        value_after(&client, "exporter: "),
        value_after(&server, "Keying material:")
    );
}

#[test]
fn srtp_profile_and_keying_material_equal_openssls_both_roles() {
    for (profile, len) in [
        ("SRTP_AES128_CM_SHA1_80", "60"),
        ("SRTP_AEAD_AES_128_GCM", "56"),
    ] {
        let srtp_export = format!("EXTRACTOR-dtls_srtp:{len}");
        // Ours as server, accepting two profiles; s_client offers one.
        let (server, client) = our_server_with_s_client(
            &[
                "--srtp",
                "SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80",
                "--export",
                &srtp_export,
                "--compact",
            ],
            &[
                "-use_srtp",
                profile,
                "-keymatexport",
                "EXTRACTOR-dtls_srtp",
                "-keymatexportlen",
                len,
            ],
        );
        expect(
            &client,
            &format!("SRTP Extension negotiated, profile={profile}"),
        );
        expect(&server, "srtp: ");
        let line = value_after(&server, "srtp: ");
        let (name, hex) = line.split_once(' ').expect("srtp: PROFILE HEX");
        assert_eq!(name, profile.to_ascii_lowercase());
        assert_eq!(hex, value_after(&client, "Keying material:"));
        assert_eq!(hex, value_after(&server, "exporter: "));
        // Ours as client, offering it; s_server accepts it.
        let (server, client) = our_client_with_s_server(
            &["--srtp", profile, "--export", &srtp_export],
            &[
                "-use_srtp",
                profile,
                "-keymatexport",
                "EXTRACTOR-dtls_srtp",
                "-keymatexportlen",
                len,
            ],
        );
        expect(&client, "srtp: ");
        expect(
            &server,
            &format!("SRTP Extension negotiated, profile={profile}"),
        );
        let line = value_after(&client, "srtp: ");
        let (name, hex) = line.split_once(' ').expect("srtp: PROFILE HEX");
        assert_eq!(name, profile.to_ascii_lowercase());
        assert_eq!(hex, value_after(&server, "Keying material:"));
    }
}

#[test]
fn a_compact_client_exports_after_its_hand_off_only_with_the_secret_kept() {
    require_openssl();
    for keep in [true, false] {
        let (server, port) = peer::spawn_server("openssl", "openssl", "ACCEPT", WAIT, |port| {
            strings(&[
                "s_server",
                "-dtls1_2",
                "-listen",
                "-naccept",
                "1",
                "-accept",
                &format!("127.0.0.1:{port}"),
                "-nocert",
                "-psk",
                KEY_HEX,
                "-cipher",
                "PSK-AES128-CCM8",
                "-keymatexport",
                "EXPERIMENTAL-compact",
                "-keymatexportlen",
                "32",
            ])
        });
        let ctx = DtlsClientContext::builder()
            .psk_credentials(PskCredentials::new(IDENTITY, b"secretPSK".to_vec()))
            .compact_connections(true)
            .keep_exporter_secret(keep)
            .build()
            .unwrap();
        let client = DtlsClient::bind("127.0.0.1:0").unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let conn = client.connect(addr, &ctx, WAIT).unwrap();
        // A client that received the server's final flight hands off at once: the SSL is gone.
        expect(&server, "Keying material:");
        let mut out = [0u8; 32];
        let exported = conn.export_keying_material("EXPERIMENTAL-compact", None, &mut out);
        if keep {
            exported.unwrap();
            let ours: String = out.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(ours, value_after(&server, "Keying material:"));
            // A reserved label is refused, as OpenSSL refuses it.
            assert!(conn
                .export_keying_material("key expansion", None, &mut out)
                .is_err());
        } else {
            assert!(exported.is_err(), "exported without the secret");
        }
        conn.close();
    }
}

/// A handshake between a server endpoint and a client endpoint over two UDP sockets on
/// loopback, pumped from this thread until `done` or the deadline.
fn pump(
    server: &mut Endpoint,
    server_sock: &UdpSocket,
    client: &mut Endpoint,
    client_sock: &UdpSocket,
    mut done: impl FnMut(&mut Endpoint, &mut Endpoint) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 2048];
    while !done(server, client) {
        assert!(Instant::now() < deadline, "timed out: {:?}", server.stats());
        for (ep, sock) in [(&mut *server, server_sock), (&mut *client, client_sock)] {
            while let Some((to, n)) = ep.poll_transmit(&mut buf) {
                sock.send_to(&buf[..n], to).unwrap();
            }
        }
        for (ep, sock) in [(&mut *server, server_sock), (&mut *client, client_sock)] {
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                ep.handle_datagram(Instant::now(), from, &buf[..n]);
            }
            ep.handle_timeout(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn rtp_datagrams_reach_the_application_with_demux_and_are_counted_without() {
    for demux in [true, false] {
        let server_ctx = DtlsServerContext::builder()
            .psk_key_store(|id| (id == IDENTITY.as_bytes()).then(|| b"secretPSK".to_vec()))
            .srtp_profiles("SRTP_AES128_CM_SHA1_80")
            .build()
            .unwrap();
        let client_ctx = DtlsClientContext::builder()
            .psk_credentials(PskCredentials::new(IDENTITY, b"secretPSK".to_vec()))
            .srtp_profiles("SRTP_AES128_CM_SHA1_80")
            .build()
            .unwrap();
        let mut config = EndpointConfig::default();
        config.demux_rtp = demux;
        let mut server = Endpoint::server(server_ctx, config).unwrap();
        let mut client = Endpoint::client(EndpointConfig::default()).unwrap();
        let server_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        server_sock.set_nonblocking(true).unwrap();
        client_sock.set_nonblocking(true).unwrap();
        let server_addr = server_sock.local_addr().unwrap();
        let id = client
            .connect(Instant::now(), server_addr, &client_ctx, None)
            .unwrap();
        let mut connected = None;
        pump(
            &mut server,
            &server_sock,
            &mut client,
            &client_sock,
            |s, _| {
                while let Some(e) = s.poll_event() {
                    if let Event::Connected { peer, id } = e {
                        connected = Some((peer, id));
                    }
                }
                connected.is_some()
            },
        );
        // The client too (it may still wait for the server's final flight).
        pump(
            &mut server,
            &server_sock,
            &mut client,
            &client_sock,
            |_, c| {
                c.session(server_addr, id)
                    .is_some_and(|s| s.is_established())
            },
        );
        let (peer, server_id) = connected.unwrap();
        // Both sides agree on the profile and the keying material.
        let ours = server.session(peer, server_id).unwrap();
        let theirs = client.session(server_addr, id).unwrap();
        assert_eq!(
            ours.selected_srtp_profile(),
            Some(openssl_dtls::SrtpProfile::Aes128CmSha1_80)
        );
        let (a, b) = (
            ours.srtp_keying_material().unwrap().unwrap(),
            theirs.srtp_keying_material().unwrap().unwrap(),
        );
        assert_eq!(a.as_bytes(), b.as_bytes());
        assert_eq!(a.as_bytes().len(), 60);
        // RTP (version 2: first byte 0x80) and RTCP (0x81, type 200) from the client's address.
        let rtp = [
            0x80u8, 0x60, 0, 1, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3,
        ];
        let rtcp = [0x81u8, 200, 0, 1, 0xde, 0xad, 0xbe, 0xef];
        client_sock.send_to(&rtp, server_addr).unwrap();
        client_sock.send_to(&rtcp, server_addr).unwrap();
        let mut readable = false;
        let mut seen = 0;
        pump(
            &mut server,
            &server_sock,
            &mut client,
            &client_sock,
            |s, _| {
                while let Some(e) = s.poll_event() {
                    readable |= matches!(e, Event::NonDtlsReadable { .. });
                }
                seen = s.stats().non_dtls_received + s.stats().dropped_non_dtls;
                seen == 2
            },
        );
        let stats = server.stats();
        let mut buf = [0u8; 64];
        if demux {
            assert!(readable);
            assert_eq!(stats.non_dtls_received, 2);
            assert_eq!(stats.dropped_non_dtls, 0);
            let (from, conn, n) = server.recv_non_dtls(&mut buf).unwrap();
            assert_eq!((from, conn, &buf[..n]), (peer, server_id, &rtp[..]));
            let (_, _, n) = server.recv_non_dtls(&mut buf).unwrap();
            assert_eq!(&buf[..n], &rtcp[..]);
        } else {
            assert!(!readable);
            assert_eq!(stats.non_dtls_received, 0);
            assert_eq!(stats.dropped_non_dtls, 2);
        }
        assert!(server.recv_non_dtls(&mut buf).is_none());
        // The connection is unharmed: application data still flows.
        client.send(server_addr, id, b"after rtp").unwrap();
        let mut got = 0;
        pump(
            &mut server,
            &server_sock,
            &mut client,
            &client_sock,
            |s, _| {
                while let Some(_e) = s.poll_event() {}
                if let Ok(Some(n)) = s.recv(peer, server_id, &mut buf) {
                    got = n;
                }
                got > 0
            },
        );
        assert_eq!(&buf[..got], b"after rtp");
    }
}

#[test]
fn srtp_media_shares_the_dtls_connections_socket_through_the_drivers() {
    use openssl_dtls::{
        DtlsClient, DtlsClientContext, DtlsServer, DtlsServerContext, EndpointConfig,
        PskCredentials, SocketOptions,
    };
    use std::time::Duration;
    let key = b"0123456789abcdef".to_vec();
    let server_ctx = DtlsServerContext::builder()
        .psk_key_store(move |_: &[u8]| Some(key.clone()))
        .srtp_profiles("SRTP_AES128_CM_SHA1_80")
        .build()
        .unwrap();
    let mut config = EndpointConfig::default();
    config.demux_rtp = true;
    let server = DtlsServer::bind_with(
        "127.0.0.1:0",
        server_ctx,
        config.clone(),
        SocketOptions::default(),
    )
    .unwrap();
    let client_ctx = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(
            b"media".to_vec(),
            b"0123456789abcdef".to_vec(),
        ))
        .srtp_profiles("SRTP_AES128_CM_SHA1_80")
        .build()
        .unwrap();
    let client = DtlsClient::bind_with("127.0.0.1:0", config, SocketOptions::default()).unwrap();
    let step = Duration::from_secs(10);
    let conn = client
        .connect(server.local_addr(), &client_ctx, step)
        .unwrap();
    let accepted = server.accept().unwrap();
    let (ours, theirs) = (
        conn.srtp_keying_material().unwrap().unwrap(),
        accepted.srtp_keying_material().unwrap().unwrap(),
    );
    assert_eq!(
        ours.as_bytes(),
        theirs.as_bytes(),
        "both sides derive the same SRTP keys"
    );
    // An RTP packet (version 2: first byte 0x80) each way on the DTLS connection's 5-tuple.
    let rtp = [
        0x80, 0x60, 0, 1, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3,
    ];
    conn.send_non_dtls(&rtp).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        accepted.recv_non_dtls_timeout(&mut buf, step).unwrap(),
        Some(rtp.len())
    );
    assert_eq!(&buf[..rtp.len()], &rtp);
    let rtcp = [0x81, 0xc8, 0, 6, 9, 9, 9, 9];
    accepted.send_non_dtls(&rtcp).unwrap();
    assert_eq!(
        conn.recv_non_dtls_timeout(&mut buf, step).unwrap(),
        Some(rtcp.len())
    );
    assert_eq!(&buf[..rtcp.len()], &rtcp);
    // DTLS records still flow, and nothing else is sent as media.
    conn.send(b"dtls").unwrap();
    assert_eq!(accepted.recv_timeout(&mut buf, step).unwrap(), Some(4));
    assert!(
        conn.send_non_dtls(&[0x16, 0xfe, 0xfd]).is_err(),
        "a DTLS-looking datagram is refused"
    );
    assert_eq!(
        conn.recv_non_dtls_timeout(&mut buf, Duration::from_millis(50))
            .unwrap(),
        None
    );
    assert_eq!(server.stats().non_dtls_received, 1);
    // After the connection ends, waiting for media ends too.
    conn.close();
    assert!(accepted.recv_timeout(&mut buf, step).is_ok());
    assert!(accepted.recv_non_dtls_timeout(&mut buf, step).is_err());
}
