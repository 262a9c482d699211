//! The handshake workers: threads that run the expensive steps of server handshakes
//! ([`HandshakeJob`]s the endpoint checks out, see `endpoint/offload.rs`) outside the driver's
//! lock, so that the thread serving established connections never waits behind ECDHE and
//! signatures.
//!
//! ```text
//! driver turn (lock held): receive batch ─> endpoint checks out server handshakes ─> Workers::submit
//! worker (no lock): job.run(now) ─> lock ─> endpoint.finish_handshake_job ─> settle (events, output) ─> unlock
//! ```
//!
//! The queue between them is bounded by the endpoint
//! ([`EndpointConfig::handshake_backlog`](crate::EndpointConfig::handshake_backlog): beyond it,
//! new handshakes are ignored and counted). Workers sleep on a `Condvar` while the queue is
//! empty: no polling. The number of workers is
//! [`EndpointConfig::handshake_workers`](crate::EndpointConfig::handshake_workers) (default 1;
//! 0 runs handshakes inline in the driver). Only the blocking server driver starts them; the
//! tokio driver runs handshakes inline.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use super::shared::Shared;
use super::Io;
use crate::endpoint::{Endpoint, HandshakeJob};

/// The jobs waiting for a worker, and whether the workers must stop.
#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<HandshakeJob>,
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
    /// [`handshake_workers`](crate::EndpointConfig::handshake_workers) threads (named after
    /// `name`) and turns handshake offload on; with 0 workers, nothing (handshakes stay inline).
    pub(crate) fn start<D: Io>(shared: &Arc<Shared<D>>, name: &str) -> std::io::Result<()> {
        let mut core = shared.lock();
        let count = core.endpoint.config().handshake_workers;
        if count == 0 {
            return Ok(());
        }
        let pool = Arc::new(Pool::default());
        if shared.workers.pool.set(Arc::clone(&pool)).is_err() {
            return Ok(()); // started already
        }
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let pool = Arc::clone(&pool);
            let shared = Arc::downgrade(shared);
            let spawned = std::thread::Builder::new()
                .name(format!("dtls-{name}-hs{i}"))
                .spawn(move || work(&pool, &shared));
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

    /// Hands every job `endpoint` checked out to the workers (called under the driver's lock,
    /// after a turn). Without workers (offload never turned on) a job is run inline.
    pub(crate) fn submit(&self, endpoint: &mut Endpoint) {
        let Some(pool) = self.pool.get() else {
            while let Some(mut job) = endpoint.poll_handshake_job() {
                let now = Instant::now();
                job.run(now);
                endpoint.finish_handshake_job(now, job);
            }
            return;
        };
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
            std::mem::take(&mut queue.jobs)
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

/// A worker: takes a job, runs it without any lock, then gives it back to the endpoint under
/// the driver's lock, with the output and events it produced.
fn work<D: Io>(pool: &Pool, shared: &Weak<Shared<D>>) {
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
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut core = shared.lock();
        if core.shutdown {
            continue; // the job (and its SSL) is dropped
        }
        let deadline = core.endpoint.poll_timeout();
        core.endpoint.finish_handshake_job(Instant::now(), job);
        shared.workers.submit(&mut core.endpoint); // its inbox, checked out again
        shared.settle(&mut core);
        // The driver sleeps until its deadline: wake it if the handshake brought one earlier
        // (its retransmission timer), so that it recomputes.
        let earlier = match (core.endpoint.poll_timeout(), deadline) {
            (Some(now), Some(before)) => now < before,
            (now, before) => now.is_some() && before.is_none(),
        };
        drop(core);
        if earlier {
            shared.wake();
        }
    }
}
