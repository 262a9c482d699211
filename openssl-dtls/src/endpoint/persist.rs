//! Graceful restart: the established compact connections of an endpoint saved to a sealed file
//! ([`Endpoint::save_state`]) and restored into a new endpoint at start-up
//! ([`Endpoint::restore_state`]), so that the peers' next records are accepted with no new
//! handshake.
//!
//! The details (what is saved, the format, the checks of a restore, the sequence-number
//! reserve) are in [`Endpoint::save_state`]'s documentation.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::symm::{Cipher, Crypter, Mode};

use super::peer::Peer;
use super::{cid, Endpoint, Event};
use crate::error::{Error, Result, StateError};
use crate::record::Cursor;
use crate::session::{SaveOutcome, Session, MAX_SAVED_SESSION_LEN};

/// The state file format version this library writes and reads.
pub const STATE_FORMAT_VERSION: u16 = 1;

/// How far ahead of the live write sequence number a connection's saved one is (2^20 records):
/// the records the old process may still seal after the save (see
/// [`Endpoint::save_state`]).
pub const STATE_SEQUENCE_RESERVE: u64 = 1 << 20;

/// Write sequence numbers a restore skips per millisecond since the save, on top of
/// [`STATE_SEQUENCE_RESERVE`]: a connection restored twice from one file (at different times)
/// uses disjoint numbers unless it sent more than a million records a second. A day's age
/// skips 8.6 × 10^10 of the 2^48 numbers an epoch has.
pub const RESTORE_SEQUENCES_PER_MS: u64 = 1_000;

/// The most connections one section of a state file may hold (2^24).
pub const MAX_STATE_CONNECTIONS: usize = 1 << 24;

/// How far in the future a state file's date may be (clocks of two hosts, or a clock stepped
/// back) before it is refused.
pub const MAX_STATE_CLOCK_SKEW: Duration = Duration::from_secs(60);

const MAGIC: [u8; 8] = *b"ODTLSST\n";
const HEADER_LEN: usize = 8 + 2 + 2 + 2 + 32 + 8 + 4 + 4 + 8 + 12;
const TAG_LEN: usize = 16;
/// The most bytes one saved connection takes: its address, a flag, and the session.
const MAX_ENTRY_LEN: usize = 1 + 16 + 2 + 4 + 1 + MAX_SAVED_SESSION_LEN;
/// Bytes read and opened per cipher call.
const CHUNK: usize = 64 * 1024;

/// The key a state file is sealed with (AES-256-GCM), supplied by the operator: 32 random bytes
/// kept apart from the file (a key file readable by the server's user only, a secret store).
/// Wiped when dropped; its `Debug` shows no key material.
pub struct StateKey([u8; 32]);

impl StateKey {
    /// The key of `bytes`.
    pub fn from_bytes(bytes: &[u8; 32]) -> StateKey {
        StateKey(*bytes)
    }

    /// A fresh random key (`RAND_bytes`).
    #[doc(alias = "RAND_bytes")]
    pub fn generate() -> Result<StateKey> {
        let mut key = [0u8; 32];
        openssl::rand::rand_bytes(&mut key).map_err(Error::Ssl)?;
        let k = StateKey(key);
        crate::ffi::evp::cleanse(&mut key);
        Ok(k)
    }

    /// The key's bytes (to store a generated key; handle with care).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for StateKey {
    fn drop(&mut self) {
        crate::ffi::evp::cleanse(&mut self.0);
    }
}

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(..)")
    }
}

/// What [`Endpoint::save_state`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SaveReport {
    /// Connections saved.
    pub saved: usize,
    /// Connections in their handshake (not saved: their peers retransmit).
    pub skipped_handshaking: usize,
    /// Established connections on OpenSSL's record layer (not saved: compact mode off, or a
    /// suite the compact layer does not carry).
    pub skipped_not_compact: usize,
    /// Bytes written.
    pub bytes: u64,
}

impl SaveReport {
    /// Adds another section's counts (a server's shards).
    pub(crate) fn add(&mut self, other: &SaveReport) {
        self.saved += other.saved;
        self.skipped_handshaking += other.skipped_handshaking;
        self.skipped_not_compact += other.skipped_not_compact;
        self.bytes += other.bytes;
    }
}

/// What [`Endpoint::restore_state`] loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreReport {
    /// Connections restored.
    pub restored: usize,
    /// Saved connections whose address or Connection ID the endpoint already had a connection
    /// for (that connection was kept).
    pub skipped_existing: usize,
    /// When the state was saved (the oldest section's date with shards).
    pub saved_at: Option<SystemTime>,
}

