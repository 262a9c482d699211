//! Section `batch`: one-way 1,200-byte datagrams with batching (`key batched_1200`).
//!
//! Ours: our client's [`DtlsConnection::send_many`] (sealed under one lock, `sendmmsg` with UDP
//! GSO for the equal sizes) to our server, whose driver receives with `recvmmsg` (and GRO);
//! the server application reads each datagram with `recv`. Reference: the naive plain-UDP loop,
//! one `send_to` per datagram and one `recv_from` per datagram, the same count. A second
//! reference row shows what the kernel can do: plain UDP with `sendmmsg`/`recvmmsg` in batches
//! of the same size. Each figure is datagrams per second at the receiver, from the first
//! datagram received to the last; what did not arrive is printed beside it.
//!
//! The application keeps up: every sender stops while [`WINDOW`] datagrams
//! (`BENCH_BATCH_WINDOW`) are in flight
//! (sent, not yet received by the application), and our server's sessions queue up to
//! [`RECV_QUEUE`] received datagrams, so the figures are rates without loss, not the limits of
//! a queue. The same window holds for the references.
//!
//! Sizes: `BENCH_BATCH_N` datagrams (default 200,000), sent `BENCH_BATCH_CHUNK` at a time
//! (default 32).

use std::mem::size_of;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl_dtls::{
    DtlsClient, DtlsConnection, DtlsServerContext, EndpointConfig, SessionConfig, SocketOptions,
};

use super::{
    env_usize, our_client_ctx_mtu, plain_socket, roomy, start_server, Table, IDENTITY, KEY,
    OSSL_ALLOCS, PSK, RUST_ALLOCS, TP_MTU, TRACE, TRACES,
};

const SIZE: usize = 1200;
/// Datagrams a sender lets be in flight before it waits for the receiver (`BENCH_BATCH_WINDOW`
/// overrides it, up to 65,536).
const WINDOW: usize = 4096;
/// Our server session's receive queue: more than the window.
const RECV_QUEUE: usize = 2 * 65_536;

fn window() -> usize {
    env_usize("BENCH_BATCH_WINDOW", WINDOW).clamp(1, 65_536)
}
/// How long the receiver waits for more once datagrams stopped coming.
const QUIET: Duration = Duration::from_millis(300);

/// Counts what arrives through `recv` (into `received`) until `n` did or nothing came for
/// [`QUIET`]: (got, seconds from the first to the last).
fn count(
    n: usize,
    received: &AtomicUsize,
    mut recv: impl FnMut(&mut [u8]) -> usize,
) -> (usize, f64) {
    let mut buf = vec![0u8; 64 * 2048];
    let (mut got, mut first, mut last) = (0usize, None, Instant::now());
    while got < n {
        let k = recv(&mut buf);
        if k == 0 {
            if first.is_some() {
                break;
            }
            continue;
        }
        got += k;
        received.store(got, Relaxed);
        last = Instant::now();
        first.get_or_insert(last);
    }
    let secs = first.map_or(1.0, |f| (last - f).as_secs_f64()).max(1e-9);
    (got, secs)
}

/// Waits (yielding) while more than [`WINDOW`] of `sent` are in flight.
fn keep_window(sent: usize, received: &AtomicUsize, window: usize, give_up: Instant) {
    while sent > received.load(Relaxed) + window && Instant::now() < give_up {
        std::thread::yield_now();
    }
}

/// When a sender stops waiting for a receiver that lost too much to ever catch up.
fn give_up() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// What [`dtls_batched`] measured.
struct Batched {
    rate: f64,
    lost: usize,
    /// Rust and OpenSSL allocations per datagram while sending and receiving (every thread:
    /// the client application, both drivers, the server application).
    rust_allocs: f64,
    ossl_allocs: f64,
}

