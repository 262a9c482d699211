//! Admission of new peers: the cookie path a ClientHello takes ([`Endpoint::listen`]), the
//! limits that may refuse a verified one ([`Limit`]), eviction of idle connections at
//! `max_connections`, the refusal alert, the hand-over of an accepted handshake (alongside a
//! live connection from the same address, if any), and the worst-case memory of one handshake
//! that `handshake_memory` is counted in; and the budget the shards of one server share
//! ([`SharedLimits`]), so that the limits hold for the whole server.

use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::{AddAssign, SubAssign};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::peer::Peer;
use super::{ConnectionId, Endpoint};
use crate::cookie::COOKIE_LEN;
use crate::error::Error;
use crate::listener::ListenOutcome;
use crate::session::Session;
use crate::wire::{self, Datagram};

/// Eviction candidates remembered per scan of the connection table.
const EVICTION_BATCH: usize = 32;

/// Retransmissions of a cookie-bearing ClientHello refused at a handshake limit before the
/// refusal is told with an alert (≈ 7 s at the RFC 6347 backoff of 1, 2, 4 s).
const REFUSAL_PATIENCE: u64 = 3;

/// Refusals by one limit are logged at `info` at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The limits that refuse a verified ClientHello, for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// [`EndpointConfig::max_connections`](super::EndpointConfig::max_connections).
    Connections,
    /// [`EndpointConfig::max_handshakes`](super::EndpointConfig::max_handshakes).
    Handshakes,
    /// [`EndpointConfig::max_handshakes_per_ip`](super::EndpointConfig::max_handshakes_per_ip).
    PerIp,
    /// [`EndpointConfig::handshake_memory`](super::EndpointConfig::handshake_memory).
    Memory,
}

impl Limit {
    /// The name of the setting, for logs.
    fn name(self) -> &'static str {
        match self {
            Limit::Connections => "max_connections",
            Limit::Handshakes => "max_handshakes",
            Limit::PerIp => "max_handshakes_per_ip",
            Limit::Memory => "handshake_memory",
        }
    }
}

impl Endpoint {
    /// The cookie path for a ClientHello.
    pub(super) fn listen(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        datagram: &[u8],
        classified: Datagram,
    ) {
        let Datagram::ClientHello(info) = classified else {
            return;
        };
        if info.fragmented {
            self.stats.dropped_fragmented_client_hello += 1;
            return;
        }
        if datagram.len() < wire::hello_verify_request_len(COOKIE_LEN) {
            self.stats.dropped_short_client_hello += 1;
            return;
        }
        let has_cookie = info.cookie_len > 0;
        let Some((_, listener)) = self.server.as_mut() else {
            self.stats.dropped_unknown_peer += 1;
            return;
        };
        match listener.handle(now, peer, datagram, &mut self.scratch) {
            ListenOutcome::HelloVerifyRequest(n) => {
                self.stats.hello_verify_requests += 1;
                if has_cookie {
                    self.stats.cookies_rejected += 1;
                }
                if self.replies.len() >= self.config.max_pending_replies {
                    self.stats.replies_dropped += 1;
                    return;
                }
                let mut buf = self.spare_replies.pop().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(&self.scratch[..n]);
                self.replies.push_back((peer, buf));
            }
            ListenOutcome::ReplyTooLarge => self.stats.hello_verify_requests_too_large += 1,
            ListenOutcome::Ignored => {
                self.stats.listener_ignored += 1;
                if has_cookie {
                    self.stats.cookies_rejected += 1;
                }
            }
            ListenOutcome::Failed => self.stats.handshakes_failed_local += 1,
            ListenOutcome::Verified => {
                // The application's admission hook first: a peer it refuses must not make room
                // by evicting anyone.
                let admitted = self.server.as_ref().is_some_and(|(ctx, _)| ctx.admit(peer));
                if !admitted {
                    self.stats.refused_by_admission += 1;
                    if let Some((_, listener)) = self.server.as_mut() {
                        listener.reset();
                    }
                    return;
                }
                // The cookie proved the address: the peer may be told when it is refused.
                if let Err(limit) = self.admissible(now, peer) {
                    self.refuse(now, peer, datagram, limit);
                    if let Some((_, listener)) = self.server.as_mut() {
                        listener.reset();
                    }
                    return;
                }
                self.start_admitted(now, peer);
                // A shard's reservation in the server's budget that no handshake took.
                if let Some(shared) = self.handshakes.shared.as_mut() {
                    shared.cancel_reservation();
                }
            }
            ListenOutcome::Accepted(session) => self.accepted(now, peer, session),
        }
    }

