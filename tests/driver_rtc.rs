//! The blocking driver's run-to-completion path over real UDP on loopback: the threads that wait
//! (`recv`, `connect`) drive the socket themselves. Many threads on one connection and
//! across connections while `accept` runs, close and shutdown while a thread polls the socket,
//! retransmissions while only application threads wait, and a one-way burst that arrives whole.
//! Every wait is bounded; nothing here asserts on time.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use openssl_dtls::{
    DtlsClient, DtlsClientContext, DtlsConnection, DtlsServer, DtlsServerContext, Error,
    PskCredentials,
};

const IDENTITY: &[u8] = b"Client_identity";
const KEY: &[u8] = b"secretPSK";
/// The bound on every wait: far beyond what a loaded machine needs, so only a hang fails.
const LIMIT: Duration = Duration::from_secs(20);

/// Tests that saturate the CPU or the loopback (a stream as fast as a sender can go) and tests
/// that need a reader to keep up do not run at the same time.
fn alone() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn server_ctx() -> DtlsServerContext {
    DtlsServerContext::builder()
        .psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
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

/// A server, its address, a client and one connection between them: (server, address,
/// client, the client's connection, the server's).
fn connected_pair() -> (
    DtlsServer,
    SocketAddr,
    DtlsClient,
    DtlsConnection,
    DtlsConnection,
) {
    let server = DtlsServer::bind("127.0.0.1:0", server_ctx()).unwrap();
    let addr = server.local_addr();
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let (conn, sconn) = thread::scope(|s| {
        let a = s.spawn(|| server.accept_timeout(LIMIT));
        let conn = client.connect(addr, &client_ctx(), LIMIT).unwrap();
        (conn, a.join().unwrap().unwrap().expect("accepted"))
    });
    (server, addr, client, conn, sconn)
}

/// A server whose accept thread keeps waiting and hands every connection to `serve`, on its own
/// thread.
fn server_with_accept_loop(
    serve: impl Fn(DtlsConnection) + Send + Sync + 'static,
) -> (Arc<DtlsServer>, thread::JoinHandle<()>) {
    let server = Arc::new(DtlsServer::bind("127.0.0.1:0", server_ctx()).unwrap());
    let s = Arc::clone(&server);
    let serve = Arc::new(serve);
    let acceptor = thread::spawn(move || {
        for conn in s.incoming() {
            let Ok(conn) = conn else { continue };
            let serve = Arc::clone(&serve);
            thread::spawn(move || serve(conn));
        }
    });
    (server, acceptor)
}

/// Echoes on `conn` with `threads` threads at once, each `recv` then `send`, until end of stream.
fn echo_with_threads(conn: DtlsConnection, threads: usize) {
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let conn = conn.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok(n @ 1..) = conn.recv(&mut buf) {
                    if conn.send(&buf[..n]).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

/// Runs `f` on a thread and returns its result, or panics if it does not finish within `LIMIT`.
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(LIMIT)
        .unwrap_or_else(|_| panic!("{what} did not return within {LIMIT:?}"))
}

#[test]
fn many_threads_send_and_recv_on_one_connection_and_across_connections_while_accept_runs() {
    const CLIENTS: usize = 3;
    const THREADS: usize = 3;
    const PER_THREAD: usize = 150;
    let (server, _acceptor) = server_with_accept_loop(|conn| echo_with_threads(conn, 2));
    let (server2, _acceptor2) = server_with_accept_loop(|conn| echo_with_threads(conn, 2));
    // One client socket with a connection to each server (they share its socket and its poller
    // role), and one more client socket per further connection: both layouts at once.
    let shared_client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let mut conns = vec![
        shared_client
            .connect(server.local_addr(), &client_ctx(), LIMIT)
            .unwrap(),
        shared_client
            .connect(server2.local_addr(), &client_ctx(), LIMIT)
            .unwrap(),
    ];
    let own_clients: Vec<_> = (0..CLIENTS - 1)
        .map(|_| DtlsClient::bind("127.0.0.1:0").unwrap())
        .collect();
    for client in &own_clients {
        conns.push(
            client
                .connect(server.local_addr(), &client_ctx(), LIMIT)
                .unwrap(),
        );
    }

    // Every thread sends tagged messages and receives whatever echo comes to its connection
    // (possibly another thread's): per connection, what came back is exactly what was sent.
    let mut checks = Vec::new();
    for (c, conn) in conns.iter().enumerate() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (conn, got) = (conn.clone(), Arc::clone(&got));
                thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    for i in 0..PER_THREAD {
                        let msg = format!("conn {c} thread {t} message {i}");
                        conn.send(msg.as_bytes()).unwrap();
                        let n = conn
                            .recv_timeout(&mut buf, LIMIT)
                            .unwrap()
                            .expect("an echo within the limit");
                        got.lock().unwrap().push(buf[..n].to_vec());
                    }
                })
            })
            .collect();
        checks.push((c, got, workers));
    }
    for (c, got, workers) in checks {
        for w in workers {
            w.join().unwrap();
        }
        let got: HashSet<Vec<u8>> = got.lock().unwrap().drain(..).collect();
        let sent: HashSet<Vec<u8>> = (0..THREADS)
            .flat_map(|t| {
                (0..PER_THREAD)
                    .map(move |i| format!("conn {c} thread {t} message {i}").into_bytes())
            })
            .collect();
        assert_eq!(got, sent, "connection {c}: every echo once");
    }
    for s in [&server, &server2] {
        assert_eq!(s.stats().recv_queue_dropped, 0);
    }
    assert_eq!(shared_client.stats().recv_queue_dropped, 0);
}

