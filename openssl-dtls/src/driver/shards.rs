//! Endpoint shards: one server as N full drivers — each its own [`Endpoint`], socket and driver
//! thread or task — on N `SO_REUSEPORT` sockets bound to one address, set with
//! [`SocketOptions::shards`]. The blocking and the tokio `DtlsServer` both run on it.
//!
//! # How the shards work together
//!
//! - **Affinity.** The kernel picks a group's socket by a hash of the 4-tuple, so a peer's
//!   handshake and records all land on one shard, which holds its connection.
//! - **Connection IDs.** After a NAT rebinding a `tls12_cid` record (RFC 9146) comes from a new
//!   4-tuple, which may hash to another shard. So each shard writes its index in the byte of its
//!   CIDs that follows the configured prefix ([`connection_id_prefix`]: by default one byte,
//!   `0x00`, so the index is the CID's second byte), and the group carries a classic BPF program
//!   (`SO_ATTACH_REUSEPORT_CBPF`, [`crate::ffi::reuseport`]) that sends a `tls12_cid` record to
//!   the shard its CID names and leaves every other datagram to the kernel's hash. With shards,
//!   a CID needs one byte more than alone: [`connection_id`] must be at least the prefix, the
//!   index and four random bytes. Where the program cannot be attached (Linux before 4.5, or a
//!   sandbox that forbids it), binding more than one shard with CIDs fails with an error saying
//!   so; without CIDs shards need no program.
//! - **One cookie secret.** Every shard runs on the same [`DtlsServerContext`] (a clone shares
//!   its cookie keys), so a cookie issued by one shard verifies on any other.
//! - **One budget.** `max_connections`, `max_handshakes`, `max_handshakes_per_ip` and
//!   `handshake_memory` hold for the whole server: the shards' endpoints count in one
//!   [`SharedLimits`] (see there). Eviction at `max_connections` makes room from the shard the
//!   new handshake arrived on only.
//! - **One accept queue.** A shard whose handshake completes queues the connection on its own
//!   driver and puts its index in one queue every `accept` waits on ([`AcceptHub`]): `accept`
//!   takes connections from every shard without polling them.
//!
//! # Scaling past one process
//!
//! One process serves one port with one shard per core. Past one machine, put an L4 UDP
//! balancer with address affinity (a hash of the 4-tuple, as the kernel does here) in front of
//! N servers that share the cookie secret
//! ([`cookie_secret`](crate::DtlsServerContextBuilder::cookie_secret)); for Connection IDs,
//! give each server its own prefix (a node number) and have the balancer route `tls12_cid`
//! records by it (the CID starts at byte 11 of the record).
//!
//! [`connection_id_prefix`]: crate::DtlsServerContextBuilder::connection_id_prefix
//! [`connection_id`]: crate::DtlsServerContextBuilder::connection_id

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::socket::{CidSteering, SocketOptions};
use super::Signal;
use crate::cid::MIN_RANDOM_CID_BYTES;
use crate::context::DtlsServerContext;
use crate::endpoint::{Endpoint, EndpointConfig, EndpointStats, SharedLimits};
use crate::error::{ConfigError, Error, Result};

/// The most shards a server runs: the index is one byte of the CID.
pub const MAX_SHARDS: usize = 256;

