//! The handshake workers: threads that run the expensive steps of server handshakes
//! ([`HandshakeJob`]s the endpoint checks out, see `endpoint/offload.rs`) outside the driver's
//! lock, so that the thread serving established connections never waits behind ECDHE and
//! signatures.
//!
//! ```text
//! driver turn (lock held): receive batch ─> timers ─> Workers::exchange_budget: finished jobs back in
//!                          (finish_handshake_job: cheap), newly checked-out jobs to the queue
//! worker (never takes the driver's lock): job.run(now) ─> done queue ─> wakes the driver
//! ```
//!
//! The workers never touch the endpoint: a finished job is handed back by the driver in its
//! next turn, after the records of that turn's batch. So a worker that the scheduler preempts
//! never holds the lock that established traffic needs. Nor does the driver ever wait for the
//! workers' own queue lock: it only tries it ([`Workers::exchange_budget`] answers
//! [`QueueBusy`]) and comes back [`RETRY_BUSY`] later, since a worker in `SCHED_IDLE`
//! preempted inside its few instructions under that lock may not run again for a long time
//! while other threads keep the CPUs busy. The workers run in Linux's `SCHED_IDLE`
//! class by default
//! ([`EndpointConfig::handshake_worker_idle_class`](crate::EndpointConfig::handshake_worker_idle_class)):
//! a thread that wakes for an established record preempts them at once. One more thread, the
//! rescue worker at
//! [`EndpointConfig::handshake_worker_nice`](crate::EndpointConfig::handshake_worker_nice),
//! sleeps until the oldest queued job has waited [`RESCUE_AFTER`] and runs it, so that
//! handshakes go on (slower) while other threads keep every CPU busy; without the idle class
//! the workers run at that nice value and there is no rescue worker.
//! The queue is bounded by the endpoint
//! ([`EndpointConfig::handshake_backlog`](crate::EndpointConfig::handshake_backlog): beyond it,
//! new handshakes are ignored and counted). Workers sleep on a `Condvar` while the queue is
//! empty: no polling. The number of workers is
//! [`EndpointConfig::handshake_workers`](crate::EndpointConfig::handshake_workers) (default 1;
//! 0 runs handshakes inline in the driver). Only a server whose context has a certificate starts
//! them (PSK handshakes cost less than the hop), with the blocking and the tokio driver alike:
//! for tokio they are threads of their own, not the runtime's, and they wake the driver task
//! through its `Notify`. Stopping the driver joins them; each finishes at most the one job it
//! runs (well under a millisecond of crypto), which is how long a stopping tokio driver may
//! block its thread.
//!
//! A job whose run panics does not take its worker down: the panic is caught, the job dropped
//! (its `SSL` freed), and the driver gives its handshake up
//! ([`Endpoint::abandon_handshake_job`]: its places in the limits and the backlog back, counted
//! as a local failure), so the worker goes on with the next job.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, TryLockError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::shared::Shared;
use super::Io;
use crate::endpoint::{ConnectionId, Endpoint, HandshakeJob};

/// The jobs waiting for a worker, the jobs run and waiting for the driver, and whether the
/// workers must stop.
#[derive(Debug, Default)]
struct Queue {
    /// Waiting jobs, with when each was queued (the rescue worker's clock).
    jobs: VecDeque<(Instant, HandshakeJob)>,
    done: Vec<Done>,
    closed: bool,
}

/// A job a worker is through with.
#[derive(Debug)]
enum Done {
    /// Run: to give back to the endpoint.
    Ran(HandshakeJob),
    /// Lost: its run panicked (the job, in whatever state the panic left it, was dropped); the
    /// endpoint gives the handshake up.
    Lost(SocketAddr, ConnectionId),
}

