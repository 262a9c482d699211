//! The tokio I/O model under the shared driver core: the driver task (readiness of the
//! `tokio::net::UdpSocket`, `sleep_until` the endpoint's next deadline, a `Notify` that handles
//! use to wake it), the backlog of datagrams the socket refused, and waiting on a `Notify`.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ::tokio::io::Interest;
use ::tokio::net::{ToSocketAddrs, UdpSocket};
use ::tokio::sync::Notify;
use ::tokio::task::JoinHandle;
use ::tokio::time::Instant as TokioInstant;

use crate::driver::batch::{RecvBatch, SocketCounters};
use crate::driver::shared::{Running, Shared};
use crate::driver::{socket, Io, Output, Signal, SocketOptions};
use crate::endpoint::Endpoint;
use crate::error::Result;
use crate::ffi::os;

/// Datagrams queued for the driver (the socket would block) past which `send` waits.
pub(super) const BACKLOG_HIGH: usize = 256;
/// Datagrams queued for the driver past which further ones are dropped (counted).
const BACKLOG_MAX: usize = 4_096;
/// Spare datagram buffers kept for the backlog to reuse.
const SPARE_BUFFERS: usize = 64;

impl Signal for Notify {
    fn wake_all(&self) {
        self.notify_waiters();
    }
}

/// The tokio driver's socket and the notifications around it.
#[derive(Debug)]
pub(super) struct TokioIo {
    socket: UdpSocket,
    /// Wakes the driver task (a handle changed its deadlines or queued a backlog).
    driver_notify: Notify,
    /// Wakes senders waiting for the backlog to drain.
    pub writable_notify: Notify,
    /// Whether sends may use GSO ([`SocketOptions::gso`]; off for good once refused).
    gso: AtomicBool,
}

/// Datagrams the socket refused with `WouldBlock`, in order, for the driver task to send when
/// the socket is writable.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    datagrams: VecDeque<(SocketAddr, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
}

impl Backlog {
    /// How many datagrams wait.
    pub fn len(&self) -> usize {
        self.datagrams.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }
}

impl Io for TokioIo {
    type Signal = Notify;
    type Queue = Backlog;
    const EDGE_TRIGGERED: bool = true;

    fn wake(&self) {
        self.driver_notify.notify_one();
    }

    fn try_recv_batch(&self, rx: &mut RecvBatch, max: usize) -> io::Result<usize> {
        let fd = self.socket.as_fd();
        self.socket.try_io(Interest::READABLE, || rx.recv(fd, max))
    }

    fn socket_drops(&self) -> Option<u64> {
        crate::ffi::os::socket_drops(self.socket.as_fd()).ok()
    }

    /// `try_send_to`: never blocks, from any thread.
    fn send_now(&self, to: SocketAddr, datagram: &[u8]) -> bool {
        self.socket.try_send_to(datagram, to).is_ok()
    }

    /// Sends everything the endpoint has queued, straight to the socket in batches
    /// (`sendmmsg(2)`, GSO where it can); what would block goes to the backlog, in order, and
    /// the driver task is woken to send it when it can.
    fn flush(&self, endpoint: &mut Endpoint, out: &mut Output<Backlog>) {
        let Output {
            tx,
            counters,
            queue: Backlog { datagrams, spare },
            ..
        } = out;
        let had_backlog = !datagrams.is_empty();
        while let Some((addr, datagram)) = datagrams.front() {
            match self.socket.try_send_to(datagram, *addr) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                r => {
                    if let Err(e) = r {
                        counters.send_errors += 1;
                        log::debug!("send to {addr} failed: {e}");
                    }
                    let (_, buf) = datagrams.pop_front().expect("front exists");
                    if spare.len() < SPARE_BUFFERS {
                        spare.push(buf);
                    }
                }
            }
        }
        let fd = self.socket.as_fd();
        loop {
            if !datagrams.is_empty() {
                // Behind a backlog, in order: what the batch holds, then the rest.
                for (addr, datagram) in tx.unsent(0) {
                    backlog(datagrams, spare, counters, addr, datagram);
                }
                while let Some((addr, n)) = endpoint.poll_transmit(tx.scratch()) {
                    let datagram = &tx.scratch()[..n];
                    backlog(datagrams, spare, counters, addr, datagram);
                }
                break;
            }
            tx.gather(endpoint);
            if tx.is_empty() {
                break;
            }
            let sent = tx.send(&self.gso, counters, |data, msgs| {
                self.socket
                    .try_io(Interest::WRITABLE, || os::send_batch(fd, data, msgs))
            });
            for (addr, datagram) in tx.unsent(sent) {
                backlog(datagrams, spare, counters, addr, datagram);
            }
            tx.clear();
        }
        if datagrams.is_empty() {
            if had_backlog {
                self.writable_notify.notify_waiters();
            }
        } else if !had_backlog {
            self.wake();
        }
    }

    fn stopped(&self) {
        self.writable_notify.notify_waiters();
        self.wake();
    }
}

