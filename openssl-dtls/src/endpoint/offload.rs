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
//!      back in the table, settled (events, output, timers); its inbox read as if it arrived
//!      now: a new ClientHello to the cookie exchange, the rest as the next job
//! abandon_handshake_job(addr, id): a job its runner lost (a panic), given up as failed
//! ```
//!
//! While a handshake is out, the endpoint keeps everything else exact: it still counts against
//! the handshake limits (its charge is neither given up nor taken twice), its timers wait
//! (they are rescheduled when it comes back: a late retransmission, never a lost one), what
//! it had to send when it was checked out is sent meanwhile, no connection moves to its
//! address by its Connection ID (refused as busy), and a ClientHello from its address waits in
//! its inbox like any other datagram — when the handshake comes back, one that does not repeat
//! the handshake's own (a restarted client) goes to the cookie exchange, as it would have
//! without offload. The endpoint stays deterministic and clock-free: a job runs at the `now`
//! its runner gives it. A job carries the identity of the endpoint that checked it out: no
//! other endpoint takes it back.
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

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::cid::{self, CidKey};
use super::events::HandshakeFailure;
use super::peer::Peer;
use super::{ConnectionId, Endpoint, Event};
use crate::error::{Error, Result};
use crate::record::{give_buffer, take_buffer};
use crate::session::{Role, Session};
use crate::wire::{self, Datagram};

/// Datagrams that may wait for a checked-out handshake; more are dropped (and counted): the
/// peer retransmits. A flight of a certificate handshake is a few datagrams.
pub const HANDSHAKE_INBOX: usize = 8;

/// Bytes that may wait for a checked-out handshake, all its inbox together.
const HANDSHAKE_INBOX_BYTES: usize = 32 * 1024;

/// The identity the next endpoint's offload gets: a job names the endpoint that checked it out,
/// and no other takes it back.
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// One server handshake taken out of the [`Endpoint`] to run its next step without the
/// endpoint ([`Endpoint::set_handshake_offload`]): the step's crypto (the first flight's ECDHE
/// key and signature, or the shared secret and Finished of the client's second flight) runs in
/// [`run`](Self::run), on any thread, while the endpoint keeps serving everyone else; the
/// datagrams that arrive for this peer meanwhile wait in a bounded inbox
/// ([`HANDSHAKE_INBOX`]). It owns the session (and its `SSL`): dropping a job frees them, but
/// the endpoint forgets the handshake only when it is handed back
/// ([`Endpoint::finish_handshake_job`]); a job dropped instead stays counted against the
/// handshake limits until the endpoint is dropped, or until the driver gives it up with
/// [`Endpoint::abandon_handshake_job`] (its runner panicked).
pub struct HandshakeJob {
    /// The endpoint that checked it out ([`Offload::owner`]).
    owner: u64,
    /// The peer's address (the key of its entry).
    addr: SocketAddr,
    /// The entry itself, with its session.
    peer: Box<Peer>,
    /// The datagrams to read, in arrival order: buffers of the endpoint's thread's pool, kept
    /// after they are read so that they go back to that pool
    /// ([`Endpoint::finish_handshake_job`]), not to the runner's.
    datagrams: Vec<Vec<u8>>,
    /// How many of `datagrams` have been read.
    read: usize,
    /// Datagrams (and bytes) the runner took to send itself ([`poll_transmit`](Self::poll_transmit)),
    /// counted in the endpoint's statistics when the job comes back.
    sent: (u64, u64),
    /// What the runner took and could not send: sent by the endpoint once the job is back.
    unsent: Vec<Vec<u8>>,
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
    /// (`SSL_do_handshake` / `SSL_read`), then its retransmission if that is due
    /// (`DTLSv1_handle_timeout`: the job was checked out for it). Touches nothing but this handshake; its output, events
    /// and timers are taken up by [`Endpoint::finish_handshake_job`]. Running a job twice does
    /// nothing more.
    #[doc(alias = "SSL_do_handshake")]
    pub fn run(&mut self, now: Instant) {
        let p = &mut *self.peer;
        let before = p.session.authenticated_count();
        p.session.run_first_step(now);
        for datagram in self.datagrams.iter().skip(self.read) {
            p.session.handle_datagram(now, datagram);
        }
        self.read = self.datagrams.len();
        // Checked out for its retransmission timer (or one came due meanwhile).
        if p.session.retransmission_due(now) {
            p.session.handle_timeout(now);
        }
        if p.session.authenticated_count() != before {
            p.set_last_activity(now);
        }
    }

