//! Section `storm`: an established connection's echo latency during a flood of new ECDSA
//! handshakes (issue 15, "Handshake storms"; keys `storm_p99_ratio`, `storm_full_p99_ratio`).
//!
//! One `DtlsServer` (blocking driver, ECDHE-ECDSA-AES128-GCM-SHA256, P-256) holds one
//! established connection that echoes 100-byte datagrams one in flight (`latency`, as in the
//! latency section). Its RTT p99 is measured idle, then during one of two floods:
//!
//! - **half-open** (`storm_p99_ratio`, the issue's "flood of new ECDSA handshakes at the server's
//!   capacity"): one flood thread keeps `BENCH_STORM_WINDOW` × `BENCH_STORM_K` handshakes
//!   outstanding, each from a fresh source port: a ClientHello, the cookie exchange, the
//!   ClientHello with the cookie, and, once the server's first flight arrives (its ECDHE key
//!   and ECDSA signature: the expensive half of a server handshake), the next handshake from a
//!   new port, after a fatal alert that ends the abandoned one about 1 s later (the server
//!   holds unauthenticated alerts back for a retransmission interval), so that the server's
//!   handshake table holds about the flood's rate × 1 s instead of filling up (where further
//!   handshakes would be refused before any cryptography). The ClientHellos are a real client's, replayed with a new random
//!   each time, so the flood costs the clients a few system calls a handshake and the server
//!   runs at its capacity: what an attacker with other machines does to a server.
//! - **full** (`storm_full_p99_ratio`, context): `BENCH_STORM_K` client threads (each
//!   `BENCH_STORM_WINDOW` sans-IO handshakes at once, `client_pool`) complete new ECDSA
//!   handshakes as fast as the server answers. Their own ECDHE and signature verification cost
//!   about as much as the server's side, on the same 2 cores: the flood reaches a fraction of
//!   the server's capacity and the clients' CPU competes with the echo (run to run the ratio
//!   moved between 0.8x and 3.8x: BENCHMARKS.md).
//!
//! Each with the default handshake worker (`EndpointConfig::handshake_workers` = 1 at
//! `handshake_worker_nice` 10: handshake steps and their flights off the threads that serve
//! established connections, yielding the CPU to them; the keys are these runs), with the
//! worker in `SCHED_IDLE` (`handshake_worker_idle_class`), at nice 0, and with 0 workers
//! (every handshake step inline in the driver).
//!
//! Environment: `BENCH_STORM_N` echoes per measurement (default 20000), `BENCH_STORM_K` full
//! flood threads (default 2), `BENCH_STORM_WINDOW` handshakes in flight per flood thread
//! (default 16); `BENCH_STORM_NICE_CLIENTS=1` runs the flood threads at nice 19, as a stand-in
//! for clients on other machines (they then take only the CPU the server leaves);
//! `BENCH_STORM_FLOOD=half-open` or `full` runs one flood, `BENCH_STORM_DEFAULT_ONLY=1` the
//! default worker settings only, `BENCH_STORM_IDLE_ONLY=1` the `SCHED_IDLE` worker only,
//! `BENCH_STORM_NICE_ONLY=1` the workers at the default nice value (no `SCHED_IDLE`) only;
//! `BENCH_STORM_FLOOD_COMPETES=1` runs the half-open flood's
//! thread at nice 0 instead of `SCHED_IDLE`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl_dtls::DtlsClient;

use super::{
    client_pool, env_usize, latency, our_client_ctx, our_server_ctx, roomy, start_server, Cert,
    Conn, Pair, Table, ECDSA,
};

/// What one storm run measured.
struct Storm {
    idle_p50: Duration,
    idle_p99: Duration,
    flood_p50: Duration,
    flood_p99: Duration,
    /// Flood handshakes completed per second while the flood echo was measured.
    handshakes_per_s: f64,
    /// Flood handshakes that failed on the client side.
    failed: usize,
    stats: openssl_dtls::EndpointStats,
}

/// The two floods (module docs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flood {
    HalfOpen,
    Full,
}

/// How the server runs its handshakes (`EndpointConfig`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Worker {
    /// The defaults: one worker, `handshake_worker_nice` and `handshake_worker_idle_class` as
    /// `EndpointConfig::default()` has them.
    Default,
    /// One worker at this nice value.
    Nice(i32),
    /// One worker in the `SCHED_IDLE` class.
    IdleClass,
    /// `handshake_workers = 0`: inline in the driver.
    Inline,
}