/// Queues `datagram` for `addr` behind the others for the driver task to send, in a spare
/// buffer; past [`BACKLOG_MAX`] it is dropped and counted.
fn backlog(
    datagrams: &mut VecDeque<(SocketAddr, Vec<u8>)>,
    spare: &mut Vec<Vec<u8>>,
    counters: &mut SocketCounters,
    addr: SocketAddr,
    datagram: &[u8],
) {
    if datagrams.len() >= BACKLOG_MAX {
        counters.send_full += 1;
        return;
    }
    let mut buf = spare.pop().unwrap_or_default();
    buf.clear();
    buf.extend_from_slice(datagram);
    datagrams.push_back((addr, buf));
}

/// The tokio driver's shared state.
pub(super) type TokioShared = Shared<TokioIo>;

/// A running tokio driver: its shared state and its task, awaited by
/// [`shutdown`](Running::shutdown).
pub(super) type Driver = Running<TokioIo, JoinHandle<()>>;

impl Driver {
    /// Opens a socket on the first address `addr` resolves to that binds and starts the driver
    /// task for `endpoint` on it; a server's driver if `accepts`.
    pub async fn start(
        addr: impl ToSocketAddrs,
        endpoint: Endpoint,
        accepts: bool,
        options: &SocketOptions,
    ) -> Result<Driver> {
        let socket = socket::bind(::tokio::net::lookup_host(addr).await?, options)?;
        Driver::start_on(socket, endpoint, accepts, options)
    }

    /// [`start`](Self::start) on a socket already opened with `options` (`socket::bind`); must
    /// be called within the runtime.
    pub fn start_on(
        socket: std::net::UdpSocket,
        endpoint: Endpoint,
        accepts: bool,
        options: &SocketOptions,
    ) -> Result<Driver> {
        let socket = UdpSocket::from_std(socket)?;
        let local_addr = socket.local_addr()?;
        let io = TokioIo {
            socket,
            driver_notify: Notify::new(),
            writable_notify: Notify::new(),
            gso: AtomicBool::new(options.gso && os::GSO_AVAILABLE),
        };
        let shared = Arc::new(Shared::new(
            endpoint,
            accepts,
            io,
            local_addr,
            options.batch,
        ));
        let task = ::tokio::spawn(run(Arc::clone(&shared)));
        // Handshake workers (a server's): threads of their own, not the runtime's, so that
        // handshake crypto never holds up the tasks; without them, handshakes run inline.
        if accepts {
            if let Err(e) = crate::driver::workers::Workers::start(&shared, "tokio") {
                log::warn!("no handshake workers ({e}): handshakes run in the driver task");
            }
        }
        Ok(Running::new(shared, task))
    }

    /// Closes every connection (`close_notify`), sends what can be sent now, and stops the
    /// driver task without waiting for it: for `Drop`.
    pub fn shutdown_now(&self) {
        self.shared.stop();
        self.shared.end_all(None);
    }

    /// As [`shutdown_now`](Self::shutdown_now), but first gives the `close_notify` datagrams
    /// that would block up to a second to leave, and waits for the driver task to end.
    pub async fn shutdown(&self) {
        let shared = &*self.shared;
        {
            let mut core = shared.lock();
            shared.close_all(&mut core);
        }
        shared.wake();
        let _ = wait_for(
            &shared.io.writable_notify,
            Some(TokioInstant::now() + Duration::from_secs(1)),
            || {
                let core = shared.lock();
                (core.out.queue.is_empty() || core.shutdown).then_some(())
            },
        )
        .await;
        self.shutdown_now();
        let task = self.runner().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// The driver task: sleeps until the socket is readable (or writable, with a backlog), the
/// endpoint's next deadline passes, or a handle wakes it; then takes one turn.
async fn run(shared: Arc<TokioShared>) {
    loop {
        let (deadline, want_write) = {
            let core = shared.lock();
            if core.shutdown {
                break;
            }
            let deadline = shared.due(&core, std::time::Instant::now());
            (deadline, !core.out.queue.is_empty())
        };
        let sleep = async move {
            match deadline {
                Some(at) => ::tokio::time::sleep_until(TokioInstant::from_std(at)).await,
                None => std::future::pending::<()>().await,
            }
        };
        let io = &shared.io;
        let outcome: io::Result<()> = ::tokio::select! {
            r = io.socket.readable() => r,
            r = io.socket.writable(), if want_write => r,
            () = sleep => Ok(()),
            () = io.driver_notify.notified() => Ok(()),
        };
        if let Err(e) = outcome {
            log::error!("DTLS driver on {} failed: {e}", shared.local_addr);
            shared.end_all(Some(e.kind()));
            return;
        }
        if !shared.turn() {
            break;
        }
    }
    shared.end_all(None);
}

/// Waits on `notify` until `ready` returns `Some`, or `deadline` passes (then `None`).
/// `ready` runs with no lock held by the caller and must not await; the waiter is registered
/// before each check, so no wakeup is lost between a check and the wait.
pub(super) async fn wait_for<T>(
    notify: &Notify,
    deadline: Option<TokioInstant>,
    mut ready: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        let notified = notify.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if let Some(v) = ready() {
            return Some(v);
        }
        match deadline {
            None => notified.await,
            Some(at) => {
                if ::tokio::time::timeout_at(at, notified).await.is_err() {
                    return ready();
                }
            }
        }
    }
}
