//! The driver core shared by the blocking driver ([`blocking`], behind
//! [`DtlsServer`](crate::DtlsServer), [`DtlsClient`](crate::DtlsClient) and
//! [`DtlsConnection`](crate::DtlsConnection)) and the tokio driver (`crate::tokio`): everything
//! about running an [`Endpoint`] on one UDP socket that does not
//! depend on how the driver waits.
//!
//! | module | owns |
//! |---|---|
//! | [`shared`] | the state behind the lock: the endpoint, the slot table, the accept queue; event dispatch, the driver turn, shutdown |
//! | [`handle`] | a connection handle's state and operations, the handshake facts, the client's table of connections to hand out again |
//! | [`failures`] | failed handshakes waiting to be reported to the hook outside the lock |
//! | [`moves`] | connections that followed their peer to a new address ([`AddressChange`]), waiting for the address-change hook outside the lock |
//! | [`socket`] | socket options and opening the socket |
//! | [`shards`] | a server as N drivers on `SO_REUSEPORT` sockets: the plan, the accept hub, the summed counters |
//! | [`batch`] | the receive and send batches (`recvmmsg`/`sendmmsg`, GRO, GSO) and the socket's drop counters |
//! | [`blocking`] | the blocking driver: the waiting thread drives the socket (run to completion), a driver thread for when none waits, `Condvar` waits |
//! | [`rtc`] | the blocking driver's run-to-completion wait: the poller role, reading ahead, the backpressure pause |
//! | [`workers`] | the handshake workers: server handshake steps run outside the lock |
//! | [`deferred`] | handshake datagrams put behind the established records read with them |
//!
//! A driver plugs in through [`Io`]: how it is woken, how it receives and sends, and the
//! [`Signal`] its waiters sleep on (`Condvar` for threads, `tokio::sync::Notify` for tasks).

pub(crate) mod batch;
pub(crate) mod blocking;
pub(crate) mod deferred;
pub(crate) mod failures;
pub(crate) mod handle;
pub(crate) mod moves;
pub(crate) mod rtc;
pub(crate) mod shards;
pub(crate) mod shared;
pub(crate) mod socket;
pub(crate) mod workers;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Condvar;

use self::batch::{RecvBatch, SendBatch, SocketCounters};
use crate::endpoint::Endpoint;

pub use self::socket::SocketOptions;

/// The largest datagram a driver reads or writes: no UDP payload is larger.
pub(crate) const RX_BUFFER: usize = 65_536;

/// What a handle or the accept queue waits on, woken when the state it waits for may have
/// changed: `Condvar` for the blocking driver, `tokio::sync::Notify` for the tokio driver.
pub(crate) trait Signal: Default + fmt::Debug + Send + Sync + 'static {
    /// Wakes every thread or task waiting on this signal.
    fn wake_all(&self);

    /// Wakes one waiter, for one new item (a connection to accept). By default every waiter:
    /// the others find nothing and wait again.
    fn wake_one(&self) {
        self.wake_all();
    }
}

impl Signal for Condvar {
    fn wake_all(&self) {
        self.notify_all();
    }

    fn wake_one(&self) {
        self.notify_one();
    }
}

/// A driver's I/O model, as the shared core sees it: the socket's non-blocking receive and
/// send, and how to interrupt the driver's wait.
pub(crate) trait Io: fmt::Debug + Send + Sync + Sized + 'static {
    /// What handles and `accept` wait on.
    type Signal: Signal;
    /// Whether the driver learns of readability edge-triggered (tokio: readiness is cleared
    /// only by a read that would block), so a turn must read until `WouldBlock`; with
    /// level-triggered `poll(2)` a short batch already shows the socket drained.
    const EDGE_TRIGGERED: bool = false;
    /// The driver's own output state, kept under the lock beside the endpoint (the tokio
    /// driver's backlog of datagrams the socket refused).
    type Queue: fmt::Debug + Default + Send;

    /// Interrupts the driver's wait so it takes a turn: its deadlines changed, or failed
    /// handshakes wait to be reported.
    fn wake(&self);

    /// Interrupts the wait of whoever takes the next turn, because work waits for a turn (a
    /// handshake the workers finished). By default [`wake`](Self::wake); the blocking driver
    /// kicks only the application thread that polls the socket if one does (it runs the work
    /// between its reads), else the driver thread, which then does not also wake to find the
    /// socket taken and its lock held.
    fn wake_for_work(&self) {
        self.wake();
    }

    /// The socket's address now, if the driver can tell (it changes after a client's
    /// `rebind`); `None`: the address it was opened on still holds.
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// The kernel's count of datagrams dropped at the socket's full receive buffer, read now
    /// (`SO_MEMINFO`), if the driver can tell; `None`: only what `SO_RXQ_OVFL` reported.
    fn socket_drops(&self) -> Option<u64> {
        None
    }

    /// Receives up to `max` datagrams into `rx` without blocking (one `recvmmsg(2)`): how many
    /// arrived, `WouldBlock` when none is queued.
    fn try_recv_batch(&self, rx: &mut RecvBatch, max: usize) -> io::Result<usize>;

    /// Sends every datagram `endpoint` has queued, in batches (`sendmmsg(2)`, GSO where it
    /// can), or keeps it in `out.queue` for later.
    fn flush(&self, endpoint: &mut Endpoint, out: &mut Output<Self::Queue>);

    /// Called once the driver stopped and every connection ended, to wake what else waits on
    /// the driver.
    fn stopped(&self) {}

    /// Sends one datagram to `to` now, without blocking, from whatever thread calls (a
    /// handshake worker sending the flight it made): whether it went out. `false` (the socket's
    /// buffer full, an error): the caller hands it to the endpoint, whose output the driver
    /// sends (and counts) as usual.
    fn send_now(&self, to: SocketAddr, datagram: &[u8]) -> bool;
}

/// Socket state under the lock: the send batch, the receive batch, the socket's drop counters
/// and the driver's own [`Io::Queue`].
pub(crate) struct Output<Q> {
    /// Where [`Endpoint::poll_transmit`] writes the datagrams of one send batch.
    pub tx: SendBatch,
    /// Where the driver turn receives a batch of datagrams.
    pub rx: RecvBatch,
    /// What the socket dropped, each way.
    pub counters: SocketCounters,
    /// The driver's own output state.
    pub queue: Q,
}

impl<Q: Default> Default for Output<Q> {
    fn default() -> Self {
        Output {
            tx: SendBatch::default(),
            rx: RecvBatch::default(),
            counters: SocketCounters::default(),
            queue: Q::default(),
        }
    }
}

impl<Q: fmt::Debug> fmt::Debug for Output<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output")
            .field("counters", &self.counters)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}
