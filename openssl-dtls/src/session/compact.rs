//! The compact engine of a session: routing records to the compact record layer, the transitions
//! into it (`start_compact`, `hand_off`), opening and sealing records, refusing renegotiation.

use super::exporter::ExporterSecret;
use super::*;

impl Session {
    /// Compact mode: routes a datagram's records. Epoch-1 application data and alerts go to the
    /// compact layer (or, before it has keys, to the early buffer); everything else (handshake
    /// records, a retransmitted final flight) goes to OpenSSL while the `SSL` exists, and is
    /// dropped and counted after the hand-off. OpenSSL therefore never decrypts an application
    /// record in compact mode, and the compact replay window sees every one.
    pub(super) fn handle_compact_datagram(&mut self, now: Instant, parsed: &Parsed<'_>) {
        // Several records, every one for the compact layer after the hand-off: opened in runs.
        if matches!(self.engine, Engine::Compact(..))
            && parsed.records().nth(1).is_some()
            && parsed.records().all(|r| is_compact_record(&r))
        {
            self.open_record_runs(parsed);
            return;
        }
        let mut for_openssl = false;
        // Once established, a protected record too short for the suite's nonce and tag never
        // reaches OpenSSL, lingering or not (CVE-2026-75806; see `handle_datagram`).
        let min = usize::from(self.min_protected_len);
        let too_short =
            move |r: &RecordHeader<'_>| min > 0 && r.epoch() >= 1 && r.fragment().len() < min;
        for record in parsed.records() {
            let record = &record;
            let raw = record.bytes();
            if !is_compact_record(record) {
                if self.engine.openssl().is_none() {
                    self.open_handshake_record(record);
                } else if too_short(record) {
                    self.stats.dropped_short_records += 1;
                } else {
                    for_openssl = true;
                }
            } else if record.is_cid() && self.engine.is_lingering() {
                self.open_lingering_cid(now, record);
            } else if self.engine.compact().is_some() {
                self.open_record(record);
            } else if self.state == SessionState::Handshaking
                && record.epoch() == 1
                && self.hs().early.len() < MAX_EARLY_RECORDS
                && raw.len() <= self.config.mtu
            {
                let mut copy = record::take_buffer();
                copy.extend_from_slice(raw);
                self.hs_mut().early.push(copy);
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
        self.feed_openssl(now, parsed, Some(&keep));
        self.settle_filter(&filter);
    }

    /// Compact mode, at the end of the handshake: derives the record layer's keys, opens the
    /// early records, and hands off at once if this side received the handshake's last flight
    /// (nothing of ours can need retransmitting), or lingers if it sent it.
    pub(super) fn start_compact(&mut self, now: Instant) {
        let Some(ssl) = self.engine.ssl() else { return };
        let next_write_seq = self.bio_ref().epoch1_next_seq;
        let derived = RecordLayer::from_ssl(ssl, self.role == Role::Client, 1, next_write_seq);
        let derived = match derived {
            Ok(layer) => Ok(self.cid_layer(layer)),
            Err(e) => Err(e),
        };
        let Some(ssl) = self.engine.ssl() else { return };
        let layer = match derived {
            Ok(Some(mut layer)) => {
                layer.set_next_write_seq(next_write_seq);
                layer
            }
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
            outbound: record::Queue::default(),
        });
        // Transition: OpenSsl -> Lingering (we sent the last flight) or straight to Compact
        // (nothing of ours can need retransmitting). Hand off before opening the early records:
        // whatever they make us send (a close_notify in reply) is then written by the compact
        // layer alone.
        self.engine = match std::mem::replace(&mut self.engine, Engine::Switching) {
            Engine::OpenSsl(openssl) => Engine::Lingering { openssl, compact },
            other => other,
        };
        if self.engine.is_lingering() {
            self.hs_mut().linger_until = Some(now + self.config.compact_linger);
        }
        if !sent_last {
            self.hand_off();
        }
        for raw in std::mem::take(&mut self.hs_mut().early) {
            if let Ok(record) = RecordHeader::new_checked(&raw) {
                if self.state == SessionState::Established {
                    self.open_record(&record);
                }
            }
            record::give_buffer(raw);
        }
        self.free_handshake_part();
    }

    /// Transition Lingering -> Compact: frees the `SSL`. What OpenSSL queued moves to the
    /// compact layer's queue, the write sequence continues after the last one OpenSSL used, and
    /// the handshake's facts are kept. Does nothing in any other state.
    pub(super) fn hand_off(&mut self) {
        self.engine = match std::mem::replace(&mut self.engine, Engine::Switching) {
            Engine::Lingering {
                openssl, compact, ..
            } => {
                // Exports after the hand-off need the master secret and randoms: kept only
                // when asked for (see `exporter`).
                let secret = self
                    .keeps_exporter_secret()
                    .then(|| ExporterSecret::of(&openssl.ssl))
                    .flatten();
                Engine::Compact(self.free_ssl(openssl, compact), secret)
            }
            other => other,
        };
        self.free_handshake_part();
    }

    /// The work of [`hand_off`](Self::hand_off): moves what OpenSSL queued and its write
    /// sequence and nonces to `compact`, then frees the `SSL`.
    fn free_ssl(&mut self, mut openssl: OpenSsl, mut compact: Box<Compact>) -> Box<Compact> {
        let st = openssl.bio.get_mut();
        let mut queued = VecDeque::new();
        st.drain_outbound(&mut queued);
        compact.outbound.prepend(queued);
        let next = compact.layer.next_write_seq().max(st.epoch1_next_seq);
        compact.layer.set_next_write_seq(next);
        if let Some(last) = st.epoch1_last_explicit {
            // OpenSSL's GCM explicit nonces count up from a random start: continue after its
            // last one, so no (key, nonce) pair repeats across the hand-off.
            compact.layer.continue_explicit_nonce_after(last);
        }
        self.stats.retransmits = st.timeouts;
        self.stats.add(Traffic::SendDropped, st.outbound_dropped);
        self.clear_retransmit();
        // The connection lives on: free the SSL the way a clean shutdown would, so that
        // SSL_free does not mark its session unresumable and drop it from the session cache.
        ssl::mark_shutdown_sent(&openssl.ssl);
        drop(openssl); // SSL_free: the BIO and its state go with it
        log::debug!("{:?}: handed off to the compact record layer", self.peer);
        compact
    }

    /// Compact mode, after the hand-off: a handshake-layer record. Only an epoch-1 record that
    /// authenticates (same keys and replay window as application data) and holds a ClientHello
    /// to a server or a HelloRequest to a client is a renegotiation request; it is answered with
    /// a `no_renegotiation` warning, as OpenSSL answers with `SSL_OP_NO_RENEGOTIATION` (an
    /// OpenSSL peer would otherwise retransmit it until it gives up). Anything else (epoch 0,
    /// which is unauthenticated; a retransmitted Finished; a request past the bound) is dropped
    /// and counted.
    pub(super) fn open_handshake_record(&mut self, record: &RecordHeader<'_>) {
        let Some(compact) = self.engine.compact_mut() else {
            return;
        };
        if record.epoch() == 0 || record.content_type() != ContentType::Handshake {
            self.stats.dropped_handshake_records += 1;
            return;
        }
        let mut plain = record::take_buffer();
        let opened = compact.layer.open_at(record, &mut plain);
        if let Err(e) = opened {
            record::give_buffer(plain);
            self.count_open_error(e, record);
            return;
        }
        self.on_handshake_plaintext(plain);
    }

    /// An authenticated handshake message after the hand-off (see
    /// [`open_handshake_record`](Self::open_handshake_record)): a renegotiation request is refused,
    /// anything else dropped and counted.
    fn on_handshake_plaintext(&mut self, plain: Vec<u8>) {
        // The DTLS handshake header is 12 bytes: a shorter record holds no whole message header.
        let message = &plain[record::PLAINTEXT_AT..];
        let msg_type = (message.len() >= crate::wire::HANDSHAKE_HEADER_LEN).then(|| message[0]);
        record::give_buffer(plain);
        if self.engine.compact().is_none() {
            return;
        }
        let request = match self.role {
            Role::Server => msg_type == Some(CLIENT_HELLO),
            Role::Client => msg_type == Some(HELLO_REQUEST),
        };
        if !request || self.renegotiation_refusals >= MAX_RENEGOTIATION_REFUSALS {
            self.stats.dropped_handshake_records += 1;
            return;
        }
        self.renegotiation_refusals += 1;
        self.stats.renegotiations_refused += 1;
        log::debug!("{:?}: refused a renegotiation", self.peer);
        let _ = self.send_compact(ContentType::Alert, &[1, NO_RENEGOTIATION]);
    }

    /// A lingering CID connection: a `tls12_cid` record holding a handshake message (the peer's
    /// retransmitted final flight) goes to the lingering `SSL` in the standard format, so that
    /// OpenSSL retransmits our last flight; anything else is opened as usual.
    fn open_lingering_cid(&mut self, now: Instant, record: &RecordHeader<'_>) {
        let Some(compact) = self.engine.compact_mut() else {
            return;
        };
        let (mut plain, mut standard) = (record::take_buffer(), record::take_buffer());
        match compact.layer.open_at(record, &mut plain) {
            Ok(ContentType::Handshake) => {
                if compact
                    .layer
                    .reseal_inbound(record, &plain[record::PLAINTEXT_AT..], &mut standard)
                    .is_ok()
                {
                    if let Ok(sub) = crate::wire::parse(&standard) {
                        self.feed_openssl(now, &sub, None);
                    }
                }
                record::give_buffer(plain);
            }
            Ok(t) => {
                self.authenticated = self.authenticated.wrapping_add(1);
                self.on_plaintext(t, plain);
            }
            Err(e) => {
                record::give_buffer(plain);
                self.count_open_error(e, record);
            }
        }
        record::give_buffer(standard);
    }

    /// Counts a record the compact layer did not open.
    pub(super) fn count_open_error(&mut self, e: OpenError, record: &RecordHeader<'_>) {
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
    pub(super) fn open_record(&mut self, record: &RecordHeader<'_>) {
        let Some(compact) = self.engine.compact_mut() else {
            return;
        };
        let mut plain = record::take_buffer();
        let opened = compact.layer.open_at(record, &mut plain);
        let content_type = match opened {
            Ok(t) => {
                self.authenticated = self.authenticated.wrapping_add(1);
                t
            }
            Err(e) => {
                record::give_buffer(plain);
                self.count_open_error(e, record);
                return;
            }
        };
        self.on_plaintext(content_type, plain);
    }

    /// Acts on an authenticated record's plaintext (`plain`, opened by
    /// [`RecordLayer::open_at`]: the plaintext from [`record::PLAINTEXT_AT`]; it goes back to
    /// the pool or to the receive queue).
    fn on_plaintext(&mut self, content_type: ContentType, plain: Vec<u8>) {
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
                let alert = match plain[record::PLAINTEXT_AT..] {
                    [level, description] => Some(Alert { level, description }),
                    _ => None,
                };
                record::give_buffer(plain);
                if alert.is_none() {
                    // An authenticated alert that is not two bytes long: RFC 5246 §7.2 makes
                    // that a decode_error.
                    self.send_fatal_alert(Alert::DECODE_ERROR, "malformed alert record");
                    return;
                }
                match alert {
                    Some(a) if a.description == Alert::CLOSE_NOTIFY => {
                        self.peer_closed();
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
            // A handshake message inside a `tls12_cid` record, after the hand-off.
            ContentType::Handshake => self.on_handshake_plaintext(plain),
            _ => record::give_buffer(plain),
        }
    }

    /// Compact mode: sends a fatal alert and fails the session with [`Error::LocalAlert`].
    pub(super) fn send_fatal_alert(&mut self, description: u8, reason: &str) {
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
    pub(super) fn send_compact(&mut self, content_type: ContentType, data: &[u8]) -> Result<()> {
        if self.engine.openssl().is_some() {
            // Never two writers: the compact layer seals only after OpenSSL is gone and the
            // write sequence continues after its last record.
            self.hand_off();
        }
        let Some(compact) = self.engine.compact_mut() else {
            return Err(Error::Closed);
        };
        if compact.outbound.len() >= self.config.send_queue {
            self.stats.add(Traffic::SendDropped, 1);
            return Ok(()); // as if lost on the network, like OpenSSL's path
        }
        let mut datagram = record::take_buffer();
        let cid = self.cid.as_ref().map(|c| &*c.peer);
        match compact.layer.seal(cid, content_type, data, &mut datagram) {
            Ok(()) => {
                compact.outbound.push_back(datagram);
                if content_type == ContentType::ApplicationData {
                    self.stats.add(Traffic::AppOut, 1);
                }
                Ok(())
            }
            Err(e) => {
                record::give_buffer(datagram);
                Err(self.seal_failed(e, content_type, data.len()))
            }
        }
    }

    /// The error of a record of `content_type` with `len` bytes that the compact layer
    /// refused to seal; used-up sequence numbers end the connection.
    fn seal_failed(&mut self, e: SealError, content_type: ContentType, len: usize) -> Error {
        let error = match e {
            SealError::SequenceExhausted => Error::SequenceExhausted,
            SealError::TooLong => Error::PayloadTooLarge {
                len,
                max: self.data_mtu(),
            },
            SealError::Cipher => Error::Ssl(ErrorStack::get()),
        };
        if matches!(error, Error::SequenceExhausted) && content_type == ContentType::ApplicationData
        {
            // Close with the sequence number kept for it, then fail: the connection must be
            // re-established (RFC 6347 §4.1).
            log::warn!("{:?}: record sequence numbers used up", self.peer);
            self.shutdown();
            self.fail(Error::SequenceExhausted);
        }
        error
    }

    /// [`Session::send_many`] on the compact layer (no `SSL` left): sends the first datagrams
    /// of `datagrams` (non-empty), up to [`record::RUN`] records sealed in one call, exactly as
    /// [`send`](Session::send) would each in turn, and returns how many datagrams it took.
    pub(super) fn send_compact_run(&mut self, datagrams: &[&[u8]]) -> Result<usize> {
        self.usable()?;
        let max = self.data_mtu();
        let mut run: [&[u8]; record::RUN] = [&[]; record::RUN];
        let (mut count, mut taken) = (0, 0);
        let mut too_large = None;
        for d in datagrams {
            if count == record::RUN {
                break;
            }
            if d.len() > max {
                too_large = Some(d.len());
                break;
            }
            taken += 1;
            if !d.is_empty() {
                run[count] = d;
                count += 1;
            }
        }
        if count > 0 {
            self.seal_compact_run(&run[..count])?;
        }
        match too_large {
            Some(len) => Err(Error::PayloadTooLarge { len, max }),
            None => Ok(taken),
        }
    }

    /// Seals `run` (at most [`record::RUN`] non-empty application datagrams) in one call of
    /// the record layer and queues them, as [`send_compact`](Self::send_compact) would each:
    /// those past the send queue's bound are dropped and counted, the first refused ends the
    /// run with its error.
    fn seal_compact_run(&mut self, run: &[&[u8]]) -> Result<()> {
        let Some(compact) = self.engine.compact_mut() else {
            return Err(Error::Closed);
        };
        let fit = run.len().min(
            self.config
                .send_queue
                .saturating_sub(compact.outbound.len()),
        );
        let mut outs: [Vec<u8>; record::RUN] = Default::default();
        for out in &mut outs[..fit] {
            *out = record::take_buffer();
        }
        let cid = self.cid.as_ref().map(|c| &*c.peer);
        let (sealed, r) = compact.layer.seal_run(
            cid,
            ContentType::ApplicationData,
            &run[..fit],
            &mut outs[..fit],
        );
        for out in &mut outs[..sealed] {
            compact.outbound.push_back(std::mem::take(out));
        }
        for out in &mut outs[sealed..fit] {
            record::give_buffer(std::mem::take(out));
        }
        self.stats.add(Traffic::AppOut, sealed as u64);
        match r {
            Ok(()) => {
                // As if lost on the network, like OpenSSL's path (see `send_compact`).
                self.stats
                    .add(Traffic::SendDropped, (run.len() - fit) as u64);
                Ok(())
            }
            Err(e) => Err(self.seal_failed(e, ContentType::ApplicationData, run[sealed].len())),
        }
    }

    /// Compact mode, after the hand-off: a datagram of several records, all of them epoch-1
    /// application data or alerts (or `tls12_cid` records), as the per-record loop of
    /// [`handle_compact_datagram`](Self::handle_compact_datagram) would route them to
    /// [`open_record`](Self::open_record): opened in runs of up to [`record::RUN`], each run in
    /// one call of the record layer, then acted on in order, as one by one (a record after
    /// one that closed or failed the connection is not acted on).
    fn open_record_runs(&mut self, parsed: &Parsed<'_>) {
        let mut records = parsed.records();
        while let Some(first) = records.next() {
            let mut headers = [first; record::RUN];
            let mut n = 1;
            for (h, r) in headers[1..].iter_mut().zip(records.by_ref()) {
                *h = r;
                n += 1;
            }
            let Some(compact) = self.engine.compact_mut() else {
                return;
            };
            let mut outs: [Vec<u8>; record::RUN] = Default::default();
            for out in &mut outs[..n] {
                *out = record::take_buffer();
            }
            let mut results = [Err(OpenError::Malformed); record::RUN];
            compact
                .layer
                .open_run(&headers[..n], &mut outs[..n], &mut results[..n]);
            for ((out, result), header) in outs[..n].iter_mut().zip(results).zip(&headers) {
                let plain = std::mem::take(out);
                if matches!(self.state, SessionState::Closed | SessionState::Failed) {
                    record::give_buffer(plain);
                    continue;
                }
                match result {
                    Ok(t) => {
                        self.authenticated = self.authenticated.wrapping_add(1);
                        self.on_plaintext(t, plain);
                    }
                    Err(e) => {
                        record::give_buffer(plain);
                        self.count_open_error(e, header);
                    }
                }
            }
            if matches!(self.state, SessionState::Closed | SessionState::Failed) {
                return;
            }
        }
    }

    /// Queues a received plaintext buffer (compact mode; its datagram from
    /// [`record::PLAINTEXT_AT`], where it was opened), within the receive limits.
    pub(super) fn push_received_buffer(&mut self, data: Vec<u8>) {
        if data.len() <= record::PLAINTEXT_AT {
            record::give_buffer(data);
            return;
        }
        // Pooled buffers may be larger than their contents: count what they hold in memory.
        if self.received.len() >= self.config.recv_queue || !self.received_fits(data.capacity()) {
            self.stats.add(Traffic::RecvDropped, 1);
            record::give_buffer(data);
            return;
        }
        self.count_received(data.capacity());
        self.received.push_back(data);
        self.stats.add(Traffic::AppIn, 1);
    }
}

/// What [`Session::write_saved`] did with a session (graceful restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SaveOutcome {
    /// Written: an established connection on the compact record layer.
    Saved,
    /// Not written: its handshake is running (the peer retransmits; a new handshake follows).
    Handshaking,
    /// Not written: established on OpenSSL's record layer (compact mode off, or a suite the
    /// compact layer does not carry): its state is inside the `SSL`.
    NotCompact,
    /// Not written: closed or failed.
    Ended,
}

/// Bytes [`Session::write_saved`] writes at most: role, cipher name, PSK identity, ALPN, server
/// name, resumed, data MTU, the record layer and the Connection IDs.
pub(crate) const MAX_SAVED_SESSION_LEN: usize = 1
    + (1 + 255)
    + (1 + 2 + MAX_SAVED_IDENTITY)
    + (1 + 1 + 255)
    + (1 + 2 + 255)
    + 1
    + 2
    + record::MAX_RECORD_STATE_LEN
    + (1 + 1 + crate::cid::MAX_CID_LEN + 1 + 255);

/// The longest PSK identity saved (OpenSSL's own bound, `PSK_MAX_IDENTITY_LEN`, is 256).
const MAX_SAVED_IDENTITY: usize = 256;

impl Session {
    /// Graceful restart: appends what this connection needs to resume without a handshake to
    /// `out` (secret: the caller seals it and wipes `out`), if it is an established compact
    /// connection; see [`SaveOutcome`]. The write sequence number saved is `reserve` ahead of
    /// the live one (see [`RecordLayer::write_state`]). The peer's certificate, the SRTP
    /// profile and the exporter's secret are not saved.
    pub(crate) fn write_saved(&self, reserve: u64, out: &mut Vec<u8>) -> SaveOutcome {
        match self.state {
            SessionState::Handshaking => return SaveOutcome::Handshaking,
            SessionState::Closed | SessionState::Failed => return SaveOutcome::Ended,
            SessionState::Established => {}
        }
        let Some(compact) = self.engine.compact() else {
            return SaveOutcome::NotCompact;
        };
        let Some(facts) = self.facts() else {
            return SaveOutcome::NotCompact;
        };
        // Lingering: OpenSSL may still have written epoch-1 records (a retransmitted final
        // flight); the saved sequence and explicit nonce continue after its too.
        let (at_least, last_explicit) = match self.engine.openssl() {
            Some(_) => {
                let st = self.bio_ref();
                (st.epoch1_next_seq, st.epoch1_last_explicit)
            }
            None => (0, None),
        };
        let cipher = facts.cipher.unwrap_or("");
        out.push(u8::from(self.role == Role::Server));
        put_bytes8(out, cipher.as_bytes());
        match facts
            .psk_identity
            .as_deref()
            .filter(|i| i.len() <= MAX_SAVED_IDENTITY)
        {
            Some(id) => {
                out.push(1);
                out.extend_from_slice(&(id.len() as u16).to_be_bytes());
                out.extend_from_slice(id);
            }
            None => out.push(0),
        }
        match facts.alpn.as_deref().filter(|a| a.len() <= 255) {
            Some(alpn) => {
                out.push(1);
                put_bytes8(out, alpn);
            }
            None => out.push(0),
        }
        match facts.server_name.as_deref().filter(|s| s.len() <= 255) {
            Some(name) => {
                out.push(1);
                out.extend_from_slice(&(name.len() as u16).to_be_bytes());
                out.extend_from_slice(name.as_bytes());
            }
            None => out.push(0),
        }
        out.push(u8::from(facts.resumed));
        out.extend_from_slice(&self.data_mtu.to_be_bytes());
        compact
            .layer
            .write_state(at_least, last_explicit, reserve, out);
        match &self.cid {
            Some(cid) => {
                out.push(1);
                put_bytes8(out, &cid.own);
                put_bytes8(out, &cid.peer[..cid.peer.len().min(255)]);
            }
            None => out.push(0),
        }
        SaveOutcome::Saved
    }

    /// Graceful restart: an established compact connection with `peer` from what
    /// [`write_saved`](Self::write_saved) wrote, under `config`; `cipher_names` gives the
    /// static OpenSSL and IANA names of a suite name (from the server context's list). `None`
    /// if it does not parse or names a suite the context does not enable. Its handshake facts
    /// say it completed at `now`.
    pub(crate) fn read_saved(
        r: &mut record::Cursor<'_>,
        config: &SessionConfig,
        peer: SocketAddr,
        cipher_names: &dyn Fn(&[u8]) -> Option<SuiteNames>,
        now: Instant,
        advance: u64,
    ) -> Option<Session> {
        let role = match r.u8()? {
            0 => Role::Client,
            1 => Role::Server,
            _ => return None,
        };
        let len = r.u8()?;
        let (cipher, cipher_standard_name) = cipher_names(r.bytes(usize::from(len))?)?;
        let psk_identity = match r.u8()? {
            0 => None,
            1 => {
                let n = usize::from(r.u16()?);
                (n <= MAX_SAVED_IDENTITY).then_some(())?;
                Some(Box::<[u8]>::from(r.bytes(n)?))
            }
            _ => return None,
        };
        let alpn = match r.u8()? {
            0 => None,
            1 => {
                let n = usize::from(r.u8()?);
                Some(Box::<[u8]>::from(r.bytes(n)?))
            }
            _ => return None,
        };
        let server_name = match r.u8()? {
            0 => None,
            1 => {
                let n = usize::from(r.u16()?);
                (n <= 255).then_some(())?;
                let s = std::str::from_utf8(r.bytes(n)?).ok()?;
                Some(Box::<str>::from(s))
            }
            _ => return None,
        };
        let resumed = match r.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let data_mtu = r.u16()?;
        let layer = RecordLayer::read_state(r, advance)?;
        if record::Aead::from_suite_name(cipher) != Some(layer.aead()) {
            return None;
        }
        let cid = match r.u8()? {
            0 => None,
            1 => {
                let n = usize::from(r.u8()?);
                let own = crate::cid::InlineCid::new(r.bytes(n)?)?;
                let n = usize::from(r.u8()?);
                let peer: Box<[u8]> = r.bytes(n)?.into();
                Some(Box::new(self::cid::CidSession {
                    own,
                    peer,
                    transcoder: None,
                }))
            }
            _ => return None,
        };
        let common = CommonFacts {
            version: "DTLSv1.2",
            cipher: Some(cipher),
            cipher_standard_name,
            alpn,
            server_name,
            resumed,
            srtp_profile: None,
        };
        let facts = KeptFacts::new(common, psk_identity, None, std::time::Duration::ZERO);
        let compact = Box::new(Compact {
            layer,
            outbound: record::Queue::default(),
        });
        Some(Session {
            engine: Engine::Compact(compact, None),
            facts: Some(facts),
            hs: None,
            role,
            state: SessionState::Established,
            closed_by_peer: false,
            config: shared_config(config),
            started: now,
            received: record::Queue::default(),
            received_bytes: 0,
            data_mtu,
            min_protected_len: min_protected_len(cipher),
            renegotiation_refusals: 0,
            peer: Some(peer),
            stats: Counters::default(),
            authenticated: 0,
            cid,
        })
    }
}

/// A suite's OpenSSL name and IANA name (static: OpenSSL's own strings).
pub(crate) type SuiteNames = (&'static str, Option<&'static str>);

/// Appends `bytes` (at most 255) after a one-byte length.
fn put_bytes8(out: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{DtlsClientContext, DtlsServerContext, PskCredentials};

    /// Moves every datagram one session has to send into the other.
    fn pump(from: &mut Session, to: &mut Session, now: Instant) -> bool {
        let mut buf = [0u8; 2048];
        let mut moved = false;
        while let Some(n) = from.poll_transmit(&mut buf) {
            to.handle_datagram(now, &buf[..n]);
            moved = true;
        }
        moved
    }

    /// Whether `s` holds no heap buffer of its own: every queue empty and without storage, no
    /// early records, no `SSL`, no error.
    fn holds_no_buffer(s: &Session) -> bool {
        let compact = s.engine.compact().expect("compact");
        s.is_compact()
            && s.engine.openssl().is_none()
            && s.received.capacity() == 0
            && s.received_bytes == 0
            && compact.outbound.capacity() == 0
            && s.hs.is_none()
            && s.error().is_none()
    }

    #[test]
    fn an_idle_compact_session_owns_no_heap_buffer() {
        let now = Instant::now();
        let (sctx, cctx) = compact_contexts(SessionConfig::default());
        let (mut client, mut server) = handshake(&sctx, &cctx, now);
        assert!(client.is_established() && server.is_established());
        let mut app = [0u8; 64];
        // A few exchanges both ways (the first ends the server's linger), several datagrams
        // queued at once, then everything read: both queues had storage and must give it back.
        for round in 0..3 {
            for _ in 0..=round {
                client.send(b"request").unwrap();
            }
            pump(&mut client, &mut server, now);
            assert!(
                server.received.capacity() > 0,
                "storage while datagrams wait"
            );
            while let Ok(Some(n)) = server.recv(&mut app) {
                assert_eq!(&app[..n], b"request");
                server.send(b"answer").unwrap();
            }
            assert!(server.engine.compact().unwrap().outbound.capacity() > 0);
            pump(&mut server, &mut client, now);
            let mut answers = 0;
            while let Ok(Some(n)) = client.recv(&mut app) {
                assert_eq!(&app[..n], b"answer");
                answers += 1;
            }
            assert_eq!(answers, round + 1);
        }
        assert!(holds_no_buffer(&server), "server: {server:?}");
        assert!(holds_no_buffer(&client), "client: {client:?}");
        // The configuration is shared, not copied: a second session of the same context has
        // the same one.
        let other = sctx.new_session(now).unwrap();
        assert!(std::sync::Arc::ptr_eq(&server.config, &other.config));
        // What an idle compact connection's session holds: the session itself and the
        // compact layer's block (plus the PSK identity); the handshake's facts are kept in
        // the session, and their common part is shared with the other connection's.
        assert!(
            std::mem::size_of::<Session>() <= 248,
            "{}",
            std::mem::size_of::<Session>()
        );
        assert!(std::mem::size_of::<Compact>() <= 152);
        let (s, c) = (server.facts().unwrap(), client.facts().unwrap());
        assert!(std::sync::Arc::ptr_eq(&s.common, &c.common));
        assert_eq!(server.psk_identity(), Some(&b"device"[..]));
    }

    /// A PSK server and client context under `config` with compact connections on.
    fn compact_contexts(config: SessionConfig) -> (DtlsServerContext, DtlsClientContext) {
        let config = SessionConfig {
            compact: true,
            ..config
        };
        let sctx = DtlsServerContext::builder()
            .psk_key_store(|_| Some(b"secretPSK".to_vec()))
            .session_config(config.clone())
            .build()
            .unwrap();
        let cctx = DtlsClientContext::builder()
            .psk_credentials(PskCredentials::new(
                b"device".to_vec(),
                b"secretPSK".to_vec(),
            ))
            .session_config(config)
            .build()
            .unwrap();
        (sctx, cctx)
    }

    /// A client and a server session of these contexts, after their handshake (datagrams moved
    /// both ways until neither has more): (client, server).
    fn handshake(
        sctx: &DtlsServerContext,
        cctx: &DtlsClientContext,
        now: Instant,
    ) -> (Session, Session) {
        let mut client = cctx.new_session(None, now).unwrap();
        let mut server = sctx.new_session(now).unwrap();
        for _ in 0..32 {
            let a = pump(&mut client, &mut server, now);
            let b = pump(&mut server, &mut client, now);
            if !a && !b {
                break;
            }
        }
        (client, server)
    }

    /// An established compact client and server under `config` (compact on), after one
    /// exchange each way: the client handed off at once, the server at the client's first
    /// record; both are `Engine::Compact`.
    fn compact_pair(config: SessionConfig, now: Instant) -> (Session, Session) {
        let (sctx, cctx) = compact_contexts(config);
        let (mut client, mut server) = handshake(&sctx, &cctx, now);
        client.send(b"hello").unwrap();
        pump(&mut client, &mut server, now);
        server.send(b"hello").unwrap();
        pump(&mut server, &mut client, now);
        let mut buf = [0u8; 16];
        assert_eq!(client.recv(&mut buf).unwrap(), Some(5));
        assert_eq!(server.recv(&mut buf).unwrap(), Some(5));
        assert!(matches!(client.engine, Engine::Compact(..)));
        assert!(matches!(server.engine, Engine::Compact(..)));
        (client, server)
    }

    /// Every datagram `s` has received, in order.
    fn received(s: &mut Session) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 2048];
        let mut all = Vec::new();
        while let Ok(Some(n)) = s.recv(&mut buf) {
            all.push(buf[..n].to_vec());
        }
        all
    }

    /// The datagrams `s` has to send, taken.
    fn sent(s: &mut Session) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 2048];
        let mut all = Vec::new();
        while let Some(n) = s.poll_transmit(&mut buf) {
            all.push(buf[..n].to_vec());
        }
        all
    }

    #[test]
    fn send_many_on_the_compact_layer_does_what_sends_one_by_one_do() {
        let now = Instant::now();
        let config = SessionConfig {
            send_queue: 5,
            ..SessionConfig::default()
        };
        let (mut many, mut to_many) = compact_pair(config.clone(), now);
        let (mut one, mut to_one) = compact_pair(config, now);
        let send_one_by_one =
            |s: &mut Session, datagrams: &[&[u8]]| datagrams.iter().try_for_each(|d| s.send(d));
        // An empty datagram sends nothing; the sixth non-empty one finds the send queue (5)
        // full: dropped and counted.
        let big = [7u8; 100];
        let batch: [&[u8]; 8] = [b"a", b"", b"ccc", &big, b"e", b"f", b"g", b"h"];
        many.send_many(&batch).unwrap();
        send_one_by_one(&mut one, &batch).unwrap();
        assert_eq!(many.stats(), one.stats());
        assert_eq!(many.stats().send_dropped, 2);
        pump(&mut many, &mut to_many, now);
        pump(&mut one, &mut to_one, now);
        let got = received(&mut to_many);
        assert_eq!(got, received(&mut to_one));
        let want: Vec<Vec<u8>> = [&b"a"[..], b"ccc", &big, b"e", b"f"]
            .iter()
            .map(|d| d.to_vec())
            .collect();
        assert_eq!(got, want);
        // More than a run (8) at once, in order.
        let many_records: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let refs: Vec<&[u8]> = many_records.iter().map(|d| &d[..]).collect();
        for chunk in refs.chunks(5) {
            many.send_many(chunk).unwrap();
            send_one_by_one(&mut one, chunk).unwrap();
            pump(&mut many, &mut to_many, now);
            pump(&mut one, &mut to_one, now);
        }
        assert_eq!(received(&mut to_many), many_records);
        assert_eq!(received(&mut to_one), many_records);
        assert_eq!(many.stats(), one.stats());
        // A payload too large in the middle: those before it sent, then the error.
        let too_large = vec![0u8; many.data_mtu() + 1];
        let batch: [&[u8]; 3] = [b"x", &too_large, b"y"];
        let a = many.send_many(&batch);
        let b = send_one_by_one(&mut one, &batch);
        assert!(matches!(a, Err(Error::PayloadTooLarge { .. })), "{a:?}");
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        pump(&mut many, &mut to_many, now);
        pump(&mut one, &mut to_one, now);
        assert_eq!(received(&mut to_many), vec![b"x".to_vec()]);
        assert_eq!(received(&mut to_one), vec![b"x".to_vec()]);
        // Sequence numbers used up midway: two records seal (2^48 − 4, 2^48 − 3), the third
        // fails the connection, which closes with the number kept for close_notify.
        for s in [&mut many, &mut one] {
            let layer = &mut s.engine.compact_mut().unwrap().layer;
            layer.set_next_write_seq(record::MAX_SEQUENCE - 3);
        }
        let batch: [&[u8]; 4] = [b"1", b"2", b"3", b"4"];
        let a = many.send_many(&batch);
        let b = send_one_by_one(&mut one, &batch);
        assert!(matches!(a, Err(Error::SequenceExhausted)), "{a:?}");
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(many.stats(), one.stats());
        assert!(many.error().is_some() && one.error().is_some());
        let (wire_many, wire_one) = (sent(&mut many), sent(&mut one));
        assert_eq!(wire_many.len(), 3, "two records and the close_notify");
        assert_eq!(wire_one.len(), 3);
        for d in &wire_many {
            to_many.handle_datagram(now, d);
        }
        assert_eq!(received(&mut to_many), vec![b"1".to_vec(), b"2".to_vec()]);
        assert!(matches!(to_many.recv(&mut [0u8; 4]), Err(Error::Closed)));
        // A failed session refuses as one by one does.
        assert!(many.send_many(&[b"z"]).is_err());
    }

    #[test]
    fn a_datagram_of_several_records_is_opened_in_runs_and_a_bad_record_is_refused_alone() {
        let now = Instant::now();
        let (mut client, mut server) = compact_pair(SessionConfig::default(), now);
        let payloads: Vec<Vec<u8>> = (0..11u8).map(|i| vec![i; 20]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|d| &d[..]).collect();
        client.send_many(&refs).unwrap();
        let records = sent(&mut client);
        assert_eq!(records.len(), 11);
        // One datagram of 12 records (two runs): record 4 tampered, record 2 replayed at the
        // end.
        let mut datagram = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let start = datagram.len();
            datagram.extend_from_slice(r);
            if i == 4 {
                datagram[start + r.len() - 1] ^= 1;
            }
        }
        datagram.extend_from_slice(&records[2]);
        let before = server.stats();
        server.handle_datagram(now, &datagram);
        let after = server.stats();
        let want: Vec<Vec<u8>> = payloads
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 4)
            .map(|(_, p)| p.clone())
            .collect();
        assert_eq!(
            received(&mut server),
            want,
            "the neighbours delivered in order"
        );
        assert_eq!(
            after.dropped_unauthenticated_records,
            before.dropped_unauthenticated_records + 1
        );
        assert_eq!(
            after.dropped_replayed_records,
            before.dropped_replayed_records + 1
        );
        assert_eq!(after.app_in, before.app_in + 10);
        // The genuine record 4 still opens (the tampered copy moved nothing).
        server.handle_datagram(now, &records[4]);
        assert_eq!(received(&mut server), vec![payloads[4].clone()]);
        // A close_notify in the middle of a datagram: what follows it is not acted on.
        client.send_many(&[b"before", b"after"]).unwrap();
        let data = sent(&mut client);
        client.close();
        let close = sent(&mut client);
        assert_eq!(close.len(), 1);
        let datagram = [&data[0][..], &close[0], &data[1]].concat();
        let before = server.stats();
        server.handle_datagram(now, &datagram);
        assert_eq!(received(&mut server), vec![b"before".to_vec()]);
        assert!(matches!(server.recv(&mut [0u8; 8]), Err(Error::Closed)));
        assert_eq!(server.stats().app_in, before.app_in + 1);
    }
}
