//! Secure and unsurprising defaults (issue 19): a certificate client checks whose certificate it
//! is (a name, or the peer's IP address) unless it opts out loudly; a failed verification says
//! why, where and for whom; errors name the address, the peer and the phase; RFC 7925's
//! certificate suite is in the default preset; `connect` to a connected peer returns that
//! connection. Over real UDP on loopback, each test bounded by its timeouts.

mod support;

use std::error::Error as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use openssl_dtls::{
    Alert, ClientAuth, ConfigError, DtlsClient, DtlsClientContext, DtlsClientContextBuilder,
    DtlsServer, DtlsServerContext, Error, PskCredentials, TimeoutPhase, VerifyReason,
};
use support::{ec_key, handshake, issue, Link, Spec};

const CONNECT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// certificates

/// A test CA.
struct Ca {
    cert: X509,
    key: PKey<Private>,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let key = ec_key(Nid::X9_62_PRIME256V1);
        let mut spec = Spec::leaf(cn);
        spec.ca = true;
        Ca {
            cert: issue(&spec, &key, None),
            key,
        }
    }

    /// A certificate chain (PEM, leaf first) and its key (PEM) for `spec`, signed by this CA
    /// through `intermediates` (specs of CA certificates, outermost last).
    fn chain(&self, spec: &Spec<'_>, intermediates: &[Spec<'_>]) -> (Vec<u8>, Vec<u8>) {
        let mut issuer = (self.cert.clone(), self.key.clone());
        let mut chain = Vec::new();
        for i in intermediates.iter().rev() {
            let key = ec_key(Nid::X9_62_PRIME256V1);
            let cert = issue(i, &key, Some((&issuer.0, &issuer.1)));
            chain.push(cert.clone());
            issuer = (cert, key);
        }
        let key = ec_key(Nid::X9_62_PRIME256V1);
        let leaf = issue(spec, &key, Some((&issuer.0, &issuer.1)));
        let mut pem = leaf.to_pem().unwrap();
        for cert in chain.iter().rev() {
            pem.extend(cert.to_pem().unwrap());
        }
        (pem, key.private_key_to_pem_pkcs8().unwrap())
    }

    fn client(&self) -> DtlsClientContextBuilder {
        let mut b = DtlsClientContext::builder();
        b.root_certificates_pem(&self.cert.to_pem().unwrap());
        b
    }
}

/// A certificate server on `bind` (e.g. `"127.0.0.1:0"`) with `chain` and `key`.
fn server(bind: &str, (chain, key): &(Vec<u8>, Vec<u8>)) -> DtlsServer {
    let ctx = DtlsServerContext::builder()
        .certificate_chain_pem(chain)
        .private_key_pem(key)
        .build()
        .unwrap();
    DtlsServer::bind(bind, ctx).unwrap()
}

/// Connects a fresh client on `bind` to `server` with `ctx` and `name`.
fn connect(
    bind: &str,
    server: &DtlsServer,
    ctx: &DtlsClientContext,
    name: Option<&str>,
) -> openssl_dtls::Result<openssl_dtls::DtlsConnection> {
    let client = DtlsClient::bind(bind).unwrap();
    match name {
        Some(name) => client.connect_named(server.local_addr(), name, ctx, CONNECT),
        None => client.connect(server.local_addr(), ctx, CONNECT),
    }
}