    /// Starts the handshake of an admitted ClientHello from `peer`: issues its Connection ID
    /// (if it asks for CIDs: none of ours already) and takes the listener's session in.
    fn start_admitted(&mut self, now: Instant, peer: SocketAddr) {
        let cid = self.fresh_cid();
        let Some((_, listener)) = self.server.as_mut() else {
            return;
        };
        let Ok(cid) = cid else {
            listener.reset();
            self.stats.handshakes_failed_local += 1;
            return;
        };
        match listener.accept(peer, now, cid) {
            ListenOutcome::Accepted(session) => {
                self.cids.reserve(&session, peer);
                self.accepted(now, peer, session)
            }
            _ => self.stats.handshakes_failed_local += 1,
        }
    }

    /// Makes this endpoint shard `index` of a server whose shards share `limits`: from now on
    /// its handshakes and connections also count in `limits`, its admission checks the
    /// server-wide counts there, and the CIDs it issues carry `index` in the byte after the
    /// context's prefix. Called once, on a fresh endpoint.
    pub(crate) fn join_shards(&mut self, limits: Arc<SharedLimits>, index: u8) {
        debug_assert!(self.peers.is_empty() && self.handshakes.total() == 0);
        self.handshakes.shared = Some(SharedCount {
            limits: Arc::clone(&limits),
            reserved: None,
            held: HashMap::new(),
        });
        self.connections.shared = Some(limits);
        self.shard = Some(index);
    }

    /// This endpoint's index among its server's shards ([`join_shards`](Self::join_shards)).
    pub(super) fn shard_index(&self) -> Option<u8> {
        self.shard
    }

    /// Whether a verified ClientHello from `peer` may start a handshake now, evicting the least
    /// recently active idle connection if that makes room; the limit that refuses it otherwise.
    /// A shard checks (and reserves its place in) the server-wide budget instead of its own
    /// counts.
    fn admissible(&mut self, now: Instant, peer: SocketAddr) -> Result<(), Limit> {
        // A rebooted peer's new handshake replaces its old connection: it needs no new room.
        let replacing = self.peers.contains_key(&peer);
        if let Some(limits) = self
            .handshakes
            .shared
            .as_ref()
            .map(|s| Arc::clone(&s.limits))
        {
            let (config, cost) = (self.config.clone(), self.handshake_cost);
            let reserve = || limits.try_reserve(peer.ip(), replacing, &config, cost);
            let reserved = match reserve() {
                // Room made here by evicting one of this shard's idle connections.
                Err(Limit::Connections) if self.evict_one(now) => reserve(),
                other => other,
            };
            reserved?;
            if let Some(shared) = self.handshakes.shared.as_mut() {
                shared.reserved = Some(peer.ip());
            }
            return Ok(());
        }
        if self.handshakes.total() >= self.config.max_handshakes {
            return Err(Limit::Handshakes);
        }
        if self.handshakes.of_ip(peer.ip()) >= self.config.max_handshakes_per_ip {
            return Err(Limit::PerIp);
        }
        if (self.handshakes.total() + 1).saturating_mul(self.handshake_cost)
            > self.config.handshake_memory
        {
            return Err(Limit::Memory);
        }
        if !replacing
            && self.handshakes.total() + self.connections.get() >= self.config.max_connections
            && !self.evict_one(now)
        {
            return Err(Limit::Connections);
        }
        Ok(())
    }

