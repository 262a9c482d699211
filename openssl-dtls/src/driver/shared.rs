//! The state a driver shares with its handles ([`Shared`]) and what sits behind its lock
//! ([`Core`]): the endpoint, the slot table through which handles wait on their connections,
//! the accept queue. Owns event dispatch, the driver turn (a receive batch, the timers, output,
//! then failure and address-change reports outside the lock) and the steps of shutting down —
//! the same for every driver; only waiting differs.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::batch;

/// How many due timers, and how many handshakes the workers finished, an application thread
/// polling for its own connection handles per turn ([`Shared::after_receive_budget`]): 4.
/// Under a handshake flood these (retransmissions, handshakes ending, jobs coming back) are
/// many, and each costs tens of µs; handled all at once, they made the poller's own next
/// record wait behind them. The poller goes on with the rest in its next turns, between
/// reads of the socket; the driver thread, when it runs, handles all.
pub(crate) const TURN_BUDGET: usize = 4;

/// How long other peers' work may wait for a thread that keeps taking its own record back
/// before that thread does a chunk of it anyway ([`Shared::after_receive_budget`]).
pub(crate) const LEFT_AT_MOST: std::time::Duration = std::time::Duration::from_millis(1);
use super::blocking::Rtc;
use super::deferred::Deferred;
use super::failures::PendingFailures;
use super::handle::Facts;
use super::moves::{AddressChange, PendingMoves};
use super::workers::{QueueBusy, RETRY_BUSY};
use super::{Io, Output, Signal};
use crate::context::DtlsClientContext;
use crate::endpoint::{ConnectionId, Endpoint, Event};
use crate::error::{Error, Result};
use crate::ffi::os;

/// How a connection handle sees its connection.
#[derive(Debug)]
pub(crate) enum SlotState {
    /// `connect` waits for the handshake.
    Handshaking,
    /// Handed out (or about to be): `send` and `recv` work.
    Established,
    /// Closed by either side, failed, or the driver stopped; with the error, if any.
    Ended(Option<Error>),
}

/// Per-connection wait state, under the core's lock.
#[derive(Debug)]
pub(crate) struct Slot<S> {
    /// What the handle last learned of its connection.
    pub state: SlotState,
    /// Woken when the connection's state changes or data arrives.
    pub signal: Arc<S>,
}

/// Everything behind the lock.
pub(crate) struct Core<D: Io> {
    /// The sans-IO endpoint.
    pub endpoint: Endpoint,
    /// The connections some handle (or `connect`) waits on.
    pub slots: HashMap<ConnectionId, Slot<D::Signal>>,
    /// Established server connections not accepted yet.
    /// Established connections not accepted yet, with what their handshake established (taken
    /// at once: a connection may end before it is accepted).
    accept_queue: VecDeque<(SocketAddr, ConnectionId, Facts)>,
    /// Whether a connection nobody waits for goes to the accept queue (a server) or is
    /// released (a client whose `connect` gave up).
    accepts: bool,
    /// The driver stopped or is stopping: no new work.
    pub shutdown: bool,
    /// Output waiting to be sent, and the driver's own output state.
    pub out: Output<D::Queue>,
    /// Failed handshakes for the failure hook.
    pub failures: PendingFailures,
    /// Connections that moved to a new peer address, for the address-change hook.
    pub moves: PendingMoves,
    /// Which thread drives the socket (the blocking driver's run-to-completion state; unused
    /// by the tokio driver).
    pub rtc: Rtc,
    /// Handshake datagrams waiting behind established traffic.
    pub deferred: Deferred,
    /// Since when other peers' work (deferred datagrams, due timers, finished jobs) has been
    /// left by threads that took their own record back ([`Shared::after_receive_budget`]).
    pub left_since: Option<Instant>,
    /// When to try the handshake workers' exchange again: set when a worker held their
    /// queue's lock ([`QueueBusy`](super::workers::QueueBusy)), cleared by an exchange.
    exchange_retry: Option<Instant>,
}