/// Ours: `send_many` of `chunk` datagrams at a time → our server's `recv`.
fn dtls_batched(n: usize, chunk: usize) -> Batched {
    let mut session = SessionConfig::default();
    session.recv_queue = RECV_QUEUE;
    session.recv_queue_bytes = RECV_QUEUE * 2048;
    let mut b = DtlsServerContext::builder();
    b.session_config(session)
        .mtu(TP_MTU)
        .psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
        .ciphers(PSK);
    let server = start_server(b.build().unwrap(), roomy(16), None);
    let s = Arc::clone(&server.server);
    let accepted = std::thread::spawn(move || s.accept().unwrap());
    let client = DtlsClient::bind_with(
        "127.0.0.1:0",
        EndpointConfig::default(),
        SocketOptions::default(),
    )
    .unwrap();
    let conn = client
        .connect(
            server.server.local_addr(),
            &our_client_ctx_mtu(PSK, TP_MTU),
            Duration::from_secs(5),
        )
        .unwrap();
    let sconn: DtlsConnection = accepted.join().unwrap();
    let msgs = vec![vec![0x5au8; SIZE]; chunk];
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    let received = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&received);
    let counter = std::thread::spawn(move || {
        count(n, &r, |buf| {
            match sconn.recv_timeout(&mut buf[..2048], QUIET) {
                Ok(Some(_)) => 1,
                _ => 0,
            }
        })
    });
    std::thread::sleep(Duration::from_millis(20));
    let (r0, o0) = (RUST_ALLOCS.load(Relaxed), OSSL_ALLOCS.load(Relaxed));
    // BENCH_DEBUG: where the allocations come from (a few backtraces, from the middle of the run).
    let debug = std::env::var_os("BENCH_DEBUG").is_some();
    let mut sent = 0;
    let (give_up, window) = (give_up(), window());
    while sent < n {
        keep_window(sent, &received, window, give_up);
        if debug && sent == n / 2 {
            TRACE.store(true, Relaxed);
        }
        let k = chunk.min(n - sent);
        if let Err(e) = conn.send_many(&refs[..k]) {
            eprintln!("send_many: {e}");
        }
        sent += k;
    }
    let (got, secs) = counter.join().unwrap();
    let (r1, o1) = (RUST_ALLOCS.load(Relaxed), OSSL_ALLOCS.load(Relaxed));
    TRACE.store(false, Relaxed);
    let stats = server.server.stats();
    if debug {
        eprintln!("server: {stats}\nclient: {}", client.stats());
        for site in std::mem::take(&mut *TRACES.lock().unwrap()) {
            eprintln!("allocation during the run: {site}");
        }
    }
    println!(
        "(batch: server socket_rx_dropped {}, recv_queue_dropped {}; client socket_send_full {})",
        stats.socket_rx_dropped,
        stats.recv_queue_dropped,
        client.stats().socket_send_full
    );
    Batched {
        rate: got as f64 / secs,
        lost: n - got,
        rust_allocs: (r1 - r0) as f64 / n as f64,
        ossl_allocs: (o1 - o0) as f64 / n as f64,
    }
}

/// The naive plain-UDP loop: one `send_to` per datagram → one `recv_from` per datagram.
fn plain_naive(n: usize) -> (f64, usize) {
    let (tx, rx) = (plain_socket(), plain_socket());
    let to = rx.local_addr().unwrap();
    rx.set_read_timeout(Some(QUIET)).unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&received);
    let counter = std::thread::spawn(move || {
        count(n, &r, |buf| match rx.recv_from(&mut buf[..2048]) {
            Ok(_) => 1,
            Err(_) => 0,
        })
    });
    std::thread::sleep(Duration::from_millis(20));
    let msg = [0x5au8; SIZE];
    let (give_up, window) = (give_up(), window());
    for sent in 0..n {
        keep_window(sent, &received, window, give_up);
        let _ = tx.send_to(&msg, to);
    }
    let (got, secs) = counter.join().unwrap();
    (got as f64 / secs, n - got)
}