    /// Drops the least recently active established connection that has been idle for at least
    /// `evict_idle_after`, with a `close_notify`. Whether one was dropped.
    fn evict_one(&mut self, now: Instant) -> bool {
        let Some(min_idle) = self.config.evict_idle_after else {
            return false;
        };
        if self.no_evictable_before.is_some_and(|t| now < t) {
            return false;
        }
        loop {
            let Some((at, id, addr)) = self.evictable.pop() else {
                if !self.scan_evictable(now, min_idle) {
                    return false;
                }
                continue;
            };
            let Some(p) = self.peers.get_mut(&addr) else {
                continue;
            };
            // Still the same connection, still as idle as when it was found, and still idle.
            let evictable = p.id == id
                && p.last_activity() == at
                && p.session.is_established()
                && p.replacement.is_none()
                && now.saturating_duration_since(at) >= min_idle;
            if !evictable {
                continue;
            }
            let idle = now.saturating_duration_since(at);
            log::info!(
                "{addr}: dropping the connection (idle {} s) to make room: max_connections ({}) reached",
                idle.as_secs(),
                self.config.max_connections
            );
            p.session.end_with_close_notify(Error::Evicted {
                peer: Some(addr),
                idle,
            });
            self.stats.evicted += 1;
            self.settle(addr, now);
            return true;
        }
    }

    /// Fills `evictable` with the oldest established connections idle for at least `min_idle`
    /// (one pass over the table, kept for the next evictions). Whether it found any; if not,
    /// no scan runs again until the oldest connection could have become old enough.
    fn scan_evictable(&mut self, now: Instant, min_idle: Duration) -> bool {
        let mut oldest: Option<Instant> = None;
        let mut found: BinaryHeap<(Instant, ConnectionId, SocketAddr)> = BinaryHeap::new();
        for (addr, p) in self.peers.iter() {
            if !p.session.is_established() || p.replacement.is_some() {
                continue;
            }
            oldest = Some(oldest.map_or(p.last_activity(), |o| o.min(p.last_activity())));
            if now.saturating_duration_since(p.last_activity()) < min_idle {
                continue;
            }
            found.push((p.last_activity(), p.id, *addr));
            if found.len() > EVICTION_BATCH {
                found.pop(); // the most recently active of them
            }
        }
        // Oldest last, for `pop`.
        self.evictable = found.into_sorted_vec();
        self.evictable.reverse();
        if self.evictable.is_empty() {
            // Nothing is old enough: nothing can be before the oldest connection reaches
            // `min_idle` (or a new connection is established, which is later still).
            self.no_evictable_before = Some(oldest.map_or(now + min_idle, |o| o + min_idle));
            return false;
        }
        self.no_evictable_before = None;
        true
    }

