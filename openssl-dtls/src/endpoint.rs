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
///
/// # Sizing for devices that sleep
///
/// By default an established association is kept until the peer or the application closes it,
/// however long it is silent: an LwM2M device registers for a day and sleeps for hours, and if
/// the server forgot it, the device's next record would vanish (its `send` succeeds, no reply
/// ever comes) until its own timers make it handshake again. Memory is bounded instead by
/// [`max_connections`](Self::max_connections): when it is reached, a new handshake takes the
/// place of the least recently active connection that has been silent for at least
/// [`evict_idle_after`](Self::evict_idle_after) (as Californium does), and that peer is sent a
/// `close_notify`. If none has been silent that long, the new peer is refused with a fatal
/// `internal_error` alert. Size `max_connections` for the devices you serve (a connection costs
/// ≈ 36–70 KB with OpenSSL's record layer, ≈ 1.5 KB with
/// [compact connections](crate::SessionConfig::compact)); set
/// [`idle_timeout`](Self::idle_timeout) only if silent peers must be dropped regardless of room.
///
/// A device whose association is gone (evicted, timed out, or the server restarted) sees its
/// next records dropped by the server (they match no association) and, if it was awake for the
/// `close_notify`, an orderly close. It recovers by a new handshake; CoAP/LwM2M clients do this
/// when a request times out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// Sessions (established and handshaking) held at once. Default 10,000: ≈ 0.7 GB of OpenSSL
    /// state at ≈ 70 KB each, sized for a gateway. At the limit, a new handshake evicts the least
    /// recently active connection idle for [`evict_idle_after`](Self::evict_idle_after), or is
    /// refused with a fatal `internal_error` alert.
    pub max_connections: usize,
    /// Handshakes in flight at once (after the cookie exchange). Default 256: a handshake costs
    /// up to 330 µs of CPU (ECDSA); memory is bounded separately by
    /// [`handshake_memory`](Self::handshake_memory). Beyond it a verified ClientHello is
    /// ignored (the client's retransmission retries) and, once the client has retransmitted it
    /// three times, answered with a fatal `internal_error` alert.
    pub max_handshakes: usize,
    /// Handshakes in flight from one IP address. Default 128, half of
    /// [`max_handshakes`](Self::max_handshakes): it keeps one host (or one NAT) from taking the
    /// whole handshake budget, so other addresses can still connect during a flood from one.
    /// Refused beyond it as at [`max_handshakes`](Self::max_handshakes).
    /// It is not a defence on its own (the cookie exchange proves addresses, and the global
    /// limits bound the cost); behind a carrier-grade NAT thousands of devices share one
    /// address and may all reconnect at once after an outage, which is why it is not small.
    pub max_handshakes_per_ip: usize,
    /// Bytes that all handshakes in flight may hold together, counted at each handshake's worst
    /// case ([`Endpoint::handshake_worst_case`]). Default 64 MiB, sized for a gateway: with the
    /// default MTU and queues this admits ≈ 150 hostile handshakes at once (each as large as a
    /// hostile peer can make it), or [`max_handshakes`](Self::max_handshakes) when they are
    /// cheaper. Beyond it, refused as at [`max_handshakes`](Self::max_handshakes).
    pub handshake_memory: usize,
    /// An established connection that received nothing authenticated for this long is dropped
    /// (with a `close_notify`, in case the peer is awake). Default `None`: associations are kept
    /// until memory needs the room (see [`evict_idle_after`](Self::evict_idle_after)). Only
    /// authenticated input counts as activity: a record that decrypts or handshake progress,
    /// never a forged or replayed record sent with the peer's address.
    pub idle_timeout: Option<Duration>,
    /// At [`max_connections`](Self::max_connections), a connection silent for at least this long
    /// may be dropped (least recently active first, with a `close_notify`) to make room for a new
    /// handshake. Default 30 minutes: a device that spoke within that time is never pushed out
    /// by newcomers, so a flood of new peers cannot churn the active ones. `None` never evicts:
    /// new peers are refused at the limit.
    pub evict_idle_after: Option<Duration>,
    /// Stateless replies (HelloVerifyRequests, refusal alerts) queued for sending; more are
    /// dropped. Default 256.
    pub max_pending_replies: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            max_connections: 10_000,
            max_handshakes: 256,
            max_handshakes_per_ip: 128,
            handshake_memory: 64 << 20,
            idle_timeout: None,
            evict_idle_after: Some(Duration::from_secs(30 * 60)),
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
            ("handshake_memory", self.handshake_memory),
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
        for (setting, value) in [
            ("idle_timeout", self.idle_timeout),
            ("evict_idle_after", self.evict_idle_after),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(ConfigError::OutOfRange {
                    setting,
                    value: 0,
                    allowed: "more than 0, or None",
                });
            }
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
    /// A handshake that a peer started with this server failed (timed out, an alert either way,
    /// a verification failure). Emitted just before its [`Event::Closed`]; client handshakes
    /// report their failure to the caller of `connect` instead.
    HandshakeFailed(HandshakeFailure),
}

