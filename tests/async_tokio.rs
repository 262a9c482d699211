//! The tokio drivers (`openssl_dtls::tokio`, feature `tokio`) over real UDP on loopback: many
//! concurrent clients, the cookie exchange, close from either side, the handshake timeout,
//! cancellation of pending futures, and interop with `openssl s_client` / `s_server`.
//!
//! Every wait is bounded with `tokio::time::timeout`, and every child process has a watchdog.

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use openssl_dtls::tokio::{DtlsClient, DtlsConnection, DtlsServer};
use openssl_dtls::{
    DtlsClientContext, DtlsServerContext, EndpointConfig, Error, PskCredentials, SocketOptions,
    TimeoutPhase,
};
use tokio::time::timeout;

const IDENTITY: &[u8] = b"Client_identity";
const KEY: &[u8] = b"secretPSK";
/// Every test's outer bound.
const TEST_LIMIT: Duration = Duration::from_secs(120);

fn server_ctx(handshake_timeout: Duration) -> DtlsServerContext {
    DtlsServerContext::builder()
        .psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
        .handshake_timeout(handshake_timeout)
        .retransmit_timeout(Duration::from_millis(100), Duration::from_millis(400))
        .build()
        .unwrap()
}

fn client_ctx() -> DtlsClientContext {
    DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(IDENTITY.to_vec(), KEY.to_vec()))
        .retransmit_timeout(Duration::from_millis(100), Duration::from_millis(400))
        .build()
        .unwrap()
}

fn roomy() -> EndpointConfig {
    let mut config = EndpointConfig::default();
    config.max_handshakes_per_ip = 1024;
    config.max_handshakes = 1024;
    config.handshake_memory = 1 << 30;
    config
}

async fn server_with(config: EndpointConfig, handshake_timeout: Duration) -> DtlsServer {
    DtlsServer::bind_with(
        "127.0.0.1:0",
        server_ctx(handshake_timeout),
        config,
        SocketOptions::default(),
    )
    .await
    .unwrap()
}

/// An echo server: a task accepting (through the `incoming` stream), a task per connection.
async fn echo_server(config: EndpointConfig) -> Arc<DtlsServer> {
    let server = Arc::new(server_with(config, Duration::from_secs(10)).await);
    let mut incoming = server.incoming();
    tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            let Ok(conn) = conn else { continue };
            tokio::spawn(echo(conn));
        }
    });
    server
}

