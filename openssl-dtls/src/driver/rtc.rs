//! The blocking driver's run-to-completion wait ([`wait_until`]): a thread that waits for its
//! connection takes the poller role and drives the socket itself ([`Rtc`], under the core's
//! lock), reads ahead in bursts ([`READ_AHEAD`]), and pauses for a reader that fell behind
//! ([`BACKPRESSURE`]); its own waker ([`Kick`]) gets it out of `poll(2)`. The driver thread's
//! side (parking while a thread polls, the linger) is in [`blocking`](super::blocking), whose
//! module docs describe the whole.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::blocking::{Blocking, BlockingShared, Waiters};
use super::shared::{Core, LEFT_AT_MOST};
use crate::endpoint::{ConnectionId, Endpoint};
use crate::ffi::os;

/// How long the driver thread leaves the socket alone after the last application thread
/// stopped polling it: 1 ms. A `recv` loop (echo, request/response) comes back within a round
/// trip plus its own work, tens of µs on a LAN, so it keeps the socket without the driver thread
/// waking; an application that stops waiting delays other connections' datagrams and the
/// timers by at most this much.
pub(crate) const LINGER: Duration = Duration::from_millis(1);

/// The longest the socket is left unread for one reader that fell behind: 100 ms. When the
/// connection an application thread last read from ([`Rtc::note_read`]) has its receive queue
/// (nearly) full, whoever would read the socket for others (the driver thread, another
/// connection's poller) stops and lets the datagrams wait in the socket buffer
/// ([`SocketOptions::recv_buffer_size`](super::SocketOptions::recv_buffer_size)) instead of dropping them at that queue: the reader
/// empties it, then polls the socket itself. The pause ends when the reader's queue is empty, or
/// after this long; a pause that ran out is not taken again until the reader caught up (its
/// queue was empty once). So other peers wait at most this long per catch-up of one reader —
/// a reader that does not keep up has its records dropped at its queue (counted,
/// `recv_queue_dropped`) rather than stall everyone.
pub(crate) const BACKPRESSURE: Duration = Duration::from_millis(100);

/// Which waiter may poll, and keeps the poller role: a higher rank takes it from a lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rank {
    /// `accept`: waits long, for anything; it does not poll (see the module docs).
    Accept,
    /// A connection's `recv*` or `connect`'s handshake.
    Connection,
}

/// The application thread polling the socket.
#[derive(Debug)]
pub(super) struct Poller {
    ticket: u64,
    rank: Rank,
    /// Its own waker, to kick it out of `poll(2)`.
    kick: Arc<KickTx>,
}

/// Run-to-completion state, under the core's lock: who polls the socket, since when it is free,
/// and the backpressure pause.
#[derive(Debug, Default)]
pub(crate) struct Rtc {
    pub(super) poller: Option<Poller>,
    next_ticket: u64,
    /// When the last application poller left, or an application thread last read a record.
    vacated_at: Option<Instant>,
    /// When the linger timer fires, as last armed.
    armed_until: Option<Instant>,
    /// The connection an application thread last took a record of.
    reader: Option<(SocketAddr, ConnectionId)>,
    /// When the current pause for that reader began ([`BACKPRESSURE`]).
    pause_since: Option<Instant>,
    /// The pause ran out: none again until the reader's queue was empty.
    pause_spent: bool,
    /// Until when the driver thread leaves the socket alone (a pause).
    backlog_until: Option<Instant>,
}

impl Rtc {
    fn holds(&self, ticket: u64) -> bool {
        self.poller.as_ref().is_some_and(|p| p.ticket == ticket)
    }