/// Who the peer of a failed handshake said it was, as far as the handshake got.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerIdentity {
    /// The PSK identity it sent (`SSL_get_psk_identity`).
    Psk(Vec<u8>),
    /// The subject of the certificate it sent, in OpenSSL's one-line form.
    Certificate(String),
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerIdentity::Psk(id) => write!(f, "PSK identity {:?}", String::from_utf8_lossy(id)),
            PeerIdentity::Certificate(subject) => write!(f, "certificate {subject}"),
        }
    }
}

/// A server-side handshake that failed: who, and why. Its `Display` reads `ADDR: REASON`
/// (with the identity when known), one line for a log.
#[derive(Debug)]
#[non_exhaustive]
pub struct HandshakeFailure {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The PSK identity or certificate subject the peer presented, if the handshake got that far.
    pub identity: Option<PeerIdentity>,
    /// Why it failed.
    pub reason: Error,
}

impl HandshakeFailure {
    fn of(peer: SocketAddr, session: &Session) -> Option<HandshakeFailure> {
        let reason = session.error()?.duplicate();
        let identity = if let Some(id) = session.psk_identity() {
            Some(PeerIdentity::Psk(id.to_vec()))
        } else {
            session.peer_certificate().map(|c| {
                let subject = c
                    .subject_name()
                    .entries()
                    .map(|e| {
                        let key = e.object().nid().short_name().unwrap_or("?");
                        let value = e.data().to_string().unwrap_or_else(|_| "?".to_owned());
                        format!("{key}={value}")
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                PeerIdentity::Certificate(subject)
            })
        };
        Some(HandshakeFailure {
            peer,
            identity,
            reason,
        })
    }
}

/// A callback the drivers call for every [`HandshakeFailure`] (set with
/// `DtlsServer::on_handshake_failure`). Runs on the driver's thread or task, outside its lock,
/// inside `catch_unwind`: keep it short.
#[derive(Clone)]
pub(crate) struct FailureHook(pub std::sync::Arc<dyn Fn(&HandshakeFailure) + Send + Sync>);

impl std::fmt::Debug for FailureHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailureHook(..)")
    }
}

/// Failures waiting for the driver to report them, at most this many (more are only logged).
pub(crate) const MAX_PENDING_FAILURES: usize = 1024;

/// Reports `failures` to `hook` (outside any lock), or logs each at `info` without one.
pub(crate) fn report_failures(hook: Option<&FailureHook>, failures: &mut Vec<HandshakeFailure>) {
    for failure in failures.drain(..) {
        match hook {
            Some(hook) => crate::context::guard("handshake failure", (), || (hook.0)(&failure)),
            None => log::info!("handshake failed: {failure}"),
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.peer)?;
        if let Some(identity) = &self.identity {
            write!(f, "({identity}) ")?;
        }
        write!(f, "{}", self.reason)
    }
}

/// A connection's counters and activity ([`Endpoint::connection_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// The session's counters: datagrams and bytes each way, application records, drops by
    /// cause.
    pub session: crate::session::SessionStats,
    /// When the connection last received authenticated input (a record that decrypted, or
    /// handshake progress); its idle time is measured from here.
    pub last_activity: Instant,
}

