//! The counters: [`EndpointStats`] for a whole endpoint (with the stable names its
//! [`fields`](EndpointStats::fields), `Display` and `Debug` give them for logs and metrics),
//! [`ConnectionStats`] for one connection, and how the end of a session is counted.

use std::time::Instant;

use crate::error::Error;
use crate::session::Session;
use crate::wire::DropReason;

/// A connection's counters and activity
/// ([`Endpoint::connection_stats`](super::Endpoint::connection_stats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// The session's counters: datagrams and bytes each way, application records, drops by
    /// cause.
    pub session: crate::session::SessionStats,
    /// When the connection last received authenticated input (a record that decrypted, or
    /// handshake progress); its idle time is measured from here.
    pub last_activity: Instant,
    /// How long its handshake took, once it completed.
    pub handshake_duration: Option<std::time::Duration>,
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
    /// Established connections with a Connection ID of ours (RFC 9146), now.
    pub cid_connections: usize,
    /// Datagrams whose `tls12_cid` record carried a CID no connection holds (forged, stale,
    /// another node's): dropped before any cryptography.
    pub dropped_unknown_cid: u64,
    /// Connections that followed their peer to a new address by their CID.
    pub cid_moves: u64,
    /// CID records from a new address that did not move their connection because nothing in
    /// the datagram authenticated (forged, a broken tag).
    pub cid_moves_refused_unauthenticated: u64,
    /// ... because it was a replay, or not newer than the newest record seen (reordered or
    /// delayed): RFC 9146 §6.
    pub cid_moves_refused_not_newest: u64,
    /// ... because the connection was still handshaking or being replaced, or a handshake is
    /// under way at the new address (an established connection there is parked instead:
    /// [`cid_parked`](Self::cid_parked)).
    pub cid_moves_refused_busy: u64,
    /// Datagrams not sent to a moved connection's new address because they would exceed what
    /// that address sent us before answering from there (anti-amplification).
    pub cid_amplification_dropped: u64,
    /// Connections that stepped off their address because another peer came from it (the
    /// address reused by a NAT or a load balancer): a verified handshake from the address of a
    /// CID connection, or another CID connection's authenticated, newest record from the
    /// address of any established connection. Parked in `100::/64` (RFC 6666), nothing sent
    /// there: a CID connection until its device's next record, one without a CID until its
    /// idle timeout (its device is a stranger at any other address).
    pub cid_parked: u64,
    /// Non-DTLS datagrams (first byte 128–191: RTP/RTCP, RFC 7983) queued for
    /// [`Endpoint::recv_non_dtls`](super::Endpoint::recv_non_dtls)
    /// ([`EndpointConfig::demux_rtp`](crate::EndpointConfig::demux_rtp) on).
    pub non_dtls_received: u64,
    /// Non-DTLS datagrams (first byte 128–191) dropped: demultiplexing off, not from the
    /// address of an established connection, or the queue full.
    pub dropped_non_dtls: u64,
    /// Server handshake steps checked out to run outside the endpoint (handshake offload:
    /// [`Endpoint::set_handshake_offload`](super::Endpoint::set_handshake_offload)).
    pub handshake_jobs: u64,
    /// Datagrams for a checked-out handshake dropped because its inbox was full
    /// ([`HANDSHAKE_INBOX`](super::HANDSHAKE_INBOX)); the peer retransmits.
    pub dropped_handshake_busy: u64,
    /// New handshakes (ClientHellos with a cookie) ignored because
    /// [`EndpointConfig::handshake_backlog`](super::EndpointConfig::handshake_backlog)
    /// handshakes were out; the client's retransmission retries.
    pub refused_handshake_backlog: u64,
    /// Datagrams the kernel dropped because the socket's receive buffer was full: the
    /// socket's drop counter, read when the statistics are taken (`SO_MEMINFO`, Linux) and as
    /// each datagram reports it (`SO_RXQ_OVFL`, summed over the sockets a client's `rebind`
    /// used), the larger of the two. Kept by the drivers ([`DtlsServer::stats`](crate::DtlsServer::stats) and the
    /// others); always 0 from [`Endpoint::stats`](super::Endpoint::stats), which has no
    /// socket. A rising count means the receive buffer
    /// ([`SocketOptions::recv_buffer_size`](crate::SocketOptions::recv_buffer_size)) is too
    /// small for the bursts, or the driver too slow. Also counts, one each, the rare received
    /// buffers the kernel cut off (`MSG_TRUNC`/`MSG_CTRUNC`: a GRO train longer than the
    /// driver's 64 KiB slot loses its cut last datagram).
    pub socket_rx_dropped: u64,
    /// Datagrams the socket refused with an error other than "would block" (`sendmmsg(2)`
    /// failed for them): dropped. Kept by the drivers, as `socket_rx_dropped`.
    pub socket_send_errors: u64,
    /// Datagrams dropped because the socket's send buffer was full (`EAGAIN`; the tokio
    /// driver first queues them, and drops only past its backlog's limit). Kept by the
    /// drivers, as `socket_rx_dropped`.
    pub socket_send_full: u64,
    /// Handshake datagrams (see [`Endpoint::is_handshake_datagram`](super::Endpoint::is_handshake_datagram))
    /// that the driver put behind the established connections' records read with them, and
    /// handled after those. Kept by the blocking and tokio drivers; always 0 from
    /// [`Endpoint::stats`](super::Endpoint::stats). Not a loss: every one is handled.
    pub handshake_datagrams_deferred: u64,
    /// Handshake jobs that waited
    /// 250 ms for a worker in `SCHED_IDLE`
    /// ([`EndpointConfig::handshake_worker_idle_class`](super::EndpointConfig::handshake_worker_idle_class))
    /// and were run by the rescue worker at
    /// [`handshake_worker_nice`](super::EndpointConfig::handshake_worker_nice) instead: other
    /// threads kept every CPU busy. Kept by the drivers; always 0 from
    /// [`Endpoint::stats`](super::Endpoint::stats).
    pub handshake_jobs_rescued: u64,
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
            + self.dropped_unknown_cid
            + self.dropped_non_dtls
            + self.dropped_handshake_busy
            + self.refused_handshake_backlog
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
        let named: [(&str, u64); 45] = [
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
            ("cid_connections", self.cid_connections as u64),
            ("dropped_unknown_cid", self.dropped_unknown_cid),
            ("cid_moves", self.cid_moves),
            (
                "cid_moves_refused_unauthenticated",
                self.cid_moves_refused_unauthenticated,
            ),
            (
                "cid_moves_refused_not_newest",
                self.cid_moves_refused_not_newest,
            ),
            ("cid_moves_refused_busy", self.cid_moves_refused_busy),
            ("cid_amplification_dropped", self.cid_amplification_dropped),
            ("cid_parked", self.cid_parked),
            ("non_dtls_received", self.non_dtls_received),
            ("dropped_non_dtls", self.dropped_non_dtls),
            ("handshake_jobs", self.handshake_jobs),
            ("dropped_handshake_busy", self.dropped_handshake_busy),
            ("refused_handshake_backlog", self.refused_handshake_backlog),
            ("socket_rx_dropped", self.socket_rx_dropped),
            ("socket_send_errors", self.socket_send_errors),
            ("socket_send_full", self.socket_send_full),
            (
                "handshake_datagrams_deferred",
                self.handshake_datagrams_deferred,
            ),
            ("handshake_jobs_rescued", self.handshake_jobs_rescued),
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

/// Counts how `session` ended: as a connection (`was_connected`: closed in order, failed, or
/// idle, which is counted where the timeout fired) or as a handshake (timed out, refused by the
/// peer, or failed here).
pub(super) fn count_failure(stats: &mut EndpointStats, session: &Session, was_connected: bool) {
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