impl<D: Io> fmt::Debug for Core<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("endpoint", &self.endpoint)
            .field("slots", &self.slots.len())
            .field("accept_queue", &self.accept_queue.len())
            .field("shutdown", &self.shutdown)
            .field("out", &self.out)
            .finish_non_exhaustive()
    }
}

impl<D: Io> Core<D> {
    /// The next connection to accept (`Some(Ok)`), [`Error::Closed`] after shutdown, or `None`:
    /// wait.
    pub fn pop_accept(&mut self) -> Option<Result<(SocketAddr, ConnectionId, Facts)>> {
        if let Some(next) = self.accept_queue.pop_front() {
            return Some(Ok(next));
        }
        self.shutdown.then_some(Err(Error::Closed))
    }

    /// How the handshake `connect` waits on ended: `Some(Ok)` established, `Some(Err)` failed,
    /// or `None`: still in progress.
    pub fn connect_outcome(&mut self, id: ConnectionId) -> Option<Result<()>> {
        let shutdown = self.shutdown;
        match self.slots.get_mut(&id).map(|s| &mut s.state) {
            Some(SlotState::Established) => Some(Ok(())),
            Some(SlotState::Ended(e)) => Some(Err(e.take().unwrap_or(Error::Closed))),
            Some(SlotState::Handshaking) => shutdown.then_some(Err(Error::ClientClosed)),
            None => Some(Err(Error::Closed)),
        }
    }
}

/// A running driver: its shared state and what runs it (`R`: the join handle of its thread or
/// task), kept for shutdown to join or await once.
#[derive(Debug)]
pub(crate) struct Running<D: Io, R> {
    /// Shared with the driver and every handle.
    pub shared: Arc<Shared<D>>,
    /// The driver's thread or task, until shutdown takes it.
    runner: Mutex<Option<R>>,
}

impl<D: Io, R> Running<D, R> {
    /// A driver over `shared`, run by `runner`.
    pub fn new(shared: Arc<Shared<D>>, runner: R) -> Self {
        Running {
            shared,
            runner: Mutex::new(Some(runner)),
        }
    }

    /// Locks the runner slot (shutdown takes the runner out of it).
    pub fn runner(&self) -> MutexGuard<'_, Option<R>> {
        self.runner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What one [`Shared::receive`] did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Received {
    /// Datagrams handed to the endpoint (a GRO train counts as the datagrams it carries).
    pub datagrams: usize,
    /// The socket had no more: a short batch, or `WouldBlock`.
    pub drained: bool,
}

/// Failed handshakes and address changes taken from under the lock, for their hooks.
pub(crate) type Reports = (
    Option<super::failures::Report>,
    Option<super::moves::Report>,
);

/// Shared by the driver (thread or task) and every handle.
#[derive(Debug)]
pub(crate) struct Shared<D: Io> {
    core: Mutex<Core<D>>,
    /// Wakes `accept` waiters (a connection was queued, or the driver stopped).
    pub accept: D::Signal,
    /// The driver's socket and wake-up machinery.
    pub io: D,
    /// The socket's local address.
    pub local_addr: SocketAddr,
    /// Datagrams read per turn.
    batch: usize,
    /// A sharded server's hook, called for each connection queued to accept.
    pub accept_hook: std::sync::OnceLock<super::shards::AcceptHook>,
    /// The handshake workers, if the driver started any (`workers.rs`).
    pub workers: super::workers::Workers,
}

impl<D: Io> Shared<D> {
    /// The shared state of a driver for `endpoint` on `io`, a server's if `accepts`.
    pub fn new(
        endpoint: Endpoint,
        accepts: bool,
        io: D,
        local_addr: SocketAddr,
        batch: usize,
    ) -> Shared<D> {
        Shared {
            core: Mutex::new(Core {
                endpoint,
                slots: HashMap::new(),
                accept_queue: VecDeque::new(),
                accepts,
                shutdown: false,
                out: Output::default(),
                failures: PendingFailures::default(),
                moves: PendingMoves::default(),
                rtc: Rtc::default(),
                deferred: Deferred::default(),
                left_since: None,
                exchange_retry: None,
            }),
            accept: D::Signal::default(),
            io,
            local_addr,
            batch: batch.max(1),
            accept_hook: std::sync::OnceLock::new(),
            workers: super::workers::Workers::default(),
        }
    }