/// How many shards `options` asks for: [`SocketOptions::shards`], 0 meaning one per core
/// (`std::thread::available_parallelism`).
pub(crate) fn shard_count(options: &SocketOptions) -> Result<usize> {
    let n = match options.shards {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    if n > MAX_SHARDS {
        return Err(Error::Config(ConfigError::OutOfRange {
            setting: "shards",
            value: n as u64,
            allowed: "0 (one per core) to 256",
        }));
    }
    Ok(n)
}

/// One shard to start: its endpoint and the options of its socket.
pub(crate) struct ShardPlan {
    pub endpoint: Endpoint,
    pub socket: SocketOptions,
}

/// The endpoints and socket options of a server's shards, in index order (bind them in that
/// order: the steering program indexes sockets in the order they joined the group). One shard
/// is today's server, unchanged: its own limits, no reuse-port unless asked, no program.
pub(crate) fn plan(
    ctx: &DtlsServerContext,
    config: &EndpointConfig,
    options: &SocketOptions,
) -> Result<Vec<ShardPlan>> {
    let n = shard_count(options)?;
    if n == 1 {
        return Ok(vec![ShardPlan {
            endpoint: Endpoint::server(ctx.clone(), config.clone())?,
            socket: options.clone(),
        }]);
    }
    let steering = match ctx.cid_settings() {
        None => None,
        Some(cid) => {
            let prefix = cid.prefix.len();
            if usize::from(cid.len) < prefix + 1 + MIN_RANDOM_CID_BYTES {
                return Err(Error::Config(ConfigError::OutOfRange {
                    setting: "connection_id",
                    value: u64::from(cid.len),
                    allowed: "with shards, at least the prefix, one byte for the shard index \
                              and 4 random bytes",
                }));
            }
            Some(CidSteering {
                shards: n as u32,
                shard_byte: prefix,
            })
        }
    };
    let limits = Arc::new(SharedLimits::default());
    let mut shards = Vec::with_capacity(n);
    for index in 0..n {
        let mut endpoint = Endpoint::server(ctx.clone(), config.clone())?;
        endpoint.join_shards(Arc::clone(&limits), index as u8);
        let mut socket = options.clone();
        socket.reuse_port = true;
        socket.cid_steering = if index == 0 { steering } else { None };
        shards.push(ShardPlan { endpoint, socket });
    }
    Ok(shards)
}

/// The address shard `index` binds: the requested one for the first, the first's actual
/// address (its port chosen by the kernel if 0 was asked) for the others.
pub(crate) fn shard_addr(
    index: usize,
    requested: SocketAddr,
    first: Option<SocketAddr>,
) -> SocketAddr {
    match (index, first) {
        (0, _) | (_, None) => requested,
        (_, Some(first)) => first,
    }
}

/// Calls a closure when a shard queued a connection to accept: installed on every shard's
/// driver, it puts the shard's index in the server's [`AcceptHub`].
pub(crate) struct AcceptHook(Box<dyn Fn() + Send + Sync>);

impl AcceptHook {
    /// Runs the hook (under the shard's lock: it must only take the hub's).
    pub(crate) fn call(&self) {
        (self.0)();
    }
}

impl fmt::Debug for AcceptHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AcceptHook")
    }
}

/// The one accept queue of a sharded server: the index of the shard of each connection
/// queued to accept, in order, and the signal `accept` waits on (`Condvar` or `Notify`).
/// A shard pushes under its own lock then takes the hub's; `accept` pops here, lets go, then
/// takes the shard's: the hub's lock is never held while taking a shard's.
#[derive(Debug, Default)]
pub(crate) struct AcceptHub<S> {
    state: Mutex<HubState>,
    /// Woken for each connection queued, and when the server closes.
    pub signal: S,
}

/// Behind the hub's lock.
#[derive(Debug, Default)]
pub(crate) struct HubState {
    /// Shards with a connection to accept, one entry per connection.
    ready: VecDeque<usize>,
    /// The server closed: `accept` ends.
    closed: bool,
}

impl HubState {
    /// The shard of the next connection to accept (`Some(Ok)`), [`Error::Closed`] after close,
    /// or `None`: wait.
    fn pop(&mut self) -> Option<Result<usize>> {
        if self.closed {
            return Some(Err(Error::Closed));
        }
        self.ready.pop_front().map(Ok)
    }
}

impl<S: Signal> AcceptHub<S> {
    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The hook shard `index` calls for each connection it queues.
    pub(crate) fn hook(self: &Arc<Self>, index: usize) -> AcceptHook {
        let hub = Arc::downgrade(self);
        AcceptHook(Box::new(move || {
            if let Some(hub) = hub.upgrade() {
                hub.lock().ready.push_back(index);
                hub.signal.wake_one();
            }
        }))
    }

    /// See [`HubState::pop`].
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // the tokio server's
    pub(crate) fn pop(&self) -> Option<Result<usize>> {
        self.lock().pop()
    }

    /// Ends every `accept`, now and later.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.signal.wake_all();
    }
}

