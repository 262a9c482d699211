//! The blocking driver, for [`DtlsServer`](crate::DtlsServer), [`DtlsClient`](crate::DtlsClient)
//! and their [`DtlsConnection`](crate::DtlsConnection)s: run to completion on the thread that
//! waits, with a driver thread for when nobody waits.
//!
//! **Who reads the socket.** One thread at a time is *the poller*: it sleeps in `poll(2)` on the
//! socket, reads the datagrams, runs the endpoint (records, handshakes, timers) and sends its
//! output. A thread about to wait for its own connection (`recv*`, `connect`'s handshake)
//! becomes the poller when the role is free, and returns as soon as its own condition holds: a
//! round trip costs what plain UDP costs plus the crypto, with no hand-off to another thread.
//! Its poll covers the endpoint's next deadline too, so retransmissions and idle timeouts run
//! while only application threads wait. The datagrams it reads for other connections wake their
//! waiters (a `Condvar`); between waiters the first keeps the role, so threads do not kick each
//! other on every datagram. `accept` does not poll: it has no latency to gain, and a thread
//! parked in `accept` for the server's lifetime would otherwise take the handshakes (and their
//! CPU) off the driver thread and be kicked out by every `recv`; it waits on its `Condvar` while
//! the driver thread or a `recv` poller runs the handshakes. ([`Rank`] keeps the rule that a
//! connection waiter may take the role from a lower rank, should one poll.)
//!
//! **The driver thread** stays for when no application thread waits: handshakes of a server
//! nobody accepts on yet, timers, the failure and address-change hooks (run outside the lock).
//! It never reads a datagram while an application thread holds the role, and after the last one
//! leaves it waits [`LINGER`] before it polls the socket again: a thread in a `recv`/`send` loop
//! is back within a round trip, far less than that, so a ping-pong loop never wakes the driver
//! thread. The linger is a one-shot `timerfd` the leaving thread re-arms when less than half of
//! it is left (one syscall per half millisecond at most, nobody woken). While an application
//! thread polls, the driver thread sleeps without a timeout: idle connections cost no CPU,
//! whoever waits.
//!
//! **Reading ahead.** A `recv` whose records come in a burst reads on past its own record, up to
//! [`READ_AHEAD`] datagrams per step while its queue has room, so the next calls find theirs
//! queued with no `poll(2)`; a request/response loop, whose socket is empty after the reply,
//! does not (a thread probes for a burst once every 16 waits).
//!
//! **Backpressure instead of loss.** The poller stops reading before its own queue is full, so
//! the reading application never overflows it: when it stops reading, the datagrams stay in the
//! socket buffer ([`SocketOptions::recv_buffer_size`](super::SocketOptions::recv_buffer_size)). Whoever else reads the socket (the
//! driver thread, another connection's poller) pauses while the queue of the connection last
//! read from is nearly full, for at most [`BACKPRESSURE`] per catch-up, so one slow reader
//! cannot stall the other peers for longer. Past that, records for a connection whose
//! application does not keep up are dropped at its queue, counted (`recv_queue_dropped`); the
//! kernel's drops at a full socket buffer are counted too (`socket_rx_dropped`, read with
//! `SO_MEMINFO` by `stats()`).
//!
//! Application threads send directly (under the endpoint's lock) and wake the poller and the
//! driver thread only when they change the deadlines (a new handshake, a close).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use super::batch::RecvBatch;
use super::shared::{Running, Shared};
use super::socket::{self, SocketOptions};
use super::{Io, Output, Signal};
use crate::endpoint::Endpoint;
use crate::error::Result;
use crate::ffi::os;

use super::rtc::KickTx;
pub(crate) use super::rtc::{wait_until, Rank, Rtc};
#[cfg(doc)]
use super::rtc::{BACKPRESSURE, LINGER, READ_AHEAD};

/// The blocking driver's socket, the waker that interrupts the driver thread's `poll(2)`, and
/// the timer that ends its linger.
#[derive(Debug)]
pub(crate) struct Blocking {
    pub(super) socket: UdpSocket,
    pub(super) waker_tx: UnixDatagram,
    waker_rx: UnixDatagram,
    /// Whether sends may use GSO ([`SocketOptions::gso`]; off for good once refused).
    gso: AtomicBool,
    /// Ends the driver thread's linger after the last application poller left.
    pub(super) linger: os::OneShotTimer,
    /// The current application poller's kick, for [`Io::wake`]: a leaf lock, set and cleared
    /// under the core's lock.
    poller_kick: Mutex<Option<Arc<KickTx>>>,
}

impl Io for Blocking {
    type Signal = Waiters;
    type Queue = ();

    /// Wakes the driver thread and the application thread polling the socket, if any.
    fn wake(&self) {
        let _ = self.waker_tx.send(&[1]);
        let kick = self
            .poller_kick
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(kick) = kick.as_ref() {
            kick.kick();
        }
    }

    fn wake_for_work(&self) {
        let kick = self
            .poller_kick
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match kick.as_ref() {
            Some(kick) => kick.kick(),
            // No thread polls: the driver thread's turn (if it lingers, once the linger ends:
            // it then finds the work waiting, `run`).
            None => {
                let _ = self.waker_tx.send(&[1]);
            }
        }
    }

    fn try_recv_batch(&self, rx: &mut RecvBatch, max: usize) -> io::Result<usize> {
        rx.recv(self.socket.as_fd(), max)
    }

