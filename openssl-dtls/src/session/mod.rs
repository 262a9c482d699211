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
use std::time::{Duration, Instant};

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ssl::{Ssl, SslOptions, SslRef, SslVersion};
use openssl::x509::X509;
use openssl_dtls_sys as dffi;
use openssl_sys as ffi;

use crate::bio::{self, BioHandle, BioState, TimerSettings};
use crate::error::{Alert, ConfigError, Error, Result, TimeoutPhase};
use crate::plaintext::{self, Screen};
use crate::record::{self, OpenError, RecordLayer, SealError};
use crate::session::engine::{Compact, Engine, OpenSsl, SslFacts};
use crate::wire::{ContentType, RecordHeader};

mod engine;

pub use crate::config::{SessionConfig, MAX_MTU, MAX_PLAINTEXT, MIN_MTU};

/// Sets up `ssl` the way every session needs it: DTLS 1.2 minimum, no renegotiation, no
/// compression, `SSL_OP_NO_QUERY_MTU` with the configured link MTU, and our datagram BIO with the
/// retransmission timer and alert callbacks. Returns the BIO's state.
pub(crate) fn configure_ssl(ssl: &mut SslRef, config: &SessionConfig) -> Result<BioHandle> {
    config.validate()?;
    ssl.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    let options =
        SslOptions::NO_QUERY_MTU | SslOptions::NO_RENEGOTIATION | SslOptions::NO_COMPRESSION;
    // SAFETY: `ssl` is a valid SSL; SSL_set_options only sets bits.
    unsafe {
        dffi::SSL_set_options(ssl.as_ptr(), options.bits());
    }
    let timer = TimerSettings {
        initial: config.retransmit_initial,
        max: config.retransmit_max,
    };
    let mut bio = bio::attach(ssl, config.mtu, config.send_queue, timer)?;
    bio.get_mut().track_epoch1 = config.compact;
    // SAFETY: `ssl` is valid and has our BIO; DTLS_set_link_mtu only stores the value (it fails
    // for values below OpenSSL's minimum, which validate() excludes).
    let ok = unsafe { dffi::DTLS_set_link_mtu(ssl.as_ptr(), config.mtu as _) };
    if ok != 1 {
        return Err(Error::Config(ConfigError::OutOfRange {
            setting: "mtu",
            value: config.mtu as u64,
            allowed: "at least OpenSSL's DTLS_get_link_min_mtu",
        }));
    }
    // No record we send carries more plaintext than fits one datagram (handshake fragments and
    // application data are both capped by the MTU), so size OpenSSL's write buffer to it:
    // ≈ 1.5 KB instead of ≈ 17 KB per connection. OpenSSL accepts 512 to 16384.
    let fragment = config.mtu.clamp(512, MAX_PLAINTEXT);
    // SAFETY: `ssl` is valid; the macro only stores the value before any buffer exists.
    unsafe { dffi::SSL_set_max_send_fragment(ssl.as_ptr(), fragment as _) };
    Ok(bio)
}

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

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Datagrams passed to [`Session::handle_datagram`].
    pub datagrams_in: u64,
    /// Datagrams returned by [`Session::poll_transmit`].
    pub datagrams_out: u64,
    /// Application datagrams delivered to [`Session::recv`].
    pub app_in: u64,
    /// Application datagrams accepted by [`Session::send`].
    pub app_out: u64,
    /// Received application datagrams dropped because the receive queue was full.
    pub recv_dropped: u64,
    /// Outgoing datagrams dropped (send queue full, or larger than the transmit buffer).
    pub send_dropped: u64,
    /// Retransmission timeouts that fired.
    pub retransmits: u32,
    /// Protected records dropped because they were shorter than the cipher's nonce plus tag.
    pub dropped_short_records: u64,
    /// Compact mode: records dropped as replays or as older than the 64-record window.
    pub dropped_replayed_records: u64,
    /// Compact mode: records dropped because they did not authenticate (forged, corrupted,
    /// wrong epoch or version).
    pub dropped_unauthenticated_records: u64,
    /// Compact mode: handshake-layer records (a retransmitted final flight, a renegotiation
    /// request) that arrived after the `SSL` was freed, and early records beyond the buffer.
    pub dropped_handshake_records: u64,
    /// Records kept from OpenSSL because it would buffer them (a full ≈ 18 KB read buffer each,
    /// up to 100 per queue): records of epoch 2 or later (DTLS 1.2 without renegotiation never
    /// uses them), and epoch-1 records during the handshake beyond
    /// [`MAX_HANDSHAKE_EPOCH1_RECORDS`].
    pub dropped_excess_records: u64,
    /// Bytes of the datagrams passed to [`Session::handle_datagram`].
    pub bytes_in: u64,
    /// Bytes of the datagrams returned by [`Session::poll_transmit`].
    pub bytes_out: u64,
    /// Unauthenticated (epoch-0) alerts received during the handshake and kept from OpenSSL: a
    /// fatal one is reported only if the handshake then stalls (see
    /// [`Session::handle_timeout`]), so a spoofed alert cannot end it.
    pub held_alerts: u64,
    /// Compact mode, after the hand-off: authenticated renegotiation requests (a ClientHello to
    /// a server, a HelloRequest to a client) answered with a `no_renegotiation` warning, as
    /// OpenSSL does with `SSL_OP_NO_RENEGOTIATION`. Requests beyond
    /// [`MAX_RENEGOTIATION_REFUSALS`] per connection are dropped and counted in
    /// [`dropped_handshake_records`](Self::dropped_handshake_records).
    pub renegotiations_refused: u64,
    /// Records carrying a HelloVerifyRequest that was out of place (to a server, after the
    /// client read a ServerHello or already answered one) or malformed: dropped before OpenSSL,
    /// which would end the handshake with `unexpected_message`.
    pub dropped_hello_verify_requests: u64,
}

/// Epoch-1 records a handshake gives OpenSSL before OpenSSL has read the peer's
/// ChangeCipherSpec. OpenSSL keeps each epoch-1 record that arrives before it can decrypt it, a
/// full ≈ 18 KB read buffer apiece, up to 100 (≈ 1.8 MB): what a hostile peer past the cookie
/// exchange would fill. A genuine peer sends its ChangeCipherSpec just before its Finished, so
/// only reordering or loss puts one of its epoch-1 records here.
///
/// Of these, at most [`MAX_HANDSHAKE_EPOCH1_ALONE`] may arrive in datagrams without a
/// ChangeCipherSpec before them; the rest are kept for records that follow one in the same
/// datagram (a flight sent as one datagram). Once OpenSSL has read the ChangeCipherSpec,
/// epoch-1 records are decrypted (or dropped) at once and pass freely: an off-path attacker who
/// spends the budget with forged records delays a handshake by one retransmission at most.
pub const MAX_HANDSHAKE_EPOCH1_RECORDS: usize = 12;

/// Epoch-1 records before OpenSSL has read the peer's ChangeCipherSpec that may arrive without
/// one before them in their datagram (see [`MAX_HANDSHAKE_EPOCH1_RECORDS`]).
pub const MAX_HANDSHAKE_EPOCH1_ALONE: usize = 8;