impl Worker {
    fn describe(self) -> String {
        let d = openssl_dtls::EndpointConfig::default();
        match self {
            Worker::Default if d.handshake_worker_idle_class => {
                "on a handshake worker (default: SCHED_IDLE)".to_owned()
            }
            Worker::Default => format!(
                "on a handshake worker (default: nice {})",
                d.handshake_worker_nice
            ),
            Worker::Nice(n) => format!("on a handshake worker at nice {n}"),
            Worker::IdleClass => {
                "on a handshake worker in SCHED_IDLE (handshake_worker_idle_class)".to_owned()
            }
            Worker::Inline => "inline in the driver (handshake_workers = 0)".to_owned(),
        }
    }
}

/// A real client's ClientHello (the first datagram of a sans-IO client session of `ctx`),
/// sent again by the half-open flood with a new random, and again with the server's cookie.
struct Hello {
    datagram: Vec<u8>,
    /// Offset of the cookie's length byte (empty in the first ClientHello).
    cookie_at: usize,
}

/// Record header 13 bytes, handshake header 12: where a ClientHello's body starts.
const BODY: usize = 13 + 12;

impl Hello {
    fn of(ctx: &openssl_dtls::DtlsClientContext) -> Hello {
        let mut session = ctx.new_session(None, Instant::now()).unwrap();
        let mut buf = vec![0u8; 2048];
        let n = session.poll_transmit(&mut buf).expect("a ClientHello");
        let datagram = buf[..n].to_vec();
        let be24 = |b: &[u8]| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
        assert_eq!((datagram[0], datagram[13]), (22, 1), "a ClientHello record");
        assert_eq!(
            be24(&datagram[14..17]),
            be24(&datagram[22..25]),
            "in one fragment"
        );
        // Body: version 2, random 32, session id (length byte + bytes), cookie (length byte).
        let cookie_at = BODY + 2 + 32 + 1 + usize::from(datagram[BODY + 34]);
        assert_eq!(datagram[cookie_at], 0, "no cookie yet");
        Hello {
            datagram,
            cookie_at,
        }
    }

    /// The ClientHello of handshake `n` (its own random), with `cookie` (empty: the first).
    fn build(&self, n: u64, cookie: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.datagram[..=self.cookie_at]);
        out.extend_from_slice(cookie);
        out.extend_from_slice(&self.datagram[self.cookie_at + 1..]);
        out[self.cookie_at] = cookie.len() as u8;
        out[BODY + 2 + 4..BODY + 2 + 12].copy_from_slice(&n.to_be_bytes());
        let body = out.len() - BODY;
        let with_cookie = !cookie.is_empty();
        // Record: sequence number 1 for the second ClientHello; its length.
        out[10] = u8::from(with_cookie);
        out[11..13].copy_from_slice(&((body + 12) as u16).to_be_bytes());
        // Handshake: message_seq 1 for the second ClientHello (RFC 6347 §4.2.2); the
        // message's and the fragment's length.
        out[17..19].copy_from_slice(&u16::from(with_cookie).to_be_bytes());
        let len = (body as u32).to_be_bytes();
        out[14..17].copy_from_slice(&len[1..]);
        out[22..25].copy_from_slice(&len[1..]);
    }
}

/// The cookie of a HelloVerifyRequest datagram, if it is one.
fn verify_request_cookie(d: &[u8]) -> Option<&[u8]> {
    if d.len() < BODY + 3 || d[0] != 22 || d[13] != 3 {
        return None;
    }
    let len = usize::from(d[BODY + 2]);
    d.get(BODY + 3..BODY + 3 + len)
}

