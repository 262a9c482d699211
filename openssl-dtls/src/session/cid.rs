//! Connection IDs in a session (RFC 9146): what the handshake negotiated ([`crate::cid`]), the
//! `tls12_cid` records of the handshake rewritten between OpenSSL's standard format and the
//! wire's, and the move to the compact record layer that every CID connection makes.
//!
//! OpenSSL writes and reads only standard records. During the handshake (and while a lingering
//! `SSL` may retransmit its last flight) the epoch-1 records it writes are rewritten as
//! `tls12_cid` records carrying the peer's CID when the peer asked for one
//! ([`transcode_outbound_queue`](Session::transcode_outbound_queue)), and `tls12_cid` records
//! from the peer are opened with the epoch-1 keys and handed to OpenSSL as the standard record
//! it would have received ([`handle_handshake_cid`](Session::handle_handshake_cid)). Both use the
//! keys derived from the handshake's master secret (as the compact layer does), as soon as
//! OpenSSL has computed it; the rewritten records never leave the process, so every (key,
//! nonce) pair still protects exactly one record on the wire.

use super::*;

/// A session's Connection IDs, once negotiated.
pub(super) struct CidSession {
    /// Ours: what the peer puts in the records it sends (may be empty; inline, at most
    /// [`MAX_CID_LEN`](crate::cid::MAX_CID_LEN) bytes).
    pub(super) own: crate::cid::InlineCid,
    /// The peer's: what we put in the records we send (may be empty).
    pub(super) peer: Box<[u8]>,
    /// During the handshake: the epoch-1 record layer that transcodes, once its keys exist.
    /// It becomes the compact layer when the handshake completes (boxed: an established
    /// connection keeps only the empty pointer).
    pub(super) transcoder: Option<Box<RecordLayer>>,
}

impl Session {
    /// Reads what the `connection_id` extension decided, once (the `SSL` keeps it in ex data).
    /// Also makes OpenSSL's BIO track the epoch-1 write sequence as soon as the extension is in
    /// play, so the compact layer a CID connection moves to continues after OpenSSL's records.
    ///
    /// The extension is settled when the handshake completes ([`on_established`] checks one
    /// last time): established sessions skip the lookup.
    ///
    /// [`on_established`]: Session::on_established
    pub(super) fn cid_check(&mut self) {
        if self.cid.is_some() || self.state != SessionState::Handshaking {
            return;
        }
        let Some(ssl) = self.engine.ssl() else { return };
        if crate::cid::state(ssl).is_none() {
            return;
        }
        let negotiated = crate::cid::negotiated(ssl).and_then(|(own, peer)| {
            Some(CidSession {
                own: crate::cid::InlineCid::new(own)?,
                peer: peer.into(),
                transcoder: None,
            })
        });
        self.bio_mut().track_epoch1 = true;
        if let Some(cid) = negotiated {
            log::debug!(
                "{:?}: Connection IDs negotiated: ours {}, the peer's {}",
                self.peer,
                crate::cid::to_hex(&cid.own),
                crate::cid::to_hex(&cid.peer)
            );
            self.cid = Some(Box::new(cid));
        }
    }

    /// The negotiated Connection IDs, `(ours, the peer's)`: ours is what the peer puts in the
    /// records it sends us (the key an endpoint routes them by), the peer's what we put in the
    /// records we send. `None` if the handshake did not negotiate them (RFC 9146). An empty CID
    /// means that side asked for records without one.
    pub fn connection_ids(&self) -> Option<(&[u8], &[u8])> {
        self.cid.as_ref().map(|c| (&*c.own, &*c.peer))
    }

    /// The CID an endpoint issued this (server) session: the negotiated one, or, before and
    /// without negotiation, the one assigned to its handshake.
    pub(crate) fn issued_cid(&self) -> Option<&[u8]> {
        if let Some(c) = &self.cid {
            return (!c.own.is_empty()).then_some(&*c.own);
        }
        self.engine
            .ssl()
            .and_then(crate::cid::state)
            .and_then(|s| s.own.as_deref())
            .filter(|own| !own.is_empty())
    }