async fn echo(conn: DtlsConnection) {
    let mut buf = [0u8; 2048];
    while let Ok(n @ 1..) = conn.recv(&mut buf).await {
        if conn.send(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// Polls `fut` exactly once: `Some` if it completed.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *fut).poll(cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    })
    .await
}

/// A connected pair: the client's connection and the server's accepted one.
async fn pair(server: &DtlsServer, client: &DtlsClient) -> (DtlsConnection, DtlsConnection) {
    let conn = client
        .connect(server.local_addr(), &client_ctx(), Duration::from_secs(5))
        .await
        .unwrap();
    let accepted = server
        .accept_timeout(Duration::from_secs(2))
        .await
        .unwrap()
        .expect("accepted");
    (conn, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_handshake_concurrently_and_echo_100_messages_each() {
    timeout(TEST_LIMIT, async {
        let server = echo_server(roomy()).await;
        let addr = server.local_addr();
        let ctx = Arc::new(client_ctx());
        let started = Instant::now();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let ctx = Arc::clone(&ctx);
                tokio::spawn(async move {
                    let client = DtlsClient::bind("127.0.0.1:0").await.unwrap();
                    let conn = client
                        .connect(addr, &ctx, Duration::from_secs(30))
                        .await
                        .unwrap();
                    let mut buf = [0u8; 2048];
                    let mut delivered = 0;
                    for j in 0..100u32 {
                        let msg = format!("client {i} message {j}");
                        conn.send(msg.as_bytes()).await.unwrap();
                        let n = conn
                            .recv_timeout(&mut buf, Duration::from_secs(10))
                            .await
                            .unwrap()
                            .expect("echo");
                        assert_eq!(&buf[..n], msg.as_bytes());
                        delivered += 1;
                    }
                    conn.close().await;
                    delivered
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let elapsed = started.elapsed();
        eprintln!(
            "200 clients x 100 echoes on tokio: {elapsed:?} ({:.0} echoes/s)",
            20_000.0 / elapsed.as_secs_f64()
        );
        assert_eq!(total, 200 * 100);
        let stats = server.stats();
        assert_eq!(stats.handshakes_completed, 200, "{stats:?}");
        assert!(
            stats.hello_verify_requests >= 200,
            "every client went through the cookie exchange: {stats:?}"
        );
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn close_from_the_client_ends_the_servers_recv_with_end_of_stream() {
    timeout(TEST_LIMIT, async {
        let server = server_with(EndpointConfig::default(), Duration::from_secs(5)).await;
        let client = DtlsClient::bind("127.0.0.1:0").await.unwrap();
        let (conn, accepted) = pair(&server, &client).await;
        assert_eq!(accepted.psk_identity(), Some(IDENTITY));
        assert_eq!(accepted.peer_addr(), client.local_addr());
        assert_eq!(accepted.cipher(), conn.cipher());
        assert_eq!(conn.protocol_version(), Some("DTLSv1.2"));
        assert!(accepted.data_mtu() > 1100);
        conn.close().await;
        let mut buf = [0u8; 64];
        assert_eq!(
            accepted
                .recv_timeout(&mut buf, Duration::from_secs(2))
                .await
                .unwrap(),
            Some(0)
        );
        assert!(accepted.is_closed());
        assert!(matches!(conn.send(b"x").await, Err(Error::Closed)));
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn close_from_the_server_ends_the_clients_recv_with_end_of_stream() {
    timeout(TEST_LIMIT, async {
        let server = server_with(EndpointConfig::default(), Duration::from_secs(5)).await;
        let client = DtlsClient::bind("127.0.0.1:0").await.unwrap();
        let (conn, accepted) = pair(&server, &client).await;
        accepted.send(b"server first").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(conn.recv(&mut buf).await.unwrap(), 12);
        accepted.close().await;
        assert_eq!(
            conn.recv_timeout(&mut buf, Duration::from_secs(2))
                .await
                .unwrap(),
            Some(0)
        );
        assert_eq!(conn.recv(&mut buf).await.unwrap(), 0, "end of stream stays");
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_connection() {
    timeout(TEST_LIMIT, async {
        let server = server_with(EndpointConfig::default(), Duration::from_secs(5)).await;
        let client = DtlsClient::bind("127.0.0.1:0").await.unwrap();
        let (conn, accepted) = pair(&server, &client).await;
        let mut buf = [0u8; 64];
        // A clone keeps it open.
        let clone = accepted.clone();
        drop(accepted);
        clone.send(b"still open").await.unwrap();
        assert_eq!(conn.recv(&mut buf).await.unwrap(), 10);
        drop(clone);
        assert_eq!(
            conn.recv_timeout(&mut buf, Duration::from_secs(2))
                .await
                .unwrap(),
            Some(0),
            "the server's close_notify arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stats = server.stats();
        assert_eq!((stats.connections, stats.handshakes), (0, 0), "{stats:?}");
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn closing_the_server_or_the_client_ends_every_connection() {
    timeout(TEST_LIMIT, async {
        let a = echo_server(EndpointConfig::default()).await;
        let b = echo_server(EndpointConfig::default()).await;
        let client = DtlsClient::bind("127.0.0.1:0").await.unwrap();
        let ctx = client_ctx();
        let ca = client
            .connect(a.local_addr(), &ctx, Duration::from_secs(5))
            .await
            .unwrap();
        let cb = client
            .connect(b.local_addr(), &ctx, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(ca.local_addr(), cb.local_addr());
        let mut buf = [0u8; 64];
        ca.send(b"to a").await.unwrap();
        cb.send(b"to b").await.unwrap();
        assert_eq!(ca.recv(&mut buf).await.unwrap(), 4);
        assert_eq!(&buf[..4], b"to a");
        assert_eq!(cb.recv(&mut buf).await.unwrap(), 4);
        assert_eq!(&buf[..4], b"to b");
        // Closing server a ends ca with end of stream; the client still talks to b.
        a.close().await;
        assert_eq!(
            ca.recv_timeout(&mut buf, Duration::from_secs(2))
                .await
                .unwrap(),
            Some(0)
        );
        assert!(matches!(a.accept().await, Err(Error::Closed)));
        cb.send(b"b again").await.unwrap();
        assert_eq!(cb.recv(&mut buf).await.unwrap(), 7);
        // Closing the client ends the rest.
        client.close().await;
        assert_eq!(cb.recv(&mut buf).await.unwrap(), 0);
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn a_handshake_with_a_silent_peer_times_out() {
    timeout(TEST_LIMIT, async {
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = DtlsClient::bind("127.0.0.1:0").await.unwrap();
        let started = Instant::now();
        let err = client
            .connect(
                silent.local_addr().unwrap(),
                &client_ctx(),
                Duration::from_millis(500),
            )
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    phase: TimeoutPhase::Connect,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        // The ClientHello was retransmitted on the endpoint's timer (no periodic ticks needed).
        let mut buf = [0u8; 2048];
        let mut hellos = 0;
        while let Ok(Ok(_)) = timeout(Duration::from_millis(10), silent.recv_from(&mut buf)).await {
            hellos += 1;
        }
        assert!(hellos >= 2, "{hellos} ClientHellos");
        let stats = client.stats();
        assert_eq!((stats.connections, stats.handshakes), (0, 0), "{stats:?}");
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn a_dropped_recv_loses_no_datagram() {
    timeout(TEST_LIMIT, async {
        let server = server_with(EndpointConfig::default(), Duration::from_secs(5)).await;
        let client = DtlsClient::bind("127.0.0.1:0").await.unwrap();
        let (conn, accepted) = pair(&server, &client).await;
        let mut buf = [0u8; 64];
        // A recv that times out (dropped mid-wait), then the datagram: the next recv gets it.
        assert_eq!(
            accepted
                .recv_timeout(&mut buf, Duration::from_millis(50))
                .await
                .unwrap(),
            None
        );
        assert!(timeout(Duration::from_millis(50), accepted.recv(&mut buf))
            .await
            .is_err());
        conn.send(b"first").await.unwrap();
        assert_eq!(accepted.recv(&mut buf).await.unwrap(), 5);
        assert_eq!(&buf[..5], b"first");

        // A recv polled once (registered as a waiter), woken by the datagram's arrival, and
        // dropped without being polled again: the datagram stays for the next recv.
        let mut other = [0u8; 64];
        {
            let mut pending = Box::pin(accepted.recv(&mut other));
            assert!(poll_once(&mut pending).await.is_none());
            conn.send(b"second").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(pending);
        }
        assert_eq!(
            accepted
                .recv_timeout(&mut buf, Duration::from_secs(2))
                .await
                .unwrap(),
            Some(6)
        );
        assert_eq!(&buf[..6], b"second");

        // The same through the datagram stream, with a dropped `next` in between.
        let mut datagrams = accepted.datagrams();
        assert!(timeout(Duration::from_millis(50), datagrams.next())
            .await
            .is_err());
        conn.send(b"third").await.unwrap();
        let got = timeout(Duration::from_secs(2), datagrams.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, b"third");
        conn.close().await;
        assert!(timeout(Duration::from_secs(2), datagrams.next())
            .await
            .unwrap()
            .is_none());
        assert_eq!(server.stats().recv_queue_dropped, 0);
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn a_dropped_accept_loses_no_connection() {
    timeout(TEST_LIMIT, async {
        let server = server_with(EndpointConfig::default(), Duration::from_secs(5)).await;
        let client = DtlsClient::bind("127.0.0.1:0").await.unwrap();
        {
            let mut pending = Box::pin(server.accept());
            assert!(poll_once(&mut pending).await.is_none());
            let _conn = client
                .connect(server.local_addr(), &client_ctx(), Duration::from_secs(5))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(pending);
            let accepted = timeout(Duration::from_secs(2), server.accept())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(accepted.peer_addr(), client.local_addr());
        }
        // The stream form: a dropped `next`, then the connection.
        let mut incoming = server.incoming();
        assert!(timeout(Duration::from_millis(50), incoming.next())
            .await
            .is_err());
        let client2 = DtlsClient::bind("127.0.0.1:0").await.unwrap();
        let _conn2 = client2
            .connect(server.local_addr(), &client_ctx(), Duration::from_secs(5))
            .await
            .unwrap();
        let accepted = timeout(Duration::from_secs(2), incoming.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(accepted.peer_addr(), client2.local_addr());
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connect_leaves_no_handshake_behind() {
    timeout(TEST_LIMIT, async {
        let handshake_timeout = Duration::from_millis(500);
        let server = server_with(roomy(), handshake_timeout).await;
        let ctx = client_ctx();
        let client = DtlsClient::bind("127.0.0.1:0").await.unwrap();
        // Dropped at once (only the ClientHello left), and after 1–9 ms at various points of
        // the handshake; from one shared socket and from fresh ones. The client's side is
        // released at once.
        let mut fresh_clients = Vec::new();
        for i in 0..20u64 {
            let fresh = DtlsClient::bind("127.0.0.1:0").await.unwrap();
            for c in [&client, &fresh] {
                let mut pending = Box::pin(c.connect(server.local_addr(), &ctx, TEST_LIMIT));
                match i {
                    // (On a busy machine even the first poll may find the handshake done.)
                    0 => drop(poll_once(&mut pending).await),
                    _ => {
                        let _ = timeout(Duration::from_millis(i % 10), &mut pending).await;
                    }
                }
                drop(pending);
                let stats = c.stats();
                assert_eq!(stats.handshakes, 0, "client {i}: {stats:?}");
                assert_eq!(stats.connections, 0, "client {i}: {stats:?}");
            }
            fresh_clients.push(fresh);
        }
        eprintln!("server after the drops: {:?}", server.stats());
        // Past the server's handshake deadline nothing half-open remains on either side.
        tokio::time::sleep(handshake_timeout + Duration::from_millis(500)).await;
        let stats = server.stats();
        assert_eq!(stats.handshakes, 0, "{stats:?}");
        for c in fresh_clients.iter().chain([&client]) {
            let stats = c.stats();
            assert_eq!((stats.connections, stats.handshakes), (0, 0), "{stats:?}");
        }
        // And the shared socket connects again.
        let conn = client
            .connect(server.local_addr(), &ctx, Duration::from_secs(5))
            .await
            .unwrap();
        let accepted = loop {
            // Connections the server completed before their client gave up come first.
            let c = server
                .accept_timeout(Duration::from_secs(2))
                .await
                .unwrap()
                .expect("accepted");
            if !c.is_closed() && c.peer_addr() == client.local_addr() {
                break c;
            }
        };
        conn.send(b"ok").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(accepted.recv(&mut buf).await.unwrap(), 2);
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn a_slow_reader_is_bounded_by_the_receive_queue_and_drops_are_counted() {
    timeout(TEST_LIMIT, async {
        let server = server_with(EndpointConfig::default(), Duration::from_secs(5)).await;
        let client = DtlsClient::bind("127.0.0.1:0").await.unwrap();
        let (conn, accepted) = pair(&server, &client).await;
        // 200 datagrams to a reader that does not read: the session keeps 64 (its default
        // queue), the rest are dropped and counted; nothing blocks the sender or the driver.
        for i in 0..200u32 {
            conn.send(&i.to_be_bytes()).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.stats().datagrams_in < 200 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let stats = server.stats();
        assert_eq!(stats.recv_queue_dropped, 200 - 64, "{stats:?}");
        let mut buf = [0u8; 16];
        for i in 0..64u32 {
            let n = accepted.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &i.to_be_bytes(), "the oldest are kept, in order");
        }
        assert_eq!(
            accepted
                .recv_timeout(&mut buf, Duration::from_millis(100))
                .await
                .unwrap(),
            None
        );
        // The connection is unharmed.
        conn.send(b"after").await.unwrap();
        assert_eq!(accepted.recv(&mut buf).await.unwrap(), 5);
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn an_idle_connection_ends_with_timeout_at_the_idle_deadline() {
    timeout(TEST_LIMIT, async {
        let mut config = EndpointConfig::default();
        config.idle_timeout = Some(Duration::from_millis(300));
        let server = server_with(config, Duration::from_secs(5)).await;
        let client = DtlsClient::bind("127.0.0.1:0").await.unwrap();
        let (_conn, accepted) = pair(&server, &client).await;
        let started = Instant::now();
        let mut buf = [0u8; 64];
        // Only the endpoint's deadline can wake the driver here: no traffic, no ticks.
        let err = accepted.recv(&mut buf).await.unwrap_err();
        assert!(matches!(err, Error::IdleTimeout { .. }), "{err:?}");
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(matches!(
            accepted.send(b"x").await,
            Err(Error::IdleTimeout { .. })
        ));
        let stats = server.stats();
        assert_eq!(
            (stats.idle_timeouts, stats.connections),
            (1, 0),
            "{stats:?}"
        );
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn incoming_and_datagrams_are_futures_core_streams() {
    use futures_core::Stream;
    async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
        std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
    }
    timeout(TEST_LIMIT, async {
        let server = server_with(EndpointConfig::default(), Duration::from_secs(5)).await;
        let mut incoming = server.incoming();
        let client = DtlsClient::bind("127.0.0.1:0").await.unwrap();
        let conn = client
            .connect(server.local_addr(), &client_ctx(), Duration::from_secs(5))
            .await
            .unwrap();
        let accepted = next(&mut incoming).await.unwrap().unwrap();
        let mut datagrams = accepted.datagrams();
        conn.send(b"one").await.unwrap();
        conn.send(b"two").await.unwrap();
        assert_eq!(next(&mut datagrams).await.unwrap().unwrap(), b"one");
        assert_eq!(next(&mut datagrams).await.unwrap().unwrap(), b"two");
        conn.close().await;
        assert!(next(&mut datagrams).await.is_none(), "end of stream");
        server.close().await;
        assert!(next(&mut incoming).await.is_none(), "the server closed");
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn ipv6_loopback_works() {
    timeout(TEST_LIMIT, async {
        let server = DtlsServer::bind("[::1]:0", server_ctx(Duration::from_secs(5)))
            .await
            .unwrap();
        let client = DtlsClient::bind("[::1]:0").await.unwrap();
        let (conn, accepted) = pair(&server, &client).await;
        assert!(accepted.peer_addr().is_ipv6());
        conn.send(b"over v6").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(accepted.recv(&mut buf).await.unwrap(), 7);
    })
    .await
    .expect("the test finished in time");
}

// ---------------------------------------------------------------------------------------------
// Interop with the `openssl` command line tool.

/// Panics with the package to install unless `openssl` runs.
fn require_openssl() {
    let ok = Command::new("openssl")
        .arg("version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = ok {
        panic!(
            "cannot run `openssl` ({e}): the interop tests need it. Install it with \
             `apt-get install openssl`"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A child process with collected output and a watchdog that kills it after `lifetime`.
struct Peer {
    child: Arc<Mutex<Child>>,
    stdin: Option<std::process::ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Peer {
    fn spawn(args: &[&str], lifetime: Duration) -> Peer {
        require_openssl();
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openssl");
        let stdin = child.stdin.take();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        for (mut src, dst) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                Arc::clone(&stdout),
            ),
            (Box::new(child.stderr.take().unwrap()), Arc::clone(&stderr)),
        ] {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = src.read(&mut buf) {
                    dst.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        let child = Arc::new(Mutex::new(child));
        let watched = Arc::downgrade(&child);
        std::thread::spawn(move || {
            std::thread::sleep(lifetime);
            if let Some(child) = watched.upgrade() {
                let _ = child.lock().unwrap().kill();
            }
        });
        Peer {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        // One write: s_client sends each read from stdin as its own record.
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&self.stdout.lock().unwrap()),
            String::from_utf8_lossy(&self.stderr.lock().unwrap())
        )
    }

    /// Waits until stdout contains `needle`, or `within` passes.
    async fn wait_stdout(&self, needle: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if String::from_utf8_lossy(&self.stdout.lock().unwrap()).contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Closes stdin and waits (bounded) for the process to exit.
    async fn finish(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.stdin = None;
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[tokio::test]
async fn interop_openssl_s_client_psk_against_the_async_server() {
    timeout(TEST_LIMIT, async {
        let server = server_with(EndpointConfig::default(), Duration::from_secs(10)).await;
        let port = server.local_addr().port().to_string();
        let connect = format!("127.0.0.1:{port}");
        let mut peer = Peer::spawn(
            &[
                "s_client",
                "-dtls1_2",
                "-connect",
                &connect,
                "-psk_identity",
                std::str::from_utf8(IDENTITY).unwrap(),
                "-psk",
                &hex(KEY),
                "-cipher",
                "PSK-AES128-CCM8",
                "-mtu",
                "1200",
            ],
            Duration::from_secs(45),
        );
        let accepted = timeout(Duration::from_secs(10), server.accept())
            .await
            .unwrap_or_else(|_| panic!("no handshake with s_client:\n{}", peer.output()))
            .unwrap();
        assert_eq!(accepted.psk_identity(), Some(IDENTITY));
        assert_eq!(accepted.cipher(), Some("PSK-AES128-CCM8"));
        // s_client -> us: one line, one record.
        peer.write_line("hello from s_client");
        let mut buf = [0u8; 2048];
        let n = timeout(Duration::from_secs(5), accepted.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("nothing from s_client:\n{}", peer.output()))
            .unwrap();
        assert!(
            buf[..n].starts_with(b"hello from s_client"),
            "{:?}",
            &buf[..n]
        );
        // us -> s_client.
        accepted.send(b"hello from tokio\n").await.unwrap();
        assert!(
            peer.wait_stdout("hello from tokio", Duration::from_secs(5))
                .await,
            "{}",
            peer.output()
        );
        // s_client's stdin ends: it sends close_notify, which reads as end of stream here.
        let _ = peer.finish(Duration::from_secs(5)).await;
        assert_eq!(
            accepted
                .recv_timeout(&mut buf, Duration::from_secs(5))
                .await
                .unwrap(),
            Some(0),
            "{}",
            peer.output()
        );
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test]
async fn interop_the_async_client_against_openssl_s_server_psk() {
    timeout(TEST_LIMIT, async {
        // s_server must be told its port: take a free one (retry if it was taken meanwhile).
        let mut attempt = 0;
        let (mut peer, addr, conn, client) = loop {
            attempt += 1;
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let peer = Peer::spawn(
                &[
                    "s_server",
                    "-dtls1_2",
                    "-accept",
                    &port.to_string(),
                    "-nocert",
                    "-psk_identity",
                    std::str::from_utf8(IDENTITY).unwrap(),
                    "-psk",
                    &hex(KEY),
                    "-cipher",
                    "PSK-AES128-CCM8",
                    "-mtu",
                    "1200",
                ],
                Duration::from_secs(45),
            );
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            // Give s_server a moment to bind, then connect (a connect before it listens
            // retransmits its ClientHello, so a short head start is enough).
            tokio::time::sleep(Duration::from_millis(200)).await;
            let client = DtlsClient::bind("127.0.0.1:0").await.unwrap();
            match client
                .connect(addr, &client_ctx(), Duration::from_secs(10))
                .await
            {
                Ok(conn) => break (peer, addr, conn, client),
                Err(e) if attempt < 3 => eprintln!("attempt {attempt}: {e}\n{}", peer.output()),
                Err(e) => panic!("no handshake with s_server: {e}\n{}", peer.output()),
            }
        };
        assert_eq!(conn.peer_addr(), addr);
        assert_eq!(conn.cipher(), Some("PSK-AES128-CCM8"));
        conn.send(b"hello from tokio\n").await.unwrap();
        assert!(
            peer.wait_stdout("hello from tokio", Duration::from_secs(5))
                .await,
            "{}",
            peer.output()
        );
        peer.write_line("hello from s_server");
        let mut buf = [0u8; 2048];
        let n = timeout(Duration::from_secs(5), conn.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("nothing from s_server:\n{}", peer.output()))
            .unwrap();
        // s_server sends the line without its newline (s_client keeps it).
        assert!(
            buf[..n].starts_with(b"hello from s_server"),
            "{:?}",
            &buf[..n]
        );
        conn.close().await;
        drop(client);
    })
    .await
    .expect("the test finished in time");
}

/// Compact connections on the tokio driver: the server's linger ends by the driver's own timer
/// when the client stays silent, and the connection then carries data both ways on a
/// multi-threaded runtime (sessions and their cipher contexts meet several worker threads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_connections_linger_ends_by_the_drivers_timer_and_data_flows() {
    timeout(TEST_LIMIT, async {
        let server_ctx = DtlsServerContext::builder()
            .psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
            .retransmit_timeout(Duration::from_millis(100), Duration::from_millis(400))
            .compact_connections(true)
            .compact_linger(Duration::from_millis(300))
            .build()
            .unwrap();
        let client_ctx = DtlsClientContext::builder()
            .psk_credentials(PskCredentials::new(IDENTITY.to_vec(), KEY.to_vec()))
            .retransmit_timeout(Duration::from_millis(100), Duration::from_millis(400))
            .compact_connections(true)
            .build()
            .unwrap();
        let server =
            DtlsServer::bind_with("127.0.0.1:0", server_ctx, roomy(), SocketOptions::default())
                .await
                .unwrap();
        let client = DtlsClient::bind("127.0.0.1:0").await.unwrap();
        let (conn, accepted) = tokio::join!(
            client.connect(server.local_addr(), &client_ctx, Duration::from_secs(10)),
            server.accept()
        );
        let (conn, accepted) = (conn.unwrap(), accepted.unwrap());
        assert_eq!(client.stats().compact_handoffs, 1);
        assert_eq!(server.stats().compact_handoffs, 0, "the server lingers");
        // Nobody sends: only the linger deadline can end it.
        let start = Instant::now();
        while server.stats().compact_handoffs == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the linger never ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(start.elapsed() >= Duration::from_millis(200));
        let echo_task = tokio::spawn(echo(accepted));
        let mut buf = [0u8; 2048];
        for i in 0..200u32 {
            let msg = format!("compact {i}");
            conn.send(msg.as_bytes()).await.unwrap();
            let n = timeout(Duration::from_secs(5), conn.recv(&mut buf))
                .await
                .expect("echo in time")
                .unwrap();
            assert_eq!(&buf[..n], msg.as_bytes());
        }
        conn.close().await;
        timeout(Duration::from_secs(5), echo_task)
            .await
            .expect("the echo task ends at close_notify")
            .unwrap();
    })
    .await
    .expect("test within its limit");
}