    /// Refuses a verified ClientHello at `limit`: counts it, logs it (at most every
    /// [`REFUSAL_LOG_INTERVAL`] per limit), and tells the client with a fatal `internal_error`
    /// alert (RFC 5246 §7.2.2: a failure unrelated to the peer) when waiting will not help:
    ///
    /// - at `max_connections` with nothing to evict, at once: room will not come soon;
    /// - at the handshake limits (`max_handshakes`, `max_handshakes_per_ip`,
    ///   `handshake_memory`), which clear within a handshake's time, only once the client has
    ///   retransmitted its ClientHello [`REFUSAL_PATIENCE`] times (its record sequence number
    ///   says so, no state is kept): until then its own retransmission is the retry, and a storm
    ///   of reconnecting devices gets through without failing.
    ///
    /// The cookie proved the address, and the alert is smaller than the ClientHello.
    fn refuse(&mut self, now: Instant, peer: SocketAddr, hello: &[u8], limit: Limit) {
        let (counter, slot) = match limit {
            Limit::Connections => (&mut self.stats.refused_connection_limit, 0),
            Limit::Handshakes => (&mut self.stats.refused_handshake_limit, 1),
            Limit::PerIp => (&mut self.stats.refused_per_ip_limit, 2),
            Limit::Memory => (&mut self.stats.refused_handshake_memory, 3),
        };
        *counter += 1;
        let (last, since) = &mut self.refusal_log[slot];
        *since += 1;
        if last.is_none_or(|t| now.saturating_duration_since(t) >= REFUSAL_LOG_INTERVAL) {
            let value = match limit {
                Limit::Connections => self.config.max_connections,
                Limit::Handshakes => self.config.max_handshakes,
                Limit::PerIp => self.config.max_handshakes_per_ip,
                Limit::Memory => self.config.handshake_memory,
            };
            log::info!(
                "refused a handshake from {peer} ({since} since the last such line): {} ({value}) reached",
                limit.name()
            );
            *last = Some(now);
            *since = 0;
        }
        let Ok(record) = wire::RecordHeader::new_checked(hello) else {
            return;
        };
        // The cookie-bearing ClientHello is the client's second (record sequence 1, or 0 in
        // some stacks); each retransmission adds one.
        if limit != Limit::Connections && record.sequence() < 1 + REFUSAL_PATIENCE {
            return;
        }
        if self.replies.len() >= self.config.max_pending_replies {
            self.stats.replies_dropped += 1;
            return;
        }
        // The alert mirrors the ClientHello's record version and sequence number, as a
        // HelloVerifyRequest does (RFC 6347 §4.2.1).
        let alert = wire::plaintext_alert(record.version(), record.sequence(), 2, INTERNAL_ERROR);
        let mut buf = self.spare_replies.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&alert);
        self.stats.refusal_alerts_sent += 1;
        self.replies.push_back((peer, buf));
    }

    /// Takes in a handshake the listener accepted from `peer`: a new entry, or the replacement
    /// handshake of a live connection from the same address (a rebooted peer).
    fn accepted(&mut self, now: Instant, peer: SocketAddr, session: Box<Session>) {
        let replace_now = self.peers.get(&peer).is_some_and(Peer::terminal);
        if replace_now {
            self.remove(peer);
        }
        // A CID connection's address is not its identity: another device's handshake from it
        // (the address reused by a NAT or a balancer) is a new peer, and the CID connection
        // steps aside, reachable by its CID (`park_connection`).
        if self.holds_cid_connection(peer) {
            let parked = self.park_connection(now, peer);
            self.parked_by.insert(peer, parked);
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            let id = self.next_id;
            self.next_id += 1;
            log::debug!("{peer} started a new handshake while connected; old connection kept until it completes");
            // A replacement is a handshake in flight like any other: it counts against the
            // limits (a replaced replacement hands its count over).
            if p.replacement.is_none() {
                self.handshakes.add(peer.ip());
            }
            p.replacement = Some(Box::new((id, *session)));
            self.settle(peer, now);
        } else {
            self.insert(now, peer, *session);
        }
    }
}

/// The budget the shards of one server share, so that `max_connections`, `max_handshakes`,
/// `max_handshakes_per_ip` and `handshake_memory` hold for the whole server and not per shard
/// (the kernel spreads one IP address's ports over the shards). Each shard's endpoint counts its
/// handshakes and connections here as well as in its own counters; a verified ClientHello
/// reserves its place here (checking every limit and counting the handshake in one step, so
/// two shards cannot both take the last place), and gives it back when its handshake ends.
///
/// One mutex, taken only when a handshake is admitted, completes or ends and when a
/// connection ends: never per datagram. The sans-IO endpoints stay clock-free: the budget holds
/// counts, not times.
#[derive(Debug, Default)]
pub(crate) struct SharedLimits {
    budget: Mutex<Budget>,
}