impl RestoreReport {
    /// Adds another section's counts (a server's shards).
    pub(crate) fn add(&mut self, other: &RestoreReport) {
        self.restored += other.restored;
        self.skipped_existing += other.skipped_existing;
        self.saved_at = match (self.saved_at, other.saved_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// When a state is loaded: the endpoint's time, the wall clock, and the oldest state accepted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadAt {
    pub(crate) now: Instant,
    pub(crate) wall_now: SystemTime,
    pub(crate) max_age: Duration,
}

/// One section read, opened and parsed, not yet inserted.
pub(crate) struct Loaded {
    entries: Vec<(SocketAddr, Session, bool)>,
    saved_at: SystemTime,
}

impl Loaded {
    /// Connections it holds.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The suites a server context enables: their OpenSSL and IANA names.
type Suites = Vec<(&'static str, Option<&'static str>)>;

impl Endpoint {
    /// Graceful restart: writes every established compact connection of this (server)
    /// endpoint to `out`, sealed under `key`, dated `saved_at` (the caller's wall clock: the
    /// endpoint reads no clock). The connections keep running: records this endpoint seals
    /// afterwards stay below the saved sequence numbers as long as they are fewer than
    /// [`STATE_SEQUENCE_RESERVE`] per connection; data received afterwards is not covered.
    /// [`restore_state`](Self::restore_state) loads the state into a new endpoint.
    ///
    /// # What is saved
    ///
    /// Every established connection on the compact record layer (see
    /// [`SessionConfig::compact`](crate::SessionConfig::compact)), lingering ones included: its
    /// peer address, AEAD, epoch, keys and IVs, write sequence number (moved ahead by
    /// [`STATE_SEQUENCE_RESERVE`]), explicit-nonce counter, replay window, Connection IDs (ours and
    /// the peer's), data MTU, and the handshake facts that are cheap (cipher, PSK identity, ALPN,
    /// server name, whether it resumed). Not saved: handshakes in flight (counted in
    /// [`SaveReport::skipped_handshaking`]: their peers retransmit, and a new handshake follows),
    /// connections on OpenSSL's record layer (compact mode off, or a CBC suite: their state is
    /// inside the `SSL`; counted in [`SaveReport::skipped_not_compact`]), queued data, the peer's
    /// certificate, the SRTP profile and the exporter's secret (a restored connection exports
    /// nothing).
    ///
    /// # The format
    ///
    /// A section per endpoint (a server with shards writes one per shard, in shard order):
    ///
    /// ```text
    /// header (82 bytes, authenticated as the AEAD's additional data):
    ///   magic "ODTLSST\n" ‖ format version (u16) ‖ shard index (u16) ‖ shard count (u16)
    ///   ‖ configuration fingerprint (32) ‖ saved_at: seconds (u64) and nanoseconds (u32) since
    ///   the Unix epoch ‖ connections (u32) ‖ body length (u64) ‖ nonce (12)
    /// body: the connections, each after a two-byte length, AES-256-GCM under the operator's
    ///   StateKey, with a fresh random nonce
    /// tag (16)
    /// ```
    ///
    /// Integers are big-endian. The body is never written in clear: it is sealed as it is
    /// written, one connection at a time (the save holds one connection's plaintext, the
    /// restore one chunk's, in buffers wiped with `OPENSSL_cleanse` afterwards).
    ///
    /// The **configuration fingerprint** is SHA-256 over what must not change for a saved
    /// connection to stay valid: the server context's cipher string and security level, its
    /// certificate (DER) if it has one, its Connection ID length and prefix, and its compact
    /// setting. A file from another configuration is refused
    /// ([`StateError::OtherConfiguration`]). A PSK key store is a callback and cannot be hashed:
    /// changing the PSKs does not invalidate saved connections (their keys were derived from the
    /// old PSK at the handshake, as a TLS session outlives a key rotation).
    ///
    /// # Restore
    ///
    /// [`Endpoint::restore_state`] checks, in order: magic ([`StateError::NotAStateFile`]),
    /// version ([`StateError::Version`]), shard count and index, fingerprint, date (older than
    /// `max_age`: [`StateError::Expired`]; more than [`MAX_STATE_CLOCK_SKEW`] in the future:
    /// [`StateError::FutureDated`]), the announced size against the bounds before allocating
    /// ([`StateError::TooLarge`]: at most [`MAX_STATE_CONNECTIONS`], and no more than
    /// `max_connections` leaves room for), then reads and opens the body (cut off:
    /// [`StateError::Truncated`]; altered or another key: [`StateError::Unauthenticated`]) and
    /// parses every connection into a temporary list. Only when all of that succeeded is anything
    /// inserted: a refused file leaves the endpoint as it was.
    ///
    /// An address (or a Connection ID) the endpoint already has a connection for keeps its
    /// connection: that saved entry is skipped and counted in [`RestoreReport::skipped_existing`]
    /// (restore right after bind, before any datagram is read, and there are none).
    ///
    /// Restored connections are announced as [`Event::Connected`] (a driver puts them in its accept
    /// queue) but do not count as completed handshakes; their idle clock starts at the restore.
    ///
    /// # Sequence numbers
    ///
    /// The old process usually keeps running for a moment after the save (until its signal
    /// handling finishes) and may seal more records. The write sequence number saved is
    /// therefore [`STATE_SEQUENCE_RESERVE`] past the live one (and the GCM/CCM explicit-nonce
    /// counter, where it continues OpenSSL's, as much): as long as the old process seals fewer
    /// records than that per connection after the save, the restored one never repeats a sequence
    /// number or a (key, nonce) pair. Each restart spends the reserve out of 2^48 sequence numbers.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::{Duration, Instant, SystemTime};
    /// use openssl_dtls::{DtlsServerContext, Endpoint, EndpointConfig, StateKey};
    ///
    /// let ctx = DtlsServerContext::builder()
    ///     .psk_key_store(|_| Some(b"secretPSK".to_vec()))
    ///     .compact_connections(true)
    ///     .build()?;
    /// let old = Endpoint::server(ctx.clone(), EndpointConfig::default())?;
    /// let key = StateKey::generate()?;
    /// let mut file = Vec::new();
    /// let saved = old.save_state(&mut file, &key, SystemTime::now())?;
    /// let mut new = Endpoint::server(ctx, EndpointConfig::default())?;
    /// let restored = new.restore_state(
    ///     &mut &file[..],
    ///     &key,
    ///     Instant::now(),
    ///     SystemTime::now(),
    ///     Duration::from_secs(600),
    /// )?;
    /// assert_eq!(restored.restored, saved.saved);
    /// # Ok::<(), openssl_dtls::Error>(())
    /// ```
    pub fn save_state(
        &self,
        out: &mut impl Write,
        key: &StateKey,
        saved_at: SystemTime,
    ) -> Result<SaveReport> {
        self.save_section(out, key, saved_at, 1)
    }

    /// Loads the connections [`save_state`](Self::save_state) wrote into this (server)
    /// endpoint, all or nothing: `input` must hold exactly one endpoint's state, sealed under
    /// `key`, from an endpoint of the same configuration, saved at most `max_age` before
    /// `wall_now`. `now` is the endpoint's time (the restored connections' idle clocks start
    /// there). Each reason for refusing the file is its own [`StateError`] (as
    /// [`Error::State`]); a refused file loads nothing. Call it before handing the endpoint any
    /// datagram. See [`save_state`](Self::save_state) for the checks, in order.
    pub fn restore_state(
        &mut self,
        input: &mut impl Read,
        key: &StateKey,
        now: Instant,
        wall_now: SystemTime,
        max_age: Duration,
    ) -> Result<RestoreReport> {
        let at = LoadAt {
            now,
            wall_now,
            max_age,
        };
        let loaded = self.load_section(input, key, at, 1, usize::MAX)?;
        expect_end(input)?;
        Ok(self.install(now, loaded))
    }

    /// Writes this endpoint's section of a state of `shard_count` sections.
    pub(crate) fn save_section(
        &self,
        out: &mut impl Write,
        key: &StateKey,
        saved_at: SystemTime,
        shard_count: u16,
    ) -> Result<SaveReport> {
        let (fingerprint, _) = self.fingerprint()?;
        let mut report = SaveReport {
            skipped_handshaking: self.offload.away.len(),
            ..SaveReport::default()
        };
        // Two passes over the (unchanging) table: the first counts and measures, the second
        // seals as it writes. One entry at a time is in clear, in a buffer that never grows
        // (so no reallocation leaves a copy behind) and is wiped at the end.
        let mut scratch = Vec::with_capacity(2 + MAX_ENTRY_LEN);
        let mut body_len = 0u64;
        for (addr, p) in self.peers.iter() {
            if p.replacement.is_some() {
                report.skipped_handshaking += 1;
            }
            scratch.clear();
            match write_entry(*addr, p, &mut scratch) {
                SaveOutcome::Saved => {
                    report.saved += 1;
                    body_len += scratch.len() as u64;
                }
                SaveOutcome::Handshaking => report.skipped_handshaking += 1,
                SaveOutcome::NotCompact => report.skipped_not_compact += 1,
                SaveOutcome::Ended => {}
            }
        }
        let header = Header {
            version: STATE_FORMAT_VERSION,
            shard_index: u16::from(self.shard.unwrap_or(0)),
            shard_count,
            fingerprint,
            saved_at,
            count: u32::try_from(report.saved).unwrap_or(u32::MAX),
            body_len,
            nonce: [0; 12],
        };
        let sealed = Sealer::start(out, key, header).and_then(|mut sealer| {
            for (addr, p) in self.peers.iter() {
                scratch.clear();
                if write_entry(*addr, p, &mut scratch) == SaveOutcome::Saved {
                    sealer.write(&scratch)?;
                }
            }
            sealer.finish()
        });
        crate::ffi::evp::cleanse_vec(&mut scratch);
        report.bytes = sealed?;
        Ok(report)
    }

    /// Reads, opens and parses this endpoint's section of a state of `shard_count` sections,
    /// of at most `limit` connections (and no more than `max_connections` leaves room for),
    /// inserting nothing.
    pub(crate) fn load_section(
        &self,
        input: &mut impl Read,
        key: &StateKey,
        at: LoadAt,
        shard_count: u16,
        limit: usize,
    ) -> Result<Loaded> {
        let LoadAt {
            now,
            wall_now,
            max_age,
        } = at;
        let (fingerprint, suites) = self.fingerprint()?;
        let mut raw = [0u8; HEADER_LEN];
        read_exact(input, &mut raw[..8])?;
        if raw[..8] != MAGIC {
            return Err(StateError::NotAStateFile.into());
        }
        read_exact(input, &mut raw[8..10])?;
        let version = u16::from_be_bytes([raw[8], raw[9]]);
        if version != STATE_FORMAT_VERSION {
            return Err(StateError::Version {
                found: version,
                supported: STATE_FORMAT_VERSION,
            }
            .into());
        }
        read_exact(input, &mut raw[10..])?;
        let header = Header::parse(&raw).ok_or(StateError::Malformed)?;
        if header.shard_count != shard_count {
            return Err(StateError::ShardCount {
                saved: header.shard_count,
                ours: shard_count,
            }
            .into());
        }
        let ours = u16::from(self.shard.unwrap_or(0));
        if header.shard_index != ours {
            return Err(StateError::ShardIndex {
                saved: header.shard_index,
                ours,
            }
            .into());
        }
        if header.fingerprint != fingerprint {
            return Err(StateError::OtherConfiguration.into());
        }
        // Every restore of this file moves the write sequence numbers on by the time since the
        // save (RESTORE_SEQUENCES_PER_MS per millisecond): a file restored twice (a crash loop
        // restoring a stale file, an operator's mistake) at different times gives disjoint
        // numbers, and so no (key, nonce) pair twice, unless one restored process sent more than
        // that rate in between.
        let advance = wall_now
            .duration_since(header.saved_at)
            .map_or(0, |age| age.as_millis())
            .saturating_mul(u128::from(RESTORE_SEQUENCES_PER_MS))
            .min(u128::from(u32::MAX) << 14) as u64;
        match wall_now.duration_since(header.saved_at) {
            Ok(age) if age > max_age => {
                return Err(StateError::Expired { age, max_age }.into());
            }
            Ok(_) => {}
            Err(e) if e.duration() > MAX_STATE_CLOCK_SKEW => {
                return Err(StateError::FutureDated {
                    ahead: e.duration(),
                }
                .into());
            }
            Err(_) => {}
        }
        let room = self
            .config
            .max_connections
            .saturating_sub(self.connections.get());
        let limit = limit.min(room).min(MAX_STATE_CONNECTIONS);
        let count = header.count as usize;
        if count > limit {
            return Err(StateError::TooLarge {
                announced: count as u64,
                limit: limit as u64,
            }
            .into());
        }
        let max_body = (count as u64).saturating_mul(2 + MAX_ENTRY_LEN as u64);
        if header.body_len > max_body {
            return Err(StateError::TooLarge {
                announced: header.body_len,
                limit: max_body,
            }
            .into());
        }
        let config = self
            .server
            .as_ref()
            .ok_or(StateError::NoServerContext)?
            .0
            .session_config();
        // The fingerprint has checked the cipher configuration: a suite the context does not
        // enable cannot appear.
        let names = |name: &[u8]| suites.iter().find(|(n, _)| n.as_bytes() == name).copied();
        let mut entries = Vec::with_capacity(count);
        open_body(input, key, &header, &raw, |entry| {
            if entries.len() == count {
                return false;
            }
            match read_entry(entry, config, &names, now, advance) {
                Some(e) => {
                    entries.push(e);
                    true
                }
                None => false,
            }
        })?;
        if entries.len() != count {
            return Err(StateError::Malformed.into());
        }
        Ok(Loaded {
            entries,
            saved_at: header.saved_at,
        })
    }

    /// Inserts the connections of a loaded section (see [`Endpoint::save_state`]).
    pub(crate) fn install(&mut self, now: Instant, loaded: Loaded) -> RestoreReport {
        let now = self.tick(now);
        let mut report = RestoreReport {
            saved_at: Some(loaded.saved_at),
            ..RestoreReport::default()
        };
        for (addr, session, unconfirmed) in loaded.entries {
            if self.peers.contains_key(&addr)
                || self.offload.away.contains_key(&addr)
                || !self.cids.restored(&session, addr)
            {
                report.skipped_existing += 1;
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.connections += 1;
            let last_active_ns = Peer::active_ns(&session, now);
            self.peers.insert(
                addr,
                Peer {
                    id,
                    session,
                    replacement: None,
                    connected_emitted: true,
                    compact_counted: true,
                    closed_emitted: false,
                    readable_signaled: false,
                    in_ready: false,
                    counted_handshake: false,
                    last_active_ns,
                    scheduled: None,
                    released: false,
                    unconfirmed,
                },
            );
            if unconfirmed {
                // Moved before the save and not confirmed: still nothing may be sent there
                // beyond what comes from there.
                let budget = cid::Unconfirmed {
                    budget: 0,
                    sent: false,
                };
                self.moved.insert(id, (addr, Some(budget)));
            }
            self.events.push_back(Event::Connected { peer: addr, id });
            self.settle(addr, now);
            report.restored += 1;
        }
        log::info!(
            "restored {} connection(s) ({} skipped: address or CID in use)",
            report.restored,
            report.skipped_existing
        );
        report
    }

    /// Forgets every connection and handshake without a word to the peers (no `close_notify`):
    /// after a save that hands the connections over to the next process, so that nothing this
    /// endpoint still does (a handle released, a timer) can end them.
    pub(crate) fn forget_all_silently(&mut self) {
        let addrs: Vec<SocketAddr> = self.peers.keys().copied().collect();
        for addr in addrs {
            self.remove(addr);
        }
        self.ready.clear();
        self.timers.clear();
    }

    /// The configuration fingerprint (see [`Endpoint::save_state`]) and the DTLS 1.2 suites
    /// OpenSSL knows (to find a saved suite's static name).
    fn fingerprint(&self) -> Result<([u8; 32], &'static Suites)> {
        let Some((ctx, _)) = &self.server else {
            return Err(StateError::NoServerContext.into());
        };
        let suites = known_suites()?;
        let mut h = openssl::sha::Sha256::new();
        h.update(b"openssl-dtls state configuration v1\0");
        h.update(ctx.cipher_config().as_bytes());
        h.update(b"\0");
        match ctx.ssl_context().certificate() {
            Some(cert) => {
                h.update(b"certificate\0");
                h.update(&cert.to_der().map_err(Error::Ssl)?);
            }
            None => h.update(b"no certificate\0"),
        }
        match ctx.cid_settings() {
            Some(c) => {
                h.update(&[1, c.len, c.prefix.len() as u8]);
                h.update(&c.prefix);
            }
            None => h.update(&[0]),
        }
        h.update(&[u8::from(ctx.session_config().compact)]);
        Ok((h.finish(), suites))
    }
}

/// Every DTLS 1.2 suite this OpenSSL knows, with its static names (probed once: a client
/// context with every cipher at security level 0 and a PSK callback, so that PSK suites show).
fn known_suites() -> Result<&'static Suites> {
    static SUITES: std::sync::OnceLock<Suites> = std::sync::OnceLock::new();
    if let Some(s) = SUITES.get() {
        return Ok(s);
    }
    use openssl::ssl::{SslContextBuilder, SslMethod, SslVersion};
    let mut b = SslContextBuilder::new(SslMethod::dtls_client()).map_err(Error::Ssl)?;
    b.set_cipher_list("ALL:@SECLEVEL=0").map_err(Error::Ssl)?;
    b.set_security_level(0);
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(Error::Ssl)?;
    b.set_psk_client_callback(|_, _, _, _| Ok(0));
    let ctx = b.build();
    let mut ssl = openssl::ssl::Ssl::new(&ctx).map_err(Error::Ssl)?;
    let suites: Suites = crate::ffi::ctx::supported_ciphers(&mut ssl)
        .map(|stack| {
            stack
                .iter()
                .map(|c| (c.name(), c.standard_name()))
                .collect()
        })
        .unwrap_or_default();
    Ok(SUITES.get_or_init(|| suites))
}

/// A section's header (see [`Endpoint::save_state`]).
struct Header {
    version: u16,
    shard_index: u16,
    shard_count: u16,
    fingerprint: [u8; 32],
    saved_at: SystemTime,
    count: u32,
    body_len: u64,
    nonce: [u8; 12],
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let since = self.saved_at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&self.version.to_be_bytes());
        h.extend_from_slice(&self.shard_index.to_be_bytes());
        h.extend_from_slice(&self.shard_count.to_be_bytes());
        h.extend_from_slice(&self.fingerprint);
        h.extend_from_slice(&since.as_secs().to_be_bytes());
        h.extend_from_slice(&since.subsec_nanos().to_be_bytes());
        h.extend_from_slice(&self.count.to_be_bytes());
        h.extend_from_slice(&self.body_len.to_be_bytes());
        h.extend_from_slice(&self.nonce);
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(&h);
        out
    }

    fn parse(raw: &[u8; HEADER_LEN]) -> Option<Header> {
        let mut r = Cursor::new(&raw[8..]);
        let version = r.u16()?;
        let shard_index = r.u16()?;
        let shard_count = r.u16()?;
        let fingerprint = r.array()?;
        let secs = r.u64()?;
        let nanos = r.u32()?;
        if nanos >= 1_000_000_000 {
            return None;
        }
        let saved_at = UNIX_EPOCH.checked_add(Duration::new(secs, nanos))?;
        Some(Header {
            version,
            shard_index,
            shard_count,
            fingerprint,
            saved_at,
            count: r.u32()?,
            body_len: r.u64()?,
            nonce: r.array()?,
        })
    }
}

/// Appends one saved connection to `out` after a two-byte length: its address, whether it
/// moved to an address not confirmed yet, and the session (see [`Session::write_saved`]). On
/// any outcome but `Saved`, `out` holds nothing of it (nothing secret was written).
fn write_entry(addr: SocketAddr, p: &Peer, out: &mut Vec<u8>) -> SaveOutcome {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    write_addr(out, addr);
    out.push(u8::from(p.unconfirmed));
    let outcome = p.session.write_saved(STATE_SEQUENCE_RESERVE, out);
    let len = out.len() - start - 2;
    if outcome != SaveOutcome::Saved || len > MAX_ENTRY_LEN {
        out.truncate(start);
        return if outcome == SaveOutcome::Saved {
            SaveOutcome::Ended // cannot happen: every field is bounded
        } else {
            outcome
        };
    }
    out[start..start + 2].copy_from_slice(&(len as u16).to_be_bytes());
    outcome
}

/// One saved connection from its entry (without the length), or `None` if it does not parse.
fn read_entry(
    entry: &[u8],
    config: &crate::config::SessionConfig,
    names: &dyn Fn(&[u8]) -> Option<crate::session::SuiteNames>,
    now: Instant,
    advance: u64,
) -> Option<(SocketAddr, Session, bool)> {
    let mut r = Cursor::new(entry);
    let addr = read_addr(&mut r)?;
    let unconfirmed = match r.u8()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let session = Session::read_saved(&mut r, config, addr, names, now, advance)?;
    (r.remaining() == 0).then_some((addr, session, unconfirmed))
}

/// A section being sealed as it is written: AES-256-GCM under the state key, the header as
/// additional data.
struct Sealer<'w, W: Write> {
    out: &'w mut W,
    c: Crypter,
    buf: Vec<u8>,
    written: u64,
}

