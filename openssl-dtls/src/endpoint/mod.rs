//! One UDP socket's worth of DTLS, sans-IO: demultiplexes datagrams by peer address to
//! [`Session`]s, runs the stateless cookie exchange for unknown peers, enforces limits, and
//! emits events.
//!
//! ```text
//! handle_datagram ─> wire::classify ─┬─ garbage ──────────────> stats.dropped[reason]
//!                                    ├─ ClientHello, unknown ─> Listener (DTLSv1_listen) ─┬─ HelloVerifyRequest
//!                                    │                                                   └─ verified ─> limits / eviction ─> new Session, or refusal alert
//!                                    └─ known peer ───────────> Session::handle_datagram
//! poll_transmit: round robin over sessions, alternating with stateless replies
//! poll_timeout / handle_timeout: a deadline heap (retransmissions, handshake deadlines, idle)
//! poll_event: Connected, Readable, Closed, HandshakeFailed
//! ```
//!
//! Under load the endpoint refuses new connection attempts (counted by limit, logged, and told
//! with an alert once the refusal will last) instead of degrading the connections it has. At
//! `max_connections` an established connection makes room only if it has been silent for
//! [`EndpointConfig::evict_idle_after`], least recently active first, and it is told with a
//! `close_notify`. Only authenticated input counts as activity.
//!
//! A ClientHello from the address of an established connection (a device that rebooted and kept
//! its port, RFC 6347 §4.2.8) goes through the cookie exchange like any other; the old
//! connection keeps working until the new handshake completes, and only then is replaced.
//!
//! The module is split by concern: [`EndpointConfig`] in `config.rs`, [`EndpointStats`] and
//! [`ConnectionStats`] in `stats.rs`, [`Event`] and [`HandshakeFailure`] in `events.rs`, the
//! cookie path, limits and eviction in `admission.rs`, and the peer table's entries and their
//! bookkeeping in `peer.rs`. This file holds [`Endpoint`] and its entry points.

mod admission;
mod cid;
mod config;
mod events;
mod offload;
mod peer;
mod persist;
mod stats;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

pub use self::config::EndpointConfig;
pub(crate) use self::events::{report_failures, FailureHook, MAX_PENDING_FAILURES};
pub use self::events::{Event, HandshakeFailure, PeerIdentity};
pub use self::offload::{HandshakeJob, HANDSHAKE_INBOX, OFFLOAD_WHILE_TRAFFIC};
pub(crate) use self::persist::{expect_end, LoadAt};
pub use self::persist::{
    RestoreReport, SaveReport, StateKey, MAX_STATE_CLOCK_SKEW, MAX_STATE_CONNECTIONS,
    RESTORE_SEQUENCES_PER_MS, STATE_FORMAT_VERSION, STATE_SEQUENCE_RESERVE,
};
pub use self::stats::{ConnectionStats, EndpointStats};

use self::admission::handshake_worst_case;
pub(crate) use self::admission::SharedLimits;
use self::peer::{HandshakeCount, Peer, PeerTable};
use crate::context::{DtlsClientContext, DtlsServerContext};
use crate::error::{Error, Result};
use crate::listener::Listener;
use crate::session::Session;
use crate::wire::{self, Datagram, DropReason};

/// How a datagram finds its connection, decided once per datagram from its parse.
///
/// DTLS 1.2 without a Connection ID knows its peer by address alone. With RFC 9146, a record of
/// content type `tls12_cid` (25) carries the receiver's Connection ID after its sequence number,
/// and such a datagram routes by that ID whatever address it came from (a device behind a NAT
/// that rebound its port). The route is computed here, from the record views of the one parse,
/// and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Route<'a> {
    /// By the peer's address (every datagram without a `tls12_cid` record).
    Address(SocketAddr),
    /// By the Connection ID of its first `tls12_cid` record.
    Cid(&'a [u8]),
}