/// The server-wide counts behind [`SharedLimits`]'s lock.
#[derive(Debug, Default)]
struct Budget {
    /// Handshakes in flight on every shard (reservations included).
    handshakes: usize,
    /// Handshakes in flight per IP address; an address with none has no entry.
    per_ip: HashMap<IpAddr, usize>,
    /// Established connections on every shard.
    connections: usize,
}

impl SharedLimits {
    fn lock(&self) -> std::sync::MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks every limit against the server-wide counts for a new handshake from `ip` (one
    /// that `replaces` a connection of the same address needs no new room under
    /// `max_connections`) and, if none refuses it, counts it.
    fn try_reserve(
        &self,
        ip: IpAddr,
        replaces: bool,
        config: &super::EndpointConfig,
        cost: usize,
    ) -> Result<(), Limit> {
        let mut b = self.lock();
        if b.handshakes >= config.max_handshakes {
            return Err(Limit::Handshakes);
        }
        if b.per_ip.get(&ip).copied().unwrap_or(0) >= config.max_handshakes_per_ip {
            return Err(Limit::PerIp);
        }
        if (b.handshakes + 1).saturating_mul(cost) > config.handshake_memory {
            return Err(Limit::Memory);
        }
        if !replaces && b.handshakes + b.connections >= config.max_connections {
            return Err(Limit::Connections);
        }
        b.add_handshake(ip);
        Ok(())
    }
}

impl Budget {
    fn add_handshake(&mut self, ip: IpAddr) {
        self.handshakes += 1;
        *self.per_ip.entry(ip).or_insert(0) += 1;
    }

    fn remove_handshakes(&mut self, ip: IpAddr, n: usize) {
        self.handshakes = self.handshakes.saturating_sub(n);
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

/// A shard's side of the server's handshake budget, inside its `HandshakeCount`: what it holds
/// there (given back if the endpoint is dropped) and the place its current admission reserved.
#[derive(Debug)]
pub(crate) struct SharedCount {
    limits: Arc<SharedLimits>,
    /// The place [`SharedLimits::try_reserve`] took for the ClientHello being admitted, for the
    /// handshake that admission starts.
    reserved: Option<IpAddr>,
    /// Handshakes this shard counts in the budget, per IP address.
    held: HashMap<IpAddr, usize>,
}

impl SharedCount {
    /// Counts a new handshake from `ip`: the reservation its admission made, or a new place.
    pub(super) fn add(&mut self, ip: IpAddr) {
        *self.held.entry(ip).or_insert(0) += 1;
        if self.reserved == Some(ip) {
            self.reserved = None;
        } else {
            self.limits.lock().add_handshake(ip);
        }
    }

    /// Gives up the place of a handshake from `ip` that completed or ended.
    pub(super) fn remove(&mut self, ip: IpAddr) {
        if let Some(n) = self.held.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&ip);
            }
            self.limits.lock().remove_handshakes(ip, 1);
        }
    }

    /// Gives back a reservation no handshake took (the admission failed after it).
    fn cancel_reservation(&mut self) {
        if let Some(ip) = self.reserved.take() {
            self.limits.lock().remove_handshakes(ip, 1);
        }
    }
}

impl Drop for SharedCount {
    fn drop(&mut self) {
        self.cancel_reservation();
        let mut b = self.limits.lock();
        for (ip, n) in self.held.drain() {
            b.remove_handshakes(ip, n);
        }
    }
}

/// An endpoint's count of established connections, also counted in its server's
/// [`SharedLimits`] when the endpoint is a shard (given back if the endpoint is dropped).
#[derive(Debug, Default)]
pub(crate) struct ConnectionCount {
    n: usize,
    shared: Option<Arc<SharedLimits>>,
}

impl ConnectionCount {
    /// Established connections of this endpoint.
    pub(super) fn get(&self) -> usize {
        self.n
    }
}

