//! The blocking driver: one `UdpSocket`, one thread that owns the receive side of an
//! [`Endpoint`], and the shared state that [`DtlsConnection`](crate::DtlsConnection) handles,
//! [`DtlsServer`](crate::DtlsServer) and [`DtlsClient`](crate::DtlsClient) use.
//!
//! The driver thread sleeps in `poll(2)` on the socket and a waker until a datagram arrives or
//! the endpoint's next deadline passes: no polling loops, so idle connections cost no CPU.
//! Application threads send directly (under the endpoint's lock) and wake the driver only when
//! they change its deadlines (a new handshake, a close).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::endpoint::{self, ConnectionId, Endpoint, Event, FailureHook, HandshakeFailure};
use crate::error::{Error, Result};
use crate::ffi::os;

/// Socket options for a server or client socket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketOptions {
    /// `SO_RCVBUF` in bytes. Default 4 MiB: the kernel default (≈ 208 KB) drops 9–13% of
    /// datagrams at full rate on loopback; a few MB drop none. The kernel may cap it
    /// (`net.core.rmem_max`).
    pub recv_buffer_size: Option<usize>,
    /// `SO_SNDBUF` in bytes. Default 1 MiB.
    pub send_buffer_size: Option<usize>,
    /// `SO_REUSEPORT`, for several sockets (processes, threads) on one port. Default off.
    pub reuse_port: bool,
    /// For an IPv6 address: accept IPv4 too (`IPV6_V6ONLY` off). Default true.
    pub dual_stack: bool,
    /// Datagrams read per driver turn before timers and output get their turn. Default 64.
    pub batch: usize,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            recv_buffer_size: Some(4 << 20),
            send_buffer_size: Some(1 << 20),
            reuse_port: false,
            dual_stack: true,
            batch: 64,
        }
    }
}

/// Opens a non-blocking UDP socket on `addr` with `options` (socket2).
pub(crate) fn open_socket(addr: SocketAddr, options: &SocketOptions) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Only meaningful for the unspecified address; harmless otherwise.
        let _ = socket.set_only_v6(!options.dual_stack);
    }
    if options.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if let Some(size) = options.recv_buffer_size {
        if let Err(e) = socket.set_recv_buffer_size(size) {
            log::warn!("cannot set SO_RCVBUF to {size}: {e}");
        }
    }
    if let Some(size) = options.send_buffer_size {
        if let Err(e) = socket.set_send_buffer_size(size) {
            log::warn!("cannot set SO_SNDBUF to {size}: {e}");
        }
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// How a connection handle sees its connection.
#[derive(Debug)]
pub(crate) enum SlotState {
    Handshaking,
    Established,
    Ended(Option<Error>),
}

/// Per-connection wait state, under the core's lock.
#[derive(Debug)]
pub(crate) struct Slot {
    pub state: SlotState,
    pub cond: Arc<Condvar>,
}

/// Everything behind the lock.
#[derive(Debug)]
pub(crate) struct Core {
    pub endpoint: Endpoint,
    pub slots: HashMap<ConnectionId, Slot>,
    pub accept_queue: VecDeque<(SocketAddr, ConnectionId)>,
    pub shutdown: bool,
    pub driver_error: Option<io::ErrorKind>,
    /// Datagrams that could not be sent (socket buffer full or an error).
    pub send_errors: u64,
    /// Called for every failed server handshake ([`DtlsServer::on_handshake_failure`]).
    ///
    /// [`DtlsServer::on_handshake_failure`]: crate::DtlsServer::on_handshake_failure
    pub failure_hook: Option<FailureHook>,
    /// Failed handshakes the driver thread reports next, outside the lock.
    pub failures: Vec<HandshakeFailure>,
    tx: Vec<u8>,
}

/// Shared by the driver thread and every handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub core: Mutex<Core>,
    pub accept_cond: Condvar,
    pub socket: UdpSocket,
    pub local_addr: SocketAddr,
    waker_tx: UnixDatagram,
    waker_rx: UnixDatagram,
    batch: usize,
}

/// The largest datagram we read: anything larger than a UDP payload can be is impossible.
const RX_BUFFER: usize = 65_536;

impl Shared {
    /// Locks the core. A poisoned lock (a panic while it was held) is taken over: the data it
    /// protects stays consistent between statements.
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Interrupts the driver's wait so it recomputes its deadline.
    pub fn wake(&self) {
        let _ = self.waker_tx.send(&[1]);
    }

    /// Sends everything the endpoint has queued.
    pub fn flush(&self, core: &mut Core) {
        let Core {
            endpoint,
            tx,
            send_errors,
            ..
        } = core;
        while let Some((addr, n)) = endpoint.poll_transmit(tx) {
            if let Err(e) = self.socket.send_to(&tx[..n], addr) {
                *send_errors += 1;
                log::debug!("send to {addr} failed: {e}");
            }
        }
    }
}

