//! The example tools as a user runs them: the built binaries in `target/<profile>/examples/`,
//! started as processes, over UDP on loopback. Each run is bounded in time and every server is
//! killed at the end.
//!
//! Cargo builds the examples for a plain `cargo test` (as `scripts/test.sh` runs it), next to
//! this test's binary. `cargo test --test examples` alone does not build them: run
//! `cargo build --examples` first, or a missing or stale binary is what gets tested.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use openssl_dtls::{DtlsClient, DtlsClientContext, PskCredentials};

/// Every blocking example tool (`async_echo` needs the `tokio` feature).
const TOOLS: &[&str] = &[
    "demo",
    "dtls2_example",
    "psk_server",
    "psk_client",
    "pki_server",
    "pki_client",
];

/// How long a tool that should finish may take.
const LIMIT: Duration = Duration::from_secs(30);

/// The path of example `name`: `target/<profile>/examples/<name>`, beside this test's
/// `target/<profile>/deps/`.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples, `cargo test --test examples` alone \
         does not (run `cargo build --examples` first)",
        path.display()
    );
    path
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn read_all(mut from: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs example `name` with `args` to its end, killing it after [`LIMIT`].
fn run(name: &str, args: &[&str]) -> Output {
    let mut child = Command::new(example(name))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let stdout = read_all(child.stdout.take().expect("piped"));
    let stderr = read_all(child.stderr.take().expect("piped"));
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} {args:?} did not finish within {LIMIT:?}; stderr:\n{}",
                stderr.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// A server example running in the background; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Option<JoinHandle<String>>,
    /// Its stdout lines after `listening on ADDR`, as they come (read to the end, so that the
    /// server never writes to a closed pipe).
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts example `name` listening on a free loopback port and waits for its
    /// `listening on ADDR` line.
    fn start(name: &str, args: &[&str]) -> Server {
        let mut child = Command::new(example(name))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let stderr = Some(read_all(child.stderr.take().expect("piped")));
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let more = Arc::clone(&lines);
        thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = tx.send(line);
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                more.lock().unwrap().push(line);
            }
        });
        let mut server = Server {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            stderr,
            stdout: lines,
        };
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        server.addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{name} did not say where it listens (first line {line:?}); stderr:\n{}",
                    server.stop()
                )
            });
        server
    }

    /// Waits up to 10 s for a stdout line that starts with `prefix` (after the `listening on`
    /// line) and returns it.
    fn wait_for_line(&self, prefix: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.starts_with(prefix))
                .cloned();
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its stdout lines so far, after the `listening on` line.
    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    /// Kills the server; returns what it wrote on stderr (its log).
    fn stop(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback address whose port was free a moment ago.
fn free_loopback_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port")
}

/// A PSK client context with the examples' default credentials.
fn client_context(mtu: usize) -> DtlsClientContext {
    DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new("Client_identity", "secretPSK"))
        .mtu(mtu)
        .build()
        .expect("a client context")
}

#[test]
fn every_tool_prints_its_usage_and_exits_0_on_help() {
    for tool in TOOLS {
        for flag in ["--help", "-h"] {
            let out = run(tool, &[flag]);
            assert_eq!(out.status.code(), Some(0), "{tool} {flag}: {}", out.stderr);
            assert!(
                out.stdout.starts_with(&format!("usage: {tool}")),
                "{tool} {flag} printed {:?}",
                out.stdout
            );
        }
    }
}

#[test]
fn an_unknown_flag_or_stray_argument_exits_2_with_the_usage_on_stderr() {
    for tool in TOOLS {
        for args in [&["--no-such-flag"][..], &["stray"], &["--help=no"]] {
            let out = run(tool, args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{tool} {args:?}: {}",
                out.stderr
            );
            assert!(
                out.stderr.starts_with("error: ") && out.stderr.contains(&format!("usage: {tool}")),
                "{tool} {args:?} wrote {:?}",
                out.stderr
            );
            assert!(out.stdout.is_empty(), "{tool} {args:?}: {:?}", out.stdout);
        }
    }
}

