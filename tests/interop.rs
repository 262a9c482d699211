//! Interoperability with peers nobody here wrote, over real UDP on 127.0.0.1: OpenSSL's
//! `s_client` / `s_server` and GnuTLS's `gnutls-cli` / `gnutls-serv` against our `DtlsServer`
//! and `DtlsClient`. Every successful case exchanges application data in both directions and
//! closes with `close_notify`; every refusal checks the alert both sides saw.
//!
//! The peers are programs from Debian packages (`openssl`, `gnutls-bin`; `scripts/setup.sh`
//! installs them). A missing one fails the test, naming the package: never a silent skip.
//! Certificates are made on the fly (tests/support) and written to a temporary directory that
//! is removed afterwards. Every child process has a deadline (tests/interop/peer.rs).
//!
//! How the programs are driven (the command lines are built below; run them by hand to debug):
//! - `openssl s_client -dtls1_2 -connect 127.0.0.1:P …` sends each stdin line as one record,
//!   prints what it receives, and at the end of its stdin sends `close_notify` and exits 0.
//!   It prints `New, TLSv1.2, Cipher is …` once connected.
//! - `openssl s_server -dtls1_2 -listen -naccept 1 -accept 127.0.0.1:P …` (`-listen`: the
//!   cookie exchange) prints `ACCEPT` when bound, `CIPHER is …`, what it receives, and `DONE`
//!   when it reads `close_notify`, then exits 0. Its stdin must stay open: at the end of its
//!   stdin it closes the connection itself. PSK needs `-nocert`; CCM suites need `-cipher`.
//! - `gnutls-cli --udp --port P 127.0.0.1 …` behaves like s_client (`- Description: …`).
//! - `gnutls-serv --udp --echo --port P …` echoes, sends a HelloVerifyRequest first, and prints
//!   `EOF` on `close_notify`, but only line-buffered (`stdbuf -oL`). It has no option to bind
//!   one address: it listens on 0.0.0.0 and `::` for the second its test lasts (the traffic
//!   stays on 127.0.0.1).

mod support;

#[path = "interop/compact.rs"]
mod compact;
#[path = "interop/peer.rs"]
mod peer;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, KeyUsage};
use openssl::x509::{X509Builder, X509NameBuilder, X509};
use openssl_dtls::{
    ClientAuth, DtlsClient, DtlsClientContext, DtlsConnection, DtlsServer, DtlsServerContext,
    Error, PskCredentials,
};

use peer::{require, spawn_server, Peer, Relay, RelayStats, TempDir};
use support::Pki;

/// How long any single step (handshake, one message, a close) may take on loopback.
const STEP: Duration = Duration::from_secs(10);

const IDENTITY: &str = "interop-client";
/// The pre-shared key, 16 bytes.
const KEY: &[u8] = b"interop PSK 16 B";
const OUR_HINT: &str = "openssl-dtls hint";

/// Sent by the peer, received by us.
const FROM_PEER: &str = "ping from the peer";
/// Sent by us, received by the peer.
const FROM_US: &str = "pong from openssl-dtls";

fn key_hex() -> String {
    KEY.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// A certificate, its private key and the intermediates sent after it.
struct Credentials {
    cert: X509,
    key: PKey<Private>,
    chain: Vec<X509>,
}

impl Credentials {
    fn new(cert: X509, key: PKey<Private>) -> Credentials {
        Credentials {
            cert,
            key,
            chain: Vec::new(),
        }
    }

    /// The leaf then the intermediates, PEM.
    fn chain_pem(&self) -> Vec<u8> {
        let mut pem = self.cert.to_pem().unwrap();
        for c in &self.chain {
            pem.extend(c.to_pem().unwrap());
        }
        pem
    }

    fn intermediates_pem(&self) -> Vec<u8> {
        self.chain
            .iter()
            .flat_map(|c| c.to_pem().unwrap())
            .collect()
    }

    fn key_pem(&self) -> Vec<u8> {
        self.key.private_key_to_pem_pkcs8().unwrap()
    }

    /// Writes `<name>.pem` (leaf only), `<name>-chain.pem` (intermediates) and `<name>.key`;
    /// returns (certificate, key, intermediates) paths.
    fn write(&self, dir: &TempDir, name: &str) -> (String, String, String) {
        (
            dir.write(&format!("{name}.pem"), &self.cert.to_pem().unwrap()),
            dir.write(&format!("{name}.key"), &self.key_pem()),
            dir.write(&format!("{name}-chain.pem"), &self.intermediates_pem()),
        )
    }
}

struct Material {
    ec: Pki,
    ec_server: Credentials,
    ec_client: Credentials,
    rsa: Pki,
    rsa_server: Credentials,
    /// A certificate for `localhost` from a CA nobody here trusts, with a name of its own.
    stranger_server: Credentials,
    /// A certificate for `localhost` from a CA that carries our CA's name but not its key.
    impostor_server: Credentials,
}

/// A self-signed P-256 CA named `cn` (tests/support names all its CAs alike).
fn ca_named(cn: &str) -> Pki {
    let key = p256();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(0x5eed).unwrap().to_asn1_integer().unwrap();
    b.set_serial_number(&serial).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
        .unwrap();
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()
            .unwrap(),
    )
    .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    Pki {
        ca_cert: b.build(),
        ca_key: key,
    }
}