    /// Whether the driver thread leaves the socket to the application: `Some(None)` while an
    /// application thread polls it, `Some(Some(t))` lingering until `t`, `None`: the driver
    /// thread polls.
    pub(super) fn parked(&self, now: Instant) -> Option<Option<Instant>> {
        if self.poller.is_some() {
            return Some(None);
        }
        let linger = self.vacated_at.map(|at| at + LINGER);
        let until = match (linger, self.backlog_until) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b)?,
        };
        (until > now).then_some(Some(until))
    }

    /// An application thread just took a record of connection `id` at `peer`: the driver thread
    /// stays off the socket for [`LINGER`], and the connection is the one whose queue a pause
    /// protects ([`BACKPRESSURE`]).
    pub(crate) fn note_read(&mut self, peer: SocketAddr, id: ConnectionId) {
        if self.poller.is_none() {
            self.vacated_at = Some(Instant::now());
        }
        if self.reader != Some((peer, id)) {
            self.reader = Some((peer, id));
            self.pause_since = None;
            self.pause_spent = false;
        }
    }

    /// Whether whoever reads the socket must pause ([`BACKPRESSURE`]): `Some(until)` while the
    /// reader's queue is nearly full and the pause has not run out.
    pub(super) fn pause(&mut self, endpoint: &Endpoint, now: Instant) -> Option<Instant> {
        let (peer, id) = self.reader?;
        let Some(session) = endpoint.session(peer, id) else {
            self.reader = None;
            self.backlog_until = None;
            return None;
        };
        if !session.has_received() {
            // Caught up: the next time it falls behind, it may pause the socket again.
            self.pause_since = None;
            self.pause_spent = false;
            self.backlog_until = None;
            return None;
        }
        if self.pause_spent || !session.recv_queue_nearly_full() {
            return None;
        }
        let until = *self.pause_since.get_or_insert(now) + BACKPRESSURE;
        if until <= now {
            self.pause_spent = true;
            self.backlog_until = None;
            log::debug!("{peer}: its reader fell behind for {BACKPRESSURE:?}; reading on");
            return None;
        }
        self.backlog_until = Some(until);
        Some(until)
    }
}

impl Rtc {
    /// How many datagrams one receive call may take without overflowing the queue of the reader
    /// the pause protects: the records its queue still has room for (at least 1), at most
    /// [`READ_AHEAD`]; [`READ_AHEAD`] when no reader is protected.
    pub(super) fn read_budget(&self, endpoint: &Endpoint) -> usize {
        self.reader
            .and_then(|(peer, id)| endpoint.session(peer, id))
            .map_or(READ_AHEAD, |s| s.recv_queue_room().clamp(1, READ_AHEAD))
    }
}

/// Datagrams the poller reads in one step while its records come in a burst: after its own
/// record arrived, it reads on (up to this many, while its queue has room) so the next `recv`
/// calls find theirs queued, with no `poll(2)` and no role taken. In a request/response loop the
/// socket is empty after the reply: reading ahead would cost a `recvfrom` that finds nothing,
/// so a thread reads ahead only while it has seen bursts (`read_ahead`), probing once every
/// [`READ_AHEAD_PROBE`] waits otherwise.
pub(crate) const READ_AHEAD: usize = 16;

/// How often (in waits) a thread not in a burst checks with one more read whether one began.
const READ_AHEAD_PROBE: u32 = 16;

thread_local! {
    /// (this thread's `recv`s come in a burst, waits since the last probe)
    static BURST: std::cell::Cell<(bool, u32)> = const { std::cell::Cell::new((false, 0)) };
}

/// Whether to read on past our own record: in a burst, or to probe whether one began.
fn should_read_ahead() -> bool {
    BURST
        .try_with(|b| {
            let (burst, since) = b.get();
            if burst {
                return true;
            }
            let probe = since + 1 >= READ_AHEAD_PROBE;
            b.set((false, if probe { 0 } else { since + 1 }));
            probe
        })
        .unwrap_or(false)
}

/// Records whether a read past our own record found a datagram.
fn set_burst(on: bool) {
    let _ = BURST.try_with(|b| b.set((on, 0)));
}

/// A thread's own waker, made once per thread that ever waits (two descriptors), for the
/// poller role; `None` if it could not be made (the thread then only waits on its `Condvar`).
struct Kick {
    tx: Arc<KickTx>,
    rx: UnixDatagram,
}

/// The sending side of a thread's kick, held by whoever may need to interrupt its `poll(2)`.
#[derive(Debug)]
pub(crate) struct KickTx {
    socket: UnixDatagram,
    /// A kick is written and not drained yet: at most one byte in flight, and no drain
    /// syscall when there is none.
    pending: AtomicBool,
}