/// Plain UDP with `sendmmsg` (batches of `chunk`) → `recvmmsg` (up to 64 per call).
fn plain_mmsg(n: usize, chunk: usize) -> (f64, usize) {
    let (tx, rx) = (plain_socket(), plain_socket());
    tx.connect(rx.local_addr().unwrap()).unwrap();
    rx.set_read_timeout(Some(QUIET)).unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&received);
    let counter = std::thread::spawn(move || count(n, &r, |buf| recv_mmsg(&rx, buf)));
    std::thread::sleep(Duration::from_millis(20));
    let msg = [0x5au8; SIZE];
    let mut sent = 0;
    let (give_up, window) = (give_up(), window());
    while sent < n {
        keep_window(sent, &received, window, give_up);
        let k = chunk.min(n - sent).min(64);
        sent += send_mmsg(&tx, &msg, k).max(1);
    }
    let (got, secs) = counter.join().unwrap();
    (got as f64 / secs, n - got)
}

/// `sendmmsg(2)` of `k` copies of `msg` on connected `socket`: how many went.
fn send_mmsg(socket: &UdpSocket, msg: &[u8], k: usize) -> usize {
    // SAFETY: all-zero bytes are valid for these plain C structs.
    let mut iov: [libc::iovec; 64] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; 64] = unsafe { std::mem::zeroed() };
    for i in 0..k {
        iov[i] = libc::iovec {
            iov_base: msg.as_ptr().cast_mut().cast(),
            iov_len: msg.len(),
        };
        hdrs[i].msg_hdr.msg_iov = &mut iov[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `hdrs[..k]` point at `iov`, which points at `msg`; all outlive the call, and the
    // kernel only reads them.
    let r = unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), k as _, 0) };
    r.max(0) as usize
}

/// `recvmmsg(2)` of up to 64 datagrams of 2 KiB into `buf` (`MSG_WAITFORONE`: waits, up to the
/// socket's read timeout, for the first only): how many arrived.
fn recv_mmsg(socket: &UdpSocket, buf: &mut [u8]) -> usize {
    let slots = (buf.len() / 2048).min(64);
    // SAFETY: all-zero bytes are valid for these plain C structs.
    let mut iov: [libc::iovec; 64] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; 64] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut names: [libc::sockaddr_storage; 64] = unsafe { std::mem::zeroed() };
    for (i, slot) in buf.chunks_exact_mut(2048).take(slots).enumerate() {
        iov[i] = libc::iovec {
            iov_base: slot.as_mut_ptr().cast(),
            iov_len: slot.len(),
        };
        hdrs[i].msg_hdr.msg_iov = &mut iov[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as _;
    }
    // SAFETY: `hdrs[..slots]` point at `iov`, `names` and `buf`, all alive and exclusively
    // borrowed for the call, with their lengths beside them.
    let r = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            hdrs.as_mut_ptr(),
            slots as _,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    r.max(0) as usize
}

/// The section: the `batched_1200` row and the kernel's reference row.
pub(super) fn section(t: &mut Table) {
    let n = env_usize("BENCH_BATCH_N", 200_000).max(1);
    let chunk = env_usize("BENCH_BATCH_CHUNK", 32).clamp(1, 64);
    let Batched {
        rate: ours,
        lost: ours_lost,
        rust_allocs,
        ossl_allocs,
    } = dtls_batched(n, chunk);
    let (naive, naive_lost) = plain_naive(n);
    let (mmsg, mmsg_lost) = plain_mmsg(n, chunk);
    t.keyed_row(
        "batched_1200",
        &format!(
            "one-way {SIZE} B, batched: datagrams/s received (ours: send_many of {chunk}, sendmmsg+GSO → recvmmsg+GRO → recv; ref: naive plain UDP, one send_to → one recv_from; both at most {} in flight; lost of {n}: ours {ours_lost}, plain {naive_lost})",
            window()
        ),
        ours,
        naive,
        "/s",
        true,
    );
    t.row(
        &format!(
            "one-way {SIZE} B: ours batched (as above) vs plain UDP sendmmsg of {chunk} → recvmmsg of 64, what the kernel can do (lost of {n}: ours {ours_lost}, plain {mmsg_lost})"
        ),
        ours,
        mmsg,
        "/s",
        true,
    );
    t.note(
        "one-way batched (as above): allocations per datagram over UDP, both sides and every thread, Rust + OpenSSL (BENCH_DEBUG=1 samples where; with BENCH_DEBUG the samples' own allocations count too)",
        format!("{rust_allocs:.3} + {ossl_allocs:.3}"),
        "0",
        "",
    );
}