    /// Installs a sharded server's accept hook and calls it once for every connection this
    /// driver queued to accept before the hook was in place (its driver runs from the moment
    /// it started). Under the core's lock, as `dispatch` calls it: no connection is announced
    /// twice or missed.
    pub fn install_accept_hook(&self, hook: super::shards::AcceptHook) {
        let core = self.lock();
        let queued = core.accept_queue.len();
        if self.accept_hook.set(hook).is_ok() {
            if let Some(hook) = self.accept_hook.get() {
                (0..queued).for_each(|_| hook.call());
            }
        }
        drop(core);
    }

    /// Locks the core. A poisoned lock (a panic while it was held) is taken over: the data it
    /// protects stays consistent between statements.
    pub fn lock(&self) -> MutexGuard<'_, Core<D>> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Interrupts the driver's wait so it recomputes its deadline.
    pub fn wake(&self) {
        self.io.wake();
    }

    /// Sends everything the endpoint has queued.
    pub fn flush(&self, core: &mut Core<D>) {
        self.io.flush(&mut core.endpoint, &mut core.out);
    }

    /// Dispatches the endpoint's events, then sends its output: after every call that may
    /// produce either.
    pub fn settle(&self, core: &mut Core<D>) {
        self.dispatch(core);
        self.flush(core);
    }

    /// Routes endpoint events to the handles waiting on them.
    pub fn dispatch(&self, core: &mut Core<D>) {
        while let Some(event) = core.endpoint.poll_event() {
            match event {
                Event::Connected { peer, id } => match core.slots.get_mut(&id) {
                    Some(slot) => {
                        slot.state = SlotState::Established;
                        slot.signal.wake_all();
                    }
                    None if core.accepts => {
                        let slot = Slot {
                            state: SlotState::Established,
                            signal: Arc::default(),
                        };
                        core.slots.insert(id, slot);
                        let facts = Facts::of(core.endpoint.session(peer, id));
                        core.accept_queue.push_back((peer, id, facts));
                        self.accept.wake_one();
                        if let Some(hook) = self.accept_hook.get() {
                            hook.call(); // a sharded server's one accept queue
                        }
                    }
                    // A client handshake whose `connect` gave up: nobody to hand it to.
                    None => core.endpoint.release(peer, id),
                },
                Event::Readable { id, .. } => {
                    if let Some(slot) = core.slots.get(&id) {
                        slot.signal.wake_all();
                    }
                }
                Event::Closed { id, error, .. } => {
                    if let Some(slot) = core.slots.get_mut(&id) {
                        slot.state = SlotState::Ended(error);
                        slot.signal.wake_all();
                    }
                }
                // Handles keep the address they were made with (every endpoint call accepts
                // it); `peer_addr` asks the endpoint for the current one.
                Event::AddressChanged { id, from, to } if core.moves.wanted() => {
                    let cid = core
                        .endpoint
                        .session(to, id)
                        .and_then(|s| s.connection_ids())
                        .map(|(own, _)| own.to_vec())
                        .unwrap_or_default();
                    let change = AddressChange { id, from, to, cid };
                    if core.moves.push(change) {
                        self.wake(); // the driver reports it, outside the lock
                    }
                }
                // No hook: the endpoint logged the move.
                Event::AddressChanged { .. } => {}
                // The blocking and async drivers do not read non-DTLS datagrams (yet): with
                // `demux_rtp` on they wait in the endpoint's bounded queue, then are counted
                // as dropped.
                Event::NonDtlsReadable { id, .. } => {
                    if let Some(slot) = core.slots.get(&id) {
                        slot.signal.wake_all();
                    }
                }
                Event::HandshakeFailed(failure) => {
                    if core.failures.push(failure) {
                        self.wake(); // the driver reports it, outside the lock
                    }
                }
            }
        }
    }