impl KickTx {
    /// Interrupts the owner's `poll(2)` (or its next one).
    pub(super) fn kick(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            let _ = self.socket.send(&[1]);
        }
    }
}

impl Kick {
    fn new() -> io::Result<Kick> {
        let (tx, rx) = UnixDatagram::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        let tx = KickTx {
            socket: tx,
            pending: AtomicBool::new(false),
        };
        Ok(Kick {
            tx: Arc::new(tx),
            rx,
        })
    }

    /// Consumes a kick, if one was sent.
    fn drain(&self) {
        if self.tx.pending.swap(false, Ordering::SeqCst) {
            let mut buf = [0u8; 16];
            while self.rx.recv(&mut buf).is_ok() {}
        }
    }
}

thread_local! {
    static KICK: Option<Kick> = Kick::new().ok();
}

/// Waits until `ready` returns `Some`, or `deadline` passes (then `None`), driving the socket
/// meanwhile if no other application thread of the same or a higher `rank` does; otherwise
/// waits on `signal`. `ready` runs under the lock, before every wait. `own`: the connection a
/// `recv` waits on, for which the poller reads ahead in a burst ([`READ_AHEAD`]).
pub(crate) fn wait_until<'a, T>(
    shared: &'a BlockingShared,
    core: MutexGuard<'a, Core<Blocking>>,
    signal: &Waiters,
    rank: Rank,
    own: Option<(SocketAddr, ConnectionId)>,
    deadline: Option<Instant>,
    ready: impl FnMut(&mut Core<Blocking>) -> Option<T>,
) -> (MutexGuard<'a, Core<Blocking>>, Option<T>) {
    let mut wait = Wait {
        shared,
        core: Some(core),
        signal,
        rank,
        deadline,
        tenure: None,
        can_poll: rank != Rank::Accept,
        streaming: false,
        own,
    };
    let mut ready = ready;
    // A thread whose locals are being torn down has no kick: it waits on its `Condvar`.
    let outcome = match KICK.try_with(|kick| wait.run(kick.as_ref(), &mut ready)) {
        Ok(outcome) => outcome,
        Err(_) => {
            let core = wait.core.take().expect("the wait holds the lock");
            let (core, out) = wait_on_signal(core, signal, deadline, &mut ready);
            wait.core = Some(core);
            out
        }
    };
    let core = wait.core.take().expect("the wait holds the lock");
    (core, outcome)
}

/// One thread's wait, with the lock it holds between steps.
struct Wait<'s, 'a> {
    shared: &'a BlockingShared,
    /// Held except while in `poll(2)`.
    core: Option<MutexGuard<'a, Core<Blocking>>>,
    signal: &'s Waiters,
    rank: Rank,
    deadline: Option<Instant>,
    /// The ticket of this thread's poller role, while it holds it.
    tenure: Option<u64>,
    /// False after `poll(2)` failed: only the `Condvar` from then on.
    can_poll: bool,
    /// The last read as the poller got a datagram: read again before sleeping in `poll(2)`.
    streaming: bool,
    /// The connection whose record this wait is for (a `recv`), to read ahead for it.
    own: Option<(SocketAddr, ConnectionId)>,
}

