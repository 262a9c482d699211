//! One UDP socket's worth of DTLS, sans-IO: demultiplexes datagrams by peer address to
//! [`Session`]s, runs the stateless cookie exchange for unknown peers, enforces limits, and
//! emits events.
//!
//! ```text
//! handle_datagram ─> wire::classify ─┬─ garbage ──────────────> stats.dropped[reason]
//!                                    ├─ ClientHello, unknown ─> Listener (DTLSv1_listen) ─┬─ HelloVerifyRequest
//!                                    │                                                   └─ verified ─> new Session
//!                                    └─ known peer ───────────> Session::handle_datagram
//! poll_transmit: round robin over sessions, alternating with stateless replies
//! poll_timeout / handle_timeout: a deadline heap (retransmissions, handshake deadlines, idle)
//! poll_event: Connected, Readable, Closed
//! ```
//!
//! Under load the endpoint ignores new connection attempts (counted) instead of degrading the
//! connections it has: established connections are never evicted to make room.
//!
//! A ClientHello from the address of an established connection (a device that rebooted and kept
//! its port, RFC 6347 §4.2.8) goes through the cookie exchange like any other; the old
//! connection keeps working until the new handshake completes, and only then is replaced.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::context::{DtlsClientContext, DtlsServerContext};
use crate::cookie::COOKIE_LEN;
use crate::error::{ConfigError, Error, Result};
use crate::listener::{ListenOutcome, Listener};
use crate::session::{Session, SessionState};
use crate::wire::{self, Datagram, DropReason};

/// Identifies one connection over its life (addresses are reused; ids are not).
pub type ConnectionId = u64;

/// Limits of an endpoint. Every field has a documented default with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// Sessions (established and handshaking) held at once; new attempts beyond it are ignored.
    /// Default 10,000: ≈ 0.7 GB of OpenSSL state at ≈ 70 KB each, sized for a gateway.
    pub max_connections: usize,
    /// Handshakes in flight at once (after the cookie exchange). Default 256: a handshake costs
    /// ≈ 70 KB and up to 330 µs of CPU (ECDSA), so 256 bound a post-cookie flood to ≈ 18 MB.
    pub max_handshakes: usize,
    /// Handshakes in flight from one IP address. Default 16: a NAT may put many devices behind
    /// one address, but one host cannot take the whole handshake budget.
    pub max_handshakes_per_ip: usize,
    /// An established connection that received nothing for this long is dropped. Default
    /// 5 minutes; `None` keeps idle connections forever (until the peer or the application
    /// closes them).
    pub idle_timeout: Option<Duration>,
    /// Stateless replies (HelloVerifyRequests) queued for sending; more are dropped. Default 256.
    pub max_pending_replies: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            max_connections: 10_000,
            max_handshakes: 256,
            max_handshakes_per_ip: 16,
            idle_timeout: Some(Duration::from_secs(300)),
            max_pending_replies: 256,
        }
    }
}

impl EndpointConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (setting, value) in [
            ("max_connections", self.max_connections),
            ("max_handshakes", self.max_handshakes),
            ("max_handshakes_per_ip", self.max_handshakes_per_ip),
            ("max_pending_replies", self.max_pending_replies),
        ] {
            if value == 0 {
                return Err(ConfigError::OutOfRange {
                    setting,
                    value: 0,
                    allowed: "at least 1",
                });
            }
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::OutOfRange {
                setting: "idle_timeout",
                value: 0,
                allowed: "more than 0, or None",
            });
        }
        Ok(())
    }
}

/// Something that happened on an endpoint, for the driver above it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A handshake completed: a new connection.
    Connected {
        /// The peer.
        peer: SocketAddr,
        /// The connection.
        id: ConnectionId,
    },
    /// Application data is waiting for [`Endpoint::recv`].
    Readable {
        /// The peer.
        peer: SocketAddr,
        /// The connection.
        id: ConnectionId,
    },
    /// A connection or handshake ended: `error` is `None` for an orderly close (either side's
    /// `close_notify`), else why it failed.
    Closed {
        /// The peer.
        peer: SocketAddr,
        /// The connection.
        id: ConnectionId,
        /// Whether the handshake had completed.
        established: bool,
        /// Why, if not orderly.
        error: Option<Error>,
    },
}