    /// Takes the next datagram the step wrote (its flight) into `buf`, for the runner to send
    /// to [`peer`](Self::peer) itself, from its own thread: a handshake worker then sends the
    /// flight its crypto made, and the threads that serve established connections do not
    /// (with loopback or a busy NIC, a send costs about as much as the kernel's delivery).
    /// What the runner could not send it hands back with [`unsent`](Self::unsent). Datagrams
    /// not taken are sent by [`Endpoint::poll_transmit`] once the job is back; either way they
    /// count in [`EndpointStats::datagrams_out`](super::EndpointStats::datagrams_out) then.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        let n = self.peer.session.poll_transmit(buf)?;
        self.sent.0 += 1;
        self.sent.1 += n as u64;
        Some(n)
    }

    /// A datagram taken with [`poll_transmit`](Self::poll_transmit) that the runner could not
    /// send (the socket's buffer full): the endpoint sends it once the job is back, before
    /// anything the handshake writes later.
    pub fn unsent(&mut self, datagram: &[u8]) {
        self.sent.0 = self.sent.0.saturating_sub(1);
        self.sent.1 = self.sent.1.saturating_sub(datagram.len() as u64);
        let mut copy = take_buffer();
        copy.extend_from_slice(datagram);
        self.unsent.push(copy);
    }

    /// Gives the job's datagram buffers back to the calling thread's pool.
    fn recycle(&mut self) {
        for datagram in self.datagrams.drain(..) {
            give_buffer(datagram);
        }
        self.read = 0;
    }
}

/// Whether entry `p` is a server handshake that offload checks out (with offload on): not a
/// client's, and not one with a replacement handshake beside it.
pub(super) fn wanted(p: &Peer) -> bool {
    p.replacement.is_none() && p.session.role() == Role::Server && p.session.is_handshaking()
}

/// A handshake that is checked out: what the endpoint keeps of it.
#[derive(Debug)]
pub(super) struct Away {
    /// Its connection id: the job given back must be this one.
    id: ConnectionId,
    /// It counts in the handshake totals (to give up if the job is abandoned).
    counted: bool,
    /// The Connection ID it was issued (to forget if the job is abandoned).
    cid: Option<CidKey>,
    /// Datagrams that arrived while it was out (at most [`HANDSHAKE_INBOX`]).
    inbox: Vec<Vec<u8>>,
    /// Bytes in `inbox`.
    inbox_bytes: usize,
    /// [`Endpoint::close_all`] ran while it was out: it is closed when it comes back.
    close: bool,
}

/// The endpoint's offload state: handshakes out, and jobs waiting for the driver.
#[derive(Debug)]
pub(super) struct Offload {
    /// This endpoint's identity among all endpoints of the process (its jobs carry it).
    owner: u64,
    /// Whether server handshakes are checked out at all.
    pub(super) enabled: bool,
    /// Handshakes out (queued in `jobs` or running), by address.
    pub(super) away: HashMap<SocketAddr, Away>,
    /// Jobs checked out and not yet taken by [`Endpoint::poll_handshake_job`].
    jobs: VecDeque<HandshakeJob>,
    /// What handshakes had to send when they were checked out (their flight): sent by
    /// [`Endpoint::poll_transmit`] while they are out (pooled buffers; at most
    /// `max_pending_replies`, the rest waits in the session until it comes back).
    flights: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Where a session's datagram is copied out ([`MAX_MTU`](crate::config::MAX_MTU) bytes,
    /// allocated on first use).
    scratch: Vec<u8>,
    /// Offload only while established connections had traffic within this long
    /// ([`Endpoint::set_handshake_offload_window`]); `None`: always.
    window: Option<Duration>,
    /// When an established connection's authenticated record was last taken in.
    pub(super) last_traffic: Option<Instant>,
}