impl<'w, W: Write> Sealer<'w, W> {
    /// Draws a fresh nonce into `header` and writes it.
    fn start(out: &'w mut W, key: &StateKey, mut header: Header) -> Result<Sealer<'w, W>> {
        openssl::rand::rand_bytes(&mut header.nonce).map_err(Error::Ssl)?;
        let raw = header.encode();
        let mut c = Crypter::new(
            Cipher::aes_256_gcm(),
            Mode::Encrypt,
            &key.0,
            Some(&header.nonce),
        )
        .map_err(Error::Ssl)?;
        c.aad_update(&raw).map_err(Error::Ssl)?;
        out.write_all(&raw).map_err(Error::Io)?;
        Ok(Sealer {
            out,
            c,
            buf: vec![0u8; 2 + MAX_ENTRY_LEN + 16],
            written: HEADER_LEN as u64,
        })
    }

    /// Seals and writes `plain` (at most one entry).
    fn write(&mut self, plain: &[u8]) -> Result<()> {
        let n = self.c.update(plain, &mut self.buf).map_err(Error::Ssl)?;
        self.out.write_all(&self.buf[..n]).map_err(Error::Io)?;
        self.written += n as u64;
        Ok(())
    }

    /// Writes the tag; the bytes written in all.
    fn finish(mut self) -> Result<u64> {
        let n = self.c.finalize(&mut self.buf).map_err(Error::Ssl)?;
        self.out.write_all(&self.buf[..n]).map_err(Error::Io)?;
        let mut tag = [0u8; TAG_LEN];
        self.c.get_tag(&mut tag).map_err(Error::Ssl)?;
        self.out.write_all(&tag).map_err(Error::Io)?;
        Ok(self.written + n as u64 + TAG_LEN as u64)
    }
}

/// Reads the body `header` announces and its tag from `input` and opens it (`raw`: the header
/// as read, the additional data), handing each entry to `entry` as it is decrypted; `entry`
/// returns `false` for one that does not parse. The entries are not to be used unless this
/// returns `Ok`: the tag is checked at the end. A tag that does not verify is
/// [`StateError::Unauthenticated`] (even if an entry failed to parse first: an altered file
/// says so); an entry that did not parse under a good tag, [`StateError::Malformed`]. Only one
/// chunk and one entry are in clear at a time, in buffers that never grow and are wiped.
fn open_body(
    input: &mut impl Read,
    key: &StateKey,
    header: &Header,
    raw: &[u8; HEADER_LEN],
    mut entry: impl FnMut(&[u8]) -> bool,
) -> Result<()> {
    let mut c = Crypter::new(
        Cipher::aes_256_gcm(),
        Mode::Decrypt,
        &key.0,
        Some(&header.nonce),
    )
    .map_err(Error::Ssl)?;
    c.aad_update(raw).map_err(Error::Ssl)?;
    let mut chunk = vec![0u8; CHUNK];
    // Decrypted bytes not yet parsed: less than one entry, plus one chunk.
    let mut pending: Vec<u8> = Vec::with_capacity(2 + MAX_ENTRY_LEN + CHUNK + 16);
    let mut out = vec![0u8; CHUNK + 16];
    let mut malformed = false;
    let result = (|| {
        let mut left = header.body_len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            read_exact(input, &mut chunk[..n])?;
            let m = c.update(&chunk[..n], &mut out).map_err(Error::Ssl)?;
            left -= n as u64;
            if malformed {
                continue; // read on to the tag: an altered file is told as such
            }
            pending.extend_from_slice(&out[..m]);
            let mut at = 0;
            while let Some(len) = pending
                .get(at..at + 2)
                .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
            {
                if len > MAX_ENTRY_LEN {
                    malformed = true;
                    break;
                }
                let Some(e) = pending.get(at + 2..at + 2 + len) else {
                    break; // the rest of this entry is in the next chunk
                };
                if !entry(e) {
                    malformed = true;
                    break;
                }
                at += 2 + len;
            }
            pending.drain(..at.min(pending.len()));
        }
        let mut tag = [0u8; TAG_LEN];
        read_exact(input, &mut tag)?;
        c.set_tag(&tag).map_err(Error::Ssl)?;
        if c.finalize(&mut out).is_err() {
            // The expected outcome of an altered file: not an OpenSSL error to report.
            crate::ffi::evp::clear_error();
            return Err(StateError::Unauthenticated.into());
        }
        if malformed || !pending.is_empty() {
            return Err(StateError::Malformed.into());
        }
        Ok(())
    })();
    crate::ffi::evp::cleanse_vec(&mut pending);
    crate::ffi::evp::cleanse_vec(&mut out);
    result
}