/// The half-open flood (module docs) until `stop`: `window` handshakes outstanding, each from
/// a fresh socket; `flights` counts the server first flights received (handshakes the server
/// did its expensive half of), `timeouts` the handshakes that got no answer within 1 s (shed
/// by the server).
fn half_open_flood(
    addr: std::net::SocketAddr,
    hello: &Hello,
    window: usize,
    stop: &AtomicBool,
    flights: &AtomicUsize,
    timeouts: &AtomicUsize,
) {
    use std::os::fd::AsRawFd;
    struct Slot {
        socket: std::net::UdpSocket,
        n: u64,
        cookie_sent: bool,
        since: Instant,
    }
    let mut next = 0u64;
    let mut out = Vec::with_capacity(2048);
    let open = |next: &mut u64, out: &mut Vec<u8>| {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(addr).unwrap();
        socket.set_nonblocking(true).unwrap();
        *next += 1;
        hello.build(*next, &[], out);
        let _ = socket.send(out);
        Slot {
            socket,
            n: *next,
            cookie_sent: false,
            since: Instant::now(),
        }
    };
    let mut slots: Vec<Slot> = (0..window).map(|_| open(&mut next, &mut out)).collect();
    let mut buf = vec![0u8; 2048];
    while !stop.load(Relaxed) {
        let mut fds: Vec<libc::pollfd> = slots
            .iter()
            .map(|s| libc::pollfd {
                fd: s.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd entries for the duration of the
        // call, and each fd is an open socket owned by `slots`.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
        let now = Instant::now();
        for (i, fd) in fds.iter().enumerate() {
            let slot = &mut slots[i];
            let mut done = false;
            if fd.revents != 0 {
                while let Ok(n) = slot.socket.recv(&mut buf) {
                    if !slot.cookie_sent {
                        if let Some(cookie) = verify_request_cookie(&buf[..n]) {
                            hello.build(slot.n, cookie, &mut out);
                            let _ = slot.socket.send(&out);
                            slot.cookie_sent = true;
                            slot.since = now;
                        }
                    } else if buf[0] == 22 {
                        // The server's first flight: it did the expensive half. A fatal
                        // handshake_failure alert (epoch 0, record 2) ends the handshake (after
                        // the server's hold), so that the flood runs in a steady state instead
                        // of filling the server's handshake table (where further handshakes are
                        // refused before any cryptography). Next.
                        let alert = [21, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2, 2, 40];
                        let _ = slot.socket.send(&alert);
                        flights.fetch_add(1, Relaxed);
                        done = true;
                        break;
                    }
                }
            }
            if !done && now.duration_since(slot.since) > Duration::from_secs(1) {
                timeouts.fetch_add(1, Relaxed);
                done = true;
            }
            if done {
                *slot = open(&mut next, &mut out);
            }
        }
    }
}

fn storm(cert: &Cert, flood: Flood, worker: Worker, n: usize, k: usize, window: usize) -> Storm {
    // Room for the half-open flood's handshakes: each ends about 1 s after its alert (the
    // server holds an unauthenticated alert back for a retransmission interval, so that a
    // spoofed one cannot end a handshake), so about the flood's rate × 1 s are pending.
    let mut config = roomy(1 << 16);
    match worker {
        Worker::Default => {}
        Worker::Nice(nice) => {
            config.handshake_worker_nice = nice;
            config.handshake_worker_idle_class = false;
        }
        Worker::IdleClass => config.handshake_worker_idle_class = true,
        Worker::Inline => config.handshake_workers = 0,
    }
    let server = start_server(our_server_ctx(ECDSA, cert), config, None);
    let addr = server.server.local_addr();
    // The established connection, then an acceptor that drops the flood's connections.
    let s = Arc::clone(&server.server);
    let first = std::thread::spawn(move || s.accept().unwrap());
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let conn = client
        .connect(addr, &our_client_ctx(ECDSA), Duration::from_secs(5))
        .unwrap();
    let sconn = first.join().unwrap();
    let s = Arc::clone(&server.server);
    let acceptor = std::thread::spawn(move || while s.accept().is_ok() {});
    let server_side: Arc<dyn Conn> = Arc::new(sconn);
    let pair = Pair {
        client: Box::new(conn),
        server: server_side,
        _keep: Box::new(client),
    };
    let (idle_p50, idle_p99) = latency(&pair, 100, n);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let nice_clients = std::env::var_os("BENCH_STORM_NICE_CLIENTS").is_some();
    let threads = if flood == Flood::HalfOpen { 1 } else { k };
    let hello = Arc::new(Hello::of(&our_client_ctx(ECDSA)));
    let flooders: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, done, failed) = (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&failed));
            let hello = Arc::clone(&hello);
            std::thread::spawn(move || {
                if nice_clients {
                    // SAFETY: setpriority reads only its integer arguments; `who` 0 is this
                    // thread (Linux: the nice value is per thread).
                    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
                }
                if flood == Flood::HalfOpen {
                    // The half-open flood stands for clients on other machines: SCHED_IDLE, it
                    // runs on the CPU the server leaves, and any server thread that wakes
                    // preempts it at once (BENCH_STORM_FLOOD_COMPETES=1: nice 0 instead).
                    if std::env::var_os("BENCH_STORM_FLOOD_COMPETES").is_none() {
                        let param = libc::sched_param { sched_priority: 0 };
                        // SAFETY: `param` is a valid `sched_param` for the call; pid 0 is this
                        // thread.
                        unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
                    }
                    half_open_flood(addr, &hello, window * k, &stop, &done, &failed);
                    return;
                }
                let ctx = our_client_ctx(ECDSA);
                while !stop.load(Relaxed) {
                    let (d, f, _) = client_pool(&ctx, addr, window * 2, window, false);
                    done.fetch_add(d, Relaxed);
                    failed.fetch_add(f, Relaxed);
                }
            })
        })
        .collect();
    // Let the flood reach its pace before measuring.
    std::thread::sleep(Duration::from_millis(200));
    let (d0, t0) = (done.load(Relaxed), Instant::now());
    let (flood_p50, flood_p99) = latency(&pair, 100, n);
    let handshakes_per_s = (done.load(Relaxed) - d0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    for f in flooders {
        let _ = f.join();
    }
    let stats = server.server.stats();
    drop(pair);
    drop(server);
    let _ = acceptor.join();
    Storm {
        idle_p50,
        idle_p99,
        flood_p50,
        flood_p99,
        handshakes_per_s,
        failed: failed.load(Relaxed),
        stats,
    }
}