#[test]
fn closing_the_client_while_threads_wait_in_recv_wakes_every_waiter() {
    let (server, _acceptor) = server_with_accept_loop(|conn| echo_with_threads(conn, 1));
    let client = Arc::new(DtlsClient::bind("127.0.0.1:0").unwrap());
    let conn = client
        .connect(server.local_addr(), &client_ctx(), LIMIT)
        .unwrap();
    // Make sure the connection works, then park three threads in `recv` (one of them polls the
    // socket, the others wait on the connection's condition variable).
    conn.send(b"ping").unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(conn.recv_timeout(&mut buf, LIMIT).unwrap(), Some(4));
    let started = Arc::new(AtomicUsize::new(0));
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let (conn, started) = (conn.clone(), Arc::clone(&started));
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                started.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 64];
                let _ = tx.send(conn.recv(&mut buf));
            });
            rx
        })
        .collect();
    while started.load(Ordering::SeqCst) < 3 {
        thread::yield_now();
    }
    thread::sleep(Duration::from_millis(50)); // let them reach their waits (not required)
    bounded("client.close()", {
        let client = Arc::clone(&client);
        move || client.close()
    });
    for rx in waiters {
        let r = rx
            .recv_timeout(LIMIT)
            .expect("every recv returns once the client closed");
        assert!(
            matches!(r, Ok(0) | Err(_)),
            "end of stream or an error after close, got {r:?}"
        );
    }
    assert!(conn.is_closed());
}

#[test]
fn closing_the_server_while_accept_and_recv_threads_wait_wakes_every_waiter() {
    let server = Arc::new(DtlsServer::bind("127.0.0.1:0", server_ctx()).unwrap());
    let addr = server.local_addr();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    // First make two connections and keep the accepted ones.
    let acceptor = {
        let (server, accepted) = (Arc::clone(&server), Arc::clone(&accepted));
        thread::spawn(move || {
            for _ in 0..2 {
                accepted.lock().unwrap().push(server.accept().unwrap());
            }
        })
    };
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let client = DtlsClient::bind("127.0.0.1:0").unwrap();
            let conn = client.connect(addr, &client_ctx(), LIMIT).unwrap();
            (client, conn)
        })
        .collect();
    acceptor.join().unwrap();
    // Now: one thread in accept (on its condition variable), two in recv on each accepted
    // connection (one of them polls the socket, the others wait on their condition variable).
    let (tx, rx) = mpsc::channel::<String>();
    {
        let (server, tx) = (Arc::clone(&server), tx.clone());
        thread::spawn(move || {
            let r = server.accept();
            let _ = tx.send(format!("accept: {:?}", r.map(|_| ())));
        });
    }
    for conn in accepted.lock().unwrap().iter() {
        for _ in 0..2 {
            let (conn, tx) = (conn.clone(), tx.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 64];
                let r = conn.recv(&mut buf);
                let _ = tx.send(format!("recv: {r:?}"));
            });
        }
    }
    drop(tx);
    thread::sleep(Duration::from_millis(50)); // let them reach their waits (not required)
    bounded("server.close()", {
        let server = Arc::clone(&server);
        move || server.close()
    });
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(
            rx.recv_timeout(LIMIT)
                .expect("every waiter returns once the server closed"),
        );
    }
    assert!(
        outcomes.iter().any(|o| o == "accept: Err(Closed)"),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| o.as_str() == "recv: Ok(0)")
            .count(),
        4,
        "each recv reads end of stream: {outcomes:?}"
    );
    // The clients read the close_notify.
    for (_client, conn) in &clients {
        let mut buf = [0u8; 64];
        assert!(matches!(conn.recv_timeout(&mut buf, LIMIT), Ok(Some(0))));
    }
}

