//! The blocking driver: one thread per socket that owns the receive side of an
//! [`Endpoint`], for [`DtlsServer`](crate::DtlsServer), [`DtlsClient`](crate::DtlsClient) and
//! their [`DtlsConnection`](crate::DtlsConnection)s.
//!
//! The driver thread sleeps in `poll(2)` on the socket and a waker until a datagram arrives or
//! the endpoint's next deadline passes: no polling loops, so idle connections cost no CPU.
//! Application threads send directly (under the endpoint's lock) and wake the driver only when
//! they change its deadlines (a new handshake, a close). Handles wait on a `Condvar`.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::batch::RecvBatch;
use super::shared::{Core, Running, Shared};
use super::socket::{self, SocketOptions};
use super::{Io, Output};
use crate::endpoint::Endpoint;
use crate::error::Result;
use crate::ffi::os;

/// The blocking driver's socket and the waker that interrupts its `poll(2)`.
#[derive(Debug)]
pub(crate) struct Blocking {
    socket: UdpSocket,
    waker_tx: UnixDatagram,
    waker_rx: UnixDatagram,
    /// Whether sends may use GSO ([`SocketOptions::gso`]; off for good once refused).
    gso: AtomicBool,
}

impl Io for Blocking {
    type Signal = Condvar;
    type Queue = ();

    fn wake(&self) {
        let _ = self.waker_tx.send(&[1]);
    }

    fn try_recv_batch(&self, rx: &mut RecvBatch, max: usize) -> io::Result<usize> {
        rx.recv(self.socket.as_fd(), max)
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Sends in batches (`sendmmsg(2)`, GSO where it can). What the socket refuses because its
    /// send buffer is full is dropped and counted (`socket_send_full`): DTLS, like UDP, lets
    /// the peer's retransmission or the application recover.
    fn flush(&self, endpoint: &mut Endpoint, out: &mut Output<()>) {
        let fd = self.socket.as_fd();
        loop {
            out.tx.gather(endpoint);
            if out.tx.is_empty() {
                break;
            }
            let sent = out.tx.send(&self.gso, &mut out.counters, |data, msgs| {
                os::send_batch(fd, data, msgs)
            });
            let dropped = out.tx.datagrams_from(sent);
            if dropped > 0 {
                out.counters.send_full += dropped as u64;
                log::debug!("send buffer full: {dropped} datagrams dropped");
            }
            out.tx.clear();
        }
    }
}

impl Blocking {
    /// Moves the driver to a new socket on `addr` (opened with `options`), in place: the
    /// descriptor the driver and the senders use is pointed at the new socket (`dup3`), the
    /// old one closed. Returns the new local address.
    pub(crate) fn rebind(&self, addr: SocketAddr, options: &SocketOptions) -> Result<SocketAddr> {
        let fresh = socket::bind([addr], options)?;
        os::replace_descriptor(self.socket.as_fd(), fresh.into())?;
        Ok(self.socket.local_addr()?)
    }
}

/// The blocking driver's shared state.
pub(crate) type BlockingShared = Shared<Blocking>;

/// A running blocking driver: its shared state and its thread, joined by
/// [`shutdown`](Running::shutdown).
pub(crate) type Driver = Running<Blocking, JoinHandle<()>>;

impl Driver {
    /// Opens a socket on the first address `addr` resolves to and starts the driver thread for
    /// `endpoint` on it (named after `name`); a server's driver if `accepts`.
    pub fn start(
        addr: impl ToSocketAddrs,
        endpoint: Endpoint,
        accepts: bool,
        options: &SocketOptions,
        name: &str,
    ) -> Result<Driver> {
        let socket = socket::bind([socket::first_addr(addr)?], options)?;
        let local_addr = socket.local_addr()?;
        let (waker_tx, waker_rx) = UnixDatagram::pair()?;
        waker_tx.set_nonblocking(true)?;
        waker_rx.set_nonblocking(true)?;
        let io = Blocking {
            socket,
            waker_tx,
            waker_rx,
            gso: AtomicBool::new(options.gso && os::GSO_AVAILABLE),
        };
        let shared = Arc::new(Shared::new(
            endpoint,
            accepts,
            io,
            local_addr,
            options.batch,
        ));
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("dtls-{name}-{local_addr}"))
            .spawn(move || run(&thread_shared))?;
        // Handshake workers (a server's): without them, handshakes run inline.
        if accepts {
            if let Err(e) = super::workers::Workers::start(&shared, name) {
                log::warn!("no handshake workers ({e}): handshakes run in the driver");
            }
        }
        Ok(Running::new(shared, thread))
    }

    /// Stops the driver: closes every connection first (`close_notify`), then joins the thread
    /// and wakes every waiter.
    pub fn shutdown(&self) {
        let mut thread = self.runner();
        self.shared.stop();
        self.shared.wake();
        if let Some(t) = thread.take() {
            let _ = t.join();
        }
        self.shared.end_all(None);
    }
}

/// The driver thread: sleeps until the socket is readable, the waker fires, or the endpoint's
/// next deadline passes; then takes one turn.
fn run(shared: &BlockingShared) {
    loop {
        let deadline = {
            let core = shared.lock();
            if core.shutdown {
                break;
            }
            core.endpoint.poll_timeout()
        };
        let io = &shared.io;
        let timeout = deadline.map(|at| at.saturating_duration_since(Instant::now()));
        if let Err(e) = os::wait_readable([io.socket.as_fd(), io.waker_rx.as_fd()], timeout) {
            log::error!("driver poll failed: {e}");
            shared.end_all(Some(e.kind()));
            return;
        }
        let mut buf = [0u8; 64];
        while io.waker_rx.recv(&mut buf).is_ok() {}
        if !shared.turn() {
            break;
        }
    }
    shared.end_all(None);
}

/// Waits on `signal` until `ready` returns `Some`, or `deadline` passes (then `None`).
pub(crate) fn wait_until<'a, T>(
    mut core: MutexGuard<'a, Core<Blocking>>,
    signal: &Condvar,
    deadline: Option<Instant>,
    mut ready: impl FnMut(&mut Core<Blocking>) -> Option<T>,
) -> (MutexGuard<'a, Core<Blocking>>, Option<T>) {
    loop {
        if let Some(v) = ready(&mut core) {
            return (core, Some(v));
        }
        match deadline {
            None => core = signal.wait(core).unwrap_or_else(|e| e.into_inner()),
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return (core, None);
                }
                core = signal
                    .wait_timeout(core, left.min(Duration::from_secs(3600)))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}
