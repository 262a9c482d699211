//! Handshake offload: the expensive steps of server handshakes run outside the endpoint, so
//! that a storm of new handshakes does not hold up the records of established connections.
//!
//! A server handshake's steps cost real CPU: the first (after the cookie) reads the ClientHello
//! and writes the server's first flight, with an ECDHE key and, with a certificate, an ECDSA
//! signature (≈ 200 µs); the second derives the shared secret and checks the Finished. Run
//! inline, every datagram behind one in the driver's receive batch waits for that, established
//! connections' records included. With offload on
//! ([`Endpoint::set_handshake_offload`]), the endpoint instead *checks out* a server handshake
//! that has work to do: its entry leaves the peer table as a [`HandshakeJob`], with the
//! datagrams it is to read, for the driver to [`run`](HandshakeJob::run) wherever it likes (a
//! worker thread) and hand back with [`Endpoint::finish_handshake_job`].
//!
//! ```text
//! verified ClientHello ─> new Session (first step pending) ─┐
//! datagram for a server handshake ──────────────────────────┴─> checked out: HandshakeJob ─> poll_handshake_job
//!      while out: its datagrams wait in a bounded inbox (more are dropped and counted)         │ run(now), anywhere
//! finish_handshake_job(now, job) <───────────────────────────────────────────────────────────┘
//!      back in the table, settled (events, output, timers); its inbox becomes the next job
//! ```
//!
//! While a handshake is out, the endpoint keeps everything else exact: it still counts against
//! the handshake limits (its charge is neither given up nor taken twice), its timers wait
//! (they are rescheduled when it comes back: a late retransmission, never a lost one), and a
//! ClientHello from its address waits in its inbox like any other datagram. The endpoint stays
//! deterministic and clock-free: a job runs at the `now` its runner gives it.
//!
//! The number of handshakes out (queued for a runner or running) is bounded by
//! [`EndpointConfig::handshake_backlog`](super::EndpointConfig::handshake_backlog): at the
//! bound, a ClientHello that carries a cookie (a new handshake) is dropped and counted in
//! [`EndpointStats::refused_handshake_backlog`](super::EndpointStats::refused_handshake_backlog);
//! the client's retransmission retries. Handshakes already under way are never refused: new
//! connection attempts are ignored rather than existing ones degraded. The cookie exchange
//! itself (a cheap HMAC, no state) stays inline.
//!
//! Only server handshakes are checked out (clients run one handshake each, at their own pace),
//! and a replacement handshake from the address of a live connection (a rebooted peer, RFC 6347
//! §4.2.8) runs inline: it is rare, and its entry is the live connection's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::peer::Peer;
use super::Endpoint;
use crate::session::Role;

/// Datagrams that may wait for a checked-out handshake; more are dropped (and counted): the
/// peer retransmits. A flight of a certificate handshake is a few datagrams.
pub const HANDSHAKE_INBOX: usize = 8;

/// Bytes that may wait for a checked-out handshake, all its inbox together.
const HANDSHAKE_INBOX_BYTES: usize = 32 * 1024;

/// One server handshake taken out of the [`Endpoint`] to run its next step without the
/// endpoint ([`Endpoint::set_handshake_offload`]): the step's crypto (the first flight's ECDHE
/// key and signature, or the shared secret and Finished of the client's second flight) runs in
/// [`run`](Self::run), on any thread, while the endpoint keeps serving everyone else; the
/// datagrams that arrive for this peer meanwhile wait in a bounded inbox
/// ([`HANDSHAKE_INBOX`]). It owns the session (and its `SSL`): dropping a job frees them, but
/// the endpoint forgets the handshake only when it is handed back
/// ([`Endpoint::finish_handshake_job`]); a job dropped instead stays counted against the
/// handshake limits until the endpoint is dropped.
pub struct HandshakeJob {
    /// The peer's address (the key of its entry).
    addr: SocketAddr,
    /// The entry itself, with its session.
    peer: Box<Peer>,
    /// The datagrams to read, in arrival order (pooled buffers).
    datagrams: Vec<Vec<u8>>,
}

impl std::fmt::Debug for HandshakeJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeJob")
            .field("peer", &self.addr)
            .field("id", &self.peer.id)
            .field("datagrams", &self.datagrams.len())
            .finish()
    }
}

impl HandshakeJob {
    /// The peer whose handshake this is.
    pub fn peer(&self) -> SocketAddr {
        self.addr
    }

    /// The connection id of the handshake.
    pub fn id(&self) -> super::ConnectionId {
        self.peer.id
    }