/// A relay between one client and the server that drops the first `drop_from_server`
/// datagrams the server sends: the handshake only completes if retransmission timers fire.
struct Relay {
    inside: SocketAddr,
    dropped: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(server: SocketAddr, drop_from_server: usize) -> Relay {
        let inside = UdpSocket::bind("127.0.0.1:0").unwrap();
        let outside = UdpSocket::bind("127.0.0.1:0").unwrap();
        inside
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        outside
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let dropped = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let relay = Relay {
            inside: inside.local_addr().unwrap(),
            dropped: Arc::clone(&dropped),
            stop: Arc::clone(&stop),
        };
        let (inside2, outside2) = (inside.try_clone().unwrap(), outside.try_clone().unwrap());
        let client_addr = Arc::new(Mutex::new(None::<SocketAddr>));
        let ca = Arc::clone(&client_addr);
        let st = Arc::clone(&stop);
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::SeqCst) {
                if let Ok((n, from)) = inside2.recv_from(&mut buf) {
                    *ca.lock().unwrap() = Some(from);
                    let _ = outside2.send_to(&buf[..n], server);
                }
            }
        });
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, _)) = outside.recv_from(&mut buf) {
                    if dropped.load(Ordering::SeqCst) < drop_from_server {
                        dropped.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    if let Some(to) = *client_addr.lock().unwrap() {
                        let _ = inside.send_to(&buf[..n], to);
                    }
                }
            }
        });
        relay
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn retransmission_timers_fire_while_only_application_threads_wait() {
    // The client's thread waits in connect: it polls the client's socket, and the client's
    // driver thread stays parked. The server's first two datagrams (its HelloVerifyRequest and
    // the one it answers the retransmitted ClientHello with) are lost: only the client's
    // retransmission timer, run by the connect thread's poll, recovers.
    let server = Arc::new(DtlsServer::bind("127.0.0.1:0", server_ctx()).unwrap());
    let relay = Relay::start(server.local_addr(), 2);
    let acceptor = {
        let server = Arc::clone(&server);
        thread::spawn(move || server.accept_timeout(LIMIT))
    };
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client.connect(relay.inside, &client_ctx(), LIMIT).unwrap();
    let sconn = acceptor.join().unwrap().unwrap().expect("accepted");
    assert_eq!(relay.dropped.load(Ordering::SeqCst), 2);
    // And the connection works both ways, each side's thread reading for itself.
    conn.send(b"after loss").unwrap();
    let mut buf = [0u8; 64];
    let n = sconn.recv_timeout(&mut buf, LIMIT).unwrap().expect("data");
    assert_eq!(&buf[..n], b"after loss");
    sconn.send(b"back").unwrap();
    let n = conn.recv_timeout(&mut buf, LIMIT).unwrap().expect("data");
    assert_eq!(&buf[..n], b"back");
}

