//! Section `shards`: the same client load against one `DtlsServer` with 2 endpoint shards
//! (`SocketOptions::shards = 2`) and with 1, interleaved, best of `BENCH_SHARDS_REPS` rounds:
//!
//! - `shards_2_hs_scaling`: PSK handshakes/s, `BENCH_SHARDS_HS` handshakes (default 4000) from
//!   `BENCH_SHARDS_HS_THREADS` client threads (default 2), `BENCH_HS_WINDOW` in flight each
//!   (each handshake from its own socket, so the kernel spreads them over the shards);
//! - `shards_2_echo_scaling`: echoes/s of `BENCH_SHARDS_CLIENTS` connections (default 8, one
//!   client thread and one `DtlsClient` each, 16 echoes in flight), `BENCH_SHARDS_ECHO` echoes in
//!   all (default 100000), 100 bytes; the server echoes on a thread per connection.
//!
//! The clients run on the same 2 cores as the server: every core a second shard could use is
//! also wanted by a client, so the ceiling here is well under 2x (the rows say so).

use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl_dtls::{DtlsClient, DtlsServer, EndpointConfig, SocketOptions};

use super::{
    client_pool, env_usize, our_client_ctx, our_server_ctx, roomy, Cert, Sizes, Table, PSK,
};

/// A PSK server with `shards` shards and a thread per accepted connection echoing.
fn echo_server(cert: &Cert, shards: usize, config: EndpointConfig) -> Arc<DtlsServer> {
    let mut socket = SocketOptions::default();
    socket.shards = shards;
    let server = Arc::new(
        DtlsServer::bind_with("127.0.0.1:0", our_server_ctx(PSK, cert), config, socket).unwrap(),
    );
    let s = Arc::clone(&server);
    std::thread::spawn(move || {
        while let Ok(conn) = s.accept() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok(n @ 1..) = conn.recv(&mut buf) {
                    if conn.send(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    server
}

/// Handshakes/s with `shards` shards: `n` PSK handshakes from `threads` client threads.
fn hs_rate(cert: &Cert, shards: usize, n: usize, threads: usize, window: usize) -> (f64, usize) {
    let mut socket = SocketOptions::default();
    socket.shards = shards;
    let server = Arc::new(
        DtlsServer::bind_with(
            "127.0.0.1:0",
            our_server_ctx(PSK, cert),
            roomy(window * threads * 4),
            socket,
        )
        .unwrap(),
    );
    let s = Arc::clone(&server);
    let acceptor = std::thread::spawn(move || while s.accept().is_ok() {});
    let to = server.local_addr();
    let ctx = our_client_ctx(PSK);
    // Warm-up, not counted.
    client_pool(&ctx, to, window, window, false);
    let per_thread = (n / threads).max(1);
    let t0 = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let ctx = ctx.clone();
            std::thread::spawn(move || client_pool(&ctx, to, per_thread, window, false))
        })
        .collect();
    let (mut done, mut failed) = (0, 0);
    for w in workers {
        let (d, f, _) = w.join().unwrap();
        done += d;
        failed += f;
    }
    let rate = done as f64 / t0.elapsed().as_secs_f64();
    server.close();
    let _ = acceptor.join();
    (rate, failed)
}

/// Echoes/s with `shards` shards: `clients` connections, each its own client thread keeping
/// 16 100-byte echoes in flight, `n` echoes in all.
fn echo_rate(cert: &Cert, shards: usize, clients: usize, n: usize) -> f64 {
    let server = echo_server(cert, shards, roomy(clients));
    let rate = echo_clients(server.local_addr(), &our_client_ctx(PSK), clients, n);
    server.close();
    rate
}

/// Echoes/s of an echo server at `to`: `clients` connections made with `ctx`, each its own
/// client thread keeping 16 100-byte echoes in flight, `n` echoes in all (a lost echo's place
/// in the window goes to a new one).
pub(super) fn echo_clients(
    to: std::net::SocketAddr,
    ctx: &openssl_dtls::DtlsClientContext,
    clients: usize,
    n: usize,
) -> f64 {
    const WINDOW: usize = 16;
    let per_client = (n / clients).max(WINDOW);
    let ready = Arc::new(std::sync::Barrier::new(clients + 1));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (ready, ctx) = (Arc::clone(&ready), ctx.clone());
            std::thread::spawn(move || {
                let client = DtlsClient::bind("127.0.0.1:0").unwrap();
                let conn = client.connect(to, &ctx, Duration::from_secs(10)).unwrap();
                let msg = [7u8; 100];
                let mut buf = [0u8; 2048];
                ready.wait();
                let (mut sent, mut got) = (0, 0);
                while got < per_client {
                    while sent < per_client && sent - got < WINDOW {
                        conn.send(&msg).unwrap();
                        sent += 1;
                    }
                    match conn.recv_timeout(&mut buf, Duration::from_millis(200)) {
                        Ok(Some(_)) => got += 1,
                        Ok(None) => sent = got,
                        Err(e) => panic!("echo client: {e}"),
                    }
                }
                got
            })
        })
        .collect();
    ready.wait();
    let t0 = Instant::now();
    let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    total as f64 / t0.elapsed().as_secs_f64()
}

pub(super) fn section(sizes: &Sizes, t: &mut Table, cert: &Cert) {
    let hs_n = env_usize("BENCH_SHARDS_HS", 4000);
    let hs_threads = env_usize("BENCH_SHARDS_HS_THREADS", 2).max(1);
    let clients = env_usize("BENCH_SHARDS_CLIENTS", 8).max(1);
    let echo_n = env_usize("BENCH_SHARDS_ECHO", 100_000);
    let reps = env_usize("BENCH_SHARDS_REPS", 3).max(1);
    let window = sizes.hs_window.max(1);
    let (mut hs, mut echo) = ([0f64; 2], [0f64; 2]);
    let mut failed = 0;
    // Interleaved, best of each: noise on a shared machine only slows a round down.
    for _ in 0..reps {
        for (i, shards) in [1, 2].into_iter().enumerate() {
            let (rate, f) = hs_rate(cert, shards, (hs_n / reps).max(1), hs_threads, window);
            hs[i] = hs[i].max(rate);
            failed += f;
            echo[i] = echo[i].max(echo_rate(cert, shards, clients, (echo_n / reps).max(1)));
        }
    }
    t.keyed_row(
        "shards_2_hs_scaling",
        &format!(
            "{PSK}: wall handshakes/s, 2 shards vs 1 ({hs_threads} client threads x {window} in \
             flight on the same 2 cores as the server; {failed} failed)"
        ),
        hs[1],
        hs[0],
        "/s",
        true,
    );
    t.keyed_row(
        "shards_2_echo_scaling",
        &format!(
            "echo 100 B: echoes/s of {clients} connections (a client thread each, 16 in flight; \
             a server thread per connection), 2 shards vs 1, clients on the same 2 cores"
        ),
        echo[1],
        echo[0],
        "/s",
        true,
    );
}