/// Runs `job` with `run`, catching a panic: the job run, or the handshake it was if the panic
/// lost it (dropped, its `SSL` freed). A worker survives a panicking job.
fn run_guarded(mut job: HandshakeJob, run: impl FnOnce(&mut HandshakeJob)) -> Done {
    let (peer, id) = (job.peer(), job.id());
    match catch_unwind(AssertUnwindSafe(|| run(&mut job))) {
        Ok(()) => Done::Ran(job),
        Err(_) => {
            log::error!("{peer}: the handshake worker panicked running handshake {id}; dropped");
            // Dropping what the panic left could panic again: that must not end the worker.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(job)));
            Done::Lost(peer, id)
        }
    }
}

/// Gives a worker's `done` job back to `endpoint`.
fn give_back(endpoint: &mut Endpoint, now: Instant, done: Done) {
    match done {
        Done::Ran(job) => {
            if let Err(e) = endpoint.finish_handshake_job(now, job) {
                log::error!("handshake job refused: {e}"); // cannot happen: one endpoint's pool
            }
        }
        Done::Lost(peer, id) => {
            endpoint.abandon_handshake_job(peer, id);
        }
    }
}

/// The worker pool: its queue and its threads.
#[derive(Debug, Default)]
struct Pool {
    queue: Mutex<Queue>,
    /// Signalled when a job is queued or the pool closes.
    ready: Condvar,
    /// Signalled when a job is queued into an empty queue or the pool closes: the rescue
    /// worker's (it otherwise sleeps until the oldest job is [`RESCUE_AFTER`] old).
    rescue: Condvar,
    /// Jobs the rescue worker ran ([`EndpointStats::handshake_jobs_rescued`](crate::EndpointStats::handshake_jobs_rescued)).
    rescued: std::sync::atomic::AtomicU64,
    /// `queue.done.len()`, written under the queue's lock, read without it
    /// ([`Workers::has_done`]).
    done_len: AtomicUsize,
    /// The worker threads, joined by [`Workers::close`].
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    /// The queue, waiting for its lock (the workers' side, and closing).
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leaves a job the worker is through with for the driver; whether it is the first waiting
    /// (then the worker wakes the driver).
    fn push_done(&self, done: Done) -> bool {
        let mut queue = self.queue();
        if queue.closed {
            return false; // the driver stopped: nobody takes it (dropped, its `SSL` freed)
        }
        queue.done.push(done);
        self.done_len.store(queue.done.len(), Ordering::SeqCst);
        queue.done.len() == 1
    }

    /// The queue if its lock is free (the driver's side: it never waits for a worker).
    fn try_queue(&self) -> Result<MutexGuard<'_, Queue>, QueueBusy> {
        match self.queue.try_lock() {
            Ok(queue) => Ok(queue),
            Err(TryLockError::Poisoned(e)) => Ok(e.into_inner()),
            Err(TryLockError::WouldBlock) => Err(QueueBusy),
        }
    }
}

/// A worker held the queue's lock when the driver tried it: the driver leaves the exchange
/// for [`RETRY_BUSY`] (or until a worker wakes it) rather than wait for a thread that may be
/// preempted in `SCHED_IDLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueBusy;

/// How soon the driver tries the workers' queue again after finding it [`QueueBusy`]: a timed
/// wait, not a spin (a spinning driver would keep the CPU from the very worker it waits for).
pub(crate) const RETRY_BUSY: Duration = Duration::from_millis(1);

/// A driver's handshake workers, if it started any (kept in [`Shared`]).
#[derive(Debug, Default)]
pub(crate) struct Workers {
    pool: OnceLock<Arc<Pool>>,
}