#[test]
fn malformed_values_exit_2_with_a_message_not_a_panic() {
    let cases: &[(&str, &[&str])] = &[
        ("psk_server", &["--key-hex", "aé"]),
        ("psk_server", &["--key-hex", "aéb"]), // four bytes, the second not a hex digit
        ("psk_server", &["--key-hex", "7g"]),
        ("psk_server", &["--key-hex", "abc"]),
        ("psk_server", &["--idle-timeout", "-1"]),
        ("psk_server", &["--listen", "nowhere"]),
        ("psk_server", &["--key-hex"]),
        ("psk_client", &["--message", "hi", "--key-hex", "aé"]),
        ("psk_client", &["--message", "hi", "--count", "many"]),
        ("psk_client", &["--message", "hi", "--bind", "127.0.0.1"]),
        ("psk_client", &["--count", "1"]), // --message is required
        ("psk_server", &["--cid-len", "17"]), // longer than any CID this library issues
        ("psk_server", &["--cid-len", "eight"]),
        ("psk_client", &["--message", "hi", "--interval-ms", "soon"]),
        ("psk_client", &["--message", "hi", "--cid-len", "-1"]),
        (
            "pki_server",
            &["--cert", "c", "--key", "k", "--cid-len", "99"],
        ),
        (
            "pki_client",
            &["--ca", "ca.pem", "--message", "hi", "--interval-ms", "1.5"],
        ),
        ("pki_server", &["--cert", "c.pem"]), // --key is required
        (
            "pki_server",
            &["--cert", "c", "--key", "k", "--require-client-cert"],
        ),
        (
            "pki_client",
            &["--ca", "ca.pem", "--message", "hi", "--cert", "c.pem"],
        ),
        ("dtls2_example", &["--port", "65536"]),
    ];
    for (tool, args) in cases {
        let out = run(tool, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{tool} {args:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr.starts_with("error: ") && !out.stderr.contains("panicked"),
            "{tool} {args:?} wrote {:?}",
            out.stderr
        );
    }
}

#[test]
fn psk_client_from_a_fixed_bind_address_gets_the_echo_of_psk_server() {
    let mut server = Server::start("psk_server", &[]);
    let bind = free_loopback_addr();
    let out = run(
        "psk_client",
        &[
            "--connect",
            &server.addr.to_string(),
            "--bind",
            &bind.to_string(),
            "--message",
            "hello from a device",
            "--count",
            "2",
        ],
    );
    let log = server.stop();
    assert_eq!(
        out.status.code(),
        Some(0),
        "client: {}\nserver: {log}",
        out.stderr
    );
    assert_eq!(out.stdout, "hello from a device\nhello from a device\n");
    assert!(
        log.contains(&format!("connection from {bind} ")),
        "the server did not see the client come from {bind}:\n{log}"
    );
}

#[test]
fn psk_server_echoes_a_datagram_beyond_its_data_mtu_truncated_and_keeps_the_connection() {
    let mut server = Server::start("psk_server", &[]);
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    // A peer with a larger MTU than the server's 1200 bytes.
    let conn = client
        .connect(server.addr, &client_context(1400), Duration::from_secs(10))
        .expect("handshake with psk_server");
    let big: Vec<u8> = (0..conn.data_mtu()).map(|i| (i % 251) as u8).collect();
    conn.send(&big).unwrap();
    let mut buf = vec![0u8; 65_536];
    let n = conn
        .recv_timeout(&mut buf, Duration::from_secs(5))
        .unwrap()
        .expect("an echo of the large datagram");
    assert!(
        0 < n && n < big.len(),
        "echo of {n} bytes for {}",
        big.len()
    );
    assert_eq!(
        &buf[..n],
        &big[..n],
        "the echo is not a prefix of the datagram"
    );
    conn.send(b"still there?").unwrap();
    let n = conn
        .recv_timeout(&mut buf, Duration::from_secs(5))
        .unwrap()
        .expect("the connection survived");
    assert_eq!(&buf[..n], b"still there?");
    conn.close();
    let log = server.stop();
    assert!(
        log.contains(&format!("a {}-byte datagram does not fit", big.len())),
        "no warning in the server's log:\n{log}"
    );
}

/// Connects to `server`, checks an echo, stays silent for `silence`, and says whether the
/// connection still echoes.
fn echoes_after_silence(server: SocketAddr, silence: Duration) -> bool {
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(server, &client_context(1200), Duration::from_secs(10))
        .expect("handshake");
    let mut buf = [0u8; 1500];
    conn.send(b"one").unwrap();
    assert_eq!(
        conn.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap(),
        Some(3)
    );
    thread::sleep(silence);
    // A server that dropped the connection for idleness sent a close_notify: the send or the
    // receive then fails, or nothing comes back.
    if conn.send(b"two").is_err() {
        return false;
    }
    conn.recv_timeout(&mut buf, Duration::from_secs(1))
        .ok()
        .flatten()
        .is_some_and(|n| n > 0 && &buf[..n] == b"two")
}

#[test]
fn psk_server_idle_timeout_drops_a_silent_connection_and_the_default_keeps_it() {
    let mut short = Server::start("psk_server", &["--idle-timeout", "1"]);
    let mut default = Server::start("psk_server", &[]);
    let never = Server::start("psk_server", &["--idle-timeout", "none"]);
    assert!(!echoes_after_silence(
        short.addr,
        Duration::from_millis(2500)
    ));
    assert!(echoes_after_silence(
        default.addr,
        Duration::from_millis(2500)
    ));
    assert!(echoes_after_silence(never.addr, Duration::from_millis(100)));
    drop(never);
    let _ = default.stop();
    let log = short.stop();
    assert!(log.contains("connection from"), "{log}");
    assert!(log.contains("idle timeout: 127.0.0.1:"), "{log}");
}

#[test]
fn psk_server_prints_one_line_per_failed_handshake() {
    let mut server = Server::start("psk_server", &[]);
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let wrong = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new("Client_identity", "not the key"))
        .build()
        .unwrap();
    assert!(client
        .connect(server.addr, &wrong, Duration::from_secs(10))
        .is_err());
    // The server reports the failure after its own handling; give its driver a moment.
    thread::sleep(Duration::from_millis(300));
    let log = server.stop();
    let line = format!("handshake failed: {}: ", client.local_addr());
    let found = log.lines().find(|l| l.starts_with(&line));
    let found = found.unwrap_or_else(|| panic!("no {line:?} line in:\n{log}"));
    assert!(found.contains("Client_identity"), "{found}");
    assert!(found.contains("wrong pre-shared key"), "{found}");
}