fn p256() -> PKey<Private> {
    support::ec_key(Nid::X9_62_PRIME256V1)
}

fn material() -> &'static Material {
    static MATERIAL: OnceLock<Material> = OnceLock::new();
    MATERIAL.get_or_init(|| {
        let ec = Pki::new_ec();
        let ec_server = {
            let key = p256();
            Credentials::new(ec.leaf("localhost", &key), key)
        };
        let ec_client = {
            let key = p256();
            Credentials::new(ec.leaf("client.interop.test", &key), key)
        };
        let rsa = Pki::new_rsa();
        let rsa_server = {
            let key = support::rsa_key(2048);
            Credentials::new(rsa.leaf("localhost", &key), key)
        };
        let stranger = ca_named("a CA nobody here trusts");
        let stranger_server = {
            let key = p256();
            Credentials::new(stranger.leaf("localhost", &key), key)
        };
        let impostor = Pki::new_ec();
        assert_eq!(
            impostor.ca_cert.subject_name().to_der().unwrap(),
            ec.ca_cert.subject_name().to_der().unwrap()
        );
        let impostor_server = {
            let key = p256();
            Credentials::new(impostor.leaf("localhost", &key), key)
        };
        Material {
            ec,
            ec_server,
            ec_client,
            rsa,
            rsa_server,
            stranger_server,
            impostor_server,
        }
    })
}

/// An ECDSA leaf for `localhost` under three RSA-4096 intermediates (the EC CA at the top): a
/// chain of more than 4 KB, so the Certificate message must be fragmented at MTU 500.
fn long_chain() -> &'static Credentials {
    static LONG: OnceLock<Credentials> = OnceLock::new();
    LONG.get_or_init(|| {
        let key = p256();
        let (cert, chain) = material().ec.long_chain("localhost", &key, 3);
        let credentials = Credentials { cert, key, chain };
        let der: usize = std::iter::once(&credentials.cert)
            .chain(&credentials.chain)
            .map(|c| c.to_der().unwrap().len())
            .sum();
        assert!(der > 4096, "the chain has only {der} bytes of DER");
        credentials
    })
}

fn ca_pem(pki: &Pki) -> Vec<u8> {
    pki.ca_cert.to_pem().unwrap()
}

fn common_name(cert: &X509) -> String {
    let entry = cert
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .expect("a CN");
    entry.data().to_string().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Our contexts

fn psk_server_ctx() -> DtlsServerContext {
    DtlsServerContext::builder()
        .psk_key_store(|identity| (identity == IDENTITY.as_bytes()).then(|| KEY.to_vec()))
        .identity_hint(OUR_HINT.as_bytes())
        .handshake_timeout(STEP)
        .build()
        .unwrap()
}

fn certificate_server_ctx(credentials: &Credentials, mtu: Option<usize>) -> DtlsServerContext {
    let mut builder = DtlsServerContext::builder();
    builder
        .certificate_chain_pem(&credentials.chain_pem())
        .private_key_pem(&credentials.key_pem())
        .handshake_timeout(STEP);
    if let Some(mtu) = mtu {
        builder.mtu(mtu);
    }
    builder.build().unwrap()
}

/// A PSK client that records the identity hint the server sent.
fn psk_client_ctx(hint_seen: &Arc<Mutex<Option<Vec<u8>>>>) -> DtlsClientContext {
    let hint_seen = Arc::clone(hint_seen);
    DtlsClientContext::builder()
        .psk_credentials_callback(move |hint| {
            *hint_seen.lock().unwrap() = hint.map(<[u8]>::to_vec);
            Some(PskCredentials::new(IDENTITY, KEY))
        })
        .handshake_timeout(STEP)
        .build()
        .unwrap()
}

fn certificate_client_ctx(ca: &Pki, mtu: Option<usize>) -> DtlsClientContext {
    let mut builder = DtlsClientContext::builder();
    builder
        .root_certificates_pem(&ca_pem(ca))
        .handshake_timeout(STEP);
    if let Some(mtu) = mtu {
        builder.mtu(mtu);
    }
    builder.build().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The peers

fn require_openssl() {
    require("openssl", &["version"], "openssl");
}

fn require_gnutls() {
    require("gnutls-cli", &["--version"], "gnutls-bin");
    require("gnutls-serv", &["--version"], "gnutls-bin");
    // gnutls-serv block-buffers stdout into a pipe; stdbuf (coreutils) makes it line-buffered.
    require("stdbuf", &["--version"], "coreutils");
}

/// A line `<prefix><cipher>` in the peer's output: the cipher it says was negotiated.
fn peer_cipher(peer: &Peer, prefix: &str) -> String {
    let transcript = peer.transcript();
    transcript
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix).map(|c| c.trim().to_owned()))
        .unwrap_or_else(|| panic!("no {prefix:?} line\n{transcript}"))
}