impl Workers {
    /// Starts `shared`'s endpoint's
    /// [`handshake_workers`](crate::EndpointConfig::handshake_workers) threads (named
    /// `dtls-hs-<name>-<i>`) and turns handshake offload on; with 0 workers, nothing (handshakes
    /// stay inline).
    pub(crate) fn start<D: Io>(shared: &Arc<Shared<D>>, name: &str) -> std::io::Result<()> {
        let mut core = shared.lock();
        let count = core.endpoint.config().handshake_workers;
        // Only handshakes with certificates cost enough to be worth a thread hop (an ECDSA
        // signature ≈ 200 µs); a PSK server's handshakes stay inline.
        if count == 0 || !core.endpoint.costly_handshakes() {
            return Ok(());
        }
        let nice = core.endpoint.config().handshake_worker_nice.clamp(0, 19);
        let idle_class = core.endpoint.config().handshake_worker_idle_class;
        let pool = Arc::new(Pool::default());
        if shared.workers.pool.set(Arc::clone(&pool)).is_err() {
            return Ok(()); // started already
        }
        let spawn = |thread_name: String, role: Role| {
            let (pool, shared) = (Arc::clone(&pool), Arc::downgrade(shared));
            let spawned = std::thread::Builder::new()
                .name(thread_name.clone())
                .spawn(move || work(&pool, &shared, role));
            if let Err(e) = &spawned {
                log::warn!("handshake worker {thread_name} not started: {e}");
            }
            spawned
        };
        let mut threads = Vec::with_capacity(count + 1);
        let mut refused = None;
        // In `SCHED_IDLE`, one more worker at `nice` takes only jobs that waited
        // `RESCUE_AFTER`: handshakes slow down while other threads keep every CPU busy, but
        // never stop. It starts first: without it (the system refused the thread) the others
        // run at `nice`, never as idle-class workers alone, which could starve.
        let mut rescue = false;
        if idle_class {
            match spawn(format!("dtls-hs-{name}-r"), Role::Rescue(nice)) {
                Ok(t) => {
                    threads.push(t);
                    rescue = true;
                }
                Err(e) => refused = Some(e),
            }
        }
        for i in 0..count {
            let role = if rescue {
                Role::Idle(nice)
            } else {
                Role::Nice(nice)
            };
            match spawn(format!("dtls-hs-{name}-{i}"), role) {
                Ok(t) => threads.push(t),
                Err(e) => refused = Some(e), // the others are still tried
            }
        }
        let workers = threads.len() - usize::from(rescue);
        *pool.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
        if workers == 0 {
            // No worker that takes jobs as they come (a rescue worker alone would hold every
            // handshake for `RESCUE_AFTER`): stop what started; handshakes stay inline.
            shared.workers.close();
            return Err(refused.unwrap_or_else(|| std::io::Error::other("no handshake worker")));
        }
        core.endpoint.set_handshake_offload(true);
        core.endpoint
            .set_handshake_offload_window(Some(crate::endpoint::OFFLOAD_WHILE_TRAFFIC));
        Ok(())
    }

    /// Gives at most `budget` jobs the workers finished back to `endpoint` (the oldest first;
    /// the rest wait for the next turn), then hands every job it checked out to the workers
    /// (called under the driver's lock, once per turn, after the receive batch). Without
    /// workers (offload never turned on) a job is run inline. Returns whether finished jobs
    /// were left, or [`QueueBusy`] if a worker held the queue's lock (then what was not
    /// exchanged waits: the jobs the endpoint checked out stay with it).
    pub(crate) fn exchange_budget(
        &self,
        endpoint: &mut Endpoint,
        budget: usize,
    ) -> Result<bool, QueueBusy> {
        let Some(pool) = self.pool.get() else {
            while let Some(job) = endpoint.poll_handshake_job() {
                let now = Instant::now();
                let done = run_guarded(job, |job| job.run(now));
                give_back(endpoint, now, done);
            }
            return Ok(false);
        };
        let (done, left) = {
            let mut queue = pool.try_queue()?;
            let take = queue.done.len().min(budget);
            let rest = queue.done.split_off(take);
            let done = std::mem::replace(&mut queue.done, rest);
            pool.done_len.store(queue.done.len(), Ordering::SeqCst);
            (done, !queue.done.is_empty())
        };
        if !done.is_empty() {
            let now = Instant::now();
            for done in done {
                give_back(endpoint, now, done);
            }
        }
        if !endpoint.has_handshake_jobs() {
            return Ok(left);
        }
        let mut queue = pool.try_queue()?;
        let was_empty = queue.jobs.is_empty();
        let now = Instant::now();
        while let Some(job) = endpoint.poll_handshake_job() {
            queue.jobs.push_back((now, job));
        }
        drop(queue);
        pool.ready.notify_one();
        if was_empty {
            pool.rescue.notify_one(); // its deadline: this job's age
        }
        Ok(left)
    }

