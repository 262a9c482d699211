// The crate's front page on docs.rs and crates.io: its README, whose code blocks run as doctests.
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod alert;
mod bio;
pub mod cid;
mod client;
pub(crate) mod config;
mod connection;
pub mod context;
pub(crate) mod cookie;
mod driver;
pub mod endpoint;
pub mod error;
mod ffi;
pub mod fleet;
mod listener;
mod plaintext;
mod record;
#[doc(hidden)]
pub use record::bench as __bench;
mod server;
pub mod session;
/// The same server, client and connection on tokio (feature `tokio`).
#[cfg(feature = "tokio")]
pub mod tokio;
mod verify;
pub(crate) mod wire;

pub use crate::client::DtlsClient;
pub use crate::connection::DtlsConnection;
pub use crate::context::{
    CipherPreset, ClientAuth, DtlsClientContext, DtlsClientContextBuilder, DtlsServerContext,
    DtlsServerContextBuilder, PskCredentials, TicketKeys,
};
pub use crate::driver::moves::AddressChange;
pub use crate::driver::SocketOptions;
pub use crate::endpoint::{
    ConnectionId, ConnectionStats, Endpoint, EndpointConfig, EndpointStats, Event,
    HandshakeFailure, HandshakeJob, PeerIdentity, RestoreReport, SaveReport, StateKey,
    HANDSHAKE_INBOX, OFFLOAD_WHILE_TRAFFIC,
};
pub use crate::error::{
    Alert, ConfigError, Error, Result, StateError, TimeoutPhase, VerifyFailure, VerifyReason,
};
pub use crate::server::{DtlsServer, Incoming};
pub use crate::session::{
    HandshakeFacts, Role, Session, SessionConfig, SessionState, SessionStats, SrtpKeyingMaterial,
    SrtpProfile,
};
pub use crate::wire::DropReason;

