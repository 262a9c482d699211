//! The handshake workers: threads that run the expensive steps of server handshakes
//! ([`HandshakeJob`]s the endpoint checks out, see `endpoint/offload.rs`) outside the driver's
//! lock, so that the thread serving established connections never waits behind ECDHE and
//! signatures.
//!
//! ```text
//! driver turn (lock held): receive batch ─> timers ─> Workers::exchange: finished jobs back in
//!                          (finish_handshake_job: cheap), newly checked-out jobs to the queue
//! worker (never takes the driver's lock): job.run(now) ─> done queue ─> wakes the driver
//! ```
//!
//! The workers never touch the endpoint: a finished job is handed back by the driver in its
//! next turn, after the records of that turn's batch. So a worker that the scheduler preempts
//! never holds the lock that established traffic needs. Workers may also run at a lower priority
//! ([`EndpointConfig::handshake_worker_nice`](crate::EndpointConfig::handshake_worker_nice)).
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

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use super::shared::Shared;
use super::Io;
use crate::endpoint::{Endpoint, HandshakeJob};

/// The jobs waiting for a worker, the jobs run and waiting for the driver, and whether the
/// workers must stop.
#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<HandshakeJob>,
    done: Vec<HandshakeJob>,
    closed: bool,
}

/// The worker pool: its queue and its threads.
#[derive(Debug, Default)]
struct Pool {
    queue: Mutex<Queue>,
    /// Signalled when a job is queued or the pool closes.
    ready: Condvar,
    /// The worker threads, joined by [`Workers::close`].
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

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
        let pool = Arc::new(Pool::default());
        if shared.workers.pool.set(Arc::clone(&pool)).is_err() {
            return Ok(()); // started already
        }
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let pool = Arc::clone(&pool);
            let shared = Arc::downgrade(shared);
            let spawned = std::thread::Builder::new()
                .name(format!("dtls-hs-{name}-{i}"))
                .spawn(move || work(&pool, &shared, nice));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) if threads.is_empty() => return Err(e),
                Err(e) => {
                    log::warn!("started {i} of {count} handshake workers: {e}");
                    break;
                }
            }
        }
        *pool.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
        core.endpoint.set_handshake_offload(true);
        Ok(())
    }

    /// Gives the jobs the workers finished back to `endpoint`, then hands every job it checked
    /// out to the workers (called under the driver's lock, once per turn, after the receive
    /// batch). Without workers (offload never turned on) a job is run inline.
    pub(crate) fn exchange(&self, endpoint: &mut Endpoint) {
        let Some(pool) = self.pool.get() else {
            while let Some(mut job) = endpoint.poll_handshake_job() {
                let now = Instant::now();
                job.run(now);
                endpoint.finish_handshake_job(now, job);
            }
            return;
        };
        let done = std::mem::take(&mut pool.queue().done);
        if !done.is_empty() {
            let now = Instant::now();
            for job in done {
                endpoint.finish_handshake_job(now, job);
            }
        }
        let mut queue = pool.queue();
        let mut queued = false;
        while let Some(job) = endpoint.poll_handshake_job() {
            queue.jobs.push_back(job);
            queued = true;
        }
        drop(queue);
        if queued {
            pool.ready.notify_one();
        }
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
            (
                std::mem::take(&mut queue.jobs),
                std::mem::take(&mut queue.done),
            )
        };
        drop(dropped);
        pool.ready.notify_all();
        let threads = std::mem::take(&mut *pool.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

/// A worker: takes a job, runs it without any lock of the driver's, and leaves it for the
/// driver's next turn (waking the driver if it is the first to wait).
fn work<D: Io>(pool: &Pool, shared: &Weak<Shared<D>>, nice: i32) {
    if nice > 0 {
        crate::ffi::os::lower_thread_priority(nice);
    }
    loop {
        let mut job = {
            let mut queue = pool.queue();
            loop {
                if queue.closed {
                    return;
                }
                if let Some(job) = queue.jobs.pop_front() {
                    if !queue.jobs.is_empty() {
                        pool.ready.notify_one(); // more work: another worker may take it
                    }
                    break job;
                }
                queue = pool.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
        };
        job.run(Instant::now());
        let first = {
            let mut queue = pool.queue();
            queue.done.push(job);
            queue.done.len() == 1
        };
        if first {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.wake();
        }
    }
}