    /// The newest sequence number of the peer's records that authenticated on the compact
    /// layer, if any (what an endpoint compares to let a CID record move a connection).
    pub(crate) fn newest_read(&self) -> Option<u64> {
        self.engine.compact().and_then(|c| c.layer.newest_read())
    }

    /// The length of the CIDs in records the peer sends us: what received datagrams are
    /// parsed with (0 without CIDs).
    pub(crate) fn own_cid_len(&self) -> u8 {
        if let Some(c) = &self.cid {
            return c.own.len() as u8;
        }
        self.engine
            .ssl()
            .and_then(crate::cid::state)
            .and_then(|s| s.own.as_ref())
            .map_or(0, |own| own.len() as u8)
    }

    /// The transcoder, derived from the handshake's keys when they first exist (during the
    /// handshake only: afterwards the compact layer holds the keys).
    fn transcoder(&mut self) -> Option<&mut RecordLayer> {
        let is_client = self.role == Role::Client;
        let ssl = self.engine.ssl()?;
        let cid = self.cid.as_mut()?;
        if cid.transcoder.is_none() {
            // Before OpenSSL has the master secret (the key exchange not processed yet) there
            // are no keys: `None`, and the record waits for a retransmission.
            let mut layer = RecordLayer::from_ssl(ssl, is_client, 1, 0).ok()??;
            layer.set_read_cid(!cid.own.is_empty());
            cid.transcoder = Some(Box::new(layer));
        }
        cid.transcoder.as_deref_mut()
    }

    /// A handshaking session received a datagram with `tls12_cid` records: the standard records
    /// go to OpenSSL as usual, then each CID record is opened and, if it is a handshake record
    /// (the peer's Finished), given to OpenSSL in the standard format. Once the handshake
    /// completes (the compact layer exists), the remaining CID records go to the compact layer.
    pub(super) fn handle_handshake_cid(&mut self, now: Instant, parsed: &Parsed<'_>) {
        if parsed.records().any(|r| !r.is_cid()) {
            let mut standard = record::take_buffer();
            for r in parsed.records().filter(|r| !r.is_cid()) {
                standard.extend_from_slice(r.bytes());
            }
            if let Ok(sub) = crate::wire::parse(&standard) {
                self.handle_standard(now, &sub);
            }
            record::give_buffer(standard);
        }
        for record in parsed.records().filter(RecordHeader::is_cid) {
            if matches!(self.state, SessionState::Closed | SessionState::Failed) {
                return;
            }
            if self.engine.compact().is_some() {
                self.open_record(&record);
                continue;
            }
            self.cid_check();
            self.open_handshake_cid(now, &record);
        }
    }

    /// One `tls12_cid` record during the handshake (see [`handle_handshake_cid`](Self::handle_handshake_cid)).
    fn open_handshake_cid(&mut self, now: Instant, record: &RecordHeader<'_>) {
        let own_matches = self.cid.as_ref().is_some_and(|c| *c.own == *record.cid());
        if !own_matches || self.state != SessionState::Handshaking {
            self.stats.dropped_unauthenticated_records += 1;
            return;
        }
        let Some(layer) = self.transcoder() else {
            self.stats.dropped_handshake_records += 1;
            return;
        };
        let (mut plain, mut standard) = (record::take_buffer(), record::take_buffer());
        let result = layer.transcode_inbound(record, &mut plain, &mut standard);
        match result {
            Ok(ContentType::Handshake) => {
                self.authenticated = self.authenticated.wrapping_add(1);
                if let Ok(sub) = crate::wire::parse(&standard) {
                    self.feed_openssl(now, &sub, None);
                }
            }
            Ok(ContentType::Alert) if plain.len() == 2 && plain[0] == 2 => {
                // An authenticated fatal alert: the peer ended the handshake.
                let alert = Alert {
                    level: plain[0],
                    description: plain[1],
                };
                log::debug!("peer {:?} sent {alert} during the handshake", self.peer);
                self.fail(Error::PeerAlert(alert));
            }
            // Application data that overtook the peer's Finished (or a warning): dropped, as
            // lost; DTLS applications tolerate loss.
            Ok(_) => self.stats.dropped_handshake_records += 1,
            Err(e) => {
                self.count_open_error(e, record);
                // A server that has read the client's ChangeCipherSpec and whose Finished did
                // not authenticate: different keys (a wrong PSK). Fail now, as the standard path
                // does.
                if e == OpenError::Unauthenticated
                    && self.role == Role::Server
                    && self.engine.openssl().is_some()
                {
                    self.check_finished_authenticated();
                }
            }
        }
        record::give_buffer(plain);
        record::give_buffer(standard);
    }