/// Decides, record by record, which records of one datagram OpenSSL may see: never epoch 2 or
/// later; during the handshake, until OpenSSL has read the peer's ChangeCipherSpec, epoch-1
/// records within [`MAX_HANDSHAKE_EPOCH1_ALONE`] / [`MAX_HANDSHAKE_EPOCH1_RECORDS`].
struct EpochFilter {
    /// Whether epoch-1 records are limited (handshaking, ChangeCipherSpec not read yet).
    limited: bool,
    /// Epoch-1 records given to OpenSSL in this handshake before this datagram.
    used: usize,
    /// A ChangeCipherSpec came earlier in this datagram.
    ccs: Cell<bool>,
    /// Epoch-1 records of this datagram let through while limited.
    passed: Cell<usize>,
    /// Records of this datagram kept away from OpenSSL.
    dropped: Cell<u64>,
}

impl EpochFilter {
    /// Whether `epoch1` more epoch-1 records (with no ChangeCipherSpec) would be over the limit.
    fn limits(&self, epoch1: usize) -> bool {
        self.limited && self.used + epoch1 > MAX_HANDSHAKE_EPOCH1_ALONE
    }

    fn keep(&self, r: &RecordHeader<'_>) -> bool {
        let keep = match r.epoch() {
            0 => {
                if r.content_type() == ContentType::ChangeCipherSpec {
                    self.ccs.set(true);
                }
                true
            }
            1 if !self.limited => true,
            1 => {
                let cap = if self.ccs.get() {
                    MAX_HANDSHAKE_EPOCH1_RECORDS
                } else {
                    MAX_HANDSHAKE_EPOCH1_ALONE
                };
                let ok = self.used + self.passed.get() < cap;
                if ok {
                    self.passed.set(self.passed.get() + 1);
                }
                ok
            }
            _ => false,
        };
        if !keep {
            self.dropped.set(self.dropped.get() + 1);
        }
        keep
    }
}

/// One peer's DTLS state around one `SSL`: see the [module documentation](self).
pub struct Session {
    /// The record layer in use and the `SSL` while it exists: see [`engine`].
    engine: Engine,
    /// Compact mode, during the handshake: epoch-1 application and alert records withheld from
    /// OpenSSL until the compact layer has keys (at most [`MAX_EARLY_RECORDS`]).
    early: Vec<Vec<u8>>,
    role: Role,
    state: SessionState,
    error: Option<Error>,
    closed_by_peer: bool,
    config: SessionConfig,
    started: Instant,
    retransmit_at: Option<Instant>,
    received: VecDeque<Vec<u8>>,
    received_bytes: usize,
    spare: Vec<Vec<u8>>,
    data_mtu: usize,
    /// The shortest protected (epoch ≥ 1) record the negotiated AEAD can produce; 0 = no check.
    min_protected_len: usize,
    peer: Option<SocketAddr>,
    stats: SessionStats,
    /// Authenticated input seen: records that decrypted (application data, alerts) and
    /// handshake progress. The endpoint's idle clock moves only when this does.
    authenticated: u64,
    /// Epoch-1 records given to OpenSSL during the handshake (at most
    /// [`MAX_HANDSHAKE_EPOCH1_RECORDS`] until `peer_ccs_read`).
    handshake_epoch1: usize,
    /// OpenSSL has read the peer's ChangeCipherSpec in this handshake: it decrypts epoch-1
    /// records from now on instead of buffering them.
    peer_ccs_read: bool,
    /// The latest unauthenticated fatal alert received during the handshake, kept from OpenSSL.
    held_alert: Option<HeldAlert>,
    /// A client's OpenSSL has been given a HelloVerifyRequest (only one is accepted).
    hello_verify_accepted: bool,
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
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Spare plaintext buffers kept per session.
const MAX_SPARE_PLAINTEXT: usize = 2;

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

/// Whether a compact session's record goes to the compact layer (rather than OpenSSL).
fn is_compact_record(record: &RecordHeader<'_>) -> bool {
    record.epoch() >= 1
        && matches!(
            record.content_type(),
            ContentType::ApplicationData | ContentType::Alert
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
            early: Vec::new(),
            role,
            state: SessionState::Handshaking,
            error: None,
            closed_by_peer: false,
            config: config.clone(),
            started: now,
            retransmit_at: None,
            received: VecDeque::new(),
            received_bytes: 0,
            spare: Vec::new(),
            data_mtu: 0,
            min_protected_len: 0,
            peer: None,
            stats: SessionStats::default(),
            authenticated: 0,
            handshake_epoch1: 0,
            peer_ccs_read: false,
            held_alert: None,
            hello_verify_accepted: false,
        };
        session.bio_mut().now = Some(now);
        Ok(session)
    }

    /// A server session on an `SSL` whose `DTLSv1_listen` just verified a ClientHello's cookie;
    /// the handshake continues from that ClientHello on the next call.
    pub(crate) fn accepted(
        ssl: Ssl,
        bio: BioHandle,
        peer: SocketAddr,
        config: &SessionConfig,
        now: Instant,
    ) -> Result<Session> {
        let mut session = Session::prepare(ssl, Role::Server, config, now, Some(bio))?;
        session.peer = Some(peer);
        // A handshake that fails at once (no shared cipher, ...) is returned failed, so that its
        // alert is still transmitted and the failure counted.
        session.drive(now);
        Ok(session)
    }

    fn check_not_failed(&self) -> Result<()> {
        match &self.error {
            Some(e) => Err(e.duplicate()),
            None => Ok(()),
        }
    }

    /// The OpenSSL side. Only called on paths that run while the `SSL` exists (handshaking,
    /// or established on OpenSSL's record layer, or lingering).
    fn openssl(&self) -> &OpenSsl {
        self.engine
            .openssl()
            .expect("a session has its SSL until the hand-off")
    }

    fn openssl_mut(&mut self) -> &mut OpenSsl {
        self.engine
            .openssl_mut()
            .expect("a session has its SSL until the hand-off")
    }

    fn ssl_mut(&mut self) -> &mut SslRef {
        &mut self.openssl_mut().ssl
    }

    /// The `SSL` pointer, for the calls rust-openssl lacks.
    fn ssl_ptr(&self) -> *mut ffi::SSL {
        self.openssl().ssl.as_ptr()
    }

    /// The BIO state. Never hold the reference across a call into OpenSSL on this `SSL`.
    fn bio_mut(&mut self) -> &mut BioState {
        self.openssl_mut().bio.get_mut()
    }