/// A snapshot of an endpoint's counters.
#[derive(Clone, Default, PartialEq, Eq)]
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
    /// Verified ClientHellos refused because `max_connections` was reached and no connection
    /// could be evicted (answered with a fatal `internal_error` alert).
    pub refused_connection_limit: u64,
    /// Verified ClientHellos refused because `max_handshakes` was reached (the client's
    /// retransmission retries; after three, a fatal `internal_error` alert answers).
    pub refused_handshake_limit: u64,
    /// Verified ClientHellos refused because `max_handshakes_per_ip` was reached (as at
    /// `max_handshakes`).
    pub refused_per_ip_limit: u64,
    /// Verified ClientHellos refused because `handshake_memory` was reached (as at
    /// `max_handshakes`).
    pub refused_handshake_memory: u64,
    /// Established connections dropped at `max_connections` to make room for a new handshake
    /// (least recently active first; each sent a `close_notify`).
    pub evicted: u64,
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
    /// Bytes charged now against `handshake_memory` (each handshake in flight at its worst case).
    pub handshake_memory_in_use: usize,
    /// Fatal `internal_error` alerts sent to refuse verified ClientHellos at a limit.
    pub refusal_alerts_sent: u64,
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
            + self.refused_handshake_memory
    }

    /// Every counter with its name, in declaration order (the pre-parser's drops as
    /// `dropped_<reason>`): for logs, metrics exporters and [`Display`](std::fmt::Display).
    pub fn fields(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = vec![
            ("connections".into(), self.connections as u64),
            ("handshakes".into(), self.handshakes as u64),
            ("datagrams_in".into(), self.datagrams_in),
            ("datagrams_out".into(), self.datagrams_out),
            ("bytes_in".into(), self.bytes_in),
            ("bytes_out".into(), self.bytes_out),
        ];
        out.extend(
            DropReason::ALL
                .iter()
                .map(|r| (format!("dropped_{}", r.as_str()), self.dropped(*r))),
        );
        let named: [(&str, u64); 27] = [
            ("dropped_unknown_peer", self.dropped_unknown_peer),
            (
                "dropped_short_client_hello",
                self.dropped_short_client_hello,
            ),
            (
                "dropped_fragmented_client_hello",
                self.dropped_fragmented_client_hello,
            ),
            ("refused_connection_limit", self.refused_connection_limit),
            ("refused_handshake_limit", self.refused_handshake_limit),
            ("refused_per_ip_limit", self.refused_per_ip_limit),
            ("refused_handshake_memory", self.refused_handshake_memory),
            ("evicted", self.evicted),
            ("refused_by_admission", self.refused_by_admission),
            ("hello_verify_requests", self.hello_verify_requests),
            (
                "hello_verify_requests_too_large",
                self.hello_verify_requests_too_large,
            ),
            ("replies_dropped", self.replies_dropped),
            ("cookies_rejected", self.cookies_rejected),
            ("listener_ignored", self.listener_ignored),
            ("handshakes_completed", self.handshakes_completed),
            ("handshakes_timed_out", self.handshakes_timed_out),
            (
                "handshakes_failed_peer_alert",
                self.handshakes_failed_peer_alert,
            ),
            ("handshakes_failed_local", self.handshakes_failed_local),
            ("connections_closed", self.connections_closed),
            ("connections_failed", self.connections_failed),
            ("idle_timeouts", self.idle_timeouts),
            ("connections_replaced", self.connections_replaced),
            ("recv_queue_dropped", self.recv_queue_dropped),
            ("compact_handoffs", self.compact_handoffs),
            (
                "handshake_memory_in_use",
                self.handshake_memory_in_use as u64,
            ),
            ("refusal_alerts_sent", self.refusal_alerts_sent),
            ("dropped_total", self.dropped_total()),
        ];
        out.extend(named.iter().map(|(k, v)| ((*k).to_owned(), *v)));
        out
    }
}