    /// Runs the step: the handshake's first flight if it has not been written
    /// (`SSL_do_handshake` on the verified ClientHello), then every datagram the job carries
    /// (`SSL_do_handshake` / `SSL_read`). Touches nothing but this handshake; its output, events
    /// and timers are taken up by [`Endpoint::finish_handshake_job`]. Running a job twice does
    /// nothing more.
    #[doc(alias = "SSL_do_handshake")]
    pub fn run(&mut self, now: Instant) {
        let p = &mut *self.peer;
        let before = p.session.authenticated_count();
        p.session.run_first_step(now);
        for datagram in self.datagrams.drain(..) {
            p.session.handle_datagram(now, &datagram);
            crate::record::give_buffer(datagram);
        }
        if p.session.authenticated_count() != before {
            p.last_activity = now;
        }
    }
}

/// Whether entry `p` is a server handshake that offload checks out (with offload on): not a
/// client's, and not one with a replacement handshake beside it.
pub(super) fn wanted(p: &Peer) -> bool {
    p.replacement.is_none() && p.session.role() == Role::Server && p.session.is_handshaking()
}

/// A handshake that is checked out: what the endpoint keeps of it.
#[derive(Debug, Default)]
pub(super) struct Away {
    /// Datagrams that arrived while it was out (at most [`HANDSHAKE_INBOX`]).
    inbox: Vec<Vec<u8>>,
    /// Bytes in `inbox`.
    inbox_bytes: usize,
    /// [`Endpoint::close_all`] ran while it was out: it is closed when it comes back.
    close: bool,
}

/// The endpoint's offload state: handshakes out, and jobs waiting for the driver.
#[derive(Debug, Default)]
pub(super) struct Offload {
    /// Whether server handshakes are checked out at all.
    pub(super) enabled: bool,
    /// Handshakes out (queued in `jobs` or running), by address.
    pub(super) away: HashMap<SocketAddr, Away>,
    /// Jobs checked out and not yet taken by [`Endpoint::poll_handshake_job`].
    jobs: std::collections::VecDeque<HandshakeJob>,
}