/// `read_exact`, a short input being [`StateError::Truncated`].
fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<()> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        ErrorKind::UnexpectedEof => StateError::Truncated.into(),
        _ => Error::Io(e),
    })
}

/// Fails with [`StateError::TrailingData`] unless `input` is at its end.
pub(crate) fn expect_end(input: &mut impl Read) -> Result<()> {
    let mut one = [0u8; 1];
    loop {
        match input.read(&mut one) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(StateError::TrailingData.into()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Io(e)),
        }
    }
}

fn write_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        SocketAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
            out.extend_from_slice(&a.scope_id().to_be_bytes());
        }
    }
}

fn read_addr(r: &mut Cursor<'_>) -> Option<SocketAddr> {
    Some(match r.u8()? {
        4 => {
            let ip = Ipv4Addr::from(r.array::<4>()?);
            SocketAddr::V4(SocketAddrV4::new(ip, r.u16()?))
        }
        6 => {
            let ip = Ipv6Addr::from(r.array::<16>()?);
            let port = r.u16()?;
            SocketAddr::V6(SocketAddrV6::new(ip, port, 0, r.u32()?))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::DtlsServerContext;
    use crate::endpoint::EndpointConfig;

    fn endpoint() -> Endpoint {
        let ctx = DtlsServerContext::builder()
            .psk_key_store(|_| Some(b"secretPSK".to_vec()))
            .compact_connections(true)
            .build()
            .unwrap();
        Endpoint::server(ctx, EndpointConfig::default()).unwrap()
    }

    /// A section sealed under `key` with `body` as its (announced) body and `count` connections.
    fn sealed(ep: &Endpoint, key: &StateKey, count: u32, body: &[u8]) -> Vec<u8> {
        let (fingerprint, _) = ep.fingerprint().unwrap();
        let header = Header {
            version: STATE_FORMAT_VERSION,
            shard_index: 0,
            shard_count: 1,
            fingerprint,
            saved_at: SystemTime::now(),
            count,
            body_len: body.len() as u64,
            nonce: [0; 12],
        };
        let mut out = Vec::new();
        let mut sealer = Sealer::start(&mut out, key, header).unwrap();
        sealer.write(body).unwrap();
        sealer.finish().unwrap();
        out
    }

    fn restore(ep: &mut Endpoint, key: &StateKey, file: &[u8]) -> Result<RestoreReport> {
        let hour = Duration::from_secs(3600);
        ep.restore_state(&mut &file[..], key, Instant::now(), SystemTime::now(), hour)
    }

    fn state_error(r: Result<RestoreReport>) -> StateError {
        match r {
            Err(Error::State(e)) => e,
            other => panic!("expected a state error, got {other:?}"),
        }
    }

    #[test]
    fn a_well_sealed_body_that_does_not_parse_is_malformed_and_loads_nothing() {
        let mut ep = endpoint();
        let key = StateKey::from_bytes(&[3; 32]);
        // An entry of garbage; an entry length past the bound; fewer entries than announced;
        // an entry cut short at the end.
        let cases: [(u32, Vec<u8>); 4] = [
            (1, vec![0, 3, 9, 9, 9]),
            (1, vec![0xff, 0xff, 0]),
            (2, vec![]),
            (1, vec![0, 1]),
        ];
        for (count, body) in cases {
            let file = sealed(&ep, &key, count, &body);
            assert_eq!(
                state_error(restore(&mut ep, &key, &file)),
                StateError::Malformed,
                "{body:?}"
            );
            assert!(ep.is_empty());
        }
        // An empty section is fine.
        let file = sealed(&ep, &key, 0, &[]);
        assert_eq!(restore(&mut ep, &key, &file).unwrap().restored, 0);
    }

    #[test]
    fn the_announced_size_is_checked_before_anything_is_read() {
        let mut ep = endpoint();
        let key = StateKey::from_bytes(&[3; 32]);
        // More connections than max_connections leaves room for: refused from the header.
        let room = ep.config().max_connections as u32;
        let mut file = sealed(&ep, &key, 0, &[]);
        file[58..62].copy_from_slice(&(room + 1).to_be_bytes());
        assert!(matches!(
            state_error(restore(&mut ep, &key, &file[..HEADER_LEN])),
            StateError::TooLarge { .. }
        ));
        // A body longer than its connections can take.
        let mut file = sealed(&ep, &key, 1, &[]);
        file[62..70].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            state_error(restore(&mut ep, &key, &file[..HEADER_LEN])),
            StateError::TooLarge { .. }
        ));
    }
}
