//! One peer's DTLS state around one OpenSSL `SSL`, sans-IO: datagrams in, datagrams, application
//! data and timer deadlines out.
//!
//! A [`Session`] never touches a socket or a clock of its own: the caller passes `now` and moves
//! datagrams. The verbs, in the style of quinn-proto:
//!
//! | call | when |
//! |---|---|
//! | [`handle_datagram`](Session::handle_datagram) | a datagram from the peer arrived |
//! | [`poll_transmit`](Session::poll_transmit) | after any call: send what it returns until `None` |
//! | [`poll_timeout`](Session::poll_timeout) | after any call: when to call `handle_timeout` next |
//! | [`handle_timeout`](Session::handle_timeout) | that deadline passed |
//! | [`send`](Session::send) / [`recv`](Session::recv) | application data, once established |
//! | [`close`](Session::close) | send `close_notify` |
//!
//! Retransmission timing is OpenSSL's (`DTLSv1_get_timeout` / `DTLSv1_handle_timeout`, backoff set
//! through `DTLS_set_timer_cb`); OpenSSL reads the system clock for it, so `now` should be close to
//! `Instant::now()`. Everything else (the handshake deadline, the retransmission cap) uses `now`.
//!
//! Errors are sticky: once a session has failed, no `SSL_*` call is made on it again and every
//! call returns the same error. The OpenSSL error queue is cleared before every `SSL_*` call and
//! drained after it.
//!
//! With [`SessionConfig::compact`] the session moves to the compact record layer once the
//! handshake completes and frees its `SSL` ([`is_compact`](Session::is_compact)): the side
//! that received the handshake's last flight at once, the side that sent it after the peer's
//! first authenticated record or [`SessionConfig::compact_linger`]. From the end of the
//! handshake on, application and alert records are opened by the compact layer only (OpenSSL
//! never decrypts application data in this mode), and after the hand-off the compact layer
//! seals them too, continuing the write sequence after the last record OpenSSL wrote. The
//! handshake's facts ([`cipher`](Session::cipher), [`psk_identity`](Session::psk_identity),
//! ...) stay readable; [`ssl`](Session::ssl) returns `None`.

use std::cell::Cell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::raw::c_int;
use std::time::Instant;

use openssl::error::ErrorStack;
use openssl::ssl::{Ssl, SslOptions, SslRef, SslVersion};
use openssl::x509::X509;
use openssl_dtls_sys as dffi;
use openssl_sys as ffi;

use crate::bio::{self, BioState, TimerSettings};
use crate::error::{Alert, ConfigError, Error, Result, TimeoutPhase};
use crate::ffi::bio::BioHandle;
use crate::ffi::ssl;
use crate::plaintext::{self, Screen};
use crate::record::{self, OpenError, RecordLayer, SealError};
pub use crate::session::engine::HandshakeFacts;
use crate::session::engine::{CommonFacts, Compact, Engine, KeptFacts, OpenSsl};
use crate::wire::{ContentType, Parsed, RecordHeader};

mod cid;
mod compact;
mod engine;
mod exporter;
mod facts;
mod filter;
mod openssl_engine;
mod stats;

pub(crate) use self::compact::{SaveOutcome, SuiteNames, MAX_SAVED_SESSION_LEN};
pub(crate) use self::exporter::check_srtp_profiles;
pub use self::exporter::{SrtpKeyingMaterial, SrtpProfile, MAX_EXPORT_LEN, SRTP_EXPORTER_LABEL};
use self::filter::*;
pub use self::filter::{
    MAX_HANDSHAKE_EPOCH1_ALONE, MAX_HANDSHAKE_EPOCH1_APP_RECORDS, MAX_HANDSHAKE_EPOCH1_RECORDS,
};
pub(crate) use self::openssl_engine::configure_ssl;
pub use self::stats::SessionStats;
use self::stats::{Counters, Traffic};

pub use crate::config::{SessionConfig, MAX_MTU, MAX_PLAINTEXT, MIN_MTU};

/// Which side of the handshake a session plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends the ClientHello (`SSL_set_connect_state`).
    Client,
    /// Answers it (`SSL_set_accept_state`).
    Server,
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// The handshake is running.
    Handshaking,
    /// The handshake completed; application data flows.
    Established,
    /// Closed in an orderly way, by this side ([`Session::close`]) or the peer (`close_notify`).
    Closed,
    /// Failed: see [`Session::error`].
    Failed,
}