impl<'a> Wait<'_, 'a> {
    fn core(&mut self) -> &mut MutexGuard<'a, Core<Blocking>> {
        self.core.as_mut().expect("the wait holds the lock")
    }

    fn run<T>(
        &mut self,
        kick: Option<&Kick>,
        mut ready: impl FnMut(&mut Core<Blocking>) -> Option<T>,
    ) -> Option<T> {
        let out = loop {
            if let Some(v) = ready(self.core()) {
                break Some(v);
            }
            let now = Instant::now();
            if self.deadline.is_some_and(|at| at <= now) {
                break None;
            }
            if let Some(ticket) = self.tenure {
                if !self.core().rtc.holds(ticket) {
                    self.tenure = None; // a higher rank took the socket
                }
            }
            if self.tenure.is_none() && self.can_poll {
                if let Some(kick) = kick {
                    self.tenure = self.take_role(kick);
                    self.streaming = false;
                }
            }
            if self.tenure.is_some() {
                let core = &mut **self.core.as_mut().expect("the wait holds the lock");
                if let Some(until) = core.rtc.pause(&core.endpoint, now) {
                    // Another connection's reader is behind: leave it the socket, and the
                    // datagrams in the socket buffer, until it caught up or the pause ends.
                    self.leave_role();
                    let wait_until = self.deadline.map_or(until, |at| at.min(until));
                    let core = self.core.take().expect("the wait holds the lock");
                    self.core = Some(wait_once(core, self.signal, Some(wait_until)));
                    continue;
                }
            }
            match (self.tenure, kick) {
                (Some(_), Some(kick)) => self.poll_step(kick),
                _ => {
                    let core = self.core.take().expect("the wait holds the lock");
                    let core = wait_once(core, self.signal, self.deadline);
                    self.core = Some(core);
                }
            }
        };
        self.leave_role();
        out
    }

    /// Takes the poller role if it is free or held by a lower rank (kicking that thread out of
    /// its `poll(2)`); returns the ticket.
    fn take_role(&mut self, kick: &Kick) -> Option<u64> {
        let rank = self.rank;
        let shared = self.shared;
        let core = self.core();
        if core.shutdown {
            return None;
        }
        match &core.rtc.poller {
            Some(p) if p.rank >= rank => return None,
            Some(p) => p.kick.kick(),
            None => {}
        }
        kick.drain(); // a kick meant for an earlier wait
        let ticket = core.rtc.next_ticket;
        core.rtc.next_ticket += 1;
        core.rtc.poller = Some(Poller {
            ticket,
            rank,
            kick: Arc::clone(&kick.tx),
        });
        shared.io.set_poller_kick(Some(Arc::clone(&kick.tx)));
        Some(ticket)
    }

    /// Gives the role up, if this thread still holds it: the driver thread takes the socket
    /// back after [`LINGER`] unless another thread takes the role first.
    fn leave_role(&mut self) {
        let Some(ticket) = self.tenure.take() else {
            return;
        };
        let shared = self.shared;
        let core = self.core();
        if !core.rtc.holds(ticket) {
            return;
        }
        let now = Instant::now();
        core.rtc.poller = None;
        core.rtc.vacated_at = Some(now);
        shared.io.set_poller_kick(None);
        // The driver thread may sleep with no timeout (it parked while we polled): the timer
        // wakes it to take the socket back. Re-armed only when less than half a linger is left,
        // so a `recv` loop costs one `timerfd_settime` per half millisecond, not one per call;
        // the driver thread, woken early, sees the recent `vacated_at` and sleeps out the rest.
        if core.rtc.armed_until.is_none_or(|at| at < now + LINGER / 2) {
            core.rtc.armed_until = Some(now + LINGER);
            if let Err(e) = shared.io.linger.arm(LINGER) {
                // Without the timer the driver thread must be woken now, or it would not resume.
                log::debug!("linger timer: {e}");
                core.rtc.armed_until = None;
                let _ = shared.io.waker_tx.send(&[1]);
            }
        }
    }

    /// One step as the poller: unless the last step read a datagram, sleep in `poll(2)` on the
    /// socket and our kick until something arrives, our deadline or the endpoint's next one;
    /// then read datagrams until our own record is queued (or more in a burst, up to
    /// [`READ_AHEAD`], while our queue has room and no pause holds), then run the timers that
    /// are due, events and output.
    fn poll_step(&mut self, kick: &Kick) {
        let shared = self.shared;
        let io = &shared.io;
        if !self.streaming {
            let deadline = self.deadline;
            let core = &**self.core.as_ref().expect("the wait holds the lock");
            let now = Instant::now();
            // Our deadline, the endpoint's work, and work an earlier step left for later: at
            // most until it is overdue.
            let left = core.left_since.map(|since| since + LEFT_AT_MOST);
            let wake_at = [deadline, shared.due(core, now), left]
                .into_iter()
                .flatten()
                .min();
            drop(self.core.take());
            let timeout = wake_at.map(|at| at.saturating_duration_since(Instant::now()));
            let waited = os::wait_readable([io.socket.as_fd(), kick.rx.as_fd()], timeout);
            kick.drain();
            self.core = Some(shared.lock());
            if let Err(e) = waited {
                // Leave the socket to the driver thread and wait on the `Condvar`.
                log::debug!("poll as the poller failed: {e}");
                self.can_poll = false;
                self.leave_role();
                return;
            }
            let ticket = self.tenure.unwrap_or(u64::MAX);
            if !self.core().rtc.holds(ticket) {
                return; // kicked out while asleep
            }
        }
        let own = self.own;
        let core = &mut **self.core.as_mut().expect("the wait holds the lock");
        let mut read = 0;
        let mut drained = false;
        let mut ahead = false; // reading past our own record in this step
        loop {
            if read > 0 && core.rtc.pause(&core.endpoint, Instant::now()).is_some() {
                break; // the reader the pause protects is behind: leave the rest in the socket
            }
            // Until our record is in, one datagram at a time (it may be the only one); reading
            // ahead, as many as our queue has room for in one call (`recvmmsg`).
            let want = match own {
                Some((peer, id)) if ahead => core
                    .endpoint
                    .session(peer, id)
                    .map_or(1, |s| s.recv_queue_room())
                    .min(READ_AHEAD - read)
                    .max(1),
                _ => 1,
            };
            let got = shared.receive(core, want);
            drained = got.drained;
            if got.datagrams == 0 {
                if ahead && drained {
                    set_burst(false);
                }
                break;
            }
            read += got.datagrams;
            if ahead {
                set_burst(true);
            }
            if drained {
                break;
            }
            let Some((peer, id)) = own else {
                break; // `accept`, `connect`: one datagram, then check
            };
            let (ours, full) = core.endpoint.session(peer, id).map_or((true, true), |s| {
                (s.has_received(), s.recv_queue_nearly_full())
            });
            if read >= READ_AHEAD || full {
                break;
            }
            if ours && !ahead {
                ahead = should_read_ahead();
                if !ahead {
                    break;
                }
            }
        }
        // Waiting for a connection's record, handshake work and timers run in bounded
        // chunks between reads of the socket (`TURN_BUDGET`); `accept` and `connect` do all.
        let left = if let Some((peer, id)) = own {
            // Other peers' work in small chunks between reads of the socket while our record
            // is not in; none once it is (it waits for our next wait, or the driver thread).
            let own_in = core
                .endpoint
                .session(peer, id)
                .is_none_or(|s| s.has_received());
            shared.after_receive_budget(core, own_in)
        } else {
            shared.after_receive(core);
            false
        };
        self.streaming = !drained || left;
        if self.streaming {
            // Let other threads at the lock before our condition is checked again.
            drop(self.core.take());
            self.core = Some(shared.lock());
        }
    }
}