    /// Jobs the rescue worker ran.
    pub(crate) fn rescued(&self) -> u64 {
        self.pool.get().map_or(0, |pool| {
            pool.rescued.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Whether handshakes the workers finished wait to be given back
    /// ([`exchange_budget`](Self::exchange_budget)); read without the queue's lock.
    pub(crate) fn has_done(&self) -> bool {
        self.pool
            .get()
            .is_some_and(|pool| pool.done_len.load(Ordering::SeqCst) > 0)
    }

    /// Stops the workers and joins them: each finishes the job it runs (its handshake is then
    /// dropped, as the driver stopped); queued jobs are dropped (their `SSL`s freed).
    pub(crate) fn close(&self) {
        let Some(pool) = self.pool.get() else {
            return;
        };
        let dropped = {
            let mut queue = pool.queue();
            queue.closed = true;
            pool.done_len.store(0, Ordering::SeqCst);
            (
                std::mem::take(&mut queue.jobs),
                std::mem::take(&mut queue.done),
            )
        };
        drop(dropped);
        pool.ready.notify_all();
        pool.rescue.notify_all();
        let threads = std::mem::take(&mut *pool.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

/// How long a job waits before the rescue worker takes it (with the workers in `SCHED_IDLE`,
/// [`EndpointConfig::handshake_worker_idle_class`](crate::EndpointConfig::handshake_worker_idle_class)):
/// far below a client's first retransmission (1 s), far above the queue's wait while the idle
/// workers get CPU at all (tens of ms at the backlog's bound under a flood, measured).
pub(crate) const RESCUE_AFTER: Duration = Duration::from_millis(250);

/// What a worker thread is.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// Takes any job, at this nice value.
    Nice(i32),
    /// Takes any job, in `SCHED_IDLE` (at this nice value where the class is refused).
    Idle(i32),
    /// Takes only a job that waited [`RESCUE_AFTER`], at this nice value.
    Rescue(i32),
}

/// A worker: takes a job, runs it without any lock of the driver's, and leaves it for the
/// driver's next turn (waking the driver if it is the first to wait).
fn work<D: Io>(pool: &Pool, shared: &Weak<Shared<D>>, role: Role) {
    match role {
        // Where the class is refused, the worker runs at the rescue worker's nice value.
        Role::Idle(_) if crate::ffi::os::set_thread_idle_class() => {}
        Role::Nice(nice) | Role::Idle(nice) | Role::Rescue(nice) if nice > 0 => {
            crate::ffi::os::lower_thread_priority(nice)
        }
        Role::Nice(_) | Role::Idle(_) | Role::Rescue(_) => {}
    }
    let rescue = matches!(role, Role::Rescue(_));
    let mut buf = vec![0u8; crate::config::MAX_MTU];
    loop {
        // Under the queue's lock only the queue's own work: the driver tries that lock and
        // must find it free (the wake-ups and the log line come after it is released).
        let (job, more, waited) = {
            let mut queue = pool.queue();
            loop {
                if queue.closed {
                    return;
                }
                let age = queue.jobs.front().map(|(at, _)| at.elapsed());
                if age.is_some_and(|age| !rescue || age >= RESCUE_AFTER) {
                    if let Some((_, job)) = queue.jobs.pop_front() {
                        break (job, !queue.jobs.is_empty(), age);
                    }
                }
                queue = match age {
                    // The rescue worker: until the oldest job is old enough (checked again
                    // then: another worker may have taken it).
                    Some(age) if rescue => {
                        pool.rescue
                            .wait_timeout(queue, RESCUE_AFTER.saturating_sub(age))
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    None if rescue => pool.rescue.wait(queue).unwrap_or_else(|e| e.into_inner()),
                    _ => pool.ready.wait(queue).unwrap_or_else(|e| e.into_inner()),
                };
            }
        };
        if rescue {
            pool.rescued
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log::debug!("a handshake job waited {waited:?}: the rescue worker runs it");
        } else if more {
            pool.ready.notify_one(); // more work: another worker may take it
        }
        // The step, then its flight, sent from here: the threads that serve established
        // connections neither run the crypto nor pay the kernel for these datagrams.
        let io = shared.upgrade();
        let done = run_guarded(job, |job| {
            job.run(Instant::now());
            if let Some(shared) = &io {
                send_flight(&shared.io, job, &mut buf);
            }
        });
        drop(io);
        if pool.push_done(done) {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.io.wake_for_work();
        }
    }
}

/// Sends what `job`'s step wrote to its peer, from the worker's thread; what the socket does
/// not take goes back with the job, for the driver to send.
fn send_flight<D: Io>(io: &D, job: &mut HandshakeJob, buf: &mut [u8]) {
    let peer = job.peer();
    while let Some(n) = job.poll_transmit(buf) {
        if !io.send_now(peer, &buf[..n]) {
            job.unsent(&buf[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use std::sync::Arc;

    use super::{give_back, run_guarded, Done, Pool, QueueBusy, Workers};
    use crate::context::{DtlsClientContext, DtlsServerContext, PskCredentials};
    use crate::endpoint::{Endpoint, EndpointConfig, Event};

    const KEY: &[u8] = b"0123456789abcdef";

    /// An endpoint with offload on and a handshake checked out (its first step), and the client.
    fn checked_out(now: Instant) -> (Endpoint, Endpoint) {
        let server = DtlsServerContext::builder()
            .psk_key_store(|_| Some(KEY.to_vec()))
            // OpenSSL's retransmission timer runs on the real clock: short, for the test
            // that waits for it.
            .retransmit_timeout(Duration::from_millis(50), Duration::from_millis(400))
            .build()
            .unwrap();
        let client = DtlsClientContext::builder()
            .psk_credentials(PskCredentials::new(b"device".to_vec(), KEY.to_vec()))
            .build()
            .unwrap();
        let mut s = Endpoint::server(server, EndpointConfig::default()).unwrap();
        s.set_handshake_offload(true);
        let mut c = Endpoint::client(EndpointConfig::default()).unwrap();
        let server_addr: SocketAddr = "10.0.0.1:5684".parse().unwrap();
        let addr: SocketAddr = "192.0.2.7:40001".parse().unwrap();
        c.connect(now, server_addr, &client, None).unwrap();
        let mut buf = vec![0u8; 65_536];
        for (from, to) in [(0, 1), (1, 0), (0, 1)] {
            let (from, to, at) = match (from, to) {
                (0, _) => (&mut c, &mut s, addr),
                _ => (&mut s, &mut c, server_addr),
            };
            while let Some((_, n)) = from.poll_transmit(&mut buf) {
                to.handle_datagram(now, at, &buf[..n]);
            }
        }
        assert_eq!(s.handshakes_out(), 1);
        (s, c)
    }

    /// A worker preempted while it holds the queue's lock (in `SCHED_IDLE` it may not run again
    /// for long while other threads keep the CPUs busy) never holds up the driver: the exchange
    /// answers `QueueBusy` at once, the checked-out job stays with the endpoint, and the next
    /// try once the lock is free hands it over; a finished job is seen without the lock.
    #[test]
    fn the_driver_never_waits_for_a_worker_holding_the_queue() {
        let now = Instant::now();
        let (mut s, _c) = checked_out(now);
        let workers = Workers::default();
        let pool = Arc::new(Pool::default());
        workers.pool.set(Arc::clone(&pool)).unwrap();

        let held = pool.queue();
        assert_eq!(workers.exchange_budget(&mut s, usize::MAX), Err(QueueBusy));
        assert!(s.has_handshake_jobs(), "the job stays with the endpoint");
        drop(held);
        assert_eq!(workers.exchange_budget(&mut s, usize::MAX), Ok(false));
        assert!(!s.has_handshake_jobs());
        let (_, job) = pool
            .queue()
            .jobs
            .pop_front()
            .expect("handed to the workers");

        let done = run_guarded(job, |job| job.run(now));
        assert!(
            pool.push_done(done),
            "the first finished job wakes the driver"
        );
        let held = pool.queue();
        assert!(workers.has_done(), "seen without the lock");
        assert_eq!(workers.exchange_budget(&mut s, usize::MAX), Err(QueueBusy));
        drop(held);
        assert!(workers.has_done(), "still there after the busy try");
        assert_eq!(workers.exchange_budget(&mut s, usize::MAX), Ok(false));
        assert!(!workers.has_done());
        assert_eq!(s.handshakes_out(), 0, "given back to the endpoint");

        // A job finished after the driver stopped is dropped, not left for nobody.
        workers.close();
        let (mut s2, _c2) = checked_out(now);
        let job = s2.poll_handshake_job().expect("checked out");
        assert!(!pool.push_done(run_guarded(job, |job| job.run(now))));
        assert!(!workers.has_done());
    }

    #[test]
    fn a_panicking_job_is_caught_and_its_handshake_given_up() {
        let now = Instant::now();
        let (mut s, _c) = checked_out(now);
        let job = s.poll_handshake_job().unwrap();
        let (peer, id) = (job.peer(), job.id());
        let done = run_guarded(job, |_| panic!("a bug in a handshake step"));
        assert!(matches!(done, Done::Lost(p, i) if p == peer && i == id));
        give_back(&mut s, now, done);
        let stats = s.stats();
        assert_eq!(
            (stats.handshakes, stats.handshakes_failed_local),
            (0, 1),
            "{stats:?}"
        );
        assert_eq!((s.handshakes_out(), s.len()), (0, 0));
        let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::HandshakeFailed(_))),
            "{events:?}"
        );
    }

    #[test]
    fn a_job_that_runs_is_given_back() {
        let now = Instant::now();
        let (mut s, _c) = checked_out(now);
        let job = s.poll_handshake_job().unwrap();
        let done = run_guarded(job, |job| job.run(now));
        assert!(matches!(done, Done::Ran(_)));
        give_back(&mut s, now, done);
        assert_eq!((s.handshakes_out(), s.stats().handshakes), (0, 1));
        let mut buf = vec![0u8; 65_536];
        assert!(s.poll_transmit(&mut buf).is_some(), "its first flight");
    }

    const SERVER: &str = "10.0.0.1:5684";
    const CLIENT: &str = "192.0.2.7:40001";

    /// Carries datagrams both ways until neither side has any; whether the client connected.
    fn finish(s: &mut Endpoint, c: &mut Endpoint, now: Instant) -> bool {
        let (server, client): (SocketAddr, SocketAddr) =
            (SERVER.parse().unwrap(), CLIENT.parse().unwrap());
        let mut buf = vec![0u8; 65_536];
        for _ in 0..20 {
            let mut moved = false;
            while let Some(job) = s.poll_handshake_job() {
                give_back(s, now, run_guarded(job, |job| job.run(now)));
            }
            while let Some((_, n)) = c.poll_transmit(&mut buf) {
                s.handle_datagram(now, client, &buf[..n]);
                moved = true;
            }
            while let Some((_, n)) = s.poll_transmit(&mut buf) {
                c.handle_datagram(now, server, &buf[..n]);
                moved = true;
            }
            if !moved && s.handshakes_out() == 0 {
                break;
            }
        }
        std::iter::from_fn(|| c.poll_event()).any(|e| matches!(e, Event::Connected { .. }))
    }

    #[test]
    fn a_runner_sends_the_flight_itself_and_what_it_could_not_send_goes_out_after() {
        let now = Instant::now();
        let server: SocketAddr = SERVER.parse().unwrap();
        let mut buf = vec![0u8; 65_536];
        // The runner sends the whole flight itself: the endpoint counts it, has nothing more
        // to send for it, and the handshake completes.
        let (mut s, mut c) = checked_out(now);
        let out_before = s.stats().datagrams_out;
        let mut job = s.poll_handshake_job().unwrap();
        job.run(now);
        let mut sent = Vec::new();
        while let Some(n) = job.poll_transmit(&mut buf) {
            sent.push(buf[..n].to_vec());
        }
        assert!(!sent.is_empty(), "a first flight");
        give_back(&mut s, now, Done::Ran(job));
        assert_eq!(s.stats().datagrams_out, out_before + sent.len() as u64);
        assert!(
            s.poll_transmit(&mut buf).is_none(),
            "sent once, by the runner"
        );
        for d in &sent {
            c.handle_datagram(now, server, d);
        }
        assert!(finish(&mut s, &mut c, now), "{:?}", s.stats());

        // The runner could send none of it (the socket full): the endpoint sends it, the same
        // bytes in the same order, once the job is back.
        let (mut s, mut c) = checked_out(now);
        let mut job = s.poll_handshake_job().unwrap();
        job.run(now);
        let mut unsent = Vec::new();
        while let Some(n) = job.poll_transmit(&mut buf) {
            unsent.push(buf[..n].to_vec());
        }
        for d in &unsent {
            job.unsent(d);
        }
        let out_before = s.stats().datagrams_out;
        give_back(&mut s, now, Done::Ran(job));
        assert_eq!(s.stats().datagrams_out, out_before, "not sent yet");
        let again: Vec<Vec<u8>> = std::iter::from_fn(|| {
            let (_, n) = s.poll_transmit(&mut buf)?;
            Some(buf[..n].to_vec())
        })
        .collect();
        assert_eq!(again, unsent);
        assert_eq!(s.stats().datagrams_out, out_before + unsent.len() as u64);
        for d in &again {
            c.handle_datagram(now, server, d);
        }
        assert!(finish(&mut s, &mut c, now), "{:?}", s.stats());
    }

    #[test]
    fn a_handshake_retransmits_on_the_worker() {
        let now = Instant::now();
        let server: SocketAddr = SERVER.parse().unwrap();
        let (mut s, mut c) = checked_out(now);
        let job = s.poll_handshake_job().unwrap();
        give_back(&mut s, now, run_guarded(job, |job| job.run(now)));
        let mut buf = vec![0u8; 65_536];
        // The first flight is lost.
        while s.poll_transmit(&mut buf).is_some() {}
        let jobs_before = s.stats().handshake_jobs;
        // The retransmission timer: the handshake is checked out for it, not retransmitted
        // by the endpoint's own thread.
        let later = s.poll_timeout().expect("a retransmission timer");
        std::thread::sleep(later.saturating_duration_since(Instant::now()));
        s.handle_timeout(later);
        assert_eq!(s.handshakes_out(), 1, "checked out for its retransmission");
        assert_eq!(s.stats().handshake_jobs, jobs_before + 1);
        assert!(
            s.poll_transmit(&mut buf).is_none(),
            "nothing sent by the endpoint"
        );
        let mut job = s.poll_handshake_job().unwrap();
        job.run(later);
        let mut flight = Vec::new();
        while let Some(n) = job.poll_transmit(&mut buf) {
            flight.push(buf[..n].to_vec());
        }
        assert!(!flight.is_empty(), "the retransmitted flight");
        give_back(&mut s, later, Done::Ran(job));
        for d in &flight {
            c.handle_datagram(later, server, d);
        }
        assert!(finish(&mut s, &mut c, later), "{:?}", s.stats());
    }
}