/// One peer's DTLS state around one `SSL`: see the [module documentation](self).
pub struct Session {
    /// The record layer in use and the `SSL` while it exists: see [`engine`].
    engine: Engine,
    /// What the handshake established, from its completion on.
    /// (Kept compactly: see [`KeptFacts`].)
    facts: Option<KeptFacts>,
    /// What only the handshake and the `SSL` need: from the session's start until the compact
    /// hand-off frees the `SSL` (an idle compact connection pays a pointer for it); and the
    /// error of a failed session (made again for it if freed).
    hs: Option<Box<Handshake>>,
    role: Role,
    state: SessionState,
    closed_by_peer: bool,
    /// Shared with every session of an equal configuration (see [`shared_config`]).
    config: std::sync::Arc<SessionConfig>,
    started: Instant,
    /// Received application datagrams, each from [`record::PLAINTEXT_AT`] in its buffer (where
    /// the compact layer opened it: nothing moves); pooled storage, none while empty (see
    /// `record::Queue`).
    received: record::Queue,
    /// Bytes the receive queue holds (by capacity); 32 bits: the byte limit counts as at most
    /// `u32::MAX` (see [`received_fits`](Self::received_fits)).
    received_bytes: u32,
    /// At most [`MAX_MTU`]: 16 bits.
    data_mtu: u16,
    /// The shortest protected (epoch ≥ 1) record the negotiated AEAD can produce; 0 = no check.
    min_protected_len: u8,
    /// Compact mode: renegotiation requests answered with `no_renegotiation` so far (at most
    /// [`MAX_RENEGOTIATION_REFUSALS`]; here rather than in the compact layer's block, where it
    /// would cost 8 bytes of padding).
    renegotiation_refusals: u8,
    peer: Option<SocketAddr>,
    /// Counters, kept compactly; read as [`SessionStats`].
    stats: self::stats::Counters,
    /// Authenticated input seen: records that decrypted (application data, alerts) and
    /// handshake progress. The endpoint's idle clock moves only when this does. 32 bits,
    /// wrapping: it is only compared before and after one call, which never counts 2^32.
    authenticated: u32,
    /// The negotiated Connection IDs (RFC 9146), if any: see [`cid`].
    cid: Option<Box<self::cid::CidSession>>,
}

/// The part of a [`Session`]'s state that only its handshake and its `SSL` use, and a failed
/// session's error (boxed, and freed at the compact hand-off unless the session failed).
#[derive(Default)]
struct Handshake {
    /// The error that failed the session (sticky), if it failed. Here rather than in the
    /// session: only a failed session has one, and an idle connection pays nothing for it.
    error: Option<Box<Error>>,
    /// Compact mode, during the handshake: epoch-1 application and alert records withheld from
    /// OpenSSL until the compact layer has keys (at most [`MAX_EARLY_RECORDS`]).
    early: Vec<Vec<u8>>,
    /// Compact mode, lingering: when the `SSL` is freed at the latest.
    linger_until: Option<Instant>,
    /// OpenSSL's retransmission timer (`DTLSv1_get_timeout`), while a flight is unacknowledged.
    retransmit_at: Option<Instant>,
    /// The latest unauthenticated fatal alert received during the handshake, kept from OpenSSL.
    held_alert: Option<HeldAlert>,
    /// Epoch-1 records given to OpenSSL during the handshake (at most
    /// [`MAX_HANDSHAKE_EPOCH1_RECORDS`] until `peer_ccs_read`).
    handshake_epoch1: u8,
    /// Epoch-1 application and alert records given to OpenSSL during the handshake (at most
    /// [`MAX_HANDSHAKE_EPOCH1_APP_RECORDS`]).
    handshake_epoch1_app: u8,
    /// OpenSSL has read the peer's ChangeCipherSpec in this handshake: it decrypts epoch-1
    /// records from now on instead of buffering them.
    peer_ccs_read: bool,
    /// A client's OpenSSL has been given a HelloVerifyRequest (only one is accepted).
    hello_verify_accepted: bool,
    /// A server session from `DTLSv1_listen` whose first step (reading the verified ClientHello
    /// and writing the server's first flight: the key exchange and, with certificates, the
    /// signature) has not run yet: see [`Session::run_first_step`].
    first_step_pending: bool,
}