/// A snapshot of an endpoint's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Established connections now.
    pub connections: usize,
    /// Handshakes in flight now (after the cookie exchange).
    pub handshakes: usize,
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Datagrams dropped by the pre-parser, by [`DropReason::index`].
    pub dropped: [u64; DropReason::ALL.len()],
    /// Datagrams from unknown peers on an endpoint that does not accept connections.
    pub dropped_unknown_peer: u64,
    /// ClientHellos too short to answer without amplification.
    pub dropped_short_client_hello: u64,
    /// Fragmented ClientHellos from unknown peers (`DTLSv1_listen` cannot reassemble them).
    pub dropped_fragmented_client_hello: u64,
    /// Attempts ignored because `max_connections` was reached.
    pub refused_connection_limit: u64,
    /// Attempts ignored because `max_handshakes` was reached.
    pub refused_handshake_limit: u64,
    /// Attempts ignored because `max_handshakes_per_ip` was reached.
    pub refused_per_ip_limit: u64,
    /// Verified ClientHellos refused by the admission hook.
    pub refused_by_admission: u64,
    /// HelloVerifyRequests sent.
    pub hello_verify_requests: u64,
    /// HelloVerifyRequests not sent because they would have been larger than the ClientHello.
    pub hello_verify_requests_too_large: u64,
    /// Stateless replies dropped because the reply queue was full.
    pub replies_dropped: u64,
    /// ClientHellos that carried a cookie that did not verify.
    pub cookies_rejected: u64,
    /// ClientHellos the listener ignored (not usable by `DTLSv1_listen`).
    pub listener_ignored: u64,
    /// Handshakes completed.
    pub handshakes_completed: u64,
    /// Handshakes that failed by timeout.
    pub handshakes_timed_out: u64,
    /// Handshakes the peer aborted with a fatal alert.
    pub handshakes_failed_peer_alert: u64,
    /// Handshakes this side aborted (with an alert: bad certificate, unknown PSK, ...).
    pub handshakes_failed_local: u64,
    /// Connections closed in an orderly way.
    pub connections_closed: u64,
    /// Connections that failed after their handshake (alerts, errors).
    pub connections_failed: u64,
    /// Connections dropped at the idle timeout.
    pub idle_timeouts: u64,
    /// Connections replaced by a new handshake from the same address (a rebooted peer).
    pub connections_replaced: u64,
    /// Received application datagrams dropped because a connection's receive queue was full.
    pub recv_queue_dropped: u64,
    /// Connections handed off to the compact record layer, their `SSL` freed
    /// ([`SessionConfig::compact`](crate::SessionConfig::compact)).
    pub compact_handoffs: u64,
}

impl EndpointStats {
    /// Datagrams dropped by the pre-parser for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    /// All datagrams dropped before reaching OpenSSL, for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum::<u64>()
            + self.dropped_unknown_peer
            + self.dropped_short_client_hello
            + self.dropped_fragmented_client_hello
            + self.refused_connection_limit
            + self.refused_handshake_limit
            + self.refused_per_ip_limit
    }
}

struct Peer {
    id: ConnectionId,
    session: Session,
    /// A new handshake from the same address, replacing `session` once established.
    replacement: Option<(ConnectionId, Box<Session>)>,
    connected_emitted: bool,
    /// Counted in `compact_handoffs`.
    compact_counted: bool,
    closed_emitted: bool,
    readable_signaled: bool,
    in_ready: bool,
    /// Counted in the handshake totals (until established or gone).
    counted_handshake: bool,
    last_activity: Instant,
    /// The deadline of this peer's live entry in the timer heap.
    scheduled: Option<Instant>,
    /// The application no longer holds a handle: drop queued data, remove when done.
    released: bool,
}

impl Peer {
    fn terminal(&self) -> bool {
        matches!(
            self.session.state(),
            SessionState::Closed | SessionState::Failed
        )
    }
}