#[test]
fn a_one_way_burst_arrives_whole_when_the_reader_keeps_up() {
    // 20,000 datagrams of 1100 B (within the default data MTU) sent as fast as the sender can,
    // with at most WINDOW not yet read (the reader keeps up: the socket buffer holds a window
    // many times over). All arrive, and the server's statistics show no drop.
    let _alone = alone();
    const N: usize = 20_000;
    const SIZE: usize = 1100;
    const WINDOW: usize = 1024;
    let (server, _addr, _client, conn, sconn) = connected_pair();
    let (progress_tx, progress_rx) = mpsc::channel::<usize>();
    let reader = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        // A first datagram makes this thread the connection's reader before the burst.
        if sconn.recv_timeout(&mut buf, LIMIT).ok().flatten() != Some(5) {
            return (Err("no start".to_owned()), sconn);
        }
        let _ = progress_tx.send(0);
        let mut got = 0usize;
        while got < N {
            match sconn.recv_timeout(&mut buf, LIMIT) {
                Ok(Some(SIZE)) => got += 1,
                other => return (Err(format!("datagram {got}: {other:?}")), sconn),
            }
            if got % 64 == 0 {
                let _ = progress_tx.send(got);
            }
        }
        (Ok(got), sconn)
    });
    conn.send(b"start").unwrap();
    progress_rx.recv_timeout(LIMIT).expect("the reader starts");
    let msg = [0x5au8; SIZE];
    let mut read = 0usize;
    for sent in 0..N {
        while sent >= read + WINDOW {
            read = progress_rx.recv_timeout(LIMIT).unwrap_or_else(|_| {
                panic!(
                    "the reader makes progress: {read} read of {sent} sent, {:?}",
                    server.stats()
                )
            });
        }
        conn.send(&msg).unwrap();
    }
    // The connection stays open until the statistics are read: they count its drops.
    let (got, _sconn) = reader.join().unwrap();
    let stats = server.stats();
    assert_eq!(got, Ok(N), "{stats:?}");
    assert_eq!(stats.recv_queue_dropped, 0, "{stats:?}");
    assert_eq!(stats.socket_rx_dropped, 0, "{stats:?}");
    assert!(stats.datagrams_in >= N as u64);
}

#[test]
fn recv_timeout_on_an_idle_connection_gives_up_and_the_next_recv_still_gets_data() {
    // A thread polling the socket for its own deadline leaves the role when the deadline
    // passes; the driver thread (after its linger) and the next waiter carry on.
    let (server, _acceptor) = server_with_accept_loop(|conn| echo_with_threads(conn, 1));
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(server.local_addr(), &client_ctx(), LIMIT)
        .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(
        conn.recv_timeout(&mut buf, Duration::from_millis(30))
            .unwrap(),
        None
    );
    // Data that arrives while nobody waits is read by the driver thread and queued.
    conn.send(b"one").unwrap();
    thread::sleep(Duration::from_millis(100));
    assert_eq!(conn.recv_timeout(&mut buf, LIMIT).unwrap(), Some(3));
    conn.send(b"two").unwrap();
    assert_eq!(conn.recv_timeout(&mut buf, LIMIT).unwrap(), Some(3));
    assert!(!matches!(
        conn.recv_timeout(&mut buf, Duration::ZERO),
        Err(Error::Closed)
    ));
}

#[test]
fn when_nobody_reads_every_datagram_is_received_or_counted_as_dropped() {
    // A burst nobody reads while it arrives: the driver thread queues what fits, the rest is
    // dropped at the connection's queue or at the socket, or the sender could not send it.
    // Every datagram shows up in exactly one place.
    const N: usize = 5_000;
    let (server, _addr, client, conn, sconn) = connected_pair();
    let msg = [0x5au8; 1000];
    for _ in 0..N {
        conn.send(&msg).unwrap();
    }
    // Then read until nothing more comes (the driver thread has queued all it will).
    let mut buf = [0u8; 2048];
    let mut got = 0u64;
    while let Ok(Some(_)) = sconn.recv_timeout(&mut buf, Duration::from_millis(500)) {
        got += 1;
    }
    let (s, c) = (server.stats(), client.stats());
    assert_eq!(
        got + s.recv_queue_dropped
            + s.socket_rx_dropped
            + (c.socket_send_errors + c.socket_send_full),
        N as u64,
        "received {got}; server {s:?}; client {c:?}"
    );
    assert!(got > 0);
}