fn is_aead(cipher: &str) -> bool {
    cipher.contains("GCM") || cipher.contains("CCM") || cipher.contains("CHACHA20-POLY1305")
}

/// What one successful exchange showed.
struct Seen {
    peer: Peer,
    cipher: String,
    version: Option<&'static str>,
    psk_identity: Option<Vec<u8>>,
    peer_certificate: Option<X509>,
    relay: Option<RelayStats>,
}

fn recv_exact(conn: &DtlsConnection, expected: &str, peer: &Peer) {
    let mut buf = [0u8; 2048];
    match conn.recv_timeout(&mut buf, STEP) {
        Ok(Some(n)) => assert_eq!(
            String::from_utf8_lossy(&buf[..n]),
            format!("{expected}\n"),
            "wrong data from the peer\n{}",
            peer.transcript()
        ),
        other => panic!(
            "expected {expected:?} from the peer, got {other:?}\n{}",
            peer.transcript()
        ),
    }
}

/// Our `DtlsServer` against a client program that sends its stdin lines, prints what it
/// receives, and closes with `close_notify` at the end of its stdin (`openssl s_client`,
/// `gnutls-cli`). `args` gets the address to connect to. With `relay`, the datagrams pass a
/// relay that measures them.
fn our_server_with(
    ctx: DtlsServerContext,
    program: &str,
    package: &str,
    relay: bool,
    args: impl FnOnce(SocketAddr) -> Vec<String>,
) -> Seen {
    let server = DtlsServer::bind("127.0.0.1:0", ctx).unwrap();
    let relay = relay.then(|| Relay::start(server.local_addr()));
    let target = relay.as_ref().map_or(server.local_addr(), Relay::addr);
    let mut peer = Peer::spawn(program, package, &args(target));
    let conn = match server.accept_timeout(STEP) {
        Ok(Some(conn)) => conn,
        other => panic!(
            "no connection from `{}`: {other:?}, {:?}\n{}",
            peer.command(),
            server.stats(),
            peer.transcript()
        ),
    };
    peer.send_line(FROM_PEER);
    recv_exact(&conn, FROM_PEER, &peer);
    conn.send(format!("{FROM_US}\n").as_bytes()).unwrap();
    peer.expect_output(FROM_US, STEP);
    // End of the peer's input: it closes with close_notify, which our recv reads as end of stream.
    peer.close_stdin();
    let mut buf = [0u8; 64];
    match conn.recv_timeout(&mut buf, STEP) {
        Ok(Some(0)) => {}
        other => panic!(
            "expected close_notify, got {other:?}\n{}",
            peer.transcript()
        ),
    }
    peer.expect_success(STEP);
    let stats = server.stats();
    assert_eq!(stats.handshakes_completed, 1, "{stats:?}");
    assert!(
        stats.hello_verify_requests >= 1,
        "the cookie exchange ran: {stats:?}"
    );
    Seen {
        cipher: conn.cipher().expect("a cipher").to_owned(),
        version: conn.protocol_version(),
        psk_identity: conn.psk_identity().map(<[u8]>::to_vec),
        peer_certificate: conn.peer_certificate().cloned(),
        relay: relay.map(|r| r.stats()),
        peer,
    }
}

/// How a server program answers our message.
enum Reply {
    /// It sends its stdin lines (`openssl s_server`): it is sent [`FROM_PEER`].
    Stdin,
    /// It echoes (`gnutls-serv --echo`): we get our own message back.
    Echo,
}

/// A server program, and how to drive it.
struct ServerProgram<'a> {
    program: &'a str,
    package: &'a str,
    /// What it prints once it listens.
    ready: &'a str,
    reply: Reply,
    /// What it prints when it reads our `close_notify`.
    closed: &'a str,
}