/// Starts the driver thread for `endpoint` on `socket`.
pub(crate) fn start(
    endpoint: Endpoint,
    socket: UdpSocket,
    batch: usize,
    name: &str,
) -> Result<(Arc<Shared>, JoinHandle<()>)> {
    let local_addr = socket.local_addr()?;
    let (waker_tx, waker_rx) = UnixDatagram::pair()?;
    waker_tx.set_nonblocking(true)?;
    waker_rx.set_nonblocking(true)?;
    let shared = Arc::new(Shared {
        core: Mutex::new(Core {
            endpoint,
            slots: HashMap::new(),
            accept_queue: VecDeque::new(),
            shutdown: false,
            driver_error: None,
            send_errors: 0,
            failure_hook: None,
            failures: Vec::new(),
            tx: vec![0; RX_BUFFER],
        }),
        accept_cond: Condvar::new(),
        socket,
        local_addr,
        waker_tx,
        waker_rx,
        batch: batch.max(1),
    });
    let thread_shared = Arc::clone(&shared);
    let handle = std::thread::Builder::new()
        .name(format!("dtls-{name}-{local_addr}"))
        .spawn(move || run(&thread_shared))?;
    Ok((shared, handle))
}

fn run(shared: &Shared) {
    let mut rx = vec![0u8; RX_BUFFER];
    loop {
        let deadline = {
            let core = shared.lock();
            if core.shutdown {
                break;
            }
            core.endpoint.poll_timeout()
        };
        if let Err(e) = wait(shared, deadline) {
            log::error!("driver poll failed: {e}");
            end_all(shared, Some(e.kind()));
            return;
        }
        let mut buf = [0u8; 64];
        while shared.waker_rx.recv(&mut buf).is_ok() {}
        let mut core = shared.lock();
        if core.shutdown {
            break;
        }
        for _ in 0..shared.batch {
            match shared.socket.recv_from(&mut rx) {
                Ok((n, peer)) => {
                    let now = Instant::now();
                    core.endpoint.handle_datagram(now, peer, &rx[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors surface as ECONNREFUSED etc. on Linux: not fatal for a server.
                Err(e) => log::debug!("recv_from: {e}"),
            }
        }
        core.endpoint.handle_timeout(Instant::now());
        dispatch(shared, &mut core);
        shared.flush(&mut core);
        if !core.failures.is_empty() {
            let mut failures = std::mem::take(&mut core.failures);
            let hook = core.failure_hook.clone();
            drop(core);
            endpoint::report_failures(hook.as_ref(), &mut failures);
        }
    }
    end_all(shared, None);
}

/// Sleeps until the socket is readable, the waker fires, or `deadline` passes.
fn wait(shared: &Shared, deadline: Option<Instant>) -> io::Result<()> {
    let timeout = deadline.map(|at| at.saturating_duration_since(Instant::now()));
    os::wait_readable([shared.socket.as_fd(), shared.waker_rx.as_fd()], timeout)
}

/// Routes endpoint events to the handles waiting on them.
pub(crate) fn dispatch(shared: &Shared, core: &mut Core) {
    while let Some(event) = core.endpoint.poll_event() {
        match event {
            Event::Connected { peer, id } => match core.slots.get_mut(&id) {
                Some(slot) => {
                    slot.state = SlotState::Established;
                    slot.cond.notify_all();
                }
                None => {
                    core.slots.insert(
                        id,
                        Slot {
                            state: SlotState::Established,
                            cond: Arc::new(Condvar::new()),
                        },
                    );
                    core.accept_queue.push_back((peer, id));
                    shared.accept_cond.notify_one();
                }
            },
            Event::Readable { id, .. } => {
                if let Some(slot) = core.slots.get(&id) {
                    slot.cond.notify_all();
                }
            }
            Event::Closed { id, error, .. } => {
                if let Some(slot) = core.slots.get_mut(&id) {
                    slot.state = SlotState::Ended(error);
                    slot.cond.notify_all();
                }
            }
            Event::HandshakeFailed(failure) => {
                if core.failures.len() < endpoint::MAX_PENDING_FAILURES {
                    core.failures.push(failure);
                    shared.wake(); // the driver thread reports it, outside the lock
                } else {
                    log::info!("handshake failed: {failure}");
                }
            }
        }
    }
}

/// Marks every connection ended and wakes every waiter (the driver stopped).
fn end_all(shared: &Shared, error: Option<io::ErrorKind>) {
    let mut core = shared.lock();
    core.shutdown = true;
    core.driver_error = error;
    for slot in core.slots.values_mut() {
        if !matches!(slot.state, SlotState::Ended(_)) {
            slot.state = SlotState::Ended(
                error.map(|k| Error::Io(io::Error::new(k, "the DTLS driver stopped"))),
            );
        }
        slot.cond.notify_all();
    }
    shared.accept_cond.notify_all();
}

/// Stops the driver: optionally closes every connection first (`close_notify`), then joins.
pub(crate) fn shutdown(shared: &Shared, thread: &mut Option<JoinHandle<()>>) {
    {
        let mut core = shared.lock();
        if !core.shutdown {
            core.endpoint.close_all();
            dispatch(shared, &mut core);
            shared.flush(&mut core);
            core.shutdown = true;
        }
    }
    shared.wake();
    if let Some(t) = thread.take() {
        let _ = t.join();
    }
    end_all(shared, None);
}

/// Waits on `cond` until `ready` returns `Some`, or `deadline` passes (then `None`).
pub(crate) fn wait_until<'a, T>(
    mut core: MutexGuard<'a, Core>,
    cond: &Condvar,
    deadline: Option<Instant>,
    mut ready: impl FnMut(&mut Core) -> Option<T>,
) -> (MutexGuard<'a, Core>, Option<T>) {
    loop {
        if let Some(v) = ready(&mut core) {
            return (core, Some(v));
        }
        match deadline {
            None => core = cond.wait(core).unwrap_or_else(|e| e.into_inner()),
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return (core, None);
                }
                core = cond
                    .wait_timeout(core, left.min(Duration::from_secs(3600)))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}