#[test]
fn a_stalled_reader_with_a_full_queue_delays_other_peers_only_boundedly_and_its_drops_are_counted()
{
    // Connection A's server thread reads one record, then stalls while its client sends a burst
    // far beyond A's queue. Connection B, on the same server socket, keeps echoing meanwhile:
    // the socket is left unread for A's sake only for a bounded pause, so every one of B's
    // round trips completes. A's records are all received or counted as dropped.
    const BURST: usize = 3_000;
    let server = Arc::new(DtlsServer::bind("127.0.0.1:0", server_ctx()).unwrap());
    let addr = server.local_addr();
    let accept_two = {
        let server = Arc::clone(&server);
        thread::spawn(move || {
            let a = server.accept_timeout(LIMIT).unwrap().expect("A");
            let b = server.accept_timeout(LIMIT).unwrap().expect("B");
            (a, b)
        })
    };
    let client_a = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn_a = client_a.connect(addr, &client_ctx(), LIMIT).unwrap();
    let client_b = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn_b = client_b.connect(addr, &client_ctx(), LIMIT).unwrap();
    let (sconn_a, sconn_b) = accept_two.join().unwrap();
    // Tell the two server connections apart by what arrives on them.
    conn_a.send(b"A").unwrap();
    conn_b.send(b"B").unwrap();
    let mut buf = [0u8; 2048];
    let (sconn_a, sconn_b) = match sconn_a.recv_timeout(&mut buf, LIMIT).unwrap() {
        Some(1) if buf[0] == b'A' => (sconn_a, sconn_b),
        _ => (sconn_b, sconn_a),
    };
    let _ = sconn_b.recv_timeout(&mut buf, LIMIT).unwrap();
    // A is the connection read last: the one whose queue the pause protects.
    conn_a.send(b"A2").unwrap();
    assert_eq!(sconn_a.recv_timeout(&mut buf, LIMIT).unwrap(), Some(2));
    let echo_b = thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok(Some(n @ 1..)) = sconn_b.recv_timeout(&mut buf, LIMIT) {
            if sconn_b.send(&buf[..n]).is_err() {
                break;
            }
        }
    });
    // A's reader stalls.
    let stalled = Arc::new(AtomicBool::new(true));
    let reader_a = {
        let stalled = Arc::clone(&stalled);
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while stalled.load(Ordering::SeqCst) {
                thread::park_timeout(Duration::from_millis(10));
            }
            let mut got = 0u64;
            while let Ok(Some(_)) = sconn_a.recv_timeout(&mut buf, Duration::from_millis(500)) {
                got += 1;
            }
            (got, sconn_a)
        })
    };
    let msg = [0x5au8; 1000];
    for _ in 0..BURST {
        conn_a.send(&msg).unwrap();
    }
    // B's round trips while A stalls with a full queue.
    let mut back = [0u8; 64];
    for i in 0..20u8 {
        conn_b.send(&[i]).unwrap();
        let n = conn_b
            .recv_timeout(&mut back, LIMIT)
            .unwrap()
            .expect("B's echo arrives while A's reader stalls");
        assert_eq!(&back[..n], &[i]);
    }
    stalled.store(false, Ordering::SeqCst);
    let (got, _sconn_a) = reader_a.join().unwrap();
    let (s, c) = (server.stats(), client_a.stats());
    assert_eq!(
        got + s.recv_queue_dropped
            + s.socket_rx_dropped
            + (c.socket_send_errors + c.socket_send_full),
        BURST as u64,
        "A received {got}; server {s:?}; client {c:?}"
    );
    drop(conn_b);
    let _ = echo_b.join();
}