/// What a session without its [`Handshake`] part reads (after the compact hand-off).
static NO_HANDSHAKE: Handshake = Handshake {
    error: None,
    early: Vec::new(),
    linger_until: None,
    retransmit_at: None,
    held_alert: None,
    handshake_epoch1: 0,
    handshake_epoch1_app: 0,
    peer_ccs_read: false,
    hello_verify_accepted: false,
    first_step_pending: false,
};

impl Session {
    /// The handshake's part of the state (all empty once it is freed).
    fn hs(&self) -> &Handshake {
        self.hs.as_deref().unwrap_or(&NO_HANDSHAKE)
    }

    /// The handshake's part of the state, to change: only on the paths of the handshake and
    /// the `SSL`, where it exists (made again, empty, otherwise).
    fn hs_mut(&mut self) -> &mut Handshake {
        self.hs.get_or_insert_with(Box::default)
    }

    /// When a lingering `SSL` is freed at the latest.
    fn linger_until(&self) -> Option<Instant> {
        self.hs()
            .linger_until
            .filter(|_| self.engine.is_lingering())
    }

    /// Stops the retransmission timer (without making the handshake part again).
    fn clear_retransmit(&mut self) {
        if let Some(hs) = self.hs.as_mut() {
            hs.retransmit_at = None;
        }
    }

    /// Frees the handshake part once the `SSL` is gone and no early record waits in it.
    fn free_handshake_part(&mut self) {
        if self.engine.openssl().is_none()
            && self.hs().early.is_empty()
            && self.hs().error.is_none()
        {
            self.hs = None;
        }
    }
}

/// Configurations kept for sharing (at most): a session holds an `Arc` of its configuration
/// rather than its own copy, and sessions of one context share one.
const SHARED_CONFIGS: usize = 16;

/// The shared copy of `config`: the one already kept if an equal configuration is, else a new
/// one (kept in place of one no session uses any more, or of the oldest when all are in use).
/// One short lock per new session; nothing per datagram.
fn shared_config(config: &SessionConfig) -> std::sync::Arc<SessionConfig> {
    use std::sync::{Arc, Mutex};
    static SHARED: Mutex<Vec<Arc<SessionConfig>>> = Mutex::new(Vec::new());
    let Ok(mut shared) = SHARED.lock() else {
        return Arc::new(config.clone());
    };
    if let Some(c) = shared.iter().find(|c| ***c == *config) {
        return Arc::clone(c);
    }
    if shared.len() >= SHARED_CONFIGS {
        shared.retain(|c| Arc::strong_count(c) > 1);
        if shared.len() >= SHARED_CONFIGS {
            shared.remove(0);
        }
    }
    let c = Arc::new(config.clone());
    shared.push(Arc::clone(&c));
    c
}

/// An unauthenticated fatal alert held back during the handshake (see [`crate::plaintext`]).
#[derive(Debug, Clone, Copy)]
struct HeldAlert {
    alert: Alert,
    /// OpenSSL's handshake state (`SSL_get_state`) when it arrived: any change is progress.
    ssl_state: c_int,
    /// Without progress by then, the handshake fails with this alert.
    fail_at: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("peer", &self.peer)
            .field("error", &self.error())
            .finish_non_exhaustive()
    }
}

/// Early epoch-1 records kept per handshaking compact session (each at most one MTU long).
const MAX_EARLY_RECORDS: usize = 8;

/// Renegotiation requests a compact connection answers with `no_renegotiation`; later ones are
/// dropped. A peer that asks this often is not going to stop; each answer costs a sealed record,
/// so the bound keeps a misbehaving (authenticated) peer from making us send without limit.
pub const MAX_RENEGOTIATION_REFUSALS: u8 = 8;

/// The `no_renegotiation` alert description (RFC 5246 §7.2.2), always a warning.
const NO_RENEGOTIATION: u8 = 100;

/// Handshake message types (RFC 5246 §7.4) that ask for a renegotiation.
const HELLO_REQUEST: u8 = 0;
const CLIENT_HELLO: u8 = 1;