impl AcceptHub<Condvar> {
    /// Waits until a connection is queued (its shard's index), the server closes
    /// ([`Error::Closed`]), or `deadline` passes (`None`).
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Option<Result<usize>> {
        let mut state = self.lock();
        loop {
            if let Some(got) = state.pop() {
                return Some(got);
            }
            state = match deadline {
                None => self
                    .signal
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.signal
                        .wait_timeout(state, left.min(Duration::from_secs(3600)))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

/// The sum of the shards' counters: every field, the gauges too (`connections`, `handshakes`,
/// `handshake_memory_in_use`, `cid_connections`), is the sum over the shards, since each
/// connection and handshake lives on one shard.
pub(crate) fn sum_stats(shards: impl IntoIterator<Item = EndpointStats>) -> EndpointStats {
    let mut total = EndpointStats::default();
    for s in shards {
        total += &s;
    }
    total
}

impl std::ops::AddAssign<&EndpointStats> for EndpointStats {
    /// Adds every counter of `other`, the gauges too: how a sharded server's `stats()` sums its
    /// shards'. (Written as one destructuring, so a new field does not compile until it is
    /// summed here too.)
    fn add_assign(&mut self, other: &EndpointStats) {
        let EndpointStats {
            connections,
            handshakes,
            datagrams_in,
            datagrams_out,
            bytes_in,
            bytes_out,
            dropped,
            dropped_unknown_peer,
            dropped_short_client_hello,
            dropped_fragmented_client_hello,
            refused_connection_limit,
            refused_handshake_limit,
            refused_per_ip_limit,
            refused_handshake_memory,
            evicted,
            refused_by_admission,
            hello_verify_requests,
            hello_verify_requests_too_large,
            replies_dropped,
            cookies_rejected,
            listener_ignored,
            handshakes_completed,
            handshakes_timed_out,
            handshakes_failed_peer_alert,
            handshakes_failed_local,
            connections_closed,
            connections_failed,
            idle_timeouts,
            connections_replaced,
            recv_queue_dropped,
            compact_handoffs,
            handshake_memory_in_use,
            refusal_alerts_sent,
            cid_connections,
            dropped_unknown_cid,
            cid_moves,
            cid_moves_refused_unauthenticated,
            cid_moves_refused_not_newest,
            cid_moves_refused_busy,
            cid_amplification_dropped,
            cid_parked,
            non_dtls_received,
            dropped_non_dtls,
            handshake_jobs,
            dropped_handshake_busy,
            refused_handshake_backlog,
            socket_rx_dropped,
            socket_send_errors,
            socket_send_full,
            handshake_datagrams_deferred,
            handshake_jobs_rescued,
        } = other;
        self.connections += connections;
        self.handshakes += handshakes;
        self.datagrams_in += datagrams_in;
        self.datagrams_out += datagrams_out;
        self.bytes_in += bytes_in;
        self.bytes_out += bytes_out;
        for (a, b) in self.dropped.iter_mut().zip(dropped) {
            *a += b;
        }
        self.dropped_unknown_peer += dropped_unknown_peer;
        self.dropped_short_client_hello += dropped_short_client_hello;
        self.dropped_fragmented_client_hello += dropped_fragmented_client_hello;
        self.refused_connection_limit += refused_connection_limit;
        self.refused_handshake_limit += refused_handshake_limit;
        self.refused_per_ip_limit += refused_per_ip_limit;
        self.refused_handshake_memory += refused_handshake_memory;
        self.evicted += evicted;
        self.refused_by_admission += refused_by_admission;
        self.hello_verify_requests += hello_verify_requests;
        self.hello_verify_requests_too_large += hello_verify_requests_too_large;
        self.replies_dropped += replies_dropped;
        self.cookies_rejected += cookies_rejected;
        self.listener_ignored += listener_ignored;
        self.handshakes_completed += handshakes_completed;
        self.handshakes_timed_out += handshakes_timed_out;
        self.handshakes_failed_peer_alert += handshakes_failed_peer_alert;
        self.handshakes_failed_local += handshakes_failed_local;
        self.connections_closed += connections_closed;
        self.connections_failed += connections_failed;
        self.idle_timeouts += idle_timeouts;
        self.connections_replaced += connections_replaced;
        self.recv_queue_dropped += recv_queue_dropped;
        self.compact_handoffs += compact_handoffs;
        self.handshake_memory_in_use += handshake_memory_in_use;
        self.refusal_alerts_sent += refusal_alerts_sent;
        self.cid_connections += cid_connections;
        self.dropped_unknown_cid += dropped_unknown_cid;
        self.cid_moves += cid_moves;
        self.cid_moves_refused_unauthenticated += cid_moves_refused_unauthenticated;
        self.cid_moves_refused_not_newest += cid_moves_refused_not_newest;
        self.cid_moves_refused_busy += cid_moves_refused_busy;
        self.cid_amplification_dropped += cid_amplification_dropped;
        self.cid_parked += cid_parked;
        self.non_dtls_received += non_dtls_received;
        self.dropped_non_dtls += dropped_non_dtls;
        self.handshake_jobs += handshake_jobs;
        self.dropped_handshake_busy += dropped_handshake_busy;
        self.refused_handshake_backlog += refused_handshake_backlog;
        self.socket_rx_dropped += socket_rx_dropped;
        self.socket_send_errors += socket_send_errors;
        self.socket_send_full += socket_send_full;
        self.handshake_datagrams_deferred += handshake_datagrams_deferred;
        self.handshake_jobs_rescued += handshake_jobs_rescued;
    }
}

/// Graceful restart across shards: writes every shard's section of the state (in shard order,
/// each under its own lock in turn, so a shard keeps serving while another is saved) to
/// `out`. A shard's section carries its index and the shard count; see
/// [`restore_shards`] for why each peer lands on the same shard after the restore.
pub(crate) fn save_shards<D: super::Io>(
    shards: &[&super::shared::Shared<D>],
    out: &mut impl std::io::Write,
    key: &crate::endpoint::StateKey,
) -> Result<crate::endpoint::SaveReport> {
    let count = u16::try_from(shards.len()).unwrap_or(u16::MAX);
    let mut report = crate::endpoint::SaveReport::default();
    for shared in shards {
        let core = shared.lock();
        let section = core
            .endpoint
            .save_section(out, key, std::time::SystemTime::now(), count)?;
        report.add(&section);
    }
    Ok(report)
}

/// As [`save_shards`], but under every shard's lock at once, and on success each shard is
/// marked stopped before its lock is released: no datagram is handled after the save, and the
/// shutdown that follows sends no `close_notify` (the connections live on in the next
/// process). On failure nothing is stopped.
pub(crate) fn save_shards_and_stop<D: super::Io>(
    shards: &[&super::shared::Shared<D>],
    out: &mut impl std::io::Write,
    key: &crate::endpoint::StateKey,
) -> Result<crate::endpoint::SaveReport> {
    let count = u16::try_from(shards.len()).unwrap_or(u16::MAX);
    let mut cores: Vec<_> = shards.iter().map(|s| s.lock()).collect();
    let mut report = crate::endpoint::SaveReport::default();
    let saved_at = std::time::SystemTime::now();
    for core in &cores {
        report.add(&core.endpoint.save_section(out, key, saved_at, count)?);
    }
    for core in &mut cores {
        core.shutdown = true;
        // Handles released from now on find nothing to close_notify.
        core.endpoint.forget_all_silently();
    }
    drop(cores);
    for shared in shards {
        shared.wake();
    }
    Ok(report)
}

/// Graceful restart across shards: reads one section per shard from `input` (the shard count
/// must be the one the state was saved with: [`StateError::ShardCount`] otherwise), opens and
/// parses all of them under every shard's lock, and only then inserts each section's
/// connections into the shard of the same index: a refused file loads nothing on any shard.
///
/// Why each peer finds its connection on the same shard: without a program the kernel picks a
/// `SO_REUSEPORT` group's socket by a hash of the datagram's 4-tuple and the number of sockets
/// in the group, so the same local address, the same shard count and the same peer address
/// give the same shard as before the restart (the sockets must be bound in the same order,
/// which `bind` does). The BPF program of a CID server sends `tls12_cid` records by the shard
/// byte of their CID and leaves the rest to the same hash.
///
/// [`StateError::ShardCount`]: crate::StateError::ShardCount
pub(crate) fn restore_shards<D: super::Io>(
    shards: &[&super::shared::Shared<D>],
    input: &mut impl std::io::Read,
    key: &crate::endpoint::StateKey,
    max_age: Duration,
) -> Result<crate::endpoint::RestoreReport> {
    let mut cores: Vec<_> = shards.iter().map(|s| s.lock()).collect();
    let report = {
        let mut endpoints: Vec<&mut crate::endpoint::Endpoint> =
            cores.iter_mut().map(|c| &mut c.endpoint).collect();
        restore_endpoints(&mut endpoints, input, key, max_age)?
    };
    for (core, shared) in cores.iter_mut().zip(shards) {
        // Restored connections go to the accept queue; the driver recomputes its deadline.
        shared.settle(core);
        shared.wake();
    }
    Ok(report)
}

/// The sans-IO part of [`restore_shards`]: one section per endpoint (in shard order), all
/// opened and parsed before any connection is inserted.
pub(crate) fn restore_endpoints(
    endpoints: &mut [&mut crate::endpoint::Endpoint],
    input: &mut impl std::io::Read,
    key: &crate::endpoint::StateKey,
    max_age: Duration,
) -> Result<crate::endpoint::RestoreReport> {
    let count = u16::try_from(endpoints.len()).unwrap_or(u16::MAX);
    let wall_now = std::time::SystemTime::now();
    let mut loaded = Vec::with_capacity(endpoints.len());
    // The budget is the server's: the sections together may not exceed what is left of it.
    let mut left = endpoints
        .first()
        .map_or(0, |e| e.config().max_connections)
        .saturating_sub(endpoints.iter().map(|e| e.stats().connections).sum());
    let now = Instant::now();
    let at = crate::endpoint::LoadAt {
        now,
        wall_now,
        max_age,
    };
    for endpoint in endpoints.iter() {
        let section = endpoint.load_section(input, key, at, count, left)?;
        left -= section.len();
        loaded.push(section);
    }
    crate::endpoint::expect_end(input)?;
    let mut report = crate::endpoint::RestoreReport::default();
    for (endpoint, section) in endpoints.iter_mut().zip(loaded) {
        report.add(&endpoint.install(now, section));
    }
    Ok(report)
}