impl Endpoint {
    /// Turns handshake offload on or off. On, a server handshake with work to do (its first
    /// flight after the cookie, or a datagram from its client) is checked out as a
    /// [`HandshakeJob`] for [`poll_handshake_job`](Self::poll_handshake_job) instead of running
    /// inside [`handle_datagram`](Self::handle_datagram), so that its crypto can run elsewhere
    /// while established connections are served. Off (the default for a bare endpoint; the
    /// blocking driver turns it on when it runs handshake workers), everything runs inline.
    /// Handshakes already out stay out until finished.
    ///
    /// While a handshake is out it keeps its place in the handshake limits, its timers wait
    /// until it comes back, and datagrams for it wait in its inbox (beyond
    /// [`HANDSHAKE_INBOX`] they are dropped and counted in `dropped_handshake_busy`). At most
    /// [`EndpointConfig::handshake_backlog`](super::EndpointConfig::handshake_backlog)
    /// handshakes are out: beyond, a new handshake's ClientHello (with its cookie) is ignored
    /// and counted in `refused_handshake_backlog`, and the client's retransmission retries.
    /// The cookie exchange itself stays inline. Client handshakes and replacement handshakes
    /// (a rebooted peer at the address of a live connection) always run inline.
    ///
    /// ```no_run
    /// # use std::time::Instant;
    /// # use openssl_dtls::{DtlsServerContext, Endpoint, EndpointConfig};
    /// # fn serve(ctx: DtlsServerContext, datagram: &[u8], from: std::net::SocketAddr) -> Result<(), openssl_dtls::Error> {
    /// let mut endpoint = Endpoint::server(ctx, EndpointConfig::default())?;
    /// endpoint.set_handshake_offload(true);
    /// endpoint.handle_datagram(Instant::now(), from, datagram);
    /// while let Some(mut job) = endpoint.poll_handshake_job() {
    ///     job.run(Instant::now()); // the expensive part: on a worker thread, without the endpoint
    ///     endpoint.finish_handshake_job(Instant::now(), job);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn set_handshake_offload(&mut self, enabled: bool) {
        self.offload.enabled = enabled;
    }

    /// The next handshake checked out for its runner, if any. Run it
    /// ([`HandshakeJob::run`]), then give it back with
    /// [`finish_handshake_job`](Self::finish_handshake_job).
    pub fn poll_handshake_job(&mut self) -> Option<HandshakeJob> {
        self.offload.jobs.pop_front()
    }

    /// Whether this endpoint's handshakes are expensive enough to offload: a server whose
    /// context has a certificate (each full handshake signs its ECDHE key, ≈ 200 µs with
    /// P-256 ECDSA, more with RSA). A PSK server's handshakes (≈ 25 µs of crypto) cost less
    /// than a hop to a worker thread and back.
    pub fn costly_handshakes(&self) -> bool {
        self.server
            .as_ref()
            .is_some_and(|(ctx, _)| ctx.ssl_context().certificate().is_some())
    }

    /// Handshakes checked out now: queued for [`poll_handshake_job`](Self::poll_handshake_job)
    /// or running (at most
    /// [`EndpointConfig::handshake_backlog`](super::EndpointConfig::handshake_backlog) plus the
    /// handshakes that were already under way when it was reached).
    pub fn handshakes_out(&self) -> usize {
        self.offload.away.len()
    }

    /// Takes back a job from [`poll_handshake_job`](Self::poll_handshake_job) after its
    /// [`run`](HandshakeJob::run) (a job not run is run here): the handshake is back in the
    /// peer table, its output, events and timers are brought up to date, and the datagrams that
    /// arrived for it meanwhile are read — checked out again as the next job if it is still
    /// handshaking.
    pub fn finish_handshake_job(&mut self, now: Instant, mut job: HandshakeJob) {
        let now = self.tick(now);
        let addr = job.addr;
        let away = self.offload.away.remove(&addr).unwrap_or_default();
        if self.peers.contains_key(&addr) {
            // Cannot happen (nothing takes an address while its handshake is out); never lose
            // the live entry.
            log::error!("{addr}: a handshake came back to a taken address; dropped");
            self.stats.handshakes_failed_local += 1;
            job.peer.uncount_handshake(&mut self.handshakes, addr.ip());
            return;
        }
        job.run(now); // no-op if the runner ran it
        let mut p = job.peer;
        if away.close {
            p.session.close();
        }
        // Heap entries were skipped while it was out, and the ready queue forgot it.
        p.scheduled = None;
        p.in_ready = false;
        self.peers.insert(addr, *p);
        self.settle(addr, now);
        if away.inbox.is_empty() {
            return;
        }
        if self.wants_offload(addr) {
            self.check_out(addr, away.inbox);
            return;
        }
        for datagram in away.inbox {
            self.route_datagram(now, addr, &datagram);
            crate::record::give_buffer(datagram);
        }
    }

    /// Whether `addr`'s entry is a server handshake to check out rather than run inline.
    pub(super) fn wants_offload(&self, addr: SocketAddr) -> bool {
        self.offload.enabled && self.peers.get(&addr).is_some_and(wanted)
    }

    /// Checks `addr`'s entry out as a job that reads `datagrams` (after its first step, if
    /// pending).
    pub(super) fn check_out(&mut self, addr: SocketAddr, datagrams: Vec<Vec<u8>>) {
        let Some(peer) = self.peers.remove(&addr) else {
            return;
        };
        self.stats.handshake_jobs += 1;
        self.offload.away.insert(addr, Away::default());
        self.offload.jobs.push_back(HandshakeJob {
            addr,
            peer: Box::new(peer),
            datagrams,
        });
    }

    /// A datagram for `addr` while its handshake is out: into its inbox, or dropped and
    /// counted when the inbox is full. False if `addr` is not out.
    pub(super) fn hold_for_away(&mut self, addr: SocketAddr, datagram: &[u8]) -> bool {
        let Some(away) = self.offload.away.get_mut(&addr) else {
            return false;
        };
        if away.inbox.len() >= HANDSHAKE_INBOX
            || away.inbox_bytes + datagram.len() > HANDSHAKE_INBOX_BYTES
        {
            self.stats.dropped_handshake_busy += 1;
            return true;
        }
        let mut copy = crate::record::take_buffer();
        copy.extend_from_slice(datagram);
        away.inbox_bytes += copy.len();
        away.inbox.push(copy);
        true
    }

    /// Whether a new handshake (a ClientHello with a cookie from an unknown address) must be
    /// refused because [`EndpointConfig::handshake_backlog`](super::EndpointConfig::handshake_backlog)
    /// handshakes are out.
    pub(super) fn backlog_full(&self) -> bool {
        self.offload.enabled && self.offload.away.len() >= self.config.handshake_backlog.max(1)
    }

    /// [`close_all`](Self::close_all) for the handshakes that are out: each is closed when it
    /// comes back.
    pub(super) fn close_away(&mut self) {
        for away in self.offload.away.values_mut() {
            away.close = true;
        }
    }
}