#[test]
fn dtls2_example_runs_to_completion() {
    let out = run("dtls2_example", &["--port", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    for line in [
        "Some(\"This is the identity hint!\")",
        "Hello World",
        "Bye World",
        "Server connection closed.",
        "Server closed.",
        "Client connection closed.",
        "Client closed.",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "no line {line:?} in:\n{}",
            out.stdout
        );
    }
}

/// Runs `psk_client` from a fixed loopback address against `server` with `args`; returns its
/// output and the address it sent from.
fn psk_client_run(server: &Server, args: &[&str]) -> (Output, SocketAddr) {
    let bind = free_loopback_addr();
    let (connect, bind_arg) = (server.addr.to_string(), bind.to_string());
    let mut all = vec!["--connect", &connect, "--bind", &bind_arg];
    all.extend_from_slice(args);
    (run("psk_client", &all), bind)
}

#[test]
fn psk_client_with_cid_sends_the_cid_psk_server_asked_for_and_gets_three_echoes() {
    let mut server = Server::start("psk_server", &["--cid-len", "8"]);
    let started = Instant::now();
    let (out, bind) = psk_client_run(
        &server,
        &[
            "--cid",
            "--message",
            "hello with a cid",
            "--count",
            "3",
            "--interval-ms",
            "50",
        ],
    );
    let elapsed = started.elapsed();
    let completed = server.wait_for_line("handshake completed: ");
    let (stdout, log) = (server.stdout(), server.stop());
    assert_eq!(
        out.status.code(),
        Some(0),
        "client: {}\nserver: {log}",
        out.stderr
    );
    let mut lines = out.stdout.lines();
    let cid = lines
        .next()
        .and_then(|l| l.strip_prefix("cid: "))
        .unwrap_or_else(|| panic!("no `cid: ` line first in {:?}", out.stdout));
    assert!(
        cid.len() == 16 && cid.bytes().all(|b| b.is_ascii_hexdigit()),
        "the client's CID {cid:?} is not 8 bytes in hex"
    );
    assert_eq!(
        lines.collect::<Vec<_>>(),
        ["hello with a cid"; 3],
        "three echoes after the cid line"
    );
    // Three messages, each 50 ms after the previous echo.
    assert!(elapsed >= Duration::from_millis(100), "{elapsed:?}");
    assert_eq!(
        completed.as_deref(),
        Some(format!("handshake completed: {bind} cid={cid}").as_str()),
        "server stdout:\n{stdout}\nlog:\n{log}"
    );
}

#[test]
fn psk_client_without_cid_gets_no_cid_from_a_cid_server_and_the_server_prints_cid_dash() {
    let mut server = Server::start("psk_server", &["--cid-len", "8"]);
    let (out, bind) = psk_client_run(&server, &["--message", "no cid", "--count", "2"]);
    let completed = server.wait_for_line("handshake completed: ");
    let (stdout, log) = (server.stdout(), server.stop());
    assert_eq!(
        out.status.code(),
        Some(0),
        "client: {}\nserver: {log}",
        out.stderr
    );
    assert_eq!(
        out.stdout, "no cid\nno cid\n",
        "no `cid:` line without --cid"
    );
    assert_eq!(
        completed.as_deref(),
        Some(format!("handshake completed: {bind} cid=-").as_str()),
        "server stdout:\n{stdout}\nlog:\n{log}"
    );
}

#[test]
fn psk_client_with_cid_against_a_server_without_cids_prints_cid_dash() {
    let mut server = Server::start("psk_server", &[]);
    let (out, bind) = psk_client_run(&server, &["--cid", "--message", "hi"]);
    let completed = server.wait_for_line("handshake completed: ");
    let (stdout, log) = (server.stdout(), server.stop());
    assert_eq!(
        out.status.code(),
        Some(0),
        "client: {}\nserver: {log}",
        out.stderr
    );
    assert_eq!(out.stdout, "cid: -\nhi\n");
    assert_eq!(
        completed.as_deref(),
        Some(format!("handshake completed: {bind} cid=-").as_str()),
        "server stdout:\n{stdout}\nlog:\n{log}"
    );
}

#[path = "support/nat.rs"]
#[allow(dead_code)]
mod nat;

#[test]
fn psk_server_prints_the_move_when_a_cid_clients_nat_rebinds() {
    let mut server = Server::start("psk_server", &["--cid-len", "8"]);
    let mut nat = nat::Nat::start(server.addr);
    let connect = nat.inside().to_string();
    let mut child = Command::new(example("psk_client"))
        .args(["--connect", &connect, "--cid", "--message", "ping"])
        .args(["--count", "4", "--interval-ms", "300"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psk_client");
    let stderr = read_all(child.stderr.take().expect("piped"));
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut lines = Vec::new();
    let mut line = String::new();
    // `cid: HEX`, then the echoes: after the second, the device's NAT mapping expires.
    while lines.len() < 3 && stdout.read_line(&mut line).unwrap_or(0) > 0 {
        lines.push(std::mem::take(&mut line).trim().to_owned());
    }
    let old = *nat.stats().outside.last().unwrap();
    let new = nat.rebind();
    let rest = read_all(stdout);
    let status = child.wait().expect("psk_client ends");
    let rest = rest.join().unwrap_or_default();
    let moved = server.wait_for_line("address changed: ");
    let (out, log) = (server.stdout(), server.stop());
    assert!(
        status.success(),
        "client: {}\nserver: {log}",
        stderr.join().unwrap_or_default()
    );
    let cid = lines[0].strip_prefix("cid: ").expect("a cid line");
    assert_eq!(lines[1..], ["ping", "ping"]);
    assert_eq!(
        rest.lines().collect::<Vec<_>>(),
        ["ping", "ping"],
        "the echoes after the move"
    );
    assert_eq!(
        moved.as_deref(),
        Some(format!("address changed: {old} -> {new} cid={cid}").as_str()),
        "server stdout:\n{out}\nlog:\n{log}"
    );
    assert_eq!(out.matches("handshake completed: ").count(), 1, "{out}");
    assert_eq!(nat.stats().to_old_address, 0);
}

/// A self-signed P-256 certificate for `server.test` (its own CA) and its key, PEM.
fn self_signed_server_test() -> (Vec<u8>, Vec<u8>) {
    use openssl::x509::{extension::SubjectAlternativeName, X509NameBuilder, X509};
    use openssl::{asn1::Asn1Time, bn::BigNum, ec, hash::MessageDigest, nid::Nid, pkey::PKey};
    let group = ec::EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(ec::EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "server.test").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns("server.test")
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (
        b.build().to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    )
}

#[test]
fn pki_client_reconnect_resumes_with_pki_server_and_both_print_it() {
    let (cert, key) = self_signed_server_test();
    let dir = std::env::temp_dir().join(format!("openssl-dtls-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_string_lossy().into_owned()
    };
    let cert_path = write("server.pem", &cert);
    let key_path = write("server.key", &key);
    let ca_path = cert_path.clone();
    for flags in [&["--session-cache", "16"][..], &["--tickets"][..]] {
        let mut args = vec!["--cert", &cert_path, "--key", &key_path];
        args.extend_from_slice(flags);
        let mut server = Server::start("pki_server", &args);
        let connect = server.addr.to_string();
        let out = run(
            "pki_client",
            &[
                "--connect",
                &connect,
                "--ca",
                &ca_path,
                "--server-name",
                "server.test",
                "--message",
                "again",
                "--reconnect",
                "2",
            ],
        );
        let (stdout, log) = (server.stdout(), server.stop());
        assert_eq!(
            out.status.code(),
            Some(0),
            "{flags:?}: {}\n{log}",
            out.stderr
        );
        assert_eq!(
            out.stdout.lines().collect::<Vec<_>>(),
            [
                "resumed: no",
                "again",
                "resumed: yes",
                "again",
                "resumed: yes",
                "again"
            ],
            "{flags:?}"
        );
        assert_eq!(
            stdout
                .lines()
                .filter(|l| l.starts_with("resumed: "))
                .count(),
            2,
            "{flags:?}: server stdout:\n{stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