#[test]
fn a_thread_polling_the_clients_socket_moves_with_rebind() {
    // A thread waits in recv (polling the client's socket) while the client moves to a new
    // socket: the rebind kicks it onto the new one, where the echo of what is sent after the
    // move arrives (the server follows the connection by its Connection ID).
    let mut sctx = DtlsServerContext::builder();
    sctx.psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
        .connection_id(8);
    let (server, _acceptor) = {
        let server = Arc::new(DtlsServer::bind("127.0.0.1:0", sctx.build().unwrap()).unwrap());
        let s = Arc::clone(&server);
        let t = thread::spawn(move || {
            for conn in s.incoming() {
                let Ok(conn) = conn else { continue };
                thread::spawn(move || echo_with_threads(conn, 1));
            }
        });
        (server, t)
    };
    let mut cctx = DtlsClientContext::builder();
    cctx.psk_credentials(PskCredentials::new(IDENTITY.to_vec(), KEY.to_vec()))
        .connection_id(0);
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(server.local_addr(), &cctx.build().unwrap(), LIMIT)
        .unwrap();
    let mut buf = [0u8; 64];
    conn.send(b"before").unwrap();
    assert_eq!(conn.recv_timeout(&mut buf, LIMIT).unwrap(), Some(6));
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let conn = conn.clone();
        thread::spawn(move || {
            let _ = tx.send(());
            let mut buf = [0u8; 64];
            conn.recv_timeout(&mut buf, LIMIT)
                .map(|n| n.map(|n| buf[..n].to_vec()))
        })
    };
    rx.recv_timeout(LIMIT).unwrap();
    thread::sleep(Duration::from_millis(50)); // let it reach its poll (not required)
    let old = client.local_addr();
    assert_ne!(client.rebind("127.0.0.1:0").unwrap(), old);
    conn.send(b"moved").unwrap();
    assert_eq!(
        waiter.join().unwrap().unwrap().as_deref(),
        Some(&b"moved"[..])
    );
    assert_eq!(server.stats().cid_moves, 1);
}

#[test]
fn a_handshake_completes_while_a_reader_takes_a_stream_that_never_lets_up() {
    // One connection streams one way as fast as its sender can while its reader, the only
    // thread waiting on the server, always finds its next record already in the socket: it
    // takes each back at once and leaves other peers' work behind (the handshake datagrams it
    // read, due timers). That work must still be done: a second client's handshake completes
    // while the stream runs (it timed out when the reader left that work for as long as its
    // records kept coming). The sender is faster than the reader, so the stream's overflow is
    // dropped and counted; that is not what this test is about.
    let _alone = alone();
    const SIZE: usize = 1000;
    let (server, addr, _client, conn, sconn) = connected_pair();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, received) = (Arc::clone(&stop), Arc::clone(&received));
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                if let Ok(Some(SIZE)) = sconn.recv_timeout(&mut buf, Duration::from_millis(200)) {
                    received.fetch_add(1, Ordering::SeqCst);
                }
            }
            sconn
        })
    };
    let sender = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let msg = [0x5au8; SIZE];
            let mut sent = 0usize;
            while !stop.load(Ordering::SeqCst) {
                // Runs of 32: the socket holds the reader's next record most of the time.
                let run: Vec<&[u8]> = vec![&msg[..]; 32];
                if conn.send_many(&run).is_err() {
                    break;
                }
                sent += 32;
            }
            (sent, conn)
        })
    };
    // Let the stream get going, then a second device connects while it runs.
    while received.load(Ordering::SeqCst) < 1000 {
        thread::sleep(Duration::from_millis(1));
    }
    let second = DtlsClient::bind("127.0.0.1:0").unwrap();
    let connected = second.connect(addr, &client_ctx(), LIMIT);
    let during = received.load(Ordering::SeqCst);
    let accepted = server.accept_timeout(LIMIT);
    stop.store(true, Ordering::SeqCst);
    let (sent, _conn) = sender.join().unwrap();
    let _sconn = reader.join().unwrap();
    let stats = server.stats();
    assert!(connected.is_ok(), "{connected:?}; {stats:?}");
    assert!(matches!(accepted, Ok(Some(_))), "{accepted:?}; {stats:?}");
    // The stream ran while the handshake did, and the handshake's datagrams waited behind it.
    assert!(
        during > 1000 && sent >= during,
        "{during} of {sent}; {stats:?}"
    );
    assert!(stats.handshake_datagrams_deferred >= 2, "{stats:?}");
}