impl AddAssign<usize> for ConnectionCount {
    fn add_assign(&mut self, n: usize) {
        self.n += n;
        if let Some(limits) = &self.shared {
            limits.lock().connections += n;
        }
    }
}

impl SubAssign<usize> for ConnectionCount {
    fn sub_assign(&mut self, n: usize) {
        self.n -= n;
        if let Some(limits) = &self.shared {
            let mut b = limits.lock();
            b.connections = b.connections.saturating_sub(n);
        }
    }
}

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        if let Some(limits) = &self.shared {
            let mut b = limits.lock();
            b.connections = b.connections.saturating_sub(self.n);
        }
    }
}

/// `internal_error` (80): the alert that refuses a handshake at a limit.
const INTERNAL_ERROR: u8 = 80;

/// The worst case of one handshake's memory for sessions with `config` on a context whose
/// `max_cert_list` is `max_cert_list` (see [`Endpoint::handshake_worst_case`]). The OpenSSL terms
/// are upper bounds read from OpenSSL 3.x's DTLS code, checked against measurement by the
/// hostile-handshake benchmark (`BENCH_ONLY=hostile scripts/bench.sh`).
pub(super) fn handshake_worst_case(
    config: &crate::config::SessionConfig,
    max_cert_list: usize,
) -> usize {
    // An SSL mid-handshake: the ≈ 17.7 KB read buffer, the write buffer, the transcript, the
    // key exchange and the retransmission queue of our last flight.
    const SSL_BASE: usize = 96 * 1024;
    // A full read buffer (`SSL3_RT_MAX_PLAIN_LENGTH` plus overhead and alignment) with its
    // queue entry: what OpenSSL keeps per buffered record.
    const READ_BUFFER: usize = 18_432 + 256;
    // OpenSSL's largest reassembled handshake message (`dtls1_max_handshake_message_len`: a
    // record's worth or `max_cert_list`), with its reassembly bitmap and queue entry.
    let message = max_cert_list.max(18_432 + 12) * 9 / 8 + 256;
    // The message being reassembled and the ten it queues ahead of it.
    let messages = 11 * message;
    // Epoch-1 records buffered before OpenSSL reads the peer's ChangeCipherSpec, and the
    // application or alert records it keeps after it until the handshake ends.
    let records = (crate::session::MAX_HANDSHAKE_EPOCH1_RECORDS
        + crate::session::MAX_HANDSHAKE_EPOCH1_APP_RECORDS)
        * READ_BUFFER;
    // Our queues: the send queue at the MTU, the receive queue's byte limit.
    let queues = config.send_queue * config.mtu + config.recv_queue_bytes;
    SSL_BASE + messages + records + queues
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Instant;

    use super::SharedLimits;
    use crate::context::{DtlsClientContext, DtlsServerContext, PskCredentials};
    use crate::endpoint::{Endpoint, EndpointConfig};

    fn server() -> DtlsServerContext {
        DtlsServerContext::builder()
            .psk_key_store(|_| Some(b"0123456789abcdef".to_vec()))
            .build()
            .unwrap()
    }

    fn client_ctx() -> DtlsClientContext {
        DtlsClientContext::builder()
            .psk_credentials(PskCredentials::new(
                b"device".to_vec(),
                b"0123456789abcdef".to_vec(),
            ))
            .build()
            .unwrap()
    }

    const SERVER: &str = "10.0.0.1:5684";

    /// Two shards of one server: endpoints on clones of one context sharing one budget.
    fn shards(config: &EndpointConfig) -> (Endpoint, Endpoint, Arc<SharedLimits>) {
        let ctx = server();
        let limits = Arc::new(SharedLimits::default());
        let mut a = Endpoint::server(ctx.clone(), config.clone()).unwrap();
        let mut b = Endpoint::server(ctx, config.clone()).unwrap();
        a.join_shards(Arc::clone(&limits), 0);
        b.join_shards(Arc::clone(&limits), 1);
        (a, b, limits)
    }

    /// Moves every datagram `from` queued to `to` (a client's to the server as from `addr`, a
    /// server's to the client as from the server). How many.
    fn deliver(from: &mut Endpoint, to: &mut Endpoint, addr: SocketAddr, now: Instant) -> usize {
        let mut buf = vec![0u8; 65_536];
        let mut n = 0;
        while let Some((_, len)) = from.poll_transmit(&mut buf) {
            to.handle_datagram(now, addr, &buf[..len]);
            n += 1;
        }
        n
    }

    /// A client at `addr` through the cookie exchange to the start of its handshake on `s`.
    fn start(s: &mut Endpoint, addr: SocketAddr, now: Instant) -> Endpoint {
        let server_addr: SocketAddr = SERVER.parse().unwrap();
        let mut c = Endpoint::client(EndpointConfig::default()).unwrap();
        c.connect(now, server_addr, &client_ctx(), None).unwrap();
        deliver(&mut c, s, addr, now); // ClientHello
        deliver(s, &mut c, server_addr, now); // HelloVerifyRequest
        deliver(&mut c, s, addr, now); // ClientHello with the cookie
        c
    }

    /// Runs the handshake of `c` at `addr` with `s` to its end.
    fn finish(s: &mut Endpoint, c: &mut Endpoint, addr: SocketAddr, now: Instant) {
        let server_addr: SocketAddr = SERVER.parse().unwrap();
        for _ in 0..20 {
            let moved = deliver(s, c, server_addr, now) + deliver(c, s, addr, now);
            if moved == 0 {
                return;
            }
        }
    }

    #[test]
    fn the_handshake_limits_hold_across_shards_and_free_up_when_a_handshake_ends() {
        let config = EndpointConfig {
            max_handshakes_per_ip: 1,
            ..EndpointConfig::default()
        };
        let (mut a, mut b, limits) = shards(&config);
        let now = Instant::now();
        let one: SocketAddr = "192.0.2.7:40001".parse().unwrap();
        let two: SocketAddr = "192.0.2.7:40002".parse().unwrap();
        let mut c1 = start(&mut a, one, now);
        assert_eq!(a.stats().handshakes, 1);
        assert_eq!(limits.lock().handshakes, 1);
        // The same IP address, another port, hashed to the other shard: refused there.
        let _c2 = start(&mut b, two, now);
        let s = b.stats();
        assert_eq!((s.handshakes, s.refused_per_ip_limit), (0, 1), "{s}");
        assert_eq!(limits.lock().handshakes, 1, "a refusal reserves nothing");
        // The first handshake completes: the place is free, on every shard.
        finish(&mut a, &mut c1, one, now);
        assert_eq!(a.stats().connections, 1);
        let budget = limits.lock().handshakes;
        let connections = limits.lock().connections;
        assert_eq!((budget, connections), (0, 1));
        let _c3 = start(&mut b, two, now);
        assert_eq!(b.stats().handshakes, 1);
        // A shard that goes away gives back what it held.
        drop(b);
        drop(a);
        let b = limits.lock();
        assert_eq!((b.handshakes, b.connections, b.per_ip.len()), (0, 0, 0));
    }

    #[test]
    fn max_connections_holds_across_shards() {
        let config = EndpointConfig {
            max_connections: 1,
            evict_idle_after: None,
            ..EndpointConfig::default()
        };
        let (mut a, mut b, _limits) = shards(&config);
        let now = Instant::now();
        let one: SocketAddr = "192.0.2.7:40001".parse().unwrap();
        let two: SocketAddr = "198.51.100.9:40001".parse().unwrap();
        let mut c1 = start(&mut a, one, now);
        finish(&mut a, &mut c1, one, now);
        assert_eq!(a.stats().connections, 1);
        let _c2 = start(&mut b, two, now);
        let s = b.stats();
        assert_eq!((s.handshakes, s.refused_connection_limit), (0, 1), "{s}");
    }
}