/// A DTLS endpoint over one socket: see the [module documentation](self).
pub struct Endpoint {
    server: Option<(DtlsServerContext, Listener)>,
    config: EndpointConfig,
    peers: HashMap<SocketAddr, Peer>,
    per_ip: HashMap<IpAddr, usize>,
    handshakes: usize,
    connections: usize,
    next_id: ConnectionId,
    timers: BinaryHeap<Reverse<(Instant, ConnectionId, SocketAddr)>>,
    ready: VecDeque<SocketAddr>,
    replies: VecDeque<(SocketAddr, Vec<u8>)>,
    spare_replies: Vec<Vec<u8>>,
    reply_turn: bool,
    events: VecDeque<Event>,
    stats: EndpointStats,
    scratch: Vec<u8>,
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
            peers: HashMap::new(),
            per_ip: HashMap::new(),
            handshakes: 0,
            connections: 0,
            next_id: 1,
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            replies: VecDeque::new(),
            spare_replies: Vec::new(),
            reply_turn: false,
            events: VecDeque::new(),
            stats: EndpointStats::default(),
            scratch: vec![0; 2048],
        }
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

    fn insert(&mut self, now: Instant, peer: SocketAddr, session: Session) -> ConnectionId {
        let id = self.next_id;
        self.next_id += 1;
        self.handshakes += 1;
        *self.per_ip.entry(peer.ip()).or_insert(0) += 1;
        self.peers.insert(
            peer,
            Peer {
                id,
                session,
                replacement: None,
                connected_emitted: false,
                compact_counted: false,
                closed_emitted: false,
                readable_signaled: false,
                in_ready: false,
                counted_handshake: true,
                last_activity: now,
                scheduled: None,
                released: false,
            },
        );
        self.settle(peer, now);
        id
    }

    /// Handles one datagram received from `peer`.
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8]) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        let classified = match wire::classify(datagram) {
            Ok(c) => c,
            Err(reason) => {
                log::trace!("dropping datagram from {peer}: {reason}");
                self.stats.dropped[reason.index()] += 1;
                return;
            }
        };
        if let Some(p) = self.peers.get_mut(&peer) {
            let hello = matches!(classified, Datagram::ClientHello(_));
            // A new ClientHello from the address of a live connection or pending handshake: a
            // rebooted peer, a client that gave up and started over, or a spoofer. Either way it
            // must prove the address first (RFC 6347 §4.2.8). Only a retransmission of the
            // ClientHello the pending handshake started from goes to that handshake.
            if hello && !is_retransmitted_hello(&p.session, classified, datagram) {
                self.listen(now, peer, datagram, classified);
                return;
            }
            p.last_activity = now;
            if let Some((_, replacement)) = p.replacement.as_mut() {
                replacement.handle_datagram(now, datagram);
                if hello {
                    self.settle(peer, now);
                    return;
                }
            }
            p.session.handle_datagram(now, datagram);
            self.settle(peer, now);
            return;
        }
        if self.server.is_none() {
            self.stats.dropped_unknown_peer += 1;
            return;
        }
        if !matches!(classified, Datagram::ClientHello(_)) {
            self.stats.dropped[DropReason::NotClientHello.index()] += 1;
            return;
        }
        self.listen(now, peer, datagram, classified);
    }

    /// The cookie path for a ClientHello.
    fn listen(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8], classified: Datagram) {
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
        if has_cookie && !self.admissible(peer) {
            return;
        }
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
            ListenOutcome::Accepted(session) => self.accepted(now, peer, session),
        }
    }

    /// Whether a verified ClientHello from `peer` may start a handshake now; counts refusals.
    fn admissible(&mut self, peer: SocketAddr) -> bool {
        if self.handshakes + self.connections >= self.config.max_connections {
            self.stats.refused_connection_limit += 1;
            return false;
        }
        if self.handshakes >= self.config.max_handshakes {
            self.stats.refused_handshake_limit += 1;
            return false;
        }
        if self.per_ip.get(&peer.ip()).copied().unwrap_or(0) >= self.config.max_handshakes_per_ip {
            self.stats.refused_per_ip_limit += 1;
            return false;
        }
        true
    }

    fn accepted(&mut self, now: Instant, peer: SocketAddr, session: Box<Session>) {
        let admitted = self.server.as_ref().is_some_and(|(ctx, _)| ctx.admit(peer));
        if !admitted {
            self.stats.refused_by_admission += 1;
            return;
        }
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
                self.handshakes += 1;
                *self.per_ip.entry(peer.ip()).or_insert(0) += 1;
            }
            p.replacement = Some((id, session));
            self.settle(peer, now);
        } else {
            self.insert(now, peer, *session);
        }
    }

    /// Brings a peer's bookkeeping up to date after anything touched its session(s): events,
    /// counters, transmit readiness, timers, removal.
    fn settle(&mut self, addr: SocketAddr, now: Instant) {
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        // A replacement handshake that completed takes over the address.
        if let Some((new_id, replacement)) = p.replacement.take() {
            match replacement.state() {
                SessionState::Established => {
                    let old = std::mem::replace(&mut p.session, *replacement);
                    let old_id = std::mem::replace(&mut p.id, new_id);
                    self.stats.connections_replaced += 1;
                    if p.connected_emitted && !p.closed_emitted {
                        self.connections -= 1;
                        self.events.push_back(Event::Closed {
                            peer: addr,
                            id: old_id,
                            established: true,
                            error: None,
                        });
                    }
                    drop(old);
                    p.connected_emitted = false;
                    p.compact_counted = false;
                    p.closed_emitted = false;
                    p.readable_signaled = false;
                    p.released = false;
                    p.last_activity = now;
                    // The replacement's handshake count becomes the peer's (uncounted below at
                    // establishment); an old session still handshaking gives its count up.
                    if p.counted_handshake {
                        decrement_handshakes(&mut self.handshakes, &mut self.per_ip, addr);
                    }
                    p.counted_handshake = true;
                }
                SessionState::Handshaking => p.replacement = Some((new_id, replacement)),
                SessionState::Closed | SessionState::Failed => {
                    // Dropped at once (its final alert, if any, with it): the old connection
                    // stays as it was.
                    count_failure(&mut self.stats, &replacement, false);
                    decrement_handshakes(&mut self.handshakes, &mut self.per_ip, addr);
                }
            }
        }
        let established = p.session.is_established();
        if established && !p.connected_emitted {
            p.connected_emitted = true;
            self.connections += 1;
            self.stats.handshakes_completed += 1;
            uncount_handshake(p, &mut self.handshakes, &mut self.per_ip, addr);
            self.events.push_back(Event::Connected {
                peer: addr,
                id: p.id,
            });
        }
        if !p.compact_counted && p.session.is_compact() {
            p.compact_counted = true;
            self.stats.compact_handoffs += 1;
        }
        if p.session.has_received() && !p.readable_signaled {
            if p.released {
                let mut sink = [0u8; 0];
                while let Ok(Some(_)) = p.session.recv(&mut sink) {}
            } else {
                p.readable_signaled = true;
                self.events.push_back(Event::Readable {
                    peer: addr,
                    id: p.id,
                });
            }
        }
        if p.terminal() && !p.closed_emitted {
            p.closed_emitted = true;
            let was_connected = p.connected_emitted;
            if was_connected {
                self.connections -= 1;
            }
            uncount_handshake(p, &mut self.handshakes, &mut self.per_ip, addr);
            count_failure(&mut self.stats, &p.session, was_connected);
            let error = p.session.error().map(Error::duplicate);
            self.events.push_back(Event::Closed {
                peer: addr,
                id: p.id,
                established: was_connected,
                error,
            });
        }
        let transmit = p.session.has_transmit()
            || p.replacement
                .as_ref()
                .is_some_and(|(_, r)| r.has_transmit());
        if transmit && !p.in_ready {
            p.in_ready = true;
            self.ready.push_back(addr);
        }
        // Timers: the earliest of the sessions' deadlines and the idle deadline. The heap entry
        // is replaced only when the deadline moves earlier; a later one is picked up lazily when
        // the earlier entry fires, so steady traffic pushes nothing.
        let mut next = p.session.poll_timeout();
        if let Some((_, r)) = &p.replacement {
            next = earliest(next, r.poll_timeout());
        }
        if established {
            if let Some(idle) = self.config.idle_timeout {
                next = earliest(next, Some(p.last_activity + idle));
            }
        }
        if let Some(at) = next {
            // A deadline at or before `now` that survived the handling above is retried no
            // sooner than a millisecond later, so a timer that does not advance cannot spin.
            let at = at.max(now + Duration::from_millis(1));
            if p.scheduled.is_none_or(|s| at < s) {
                p.scheduled = Some(at);
                self.timers.push(Reverse((at, p.id, addr)));
            }
        }
        let removable = p.terminal()
            && p.closed_emitted
            && !transmit
            && (p.released || !p.session.has_received());
        if removable {
            self.remove(addr);
        }
    }

    fn remove(&mut self, addr: SocketAddr) {
        if let Some(mut p) = self.peers.remove(&addr) {
            if !p.closed_emitted && p.connected_emitted {
                self.connections -= 1;
            }
            uncount_handshake(&mut p, &mut self.handshakes, &mut self.per_ip, addr);
            if p.replacement.is_some() {
                decrement_handshakes(&mut self.handshakes, &mut self.per_ip, addr);
            }
        }
    }

    /// The next datagram to send: its destination and length in `buf` (which should hold the
    /// largest MTU in use). Sessions take turns one datagram at a time, alternating with stateless
    /// replies, so no peer can starve another.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        for _ in 0..2 {
            self.reply_turn = !self.reply_turn;
            let out = if self.reply_turn {
                self.poll_reply(buf)
            } else {
                self.poll_session_transmit(buf)
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
            let mut n = p.session.poll_transmit(buf);
            if n.is_none() {
                if let Some((_, r)) = p.replacement.as_mut() {
                    n = r.poll_transmit(buf);
                }
            }
            let more = p.session.has_transmit()
                || p.replacement
                    .as_ref()
                    .is_some_and(|(_, r)| r.has_transmit());
            if more {
                self.ready.push_back(addr);
            } else {
                p.in_ready = false;
                if p.terminal()
                    || p.replacement
                        .as_ref()
                        .is_some_and(|(_, r)| !r.is_handshaking())
                {
                    self.settle(addr, Instant::now());
                }
            }
            if let Some(n) = n {
                return Some((addr, n));
            }
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next. May be early (a
    /// deadline that moved later); never late.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Handles every deadline up to `now`: retransmissions, handshake deadlines (reaped),
    /// idle timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, id, addr))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(p) = self.peers.get_mut(&addr) else {
                continue;
            };
            if p.id != id || p.scheduled != Some(at) {
                continue;
            }
            p.scheduled = None;
            if p.session.is_established() {
                if let Some(idle) = self.config.idle_timeout {
                    if now.saturating_duration_since(p.last_activity) >= idle {
                        log::debug!("{addr} idle for {idle:?}: dropping the connection");
                        self.stats.idle_timeouts += 1;
                        p.session.expire_idle(idle);
                    }
                }
            }
            p.session.handle_timeout(now);
            if let Some((_, r)) = p.replacement.as_mut() {
                r.handle_timeout(now);
            }
            self.settle(addr, now);
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn live(&mut self, peer: SocketAddr, id: ConnectionId) -> Option<&mut Peer> {
        self.peers.get_mut(&peer).filter(|p| p.id == id)
    }

    /// Sends one application datagram on connection `id` with `peer` ([`Session::send`]).
    pub fn send(&mut self, peer: SocketAddr, id: ConnectionId, data: &[u8]) -> Result<()> {
        let p = self.live(peer, id).ok_or(Error::Closed)?;
        p.session.send(data)?;
        if !p.in_ready {
            p.in_ready = true;
            self.ready.push_back(peer);
        }
        Ok(())
    }

    /// Takes the next received datagram of connection `id` ([`Session::recv`]). A connection
    /// that is gone reads as [`Error::Closed`].
    pub fn recv(
        &mut self,
        peer: SocketAddr,
        id: ConnectionId,
        buf: &mut [u8],
    ) -> Result<Option<usize>> {
        let p = self.live(peer, id).ok_or(Error::Closed)?;
        let r = p.session.recv(buf);
        if !p.session.has_received() {
            p.readable_signaled = false;
            if p.terminal() {
                self.settle(peer, Instant::now());
            }
        }
        r
    }

    /// Closes connection `id` (`close_notify`); its `Closed` event follows.
    pub fn close(&mut self, peer: SocketAddr, id: ConnectionId) {
        if let Some(p) = self.live(peer, id) {
            p.session.close();
            self.settle(peer, Instant::now());
        }
    }

    /// Closes connection `id` and forgets its queued data: the application holds no handle to it
    /// any more. It is removed once its last datagrams are sent.
    pub fn release(&mut self, peer: SocketAddr, id: ConnectionId) {
        if let Some(p) = self.live(peer, id) {
            p.released = true;
            p.session.close();
            let mut sink = [0u8; 0];
            while let Ok(Some(_)) = p.session.recv(&mut sink) {}
            self.settle(peer, Instant::now());
        }
    }

    /// Closes every connection (`close_notify` to each established peer).
    pub fn close_all(&mut self) {
        let addrs: Vec<SocketAddr> = self.peers.keys().copied().collect();
        let now = Instant::now();
        for addr in addrs {
            if let Some(p) = self.peers.get_mut(&addr) {
                p.session.close();
                if let Some((_, r)) = p.replacement.as_mut() {
                    r.close();
                }
                self.settle(addr, now);
            }
        }
    }

    /// The session of connection `id`, for its handshake facts.
    pub fn session(&self, peer: SocketAddr, id: ConnectionId) -> Option<&Session> {
        self.peers
            .get(&peer)
            .filter(|p| p.id == id)
            .map(|p| &p.session)
    }

    /// The current connection id with `peer`, if any.
    pub fn connection_id(&self, peer: SocketAddr) -> Option<ConnectionId> {
        self.peers.get(&peer).map(|p| p.id)
    }

    /// Number of peers with a session (any state).
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer has a session.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EndpointStats {
        let mut stats = self.stats.clone();
        stats.connections = self.connections;
        stats.handshakes = self.handshakes;
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

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn decrement_handshakes(
    handshakes: &mut usize,
    per_ip: &mut HashMap<IpAddr, usize>,
    addr: SocketAddr,
) {
    *handshakes -= 1;
    if let Some(n) = per_ip.get_mut(&addr.ip()) {
        *n -= 1;
        if *n == 0 {
            per_ip.remove(&addr.ip());
        }
    }
}

fn uncount_handshake(
    p: &mut Peer,
    handshakes: &mut usize,
    per_ip: &mut HashMap<IpAddr, usize>,
    addr: SocketAddr,
) {
    if !p.counted_handshake {
        return;
    }
    p.counted_handshake = false;
    *handshakes -= 1;
    if let Some(n) = per_ip.get_mut(&addr.ip()) {
        *n -= 1;
        if *n == 0 {
            per_ip.remove(&addr.ip());
        }
    }
}

fn count_failure(stats: &mut EndpointStats, session: &Session, was_connected: bool) {
    let error = session.error();
    if was_connected {
        match error {
            None => stats.connections_closed += 1,
            Some(Error::IdleTimeout { .. }) => {} // counted as idle timeout where it happened
            Some(_) => stats.connections_failed += 1,
        }
        return;
    }
    match error {
        Some(Error::Timeout { .. }) => stats.handshakes_timed_out += 1,
        Some(Error::PeerAlert(_)) => stats.handshakes_failed_peer_alert += 1,
        Some(_) => stats.handshakes_failed_local += 1,
        None => {}
    }
}