/// The README's examples, compiled as doctests so they stay true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Crate internals for the cargo-fuzz targets in `fuzz/` (run by `scripts/fuzz.sh`): the record
/// pre-parser and the cookie keys, with the invariants the targets check. Not a stable API:
/// hidden from the documentation and outside semver, and compiled only under `--cfg fuzzing`
/// (which cargo-fuzz passes, and `fuzz/.cargo/config.toml` sets for the seed generator), so
/// ordinary builds carry no fuzzing oracles.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod __fuzz {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use crate::record::RecordLayer;
    use crate::wire::{self, ContentType, Datagram, DropReason, RecordHeader};

    /// Length of a cookie.
    pub const COOKIE_LEN: usize = crate::cookie::COOKIE_LEN;

    /// Runs the pre-parser (`wire::classify`) on `datagram` and panics if its answers disagree
    /// with each other or with the bytes.
    pub fn classify(datagram: &[u8]) {
        let records: Vec<_> = wire::records(datagram).collect();
        let all_ok = records.iter().all(Result::is_ok);
        let total: usize = records.iter().flatten().map(|r| r.total_len()).sum();
        match wire::classify(datagram) {
            Ok(Datagram::ClientHello(info)) => {
                assert!(all_ok && records.len() == 1 && total == datagram.len());
                assert!(wire::is_client_hello(datagram));
                assert_eq!(wire::classify_unknown_peer(datagram), Ok(info));
                if !info.fragmented {
                    // header, handshake header, version, random, two length bytes, the cookie
                    assert!(datagram.len() >= 13 + 12 + 2 + 32 + 2 + info.cookie_len);
                }
            }
            Ok(Datagram::Records {
                first_epoch,
                records: n,
            }) => {
                assert!(all_ok && n == records.len() && n >= 1 && total == datagram.len());
                assert_eq!(records[0].as_ref().map(|r| r.epoch()), Ok(first_epoch));
                assert!(wire::classify_unknown_peer(datagram).is_err());
            }
            Err(DropReason::TooManyRecords) => {
                // Well-formed so far, but more records than a datagram may carry.
                assert!(records
                    .iter()
                    .take(wire::parsed::MAX_RECORDS + 1)
                    .all(Result::is_ok));
                assert!(records.len() > wire::parsed::MAX_RECORDS);
                assert_eq!(
                    wire::classify_unknown_peer(datagram),
                    Err(DropReason::TooManyRecords)
                );
            }
            Err(reason) => {
                // Malformed records, or a lone ClientHello whose handshake header or body failed.
                let hello = records.len() == 1 && wire::is_client_hello(datagram);
                assert!(!all_ok || records.is_empty() || hello, "{reason}");
                assert_eq!(wire::classify_unknown_peer(datagram), Err(reason));
            }
        }
    }

    /// A server's cookie keys (`cookie::CookieSecrets`).
    #[derive(Debug)]
    pub struct Cookies(crate::cookie::CookieSecrets);

    impl Cookies {
        /// Random keys rotated every `interval` from `now`.
        pub fn random(interval: Duration, now: Instant) -> Cookies {
            Cookies(crate::cookie::CookieSecrets::random_from(interval, now).expect("random keys"))
        }

        /// Keys derived from a shared secret; `None` if it is too short.
        pub fn shared(secret: &[u8], interval: Duration) -> Option<Cookies> {
            crate::cookie::CookieSecrets::with_secret(secret, interval)
                .ok()
                .map(Cookies)
        }

        /// The cookie for `peer` into `out`; its length, or 0.
        pub fn generate(&self, now: Instant, peer: SocketAddr, out: &mut [u8]) -> usize {
            self.0.generate(now, peer, out)
        }

        /// Whether `cookie` verifies for `peer`.
        pub fn verify(&self, now: Instant, peer: SocketAddr, cookie: &[u8]) -> bool {
            self.0.verify(now, peer, cookie)
        }
    }

    // -----------------------------------------------------------------------------------------
    // Connection IDs (RFC 9146): the `tls12_cid` parser and the record layer's CID paths.

    /// Parses `datagram` as a receiver of `cid_len`-byte Connection IDs (`wire::parse_cid`),
    /// walks every record view (`cid()`, `fragment()`, `epoch()`, `sequence()`, ...) and panics
    /// if the views disagree with each other, with the record iterator or with the bytes.
    /// Returns whether the datagram holds a `tls12_cid` record, or why it is dropped.
    pub fn parse_cid(datagram: &[u8], cid_len: u8) -> Result<bool, DropReason> {
        let n = usize::from(cid_len);
        let records: Vec<_> = wire::records_cid(datagram, n).collect();
        let parsed = wire::parse_cid(datagram, cid_len);
        if cid_len == 0 {
            // Without CIDs the parser is the classic one, type 25 included (refused).
            assert_eq!(
                parsed.as_ref().map(|p| p.kind()).map_err(|e| *e),
                wire::classify(datagram)
            );
        }
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(reason) => {
                let malformed = records.iter().any(Result::is_err);
                let too_many = records.len() > wire::parsed::MAX_RECORDS;
                let hello = records.len() == 1 && wire::is_client_hello(datagram);
                assert!(
                    malformed || too_many || hello || datagram.is_empty(),
                    "{reason}"
                );
                if let Some(Err(first)) = records.iter().find(|r| r.is_err()) {
                    if records.len() <= wire::parsed::MAX_RECORDS {
                        assert_eq!(*first, reason);
                    }
                }
                return Err(reason);
            }
        };
        let views: Vec<_> = parsed.records().collect();
        assert!(records.iter().all(Result::is_ok));
        assert_eq!(views.len(), records.len());
        assert!(!views.is_empty() && views.len() <= wire::parsed::MAX_RECORDS);
        let mut offset = 0;
        for (view, record) in views.iter().zip(&records) {
            assert_eq!(Ok(view), record.as_ref());
            let header = view.header_bytes();
            let bytes = view.bytes();
            assert_eq!(bytes, &datagram[offset..offset + view.total_len()]);
            offset += view.total_len();
            assert_eq!(bytes.len(), header.len() + view.fragment().len());
            assert_eq!(&bytes[header.len()..], view.fragment());
            assert_eq!(view.length(), view.fragment().len());
            let length = u16::from_be_bytes([header[header.len() - 2], header[header.len() - 1]]);
            assert_eq!(usize::from(length), view.length());
            assert!(view.length() <= (1 << 14) + 2048);
            assert_eq!(header[0], view.content_type().to_u8());
            assert_eq!(view.version(), u16::from_be_bytes([header[1], header[2]]));
            assert_eq!(view.epoch(), u16::from_be_bytes([header[3], header[4]]));
            assert!(view.sequence() < 1 << 48);
            assert_eq!(&view.sequence().to_be_bytes()[2..], &header[5..11]);
            if view.is_cid() {
                assert!(n > 0);
                assert_eq!(view.version(), wire::DTLS1_2_VERSION);
                assert_eq!(header.len(), 13 + n);
                assert_eq!(view.cid(), &header[11..11 + n]);
            } else {
                assert_eq!(header.len(), wire::RECORD_HEADER_LEN);
                assert!(view.cid().is_empty());
            }
        }
        assert_eq!(offset, datagram.len());
        let first_cid = views.iter().find(|r| r.is_cid()).map(|r| r.cid());
        assert_eq!(parsed.cid(), first_cid);
        assert!(n > 0 || first_cid.is_none());
        match parsed.kind() {
            Datagram::ClientHello(_) => {
                assert_eq!(views.len(), 1);
                assert!(!views[0].is_cid());
            }
            Datagram::Records {
                first_epoch,
                records,
            } => {
                assert_eq!(records, views.len());
                assert_eq!(first_epoch, views[0].epoch());
            }
        }
        Ok(first_cid.is_some())
    }

    /// The AEAD suites [`CidLink::new`] takes (by `suite % CID_SUITES.len()`): OpenSSL name and
    /// IANA code.
    pub const CID_SUITES: [(&str, [u8; 2]); 6] = [
        ("PSK-AES128-CCM8", [0xC0, 0xA8]),
        ("PSK-AES128-GCM-SHA256", [0x00, 0xA8]),
        ("PSK-AES256-GCM-SHA384", [0x00, 0xA9]),
        ("PSK-AES128-CCM", [0xC0, 0xA4]),
        ("PSK-AES256-CCM8", [0xC0, 0xA9]),
        ("ECDHE-PSK-CHACHA20-POLY1305", [0xCC, 0xAC]),
    ];

    /// An epoch-1 record layer of `suite` (see [`CID_SUITES`]) for the client or the server side,
    /// writing from sequence number `next_write_seq`; `read`: whether `tls12_cid` records are
    /// expected (the CID the records it seals carry is an argument of `seal`).
    fn layer(suite: usize, is_client: bool, next_write_seq: u64, read: bool) -> RecordLayer {
        let (name, _) = CID_SUITES[suite % CID_SUITES.len()];
        let aead = crate::record::Aead::from_suite_name(name).expect("an AEAD suite");
        // A fixed key block: every link of a suite has the same keys, so records sealed by one
        // run (the seed corpus) authenticate in the next.
        let len = 2 * aead.key_len() + 2 * aead.fixed_iv_len();
        let block: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(29) ^ 0x5a).collect();
        let mut layer = RecordLayer::from_key_block(aead, &block, is_client, 1, next_write_seq);
        layer.set_read_cid(read);
        layer
    }

    /// A content type from a fuzz byte (one of the four a record carries).
    fn content_type(b: u8) -> ContentType {
        [
            ContentType::ChangeCipherSpec,
            ContentType::Alert,
            ContentType::Handshake,
            ContentType::ApplicationData,
        ][usize::from(b % 4)]
    }

    /// Both ends of one CID connection's epoch 1 under fixed keys, the way a session uses them:
    /// the compact layers (`client`, `server`), the server's handshake transcoder and the
    /// standard-record layer standing in for each side's OpenSSL. Every operation checks its
    /// round trip; every record that authenticates anywhere must be exactly the record this
    /// library's sealer would make for its header and plaintext (AEAD: only the key holder makes
    /// records that open, and it never pads).
    #[derive(Debug)]
    pub struct CidLink {
        suite: usize,
        server_cid: Vec<u8>,
        client_cid: Vec<u8>,
        /// Client compact layer: seals with the server's CID, reads the client's (if non-empty).
        client: RecordLayer,
        /// Client's OpenSSL stand-in: standard records under the client's write key.
        client_std: RecordLayer,
        /// Server compact layer.
        server: RecordLayer,
        /// Server's handshake transcoder (`transcode_inbound`).
        server_hs: RecordLayer,
        /// Server's OpenSSL stand-in: opens the standard records the transcoder makes.
        server_std: RecordLayer,
        plain: Vec<u8>,
        out: Vec<u8>,
    }

    /// A record sealed by [`CidLink`], as it went on the wire.
    pub type Sealed = Vec<u8>;

    impl CidLink {
        /// A link of suite `suite % CID_SUITES.len()`, with the server's CID (what the client
        /// writes; empty: none) and the client's (empty: the usual device choice).
        pub fn new(suite: u8, server_cid: &[u8], client_cid: &[u8]) -> CidLink {
            let suite = usize::from(suite) % CID_SUITES.len();
            let (s, c) = (server_cid, client_cid);
            CidLink {
                suite,
                server_cid: s.to_vec(),
                client_cid: c.to_vec(),
                client: layer(suite, true, 0, !c.is_empty()),
                client_std: layer(suite, true, 0, false),
                server: layer(suite, false, 0, !s.is_empty()),
                server_hs: layer(suite, false, 0, !s.is_empty()),
                server_std: layer(suite, false, 0, false),
                plain: Vec::new(),
                out: Vec::new(),
            }
        }

        /// The server CID's length: what datagrams to the server are parsed with.
        pub fn server_cid_len(&self) -> u8 {
            self.server_cid.len() as u8
        }

        /// The client CID's length.
        pub fn client_cid_len(&self) -> u8 {
            self.client_cid.len() as u8
        }

        /// Panics unless `record` is exactly what the sealer of that direction makes for its
        /// epoch, sequence number, CID, `content_type` and `plain`.
        fn assert_genuine(
            &self,
            from_client: bool,
            record: &RecordHeader<'_>,
            content_type: ContentType,
            plain: &[u8],
        ) {
            let cid = record.is_cid().then(|| record.cid());
            let mut writer = layer(self.suite, from_client, record.sequence(), false);
            let mut again = Vec::new();
            let sealed = writer.seal(cid, content_type, plain, &mut again);
            assert_eq!(sealed, Ok(()), "an authenticated record the sealer refuses");
            assert_eq!(
                again,
                record.bytes(),
                "an authenticated record the sealer would not make"
            );
        }

        /// The client's next sequence number: past every record the server's windows saw.
        fn sync_client(&mut self) {
            let seen = [self.server.newest_read(), self.server_hs.newest_read()]
                .into_iter()
                .flatten()
                .max()
                .map_or(0, |s| s + 1);
            let next = self
                .client
                .next_write_seq()
                .max(self.client_std.next_write_seq())
                .max(seen);
            self.client.set_next_write_seq(next);
            self.client_std.set_next_write_seq(next);
        }

        /// The one record of `bytes`, parsed as a receiver of `cid_len`-byte CIDs.
        fn one_record(bytes: &[u8], cid_len: u8) -> RecordHeader<'_> {
            parse_cid(bytes, cid_len).expect("a sealed record parses");
            let record = wire::RecordHeader::new_checked_cid(bytes, usize::from(cid_len))
                .expect("a sealed record parses");
            assert_eq!(record.total_len(), bytes.len());
            record
        }

        /// A record the client sealed reaches the server: its compact layer and its handshake
        /// transcoder (and behind it OpenSSL's stand-in) must open it to the same content.
        fn server_receives(
            &mut self,
            record: &RecordHeader<'_>,
            content_type: ContentType,
            plain: &[u8],
        ) {
            let record = *record;
            let opened = self.server.open(&record, &mut self.plain);
            assert_eq!(opened, Ok(content_type));
            assert_eq!(self.plain, plain);
            self.out.clear();
            let opened = self
                .server_hs
                .transcode_inbound(&record, &mut self.plain, &mut self.out);
            assert_eq!(opened, Ok(content_type));
            assert_eq!(self.plain, plain);
            if content_type == ContentType::Handshake {
                let out = std::mem::take(&mut self.out);
                let standard = Self::one_record(&out, 0);
                assert!(!standard.is_cid());
                assert_eq!(standard.sequence(), record.sequence());
                assert_eq!(standard.content_type(), ContentType::Handshake);
                let opened = self.server_std.open(&standard, &mut self.plain);
                assert_eq!(opened, Ok(ContentType::Handshake));
                assert_eq!(self.plain, plain);
                self.out = out;
            } else {
                assert!(self.out.is_empty());
            }
        }

        /// The client seals a record on its compact layer (a `tls12_cid` record with the
        /// server's CID, if it has one); the server receives it (`server_receives`).
        pub fn client_seal(&mut self, content_type_byte: u8, plain: &[u8]) -> Option<Sealed> {
            self.sync_client();
            let content_type = content_type(content_type_byte);
            let mut sealed = Vec::new();
            self.client
                .seal(Some(&self.server_cid), content_type, plain, &mut sealed)
                .ok()?;
            let record = Self::one_record(&sealed, self.server_cid_len());
            assert_eq!(record.is_cid(), !self.server_cid.is_empty());
            assert_eq!(record.cid(), &self.server_cid[..]);
            assert_eq!(record.epoch(), 1);
            self.server_receives(&record, content_type, plain);
            Some(sealed)
        }

        /// The client's OpenSSL seals a standard record, the client transcodes it to the wire
        /// format (`transcode_outbound`); the server receives it (`server_receives`).
        pub fn client_transcode(&mut self, content_type_byte: u8, plain: &[u8]) -> Option<Sealed> {
            self.sync_client();
            let content_type = content_type(content_type_byte);
            let mut standard = Vec::new();
            self.client_std
                .seal(None, content_type, plain, &mut standard)
                .ok()?;
            let std_record = Self::one_record(&standard, 0);
            let mut wire_record = Vec::new();
            let r = self
                .client
                .transcode_outbound(&self.server_cid, &std_record, &mut wire_record);
            assert_eq!(r, Ok(()));
            let record = Self::one_record(&wire_record, self.server_cid_len());
            assert_eq!(record.sequence(), std_record.sequence());
            assert_eq!(record.epoch(), std_record.epoch());
            if self.server_cid.is_empty() {
                assert_eq!(wire_record, standard);
            } else {
                assert!(record.is_cid());
                assert_eq!(record.cid(), &self.server_cid[..]);
                // Same explicit nonce (GCM, CCM): the record reuses OpenSSL's (key, nonce).
                let e = CID_SUITES[self.suite].0;
                if !e.contains("CHACHA") {
                    assert_eq!(record.fragment()[..8], std_record.fragment()[..8]);
                }
            }
            self.server_receives(&record, content_type, plain);
            Some(wire_record)
        }

        /// The server seals a record on its compact layer; the client must open it.
        pub fn server_seal(&mut self, content_type_byte: u8, plain: &[u8]) -> Option<Sealed> {
            if let Some(seen) = self.client.newest_read() {
                self.server.set_next_write_seq(seen + 1);
            }
            let content_type = content_type(content_type_byte);
            let mut sealed = Vec::new();
            self.server
                .seal(Some(&self.client_cid), content_type, plain, &mut sealed)
                .ok()?;
            let record = Self::one_record(&sealed, self.client_cid_len());
            assert_eq!(record.is_cid(), !self.client_cid.is_empty());
            let opened = self.client.open(&record, &mut self.plain);
            assert_eq!(opened, Ok(content_type));
            assert_eq!(self.plain, plain);
            Some(sealed)
        }

        /// An arbitrary datagram at the server: every record it parses into goes to the
        /// compact layer (`open`), to the handshake transcoder (`transcode_inbound`, and the
        /// standard records it makes to OpenSSL's stand-in) and, as a would-be standard record
        /// of the client's OpenSSL, to `transcode_outbound`. Returns the records that
        /// authenticated somewhere.
        pub fn to_server(&mut self, datagram: &[u8]) -> usize {
            let Ok(parsed) = wire::parse_cid(datagram, self.server_cid_len()) else {
                return 0;
            };
            let mut authentic = 0;
            for record in parsed.records() {
                if let Ok(t) = self.server.open(&record, &mut self.plain) {
                    assert_eq!(record.is_cid(), !self.server_cid.is_empty());
                    self.assert_genuine(true, &record, t, &self.plain);
                    authentic += 1;
                }
                self.out.clear();
                let r = self
                    .server_hs
                    .transcode_inbound(&record, &mut self.plain, &mut self.out);
                match r {
                    Ok(t) => {
                        self.assert_genuine(true, &record, t, &self.plain);
                        authentic += 1;
                        if t == ContentType::Handshake {
                            let out = std::mem::take(&mut self.out);
                            let standard = Self::one_record(&out, 0);
                            let plain = self.plain.clone();
                            let opened = self.server_std.open(&standard, &mut self.plain);
                            assert_eq!(opened, Ok(ContentType::Handshake));
                            assert_eq!(self.plain, plain);
                            self.assert_genuine(true, &standard, t, &plain);
                            self.out = out;
                        } else {
                            assert!(self.out.is_empty());
                        }
                    }
                    Err(_) => assert!(self.out.is_empty()),
                }
                self.out.clear();
                let cid = &self.server_cid;
                match self.client.transcode_outbound(cid, &record, &mut self.out) {
                    Ok(()) if self.server_cid.is_empty() => {
                        assert_eq!(self.out, record.bytes());
                    }
                    Ok(()) => {
                        // It authenticated under the client's write key.
                        assert!(!record.is_cid());
                        let out = std::mem::take(&mut self.out);
                        let cid = Self::one_record(&out, self.server_cid_len());
                        assert!(cid.is_cid() && cid.cid() == &self.server_cid[..]);
                        assert_eq!(
                            (cid.epoch(), cid.sequence()),
                            (record.epoch(), record.sequence())
                        );
                        authentic += 1;
                        self.out = out;
                    }
                    Err(_) => {}
                }
            }
            authentic
        }

        /// An arbitrary datagram at the client's compact layer.
        pub fn to_client(&mut self, datagram: &[u8]) -> usize {
            let Ok(parsed) = wire::parse_cid(datagram, self.client_cid_len()) else {
                return 0;
            };
            let mut authentic = 0;
            for record in parsed.records() {
                if let Ok(t) = self.client.open(&record, &mut self.plain) {
                    assert_eq!(record.is_cid(), !self.client_cid.is_empty());
                    self.assert_genuine(false, &record, t, &self.plain);
                    authentic += 1;
                }
            }
            authentic
        }
    }
}