/// The verification failure in `result`, or a panic naming what came instead.
fn failure<T>(result: openssl_dtls::Result<T>) -> openssl_dtls::VerifyFailure {
    match result {
        Err(Error::Verification(f)) => f,
        Err(other) => panic!("expected a verification failure, got {other:?} ({other})"),
        Ok(_) => panic!("expected a verification failure, the handshake succeeded"),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. the server's identity is checked by default

#[test]
fn connect_without_a_name_refuses_a_certificate_that_does_not_name_the_ip_address() {
    let ca = Ca::new("name-check CA");
    let mut spec = Spec::leaf("other.example");
    spec.dns = &["other.example"];
    let server = server("127.0.0.1:0", &ca.chain(&spec, &[]));
    let ctx = ca.client().build().unwrap();
    let f = failure(connect("127.0.0.1:0", &server, &ctx, None));
    assert_eq!(f.reason, VerifyReason::IpMismatch, "{f}");
    assert_eq!(f.code, openssl_sys::X509_V_ERR_IP_ADDRESS_MISMATCH);
    assert_eq!(f.depth, 0);
    assert_eq!(f.subject.as_deref(), Some("CN=other.example"));
    let text = f.to_string();
    assert!(text.contains("not for this IP address"), "{text}");
}

#[test]
fn connect_without_a_name_accepts_a_certificate_for_the_ip_address() {
    let ca = Ca::new("name-check CA");
    let mut spec = Spec::leaf("device");
    spec.ips = &["127.0.0.1"];
    let server = server("127.0.0.1:0", &ca.chain(&spec, &[]));
    let ctx = ca.client().build().unwrap();
    let conn = connect("127.0.0.1:0", &server, &ctx, None).unwrap();
    assert!(conn.peer_certificate().is_some());
}

#[test]
fn connect_over_ipv6_checks_the_ipv6_address() {
    let ca = Ca::new("name-check CA");
    let mut good = Spec::leaf("v6 device");
    good.ips = &["::1"];
    let server_good = server("[::1]:0", &ca.chain(&good, &[]));
    let ctx = ca.client().build().unwrap();
    connect("[::1]:0", &server_good, &ctx, None).unwrap();

    let mut bad = Spec::leaf("elsewhere");
    bad.ips = &["2001:db8::1", "127.0.0.1"];
    let server_bad = server("[::1]:0", &ca.chain(&bad, &[]));
    let f = failure(connect("[::1]:0", &server_bad, &ctx, None));
    assert_eq!(f.reason, VerifyReason::IpMismatch, "{f}");
}

#[test]
fn a_name_given_is_checked_and_the_ip_address_is_not() {
    let ca = Ca::new("name-check CA");
    let mut spec = Spec::leaf("good.example");
    spec.dns = &["good.example"];
    let server = server("127.0.0.1:0", &ca.chain(&spec, &[]));
    let ctx = ca.client().build().unwrap();
    let conn = connect("127.0.0.1:0", &server, &ctx, Some("good.example")).unwrap();
    assert_eq!(conn.server_name(), Some("good.example"));
    let f = failure(connect("127.0.0.1:0", &server, &ctx, Some("bad.example")));
    assert_eq!(f.reason, VerifyReason::HostnameMismatch, "{f}");
    assert_eq!(f.depth, 0);
    assert_eq!(f.subject.as_deref(), Some("CN=good.example"));
}

#[test]
fn the_loud_opt_out_accepts_any_name_the_trusted_root_issued() {
    let ca = Ca::new("name-check CA");
    let mut spec = Spec::leaf("other.example");
    spec.dns = &["other.example"];
    let server = server("127.0.0.1:0", &ca.chain(&spec, &[]));
    let ctx = ca.client().danger_skip_server_name_check().build().unwrap();
    assert!(!ctx.checks_server_identity());
    connect("127.0.0.1:0", &server, &ctx, None).unwrap();
    // The chain is still verified: another CA's certificate is refused.
    let stranger = Ca::new("stranger CA");
    let server2 = crate::server("127.0.0.1:0", &stranger.chain(&spec, &[]));
    let f = failure(connect("127.0.0.1:0", &server2, &ctx, None));
    assert_eq!(f.reason, VerifyReason::UnknownIssuer, "{f}");
}

#[test]
fn a_sans_io_session_without_name_or_address_fails_clearly_instead_of_skipping_the_check() {
    let ca = Ca::new("name-check CA");
    let now = Instant::now();
    let ctx = ca.client().build().unwrap();
    assert!(ctx.checks_server_identity());
    let err = ctx.new_session(None, now).unwrap_err();
    assert!(
        matches!(err, Error::Config(ConfigError::NoServerIdentity)),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("danger_skip_server_name_check"),
        "{err}"
    );
    // With the peer's address, or a name, it works.
    let peer: SocketAddr = "127.0.0.1:5684".parse().unwrap();
    let s = ctx.new_session_to(peer, None, now).unwrap();
    assert_eq!(s.peer_addr(), Some(peer));
    ctx.new_session(Some("device.example"), now).unwrap();
    // PSK-only contexts, the opt-out and disabled verification are unaffected.
    let psk = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(&b"id"[..], &b"key"[..]))
        .build()
        .unwrap();
    assert!(!psk.checks_server_identity());
    psk.new_session(None, now).unwrap();
    let skip = ca.client().danger_skip_server_name_check().build().unwrap();
    skip.new_session(None, now).unwrap();
    let off = DtlsClientContext::builder()
        .danger_disable_verification()
        .build()
        .unwrap();
    off.new_session(None, now).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 2. typed verification errors

#[test]
fn an_expired_certificate_reports_expired_with_its_depth_and_subject() {
    let ca = Ca::new("validity CA");
    let mut spec = Spec::leaf("expired.example");
    spec.dns = &["expired.example"];
    spec.from = -30;
    spec.until = -1;
    let server = server("127.0.0.1:0", &ca.chain(&spec, &[]));
    let ctx = ca.client().build().unwrap();
    let f = failure(connect(
        "127.0.0.1:0",
        &server,
        &ctx,
        Some("expired.example"),
    ));
    assert_eq!(f.reason, VerifyReason::Expired, "{f}");
    assert_eq!(f.code, openssl_sys::X509_V_ERR_CERT_HAS_EXPIRED);
    assert_eq!(
        (f.depth, f.subject.as_deref()),
        (0, Some("CN=expired.example"))
    );
    assert_eq!(f.alert.description, 45, "certificate_expired sent");
}

#[test]
fn a_certificate_not_yet_valid_reports_not_yet_valid() {
    let ca = Ca::new("validity CA");
    let mut spec = Spec::leaf("future.example");
    spec.dns = &["future.example"];
    spec.from = 2;
    spec.until = 30;
    let server = server("127.0.0.1:0", &ca.chain(&spec, &[]));
    let ctx = ca.client().build().unwrap();
    let f = failure(connect(
        "127.0.0.1:0",
        &server,
        &ctx,
        Some("future.example"),
    ));
    assert_eq!(f.reason, VerifyReason::NotYetValid, "{f}");
    assert_eq!(
        (f.depth, f.subject.as_deref()),
        (0, Some("CN=future.example"))
    );
}

#[test]
fn an_expired_intermediate_is_reported_at_depth_one() {
    let ca = Ca::new("validity CA");
    let mut spec = Spec::leaf("leaf.example");
    spec.dns = &["leaf.example"];
    let mut intermediate = Spec::leaf("old intermediate");
    intermediate.ca = true;
    intermediate.from = -60;
    intermediate.until = -2;
    let server = server("127.0.0.1:0", &ca.chain(&spec, &[intermediate]));
    let ctx = ca.client().build().unwrap();
    let f = failure(connect("127.0.0.1:0", &server, &ctx, Some("leaf.example")));
    assert_eq!(f.reason, VerifyReason::Expired, "{f}");
    assert_eq!(
        (f.depth, f.subject.as_deref()),
        (1, Some("CN=old intermediate"))
    );
}

#[test]
fn an_unknown_ca_reports_unknown_issuer() {
    let ca = Ca::new("trusted CA");
    let stranger = Ca::new("stranger CA");
    let mut spec = Spec::leaf("device.example");
    spec.dns = &["device.example"];
    let server = server("127.0.0.1:0", &stranger.chain(&spec, &[]));
    let ctx = ca.client().build().unwrap();
    let f = failure(connect(
        "127.0.0.1:0",
        &server,
        &ctx,
        Some("device.example"),
    ));
    assert_eq!(f.reason, VerifyReason::UnknownIssuer, "{f}");
    assert_eq!(
        (f.depth, f.subject.as_deref()),
        (0, Some("CN=device.example"))
    );
    assert_eq!(f.alert.description, Alert::UNKNOWN_CA);
}

#[test]
fn a_verification_error_displays_its_reason_once_and_keeps_openssl_as_source() {
    let ca = Ca::new("display CA");
    let mut spec = Spec::leaf("good.example");
    spec.dns = &["good.example"];
    let server = server("127.0.0.1:0", &ca.chain(&spec, &[]));
    let ctx = ca.client().build().unwrap();
    let err = connect("127.0.0.1:0", &server, &ctx, Some("evil.example")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("certificate verification failed: the certificate is not for this host name (depth 0, CN=good.example)"),
        "{text}"
    );
    assert!(!text.contains(".c:"), "no OpenSSL source path in {text}");
    let source = err.source().expect("OpenSSL's error queue");
    assert!(
        source.to_string().contains("certificate verify failed"),
        "{source}"
    );
    assert_eq!(
        io::Error::from(err).kind(),
        io::ErrorKind::ConnectionAborted
    );
}

#[test]
fn a_server_verifying_client_certificates_reports_the_failure_too() {
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let stranger = Ca::new("stranger CA");
    let mut server_spec = Spec::leaf("server.example");
    server_spec.dns = &["server.example"];
    let (chain, key) = ca.chain(&server_spec, &[]);
    let server_ctx = DtlsServerContext::builder()
        .certificate_chain_pem(&chain)
        .private_key_pem(&key)
        .client_auth(ClientAuth::Require)
        .root_certificates_pem(&client_ca.cert.to_pem().unwrap())
        .build()
        .unwrap();
    let (client_chain, client_key) = stranger.chain(&Spec::leaf("device-7"), &[]);
    let client_ctx = ca
        .client()
        .certificate_chain_pem(&client_chain)
        .private_key_pem(&client_key)
        .build()
        .unwrap();
    let now = Instant::now();
    let mut c = client_ctx.new_session(Some("server.example"), now).unwrap();
    let mut s = server_ctx.new_session(now).unwrap();
    assert!(!handshake(&mut c, &mut s, &mut Link::perfect(), CONNECT));
    match s.error() {
        Some(Error::Verification(f)) => {
            assert_eq!(f.reason, VerifyReason::UnknownIssuer, "{f}");
            assert_eq!((f.depth, f.subject.as_deref()), (0, Some("CN=device-7")));
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 3. errors a person can act on

#[test]
fn config_errors_are_std_errors() {
    fn as_std(e: &(dyn std::error::Error + 'static)) -> String {
        e.to_string()
    }
    assert_eq!(
        as_std(&ConfigError::KeyMismatch),
        "the private key does not match the certificate"
    );
}

#[test]
fn bind_errors_name_the_address_and_keep_the_kind() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = DtlsClient::bind(addr).unwrap_err();
    match &err {
        Error::Bind { addr: a, source } => {
            assert_eq!(*a, addr);
            assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
        }
        other => panic!("{other:?}"),
    }
    let text = err.to_string();
    assert!(text.starts_with(&format!("bind {addr}: ")), "{text}");
    assert_eq!(io::Error::from(err).kind(), io::ErrorKind::AddrInUse);
    let ctx = DtlsServerContext::builder()
        .psk_key_store(|_| None)
        .build()
        .unwrap();
    assert!(matches!(
        DtlsServer::bind(addr, ctx),
        Err(Error::Bind { source, .. }) if source.kind() == io::ErrorKind::AddrInUse
    ));
}

#[test]
fn timeouts_name_the_peer_and_the_phase() {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = silent.local_addr().unwrap();
    let ctx = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(&b"id"[..], &b"key"[..]))
        .build()
        .unwrap();
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let err = client
        .connect(peer, &ctx, Duration::from_millis(300))
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { peer: Some(p), phase: TimeoutPhase::Connect } if p == peer),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("DTLS handshake with {peer} timed out: the connect timeout passed")
    );
    assert_eq!(io::Error::from(err).kind(), io::ErrorKind::TimedOut);
    let idle = Error::IdleTimeout {
        peer: Some(peer),
        idle: Duration::from_secs(30),
    };
    assert_eq!(
        idle.to_string(),
        format!("DTLS connection with {peer} dropped: nothing received for 30s")
    );
    assert_eq!(io::Error::from(idle).kind(), io::ErrorKind::TimedOut);
    let handshake = Error::Timeout {
        peer: None,
        phase: TimeoutPhase::Retransmissions,
    };
    assert_eq!(
        handshake.to_string(),
        "DTLS handshake timed out: no answer after the last retransmission"
    );
}

#[test]
fn a_wrong_pre_shared_key_says_so() {
    let server_ctx = DtlsServerContext::builder()
        .psk_key_store(|identity| (identity == b"device").then(|| b"right key".to_vec()))
        .build()
        .unwrap();
    let server = DtlsServer::bind("127.0.0.1:0", server_ctx).unwrap();
    let ctx = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(&b"device"[..], &b"wrong key"[..]))
        .build()
        .unwrap();
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let err = client
        .connect(server.local_addr(), &ctx, CONNECT)
        .unwrap_err();
    assert!(
        matches!(err, Error::PeerAlert(a) if a.description == Alert::DECRYPT_ERROR),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("decrypt error (wrong pre-shared key?)"),
        "{text}"
    );
}

#[test]
fn connect_on_a_closed_client_says_the_client_is_closed() {
    let ctx = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(&b"id"[..], &b"key"[..]))
        .build()
        .unwrap();
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    client.close();
    let err = client
        .connect("127.0.0.1:9".parse().unwrap(), &ctx, CONNECT)
        .unwrap_err();
    assert!(matches!(err, Error::ClientClosed), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the DTLS client is closed: it cannot connect"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. RFC 7925's certificate suite

#[test]
fn a_client_offering_only_ecdhe_ecdsa_aes128_ccm8_connects_to_a_default_certificate_server() {
    assert!(openssl_dtls::context::CERTIFICATE_CIPHERS.contains("ECDHE-ECDSA-AES128-CCM8"));
    let ca = Ca::new("ccm8 CA");
    let mut spec = Spec::leaf("constrained");
    spec.ips = &["127.0.0.1"];
    let server = server("127.0.0.1:0", &ca.chain(&spec, &[]));
    let ctx = ca
        .client()
        .ciphers("ECDHE-ECDSA-AES128-CCM8")
        .build()
        .unwrap();
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client.connect(server.local_addr(), &ctx, CONNECT).unwrap();
    assert_eq!(conn.cipher(), Some("ECDHE-ECDSA-AES128-CCM8"));
    let accepted = server.accept_timeout(CONNECT).unwrap().expect("accepted");
    conn.send(b"ping").unwrap();
    let mut buf = [0u8; 16];
    let n = accepted.recv_timeout(&mut buf, CONNECT).unwrap().unwrap();
    assert_eq!(&buf[..n], b"ping");
    // A default client still gets AES-128-GCM from the server's preference order.
    let default = ca.client().build().unwrap();
    let conn = connect("127.0.0.1:0", &server, &default, None).unwrap();
    assert_eq!(conn.cipher(), Some("ECDHE-ECDSA-AES128-GCM-SHA256"));
}

// ---------------------------------------------------------------------------------------------
// 5. connect to a connected peer returns that connection

fn echo_psk_server() -> (Arc<DtlsServer>, std::thread::JoinHandle<()>) {
    let ctx = DtlsServerContext::builder()
        .psk_key_store(|identity| (identity == b"device").then(|| b"key".to_vec()))
        .build()
        .unwrap();
    let server = Arc::new(DtlsServer::bind("127.0.0.1:0", ctx).unwrap());
    let accepting = Arc::clone(&server);
    let echo = std::thread::spawn(move || {
        if let Ok(Some(conn)) = accepting.accept_timeout(CONNECT) {
            let mut buf = [0u8; 256];
            while let Ok(Some(n)) = conn.recv_timeout(&mut buf, CONNECT) {
                if n == 0 || conn.send(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    (server, echo)
}

#[test]
fn connect_to_a_connected_peer_returns_the_established_connection() {
    let (server, echo) = echo_psk_server();
    let ctx = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(&b"device"[..], &b"key"[..]))
        .build()
        .unwrap();
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let first = client.connect(server.local_addr(), &ctx, CONNECT).unwrap();
    let second = client.connect(server.local_addr(), &ctx, CONNECT).unwrap();
    assert_eq!(
        client.stats().handshakes_completed,
        1,
        "no second handshake"
    );
    // Another context or a server name is another request: refused while this one lives.
    let other_ctx = ctx.clone();
    client
        .connect(server.local_addr(), &other_ctx, CONNECT)
        .unwrap();
    let other = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(&b"device"[..], &b"key"[..]))
        .build()
        .unwrap();
    let err = client
        .connect(server.local_addr(), &other, CONNECT)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.kind() == io::ErrorKind::AlreadyExists),
        "{err:?}"
    );
    // Both handles are the one connection: dropping one leaves the other working.
    drop(first);
    second.send(b"still here").unwrap();
    let mut buf = [0u8; 64];
    let n = second.recv_timeout(&mut buf, CONNECT).unwrap().unwrap();
    assert_eq!(&buf[..n], b"still here");
    drop(second);
    drop(server);
    echo.join().unwrap();
}

#[cfg(feature = "tokio")]
mod on_tokio {
    use super::*;

    #[tokio::test]
    async fn connect_without_a_name_checks_the_ip_address() {
        let ca = Ca::new("tokio CA");
        let mut dns_only = Spec::leaf("other.example");
        dns_only.dns = &["other.example"];
        let server_dns = server("127.0.0.1:0", &ca.chain(&dns_only, &[]));
        let mut ip = Spec::leaf("device");
        ip.ips = &["127.0.0.1"];
        let server_ip = server("127.0.0.1:0", &ca.chain(&ip, &[]));
        let ctx = ca.client().build().unwrap();
        let client = openssl_dtls::tokio::DtlsClient::bind("127.0.0.1:0")
            .await
            .unwrap();
        let err = client
            .connect(server_dns.local_addr(), &ctx, CONNECT)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Verification(f) if f.reason == VerifyReason::IpMismatch),
            "{err:?}"
        );
        client
            .connect(server_ip.local_addr(), &ctx, CONNECT)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn connect_to_a_connected_peer_returns_the_established_connection() {
        let (server, echo) = echo_psk_server();
        let ctx = DtlsClientContext::builder()
            .psk_credentials(PskCredentials::new(&b"device"[..], &b"key"[..]))
            .build()
            .unwrap();
        let client = openssl_dtls::tokio::DtlsClient::bind("127.0.0.1:0")
            .await
            .unwrap();
        let first = client
            .connect(server.local_addr(), &ctx, CONNECT)
            .await
            .unwrap();
        let second = client
            .connect(server.local_addr(), &ctx, CONNECT)
            .await
            .unwrap();
        assert_eq!(
            client.stats().handshakes_completed,
            1,
            "no second handshake"
        );
        let err = client
            .connect_named(server.local_addr(), "other.example", &ctx, CONNECT)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Io(e) if e.kind() == io::ErrorKind::AlreadyExists),
            "{err:?}"
        );
        drop(first);
        second.send(b"still here").await.unwrap();
        let mut buf = [0u8; 64];
        let n = second.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"still here");
        drop(second);
        client.close().await;
        let err = client
            .connect(server.local_addr(), &ctx, CONNECT)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ClientClosed), "{err:?}");
        drop(server);
        tokio::task::spawn_blocking(move || echo.join().unwrap())
            .await
            .unwrap();
    }
}