impl<'a> Route<'a> {
    /// The route of a datagram from `peer`.
    pub(crate) fn of(peer: SocketAddr, parsed: &wire::Parsed<'a>) -> Route<'a> {
        match parsed.cid() {
            Some(cid) => Route::Cid(cid),
            None => Route::Address(peer),
        }
    }
}

/// Identifies one connection over its life (addresses are reused; ids are not).
pub type ConnectionId = u64;

/// How many ended connections' sessions the endpoint keeps for their unread `Connected`
/// events ([`Endpoint::session`]): 16, the oldest dropped first.
const ENDED_KEPT: usize = 16;

/// A DTLS endpoint over one socket: see the [module documentation](self).
pub struct Endpoint {
    /// The server context and its stateless cookie listener; `None` on a client-only endpoint.
    server: Option<(DtlsServerContext, Listener)>,
    /// The limits.
    config: EndpointConfig,
    /// One entry per peer address with a session (any state).
    peers: PeerTable,
    /// Handshakes in flight (after the cookie exchange), replacements included: in all and per
    /// IP address.
    handshakes: HandshakeCount,
    /// Established connections whose `Closed` event has not been queued (a shard's also count
    /// in its server's budget).
    connections: admission::ConnectionCount,
    /// This endpoint's index among its server's shards (the byte after the CID prefix).
    shard: Option<u8>,
    /// The id the next session gets.
    next_id: ConnectionId,
    /// Deadlines, earliest first: (when, the peer's handle in `peers`); an entry is stale, and
    /// skipped, unless the peer in that slot is scheduled at that very instant (a peer that
    /// left, moved or was replaced is not; a new peer in a reused slot that is has its deadline
    /// then anyway).
    timers: BinaryHeap<Reverse<peer::TimerEntry>>,
    /// What the timers' [`Deadline`](peer::Deadline)s count from: the first `now` given.
    epoch: Option<Instant>,
    /// Peers with datagrams to send, in turn order.
    ready: VecDeque<SocketAddr>,
    /// Stateless replies (HelloVerifyRequests, refusal alerts) waiting to be sent.
    replies: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Buffers of sent replies, reused for the next ones.
    spare_replies: Vec<Vec<u8>>,
    /// Whether the next `poll_transmit` turn goes to a stateless reply first.
    reply_turn: bool,
    /// Events waiting for `poll_event`.
    events: VecDeque<Event>,
    /// Sessions of connections that ended and were removed while their [`Event::Connected`]
    /// still waited (a handshake that completed and ended in one step): [`session`](Self::session)
    /// still finds each until the event after its `Connected` is taken, so that whoever takes
    /// the `Connected` sees the connection's facts. At most [`ENDED_KEPT`]; `true` once taken.
    ended: VecDeque<(ConnectionId, Session, bool)>,
    /// The counters (the gauges are filled in by `stats()`).
    stats: EndpointStats,
    /// Where the listener writes a HelloVerifyRequest.
    scratch: Vec<u8>,
    /// Bytes one handshake is charged against `handshake_memory` ([`Self::handshake_worst_case`]).
    handshake_cost: usize,
    /// Eviction candidates found by the last scan, oldest last: (last activity, id, address).
    evictable: Vec<(Instant, ConnectionId, SocketAddr)>,
    /// No connection can be evicted before this instant (the last scan found none old enough).
    no_evictable_before: Option<Instant>,
    /// Per limit (connections, handshakes, per IP, memory): when a refusal was last logged, and
    /// refusals since.
    refusal_log: [(Option<Instant>, u64); 4],
    /// Connection IDs (RFC 9146): each CID to the address of the connection that holds it.
    cids: cid::CidTable,
    /// Connections that moved to a new address, by id: so that calls with the address they
    /// had when the application learnt of them still find them.
    /// The address budget of a move not yet confirmed (`None` once the peer answered there).
    moved: HashMap<ConnectionId, (SocketAddr, Option<cid::Unconfirmed>)>,
    /// CID connections parked off their address so far (numbers their parking addresses).
    parked: u64,
    /// Handshakes that took a CID connection's address, and where that connection parked: when
    /// one completes with the same peer, the parked connection ends (a reboot).
    parked_by: HashMap<SocketAddr, SocketAddr>,
    /// The length of the CIDs this endpoint issues (0: none): how `tls12_cid` records parse.
    cid_len: u8,
    /// Non-DTLS datagrams for the application ([`EndpointConfig::demux_rtp`]): the address, the
    /// connection at it, the bytes (pooled buffers).
    non_dtls: VecDeque<(SocketAddr, ConnectionId, Vec<u8>)>,
    /// The latest `now` an entry point was given: the calls that take no `now` (output, the
    /// application's reads and closes) act at the time of the last input, so the endpoint never
    /// reads the clock.
    now: Option<Instant>,
    /// Server handshakes checked out to run elsewhere (see `offload.rs`).
    offload: offload::Offload,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("server", &self.server.is_some())
            .field("peers", &self.peers.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint that accepts connections with `ctx` (and can also connect out).
    pub fn server(ctx: DtlsServerContext, config: EndpointConfig) -> Result<Endpoint> {
        config.validate()?;
        let listener = Listener::new(&ctx)?;
        let mut endpoint = Endpoint::new(config);
        endpoint.handshake_cost = handshake_worst_case(ctx.session_config(), ctx.max_cert_list());
        endpoint.cid_len = ctx.connection_id_len().unwrap_or(0);
        endpoint.server = Some((ctx, listener));
        Ok(endpoint)
    }

    /// An endpoint that only connects out.
    pub fn client(config: EndpointConfig) -> Result<Endpoint> {
        config.validate()?;
        Ok(Endpoint::new(config))
    }

    fn new(config: EndpointConfig) -> Endpoint {
        Endpoint {
            server: None,
            config,
            peers: PeerTable::default(),
            handshakes: HandshakeCount::default(),
            connections: admission::ConnectionCount::default(),
            shard: None,
            next_id: 1,
            timers: BinaryHeap::new(),
            epoch: None,
            ready: VecDeque::new(),
            replies: VecDeque::new(),
            spare_replies: Vec::new(),
            reply_turn: false,
            events: VecDeque::new(),
            ended: VecDeque::new(),
            stats: EndpointStats::default(),
            scratch: vec![0; 2048],
            handshake_cost: handshake_worst_case(
                &crate::config::SessionConfig::default(),
                crate::context::MAX_CERT_LIST,
            ),
            evictable: Vec::new(),
            cids: cid::CidTable::default(),
            moved: HashMap::new(),
            parked: 0,
            parked_by: HashMap::new(),
            cid_len: 0,
            no_evictable_before: None,
            refusal_log: [(None, 0); 4],
            non_dtls: VecDeque::new(),
            now: None,
            offload: offload::Offload::default(),
        }
    }

    /// Records `now` as the endpoint's time (it never goes back).
    fn tick(&mut self, now: Instant) -> Instant {
        let now = self.now.map_or(now, |t| t.max(now));
        self.now = Some(now);
        self.epoch.get_or_insert(now);
        now
    }

    /// [`settle`](Self::settle)s `addr` at the time of the latest input, for the calls that take
    /// no `now`. Before any input, at the peer's last activity (a time already reached, so never
    /// early).
    fn settle_at_last_input(&mut self, addr: SocketAddr) {
        let Some(p) = self.peers.get(&addr) else {
            return;
        };
        let now = self.now.unwrap_or(p.last_activity());
        self.settle(addr, now);
    }

    /// The bytes one handshake in flight may hold at worst, as charged against
    /// [`EndpointConfig::handshake_memory`]: OpenSSL's `SSL` with its read and write buffers and
    /// handshake state, the largest handshake message it reassembles plus the ten it may queue
    /// out of order (each up to [`MAX_CERT_LIST`](crate::context::MAX_CERT_LIST) or ≈ 18 KB),
    /// the epoch-1 records it may buffer ([`MAX_HANDSHAKE_EPOCH1_RECORDS`](crate::session::MAX_HANDSHAKE_EPOCH1_RECORDS),
    /// ≈ 18 KB each), and this library's send and receive queues at the session's MTU.
    pub fn handshake_worst_case(&self) -> usize {
        self.handshake_cost
    }

    /// The endpoint's limits.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Starts a handshake with `peer` as a client. Fails if a connection or handshake with
    /// `peer` exists already.
    pub fn connect(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        ctx: &DtlsClientContext,
        server_name: Option<&str>,
    ) -> Result<ConnectionId> {
        let now = self.tick(now);
        if self.offload.away.contains_key(&peer) {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("a DTLS handshake with {peer} is in progress"),
            )));
        }
        if let Some(existing) = self.peers.get(&peer) {
            if !existing.terminal() {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("a DTLS connection with {peer} exists already"),
                )));
            }
            self.remove(peer);
        }
        let mut session = ctx.new_session_to(peer, server_name, now)?;
        session.set_peer_addr(peer);
        let id = self.insert(now, peer, session);
        Ok(id)
    }

    /// Handles one datagram received from `peer`.
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) {
        let now = self.tick(now);
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        self.route_datagram(now, peer, datagram);
    }

    /// Whether `datagram` from `peer` would start or advance a handshake (a `ClientHello`, or a
    /// handshake, change-cipher-spec or alert record for a handshake under way at that address)
    /// rather than serve an established connection. Expensive handshake work must not delay established traffic: a driver may
    /// handle such datagrams after the records of established connections it read with them
    /// (the blocking and tokio drivers do, see
    /// [`EndpointStats::handshake_datagrams_deferred`](crate::EndpointStats::handshake_datagrams_deferred)).
    /// Everything else (a datagram that starts with an application-data or `tls12_cid` record
    /// of epoch 1 or later, records of established connections, garbage that is dropped at
    /// once) is `false`. Cheap: the first five bytes, else one parse of the record headers and
    /// one table lookup; nothing changes and nothing is counted.
    ///
    /// ```
    /// # use openssl_dtls::{Endpoint, EndpointConfig};
    /// # fn demo(endpoint: &Endpoint, peer: std::net::SocketAddr, datagrams: &[Vec<u8>]) {
    /// // Established connections first, handshakes after.
    /// let (handshakes, records): (Vec<_>, Vec<_>) = datagrams
    ///     .iter()
    ///     .partition(|d| endpoint.is_handshake_datagram(peer, d));
    /// # let _ = (handshakes, records);
    /// # }
    /// ```
    pub fn is_handshake_datagram(&self, peer: SocketAddr, datagram: &[u8]) -> bool {
        // Application data and `tls12_cid` records of epoch 1 or later first: an established
        // connection's, never a handshake's step (no parse and no lookup on the established
        // path). Such a record in epoch 0 is never valid: one in front of a handshake's flight
        // must not carry it past the handshakes waiting before it, so it is looked at below.
        if let [23 | 25, _, _, e0, e1, ..] = *datagram {
            if (e0, e1) != (0, 0) {
                return false;
            }
        }
        let Ok(parsed) = wire::parse_cid(datagram, self.cid_len) else {
            return false;
        };
        let Route::Address(addr) = Route::of(peer, &parsed) else {
            return false;
        };
        if matches!(parsed.kind(), Datagram::ClientHello(_))
            || self.offload.away.contains_key(&addr)
        {
            return true;
        }
        self.peers
            .get(&addr)
            .is_some_and(|p| p.session.is_handshaking())
    }

    /// [`handle_datagram`](Self::handle_datagram) after the counters: also for the datagrams a
    /// checked-out handshake found waiting when it came back.
    fn route_datagram(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) {
        // The one parse of this datagram: every step below reads its record views.
        let parsed = match wire::parse_cid(datagram, self.cid_len) {
            Ok(parsed) => parsed,
            Err(_) if datagram.first().is_some_and(|b| (128..=191).contains(b)) => {
                self.non_dtls(peer, datagram);
                return;
            }
            Err(reason) => {
                // A connection whose own CID length differs from the endpoint's (a client that
                // asked the server for a CID) parses its `tls12_cid` records itself.
                if let Some(p) = self.peers.get_mut(&peer) {
                    if p.session.own_cid_len() != self.cid_len {
                        let before = p.session.authenticated_count();
                        p.session.handle_datagram(now, datagram);
                        if p.session.authenticated_count() != before {
                            p.set_last_activity(now);
                        }
                        self.settle(peer, now);
                        return;
                    }
                }
                log::trace!("dropping datagram from {peer}: {reason}");
                self.stats.dropped[reason.index()] += 1;
                return;
            }
        };
        let classified = parsed.kind();
        let addr = match Route::of(peer, &parsed) {
            Route::Address(addr) => addr,
            Route::Cid(cid) => match cid::CidKey::new(cid).and_then(|k| self.cids.map.get(&k)) {
                Some(&at) if at == peer => at,
                // A handshake that is out cannot move (it would be refused as busy).
                Some(&at) if self.offload.away.contains_key(&at) => {
                    self.stats.cid_moves_refused_busy += 1;
                    return;
                }
                Some(&at) => {
                    self.handle_cid_from_new_address(now, at, peer, &parsed);
                    return;
                }
                // A CID no connection holds: forged, stale (the connection ended) or another
                // node's. Dropped as cheaply as garbage.
                None => {
                    self.stats.dropped_unknown_cid += 1;
                    return;
                }
            },
        };
        // A handshake that is out (offload): the datagram waits for it to come back.
        if !self.offload.away.is_empty() && self.hold_for_away(addr, datagram) {
            return;
        }
        let offloading = self.offloading(now);
        if let Some(p) = self.peers.get_mut(&addr) {
            let hello = matches!(classified, Datagram::ClientHello(_));
            // A new ClientHello from the address of a live connection or pending handshake: a
            // rebooted peer, a client that gave up and started over, or a spoofer. Either way it
            // must prove the address first (RFC 6347 §4.2.8). Only a retransmission of the
            // ClientHello the pending handshake started from goes to that handshake.
            if hello && !is_retransmitted_hello(&p.session, classified, datagram) {
                self.listen(now, peer, datagram, classified);
                return;
            }
            if let Some((_, replacement)) = p.replacement.as_deref_mut() {
                replacement.handle_parsed(now, &parsed);
                if hello {
                    self.settle(peer, now);
                    return;
                }
            }
            if offloading && offload::wanted(p) {
                // A server handshake's step (key exchange, signature): run by the driver's
                // handshake worker, not here.
                let mut copy = crate::record::take_buffer();
                copy.extend_from_slice(datagram);
                self.check_out(addr, vec![copy]);
                return;
            }
            // Only authenticated input is activity: a forged record sent with the peer's
            // address (off-path, every idle period) must not keep a dead association alive.
            let before = p.session.authenticated_count();
            let was_established = p.session.is_established();
            p.session.handle_parsed(now, &parsed);
            if p.session.authenticated_count() != before {
                p.set_last_activity(now);
                // Traffic of an established connection (not the Finished that establishes it):
                // what handshake offload protects.
                if was_established && p.session.is_established() {
                    self.offload.last_traffic = Some(now);
                }
                if p.unconfirmed {
                    self.credit_unconfirmed(peer, datagram.len());
                }
            }
            self.settle(peer, now);
            return;
        }
        if self.server.is_none() {
            self.stats.dropped_unknown_peer += 1;
            return;
        }
        let Datagram::ClientHello(info) = classified else {
            self.stats.dropped[DropReason::NotClientHello.index()] += 1;
            return;
        };
        // A new handshake (its ClientHello carries a cookie) while the handshake backlog is
        // full: ignored, the client's retransmission retries. The cookie exchange stays open.
        if info.cookie_len > 0 && self.backlog_full() {
            self.stats.refused_handshake_backlog += 1;
            return;
        }
        self.listen(now, peer, datagram, classified);
    }

    /// The next datagram to send: its destination and length in `buf` (which should hold the
    /// largest MTU in use). Sessions take turns one datagram at a time, alternating with stateless
    /// replies, so no peer can starve another; the flights of handshakes checked out
    /// ([`set_handshake_offload`](Self::set_handshake_offload)) go in the sessions' turn, before
    /// the sessions.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        for _ in 0..2 {
            self.reply_turn = !self.reply_turn;
            let out = if self.reply_turn {
                self.poll_reply(buf)
            } else {
                // The flights of handshakes checked out go first: they are older than what
                // their sessions write once back.
                match self.poll_flight(buf) {
                    Some(out) => Some(out),
                    None => self.poll_session_transmit(buf),
                }
            };
            if let Some((addr, n)) = out {
                self.stats.datagrams_out += 1;
                self.stats.bytes_out += n as u64;
                return Some((addr, n));
            }
        }
        None
    }

    fn poll_reply(&mut self, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        while let Some((addr, reply)) = self.replies.pop_front() {
            let n = reply.len();
            let fits = n <= buf.len();
            if fits {
                buf[..n].copy_from_slice(&reply);
            }
            if self.spare_replies.len() < 16 {
                self.spare_replies.push(reply);
            }
            if fits {
                return Some((addr, n));
            }
        }
        None
    }

    fn poll_session_transmit(&mut self, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        while let Some(addr) = self.ready.pop_front() {
            let Some(p) = self.peers.get_mut(&addr) else {
                continue;
            };
            // A connection moved to an address that has not answered yet (rare): budgeted.
            let budgeted = p.unconfirmed.then_some(p.id);
            let mut n = p.session.poll_transmit(buf);
            if n.is_none() {
                if let Some((_, r)) = p.replacement.as_deref_mut() {
                    n = r.poll_transmit(buf);
                }
            }
            if p.has_transmit() {
                self.ready.push_back(addr);
            } else {
                p.in_ready = false;
                if p.terminal()
                    || p.replacement
                        .as_deref()
                        .is_some_and(|(_, r)| !r.is_handshaking())
                {
                    self.settle_at_last_input(addr);
                }
            }
            if let Some(n) = n {
                if budgeted.is_some_and(|id| !self.may_send(id, n)) {
                    continue; // an unconfirmed new address: no more than it sent us
                }
                return Some((addr, n));
            }
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next. May be early (a
    /// deadline that moved later); never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let epoch = self.epoch?;
        self.timers.peek().map(|Reverse(t)| t.at().instant(epoch))
    }

    /// Handles every deadline up to `now`: retransmissions, handshake deadlines (reaped),
    /// idle timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_timeout_budget(now, usize::MAX);
    }

    /// [`handle_timeout`](Self::handle_timeout), running at most `budget` of the timers that are
    /// due (the earliest first); the rest stay due, for the next call. Returns whether any was
    /// left. A driver thread that must get back to an established connection's record soon
    /// bounds its turn with it; timers are never lost, only run by a later call.
    pub fn handle_timeout_budget(&mut self, now: Instant, budget: usize) -> bool {
        let now = self.tick(now);
        let mut budget = budget;
        let due = peer::Deadline::of(&mut self.epoch, now);
        let offloading = self.offloading(now);
        while let Some(&Reverse(entry)) = self.timers.peek() {
            let (at, handle) = (entry.at(), entry.handle);
            if at > due {
                break;
            }
            if budget == 0 {
                return true;
            }
            self.timers.pop();
            let Some(p) = self.peers.by_handle_mut(handle) else {
                continue;
            };
            if p.scheduled != Some(at) {
                continue;
            }
            let Some(addr) = p.session.peer_addr() else {
                continue; // never: the table keeps every peer's address in its session
            };
            p.scheduled = None;
            budget -= 1;
            if offloading && offload::wanted(p) && p.session.retransmission_due(now) {
                // A server handshake's retransmission (a whole flight): sent from the
                // handshake worker, like the flight itself, not from the thread that serves
                // established connections (`HandshakeJob::run` runs the timer).
                self.check_out(addr, Vec::new());
                continue;
            }
            if p.session.is_established() {
                if let Some(idle) = self.config.idle_timeout {
                    if now.saturating_duration_since(p.last_activity()) >= idle {
                        log::debug!("{addr} idle for {idle:?}: dropping the connection");
                        self.stats.idle_timeouts += 1;
                        p.session.end_with_close_notify(Error::IdleTimeout {
                            peer: Some(addr),
                            idle,
                        });
                    }
                }
            }
            p.session.handle_timeout(now);
            if let Some((_, r)) = p.replacement.as_deref_mut() {
                r.handle_timeout(now);
            }
            self.settle(addr, now);
        }
        false
    }

    /// A datagram whose first byte is 128–191 (RTP or RTCP; RFC 7983 §7): queued for the
    /// application if [`EndpointConfig::demux_rtp`] is on and it came from the address of an
    /// established connection, else dropped; counted either way. Never given to a session.
    fn non_dtls(&mut self, peer: SocketAddr, datagram: &[u8]) {
        let id = self
            .peers
            .get(&peer)
            .filter(|p| p.session.is_established())
            .map(|p| p.id);
        let Some(id) = id.filter(|_| self.config.demux_rtp) else {
            self.stats.dropped_non_dtls += 1;
            return;
        };
        if self.non_dtls.len() >= self.config.non_dtls_queue {
            self.stats.dropped_non_dtls += 1;
            return;
        }
        self.events.push_back(Event::NonDtlsReadable { peer, id });
        let mut copy = crate::record::take_buffer();
        copy.extend_from_slice(datagram);
        self.non_dtls.push_back((peer, id, copy));
        self.stats.non_dtls_received += 1;
    }

    /// Takes the next non-DTLS datagram (RTP/RTCP, RFC 7983) queued with
    /// [`EndpointConfig::demux_rtp`]: the address it came from, the connection at that address
    /// when it arrived, and its length in `buf` (truncated to `buf`, as UDP's `recv` does);
    /// `None` when none waits. The demultiplexing RFC 7983 asks of a DTLS-SRTP endpoint:
    /// SRTP itself is the application's.
    pub fn recv_non_dtls(&mut self, buf: &mut [u8]) -> Option<(SocketAddr, ConnectionId, usize)> {
        let (peer, id, datagram) = self.non_dtls.pop_front()?;
        let n = datagram.len().min(buf.len());
        buf[..n].copy_from_slice(&datagram[..n]);
        crate::record::give_buffer(datagram);
        Some((peer, id, n))
    }

    /// Takes the next non-DTLS datagram queued for connection `id` ([`recv_non_dtls`]
    /// for one connection): its length in `buf` (truncated to `buf`), or `None` when none waits.
    ///
    /// [`recv_non_dtls`]: Self::recv_non_dtls
    pub fn recv_non_dtls_from(&mut self, id: ConnectionId, buf: &mut [u8]) -> Option<usize> {
        let at = self.non_dtls.iter().position(|(_, of, _)| *of == id)?;
        let (_, _, datagram) = self.non_dtls.remove(at)?;
        let n = datagram.len().min(buf.len());
        buf[..n].copy_from_slice(&datagram[..n]);
        crate::record::give_buffer(datagram);
        Some(n)
    }

    /// Sends `datagram` as it is (an SRTP or SRTCP packet, RFC 7983: its first byte 128–191) to
    /// established connection `id`'s peer, from this endpoint's socket (the 5-tuple DTLS-SRTP
    /// media shares with the DTLS connection). Refused with an [`Error::Io`] of kind
    /// `InvalidInput` if the first byte is outside 128–191 (the peer would take it for DTLS or
    /// STUN) or the datagram is longer than a UDP payload; with [`Error::Closed`] if the
    /// connection is not established. It waits in the stateless-reply queue for
    /// [`poll_transmit`](Self::poll_transmit); a full queue drops it (counted in
    /// `replies_dropped`).
    pub fn send_non_dtls(
        &mut self,
        peer: SocketAddr,
        id: ConnectionId,
        datagram: &[u8],
    ) -> Result<()> {
        let invalid = |what: &str| {
            Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                what.to_owned(),
            )))
        };
        if !matches!(datagram.first(), Some(128..=191)) {
            return invalid(
                "a non-DTLS datagram must start with a byte from 128 to 191 (RTP/RTCP, RFC 7983)",
            );
        }
        if datagram.len() > crate::config::MAX_MTU {
            return invalid("longer than a UDP payload");
        }
        let peer = self.resolve(peer, id);
        if !self
            .live(peer, id)
            .is_some_and(|p| p.session.is_established())
        {
            return Err(Error::Closed);
        }
        if self.replies.len() >= self.config.max_pending_replies {
            self.stats.replies_dropped += 1;
            return Ok(());
        }
        let mut buf = self.spare_replies.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(datagram);
        self.replies.push_back((peer, buf));
        Ok(())
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        if !self.ended.is_empty() {
            self.ended.retain(|(_, _, taken)| !taken);
        }
        let event = self.events.pop_front()?;
        if let Event::Connected { id, .. } = event {
            if let Some(e) = self.ended.iter_mut().find(|(i, _, _)| *i == id) {
                e.2 = true;
            }
        }
        Some(event)
    }

    /// Connection `id`'s entry, found at `peer` (already resolved with
    /// [`resolve`](Self::resolve) by the callers that need the address afterwards).
    fn live(&mut self, peer: SocketAddr, id: ConnectionId) -> Option<&mut Peer> {
        self.peers.get_mut(&peer).filter(|p| p.id == id)
    }

    /// The address connection `id` (made with or accepted from `peer`) has now: different from
    /// `peer` after the connection followed its peer to a new address by its Connection ID
    /// ([`Event::AddressChanged`]). Every call that takes `(peer, id)` accepts the old address.
    pub fn peer_addr(&self, peer: SocketAddr, id: ConnectionId) -> SocketAddr {
        self.resolve(peer, id)
    }

    /// Sends one application datagram on connection `id` with `peer` ([`Session::send`]).
    pub fn send(&mut self, peer: SocketAddr, id: ConnectionId, data: &[u8]) -> Result<()> {
        let peer = self.resolve(peer, id);
        let p = self.live(peer, id).ok_or(Error::Closed)?;
        p.session.send(data)?;
        if !p.in_ready {
            p.in_ready = true;
            self.ready.push_back(peer);
        }
        Ok(())
    }

    /// Sends several application datagrams on connection `id` with `peer`, as many
    /// [`send`](Self::send) calls in order would, stopping at the first error
    /// ([`Session::send_many`]: on the compact record layer, sealed in runs).
    pub fn send_many(
        &mut self,
        peer: SocketAddr,
        id: ConnectionId,
        datagrams: &[&[u8]],
    ) -> Result<()> {
        let peer = self.resolve(peer, id);
        let p = self.live(peer, id).ok_or(Error::Closed)?;
        let r = p.session.send_many(datagrams);
        // Those before an error were queued: the connection has datagrams to send.
        if (r.is_ok() || p.session.has_transmit()) && !p.in_ready {
            p.in_ready = true;
            self.ready.push_back(peer);
        }
        r
    }

    /// Takes the next received datagram of connection `id` ([`Session::recv`]). A connection
    /// that is gone reads as [`Error::Closed`].
    pub fn recv(
        &mut self,
        peer: SocketAddr,
        id: ConnectionId,
        buf: &mut [u8],
    ) -> Result<Option<usize>> {
        let peer = self.resolve(peer, id);
        let p = self.live(peer, id).ok_or(Error::Closed)?;
        let r = p.session.recv(buf);
        if !p.session.has_received() {
            p.readable_signaled = false;
            if p.terminal() {
                self.settle_at_last_input(peer);
            }
        }
        r
    }

    /// Closes connection `id` (`close_notify`); its `Closed` event follows.
    pub fn close(&mut self, peer: SocketAddr, id: ConnectionId) {
        let peer = self.resolve(peer, id);
        if let Some(p) = self.live(peer, id) {
            p.session.close();
            self.settle_at_last_input(peer);
        }
    }

    /// Closes connection `id` and forgets its queued data: the application holds no handle to it
    /// any more. It is removed once its last datagrams are sent.
    pub fn release(&mut self, peer: SocketAddr, id: ConnectionId) {
        let peer = self.resolve(peer, id);
        if let Some(p) = self.live(peer, id) {
            p.released = true;
            p.session.close();
            p.discard_received();
            self.settle_at_last_input(peer);
        }
    }

    /// Closes every connection (`close_notify` to each established peer).
    pub fn close_all(&mut self) {
        self.close_away();
        let addrs: Vec<SocketAddr> = self.peers.keys().copied().collect();
        for addr in addrs {
            if let Some(p) = self.peers.get_mut(&addr) {
                p.session.close();
                if let Some((_, r)) = p.replacement.as_deref_mut() {
                    r.close();
                }
                self.settle_at_last_input(addr);
            }
        }
    }

    /// The session of connection `id`, for its handshake facts.
    pub fn session(&self, peer: SocketAddr, id: ConnectionId) -> Option<&Session> {
        let peer = self.resolve(peer, id);
        self.peers
            .get(&peer)
            .filter(|p| p.id == id)
            .map(|p| &p.session)
            .or_else(|| {
                self.ended
                    .iter()
                    .find(|(i, _, _)| *i == id)
                    .map(|(_, s, _)| s)
            })
    }

    /// Connection `id`'s counters and when it last received authenticated input.
    pub fn connection_stats(&self, peer: SocketAddr, id: ConnectionId) -> Option<ConnectionStats> {
        let peer = self.resolve(peer, id);
        let p = self.peers.get(&peer).filter(|p| p.id == id)?;
        Some(ConnectionStats {
            session: p.session.stats(),
            last_activity: p.last_activity(),
            handshake_duration: p.session.handshake_duration(),
        })
    }

    /// The current connection id with `peer`, if any.
    pub fn connection_id(&self, peer: SocketAddr) -> Option<ConnectionId> {
        self.peers.get(&peer).map(|p| p.id)
    }

    /// Number of peers with a session (any state), handshakes checked out included.
    pub fn len(&self) -> usize {
        self.peers.len() + self.offload.away.len()
    }

    /// Whether no peer has a session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EndpointStats {
        let mut stats = self.stats.clone();
        stats.connections = self.connections.get();
        stats.handshakes = self.handshakes.total();
        stats.handshake_memory_in_use = self.handshakes.total().saturating_mul(self.handshake_cost);
        stats.cid_connections = self.cids.connections;
        stats.recv_queue_dropped += self
            .peers
            .values()
            .map(|p| p.session.stats().recv_dropped)
            .sum::<u64>();
        stats
    }
}

/// Whether `datagram` (a ClientHello) repeats the one `session`'s handshake started from: a
/// server session still handshaking, a cookie (the verified ClientHello always has one), and the
/// same client random.
fn is_retransmitted_hello(session: &Session, classified: Datagram, datagram: &[u8]) -> bool {
    let Datagram::ClientHello(info) = classified else {
        return false;
    };
    if !session.is_handshaking()
        || session.role() != crate::session::Role::Server
        || info.cookie_len == 0
    {
        return false;
    }
    // record header (13) + handshake header (12) + client_version (2), then 32 random bytes
    let Some(random) = datagram.get(27..59) else {
        return false;
    };
    session.client_random().is_some_and(|ours| ours == random)
}