    /// `sendto(2)` with `MSG_DONTWAIT`.
    fn send_now(&self, to: SocketAddr, datagram: &[u8]) -> bool {
        let msg = [os::SendMsg {
            peer: to,
            start: 0,
            len: datagram.len(),
            segment: 0,
        }];
        matches!(os::send_batch(self.socket.as_fd(), datagram, &msg), Ok(1))
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    fn socket_drops(&self) -> Option<u64> {
        os::socket_drops(self.socket.as_fd()).ok()
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
    /// old one closed. Returns the new local address. The caller wakes the pollers (they may
    /// sleep in `poll(2)` on the old socket).
    pub(crate) fn rebind(&self, addr: SocketAddr, options: &SocketOptions) -> Result<SocketAddr> {
        let fresh = socket::bind([addr], options)?;
        os::replace_descriptor(self.socket.as_fd(), fresh.into())?;
        Ok(self.socket.local_addr()?)
    }

    pub(super) fn set_poller_kick(&self, kick: Option<Arc<KickTx>>) {
        *self
            .poller_kick
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = kick;
    }
}

/// What a blocking handle or `accept` waits on: a `Condvar` and how many threads wait on it, so
/// that a datagram read by the thread that waits for it wakes nobody (no futex call).
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    pub(super) cv: Condvar,
    /// Threads in `wait` on `cv`; changed under the core's lock.
    pub(super) count: AtomicUsize,
}

impl Signal for Waiters {
    fn wake_all(&self) {
        if self.count.load(Ordering::SeqCst) > 0 {
            self.cv.notify_all();
        }
    }

    fn wake_one(&self) {
        if self.count.load(Ordering::SeqCst) > 0 {
            self.cv.notify_one();
        }
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
        Driver::start_on(socket, endpoint, accepts, options, name)
    }

    /// [`start`](Self::start) on a socket already opened with `options` (`socket::bind`).
    pub fn start_on(
        socket: UdpSocket,
        endpoint: Endpoint,
        accepts: bool,
        options: &SocketOptions,
        name: &str,
    ) -> Result<Driver> {
        let local_addr = socket.local_addr()?;
        let (waker_tx, waker_rx) = UnixDatagram::pair()?;
        waker_tx.set_nonblocking(true)?;
        waker_rx.set_nonblocking(true)?;
        let io = Blocking {
            socket,
            waker_tx,
            waker_rx,
            gso: AtomicBool::new(options.gso && os::GSO_AVAILABLE),
            linger: os::OneShotTimer::new()?,
            poller_kick: Mutex::new(None),
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
    /// and wakes every waiter (the application thread polling the socket first, through
    /// [`Io::wake`]).
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

/// The driver thread: while an application thread polls the socket (or lingers), sleeps on its
/// waker and the linger timer only, reporting failures and address changes when woken; otherwise
/// sleeps until the socket is readable, the waker fires, or the endpoint's next deadline passes,
/// then takes one turn.
fn run(shared: &BlockingShared) {
    let io = &shared.io;
    loop {
        let (parked, deadline, reports) = {
            let mut core = shared.lock();
            if core.shutdown {
                break;
            }
            let reports = BlockingShared::take_reports(&mut core);
            let now = Instant::now();
            match core.rtc.parked(now) {
                Some(until) => (true, until, reports),
                None => (false, shared.due(&core, now), reports),
            }
        };
        BlockingShared::report(reports);
        let timeout = deadline.map(|at| at.saturating_duration_since(Instant::now()));
        let waited = if parked {
            os::wait_readable([io.waker_rx.as_fd(), io.linger.as_fd()], timeout)
        } else {
            os::wait_readable([io.socket.as_fd(), io.waker_rx.as_fd()], timeout)
        };
        if let Err(e) = waited {
            log::error!("driver poll failed: {e}");
            shared.end_all(Some(e.kind()));
            return;
        }
        let mut buf = [0u8; 64];
        while io.waker_rx.recv(&mut buf).is_ok() {}
        if parked {
            io.linger.clear();
            continue;
        }
        if !driver_turn(shared) {
            break;
        }
    }
    shared.end_all(None);
}

/// The driver thread's turn: a batch of datagrams, the timers, events, output, then the hooks
/// outside the lock; nothing is read if an application thread took the socket meanwhile, or
/// read from its queue (it is parked then: [`Rtc::parked`]).
/// False after shutdown.
fn driver_turn(shared: &BlockingShared) -> bool {
    let mut core = shared.lock();
    if core.shutdown {
        return false;
    }
    if core.rtc.parked(Instant::now()).is_none() {
        // In steps of at most READ_AHEAD datagrams, and no more than the protected reader's
        // queue has room for, so that a pause for a reader whose queue filled up takes effect
        // between them before anything overflows.
        let mut left = shared.batch();
        while left > 0 {
            let core = &mut *core;
            if core.rtc.pause(&core.endpoint, Instant::now()).is_some() {
                break;
            }
            let budget = core.rtc.read_budget(&core.endpoint);
            let got = shared.receive(core, left.min(budget));
            if got.drained {
                break;
            }
            left = left.saturating_sub(got.datagrams.max(1));
        }
        shared.after_receive(&mut core);
    }
    let reports = BlockingShared::take_reports(&mut core);
    drop(core);
    BlockingShared::report(reports);
    true
}