impl Default for Offload {
    fn default() -> Offload {
        Offload {
            owner: NEXT_OWNER.fetch_add(1, Ordering::Relaxed),
            enabled: false,
            away: HashMap::new(),
            jobs: VecDeque::new(),
            flights: VecDeque::new(),
            scratch: Vec::new(),
            window: None,
            last_traffic: None,
        }
    }
}

/// How long after an established connection's last record the drivers keep offloading new
/// handshake steps ([`Endpoint::set_handshake_offload_window`]). The hop to a worker and back
/// costs CPU (measured here: ≈ 100 µs per ECDHE-ECDSA handshake, `BENCH_HS_WORKERS=0` vs 1 in
/// `scripts/bench.sh`'s handshake section), worth paying only when there is established
/// traffic to protect; a server with none runs its handshakes inline, at full speed.
pub const OFFLOAD_WHILE_TRAFFIC: Duration = Duration::from_secs(1);

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
    ///     endpoint.finish_handshake_job(Instant::now(), job)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn set_handshake_offload(&mut self, enabled: bool) {
        self.offload.enabled = enabled;
    }

    /// With offload on, checks handshakes out only while established connections had traffic
    /// (an authenticated record) within `window` — the traffic offload protects — and runs
    /// them inline otherwise, sparing the hop's cost; `None` (the default): always. The drivers
    /// set [`OFFLOAD_WHILE_TRAFFIC`].
    pub fn set_handshake_offload_window(&mut self, window: Option<Duration>) {
        self.offload.window = window;
    }

    /// Whether a handshake step with work to do is checked out now, rather than run inline.
    pub(super) fn offloading(&self, now: Instant) -> bool {
        self.offload.enabled
            && self.offload.window.is_none_or(|window| {
                self.offload
                    .last_traffic
                    .is_some_and(|at| now.saturating_duration_since(at) < window)
            })
    }

    /// The next handshake checked out for its runner, if any. Run it
    /// ([`HandshakeJob::run`]), then give it back with
    /// [`finish_handshake_job`](Self::finish_handshake_job).
    pub fn poll_handshake_job(&mut self) -> Option<HandshakeJob> {
        self.offload.jobs.pop_front()
    }

    /// Whether a job waits for [`poll_handshake_job`](Self::poll_handshake_job).
    pub(crate) fn has_handshake_jobs(&self) -> bool {
        !self.offload.jobs.is_empty()
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
    /// arrived for it meanwhile are read as if they arrived now — a ClientHello that does not
    /// repeat the handshake's own goes to the cookie exchange (a restarted client), the rest to
    /// the handshake, checked out again as the next job if it is still handshaking (what it
    /// has to send goes out meanwhile). The job's datagram buffers go back to the calling
    /// thread's pool: call this on the thread that feeds the endpoint its datagrams.
    ///
    /// A job this endpoint did not check out (another endpoint's, or one given up with
    /// [`abandon_handshake_job`](Self::abandon_handshake_job)) is refused: it is dropped (its
    /// `SSL` freed), nothing here changes, and the error is an [`Error::Io`] of kind
    /// `InvalidInput`.
    pub fn finish_handshake_job(&mut self, now: Instant, mut job: HandshakeJob) -> Result<()> {
        let addr = job.addr;
        let ours = job.owner == self.offload.owner
            && self
                .offload
                .away
                .get(&addr)
                .is_some_and(|a| a.id == job.peer.id);
        if !ours {
            log::error!(
                "{addr}: refused a handshake job this endpoint did not check out (connection {})",
                job.peer.id
            );
            job.recycle();
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{addr}: not a handshake job this endpoint has out"),
            )));
        }
        let now = self.tick(now);
        let Some(away) = self.offload.away.remove(&addr) else {
            return Ok(()); // checked above
        };
        if self.peers.contains_key(&addr) {
            // Cannot happen (nothing takes an address while its handshake is out); never lose
            // the live entry. The handshake is dropped, and all it held given up.
            log::error!("{addr}: a handshake came back to a taken address; dropped");
            self.stats.handshakes_failed_local += 1;
            job.peer.uncount_handshake(&mut self.handshakes, addr.ip());
            self.cids.forget(&job.peer.session, addr, false);
            job.recycle();
            away.inbox.into_iter().for_each(give_buffer);
            return Ok(());
        }
        job.run(now); // no-op if the runner ran it
        job.recycle();
        // What the runner sent itself, and what it could not (sent first from here).
        self.stats.datagrams_out += job.sent.0;
        self.stats.bytes_out += job.sent.1;
        for datagram in job.unsent.drain(..) {
            self.offload.flights.push_back((addr, datagram));
        }
        let mut p = job.peer;
        if away.close {
            p.session.close();
        }
        // Heap entries were skipped while it was out, and the ready queue forgot it.
        p.scheduled = None;
        p.in_ready = false;
        self.peers.insert(addr, *p);
        self.settle(addr, now);
        self.read_inbox(now, addr, away.inbox);
        Ok(())
    }

    /// Reads the datagrams that waited for `addr`'s handshake while it was out, as
    /// `handle_datagram` would have had it been in: each is routed anew until one checks the
    /// handshake out again; the ones after it go with that job, up to the first ClientHello
    /// that is not a retransmission of the handshake's own, which waits (with the rest) for the
    /// job to come back, then to go to the cookie exchange.
    fn read_inbox(&mut self, now: Instant, addr: SocketAddr, inbox: Vec<Vec<u8>>) {
        let mut inbox = inbox.into_iter();
        while let Some(datagram) = inbox.next() {
            self.route_datagram(now, addr, &datagram);
            give_buffer(datagram);
            if !self.offload.away.contains_key(&addr) {
                continue;
            }
            // Out again: `check_out` queued its job last.
            let cid_len = self.cid_len;
            let (Some(job), Some(away)) = (
                self.offload.jobs.back_mut().filter(|j| j.addr == addr),
                self.offload.away.get_mut(&addr),
            ) else {
                inbox.for_each(give_buffer);
                return;
            };
            let mut held = false;
            for datagram in inbox {
                held = held || is_new_hello(&job.peer.session, cid_len, &datagram);
                if held {
                    away.inbox_bytes += datagram.len();
                    away.inbox.push(datagram);
                } else {
                    job.datagrams.push(datagram);
                }
            }
            return;
        }
    }

    /// Gives up a job that [`poll_handshake_job`](Self::poll_handshake_job) handed out and that
    /// will never come back (its runner panicked while running it): the handshake of connection
    /// `id` with `peer` is forgotten as failed — its place in the handshake limits given up
    /// (the server-wide ones of a shard included), its Connection ID freed, the datagrams
    /// waiting for it dropped, counted in `handshakes_failed_local`, and reported with
    /// [`Event::HandshakeFailed`] and [`Event::Closed`] like any handshake that fails here.
    /// The peer's next ClientHello starts anew. False if no such handshake is out (nothing
    /// changes); the job, should it come back after all, is refused.
    pub fn abandon_handshake_job(&mut self, peer: SocketAddr, id: ConnectionId) -> bool {
        if self.offload.away.get(&peer).is_none_or(|a| a.id != id) {
            return false;
        }
        let Some(away) = self.offload.away.remove(&peer) else {
            return false;
        };
        // Not handed out after all: dropped here.
        self.offload
            .jobs
            .retain(|j| !(j.addr == peer && j.peer.id == id));
        away.inbox.into_iter().for_each(give_buffer);
        if away.counted {
            self.handshakes.remove(peer.ip());
        }
        if let Some(key) = away.cid {
            self.cids.forget_key(key, peer);
        }
        self.stats.handshakes_failed_local += 1;
        log::error!("{peer}: handshake {id} lost by its runner; dropped");
        let reason = || {
            Error::Io(std::io::Error::other(
                "the handshake's step was lost (its runner panicked)",
            ))
        };
        self.events
            .push_back(Event::HandshakeFailed(HandshakeFailure {
                peer,
                identity: None,
                reason: reason(),
            }));
        self.events.push_back(Event::Closed {
            peer,
            id,
            established: false,
            error: Some(reason()),
        });
        true
    }

    /// Whether `addr`'s entry is a server handshake to check out rather than run inline.
    pub(super) fn wants_offload(&self, addr: SocketAddr, now: Instant) -> bool {
        self.offloading(now) && self.peers.get(&addr).is_some_and(wanted)
    }

    /// Checks `addr`'s entry out as a job that reads `datagrams` (after its first step, if
    /// pending).
    pub(super) fn check_out(&mut self, addr: SocketAddr, datagrams: Vec<Vec<u8>>) {
        let Some(mut peer) = self.peers.remove(&addr) else {
            datagrams.into_iter().for_each(give_buffer);
            return;
        };
        // What it has to send (its flight, when it comes back with more to read) goes out
        // while it is out, not after its next step.
        self.take_output(addr, &mut peer.session);
        self.stats.handshake_jobs += 1;
        self.offload.away.insert(
            addr,
            Away {
                id: peer.id,
                counted: peer.counted_handshake,
                cid: cid::issued_key(&peer.session),
                inbox: Vec::new(),
                inbox_bytes: 0,
                close: false,
            },
        );
        self.offload.jobs.push_back(HandshakeJob {
            owner: self.offload.owner,
            addr,
            peer: Box::new(peer),
            datagrams,
            read: 0,
            sent: (0, 0),
            unsent: Vec::new(),
        });
    }

    /// Moves the datagrams `session` (at `addr`, being checked out) has to send to the flights
    /// [`poll_transmit`](Self::poll_transmit) sends while it is out, up to
    /// `max_pending_replies` waiting in all (the rest is sent when it comes back).
    fn take_output(&mut self, addr: SocketAddr, session: &mut Session) {
        if !session.has_transmit() {
            return;
        }
        let o = &mut self.offload;
        if o.scratch.len() < crate::config::MAX_MTU {
            o.scratch.resize(crate::config::MAX_MTU, 0);
        }
        while o.flights.len() < self.config.max_pending_replies {
            let Some(n) = session.poll_transmit(&mut o.scratch) else {
                break;
            };
            let mut copy = take_buffer();
            copy.extend_from_slice(&o.scratch[..n]);
            o.flights.push_back((addr, copy));
        }
    }

    /// The next datagram of a flight taken from a handshake when it was checked out.
    pub(super) fn poll_flight(&mut self, buf: &mut [u8]) -> Option<(SocketAddr, usize)> {
        while let Some((addr, datagram)) = self.offload.flights.pop_front() {
            let n = datagram.len();
            let fits = n <= buf.len();
            if fits {
                buf[..n].copy_from_slice(&datagram);
            } else {
                log::warn!(
                    "dropping a {n}-byte datagram to {addr}: transmit buffer holds {}",
                    buf.len()
                );
            }
            give_buffer(datagram);
            if fits {
                return Some((addr, n));
            }
        }
        None
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
        let mut copy = take_buffer();
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

/// Whether `datagram` (one that waited for `session`'s handshake) is a ClientHello that does
/// not repeat the one the handshake started from: a restarted client, for the cookie exchange.
fn is_new_hello(session: &Session, cid_len: u8, datagram: &[u8]) -> bool {
    let Ok(parsed) = wire::parse_cid(datagram, cid_len) else {
        return false;
    };
    let classified = parsed.kind();
    matches!(classified, Datagram::ClientHello(_))
        && !super::is_retransmitted_hello(session, classified, datagram)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Instant;

    use super::super::{Endpoint, EndpointConfig, SharedLimits};
    use crate::context::{DtlsClientContext, DtlsServerContext, PskCredentials};
    use crate::record::take_buffer;

    const KEY: &[u8] = b"0123456789abcdef";
    const CIPHER: &str = "PSK-AES128-CCM8";
    const SERVER: &str = "10.0.0.1:5684";

    fn server_ctx(cid_len: u8) -> DtlsServerContext {
        let mut b = DtlsServerContext::builder();
        b.psk_key_store(|_| Some(KEY.to_vec())).ciphers(CIPHER);
        if cid_len > 0 {
            b.connection_id(cid_len);
        }
        b.build().unwrap()
    }

    fn client_ctx(cid: bool) -> DtlsClientContext {
        let mut b = DtlsClientContext::builder();
        b.psk_credentials(PskCredentials::new(b"device".to_vec(), KEY.to_vec()))
            .ciphers(CIPHER);
        if cid {
            b.connection_id(0);
        }
        b.build().unwrap()
    }

    fn server(cid_len: u8) -> Endpoint {
        let mut s = Endpoint::server(server_ctx(cid_len), EndpointConfig::default()).unwrap();
        s.set_handshake_offload(true);
        s
    }

    /// Moves every datagram `from` queued to `to`, as from `addr`. How many.
    fn deliver(from: &mut Endpoint, to: &mut Endpoint, addr: SocketAddr, now: Instant) -> usize {
        let mut buf = vec![0u8; 65_536];
        let mut n = 0;
        while let Some((_, len)) = from.poll_transmit(&mut buf) {
            to.handle_datagram(now, addr, &buf[..len]);
            n += 1;
        }
        n
    }

    /// A client at `addr` through the cookie exchange: its ClientHello with the cookie has
    /// reached `s`.
    fn start(s: &mut Endpoint, addr: SocketAddr, now: Instant, cid: bool) -> Endpoint {
        let server_addr: SocketAddr = SERVER.parse().unwrap();
        let mut c = Endpoint::client(EndpointConfig::default()).unwrap();
        c.connect(now, server_addr, &client_ctx(cid), None).unwrap();
        deliver(&mut c, s, addr, now); // ClientHello
        deliver(s, &mut c, server_addr, now); // HelloVerifyRequest
        deliver(&mut c, s, addr, now); // ClientHello with the cookie
        c
    }

    #[test]
    fn with_a_window_handshakes_go_out_only_while_established_connections_have_traffic() {
        let mut s = server(0);
        s.set_handshake_offload_window(Some(super::OFFLOAD_WHILE_TRAFFIC));
        let t0 = Instant::now();
        let server_addr: SocketAddr = SERVER.parse().unwrap();
        // No established traffic yet: the first handshake runs inline, to the end.
        let a: SocketAddr = "192.0.2.7:40001".parse().unwrap();
        let mut ca = start(&mut s, a, t0, false);
        assert!(s.poll_handshake_job().is_none(), "inline without traffic");
        for _ in 0..4 {
            deliver(&mut s, &mut ca, server_addr, t0);
            deliver(&mut ca, &mut s, a, t0);
        }
        assert_eq!(s.stats().handshakes_completed, 1);
        assert_eq!(s.stats().handshake_jobs, 0);
        // A record of the established connection: traffic to protect.
        let mut buf = [0u8; 64];
        let client_id = ca
            .connection_id(server_addr)
            .expect("the client's connection");
        ca.send(server_addr, client_id, b"ping").unwrap();
        deliver(&mut ca, &mut s, a, t0);
        let server_id = s.connection_id(a).expect("the server's connection");
        assert_eq!(s.recv(a, server_id, &mut buf).unwrap(), Some(4));
        // The next handshake within the window is checked out...
        let b: SocketAddr = "192.0.2.8:40002".parse().unwrap();
        let _cb = start(&mut s, b, t0 + super::OFFLOAD_WHILE_TRAFFIC / 2, false);
        assert!(s.poll_handshake_job().is_some(), "offloaded during traffic");
        // ...and one after it runs inline again.
        let c: SocketAddr = "192.0.2.9:40003".parse().unwrap();
        let _cc = start(&mut s, c, t0 + super::OFFLOAD_WHILE_TRAFFIC * 2, false);
        assert!(
            s.poll_handshake_job().is_none(),
            "inline once the traffic stopped"
        );
    }

    #[test]
    fn an_abandoned_job_frees_its_connection_id() {
        let mut s = server(6);
        let now = Instant::now();
        let a: SocketAddr = "192.0.2.7:40001".parse().unwrap();
        let _c = start(&mut s, a, now, true);
        let job = s.poll_handshake_job().expect("checked out");
        assert_eq!(s.cids.map.len(), 1, "its CID is reserved");
        let id = job.id();
        assert!(s.abandon_handshake_job(a, id));
        assert!(s.cids.map.is_empty());
        assert_eq!(s.stats().handshakes, 0);
        // Should the job come back after all, it is refused.
        assert!(s.finish_handshake_job(now, job).is_err());
        assert_eq!((s.len(), s.stats().handshakes), (0, 0));
    }

    #[test]
    fn an_abandoned_job_gives_its_place_in_the_shared_limits_back() {
        let config = EndpointConfig {
            max_handshakes_per_ip: 1,
            ..EndpointConfig::default()
        };
        let ctx = server_ctx(0);
        let limits = Arc::new(SharedLimits::default());
        let mut a = Endpoint::server(ctx.clone(), config.clone()).unwrap();
        let mut b = Endpoint::server(ctx, config).unwrap();
        a.join_shards(Arc::clone(&limits), 0);
        b.join_shards(Arc::clone(&limits), 1);
        a.set_handshake_offload(true);
        let now = Instant::now();
        let one: SocketAddr = "192.0.2.7:40001".parse().unwrap();
        let two: SocketAddr = "192.0.2.7:40002".parse().unwrap();
        let _c1 = start(&mut a, one, now, false);
        let job = a.poll_handshake_job().expect("checked out");
        let _c2 = start(&mut b, two, now, false);
        assert_eq!(b.stats().refused_per_ip_limit, 1, "the IP's place is taken");
        assert!(a.abandon_handshake_job(one, job.id()));
        drop(job);
        let _c3 = start(&mut b, two, now, false);
        let s = b.stats();
        assert_eq!((s.handshakes, s.refused_per_ip_limit), (1, 1), "{s}");
    }

    /// The buffers of a job's datagrams come from the driver thread's pool and go back there,
    /// wherever the job ran.
    #[test]
    fn a_jobs_datagram_buffers_go_back_to_the_pool_of_the_thread_that_finishes_it() {
        let mut s = server(0);
        let now = Instant::now();
        let a: SocketAddr = "192.0.2.7:40001".parse().unwrap();
        let server_addr: SocketAddr = SERVER.parse().unwrap();
        let mut c = start(&mut s, a, now, false);
        // The first step, then the client's second flight: a job with datagrams.
        let mut job = s.poll_handshake_job().expect("the first step");
        job.run(now);
        s.finish_handshake_job(now, job).unwrap();
        deliver(&mut s, &mut c, server_addr, now);
        deliver(&mut c, &mut s, a, now);
        let mut job = s.poll_handshake_job().expect("the second step");
        assert!(!job.datagrams.is_empty());
        // This thread's pool, emptied.
        let mut drained = Vec::new();
        loop {
            let buf = take_buffer();
            if buf.capacity() == 0 {
                break;
            }
            drained.push(buf);
        }
        std::thread::scope(|t| {
            t.spawn(|| job.run(now));
        });
        s.finish_handshake_job(now, job).unwrap();
        assert!(take_buffer().capacity() > 0, "back in this thread's pool");
        deliver(&mut s, &mut c, server_addr, now);
        assert_eq!(s.stats().connections, 1);
    }
}