    /// One driver turn, once its wait ended: a batch of datagrams, the timers, events, output,
    /// then the failed handshakes and the address changes to their hooks (outside the lock).
    /// False after shutdown.
    // The tokio driver's turn (the blocking driver runs its own, `driver_turn`).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn turn(&self) -> bool {
        let mut core = self.lock();
        if core.shutdown {
            return false;
        }
        self.receive(&mut core, self.batch);
        self.after_receive(&mut core);
        let reports = Self::take_reports(&mut core);
        drop(core);
        Self::report(reports);
        true
    }

    /// Datagrams read per driver turn ([`SocketOptions::batch`](super::SocketOptions)).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// What follows a receive batch, under the lock: the handshake datagrams the batch put
    /// behind its established records ([`Deferred`]), the timers that are due, the handshake
    /// workers' exchange (after the batch's records: handshakes the workers finished come
    /// back, and the ones checked out in this turn go to them), then events and output.
    pub fn after_receive(&self, core: &mut Core<D>) {
        let now = Instant::now();
        while core.deferred.handle_next(&mut core.endpoint, now) {}
        core.endpoint.handle_timeout(now);
        self.exchange_budget(core, usize::MAX);
        // Nothing is left now (what a busy workers' queue kept has its own retry time): a
        // `left_since` kept from an earlier budgeted turn would hold every later wait at 0.
        core.left_since = None;
        self.settle(core);
    }

    /// The handshake workers' exchange
    /// ([`Workers::exchange_budget`](super::workers::Workers::exchange_budget)) under the lock: whether
    /// finished jobs were left; if a worker held their queue, none were taken and the next try
    /// is due [`RETRY_BUSY`] after that ([`due`](Self::due)).
    fn exchange_budget(&self, core: &mut Core<D>, budget: usize) -> bool {
        match self.workers.exchange_budget(&mut core.endpoint, budget) {
            Ok(left) => {
                core.exchange_retry = None;
                left
            }
            Err(QueueBusy) => {
                // From when it was found busy: `now` may be a long turn ago.
                core.exchange_retry = Some(Instant::now() + RETRY_BUSY);
                false
            }
        }
    }

    /// When a wait on the socket must end for the endpoint's own work, whichever is first: at
    /// once if handshake datagrams wait behind established records ([`Deferred`]) or handshakes
    /// the workers finished wait to be given back (a kick for them may have been drained by a
    /// new wait), at the retry time if a worker held their queue at the last try, else the
    /// endpoint's next deadline (`None`: none; a worker that finishes a job wakes the driver).
    pub fn due(&self, core: &Core<D>, now: Instant) -> Option<Instant> {
        if !core.deferred.is_empty() {
            return Some(now);
        }
        let exchange = core
            .exchange_retry
            .or_else(|| self.workers.has_done().then_some(now));
        [core.endpoint.poll_timeout(), exchange]
            .into_iter()
            .flatten()
            .min()
    }