impl Drop for Wait<'_, '_> {
    /// Gives the poller role up even if the wait unwinds, so the socket is never left to a
    /// thread that no longer polls it.
    fn drop(&mut self) {
        if self.core.is_some() {
            self.leave_role();
        }
    }
}

/// Waits on `signal` once (until woken, or `deadline`), counted as a waiter.
fn wait_once<'a>(
    core: MutexGuard<'a, Core<Blocking>>,
    signal: &Waiters,
    deadline: Option<Instant>,
) -> MutexGuard<'a, Core<Blocking>> {
    signal.count.fetch_add(1, Ordering::SeqCst);
    let core = match deadline {
        None => signal.cv.wait(core).unwrap_or_else(PoisonError::into_inner),
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            signal
                .cv
                .wait_timeout(core, left.min(Duration::from_secs(3600)))
                .unwrap_or_else(PoisonError::into_inner)
                .0
        }
    };
    signal.count.fetch_sub(1, Ordering::SeqCst);
    core
}

/// Waits on `signal` until `ready` returns `Some`, or `deadline` passes (then `None`).
fn wait_on_signal<'a, T>(
    mut core: MutexGuard<'a, Core<Blocking>>,
    signal: &Waiters,
    deadline: Option<Instant>,
    ready: &mut impl FnMut(&mut Core<Blocking>) -> Option<T>,
) -> (MutexGuard<'a, Core<Blocking>>, Option<T>) {
    loop {
        if let Some(v) = ready(&mut core) {
            return (core, Some(v));
        }
        if deadline.is_some_and(|at| at <= Instant::now()) {
            return (core, None);
        }
        core = wait_once(core, signal, deadline);
    }
}
