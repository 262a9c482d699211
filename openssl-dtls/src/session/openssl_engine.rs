//! The OpenSSL engine of a session: setting up the `SSL`, feeding it datagrams (through the
//! filters), running the handshake and reading records, classifying its errors, its
//! retransmission timer.

use super::*;

/// Sets up `ssl` the way every session needs it: DTLS 1.2 minimum, no renegotiation, no
/// compression, `SSL_OP_NO_QUERY_MTU` with the configured link MTU, and our datagram BIO with the
/// retransmission timer and alert callbacks. Returns the BIO's state.
pub(crate) fn configure_ssl(ssl: &mut SslRef, config: &SessionConfig) -> Result<BioHandle> {
    config.validate()?;
    ssl.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    let options =
        SslOptions::NO_QUERY_MTU | SslOptions::NO_RENEGOTIATION | SslOptions::NO_COMPRESSION;
    ssl::set_options(ssl, options.bits());
    let timer = TimerSettings {
        initial: config.retransmit_initial,
        max: config.retransmit_max,
    };
    let mut bio = crate::ffi::bio::attach(ssl, config.mtu, config.send_queue, timer)?;
    bio.get_mut().track_epoch1 = config.compact || config.connection_ids;
    // It fails for values below OpenSSL's minimum, which validate() excludes.
    if !ssl::set_link_mtu(ssl, config.mtu) {
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
    ssl::set_max_send_fragment(ssl, fragment);
    Ok(bio)
}

impl Session {
    /// The OpenSSL side. Only called on paths that run while the `SSL` exists (handshaking,
    /// or established on OpenSSL's record layer, or lingering).
    pub(super) fn openssl(&self) -> &OpenSsl {
        self.engine
            .openssl()
            .expect("a session has its SSL until the hand-off")
    }

    pub(super) fn openssl_mut(&mut self) -> &mut OpenSsl {
        self.engine
            .openssl_mut()
            .expect("a session has its SSL until the hand-off")
    }

    pub(super) fn ssl_mut(&mut self) -> &mut SslRef {
        &mut self.openssl_mut().ssl
    }

    /// The BIO state. Never hold the reference across a call into OpenSSL on this `SSL`.
    pub(super) fn bio_mut(&mut self) -> &mut BioState {
        self.openssl_mut().bio.get_mut()
    }

    pub(super) fn bio_ref(&self) -> &BioState {
        self.openssl().bio.get()
    }

    /// The filter that keeps records OpenSSL would buffer away from it (see
    /// [`MAX_HANDSHAKE_EPOCH1_RECORDS`]).
    pub(super) fn epoch_filter(&self) -> EpochFilter {
        EpochFilter {
            handshaking: self.state == SessionState::Handshaking,
            app_used: usize::from(self.hs().handshake_epoch1_app),
            app_passed: Cell::new(0),
            limited: self.state == SessionState::Handshaking && !self.hs().peer_ccs_read,
            used: usize::from(self.hs().handshake_epoch1),
            ccs: Cell::new(false),
            passed: Cell::new(0),
            dropped: Cell::new(0),
        }
    }

    /// Books what `filter` let through and dropped.
    pub(super) fn settle_filter(&mut self, filter: &EpochFilter) {
        self.stats.dropped_excess_records += filter.dropped.get();
        if filter.limited {
            self.hs_mut().handshake_epoch1 =
                saturating_u8(usize::from(self.hs().handshake_epoch1) + filter.passed.get());
        }
        if filter.handshaking {
            self.hs_mut().handshake_epoch1_app = saturating_u8(
                usize::from(self.hs().handshake_epoch1_app) + filter.app_passed.get(),
            );
        }
    }

    pub(super) fn charge_epoch1(&mut self, n: usize) {
        if self.state == SessionState::Handshaking && !self.hs().peer_ccs_read {
            self.hs_mut().handshake_epoch1 =
                saturating_u8(usize::from(self.hs().handshake_epoch1) + n);
        }
    }

    /// Gives `datagram` to OpenSSL (only the records `keep` accepts, if given) and runs the
    /// handshake or reads records.
    pub(super) fn feed_openssl(
        &mut self,
        now: Instant,
        parsed: &Parsed<'_>,
        keep: Option<&dyn Fn(&RecordHeader<'_>) -> bool>,
    ) {
        let datagram = parsed.bytes();
        let handshaking = self.state == SessionState::Handshaking;
        let ssl_state = ssl::state(&self.openssl().ssl);
        let screened = if handshaking {
            self.screen_plaintext(now, parsed, ssl_state)
        } else {
            None
        };
        let st = self.bio_mut();
        st.now = Some(now);
        // The whole datagram is lent to OpenSSL in place; a filtered one is copied, records kept.
        let lend = match (screened, keep) {
            (Some(hello_verify_ok), keep) => {
                st.set_inbound_records(parsed.records().filter(|r| {
                    keep.is_none_or(|keep| keep(r)) && passes_screen(r, hello_verify_ok)
                }));
                false
            }
            (None, Some(keep)) => {
                st.set_inbound_records(parsed.records().filter(|r| keep(r)));
                false
            }
            (None, None) => true,
        };
        if !lend && !st.has_inbound() {
            st.clear_inbound();
            return; // everything was screened out: OpenSSL has nothing to read
        }
        // A retransmitted Finished makes OpenSSL retransmit its flight.
        st.coalesce = true;
        // A server mid-handshake: whether OpenSSL is given an epoch-1 handshake record that can
        // hold the peer's whole Finished (not a fragment of it, see `holds_whole_finished`),
        // from the parse's views or the filter's note of what it kept.
        let fed_finished = self.role == Role::Server && handshaking && {
            let longest = if lend {
                parsed
                    .records()
                    .filter(|r| r.epoch() == 1 && r.content_type() == ContentType::Handshake)
                    .map(|r| r.fragment().len())
                    .max()
                    .unwrap_or(0)
            } else {
                self.bio_ref().inbound_epoch1_handshake_len
            };
            // Under the suite being negotiated (the session's own is set only with our
            // ChangeCipherSpec).
            longest > 0
                && holds_whole_finished(
                    longest,
                    ssl::pending_cipher_name(&self.openssl().ssl).map_or(0, min_protected_len),
                )
        };
        let before = (self.state, self.handshake_state());
        if lend {
            let bio = self.openssl().bio;
            crate::ffi::bio::with_lent_inbound(bio, datagram, || self.drive(now));
        } else {
            self.drive(now);
        }
        let after = (self.state, self.handshake_state());
        let progressed = match before.0 {
            SessionState::Handshaking => after != before,
            _ => false,
        };
        if progressed {
            self.authenticated = self.authenticated.wrapping_add(1); // handshake progress
        }
        if after.0 == SessionState::Handshaking
            && matches!(
                after.1,
                dffi::TLS_ST_CR_CHANGE | dffi::TLS_ST_SR_CHANGE | dffi::TLS_ST_SR_FINISHED
            )
        {
            self.hs_mut().peer_ccs_read = true;
        }
        if handshaking && self.engine.openssl().is_some() && self.hs().held_alert.is_some() {
            let after = ssl::state(&self.openssl().ssl);
            if self.hs().held_alert.is_some_and(|h| h.ssl_state != after) {
                log::debug!(
                    "{:?}: the handshake moved on; the held alert was not the peer's last word",
                    self.peer
                );
                self.hs_mut().held_alert = None;
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
    pub(super) fn screen_plaintext(
        &mut self,
        now: Instant,
        parsed: &Parsed<'_>,
        ssl_state: c_int,
    ) -> Option<bool> {
        // RFC 6347 §4.2.1: a HelloVerifyRequest answers the client's first ClientHello only.
        let hello_verify_ok = self.role == Role::Client
            && ssl_state == dffi::TLS_ST_CW_CLNT_HELLO
            && !self.hs().hello_verify_accepted;
        let mut screened = false;
        for record in parsed.records() {
            let record = &record;
            // Only plaintext records are screened. The caller's `keep` is not consulted: it passes
            // every epoch-0 record, and it counts what it sees (the epoch filter), so it must see
            // each record once, when the datagram is queued for OpenSSL.
            if record.epoch() != 0 {
                continue;
            }
            match plaintext::screen(record) {
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
                        .hs()
                        .retransmit_at
                        .unwrap_or(now)
                        .max(now + self.config.retransmit_initial);
                    log::debug!(
                        "{:?}: holding unauthenticated {alert} until {:?} from now",
                        self.peer,
                        fail_at - now
                    );
                    self.hs_mut().held_alert = Some(HeldAlert {
                        alert,
                        ssl_state,
                        fail_at,
                    });
                }
                Screen::HelloVerifyRequest { well_formed } => {
                    if hello_verify_ok && well_formed {
                        self.hs_mut().hello_verify_accepted = true;
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
    /// only one epoch-1 handshake message before it sends its own Finished: the client's
    /// Finished. If a record that can hold it whole arrived (the caller checks with
    /// [`holds_whole_finished`]: at small MTUs OpenSSL 3.5 and later split the Finished over two
    /// records, and the first alone does not complete it) and the state did not advance,
    /// OpenSSL dropped it as unauthenticated (RFC 6347 §4.1.2.7): the two sides derived
    /// different keys, which with PSK means a wrong key. Rather than wait out every
    /// retransmission, fail now with `decrypt_error` and tell the client in the clear (our write
    /// epoch is still 0), as TLS would (RFC 5246 §7.4.9).
    pub(super) fn check_finished_authenticated(&mut self) {
        if ssl::state(&self.openssl().ssl) != dffi::TLS_ST_SR_CHANGE {
            return;
        }
        let alert = Alert {
            level: 2,
            description: Alert::DECRYPT_ERROR,
        };
        let st = self.bio_mut();
        let record = crate::wire::plaintext_alert(
            crate::wire::DTLS1_2_VERSION,
            st.epoch0_next_seq,
            alert.level,
            alert.description,
        );
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

    /// OpenSSL's handshake state (`SSL_get_state`), or -1 without an `SSL`.
    pub(super) fn handshake_state(&self) -> c_int {
        match self.engine.ssl() {
            Some(ssl) => ssl::state(ssl),
            None => -1,
        }
    }

    pub(super) fn shutdown(&mut self) {
        if self.engine.openssl().is_none() {
            let alert = [1, Alert::CLOSE_NOTIFY]; // warning, close_notify
            let _ = self.send_compact(ContentType::Alert, &alert);
            return;
        }
        ssl::shutdown(&self.openssl().ssl);
        self.transcode_outbound_queue();
    }

    /// Runs the handshake or reads records until OpenSSL wants another datagram.
    pub(super) fn drive(&mut self, now: Instant) {
        loop {
            match self.state {
                SessionState::Handshaking => {
                    let r = ssl::do_handshake(&self.openssl().ssl);
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
                    let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); MAX_PLAINTEXT];
                    let (r, read) = ssl::read(&self.openssl().ssl, &mut scratch);
                    if r == 1 {
                        self.push_received(read);
                        continue;
                    }
                    if !self.on_ssl_error(r) {
                        break;
                    }
                }
                SessionState::Closed | SessionState::Failed => break,
            }
        }
        ssl::clear_errors(); // noise (dropped records) must not linger in the queue
        self.transcode_outbound_queue();
        self.update_timer(now);
    }

    /// Classifies a failed `SSL_*` return. Returns `true` if the caller may continue the loop
    /// (never, today: every outcome ends it), `false` when it should stop.
    pub(super) fn on_ssl_error(&mut self, r: c_int) -> bool {
        let code = ssl::get_error(&self.openssl().ssl, r);
        match code {
            ffi::SSL_ERROR_WANT_READ | ffi::SSL_ERROR_WANT_WRITE => false,
            ffi::SSL_ERROR_ZERO_RETURN => {
                self.peer_closed();
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

    pub(super) fn on_established(&mut self, now: Instant) {
        self.cid_check(); // the last look at the connection_id extension
        self.state = SessionState::Established;
        self.facts = Some(KeptFacts::of(&self.openssl().ssl, self.started, now));
        self.min_protected_len = self.cipher().map_or(0, min_protected_len);
        self.data_mtu = u16::try_from(ssl::data_mtu(&self.openssl().ssl)).unwrap_or(u16::MAX);
        log::debug!(
            "handshake with {:?} complete: {} {} (data MTU {})",
            self.peer,
            self.protocol_version().unwrap_or("?"),
            self.cipher().unwrap_or("?"),
            self.data_mtu()
        );
        if self.compact_mode() {
            self.start_compact(now);
        }
    }

    pub(super) fn push_received(&mut self, data: &[u8]) {
        self.authenticated = self.authenticated.wrapping_add(1); // OpenSSL returned it from SSL_read: it decrypted
        if data.is_empty() {
            return;
        }
        // Queued as the compact layer queues what it opens: from `PLAINTEXT_AT`.
        let mut buf = record::take_buffer();
        buf.extend_from_slice(&[0; record::PLAINTEXT_AT]);
        buf.extend_from_slice(data);
        // Counted by capacity, what the queue holds in memory (a pooled buffer may be larger
        // than its record).
        if self.received.len() >= self.config.recv_queue || !self.received_fits(buf.capacity()) {
            self.stats.add(Traffic::RecvDropped, 1);
            record::give_buffer(buf);
            return;
        }
        self.count_received(buf.capacity());
        self.received.push_back(buf);
        self.stats.add(Traffic::AppIn, 1);
    }

    pub(super) fn update_timer(&mut self, now: Instant) {
        if matches!(self.state, SessionState::Failed | SessionState::Closed)
            || self.engine.openssl().is_none()
        {
            self.clear_retransmit();
            return;
        }
        self.hs_mut().retransmit_at = ssl::timeout(&self.openssl().ssl).map(|left| now + left);
    }

    /// Compact mode on a suite the compact layer cannot carry: the records withheld during the
    /// handshake go to OpenSSL after all, once it is established.
    pub(super) fn feed_early_to_openssl(&mut self, now: Instant) {
        if self.hs().early.is_empty()
            || self.engine.compact().is_some()
            || self.engine.openssl().is_none()
            || self.state != SessionState::Established
        {
            return;
        }
        for raw in std::mem::take(&mut self.hs_mut().early) {
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

    /// Fails a handshake that ran out of time: with the held unauthenticated alert if there is
    /// one (the likeliest reason the peer went quiet), else [`Error::Timeout`].
    pub(super) fn fail_handshake_timeout(&mut self, phase: TimeoutPhase) {
        match self.hs_mut().held_alert.take() {
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
}

/// `n` as a `u8`, 255 if larger (the epoch-1 budgets are far below it).
fn saturating_u8(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}