    fn bio_ref(&self) -> &BioState {
        self.openssl().bio.get()
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
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        // Compact mode: once the compact layer exists, and during the handshake whenever the
        // datagram carries epoch-1 application or alert records (withheld from OpenSSL). A
        // session whose suite the compact layer cannot carry stays on OpenSSL's path.
        if self.config.compact
            && (self.engine.compact().is_some()
                || (self.state == SessionState::Handshaking
                    && crate::wire::records(datagram)
                        .flatten()
                        .any(|r| is_compact_record(&r))))
        {
            if self.state != SessionState::Closed {
                self.handle_compact_datagram(now, datagram);
            }
            return;
        }
        if self.min_protected_len > 0
            && has_short_protected_record(datagram, self.min_protected_len)
        {
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
        let (epoch1, later) = count_protected(datagram);
        if later == 0 && !filter.limits(epoch1) {
            self.charge_epoch1(epoch1);
            self.feed_openssl(now, datagram, None);
            return;
        }
        // Records OpenSSL would buffer: keep them out (see `MAX_HANDSHAKE_EPOCH1_RECORDS`).
        self.feed_openssl(now, datagram, Some(&|r| filter.keep(r)));
        self.settle_filter(&filter);
    }

    /// The filter that keeps records OpenSSL would buffer away from it (see
    /// [`MAX_HANDSHAKE_EPOCH1_RECORDS`]).
    fn epoch_filter(&self) -> EpochFilter {
        EpochFilter {
            limited: self.state == SessionState::Handshaking && !self.peer_ccs_read,
            used: self.handshake_epoch1,
            ccs: Cell::new(false),
            passed: Cell::new(0),
            dropped: Cell::new(0),
        }
    }

    /// Books what `filter` let through and dropped.
    fn settle_filter(&mut self, filter: &EpochFilter) {
        self.stats.dropped_excess_records += filter.dropped.get();
        if filter.limited {
            self.handshake_epoch1 += filter.passed.get();
        }
    }

    fn charge_epoch1(&mut self, n: usize) {
        if self.state == SessionState::Handshaking && !self.peer_ccs_read {
            self.handshake_epoch1 += n;
        }
    }

    /// Gives `datagram` to OpenSSL (only the records `keep` accepts, if given) and runs the
    /// handshake or reads records.
    fn feed_openssl(
        &mut self,
        now: Instant,
        datagram: &[u8],
        keep: Option<&dyn Fn(&RecordHeader<'_>) -> bool>,
    ) {
        let handshaking = self.state == SessionState::Handshaking;
        // SAFETY: `ssl` is valid; SSL_get_state only reads the state machine.
        let ssl_state = unsafe { dffi::SSL_get_state(self.ssl_ptr()) };
        let screened = if handshaking {
            self.screen_plaintext(now, datagram, keep, ssl_state)
        } else {
            None
        };
        let st = self.bio_mut();
        st.now = Some(now);
        match (screened, keep) {
            (Some(hello_verify_ok), keep) => st.set_inbound_filtered(datagram, |r| {
                keep.is_none_or(|keep| keep(r)) && passes_screen(r, hello_verify_ok)
            }),
            (None, Some(keep)) => st.set_inbound_filtered(datagram, keep),
            (None, None) => st.set_inbound(datagram),
        }
        if !st.has_inbound() {
            st.clear_inbound();
            return; // everything was screened out: OpenSSL has nothing to read
        }
        st.coalesce = true; // a retransmitted Finished makes OpenSSL retransmit its flight
                            // Whether OpenSSL is given an epoch-1 handshake record (the peer's Finished).
        let fed_finished = crate::wire::records(st.inbound())
            .flatten()
            .any(|r| r.epoch() == 1 && r.content_type() == ContentType::Handshake);
        let before = (self.state, self.handshake_state());
        self.drive(now);
        let after = (self.state, self.handshake_state());
        let progressed = match before.0 {
            SessionState::Handshaking => after != before,
            _ => false,
        };
        if progressed {
            self.authenticated += 1; // handshake progress
        }
        if after.0 == SessionState::Handshaking
            && matches!(
                after.1,
                dffi::TLS_ST_CR_CHANGE | dffi::TLS_ST_SR_CHANGE | dffi::TLS_ST_SR_FINISHED
            )
        {
            self.peer_ccs_read = true;
        }
        if handshaking && self.engine.openssl().is_some() && self.held_alert.is_some() {
            // SAFETY: as above.
            let after = unsafe { dffi::SSL_get_state(self.ssl_ptr()) };
            if self.held_alert.is_some_and(|h| h.ssl_state != after) {
                log::debug!(
                    "{:?}: the handshake moved on; the held alert was not the peer's last word",
                    self.peer
                );
                self.held_alert = None;
            }
        }
        if self.engine.openssl().is_some() {
            let st = self.bio_mut();
            st.coalesce = false;
            st.clear_inbound();
            if self.role == Role::Server && self.state == SessionState::Handshaking && fed_finished
            {
                self.check_finished_authenticated();
            }
        }
        self.feed_early_to_openssl(now);
    }

    /// During the handshake: counts and holds epoch-0 alerts and drops out-of-place
    /// HelloVerifyRequests (see [`crate::plaintext`]). Returns `None` if every record may go to
    /// OpenSSL, else `Some(hello_verify_ok)` for [`passes_screen`]: the filter to feed with.
    fn screen_plaintext(
        &mut self,
        now: Instant,
        datagram: &[u8],
        keep: Option<&dyn Fn(&RecordHeader<'_>) -> bool>,
        ssl_state: c_int,
    ) -> Option<bool> {
        // RFC 6347 §4.2.1: a HelloVerifyRequest answers the client's first ClientHello only.
        let hello_verify_ok = self.role == Role::Client
            && ssl_state == dffi::TLS_ST_CW_CLNT_HELLO
            && !self.hello_verify_accepted;
        let mut screened = false;
        for record in crate::wire::records(datagram).flatten() {
            // Only plaintext records are screened; `keep` sees each protected record once, when
            // the datagram is queued for OpenSSL (it counts them).
            if record.epoch() != 0 || keep.is_some_and(|keep| !keep(&record)) {
                continue;
            }
            match plaintext::screen(&record) {
                Screen::Feed => {}
                Screen::Alert(alert) => {
                    screened = true;
                    self.stats.held_alerts += 1;
                    let Some(alert) = alert.filter(Alert::is_fatal) else {
                        log::debug!(
                            "{:?}: dropped an unauthenticated warning alert during the handshake",
                            self.peer
                        );
                        continue;
                    };
                    // At least one initial retransmission interval for the handshake to show
                    // progress, and no less than until our next retransmission.
                    let fail_at = self
                        .retransmit_at
                        .unwrap_or(now)
                        .max(now + self.config.retransmit_initial);
                    log::debug!(
                        "{:?}: holding unauthenticated {alert} until {:?} from now",
                        self.peer,
                        fail_at - now
                    );
                    self.held_alert = Some(HeldAlert {
                        alert,
                        ssl_state,
                        fail_at,
                    });
                }
                Screen::HelloVerifyRequest { well_formed } => {
                    if hello_verify_ok && well_formed {
                        self.hello_verify_accepted = true;
                    } else {
                        screened = true;
                        self.stats.dropped_hello_verify_requests += 1;
                        log::debug!(
                            "{:?}: dropped an out-of-place or malformed HelloVerifyRequest",
                            self.peer
                        );
                    }
                }
            }
        }
        screened.then_some(hello_verify_ok)
    }

    /// A server that has read the client's ChangeCipherSpec (`TLS_ST_SR_CHANGE`) can receive
    /// only one epoch-1 record before it sends its own Finished: the client's Finished. If one
    /// arrived and the state did not advance, OpenSSL dropped it as unauthenticated (RFC 6347
    /// §4.1.2.7): the two sides derived different keys, which with PSK means a wrong key. Rather
    /// than wait out every retransmission, fail now with `decrypt_error` and tell the client in
    /// the clear (our write epoch is still 0), as TLS would (RFC 5246 §7.4.9).
    fn check_finished_authenticated(&mut self) {
        // SAFETY: `ssl` is valid; SSL_get_state only reads the state machine.
        let state = unsafe { dffi::SSL_get_state(self.ssl_ptr()) };
        if state != dffi::TLS_ST_SR_CHANGE {
            return;
        }
        let alert = Alert {
            level: 2,
            description: Alert::DECRYPT_ERROR,
        };
        let st = self.bio_mut();
        let seq = st.epoch0_next_seq.to_be_bytes();
        let mut record = [0u8; 15];
        record[0] = 21; // alert
        record[1..3].copy_from_slice(&[0xfe, 0xfd]);
        // epoch 0 (bytes 3..5), 48-bit sequence number
        record[5..11].copy_from_slice(&seq[2..8]);
        record[11..13].copy_from_slice(&2u16.to_be_bytes());
        record[13] = alert.level;
        record[14] = alert.description;
        st.push_outbound(&record);
        st.alert_sent = Some(alert);
        log::debug!(
            "the client's Finished from {:?} did not authenticate: wrong key?",
            self.peer
        );
        self.fail(Error::LocalAlert {
            alert,
            reason: "the peer's Finished message did not authenticate: the two sides derived different keys".to_owned(),
        });
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
            self.stats.send_dropped += dropped;
            if let Some(len) = n {
                self.stats.datagrams_out += 1;
                self.stats.bytes_out += len as u64;
                return n;
            }
        }
        let compact = self.engine.compact_mut()?;
        let n = bio::pop_datagram(
            &mut compact.outbound,
            buf,
            &mut self.stats.send_dropped,
            record::give_buffer,
        );
        if let Some(len) = n {
            self.stats.datagrams_out += 1;
            self.stats.bytes_out += len as u64;
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
                    .held_alert
                    .map_or(deadline, |h| h.fail_at.min(deadline));
                Some(self.retransmit_at.map_or(deadline, |at| at.min(deadline)))
            }
            SessionState::Established => {
                let linger = self.engine.linger_until();
                earliest(self.retransmit_at, linger)
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
            SessionState::Handshaking if self.held_alert.is_some_and(|h| now >= h.fail_at) => {
                log::debug!(
                    "handshake with {:?}: no progress since the peer's alert",
                    self.peer
                );
                self.fail_handshake_timeout(TimeoutPhase::Retransmissions);
                return;
            }
            _ => {}
        }
        if let Some(until) = self.engine.linger_until() {
            if now >= until {
                log::debug!(
                    "{:?}: linger over, handing off to the compact layer",
                    self.peer
                );
                self.hand_off();
                return;
            }
        }
        let Some(at) = self.retransmit_at else { return };
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
                            // SAFETY: `ssl` is valid; the queue is cleared first and drained after.
        let r = unsafe {
            ffi::ERR_clear_error();
            dffi::DTLSv1_handle_timeout(self.ssl_ptr())
        };
        self.bio_mut().coalesce = false;
        if r < 0 {
            let stack = ErrorStack::get();
            log::debug!("OpenSSL gave up retransmitting: {stack}");
            self.fail_handshake_timeout(TimeoutPhase::Retransmissions);
            return;
        }
        // SAFETY: plain queue reset.
        unsafe { ffi::ERR_clear_error() };
        self.stats.retransmits = self.bio_ref().timeouts;
        self.update_timer(now);
    }

    /// Fails a handshake that ran out of time: with the held unauthenticated alert if there is
    /// one (the likeliest reason the peer went quiet), else [`Error::Timeout`].
    fn fail_handshake_timeout(&mut self, phase: TimeoutPhase) {
        match self.held_alert.take() {
            Some(held) => {
                log::debug!("{:?}: failing with the held {}", self.peer, held.alert);
                self.fail(Error::PeerAlert(held.alert));
            }
            None => self.fail(Error::Timeout {
                peer: self.peer,
                phase,
            }),
        }
    }

    /// Sends one application datagram (`SSL_write`). It must fit one record within the MTU
    /// ([`data_mtu`](Self::data_mtu)); a larger payload is refused with
    /// [`Error::PayloadTooLarge`], never split or truncated. An empty payload sends nothing.
    #[doc(alias = "SSL_write")]
    pub fn send(&mut self, data: &[u8]) -> Result<()> {
        self.usable()?;
        if data.len() > self.data_mtu {
            return Err(Error::PayloadTooLarge {
                len: data.len(),
                max: self.data_mtu,
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        if self.engine.openssl().is_none() {
            return self.send_compact(ContentType::ApplicationData, data);
        }
        let mut written = 0usize;
        // SAFETY: `ssl` is valid; `data` is readable for its length.
        let r = unsafe {
            ffi::ERR_clear_error();
            ffi::SSL_write_ex(
                self.ssl_ptr(),
                data.as_ptr().cast(),
                data.len(),
                &mut written,
            )
        };
        if r == 1 && written == data.len() {
            self.stats.app_out += 1;
            return Ok(());
        }
        self.on_ssl_error(r);
        self.check_not_failed()?;
        Err(Error::Closed)
    }

    /// Takes the next received application datagram into `buf`: `Ok(Some(n))` with its length
    /// (a datagram longer than `buf` is truncated, as UDP's `recv` does), `Ok(None)` if none is
    /// waiting, `Err(Error::Closed)` once the session is closed and the queue drained, or the
    /// session's error once it failed and the queue drained.
    #[doc(alias = "SSL_read")]
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>> {
        if let Some(mut datagram) = self.received.pop_front() {
            self.received_bytes -= if self.engine.compact().is_some() {
                datagram.capacity() // see `push_received_buffer`
            } else {
                datagram.len()
            };
            let n = datagram.len().min(buf.len());
            buf[..n].copy_from_slice(&datagram[..n]);
            if self.engine.compact().is_some() {
                record::give_buffer(datagram);
            } else if self.spare.len() < MAX_SPARE_PLAINTEXT {
                datagram.clear();
                self.spare.push(datagram);
            }
            return Ok(Some(n));
        }
        match self.state {
            SessionState::Failed => {
                Err(self.error.as_ref().map_or(Error::Closed, Error::duplicate))
            }
            SessionState::Closed => Err(Error::Closed),
            _ => Ok(None),
        }
    }

    /// Whether [`recv`](Self::recv) has a datagram waiting.
    pub fn has_received(&self) -> bool {
        !self.received.is_empty()
    }

    /// Closes the session: sends `close_notify` if established (`SSL_shutdown`). Queued received
    /// data can still be read. Closing twice, or a failed session, does nothing.
    #[doc(alias = "SSL_shutdown")]
    pub fn close(&mut self) {
        match self.state {
            SessionState::Established => {
                self.shutdown();
                self.state = SessionState::Closed;
                self.retransmit_at = None;
                if self.engine.compact().is_some() {
                    self.hand_off(); // the SSL has nothing left to do
                }
            }
            SessionState::Handshaking => {
                self.state = SessionState::Closed;
                self.retransmit_at = None;
            }
            SessionState::Closed | SessionState::Failed => {}
        }
    }

    /// OpenSSL's handshake state (`SSL_get_state`), or -1 without an `SSL`.
    fn handshake_state(&self) -> c_int {
        match self.engine.ssl() {
            // SAFETY: `ssl` is valid; SSL_get_state only reads the state machine.
            Some(ssl) => unsafe { dffi::SSL_get_state(ssl.as_ptr()) },
            None => -1,
        }
    }

    /// How much authenticated input the session has seen (a count that only grows): records
    /// that decrypted and handshake progress. Unauthenticated records (forged, replayed,
    /// plaintext alerts) never move it.
    pub(crate) fn authenticated_count(&self) -> u64 {
        self.authenticated
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

    fn shutdown(&mut self) {
        if self.engine.openssl().is_none() {
            let alert = [1, Alert::CLOSE_NOTIFY]; // warning, close_notify
            let _ = self.send_compact(ContentType::Alert, &alert);
            return;
        }
        // SAFETY: `ssl` is valid and established; SSL_shutdown writes close_notify to our BIO.
        unsafe {
            ffi::ERR_clear_error();
            ffi::SSL_shutdown(self.ssl_ptr());
            ffi::ERR_clear_error();
        }
    }

    fn usable(&self) -> Result<()> {
        match self.state {
            SessionState::Established => Ok(()),
            SessionState::Handshaking => Err(Error::NotConnected),
            SessionState::Closed => Err(Error::Closed),
            SessionState::Failed => {
                Err(self.error.as_ref().map_or(Error::Closed, Error::duplicate))
            }
        }
    }

    /// Runs the handshake or reads records until OpenSSL wants another datagram.
    fn drive(&mut self, now: Instant) {
        loop {
            match self.state {
                SessionState::Handshaking => {
                    // SAFETY: `ssl` is valid; the error queue is cleared before the call.
                    let r = unsafe {
                        ffi::ERR_clear_error();
                        ffi::SSL_do_handshake(self.ssl_ptr())
                    };
                    if r == 1 {
                        self.on_established(now);
                        continue;
                    }
                    if !self.on_ssl_error(r) {
                        break;
                    }
                }
                SessionState::Established if self.engine.openssl().is_none() => break,
                SessionState::Established => {
                    let mut scratch = [0u8; MAX_PLAINTEXT];
                    let mut n = 0usize;
                    // SAFETY: `ssl` is valid; `scratch` is writable for its length.
                    let r = unsafe {
                        ffi::ERR_clear_error();
                        ffi::SSL_read_ex(
                            self.ssl_ptr(),
                            scratch.as_mut_ptr().cast(),
                            scratch.len(),
                            &mut n,
                        )
                    };
                    if r == 1 {
                        self.push_received(&scratch[..n]);
                        continue;
                    }
                    if !self.on_ssl_error(r) {
                        break;
                    }
                }
                SessionState::Closed | SessionState::Failed => break,
            }
        }
        // SAFETY: plain queue reset: noise (dropped records) must not linger in the queue.
        unsafe { ffi::ERR_clear_error() };
        self.update_timer(now);
    }

    /// Classifies a failed `SSL_*` return. Returns `true` if the caller may continue the loop
    /// (never, today: every outcome ends it), `false` when it should stop.
    fn on_ssl_error(&mut self, r: c_int) -> bool {
        // SAFETY: `ssl` is valid; SSL_get_error reads the return code and the error queue.
        let code = unsafe { ffi::SSL_get_error(self.ssl_ptr(), r) };
        match code {
            ffi::SSL_ERROR_WANT_READ | ffi::SSL_ERROR_WANT_WRITE => false,
            ffi::SSL_ERROR_ZERO_RETURN => {
                log::debug!("peer {:?} sent close_notify", self.peer);
                self.closed_by_peer = true;
                if self.state == SessionState::Established {
                    self.shutdown();
                }
                self.state = SessionState::Closed;
                self.retransmit_at = None;
                false
            }
            _ => {
                let stack = ErrorStack::get();
                let st = self.bio_ref();
                let error = if let Some(alert) = st.alert_received.filter(|a| a.is_fatal()) {
                    Error::PeerAlert(alert)
                } else if let Some(alert) = st.alert_sent.filter(|a| a.is_fatal()) {
                    let verified = match self.engine.ssl() {
                        Some(ssl) => crate::verify::failure(ssl, alert, stack),
                        None => Err(stack),
                    };
                    match verified {
                        Ok(failure) => Error::Verification(failure),
                        Err(stack) => Error::LocalAlert {
                            alert,
                            reason: stack.to_string(),
                        },
                    }
                } else {
                    Error::Ssl(stack)
                };
                log::debug!("session with {:?} failed: {error}", self.peer);
                self.fail(error);
                false
            }
        }
    }

    fn on_established(&mut self, now: Instant) {
        self.state = SessionState::Established;
        self.min_protected_len = self.cipher().map_or(0, min_protected_len);
        // SAFETY: `ssl` is valid and a cipher is negotiated.
        self.data_mtu = unsafe { dffi::DTLS_get_data_mtu(self.ssl_ptr()) };
        log::debug!(
            "handshake with {:?} complete: {} {} (data MTU {})",
            self.peer,
            self.protocol_version().unwrap_or("?"),
            self.cipher().unwrap_or("?"),
            self.data_mtu
        );
        if self.config.compact {
            self.start_compact(now);
        }
    }

    fn push_received(&mut self, data: &[u8]) {
        self.authenticated += 1; // OpenSSL returned it from SSL_read: it decrypted
        if data.is_empty() {
            return;
        }
        if self.received.len() >= self.config.recv_queue
            || self.received_bytes + data.len() > self.config.recv_queue_bytes
        {
            self.stats.recv_dropped += 1;
            return;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.extend_from_slice(data);
        self.received_bytes += buf.len();
        self.received.push_back(buf);
        self.stats.app_in += 1;
    }

    fn fail(&mut self, error: Error) {
        self.state = SessionState::Failed;
        self.error = Some(error);
        self.retransmit_at = None;
    }

    fn update_timer(&mut self, now: Instant) {
        if matches!(self.state, SessionState::Failed | SessionState::Closed)
            || self.engine.openssl().is_none()
        {
            self.retransmit_at = None;
            return;
        }
        let mut tv = dffi::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        // SAFETY: `ssl` is valid; `tv` is a writable timeval.
        let running = unsafe { dffi::DTLSv1_get_timeout(self.ssl_ptr(), &mut tv) } == 1;
        self.retransmit_at = running.then(|| {
            let left = Duration::from_secs(tv.tv_sec.max(0) as u64)
                + Duration::from_micros(tv.tv_usec.max(0) as u64);
            now + left
        });
    }

    /// Compact mode: routes a datagram's records. Epoch-1 application data and alerts go to the
    /// compact layer (or, before it has keys, to the early buffer); everything else (handshake
    /// records, a retransmitted final flight) goes to OpenSSL while the `SSL` exists, and is
    /// dropped and counted after the hand-off. OpenSSL therefore never decrypts an application
    /// record in compact mode, and the compact replay window sees every one.
    fn handle_compact_datagram(&mut self, now: Instant, datagram: &[u8]) {
        let mut for_openssl = false;
        let mut offset = 0;
        // Once established, a protected record too short for the suite's nonce and tag never
        // reaches OpenSSL, lingering or not (CVE-2026-75806; see `handle_datagram`).
        let min = self.min_protected_len;
        let too_short =
            move |r: &RecordHeader<'_>| min > 0 && r.epoch() >= 1 && r.fragment().len() < min;
        for record in crate::wire::records(datagram) {
            let Ok(record) = record else { break };
            let raw = &datagram[offset..offset + record.total_len()];
            offset += record.total_len();
            if !is_compact_record(&record) {
                if self.engine.openssl().is_none() {
                    self.open_handshake_record(&record);
                } else if too_short(&record) {
                    self.stats.dropped_short_records += 1;
                } else {
                    for_openssl = true;
                }
            } else if self.engine.compact().is_some() {
                self.open_record(&record);
            } else if self.state == SessionState::Handshaking
                && record.epoch() == 1
                && self.early.len() < MAX_EARLY_RECORDS
                && raw.len() <= self.config.mtu
            {
                let mut copy = record::take_buffer();
                copy.extend_from_slice(raw);
                self.early.push(copy);
            } else {
                self.stats.dropped_handshake_records += 1;
            }
            if matches!(self.state, SessionState::Closed | SessionState::Failed) {
                return;
            }
        }
        if !for_openssl || self.engine.openssl().is_none() {
            return;
        }
        let filter = self.epoch_filter();
        let keep = |r: &RecordHeader<'_>| !is_compact_record(r) && !too_short(r) && filter.keep(r);
        self.feed_openssl(now, datagram, Some(&keep));
        self.settle_filter(&filter);
    }

    /// Compact mode on a suite the compact layer cannot carry: the records withheld during the
    /// handshake go to OpenSSL after all, once it is established.
    fn feed_early_to_openssl(&mut self, now: Instant) {
        if self.early.is_empty()
            || self.engine.compact().is_some()
            || self.engine.openssl().is_none()
            || self.state != SessionState::Established
        {
            return;
        }
        for raw in std::mem::take(&mut self.early) {
            if self.state == SessionState::Established {
                self.bio_mut().set_inbound(&raw);
                self.drive(now);
                if self.engine.openssl().is_some() {
                    self.bio_mut().clear_inbound();
                }
            }
            record::give_buffer(raw);
        }
    }

    /// Compact mode, at the end of the handshake: derives the record layer's keys, opens the
    /// early records, and hands off at once if this side received the handshake's last flight
    /// (nothing of ours can need retransmitting), or lingers if it sent it.
    fn start_compact(&mut self, now: Instant) {
        let Some(ssl) = self.engine.ssl() else { return };
        let next_write_seq = self.bio_ref().epoch1_next_seq;
        let layer = match RecordLayer::from_ssl(ssl, self.role == Role::Client, 1, next_write_seq) {
            Ok(Some(layer)) => layer,
            Ok(None) => {
                log::debug!(
                    "{:?}: {} is not an AEAD suite the compact layer carries; staying on OpenSSL",
                    self.peer,
                    self.cipher().unwrap_or("?")
                );
                return; // early records go to OpenSSL (`feed_early_to_openssl`)
            }
            Err(e) => {
                log::warn!(
                    "{:?}: compact key derivation failed, staying on OpenSSL: {e}",
                    self.peer
                );
                return;
            }
        };
        // The side that sends the last flight: the server after a full handshake, the client
        // after an abbreviated (resumed) one.
        let sent_last = (self.role == Role::Server) != ssl.session_reused();
        let compact = Box::new(Compact {
            layer,
            outbound: VecDeque::new(),
            facts: None,
            renegotiation_refusals: 0,
        });
        // Transition: OpenSsl -> Lingering (we sent the last flight) or straight to Compact
        // (nothing of ours can need retransmitting). Hand off before opening the early records:
        // whatever they make us send (a close_notify in reply) is then written by the compact
        // layer alone.
        self.engine = match std::mem::replace(&mut self.engine, Engine::Switching) {
            Engine::OpenSsl(openssl) => Engine::Lingering {
                openssl,
                compact,
                until: now + self.config.compact_linger,
            },
            other => other,
        };
        if !sent_last {
            self.hand_off();
        }
        for raw in std::mem::take(&mut self.early) {
            if let Ok(record) = RecordHeader::new_checked(&raw) {
                if self.state == SessionState::Established {
                    self.open_record(&record);
                }
            }
            record::give_buffer(raw);
        }
    }

    /// Transition Lingering -> Compact: frees the `SSL`. What OpenSSL queued moves to the
    /// compact layer's queue, the write sequence continues after the last one OpenSSL used, and
    /// the handshake's facts are kept. Does nothing in any other state.
    fn hand_off(&mut self) {
        if !self.engine.is_lingering() {
            return;
        }
        let Engine::Lingering {
            mut openssl,
            mut compact,
            ..
        } = std::mem::replace(&mut self.engine, Engine::Switching)
        else {
            unreachable!("checked above");
        };
        let st = openssl.bio.get_mut();
        let mut queued = VecDeque::new();
        st.drain_outbound(&mut queued);
        queued.append(&mut compact.outbound);
        compact.outbound = queued;
        let next = compact.layer.next_write_seq().max(st.epoch1_next_seq);
        compact.layer.set_next_write_seq(next);
        if let Some(last) = st.epoch1_last_explicit {
            // OpenSSL's GCM explicit nonces count up from a random start: continue after its
            // last one, so no (key, nonce) pair repeats across the hand-off.
            compact.layer.continue_explicit_nonce_after(last);
        }
        self.stats.retransmits = st.timeouts;
        self.stats.send_dropped += st.outbound_dropped;
        compact.facts = Some(Box::new(SslFacts::of(&openssl.ssl)));
        self.retransmit_at = None;
        self.spare = Vec::new();
        // The connection lives on: free the SSL the way a clean shutdown would, so that
        // SSL_free does not mark its session unresumable and drop it from the session cache.
        // SAFETY: `ssl` is valid; SSL_set_shutdown only sets the flag.
        unsafe { ffi::SSL_set_shutdown(openssl.ssl.as_ptr(), ffi::SSL_SENT_SHUTDOWN) };
        drop(openssl); // SSL_free: the BIO and its state go with it
        self.engine = Engine::Compact(compact);
        log::debug!("{:?}: handed off to the compact record layer", self.peer);
    }

    /// Compact mode, after the hand-off: a handshake-layer record. Only an epoch-1 record that
    /// authenticates (same keys and replay window as application data) and holds a ClientHello
    /// to a server or a HelloRequest to a client is a renegotiation request; it is answered with
    /// a `no_renegotiation` warning, as OpenSSL answers with `SSL_OP_NO_RENEGOTIATION` (an
    /// OpenSSL peer would otherwise retransmit it until it gives up). Anything else (epoch 0,
    /// which is unauthenticated; a retransmitted Finished; a request past the bound) is dropped
    /// and counted.
    fn open_handshake_record(&mut self, record: &RecordHeader<'_>) {
        let Some(compact) = self.engine.compact_mut() else {
            return;
        };
        if record.epoch() == 0 || record.content_type() != ContentType::Handshake {
            self.stats.dropped_handshake_records += 1;
            return;
        }
        let mut plain = record::take_buffer();
        let opened = compact.layer.open(record, &mut plain);
        // The DTLS handshake header is 12 bytes: a shorter record holds no whole message header.
        let msg_type = (plain.len() >= crate::wire::HANDSHAKE_HEADER_LEN).then(|| plain[0]);
        record::give_buffer(plain);
        if let Err(e) = opened {
            self.count_open_error(e, record);
            return;
        }
        let request = match self.role {
            Role::Server => msg_type == Some(CLIENT_HELLO),
            Role::Client => msg_type == Some(HELLO_REQUEST),
        };
        if !request || compact.renegotiation_refusals >= MAX_RENEGOTIATION_REFUSALS {
            self.stats.dropped_handshake_records += 1;
            return;
        }
        compact.renegotiation_refusals += 1;
        self.stats.renegotiations_refused += 1;
        log::debug!("{:?}: refused a renegotiation", self.peer);
        let _ = self.send_compact(ContentType::Alert, &[1, NO_RENEGOTIATION]);
    }

    /// Counts a record the compact layer did not open.
    fn count_open_error(&mut self, e: OpenError, record: &RecordHeader<'_>) {
        let overhead = self
            .engine
            .compact()
            .map_or(0, |c| c.layer.aead().overhead());
        match e {
            OpenError::Replayed | OpenError::TooOld => self.stats.dropped_replayed_records += 1,
            OpenError::Malformed if record.fragment().len() < overhead => {
                self.stats.dropped_short_records += 1
            }
            OpenError::Malformed | OpenError::Unauthenticated => {
                self.stats.dropped_unauthenticated_records += 1
            }
        }
    }

    /// Compact mode: authenticates one epoch-1 application or alert record and acts on it.
    fn open_record(&mut self, record: &RecordHeader<'_>) {
        let Some(compact) = self.engine.compact_mut() else {
            return;
        };
        let mut plain = record::take_buffer();
        let opened = compact.layer.open(record, &mut plain);
        let content_type = match opened {
            Ok(t) => {
                self.authenticated += 1;
                t
            }
            Err(e) => {
                record::give_buffer(plain);
                self.count_open_error(e, record);
                return;
            }
        };
        match content_type {
            ContentType::ApplicationData => {
                // Authenticated application data proves the peer completed its handshake: the
                // lingering `SSL` is no longer needed to answer its final flight.
                if self.engine.is_lingering() {
                    self.hand_off();
                }
                self.push_received_buffer(plain)
            }
            ContentType::Alert => {
                let alert = (plain.len() == 2).then(|| Alert {
                    level: plain[0],
                    description: plain[1],
                });
                record::give_buffer(plain);
                if alert.is_none() {
                    // An authenticated alert that is not two bytes long: RFC 5246 §7.2 makes
                    // that a decode_error.
                    self.send_fatal_alert(Alert::DECODE_ERROR, "malformed alert record");
                    return;
                }
                match alert {
                    Some(a) if a.description == Alert::CLOSE_NOTIFY => {
                        log::debug!("peer {:?} sent close_notify", self.peer);
                        self.closed_by_peer = true;
                        if self.state == SessionState::Established {
                            self.shutdown();
                        }
                        self.state = SessionState::Closed;
                        self.retransmit_at = None;
                        self.hand_off(); // a lingering SSL has nothing left to answer
                    }
                    Some(a) if a.is_fatal() => {
                        log::debug!("peer {:?} sent {a}", self.peer);
                        self.fail(Error::PeerAlert(a));
                    }
                    Some(a) if a.level != 1 => {
                        // Neither warning(1) nor fatal(2): OpenSSL answers illegal_parameter.
                        self.send_fatal_alert(Alert::ILLEGAL_PARAMETER, "unknown alert level");
                    }
                    Some(_) | None => {} // warnings (user_canceled, ...): nothing to do
                }
            }
            _ => record::give_buffer(plain),
        }
    }

    /// Compact mode: sends a fatal alert and fails the session with [`Error::LocalAlert`].
    fn send_fatal_alert(&mut self, description: u8, reason: &str) {
        let alert = Alert {
            level: 2,
            description,
        };
        let _ = self.send_compact(ContentType::Alert, &[alert.level, alert.description]);
        log::debug!("{:?}: sent {alert}: {reason}", self.peer);
        self.fail(Error::LocalAlert {
            alert,
            reason: reason.to_owned(),
        });
    }

    /// Compact mode: seals one record and queues it as a datagram.
    fn send_compact(&mut self, content_type: ContentType, data: &[u8]) -> Result<()> {
        if self.engine.openssl().is_some() {
            // Never two writers: the compact layer seals only after OpenSSL is gone and the
            // write sequence continues after its last record.
            self.hand_off();
        }
        let Some(compact) = self.engine.compact_mut() else {
            return Err(Error::Closed);
        };
        if compact.outbound.len() >= self.config.send_queue {
            self.stats.send_dropped += 1;
            return Ok(()); // as if lost on the network, like OpenSSL's path
        }
        let mut datagram = record::take_buffer();
        match compact.layer.seal(content_type, data, &mut datagram) {
            Ok(()) => {
                compact.outbound.push_back(datagram);
                if content_type == ContentType::ApplicationData {
                    self.stats.app_out += 1;
                }
                Ok(())
            }
            Err(e) => {
                record::give_buffer(datagram);
                let error = match e {
                    SealError::SequenceExhausted => Error::SequenceExhausted,
                    SealError::TooLong => Error::PayloadTooLarge {
                        len: data.len(),
                        max: self.data_mtu,
                    },
                    SealError::Cipher => Error::Ssl(ErrorStack::get()),
                };
                if matches!(error, Error::SequenceExhausted)
                    && content_type == ContentType::ApplicationData
                {
                    // Close with the sequence number kept for it, then fail: the connection
                    // must be re-established (RFC 6347 §4.1).
                    log::warn!("{:?}: record sequence numbers used up", self.peer);
                    self.shutdown();
                    self.fail(Error::SequenceExhausted);
                }
                Err(error)
            }
        }
    }

    /// Queues a received plaintext buffer (compact mode), within the receive limits.
    fn push_received_buffer(&mut self, data: Vec<u8>) {
        if data.is_empty() {
            record::give_buffer(data);
            return;
        }
        // Pooled buffers may be larger than their contents: count what they hold in memory.
        if self.received.len() >= self.config.recv_queue
            || self.received_bytes + data.capacity() > self.config.recv_queue_bytes
        {
            self.stats.recv_dropped += 1;
            record::give_buffer(data);
            return;
        }
        self.received_bytes += data.capacity();
        self.received.push_back(data);
        self.stats.app_in += 1;
    }

    /// Which side of the handshake this session plays.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where the session is in its life.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Whether the handshake completed and the session is not closed or failed.
    pub fn is_established(&self) -> bool {
        self.state == SessionState::Established
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.state == SessionState::Handshaking
    }

    /// The error that failed the session, if it failed.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// Whether the peer closed the session with `close_notify`.
    pub fn closed_by_peer(&self) -> bool {
        self.closed_by_peer
    }

    /// The negotiated protocol version, e.g. `"DTLSv1.2"`, once established (`SSL_get_version`).
    #[doc(alias = "SSL_get_version")]
    pub fn protocol_version(&self) -> Option<&'static str> {
        if self.state == SessionState::Handshaking {
            return None;
        }
        match (self.engine.ssl(), self.facts()) {
            (Some(ssl), _) => Some(ssl.version_str()),
            (None, facts) => facts.map(|f| f.version),
        }
    }

    fn facts(&self) -> Option<&SslFacts> {
        self.engine.compact().and_then(|c| c.facts.as_deref())
    }

    /// The negotiated cipher's OpenSSL name, e.g. `"PSK-AES128-CCM8"` (`SSL_get_current_cipher`).
    #[doc(alias = "SSL_get_current_cipher")]
    pub fn cipher(&self) -> Option<&'static str> {
        match self.engine.ssl() {
            Some(ssl) => ssl.current_cipher().map(|c| c.name()),
            None => self.facts().and_then(|f| f.cipher),
        }
    }

    /// The negotiated cipher's IANA name, e.g. `"TLS_PSK_WITH_AES_128_CCM_8"`.
    #[doc(alias = "SSL_CIPHER_standard_name")]
    pub fn cipher_standard_name(&self) -> Option<&'static str> {
        match self.engine.ssl() {
            Some(ssl) => ssl.current_cipher().and_then(|c| c.standard_name()),
            None => self.facts().and_then(|f| f.cipher_standard_name),
        }
    }

    /// The PSK identity used, if the handshake used a PSK suite (`SSL_get_psk_identity`).
    #[doc(alias = "SSL_get_psk_identity")]
    pub fn psk_identity(&self) -> Option<&[u8]> {
        match self.engine.ssl() {
            Some(ssl) => ssl.psk_identity(),
            None => self.facts().and_then(|f| f.psk_identity.as_deref()),
        }
    }

    /// The peer's certificate, if it sent one (`SSL_get1_peer_certificate`).
    #[doc(alias = "SSL_get1_peer_certificate")]
    pub fn peer_certificate(&self) -> Option<X509> {
        match self.engine.ssl() {
            Some(ssl) => ssl.peer_certificate(),
            None => self.facts().and_then(|f| f.peer_certificate.clone()),
        }
    }

    /// The ALPN protocol agreed, if any (`SSL_get0_alpn_selected`).
    #[doc(alias = "SSL_get0_alpn_selected")]
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self.engine.ssl() {
            Some(ssl) => ssl.selected_alpn_protocol(),
            None => self.facts().and_then(|f| f.alpn.as_deref()),
        }
    }

    /// The server name (SNI) the client asked for (`SSL_get_servername`).
    #[doc(alias = "SSL_get_servername")]
    pub fn server_name(&self) -> Option<&str> {
        match self.engine.ssl() {
            Some(ssl) => ssl.servername(openssl::ssl::NameType::HOST_NAME),
            None => self.facts().and_then(|f| f.server_name.as_deref()),
        }
    }

    /// The largest application payload [`send`](Self::send) accepts: what fits one record in
    /// one datagram at this MTU and cipher (`DTLS_get_data_mtu`); 0 before the handshake.
    #[doc(alias = "DTLS_get_data_mtu")]
    pub fn data_mtu(&self) -> usize {
        self.data_mtu
    }

    /// The link MTU: the largest datagram this session emits.
    pub fn mtu(&self) -> usize {
        self.config.mtu
    }

    /// The peer's address, if known.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Records the peer's address (used in logs and by the cookie callbacks).
    pub fn set_peer_addr(&mut self, peer: SocketAddr) {
        self.peer = Some(peer);
        if self.engine.openssl().is_some() {
            self.bio_mut().peer = Some(peer);
        }
    }

    /// Counters of this session.
    pub fn stats(&self) -> SessionStats {
        let mut stats = self.stats;
        if self.engine.openssl().is_some() {
            stats.retransmits = self.bio_ref().timeouts;
        }
        stats
    }

    /// The configuration the session runs with.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The underlying OpenSSL object, for queries this API does not cover; `None` once a
    /// compact session handed off and freed it ([`is_compact`](Self::is_compact)).
    pub fn ssl(&self) -> Option<&SslRef> {
        self.engine.ssl()
    }

    /// Whether the connection runs on the compact record layer with its `SSL` freed
    /// ([`SessionConfig::compact`]).
    pub fn is_compact(&self) -> bool {
        matches!(self.engine, Engine::Compact(_))
    }

    /// Whether compact mode has taken over the record layer's receiving side but still keeps
    /// the `SSL` (lingering to answer a retransmitted final flight).
    pub fn is_lingering(&self) -> bool {
        self.engine.is_lingering()
    }

    /// The ClientHello random of this session's handshake.
    pub(crate) fn client_random(&self) -> Option<[u8; 32]> {
        match (self.engine.ssl(), self.facts()) {
            (Some(ssl), _) => {
                let mut random = [0u8; 32];
                (ssl.client_random(&mut random) == 32).then_some(random)
            }
            (None, facts) => facts.map(|f| f.client_random),
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The shortest protected record an AEAD suite produces: explicit nonce plus tag (RFC 5288,
/// RFC 6655, RFC 7905). 0 for anything else (no check).
fn min_protected_len(cipher: &str) -> usize {
    if cipher.contains("CHACHA20") || cipher.ends_with("CCM8") {
        16 // ChaCha20: no explicit nonce, 16-byte tag; CCM8: 8-byte nonce, 8-byte tag
    } else if cipher.contains("GCM") || cipher.ends_with("CCM") {
        24 // 8-byte explicit nonce, 16-byte tag
    } else {
        0
    }
}

/// The numbers of epoch-1 records and of records of epoch 2 or later in `datagram`.
fn count_protected(datagram: &[u8]) -> (usize, usize) {
    let mut counts = (0, 0);
    for r in crate::wire::records(datagram).flatten() {
        match r.epoch() {
            0 => {}
            1 => counts.0 += 1,
            _ => counts.1 += 1,
        }
    }
    counts
}

/// Whether a handshaking session gives `record` to OpenSSL (see
/// [`Session::screen_plaintext`]); `hello_verify_ok`: a well-formed HelloVerifyRequest is in
/// place.
fn passes_screen(record: &RecordHeader<'_>, hello_verify_ok: bool) -> bool {
    match plaintext::screen(record) {
        Screen::Feed => true,
        Screen::Alert(_) => false,
        Screen::HelloVerifyRequest { well_formed } => hello_verify_ok && well_formed,
    }
}

/// Whether `datagram` holds an epoch ≥ 1 record shorter than `min`.
fn has_short_protected_record(datagram: &[u8], min: usize) -> bool {
    crate::wire::records(datagram)
        .flatten()
        .any(|r| r.epoch() >= 1 && r.fragment().len() < min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aead_minimum_record_lengths_follow_the_suites() {
        assert_eq!(min_protected_len("PSK-AES128-CCM8"), 16);
        assert_eq!(min_protected_len("ECDHE-PSK-CHACHA20-POLY1305"), 16);
        assert_eq!(min_protected_len("PSK-AES128-GCM-SHA256"), 24);
        assert_eq!(min_protected_len("PSK-AES256-CCM"), 24);
        assert_eq!(min_protected_len("ECDHE-ECDSA-AES128-GCM-SHA256"), 24);
        assert_eq!(min_protected_len("PSK-AES128-CBC-SHA256"), 0);
    }

    #[test]
    fn short_protected_records_are_recognised_by_epoch_and_length() {
        let mut record = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 7, 0, 20];
        record.extend_from_slice(&[0u8; 20]);
        assert!(has_short_protected_record(&record, 24));
        assert!(!has_short_protected_record(&record, 16));
        record[4] = 0; // epoch 0: plaintext, not checked
        assert!(!has_short_protected_record(&record, 24));
    }
}
