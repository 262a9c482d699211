//! Section `storm`: an established connection's echo latency during a flood of new ECDSA
//! handshakes (issue 15, "Handshake storms"; key `storm_p99_ratio`).
//!
//! One `DtlsServer` (blocking driver, ECDHE-ECDSA-AES128-GCM-SHA256, P-256) holds one
//! established connection that echoes 100-byte datagrams one in flight (`latency`, as in the
//! latency section). Its RTT p99 is measured idle, then while `BENCH_STORM_K` client threads
//! (each `BENCH_STORM_WINDOW` sans-IO handshakes at once, `client_pool`) complete new ECDSA
//! handshakes with the same server as fast as it answers. Run with the default handshake worker
//! (`EndpointConfig::handshake_workers` = 1 at `handshake_worker_nice` 10: handshake steps off
//! the driver thread, yielding the CPU to it; the key `storm_p99_ratio` is this run), with the
//! worker at nice 0, and with 0 workers (every handshake step inline in the driver, as before).
//!
//! Environment: `BENCH_STORM_N` echoes per measurement (default 20000), `BENCH_STORM_K` flood
//! threads (default 2), `BENCH_STORM_WINDOW` handshakes in flight per flood thread (default 16);
//! `BENCH_STORM_NICE_CLIENTS=1` runs the flood threads at nice 19, as a stand-in for clients on
//! other machines (they then take only the CPU the server leaves).
//! The clients share the machine's cores with the server: the flood's own CPU (ECDHE and
//! signature verification on the client side) competes with the echo, which is part of what the
//! ratio shows on a 2-core machine.

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

fn storm(cert: &Cert, workers: usize, nice: i32, n: usize, k: usize, window: usize) -> Storm {
    let mut config = roomy(k * window * 4);
    config.handshake_workers = workers;
    config.handshake_worker_nice = nice;
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
    let flooders: Vec<_> = (0..k)
        .map(|_| {
            let (stop, done, failed) = (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&failed));
            std::thread::spawn(move || {
                if nice_clients {
                    // SAFETY: setpriority reads only its integer arguments; `who` 0 is this
                    // thread (Linux: the nice value is per thread).
                    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
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
    let default_nice = openssl_dtls::EndpointConfig::default().handshake_worker_nice;
    for (workers, nice) in [(1, default_nice), (1, 0), (0, 0)] {
        let r = storm(cert, workers, nice, n, k, window);
        let what = match (workers, nice) {
            (0, _) => "inline in the driver (handshake_workers = 0)".to_owned(),
            (_, nice) if nice == default_nice => {
                format!("on a handshake worker (default: nice {nice})")
            }
            (_, nice) => format!("on a handshake worker at nice {nice} (handshake_worker_nice)"),
        };
        t.note(
            &format!(
                "storm: echo RTT p50 / p99 (100 B, one in flight) during an ECDSA handshake flood ({k} threads × {window} in flight), handshakes {what}"
            ),
            format!(
                "{:.0} / {:.0} µs; {:.0} handshakes/s completed, {} failed, {} shed (backlog {}, busy {})",
                us(r.flood_p50),
                us(r.flood_p99),
                r.handshakes_per_s,
                r.failed,
                r.stats.refused_handshake_backlog + r.stats.dropped_handshake_busy,
                r.stats.refused_handshake_backlog,
                r.stats.dropped_handshake_busy,
            ),
            &format!("idle {:.0} / {:.0} µs", us(r.idle_p50), us(r.idle_p99)),
            &format!("p99 {:.2}x", us(r.flood_p99) / us(r.idle_p99)),
        );
        if std::env::var_os("BENCH_DEBUG").is_some() {
            eprintln!("storm, {workers} workers, nice {nice}: {:?}", r.stats);
        }
        if (workers, nice) == (1, default_nice) {
            let (flood, idle) = (us(r.flood_p99), us(r.idle_p99));
            t.key("storm_p99_ratio", flood, idle, idle / flood);
        }
    }
}