/// The `storm` section.
pub(super) fn storm_section(cert: &Cert, t: &mut Table) {
    let n = env_usize("BENCH_STORM_N", 20_000).max(1);
    let k = env_usize("BENCH_STORM_K", 2).max(1);
    let window = env_usize("BENCH_STORM_WINDOW", 16).max(1);
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    // BENCH_STORM_FLOOD=half-open or full: that flood only; BENCH_STORM_DEFAULT_ONLY=1: the
    // default worker settings only (for profiling).
    let only = std::env::var("BENCH_STORM_FLOOD").ok();
    let floods = [Flood::HalfOpen, Flood::Full].into_iter().filter(|f| {
        only.as_deref()
            .is_none_or(|o| (o == "full") == (*f == Flood::Full))
    });
    let default_only = std::env::var_os("BENCH_STORM_DEFAULT_ONLY").is_some();
    // BENCH_STORM_IDLE_ONLY=1: the SCHED_IDLE worker only (for comparisons).
    let idle_only = std::env::var_os("BENCH_STORM_IDLE_ONLY").is_some();
    // BENCH_STORM_NICE_ONLY=1: the workers at the default nice value, no `SCHED_IDLE`.
    let nice_only = std::env::var_os("BENCH_STORM_NICE_ONLY").is_some();
    let d = openssl_dtls::EndpointConfig::default();
    let other = if d.handshake_worker_idle_class {
        Worker::Nice(d.handshake_worker_nice)
    } else {
        Worker::IdleClass
    };
    for flood in floods {
        for worker in [Worker::Default, other, Worker::Nice(0), Worker::Inline] {
            if (default_only && worker != Worker::Default)
                || (idle_only && worker != Worker::IdleClass)
                || (nice_only && worker != Worker::Nice(d.handshake_worker_nice))
            {
                continue;
            }
            let r = storm(cert, flood, worker, n, k, window);
            let what = worker.describe();
            let (flood_what, done_what, failed_what) = match flood {
                Flood::HalfOpen => (
                    format!(
                        "a half-open ECDSA handshake flood at the server's capacity ({} outstanding, a fresh port each)",
                        k * window
                    ),
                    "server first flights/s (ECDHE + signature)",
                    "unanswered (shed)",
                ),
                Flood::Full => (
                    format!(
                        "a full ECDSA handshake flood by local clients ({k} threads × {window} in flight)"
                    ),
                    "handshakes/s completed",
                    "failed",
                ),
            };
            t.note(
                &format!(
                    "storm: echo RTT p50 / p99 (100 B, one in flight) during {flood_what}, handshakes {what}"
                ),
                format!(
                    "{:.0} / {:.0} µs; {:.0} {done_what}, {} {failed_what}, {} shed by the server (backlog {}, busy {}), {} pending at the end",
                    us(r.flood_p50),
                    us(r.flood_p99),
                    r.handshakes_per_s,
                    r.failed,
                    r.stats.refused_handshake_backlog + r.stats.dropped_handshake_busy,
                    r.stats.refused_handshake_backlog,
                    r.stats.dropped_handshake_busy,
                    r.stats.handshakes,
                ),
                &format!("idle {:.0} / {:.0} µs", us(r.idle_p50), us(r.idle_p99)),
                &format!("p99 {:.2}x", us(r.flood_p99) / us(r.idle_p99)),
            );
            if std::env::var_os("BENCH_DEBUG").is_some() {
                eprintln!("storm {flood:?}, {worker:?}: {:?}", r.stats);
            }
            if worker == Worker::Default {
                let (flood_p99, idle) = (us(r.flood_p99), us(r.idle_p99));
                let key = match flood {
                    Flood::HalfOpen => "storm_p99_ratio",
                    Flood::Full => "storm_full_p99_ratio",
                };
                t.key(key, flood_p99, idle, idle / flood_p99);
            }
        }
    }
}
