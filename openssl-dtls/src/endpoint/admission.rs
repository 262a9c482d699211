//! Admission of new peers: the cookie path a ClientHello takes ([`Endpoint::listen`]), the
//! limits that may refuse a verified one ([`Limit`]), eviction of idle connections at
//! `max_connections`, the refusal alert, the hand-over of an accepted handshake (alongside a
//! live connection from the same address, if any), and the worst-case memory of one handshake
//! that `handshake_memory` is counted in.

use std::collections::BinaryHeap;
use std::net::SocketAddr;
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
                // The Connection ID it is issued if it asks for CIDs: none of ours already.
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
            ListenOutcome::Accepted(session) => self.accepted(now, peer, session),
        }
    }

    /// Whether a verified ClientHello from `peer` may start a handshake now, evicting the least
    /// recently active idle connection if that makes room; the limit that refuses it otherwise.
    fn admissible(&mut self, now: Instant, peer: SocketAddr) -> Result<(), Limit> {
        // A rebooted peer's new handshake replaces its old connection: it needs no new room.
        let replacing = self.peers.contains_key(&peer);
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
            && self.handshakes.total() + self.connections >= self.config.max_connections
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
                && p.last_activity == at
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
        for (addr, p) in &self.peers {
            if !p.session.is_established() || p.replacement.is_some() {
                continue;
            }
            oldest = Some(oldest.map_or(p.last_activity, |o| o.min(p.last_activity)));
            if now.saturating_duration_since(p.last_activity) < min_idle {
                continue;
            }
            found.push((p.last_activity, p.id, *addr));
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
        if let Some(p) = self.peers.get_mut(&peer) {
            let id = self.next_id;
            self.next_id += 1;
            log::debug!("{peer} started a new handshake while connected; old connection kept until it completes");
            // A replacement is a handshake in flight like any other: it counts against the
            // limits (a replaced replacement hands its count over).
            if p.replacement.is_none() {
                self.handshakes.add(peer.ip());
            }
            p.replacement = Some((id, session));
            self.settle(peer, now);
        } else {
            self.insert(now, peer, *session);
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