    /// After OpenSSL wrote: rewrites the epoch-1 records of its queued datagrams as `tls12_cid`
    /// records carrying the peer's CID, when the peer asked for one. A datagram that grows past
    /// the MTU (each record grows by the CID's length plus one) is split at a record boundary.
    pub(super) fn transcode_outbound_queue(&mut self) {
        self.cid_check();
        let peer_len = match &self.cid {
            Some(c) if !c.peer.is_empty() => c.peer.len(),
            _ => return,
        };
        if self.engine.openssl().is_none() || self.bio_ref().outbound_len() == 0 {
            return;
        }
        let needs = |d: &[u8]| {
            crate::wire::records_cid(d, peer_len)
                .flatten()
                .any(|r| !r.is_cid() && r.epoch() >= 1)
        };
        let mut queue = VecDeque::new();
        self.bio_mut().drain_outbound(&mut queue);
        if !queue.iter().any(|d| needs(d)) {
            self.bio_mut().requeue_outbound(queue);
            return;
        }
        // Lingering, the compact layer has the same keys: no second derivation.
        if self.engine.compact().is_none() && self.transcoder().is_none() {
            log::warn!(
                "{:?}: no keys yet to rewrite epoch-1 records with the peer's CID",
                self.peer
            );
            self.bio_mut().requeue_outbound(queue);
            return;
        }
        let mtu = self.config.mtu;
        let compact = self.engine.compact().map(|c| &c.layer);
        let Some((layer, cid)) = self.cid.as_ref().and_then(|c| {
            let layer = compact.or(c.transcoder.as_deref())?;
            Some((layer, &c.peer))
        }) else {
            return;
        };
        let mut out = VecDeque::with_capacity(queue.len() + 1);
        for datagram in queue {
            if !needs(&datagram) {
                out.push_back(datagram);
                continue;
            }
            let mut current = Vec::with_capacity(datagram.len() + 32);
            for r in crate::wire::records_cid(&datagram, peer_len).flatten() {
                let mut piece = Vec::new();
                let piece = if !r.is_cid() && r.epoch() >= 1 {
                    if layer.transcode_outbound(cid, &r, &mut piece).is_err() {
                        log::warn!("{:?}: could not rewrite an epoch-1 record", self.peer);
                        continue;
                    }
                    &piece[..]
                } else {
                    r.bytes()
                };
                if !current.is_empty() && current.len() + piece.len() > mtu {
                    out.push_back(std::mem::take(&mut current));
                }
                current.extend_from_slice(piece);
            }
            if !current.is_empty() {
                out.push_back(current);
            }
        }
        self.bio_mut().requeue_outbound(out);
    }

    /// At the end of a CID handshake: the record layer the compact engine takes over, which is
    /// the transcoder if it exists (its replay window has seen the peer's Finished), with the
    /// CIDs set; and the application data MTU shrunk by what a CID record adds.
    pub(super) fn cid_layer(&mut self, derived: Option<RecordLayer>) -> Option<RecordLayer> {
        let Some(cid) = self.cid.as_mut() else {
            return derived;
        };
        let mut layer = cid.transcoder.take().map(|b| *b).or(derived)?;
        layer.set_read_cid(!cid.own.is_empty());
        if !cid.peer.is_empty() {
            let less = u16::try_from(cid.peer.len() + 1).unwrap_or(u16::MAX);
            self.data_mtu = self.data_mtu.saturating_sub(less);
        }
        Some(layer)
    }
}