    /// [`after_receive`](Self::after_receive) for a thread that waits for its own record:
    /// while its record is not in, one handshake datagram put behind established records
    /// ([`Deferred`]), at most [`TURN_BUDGET`] timers and as many finished handshake jobs
    /// between reads of the socket; once it is in (`own_in`), none of them: the thread takes
    /// its record back to its application at once, and what is left waits for its next wait
    /// (which then does not sleep) or the driver thread — unless what is left has waited
    /// [`LEFT_AT_MOST`] already (a thread whose records keep arriving ahead of it never waits
    /// with its record out): then this thread does one chunk too. Events and output always.
    /// Returns whether anything was left.
    pub fn after_receive_budget(&self, core: &mut Core<D>, own_in: bool) -> bool {
        let now = Instant::now();
        let overdue = core
            .left_since
            .is_some_and(|since| now.saturating_duration_since(since) >= LEFT_AT_MOST);
        let left = if own_in && !overdue {
            !core.deferred.is_empty()
                || core.endpoint.handle_timeout_budget(now, 0)
                || self.exchange_budget(core, 0)
        } else {
            let deferred_left = core.deferred.handle_some(&mut core.endpoint, now, 1);
            let timers_left = core.endpoint.handle_timeout_budget(now, TURN_BUDGET);
            let jobs_left = self.exchange_budget(core, TURN_BUDGET);
            core.left_since = None;
            deferred_left || timers_left || jobs_left
        };
        if left {
            core.left_since.get_or_insert(now);
        } else {
            core.left_since = None;
        }
        self.settle(core);
        left
    }

    /// Takes the failed handshakes and address changes waiting for their hooks, to
    /// [`report`](Self::report) once the lock is released.
    pub fn take_reports(core: &mut Core<D>) -> Reports {
        (core.failures.take(), core.moves.take())
    }

    /// Calls the failure and address-change hooks with what [`take_reports`](Self::take_reports)
    /// took. Call without the lock.
    pub fn report((failures, moves): Reports) {
        if let Some(report) = failures {
            report.report();
        }
        if let Some(report) = moves {
            report.report();
        }
    }