/// Whether a compact session's record goes to the compact layer (rather than OpenSSL): epoch-1
/// application data and alerts, and every `tls12_cid` record (whose real type is encrypted).
fn is_compact_record(record: &RecordHeader<'_>) -> bool {
    record.epoch() >= 1
        && matches!(
            record.content_type(),
            ContentType::ApplicationData | ContentType::Alert | ContentType::Tls12Cid
        )
}

impl Session {
    /// A client session on `ssl` (made from a DTLS `SslContext`); the ClientHello is ready for
    /// [`poll_transmit`](Self::poll_transmit) on return.
    ///
    /// Whatever `ssl` was configured with, the session enforces DTLS 1.2 as the minimum version,
    /// no renegotiation, no compression and the MTU of `config`.
    #[doc(alias = "SSL_connect")]
    pub fn client(ssl: Ssl, config: &SessionConfig, now: Instant) -> Result<Session> {
        let mut session = Session::prepare(ssl, Role::Client, config, now, None)?;
        session.ssl_mut().set_connect_state();
        session.drive(now);
        session.check_not_failed()?;
        Ok(session)
    }

    /// A server session on `ssl` that waits for a ClientHello (without a cookie exchange; the
    /// endpoint uses `DTLSv1_listen` first and then continues the handshake from the verified ClientHello).
    #[doc(alias = "SSL_accept")]
    pub fn server(ssl: Ssl, config: &SessionConfig, now: Instant) -> Result<Session> {
        let mut session = Session::prepare(ssl, Role::Server, config, now, None)?;
        session.ssl_mut().set_accept_state();
        Ok(session)
    }

    /// Builds the session around an `SSL` already set up by [`configure_ssl`].
    fn prepare(
        mut ssl: Ssl,
        role: Role,
        config: &SessionConfig,
        now: Instant,
        existing_bio: Option<BioHandle>,
    ) -> Result<Session> {
        let bio = match existing_bio {
            Some(bio) => bio,
            None => configure_ssl(&mut ssl, config)?,
        };
        let mut session = Session {
            engine: Engine::OpenSsl(OpenSsl { ssl, bio }),
            facts: None,
            hs: Some(Box::default()),
            role,
            state: SessionState::Handshaking,
            closed_by_peer: false,
            config: shared_config(config),
            started: now,
            received: record::Queue::default(),
            received_bytes: 0,
            data_mtu: 0,
            min_protected_len: 0,
            renegotiation_refusals: 0,
            peer: None,
            stats: Counters::default(),
            authenticated: 0,
            cid: None,
        };
        session.bio_mut().now = Some(now);
        Ok(session)
    }

    /// A server session on an `SSL` whose `DTLSv1_listen` just verified a ClientHello's cookie.
    /// The handshake continues from that ClientHello in [`run_first_step`](Self::run_first_step)
    /// (the endpoint runs it inline, or on a handshake worker: it is the expensive step).
    pub(crate) fn accepted(
        ssl: Ssl,
        bio: BioHandle,
        peer: SocketAddr,
        config: &SessionConfig,
        now: Instant,
    ) -> Result<Session> {
        let mut session = Session::prepare(ssl, Role::Server, config, now, Some(bio))?;
        session.peer = Some(peer);
        session.hs_mut().first_step_pending = true;
        Ok(session)
    }

    /// Whether the first step of a handshake accepted after `DTLSv1_listen` is still to run
    /// ([`run_first_step`](Self::run_first_step)).
    pub(crate) fn first_step_pending(&self) -> bool {
        self.hs().first_step_pending
    }

    /// Runs the first step of a handshake accepted after `DTLSv1_listen`, if it has not run:
    /// `SSL_do_handshake` reads the verified ClientHello and writes the server's first flight
    /// (ServerHello ... ServerHelloDone: the ECDHE key and, with a certificate, its signature).
    /// A handshake that fails at once (no shared cipher, ...) fails here, its alert queued for
    /// [`poll_transmit`](Self::poll_transmit).
    #[doc(alias = "SSL_do_handshake")]
    pub(crate) fn run_first_step(&mut self, now: Instant) {
        if self.hs().first_step_pending {
            self.hs_mut().first_step_pending = false;
            self.drive(now);
        }
    }

    fn check_not_failed(&self) -> Result<()> {
        match self.error() {
            Some(e) => Err(e.duplicate()),
            None => Ok(()),
        }
    }

