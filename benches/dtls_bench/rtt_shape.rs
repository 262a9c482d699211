//! The system calls' share of the blocking echo RTT (issue 15): plain UDP ping-pong on loopback
//! (two threads, 100-byte datagrams, one in flight) with plain UDP's calls — a blocking
//! `recv` and `send` — next to the same ping-pong with the calls the blocking driver's poller
//! makes per datagram: `poll(2)` on the socket (and its kick), then a non-blocking `recvmsg`,
//! and `sendto` for the reply. The difference is what the call pattern alone costs a round trip;
//! the rest of the DTLS RTT difference is the record layer and the library.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// (p50, p99) round-trip times of `n` ping-pongs; `poll_first`: each side polls before it reads
/// (non-blocking read), as the poller does.
fn pingpong(n: usize, poll_first: bool) -> (Duration, Duration) {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.connect(b.local_addr().unwrap()).unwrap();
    b.connect(a.local_addr().unwrap()).unwrap();
    let recv = move |s: &UdpSocket, buf: &mut [u8]| -> usize {
        if poll_first {
            let mut fds = [libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
            // SAFETY: `buf` is a live buffer of the length given.
            let r = unsafe {
                libc::recv(
                    s.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            r.max(0) as usize
        } else {
            s.recv(buf).unwrap_or(0)
        }
    };
    let rounds = n + 200;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for _ in 0..rounds {
            let k = recv(&b, &mut buf);
            let _ = b.send(&buf[..k]);
        }
    });
    let msg = [0x5au8; 100];
    let mut buf = [0u8; 2048];
    let mut rtts = Vec::with_capacity(n);
    for i in 0..rounds {
        let t0 = Instant::now();
        a.send(&msg).unwrap();
        recv(&a, &mut buf);
        if i >= 200 {
            rtts.push(t0.elapsed());
        }
    }
    echo.join().unwrap();
    rtts.sort();
    (rtts[rtts.len() / 2], rtts[rtts.len() * 99 / 100])
}

/// The table rows: plain calls vs the poller's calls, p50 and p99, best of 3 interleaved.
/// Returns the p50 difference in µs (the call pattern's share of the RTT difference).
pub(super) fn rows(t: &mut super::Table, n: usize) -> f64 {
    let (mut plain, mut shaped) = (
        (Duration::MAX, Duration::MAX),
        (Duration::MAX, Duration::MAX),
    );
    for _ in 0..3 {
        let p = pingpong(n, false);
        let s = pingpong(n, true);
        plain = (plain.0.min(p.0), plain.1.min(p.1));
        shaped = (shaped.0.min(s.0), shaped.1.min(s.1));
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    t.row(
        &format!(
            "plain UDP RTT 100 B p50 with the poller's calls (poll + non-blocking recv, send) vs \
             plain calls (blocking recv, send): the call pattern's share of the blocking \
             driver's RTT difference ({:+.1} µs)",
            us(shaped.0) - us(plain.0)
        ),
        us(shaped.0),
        us(plain.0),
        "µs",
        false,
    );
    t.row("same, p99", us(shaped.1), us(plain.1), "µs", false);
    us(shaped.0) - us(plain.0)
}
