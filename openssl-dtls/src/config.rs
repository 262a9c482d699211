//! Per-session limits and timers ([`SessionConfig`]), shared by the contexts that hold them and
//! the sessions that run with them. Configuration only: no OpenSSL state, no I/O.

use std::time::Duration;

use crate::error::ConfigError;

/// Largest plaintext of one DTLS record (2^14, RFC 6347 §4.1).
pub const MAX_PLAINTEXT: usize = 16_384;

/// The smallest link MTU OpenSSL accepts (`DTLS_get_link_min_mtu`).
pub const MIN_MTU: usize = 256;

/// The largest UDP payload over IPv4.
pub const MAX_MTU: usize = 65_507;

/// Per-session limits and timers. Every field has a documented default with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Largest UDP payload this session emits, in bytes (`DTLS_set_link_mtu`, with
    /// `SSL_OP_NO_QUERY_MTU`). Default 1200: it fits the IPv6 minimum MTU of 1280 less the IPv6
    /// and UDP headers with room for a tunnel, as QUIC and pion choose; several DTLS stacks cannot
    /// receive datagrams over ≈1,400 bytes. Range 256 (OpenSSL's minimum) to 65,507.
    pub mtu: usize,
    /// A handshake not complete this long after it started fails with [`Error::Timeout`](crate::Error::Timeout).
    /// Default 30 s: several retransmissions at the RFC 6347 backoff on a lossy, slow link.
    pub handshake_timeout: Duration,
    /// First retransmission timeout of each flight. Default 1 s (RFC 6347 §4.2.4.1).
    pub retransmit_initial: Duration,
    /// Cap on the doubling retransmission timeout. Default 10 s: RFC 6347 allows 60 s, but a
    /// handshake deadline of 30 s leaves no use for more, and IoT links recover sooner.
    pub retransmit_max: Duration,
    /// Retransmission timeouts allowed in one handshake before it fails with
    /// [`Error::Timeout`](crate::Error::Timeout). Default 12, OpenSSL's own cap (`DTLS1_TMO_ALERT_COUNT`).
    pub max_retransmits: u32,
    /// Received application datagrams queued for [`Session::recv`](crate::Session::recv); more are dropped and
    /// counted. Default 64.
    pub recv_queue: usize,
    /// Bytes of received application data queued; more are dropped and counted. Default 64 KiB
    /// (a value above 4 GiB acts as 4 GiB).
    pub recv_queue_bytes: usize,
    /// Outgoing datagrams queued for [`Session::poll_transmit`](crate::Session::poll_transmit); more are dropped and counted (as
    /// if lost on the network). Default 64: a handshake flight with a long certificate chain at
    /// the minimum MTU still fits.
    pub send_queue: usize,
    /// Compact connections (opt-in, default off): once the handshake completes, move the record
    /// layer from OpenSSL to this library's compact AEAD record layer and free the `SSL`, so an
    /// idle established connection costs about 0.5 KB instead of ≈ 36–70 KB. Only AEAD suites
    /// (AES-GCM, AES-CCM, AES-CCM-8, ChaCha20-Poly1305) are handed off; a session on any other
    /// suite stays on OpenSSL. See `SECURITY-CONSIDERATIONS.md` ("Compact connections") for
    /// what the compact layer owns and when to leave it off.
    pub compact: bool,
    /// In compact mode, how long the side that sent the handshake's last flight (the server,
    /// after a full handshake) keeps its `SSL` to answer a retransmitted final flight of the
    /// peer, unless the peer's first authenticated record proves earlier that it finished.
    /// Default 240 s: twice the TCP maximum segment lifetime, as RFC 6347 §4.2.4 asks. A linger
    /// shorter than the peer's retransmission span can strand a peer whose copy of our final
    /// flight was lost (its retransmissions arrive after the `SSL` is gone): keep it at least
    /// as long as the peer's handshake timeout. Range 1 ms to 1 hour.
    pub compact_linger: Duration,
    /// The context negotiates Connection IDs (set by the context builders, not by users): the
    /// BIO then tracks OpenSSL's epoch-1 sequence numbers from the first write, so that the
    /// compact layer a CID connection moves to continues after them (no nonce is used twice,
    /// even when OpenSSL writes its Finished in the call that also negotiated the CIDs, as a
    /// server does in an abbreviated handshake).
    pub(crate) connection_ids: bool,
    /// In compact mode, keep what RFC 5705's exporter needs after the hand-off frees the `SSL`
    /// (the master secret and the two randoms: 112 bytes in their own allocation per
    /// connection, wiped when it ends), so that
    /// [`Session::export_keying_material`](crate::Session::export_keying_material) keeps
    /// working (`SSL_export_keying_material`). Default off: an idle compact connection then
    /// holds no long-term secret beyond its record keys, and cannot export after the hand-off.
    /// A connection that negotiated an SRTP profile keeps it whatever this says (its SRTP
    /// keying material is an export). Connections on OpenSSL's record layer always export.
    pub keep_exporter_secret: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            mtu: 1200,
            handshake_timeout: Duration::from_secs(30),
            retransmit_initial: Duration::from_secs(1),
            retransmit_max: Duration::from_secs(10),
            max_retransmits: 12,
            recv_queue: 64,
            recv_queue_bytes: 64 * 1024,
            send_queue: 64,
            compact: false,
            compact_linger: Duration::from_secs(240),
            connection_ids: false,
            keep_exporter_secret: false,
        }
    }
}

impl SessionConfig {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn range(
            setting: &'static str,
            value: u64,
            ok: bool,
            allowed: &'static str,
        ) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange {
                    setting,
                    value,
                    allowed,
                })
            }
        }
        range(
            "mtu",
            self.mtu as u64,
            (MIN_MTU..=MAX_MTU).contains(&self.mtu),
            "256 to 65507 bytes",
        )?;
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        range(
            "handshake_timeout",
            ms(self.handshake_timeout),
            !self.handshake_timeout.is_zero(),
            "more than 0 ms",
        )?;
        range(
            "retransmit_initial",
            ms(self.retransmit_initial),
            self.retransmit_initial >= Duration::from_millis(1)
                && self.retransmit_initial <= Duration::from_secs(60),
            "1 ms to 60 s",
        )?;
        range(
            "retransmit_max",
            ms(self.retransmit_max),
            self.retransmit_max >= self.retransmit_initial
                && self.retransmit_max <= Duration::from_secs(3600),
            "at least retransmit_initial, at most 1 hour",
        )?;
        range(
            "recv_queue",
            self.recv_queue as u64,
            self.recv_queue > 0,
            "at least 1",
        )?;
        range(
            "send_queue",
            self.send_queue as u64,
            self.send_queue > 0,
            "at least 1",
        )?;
        range(
            "recv_queue_bytes",
            self.recv_queue_bytes as u64,
            self.recv_queue_bytes >= MAX_PLAINTEXT,
            "at least 16384",
        )?;
        range(
            "compact_linger",
            ms(self.compact_linger),
            self.compact_linger >= Duration::from_millis(1)
                && self.compact_linger <= Duration::from_secs(3600),
            "1 ms to 1 hour",
        )?;
        Ok(())
    }
}