    /// Feeds one datagram received from the peer. Malformed, replayed or unauthenticated records
    /// are dropped silently by OpenSSL (RFC 6347 §4.1.2.7); a fatal alert or protocol violation
    /// fails the session. During the handshake, unauthenticated (epoch-0) alerts and
    /// out-of-place HelloVerifyRequests never reach OpenSSL: they are counted, and a fatal alert
    /// is held and reported only if the handshake then stalls (see
    /// [`handle_timeout`](Self::handle_timeout) and `SECURITY-CONSIDERATIONS.md` §3.13).
    #[doc(alias = "SSL_read")]
    #[doc(alias = "SSL_do_handshake")]
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        if datagram.is_empty() || matches!(self.state, SessionState::Failed) {
            return;
        }
        match crate::wire::parse_cid(datagram, self.own_cid_len()) {
            Ok(parsed) => self.handle_parsed(now, &parsed),
            Err(reason) => {
                self.stats.add(Traffic::DatagramsIn, 1);
                self.stats.add(Traffic::BytesIn, datagram.len() as u64);
                self.stats.dropped_malformed += 1;
                log::trace!("{:?}: dropped a malformed datagram: {reason}", self.peer);
            }
        }
    }

    /// [`handle_datagram`](Self::handle_datagram) for a datagram the endpoint has parsed already:
    /// every decision below reads its record views, none parses the bytes again.
    pub(crate) fn handle_parsed(&mut self, now: Instant, parsed: &Parsed<'_>) {
        if matches!(self.state, SessionState::Failed) {
            return;
        }
        self.stats.add(Traffic::DatagramsIn, 1);
        self.stats
            .add(Traffic::BytesIn, parsed.bytes().len() as u64);
        if self.state == SessionState::Handshaking
            && self.engine.compact().is_none()
            && parsed.cid().is_some()
        {
            self.handle_handshake_cid(now, parsed);
            return;
        }
        self.handle_standard(now, parsed);
    }

    /// Whether this session moves to the compact record layer: compact mode, or a connection
    /// with Connection IDs.
    fn compact_mode(&self) -> bool {
        self.config.compact || self.cid.is_some()
    }

    /// A datagram on the path of standard records (and, once the compact layer exists, its
    /// `tls12_cid` records too).
    fn handle_standard(&mut self, now: Instant, parsed: &Parsed<'_>) {
        let shape = Shape::of(parsed, usize::from(self.min_protected_len));
        // Compact mode: once the compact layer exists, and during the handshake whenever the
        // datagram carries epoch-1 application or alert records (withheld from OpenSSL). A
        // session whose suite the compact layer cannot carry stays on OpenSSL's path.
        if self.compact_mode()
            && (self.engine.compact().is_some()
                || (self.state == SessionState::Handshaking && shape.compact_records))
        {
            if self.state != SessionState::Closed {
                self.handle_compact_datagram(now, parsed);
            }
            return;
        }
        if shape.short {
            // Shorter than the suite's explicit nonce plus tag: cannot authenticate. Dropped
            // before OpenSSL, which some versions answer with a fatal internal_error that would
            // end an established connection (CVE-2026-75806).
            self.stats.dropped_short_records += 1;
            return;
        }
        if self.state == SessionState::Closed {
            return;
        }
        let filter = self.epoch_filter();
        if shape.later == 0 && !filter.limits(&shape) {
            self.charge_epoch1(shape.epoch1);
            self.feed_openssl(now, parsed, None);
            return;
        }
        // Records OpenSSL would buffer: keep them out (see `MAX_HANDSHAKE_EPOCH1_RECORDS`).
        self.feed_openssl(now, parsed, Some(&|r| filter.keep(r)));
        self.settle_filter(&filter);
    }

    /// Moves the next datagram to send to the peer into `buf` and returns its length, or `None`
    /// when there is nothing to send. `buf` should hold [`mtu`](Self::mtu) bytes: a datagram
    /// longer than `buf` is dropped and counted, never truncated.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<usize> {
        if self.engine.openssl().is_some() {
            let st = self.bio_mut();
            let before = st.outbound_dropped;
            let n = st.pop_outbound(buf);
            let dropped = st.outbound_dropped - before;
            self.stats.add(Traffic::SendDropped, dropped);
            if let Some(len) = n {
                self.stats.add(Traffic::DatagramsOut, 1);
                self.stats.add(Traffic::BytesOut, len as u64);
                return n;
            }
        }
        let compact = self.engine.compact_mut()?;
        let mut dropped = 0;
        let n = bio::pop_datagram(
            compact.outbound.storage_mut()?,
            buf,
            &mut dropped,
            record::give_buffer,
        );
        self.stats.add(Traffic::SendDropped, dropped);
        // Drained: the queue's storage goes back to the pool (an idle session holds none).
        compact.outbound.release();
        if let Some(len) = n {
            self.stats.add(Traffic::DatagramsOut, 1);
            self.stats.add(Traffic::BytesOut, len as u64);
        }
        n
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has a datagram.
    pub fn has_transmit(&self) -> bool {
        (self.engine.openssl().is_some() && self.bio_ref().outbound_len() > 0)
            || self
                .engine
                .compact()
                .is_some_and(|c| !c.outbound.is_empty())
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next: the retransmission
    /// timer while a flight is unacknowledged, and the handshake deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            SessionState::Handshaking => {
                let deadline = self.handshake_deadline();
                let deadline = self
                    .hs()
                    .held_alert
                    .map_or(deadline, |h| h.fail_at.min(deadline));
                Some(
                    self.hs()
                        .retransmit_at
                        .map_or(deadline, |at| at.min(deadline)),
                )
            }
            SessionState::Established => {
                let linger = self.linger_until();
                earliest(self.hs().retransmit_at, linger)
            }
            SessionState::Closed | SessionState::Failed => None,
        }
    }

    /// When the handshake must have completed.
    pub fn handshake_deadline(&self) -> Instant {
        self.started + self.config.handshake_timeout
    }

    /// Handles expired timers: retransmits the last flight (`DTLSv1_handle_timeout`), or fails
    /// the session with [`Error::Timeout`] past the handshake deadline or retransmission cap.
    ///
    /// A handshake that received an unauthenticated fatal alert (epoch 0, which anyone who knows
    /// the two addresses can forge) and made no progress since fails with that alert as
    /// [`Error::PeerAlert`] at the next retransmission timeout (at least
    /// [`SessionConfig::retransmit_initial`] after the alert); the same alert is the error if
    /// the deadline or the retransmission cap ends the handshake first.
    #[doc(alias = "DTLSv1_handle_timeout")]
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            SessionState::Failed | SessionState::Closed => return,
            SessionState::Handshaking if now >= self.handshake_deadline() => {
                log::debug!(
                    "handshake with {:?} timed out after {:?}",
                    self.peer,
                    self.config.handshake_timeout
                );
                self.fail_handshake_timeout(TimeoutPhase::Handshake);
                return;
            }
            SessionState::Handshaking if self.hs().held_alert.is_some_and(|h| now >= h.fail_at) => {
                log::debug!(
                    "handshake with {:?}: no progress since the peer's alert",
                    self.peer
                );
                self.fail_handshake_timeout(TimeoutPhase::Retransmissions);
                return;
            }
            _ => {}
        }
        if let Some(until) = self.linger_until() {
            if now >= until {
                log::debug!(
                    "{:?}: linger over, handing off to the compact layer",
                    self.peer
                );
                self.hand_off();
                return;
            }
        }
        let Some(at) = self.hs().retransmit_at else {
            return;
        };
        if now < at || self.engine.openssl().is_none() {
            return;
        }
        if self.state == SessionState::Handshaking
            && self.bio_ref().timeouts >= self.config.max_retransmits
        {
            log::debug!("handshake with {:?}: retransmission cap reached", self.peer);
            self.fail_handshake_timeout(TimeoutPhase::Retransmissions);
            return;
        }
        let st = self.bio_mut();
        st.now = Some(now);
        st.coalesce = true; // OpenSSL retransmits one message per write: pack them
        let r = ssl::handle_timeout(&self.openssl().ssl);
        self.bio_mut().coalesce = false;
        if r < 0 {
            let stack = ErrorStack::get();
            log::debug!("OpenSSL gave up retransmitting: {stack}");
            self.fail_handshake_timeout(TimeoutPhase::Retransmissions);
            return;
        }
        ssl::clear_errors();
        self.transcode_outbound_queue();
        self.stats.retransmits = self.bio_ref().timeouts;
        self.update_timer(now);
    }

    /// Whether [`handle_timeout`](Self::handle_timeout) at `now` would retransmit the
    /// handshake's last flight (`DTLSv1_handle_timeout`), rather than end the handshake or do
    /// nothing: a step that writes datagrams, which a driver may run off its own thread.
    pub(crate) fn retransmission_due(&self, now: Instant) -> bool {
        self.state == SessionState::Handshaking
            && now < self.handshake_deadline()
            && self.hs().held_alert.is_none_or(|h| now < h.fail_at)
            && self.hs().retransmit_at.is_some_and(|at| now >= at)
            && self.engine.openssl().is_some()
            && self.bio_ref().timeouts < self.config.max_retransmits
    }

    /// Sends one application datagram (`SSL_write`). It must fit one record within the MTU
    /// ([`data_mtu`](Self::data_mtu)); a larger payload is refused with
    /// [`Error::PayloadTooLarge`], never split or truncated. An empty payload sends nothing.
    #[doc(alias = "SSL_write")]
    pub fn send(&mut self, data: &[u8]) -> Result<()> {
        self.usable()?;
        if data.len() > self.data_mtu() {
            return Err(Error::PayloadTooLarge {
                len: data.len(),
                max: self.data_mtu(),
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        if self.engine.openssl().is_none() {
            return self.send_compact(ContentType::ApplicationData, data);
        }
        let (r, written) = ssl::write(&self.openssl().ssl, data);
        // A lingering CID connection: OpenSSL's record gets the peer's CID.
        self.transcode_outbound_queue();
        if r == 1 && written == data.len() {
            self.stats.add(Traffic::AppOut, 1);
            return Ok(());
        }
        self.on_ssl_error(r);
        self.check_not_failed()?;
        Err(Error::Closed)
    }

    /// Sends several application datagrams, each in its own record and datagram: what as many
    /// [`send`](Self::send) calls in order would do (each checked against the data MTU when
    /// its turn comes; empty ones send nothing; the send queue's bound, statistics and errors
    /// the same), stopping at the first error, the datagrams before it sent. On the compact
    /// record layer the records are sealed in runs, up to 8 in one call of the record layer
    /// (one look-up of its per-thread cipher contexts for the run); on OpenSSL's record layer
    /// each is one `SSL_write`.
    #[doc(alias = "SSL_write")]
    pub fn send_many(&mut self, datagrams: &[&[u8]]) -> Result<()> {
        let mut rest = datagrams;
        while let Some((first, more)) = rest.split_first() {
            if self.engine.openssl().is_none() && self.engine.compact().is_some() {
                let taken = self.send_compact_run(rest)?;
                rest = &rest[taken..];
            } else {
                self.send(first)?;
                rest = more;
            }
        }
        Ok(())
    }

    /// Takes the next received application datagram into `buf`: `Ok(Some(n))` with its length
    /// (a datagram longer than `buf` is truncated, as UDP's `recv` does), `Ok(None)` if none is
    /// waiting, `Err(Error::Closed)` once the session is closed and the queue drained, or the
    /// session's error once it failed and the queue drained.
    #[doc(alias = "SSL_read")]
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        if let Some(datagram) = self.received.pop_front() {
            // Queued bytes are counted by capacity: what the queue holds in memory (see
            // `push_received` and `push_received_buffer`).
            self.received_bytes -= datagram.capacity() as u32; // counted in, so it fits
                                                               // The datagram starts at `PLAINTEXT_AT`, where its record was opened.
            let data = datagram.get(record::PLAINTEXT_AT..).unwrap_or_default();
            let n = data.len().min(buf.len());
            buf[..n].copy_from_slice(&data[..n]);
            // Back to the pool the next received datagram comes from: a steady flow allocates
            // nothing, and an idle session holds no buffer.
            record::give_buffer(datagram);
            return Ok(Some(n));
        }
        match self.state {
            SessionState::Failed => Err(self.error().map_or(Error::Closed, Error::duplicate)),
            SessionState::Closed => Err(Error::Closed),
            _ => Ok(None),
        }
    }

    /// Whether `more` bytes (a buffer's capacity) fit the receive queue's byte limit,
    /// `recv_queue_bytes` (counted as at most 4 GiB: the count is 32 bits).
    fn received_fits(&self, more: usize) -> bool {
        let limit = self.config.recv_queue_bytes.min(u32::MAX as usize);
        (self.received_bytes as usize).saturating_add(more) <= limit
    }

    /// Counts a buffer of `capacity` bytes into the receive queue (after
    /// [`received_fits`](Self::received_fits)).
    fn count_received(&mut self, capacity: usize) {
        self.received_bytes = self
            .received_bytes
            .saturating_add(u32::try_from(capacity).unwrap_or(u32::MAX));
    }

    /// Whether [`recv`](Self::recv) has a datagram waiting.
    pub fn has_received(&self) -> bool {
        !self.received.is_empty()
    }

    /// Whether the receive queue is full or nearly ([`SessionConfig::recv_queue`] and
    /// `recv_queue_bytes`): another datagram's records might not fit (a margin of four records
    /// and one data MTU). The blocking driver stops reading the socket for this connection's
    /// reader then, for a bounded time, instead of dropping.
    pub(crate) fn recv_queue_nearly_full(&self) -> bool {
        self.received.len() + 4 > self.config.recv_queue
            || !self.received_fits(self.data_mtu().max(MIN_MTU))
    }

    /// How many more datagrams of records the receive queue takes before it is
    /// [nearly full](Self::recv_queue_nearly_full) (one record per datagram, one data MTU each).
    pub(crate) fn recv_queue_room(&self) -> usize {
        let records = self
            .config
            .recv_queue
            .saturating_sub(self.received.len() + 4);
        let bytes = self
            .config
            .recv_queue_bytes
            .min(u32::MAX as usize)
            .saturating_sub(self.received_bytes as usize + self.data_mtu().max(MIN_MTU))
            / self.data_mtu().max(MIN_MTU);
        records.min(bytes)
    }

    /// Closes the session: sends `close_notify` if established (`SSL_shutdown`). Queued received
    /// data can still be read. Closing twice, or a failed session, does nothing.
    #[doc(alias = "SSL_shutdown")]
    pub fn close(&mut self) {
        match self.state {
            SessionState::Established => {
                self.shutdown();
                self.state = SessionState::Closed;
                self.clear_retransmit();
                if self.engine.compact().is_some() {
                    self.hand_off(); // the SSL has nothing left to do
                }
            }
            SessionState::Handshaking => {
                self.state = SessionState::Closed;
                self.clear_retransmit();
            }
            SessionState::Closed | SessionState::Failed => {}
        }
    }

    /// How much authenticated input the session has seen (a count that only moves forward,
    /// modulo 2^32: compare it before and after a call, never across calls): records that
    /// decrypted and handshake progress. Unauthenticated records (forged, replayed, plaintext
    /// alerts) never move it.
    pub(crate) fn authenticated_count(&self) -> u32 {
        self.authenticated
    }

    /// The peer's `close_notify` arrived (on either record layer): answer it if established,
    /// and close.
    fn peer_closed(&mut self) {
        log::debug!("peer {:?} sent close_notify", self.peer);
        self.closed_by_peer = true;
        if self.state == SessionState::Established {
            self.shutdown();
        }
        self.state = SessionState::Closed;
        self.clear_retransmit();
    }

    /// Ends the session with `error`, telling an established peer with `close_notify` (the
    /// endpoint's idle timeout and eviction: the peer may still be awake, and then learns at once
    /// that its association is gone instead of sending into the void).
    pub(crate) fn end_with_close_notify(&mut self, error: Error) {
        if self.state == SessionState::Established {
            self.shutdown();
            if self.engine.compact().is_some() {
                self.hand_off(); // the SSL has nothing left to do
            }
        }
        if !matches!(self.state, SessionState::Closed | SessionState::Failed) {
            self.fail(error);
        }
    }

    fn usable(&self) -> Result<()> {
        match self.state {
            SessionState::Established => Ok(()),
            SessionState::Handshaking => Err(Error::NotConnected),
            SessionState::Closed => Err(Error::Closed),
            SessionState::Failed => Err(self.error().map_or(Error::Closed, Error::duplicate)),
        }
    }

    fn fail(&mut self, error: Error) {
        self.state = SessionState::Failed;
        self.hs_mut().error = Some(Box::new(error));
        self.clear_retransmit();
    }
}

/// The earlier of two optional deadlines.
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
