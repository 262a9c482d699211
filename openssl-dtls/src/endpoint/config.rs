//! [`EndpointConfig`]: an endpoint's limits, each with its default and the reason for it, how
//! they are checked ([`EndpointConfig::validate`]), and how to size them for devices that sleep.

use std::time::Duration;

use crate::error::ConfigError;

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
    ///
    /// [`Endpoint::handshake_worst_case`]: super::Endpoint::handshake_worst_case
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
    /// Demultiplex RTP and RTCP (RFC 7983, for DTLS-SRTP): a datagram whose first byte is
    /// 128–191 from the address of an established connection is queued for
    /// [`Endpoint::recv_non_dtls`](crate::endpoint::Endpoint::recv_non_dtls) (announced by
    /// [`Event::NonDtlsReadable`](crate::endpoint::Event::NonDtlsReadable)) instead of being
    /// dropped. Off (the default), such datagrams are dropped and counted as
    /// `dropped_non_dtls`. Either way they never reach a session.
    pub demux_rtp: bool,
    /// Non-DTLS datagrams queued for the application with [`demux_rtp`](Self::demux_rtp),
    /// all connections together; more are dropped and counted. Default 256.
    pub non_dtls_queue: usize,
    /// Handshake worker threads of a server driver (blocking or tokio): the expensive steps of server
    /// handshakes (ECDHE, signatures) run on them, outside the driver's lock, so that a storm of
    /// new handshakes does not delay the records of established connections
    /// ([`Endpoint::set_handshake_offload`](super::Endpoint::set_handshake_offload)). Default
    /// 1 (the target has 2 cores: one for the driver, one for handshakes). Started only for a
    /// server context with a certificate
    /// ([`Endpoint::costly_handshakes`](super::Endpoint::costly_handshakes)): PSK handshakes
    /// cost less than the hop. 0 runs handshakes inline in the driver, as a bare
    /// [`Endpoint`](super::Endpoint) does. With
    /// [`handshake_worker_idle_class`](Self::handshake_worker_idle_class) (the default) one more
    /// thread, the rescue worker, sleeps until a job has waited 250 ms for these.
    pub handshake_workers: usize,
    /// Server handshakes checked out for the workers at once (queued or running). Default 64
    /// (≈ 13 ms of ECDSA work on one worker, far below the client's 1 s retransmission timer).
    /// At the bound a new handshake (a ClientHello with a cookie) is ignored and counted in
    /// [`EndpointStats::refused_handshake_backlog`](super::EndpointStats::refused_handshake_backlog):
    /// the client's retransmission retries, and handshakes under way are never refused.
    /// 0 is taken as 1.
    pub handshake_backlog: usize,
    /// How much lower than the driver the handshake workers run, in `nice` steps
    /// (`setpriority(2)` on each worker thread; 0 to 19), default 10: the workers' priority
    /// when [`handshake_worker_idle_class`](Self::handshake_worker_idle_class) is off, and the
    /// rescue worker's (and the idle workers' where the system refuses `SCHED_IDLE`) when it
    /// is on. At nice 10, when the CPU is short the threads that serve established connections
    /// win it and handshakes still get about a tenth of a busy CPU. 0: the workers compete as
    /// equals.
    pub handshake_worker_nice: i32,
    /// Run the handshake workers in Linux's `SCHED_IDLE` class (`sched_setscheduler(2)`),
    /// default true: they get only CPU time no other thread of the machine wants, and a thread
    /// that wakes to serve an established connection preempts them at once instead of after
    /// their time slice (expensive handshake crypto must not starve established traffic). So
    /// that handshakes never nearly stop while other threads keep every CPU busy (an idle-class
    /// thread's share of a busy CPU is ≈ 0.3 %), one more worker, the rescue worker at
    /// [`handshake_worker_nice`](Self::handshake_worker_nice), runs any job that waited 250 ms
    /// for them (counted in
    /// [`EndpointStats::handshake_jobs_rescued`](super::EndpointStats::handshake_jobs_rescued)).
    /// Measured (`BENCH_ONLY=storm`, 2 cores, a half-open ECDSA flood at the server's
    /// capacity, two batches of eight alternating runs): established echo p99 during the flood
    /// 1.2–2.2× its idle p99 (median 1.5×, 1,200–2,100 first flights/s) in `SCHED_IDLE`,
    /// against 2.0–3.6× (median 2.5–2.9×, 1,700–4,400 first flights/s) with the workers at
    /// nice 10: the price is about
    /// half the handshakes per second during a flood while established connections have
    /// traffic (the workers run only then; otherwise handshakes run inline at full speed).
    /// False: the workers run at `handshake_worker_nice`, no rescue worker.
    pub handshake_worker_idle_class: bool,
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
            demux_rtp: false,
            non_dtls_queue: 256,
            handshake_workers: 1,
            handshake_backlog: 64,
            handshake_worker_nice: 10,
            handshake_worker_idle_class: true,
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
            ("non_dtls_queue", self.non_dtls_queue),
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