    /// Receives up to `max` datagrams (`recvmmsg(2)`, as many per call as the receive batch
    /// holds) and hands each to the endpoint, under the lock the caller holds; a GRO train is
    /// split into its datagrams, each handled on its own and counted against `max` (a call may
    /// exceed it by the rest of its last train). Returns how many were handled, and whether the
    /// socket had no more (a short batch, or `WouldBlock`; an edge-triggered driver reads until
    /// `WouldBlock`).
    pub fn receive(&self, core: &mut Core<D>, max: usize) -> Received {
        let Core {
            endpoint,
            out,
            deferred,
            ..
        } = core;
        let mut left = max;
        let mut got = Received::default();
        while left > 0 {
            match self.io.try_recv_batch(&mut out.rx, left) {
                Ok(n) => {
                    let now = Instant::now();
                    let mut handled = 0;
                    for i in 0..n {
                        let Some((peer, data, control)) = out.rx.get(i) else {
                            break;
                        };
                        out.counters.note_received(&control);
                        let Some(peer) = peer else {
                            continue; // not an IP address: nothing can come of it
                        };
                        if data.is_empty() {
                            endpoint.handle_datagram(now, peer, data);
                            handled += 1;
                        }
                        for datagram in batch::split(data, control.gro_segment) {
                            deferred.handle_or_defer(endpoint, now, peer, datagram);
                            handled += 1;
                        }
                    }
                    got.datagrams += handled;
                    // Fewer than one call could return: the socket is drained, no need to ask
                    // again (1 per call where the system has no `recvmmsg`).
                    if n < left.min(batch::RECV_SLOTS).min(os::RECV_PER_CALL) && !D::EDGE_TRIGGERED
                    {
                        got.drained = true;
                        break;
                    }
                    // A GRO train counts as the datagrams it carries.
                    left = left.saturating_sub(handled.max(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    got.drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ICMP errors surface as ECONNREFUSED etc. on Linux: not fatal.
                Err(e) => {
                    log::debug!("recvmmsg: {e}");
                    left -= 1;
                }
            }
        }
        got
    }

    /// A snapshot of the endpoint's counters with the socket's (`socket_rx_dropped`,
    /// `socket_send_errors`, `socket_send_full`).
    pub fn stats(&self) -> crate::endpoint::EndpointStats {
        let core = self.lock();
        let mut stats = core.endpoint.stats();
        core.out.counters.add_to(&mut stats);
        stats.handshake_datagrams_deferred += core.deferred.count;
        stats.handshake_jobs_rescued += self.workers.rescued();
        // The kernel's count read now (`SO_MEMINFO`), where the driver can: exact at once,
        // where `SO_RXQ_OVFL` arrives only with the next datagram.
        if let Some(now) = self.io.socket_drops() {
            stats.socket_rx_dropped = stats.socket_rx_dropped.max(now);
        }
        stats
    }

    /// Starts a client handshake with `peer` and a slot for `connect` to wait on.
    pub fn begin_connect(
        &self,
        peer: SocketAddr,
        ctx: &DtlsClientContext,
        server_name: Option<&str>,
    ) -> Result<(ConnectionId, Arc<D::Signal>)> {
        let mut core = self.lock();
        if core.shutdown {
            return Err(Error::ClientClosed);
        }
        let id = core
            .endpoint
            .connect(Instant::now(), peer, ctx, server_name)?;
        let signal = Arc::<D::Signal>::default();
        let slot = Slot {
            state: SlotState::Handshaking,
            signal: Arc::clone(&signal),
        };
        core.slots.insert(id, slot);
        self.settle(&mut core);
        drop(core);
        self.wake();
        Ok((id, signal))
    }

    /// Releases connection `id` (its handle is gone, or `connect` gave up) and its slot.
    pub fn release(&self, peer: SocketAddr, id: ConnectionId) {
        let mut core = self.lock();
        core.endpoint.release(peer, id);
        core.slots.remove(&id);
        self.settle(&mut core);
        drop(core);
        self.wake();
    }

    /// Closes every connection (`close_notify`) and sends what it can, unless the driver
    /// already stopped: the first step of every shutdown.
    pub fn close_all(&self, core: &mut Core<D>) {
        if !core.shutdown {
            core.endpoint.close_all();
            self.settle(core);
        }
    }

    /// [`close_all`](Self::close_all), then marks the driver stopped: it ends at its next turn.
    pub fn stop(&self) {
        let mut core = self.lock();
        self.close_all(&mut core);
        core.shutdown = true;
    }

    /// Marks every connection ended and wakes every waiter: the driver stopped, with `error`
    /// if its socket failed.
    pub fn end_all(&self, error: Option<io::ErrorKind>) {
        let mut core = self.lock();
        core.shutdown = true;
        for slot in core.slots.values_mut() {
            if !matches!(slot.state, SlotState::Ended(_)) {
                slot.state = SlotState::Ended(
                    error.map(|k| Error::Io(io::Error::new(k, "the DTLS driver stopped"))),
                );
            }
            slot.signal.wake_all();
        }
        drop(core);
        self.workers.close();
        self.accept.wake_all();
        self.io.stopped();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::blocking::Driver;
    use super::super::SocketOptions;
    use crate::endpoint::{Endpoint, EndpointConfig};

    /// A full turn leaves nothing for later: the `left_since` of an earlier budgeted turn is
    /// cleared, so a wait whose steps end in full turns (a `connect`, a non-DTLS read) does not
    /// take it for overdue work and poll with a past deadline again and again.
    #[test]
    fn a_full_turn_clears_what_a_budgeted_turn_left() {
        let endpoint = Endpoint::client(EndpointConfig::default()).unwrap();
        let driver = Driver::start(
            "127.0.0.1:0",
            endpoint,
            false,
            &SocketOptions::default(),
            "left",
        )
        .unwrap();
        let shared = &driver.shared;
        let mut core = shared.lock();
        core.left_since = Some(Instant::now() - Duration::from_millis(5));
        shared.after_receive(&mut core);
        assert_eq!(core.left_since, None);
        drop(core);
        driver.shutdown();
    }
}