/// `name=value` pairs separated by spaces, zero counters left out (`connections` and
/// `handshakes` always shown): one log line.
impl std::fmt::Display for EndpointStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (name, value) in self.fields() {
            if value == 0 && name != "connections" && name != "handshakes" {
                continue;
            }
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for EndpointStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in self.fields() {
            map.entry(&name, &value);
        }
        map.finish()
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
    /// Bytes one handshake is charged against `handshake_memory` ([`Self::handshake_worst_case`]).
    handshake_cost: usize,
    /// Eviction candidates found by the last scan, oldest last: (last activity, id, address).
    evictable: Vec<(Instant, ConnectionId, SocketAddr)>,
    /// No connection can be evicted before this instant (the last scan found none old enough).
    no_evictable_before: Option<Instant>,
    /// Per limit (connections, handshakes, per IP, memory): when a refusal was last logged, and
    /// refusals since.
    refusal_log: [(Option<Instant>, u64); 4],
    /// The latest `now` an entry point was given: the calls that take no `now` (output, the
    /// application's reads and closes) act at the time of the last input, so the endpoint never
    /// reads the clock.
    now: Option<Instant>,
}

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
    Connections,
    Handshakes,
    PerIp,
    Memory,
}

impl Limit {
    fn name(self) -> &'static str {
        match self {
            Limit::Connections => "max_connections",
            Limit::Handshakes => "max_handshakes",
            Limit::PerIp => "max_handshakes_per_ip",
            Limit::Memory => "handshake_memory",
        }
    }
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
            handshake_cost: handshake_worst_case(
                &crate::config::SessionConfig::default(),
                crate::context::MAX_CERT_LIST,
            ),
            evictable: Vec::new(),
            no_evictable_before: None,
            refusal_log: [(None, 0); 4],
            now: None,
        }
    }

    /// Records `now` as the endpoint's time (it never goes back).
    fn tick(&mut self, now: Instant) -> Instant {
        let now = self.now.map_or(now, |t| t.max(now));
        self.now = Some(now);
        now
    }

    /// The time of the latest input, for the calls that take no `now`. Before any input,
    /// `fallback` (a deadline already reached, so never early).
    fn last_now(&self, fallback: Instant) -> Instant {
        self.now.unwrap_or(fallback)
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
        let now = self.tick(now);
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
            if let Some((_, replacement)) = p.replacement.as_mut() {
                replacement.handle_datagram(now, datagram);
                if hello {
                    self.settle(peer, now);
                    return;
                }
            }
            // Only authenticated input is activity: a forged record sent with the peer's
            // address (off-path, every idle period) must not keep a dead association alive.
            let before = p.session.authenticated_count();
            p.session.handle_datagram(now, datagram);
            if p.session.authenticated_count() != before {
                p.last_activity = now;
            }
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
                // The cookie proved the address: the peer may be told when it is refused.
                if let Err(limit) = self.admissible(now, peer) {
                    self.refuse(now, peer, datagram, limit);
                    if let Some((_, listener)) = self.server.as_mut() {
                        listener.reset();
                    }
                    return;
                }
                let admitted = self.server.as_ref().is_some_and(|(ctx, _)| ctx.admit(peer));
                let Some((_, listener)) = self.server.as_mut() else {
                    return;
                };
                if !admitted {
                    self.stats.refused_by_admission += 1;
                    listener.reset();
                    return;
                }
                match listener.accept(peer, now) {
                    ListenOutcome::Accepted(session) => self.accepted(now, peer, session),
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
        if self.handshakes >= self.config.max_handshakes {
            return Err(Limit::Handshakes);
        }
        if self.per_ip.get(&peer.ip()).copied().unwrap_or(0) >= self.config.max_handshakes_per_ip {
            return Err(Limit::PerIp);
        }
        if (self.handshakes + 1).saturating_mul(self.handshake_cost) > self.config.handshake_memory
        {
            return Err(Limit::Memory);
        }
        if !replacing
            && self.handshakes + self.connections >= self.config.max_connections
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
        let Some(header) = hello.get(..wire::RECORD_HEADER_LEN) else {
            return;
        };
        let mut buf = self.spare_replies.pop().unwrap_or_default();
        buf.clear();
        buf.push(21); // alert
        buf.extend_from_slice(&header[1..3]); // version
        buf.extend_from_slice(&[0, 0]); // epoch 0
        buf.extend_from_slice(&header[5..11]); // sequence number
        buf.extend_from_slice(&2u16.to_be_bytes());
        buf.extend_from_slice(&[2, INTERNAL_ERROR]);
        self.stats.refusal_alerts_sent += 1;
        self.replies.push_back((peer, buf));
    }

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
                    report_handshake_failure(&mut self.events, addr, &replacement);
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
            if !was_connected {
                report_handshake_failure(&mut self.events, addr, &p.session);
            }
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
                    let now = p.last_activity;
                    let now = self.last_now(now);
                    self.settle(addr, now);
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
        let now = self.tick(now);
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
                        p.session.end_with_close_notify(Error::IdleTimeout {
                            peer: Some(addr),
                            idle,
                        });
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
                let now = p.last_activity;
                let now = self.last_now(now);
                self.settle(peer, now);
            }
        }
        r
    }

    /// Closes connection `id` (`close_notify`); its `Closed` event follows.
    pub fn close(&mut self, peer: SocketAddr, id: ConnectionId) {
        if let Some(p) = self.live(peer, id) {
            p.session.close();
            let now = p.last_activity;
            let now = self.last_now(now);
            self.settle(peer, now);
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
            let now = p.last_activity;
            let now = self.last_now(now);
            self.settle(peer, now);
        }
    }

    /// Closes every connection (`close_notify` to each established peer).
    pub fn close_all(&mut self) {
        let addrs: Vec<SocketAddr> = self.peers.keys().copied().collect();
        for addr in addrs {
            let own_now = self.now;
            if let Some(p) = self.peers.get_mut(&addr) {
                p.session.close();
                if let Some((_, r)) = p.replacement.as_mut() {
                    r.close();
                }
                let now = own_now.unwrap_or(p.last_activity);
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

    /// Connection `id`'s counters and when it last received authenticated input.
    pub fn connection_stats(&self, peer: SocketAddr, id: ConnectionId) -> Option<ConnectionStats> {
        let p = self.peers.get(&peer).filter(|p| p.id == id)?;
        Some(ConnectionStats {
            session: p.session.stats(),
            last_activity: p.last_activity,
        })
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
        stats.handshake_memory_in_use = self.handshakes.saturating_mul(self.handshake_cost);
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

/// `internal_error` (80): the alert that refuses a handshake at a limit.
const INTERNAL_ERROR: u8 = 80;

/// Queues [`Event::HandshakeFailed`] for a server session's failed handshake.
fn report_handshake_failure(events: &mut VecDeque<Event>, addr: SocketAddr, session: &Session) {
    if session.role() != crate::session::Role::Server {
        return;
    }
    if let Some(failure) = HandshakeFailure::of(addr, session) {
        events.push_back(Event::HandshakeFailed(failure));
    }
}

/// The worst case of one handshake's memory for sessions with `config` on a context whose
/// `max_cert_list` is `max_cert_list` (see [`Endpoint::handshake_worst_case`]). The OpenSSL terms
/// are upper bounds read from OpenSSL 3.x's DTLS code, checked against measurement by the
/// hostile-handshake benchmark (`BENCH_ONLY=hostile scripts/bench.sh`).
fn handshake_worst_case(config: &crate::config::SessionConfig, max_cert_list: usize) -> usize {
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
    // Epoch-1 records buffered before OpenSSL reads the peer's ChangeCipherSpec.
    let records = crate::session::MAX_HANDSHAKE_EPOCH1_RECORDS * READ_BUFFER;
    // Our queues: the send queue at the MTU, the receive queue's byte limit.
    let queues = config.send_queue * config.mtu + config.recv_queue_bytes;
    SSL_BASE + messages + records + queues
}