/// Our `DtlsClient` against a server program on a fresh port (`args` gets the port). We send
/// first, it replies, we close.
fn our_client_with(
    ctx: &DtlsClientContext,
    server_name: Option<&str>,
    relay: bool,
    server: &ServerProgram<'_>,
    args: impl Fn(u16) -> Vec<String>,
) -> Seen {
    let (mut peer, port) = spawn_server(server.program, server.package, server.ready, STEP, args);
    let upstream: SocketAddr = ([127, 0, 0, 1], port).into();
    let relay = relay.then(|| Relay::start(upstream));
    let target = relay.as_ref().map_or(upstream, Relay::addr);
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let connected = match server_name {
        Some(name) => client.connect_named(target, name, ctx, STEP),
        None => client.connect(target, ctx, STEP),
    };
    let conn = connected.unwrap_or_else(|e| {
        panic!(
            "handshake with `{}` failed: {e:?}\n{}",
            peer.command(),
            peer.transcript()
        )
    });
    conn.send(format!("{FROM_US}\n").as_bytes()).unwrap();
    peer.expect_output(FROM_US, STEP);
    match server.reply {
        Reply::Stdin => {
            peer.send_line(FROM_PEER);
            recv_exact(&conn, FROM_PEER, &peer);
        }
        Reply::Echo => recv_exact(&conn, FROM_US, &peer),
    }
    conn.close();
    peer.expect_output(server.closed, STEP);
    assert!(matches!(conn.send(b"after close"), Err(Error::Closed)));
    Seen {
        cipher: conn.cipher().expect("a cipher").to_owned(),
        version: conn.protocol_version(),
        psk_identity: conn.psk_identity().map(<[u8]>::to_vec),
        peer_certificate: conn.peer_certificate().cloned(),
        relay: relay.map(|r| r.stats()),
        peer,
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// `openssl s_client -dtls1_2` towards `addr`, plus `extra`.
fn s_client(addr: SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&["s_client", "-dtls1_2", "-connect", &addr.to_string()]);
    args.extend(strings(extra));
    args
}

/// `openssl s_server -dtls1_2 -listen` (the cookie exchange) for one connection on `port`.
fn s_server(port: u16, extra: &[&str]) -> Vec<String> {
    let accept = format!("127.0.0.1:{port}");
    let mut args = strings(&[
        "s_server", "-dtls1_2", "-listen", "-naccept", "1", "-accept", &accept,
    ]);
    args.extend(strings(extra));
    args
}

/// `openssl s_server` against our client: ready when it prints `ACCEPT`; it prints `DONE` when
/// it reads our `close_notify`, then exits (status 0) after its one connection.
fn our_client_with_s_server(
    ctx: &DtlsClientContext,
    server_name: Option<&str>,
    relay: bool,
    extra: &[&str],
) -> Seen {
    require_openssl();
    let s_server_program = ServerProgram {
        program: "openssl",
        package: "openssl",
        ready: "ACCEPT",
        reply: Reply::Stdin,
        closed: "DONE",
    };
    let seen = our_client_with(ctx, server_name, relay, &s_server_program, |port| {
        s_server(port, extra)
    });
    seen.peer.expect_success(STEP);
    assert!(
        !seen.peer.output_contains("ERROR"),
        "{}",
        seen.peer.transcript()
    );
    assert_eq!(
        seen.cipher,
        peer_cipher(&seen.peer, "CIPHER is"),
        "both sides name the same cipher"
    );
    assert_eq!(seen.version, Some("DTLSv1.2"));
    seen
}

fn our_server_with_s_client(ctx: DtlsServerContext, relay: bool, extra: &[&str]) -> Seen {
    require_openssl();
    let seen = our_server_with(ctx, "openssl", "openssl", relay, |addr| {
        s_client(addr, extra)
    });
    assert_eq!(
        seen.cipher,
        peer_cipher(&seen.peer, "New, TLSv1.2, Cipher is"),
        "both sides name the same cipher"
    );
    assert!(
        seen.peer.output_contains("Protocol  : DTLSv1.2"),
        "{}",
        seen.peer.transcript()
    );
    assert_eq!(seen.version, Some("DTLSv1.2"));
    seen
}

// ---------------------------------------------------------------------------------------------
// Our server ⇄ openssl s_client

#[test]
fn openssl_s_client_with_psk_aes128_ccm8_exchanges_data_with_our_server() {
    let key = key_hex();
    let seen = our_server_with_s_client(
        psk_server_ctx(),
        false,
        &[
            "-psk",
            &key,
            "-psk_identity",
            IDENTITY,
            "-cipher",
            "PSK-AES128-CCM8",
        ],
    );
    assert_eq!(seen.cipher, "PSK-AES128-CCM8");
    assert_eq!(seen.psk_identity.as_deref(), Some(IDENTITY.as_bytes()));
    assert!(
        seen.peer
            .output_contains(&format!("PSK identity hint: {OUR_HINT}")),
        "s_client saw our identity hint\n{}",
        seen.peer.transcript()
    );
}

#[test]
fn openssl_s_client_with_psk_aes128_gcm_exchanges_data_with_our_server() {
    let key = key_hex();
    let seen = our_server_with_s_client(
        psk_server_ctx(),
        false,
        &[
            "-psk",
            &key,
            "-psk_identity",
            IDENTITY,
            "-cipher",
            "PSK-AES128-GCM-SHA256",
        ],
    );
    assert_eq!(seen.cipher, "PSK-AES128-GCM-SHA256");
    assert_eq!(seen.psk_identity.as_deref(), Some(IDENTITY.as_bytes()));
}

#[test]
fn openssl_s_client_verifies_our_ecdsa_certificate_and_negotiates_ecdhe_ecdsa() {
    let m = material();
    let dir = TempDir::new("s_client-ecdsa");
    let ca = dir.write("ca.pem", &ca_pem(&m.ec));
    let seen = our_server_with_s_client(
        certificate_server_ctx(&m.ec_server, None),
        false,
        &[
            "-CAfile",
            &ca,
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
        ],
    );
    assert!(
        seen.cipher.starts_with("ECDHE-ECDSA-") && is_aead(&seen.cipher),
        "{}",
        seen.cipher
    );
    assert!(
        seen.peer.output_contains("Verify return code: 0 (ok)"),
        "{}",
        seen.peer.transcript()
    );
    assert!(
        seen.peer.output_contains("Verified peername: localhost"),
        "{}",
        seen.peer.transcript()
    );
}

#[test]
fn openssl_s_client_verifies_our_rsa_certificate_and_negotiates_ecdhe_rsa() {
    let m = material();
    let dir = TempDir::new("s_client-rsa");
    let ca = dir.write("ca.pem", &ca_pem(&m.rsa));
    let seen = our_server_with_s_client(
        certificate_server_ctx(&m.rsa_server, None),
        false,
        &[
            "-CAfile",
            &ca,
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
        ],
    );
    assert!(
        seen.cipher.starts_with("ECDHE-RSA-") && is_aead(&seen.cipher),
        "{}",
        seen.cipher
    );
    assert!(
        seen.peer.output_contains("Verify return code: 0 (ok)"),
        "{}",
        seen.peer.transcript()
    );
}

#[test]
fn openssl_s_client_with_a_client_certificate_is_authenticated_by_our_server() {
    let m = material();
    let dir = TempDir::new("s_client-mutual");
    let ca = dir.write("ca.pem", &ca_pem(&m.ec));
    let (cert, key, _) = m.ec_client.write(&dir, "client");
    let ctx = DtlsServerContext::builder()
        .certificate_chain_pem(&m.ec_server.chain_pem())
        .private_key_pem(&m.ec_server.key_pem())
        .root_certificates_pem(&ca_pem(&m.ec))
        .client_auth(ClientAuth::Require)
        .handshake_timeout(STEP)
        .build()
        .unwrap();
    let seen = our_server_with_s_client(
        ctx,
        false,
        &[
            "-CAfile",
            &ca,
            "-verify_return_error",
            "-cert",
            &cert,
            "-key",
            &key,
        ],
    );
    let client_cert = seen
        .peer_certificate
        .expect("our server has the client's certificate");
    assert_eq!(common_name(&client_cert), "client.interop.test");
    assert!(seen.cipher.starts_with("ECDHE-ECDSA-"), "{}", seen.cipher);
}

#[test]
fn openssl_s_client_at_mtu_500_receives_our_fragmented_4kb_certificate_chain() {
    let m = material();
    let chain = long_chain();
    let dir = TempDir::new("s_client-mtu");
    let ca = dir.write("ca.pem", &ca_pem(&m.ec));
    let seen = our_server_with_s_client(
        certificate_server_ctx(chain, Some(500)),
        true,
        &[
            "-CAfile",
            &ca,
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
            "-mtu",
            "500",
        ],
    );
    let relay = seen.relay.expect("relayed");
    assert!(
        relay.largest <= 500,
        "a datagram of {} bytes at MTU 500: {relay:?}",
        relay.largest
    );
    // HelloVerifyRequest, then more than 4 KB of chain in datagrams of at most 500 bytes.
    assert!(
        relay.to_client >= 10,
        "the server flight was not fragmented: {relay:?}"
    );
    assert!(
        seen.peer.output_contains("depth=4"),
        "s_client verified all five certificates\n{}",
        seen.peer.transcript()
    );
}

// ---------------------------------------------------------------------------------------------
// Our client ⇄ openssl s_server -listen

#[test]
fn our_client_with_psk_aes128_ccm8_exchanges_data_with_openssl_s_server() {
    let hint = Arc::new(Mutex::new(None));
    let key = key_hex();
    let seen = our_client_with_s_server(
        &psk_client_ctx(&hint),
        None,
        false,
        &[
            "-nocert",
            "-psk",
            &key,
            "-psk_identity",
            IDENTITY,
            "-psk_hint",
            "s_server hint",
            "-cipher",
            "PSK-AES128-CCM8",
        ],
    );
    assert_eq!(seen.cipher, "PSK-AES128-CCM8");
    assert_eq!(
        hint.lock().unwrap().as_deref(),
        Some(&b"s_server hint"[..]),
        "the hint reached our callback"
    );
}

#[test]
fn our_client_with_psk_aes128_gcm_exchanges_data_with_openssl_s_server() {
    let hint = Arc::new(Mutex::new(None));
    let key = key_hex();
    let seen = our_client_with_s_server(
        &psk_client_ctx(&hint),
        None,
        false,
        &[
            "-nocert",
            "-psk",
            &key,
            "-psk_identity",
            IDENTITY,
            "-cipher",
            "PSK-AES128-GCM-SHA256",
        ],
    );
    assert_eq!(seen.cipher, "PSK-AES128-GCM-SHA256");
    assert_eq!(*hint.lock().unwrap(), None, "s_server sent no hint");
}

#[test]
fn our_client_verifies_openssl_s_server_ecdsa_certificate_and_negotiates_ecdhe_ecdsa() {
    let m = material();
    let dir = TempDir::new("s_server-ecdsa");
    let (cert, key, _) = m.ec_server.write(&dir, "server");
    let seen = our_client_with_s_server(
        &certificate_client_ctx(&m.ec, None),
        Some("localhost"),
        false,
        &["-cert", &cert, "-key", &key],
    );
    assert!(
        seen.cipher.starts_with("ECDHE-ECDSA-") && is_aead(&seen.cipher),
        "{}",
        seen.cipher
    );
    assert_eq!(
        common_name(&seen.peer_certificate.expect("server certificate")),
        "localhost"
    );
}

#[test]
fn our_client_verifies_openssl_s_server_rsa_certificate_and_negotiates_ecdhe_rsa() {
    let m = material();
    let dir = TempDir::new("s_server-rsa");
    let (cert, key, _) = m.rsa_server.write(&dir, "server");
    let seen = our_client_with_s_server(
        &certificate_client_ctx(&m.rsa, None),
        Some("localhost"),
        false,
        &["-cert", &cert, "-key", &key],
    );
    assert!(
        seen.cipher.starts_with("ECDHE-RSA-") && is_aead(&seen.cipher),
        "{}",
        seen.cipher
    );
}

#[test]
fn our_client_certificate_is_verified_by_openssl_s_server() {
    let m = material();
    let dir = TempDir::new("s_server-mutual");
    let (cert, key, _) = m.ec_server.write(&dir, "server");
    let ca = dir.write("ca.pem", &ca_pem(&m.ec));
    let ctx = DtlsClientContext::builder()
        .root_certificates_pem(&ca_pem(&m.ec))
        .certificate_chain_pem(&m.ec_client.chain_pem())
        .private_key_pem(&m.ec_client.key_pem())
        .handshake_timeout(STEP)
        .build()
        .unwrap();
    let seen = our_client_with_s_server(
        &ctx,
        Some("localhost"),
        false,
        &[
            "-cert",
            &cert,
            "-key",
            &key,
            "-Verify",
            "5",
            "-CAfile",
            &ca,
            "-verify_return_error",
        ],
    );
    assert!(
        seen.peer
            .output_contains("subject=CN = client.interop.test"),
        "s_server got our certificate\n{}",
        seen.peer.transcript()
    );
}

#[test]
fn our_client_at_mtu_500_receives_openssl_s_server_fragmented_4kb_certificate_chain() {
    let m = material();
    let dir = TempDir::new("s_server-mtu");
    let (cert, key, intermediates) = long_chain().write(&dir, "server");
    let seen = our_client_with_s_server(
        &certificate_client_ctx(&m.ec, Some(500)),
        Some("localhost"),
        true,
        &[
            "-cert",
            &cert,
            "-key",
            &key,
            "-cert_chain",
            &intermediates,
            "-mtu",
            "500",
        ],
    );
    let relay = seen.relay.expect("relayed");
    assert!(
        relay.largest <= 500,
        "a datagram of {} bytes at MTU 500: {relay:?}",
        relay.largest
    );
    assert!(
        relay.to_client >= 10,
        "the server flight was not fragmented: {relay:?}"
    );
    assert_eq!(
        common_name(&seen.peer_certificate.expect("server certificate")),
        "localhost"
    );
}

// ---------------------------------------------------------------------------------------------
// GnuTLS

fn gnutls_cli(addr: SocketAddr, extra: &[&str]) -> Vec<String> {
    let port = addr.port().to_string();
    let mut args = strings(&["--udp", "--port", &port, &addr.ip().to_string()]);
    args.extend(strings(extra));
    args
}

/// `gnutls-serv --udp --echo` under `stdbuf -oL`: it prints `listening on IPv4` once it listens,
/// and a line `EOF` when it reads a `close_notify`.
fn our_client_with_gnutls_serv(
    ctx: &DtlsClientContext,
    server_name: Option<&str>,
    extra: &[&str],
) -> Seen {
    require_gnutls();
    let gnutls_serv = ServerProgram {
        program: "stdbuf",
        package: "coreutils",
        ready: "listening on IPv4",
        reply: Reply::Echo,
        closed: "\nEOF\n",
    };
    let seen = our_client_with(ctx, server_name, false, &gnutls_serv, |port| {
        let port = port.to_string();
        let mut args = strings(&["-oL", "gnutls-serv", "--udp", "--echo", "--port", &port]);
        args.extend(strings(extra));
        args
    });
    // The cookie exchange ran, and the connection ended without an error.
    assert!(
        seen.peer.output_contains("Sending hello verify request"),
        "{}",
        seen.peer.transcript()
    );
    assert!(
        !seen.peer.output_contains("Error"),
        "{}",
        seen.peer.transcript()
    );
    assert_eq!(seen.version, Some("DTLSv1.2"));
    seen
}

fn our_server_with_gnutls_cli(ctx: DtlsServerContext, extra: &[&str]) -> Seen {
    require_gnutls();
    let seen = our_server_with(ctx, "gnutls-cli", "gnutls-bin", false, |addr| {
        gnutls_cli(addr, extra)
    });
    assert!(
        seen.peer.output_contains("- Handshake was completed"),
        "{}",
        seen.peer.transcript()
    );
    assert!(
        seen.peer.output_contains("- Description: (DTLS1.2-"),
        "{}",
        seen.peer.transcript()
    );
    assert_eq!(seen.version, Some("DTLSv1.2"));
    seen
}

#[test]
fn gnutls_cli_with_psk_aes128_ccm8_exchanges_data_with_our_server() {
    let key = key_hex();
    let seen = our_server_with_gnutls_cli(
        psk_server_ctx(),
        &[
            "--pskusername",
            IDENTITY,
            "--pskkey",
            &key,
            "--priority",
            "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK:-CIPHER-ALL:+AES-128-CCM-8",
        ],
    );
    assert_eq!(seen.cipher, "PSK-AES128-CCM8");
    assert_eq!(seen.psk_identity.as_deref(), Some(IDENTITY.as_bytes()));
    assert!(
        seen.peer.output_contains("(PSK)-(AES-128-CCM-8)"),
        "{}",
        seen.peer.transcript()
    );
    assert!(
        seen.peer.output_contains(&format!("PSK hint '{OUR_HINT}'")),
        "{}",
        seen.peer.transcript()
    );
}

#[test]
fn gnutls_cli_verifies_our_ecdsa_certificate_and_exchanges_data_with_our_server() {
    let m = material();
    let dir = TempDir::new("gnutls-cli-ecdsa");
    let ca = dir.write("ca.pem", &ca_pem(&m.ec));
    let seen = our_server_with_gnutls_cli(
        certificate_server_ctx(&m.ec_server, None),
        &[
            "--x509cafile",
            &ca,
            "--verify-hostname",
            "localhost",
            "--priority",
            "NORMAL:-VERS-ALL:+VERS-DTLS1.2",
        ],
    );
    assert!(
        seen.cipher.starts_with("ECDHE-ECDSA-") && is_aead(&seen.cipher),
        "{}",
        seen.cipher
    );
    assert!(
        seen.peer
            .output_contains("- Status: The certificate is trusted."),
        "{}",
        seen.peer.transcript()
    );
}

#[test]
fn our_client_with_psk_aes128_ccm8_exchanges_data_with_gnutls_serv() {
    let hint = Arc::new(Mutex::new(None));
    let dir = TempDir::new("gnutls-serv-psk");
    let passwd = dir.write(
        "psk.passwd",
        format!("{IDENTITY}:{}\n", key_hex()).as_bytes(),
    );
    let seen = our_client_with_gnutls_serv(
        &psk_client_ctx(&hint),
        None,
        &[
            "--pskpasswd",
            &passwd,
            "--pskhint",
            "gnutls hint",
            "--priority",
            "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK:-CIPHER-ALL:+AES-128-CCM-8",
        ],
    );
    assert_eq!(seen.cipher, "PSK-AES128-CCM8");
    assert_eq!(hint.lock().unwrap().as_deref(), Some(&b"gnutls hint"[..]));
}

#[test]
fn our_client_verifies_gnutls_serv_ecdsa_certificate_and_exchanges_data() {
    let m = material();
    let dir = TempDir::new("gnutls-serv-ecdsa");
    let (cert, key, _) = m.ec_server.write(&dir, "server");
    let seen = our_client_with_gnutls_serv(
        &certificate_client_ctx(&m.ec, None),
        Some("localhost"),
        &[
            "--x509certfile",
            &cert,
            "--x509keyfile",
            &key,
            "--priority",
            "NORMAL:-VERS-ALL:+VERS-DTLS1.2",
        ],
    );
    assert!(
        seen.cipher.starts_with("ECDHE-ECDSA-") && is_aead(&seen.cipher),
        "{}",
        seen.cipher
    );
    assert_eq!(
        common_name(&seen.peer_certificate.expect("server certificate")),
        "localhost"
    );
}

// ---------------------------------------------------------------------------------------------
// Refusals

/// Runs a client program that our server must refuse: it must exit with a failure and print
/// `alert`; our server accepts no connection and counts a locally failed handshake.
fn our_server_refuses(
    ctx: DtlsServerContext,
    program: &str,
    package: &str,
    args: impl FnOnce(SocketAddr) -> Vec<String>,
    alert: &str,
) -> Peer {
    let server = DtlsServer::bind("127.0.0.1:0", ctx).unwrap();
    let peer = Peer::spawn(program, package, &args(server.local_addr()));
    peer.expect_output(alert, STEP);
    peer.expect_failure(STEP);
    assert!(
        server
            .accept_timeout(Duration::from_millis(100))
            .unwrap()
            .is_none(),
        "a refused peer got a connection"
    );
    let stats = server.stats();
    assert_eq!(stats.handshakes_completed, 0, "{stats:?}");
    assert_eq!(stats.connections, 0, "{stats:?}");
    assert!(
        stats.handshakes_failed_local >= 1,
        "our server failed the handshake: {stats:?}\n{}",
        peer.transcript()
    );
    peer
}

#[test]
fn our_server_refuses_openssl_s_client_offering_only_dtls_1_0_with_protocol_version() {
    require_openssl();
    let key = key_hex();
    let peer = our_server_refuses(
        psk_server_ctx(),
        "openssl",
        "openssl",
        |addr| {
            strings(&[
                "s_client",
                "-dtls1",
                "-connect",
                &addr.to_string(),
                "-psk",
                &key,
                "-psk_identity",
                IDENTITY,
            ])
        },
        "SSL alert number 70",
    );
    assert!(
        peer.output_contains("alert protocol version"),
        "{}",
        peer.transcript()
    );
}

#[test]
fn our_server_refuses_openssl_s_client_offering_only_cbc_psk_suites_with_handshake_failure() {
    require_openssl();
    let key = key_hex();
    let peer = our_server_refuses(
        psk_server_ctx(),
        "openssl",
        "openssl",
        |addr| {
            s_client(
                addr,
                &[
                    "-psk",
                    &key,
                    "-psk_identity",
                    IDENTITY,
                    "-cipher",
                    "PSK-AES128-CBC-SHA256:PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256:PSK-AES128-CBC-SHA",
                ],
            )
        },
        "SSL alert number 40",
    );
    assert!(
        peer.output_contains("alert handshake failure"),
        "{}",
        peer.transcript()
    );
}

#[test]
fn our_server_refuses_openssl_s_client_offering_only_cbc_certificate_suites_with_handshake_failure()
{
    require_openssl();
    let m = material();
    let dir = TempDir::new("s_client-cbc");
    let ca = dir.write("ca.pem", &ca_pem(&m.ec));
    our_server_refuses(
        certificate_server_ctx(&m.ec_server, None),
        "openssl",
        "openssl",
        |addr| {
            s_client(
                addr,
                &[
                    "-CAfile",
                    &ca,
                    "-cipher",
                    "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA256:AES128-SHA256",
                ],
            )
        },
        "SSL alert number 40",
    );
}

#[test]
fn our_server_refuses_gnutls_cli_offering_only_cbc_psk_suites() {
    require_gnutls();
    let key = key_hex();
    let peer = our_server_refuses(
        psk_server_ctx(),
        "gnutls-cli",
        "gnutls-bin",
        |addr| {
            gnutls_cli(
                addr,
                &[
                    "--pskusername",
                    IDENTITY,
                    "--pskkey",
                    &key,
                    "--priority",
                    "NORMAL:-VERS-ALL:+VERS-DTLS1.2:-KX-ALL:+PSK:+ECDHE-PSK:-CIPHER-ALL:+AES-128-CBC:+AES-256-CBC:-MAC-ALL:+SHA1:+SHA256:+SHA384",
                ],
            )
        },
        "*** Received alert [40]: Handshake failed",
    );
    assert!(
        !peer.output_contains("- Handshake was completed"),
        "{}",
        peer.transcript()
    );
}

/// Our client against `openssl s_server` with `server`'s certificate: the handshake must fail
/// with a local alert numbered `alert`, which s_server reports.
fn our_client_refuses_s_server_certificate(
    server: &Credentials,
    server_name: &str,
    alert: u8,
) -> Error {
    require_openssl();
    let m = material();
    let dir = TempDir::new("s_server-refused");
    let (cert, key, _) = server.write(&dir, "server");
    let (peer, port) = spawn_server("openssl", "openssl", "ACCEPT", STEP, |port| {
        s_server(port, &["-cert", &cert, "-key", &key])
    });
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let err = client
        .connect_named(
            ([127, 0, 0, 1], port).into(),
            server_name,
            &certificate_client_ctx(&m.ec, None),
            STEP,
        )
        .map(|c| c.cipher())
        .expect_err("the handshake must fail");
    match &err {
        Error::LocalAlert {
            alert: sent,
            reason,
        } => {
            assert_eq!(sent.description, alert, "{err}");
            assert!(sent.is_fatal(), "{err}");
            assert!(reason.contains("certificate verify failed"), "{err}");
        }
        Error::Verification(failure) => {
            assert_eq!(failure.alert.description, alert, "{err}");
            assert!(failure.alert.is_fatal(), "{err}");
            assert_eq!(failure.depth, 0, "{err}");
            assert_eq!(failure.subject.as_deref(), Some("CN=localhost"), "{err}");
            assert!(
                failure
                    .errors
                    .to_string()
                    .contains("certificate verify failed"),
                "{err}"
            );
        }
        other => panic!(
            "expected a local alert, got {other:?}\n{}",
            peer.transcript()
        ),
    }
    peer.expect_output(&format!("SSL alert number {alert}"), STEP);
    err
}

#[test]
fn our_client_refuses_a_server_certificate_from_an_unknown_ca_with_unknown_ca() {
    our_client_refuses_s_server_certificate(&material().stranger_server, "localhost", 48);
}

/// The chain names our CA as issuer, but our CA's key did not sign it: the signature check
/// fails (`decrypt_error`, OpenSSL's alert for `X509_V_ERR_CERT_SIGNATURE_FAILURE`).
#[test]
fn our_client_refuses_a_server_certificate_from_an_impostor_of_our_ca_with_decrypt_error() {
    our_client_refuses_s_server_certificate(&material().impostor_server, "localhost", 51);
}

#[test]
fn our_client_refuses_a_server_certificate_for_another_hostname_with_bad_certificate() {
    our_client_refuses_s_server_certificate(&material().ec_server, "wrong.interop.test", 42);
}
