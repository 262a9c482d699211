//! The library's error type: one enum, a documented variant per cause.
//!
//! Protocol failures are sticky and fatal for their session: once a [`Session`](crate::Session)
//! has failed, every later call returns the same error. Noise from the network (malformed,
//! replayed or unauthenticated records) is not an error: it is dropped and counted.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use openssl::error::ErrorStack;

pub use crate::alert::Alert;
use crate::alert::Hinted;

/// A configuration mistake found when a context or endpoint is built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A certificate, key or PEM/DER input could not be read or parsed.
    Unreadable {
        /// What was being read (a file name or "certificate bytes").
        what: String,
        /// Why it failed (OpenSSL's reason or the I/O error).
        reason: String,
    },
    /// The private key does not belong to the certificate.
    KeyMismatch,
    /// A server has neither a PSK key store nor a certificate.
    NoCredentials,
    /// The cipher string selects no cipher, or OpenSSL rejects it.
    Ciphers {
        /// The cipher string as given.
        ciphers: String,
        /// Why it selects nothing.
        reason: String,
    },
    /// A group (curve) name OpenSSL does not know.
    Groups {
        /// The group list as given.
        groups: String,
    },
    /// A signature algorithm list OpenSSL does not accept.
    SignatureAlgorithms {
        /// The list as given.
        sigalgs: String,
    },
    /// A numeric setting outside its allowed range.
    OutOfRange {
        /// The setting's name, e.g. `"mtu"`.
        setting: &'static str,
        /// The value given.
        value: u64,
        /// The allowed range, in words.
        allowed: &'static str,
    },
    /// A client session was asked for with certificate verification on but neither a server
    /// name nor a peer address to check the server's certificate against
    /// ([`DtlsClientContext::new_session`](crate::DtlsClientContext::new_session) with `None`).
    NoServerIdentity,
    /// Anything else, with a message naming the cause.
    Invalid(String),
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Unreadable { what, reason } => write!(f, "cannot read {what}: {reason}"),
            ConfigError::KeyMismatch => {
                f.write_str("the private key does not match the certificate")
            }
            ConfigError::NoCredentials => f.write_str(
                "a server needs a PSK key store callback or a certificate and private key",
            ),
            ConfigError::Ciphers { ciphers, reason } => {
                write!(f, "cipher string {ciphers:?} is unusable: {reason}")
            }
            ConfigError::Groups { groups } => write!(f, "unknown group in {groups:?}"),
            ConfigError::SignatureAlgorithms { sigalgs } => {
                write!(f, "signature algorithms {sigalgs:?} are not accepted")
            }
            ConfigError::OutOfRange {
                setting,
                value,
                allowed,
            } => {
                write!(f, "{setting} = {value} is out of range ({allowed})")
            }
            ConfigError::NoServerIdentity => f.write_str(
                "certificate verification is on but there is no server name or IP address to \
                 check the certificate against: pass a server name, use new_session_to(peer, ..), \
                 or opt out with danger_skip_server_name_check()",
            ),
            ConfigError::Invalid(message) => f.write_str(message),
        }
    }
}

/// Every error this library returns.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A context or endpoint configuration is invalid; found at `build()`.
    Config(ConfigError),
    /// `send` was given more bytes than fit one record within the MTU
    /// ([`DTLS_get_data_mtu`](https://www.openssl.org/docs/man3.0/man3/DTLS_get_data_mtu.html)).
    /// Nothing was sent: DTLS never splits or truncates application data.
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// The largest payload that fits.
        max: usize,
    },
    /// The handshake has not completed yet.
    NotConnected,
    /// The connection was closed in an orderly way (by either side) and can carry no more data.
    Closed,
    /// `connect` was called on a client that is closed (or was closed while connecting).
    ClientClosed,
    /// The handshake with `peer` did not complete in time.
    Timeout {
        /// The peer, when known.
        peer: Option<SocketAddr>,
        /// Which deadline passed.
        phase: TimeoutPhase,
    },
    /// An established connection heard nothing from `peer` for `idle` and was dropped
    /// ([`EndpointConfig::idle_timeout`](crate::EndpointConfig::idle_timeout)).
    IdleTimeout {
        /// The peer, when known.
        peer: Option<SocketAddr>,
        /// The idle timeout that passed.
        idle: Duration,
    },
    /// The peer's certificate (or, on a server, the client's) did not verify: why, where in the
    /// chain, and OpenSSL's error queue as [`source`](std::error::Error::source).
    Verification(VerifyFailure),
    /// The peer sent a fatal alert.
    PeerAlert(Alert),
    /// This side failed the handshake or connection and sent `alert` to the peer; `reason` is
    /// OpenSSL's account of why (for example a certificate that does not verify).
    LocalAlert {
        /// The alert sent.
        alert: Alert,
        /// OpenSSL's reason.
        reason: String,
    },
    /// The connection used up its 2^48 record sequence numbers (compact record layer): it must
    /// be re-established. At one record per microsecond this takes nine years.
    SequenceExhausted,
    /// Any other OpenSSL failure, with OpenSSL's error queue.
    Ssl(ErrorStack),
    /// A socket error in a blocking or async driver.
    Io(io::Error),
    /// The endpoint dropped this established connection to make room for a new one: the
    /// connection limit was reached and this was the least recently active connection, idle for
    /// at least [`EndpointConfig::evict_idle_after`](crate::EndpointConfig::evict_idle_after).
    /// The peer was sent a `close_notify`.
    Evicted {
        /// The peer.
        peer: Option<std::net::SocketAddr>,
        /// How long the connection had received nothing authenticated.
        idle: std::time::Duration,
    },
    /// A saved state file (graceful restart, [`Endpoint::restore_state`]) was refused, or
    /// could not be written: why, as a [`StateError`]. Nothing of a refused file was loaded.
    ///
    /// [`Endpoint::restore_state`]: crate::Endpoint::restore_state
    State(StateError),
    /// The UDP socket could not be bound to `addr`.
    Bind {
        /// The address given to `bind`.
        addr: SocketAddr,
        /// The operating system's error (its kind is kept, e.g. `AddrInUse`).
        source: io::Error,
    },
}

/// Why a saved state file (graceful restart) was refused ([`Error::State`]): each check of
/// [`Endpoint::restore_state`](crate::Endpoint::restore_state) has its own variant. Whatever
/// the variant, nothing of the file was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    /// The input does not start with the state file's magic bytes: not a state file.
    NotAStateFile,
    /// A state file of another format version.
    Version {
        /// The version the file has.
        found: u16,
        /// The version this library reads and writes.
        supported: u16,
    },
    /// The input ended before the state it announces (a cut-off file).
    Truncated,
    /// Bytes follow the last section of the state.
    TrailingData,
    /// The file was saved under another configuration: another cipher list, certificate,
    /// Connection ID length or prefix, or compact setting (see the configuration fingerprint
    /// in `Endpoint::save_state`).
    OtherConfiguration,
    /// The file was saved by a server with another number of shards (connections are restored
    /// into the shard of the same index).
    ShardCount {
        /// Shards of the server that saved it.
        saved: u16,
        /// Shards of this server.
        ours: u16,
    },
    /// A section of the file belongs to another shard index than the endpoint restoring it.
    ShardIndex {
        /// The section's shard index.
        saved: u16,
        /// This endpoint's.
        ours: u16,
    },
    /// It holds more connections than the bound (or than `max_connections` leaves room for).
    TooLarge {
        /// Connections (or bytes) announced.
        announced: u64,
        /// The largest number accepted.
        limit: u64,
    },
    /// It is older than the maximum age allowed.
    Expired {
        /// Its age at restore.
        age: Duration,
        /// The maximum age given.
        max_age: Duration,
    },
    /// It is dated in the future beyond the allowed clock skew
    /// ([`MAX_STATE_CLOCK_SKEW`](crate::endpoint::MAX_STATE_CLOCK_SKEW)).
    FutureDated {
        /// How far ahead of the restoring clock.
        ahead: Duration,
    },
    /// The seal did not verify: the file was altered, or the key is not the one it was
    /// saved with.
    Unauthenticated,
    /// The sealed body verified but does not parse (written by a faulty writer).
    Malformed,
    /// A client-only endpoint: only a server endpoint (with its context) saves and restores.
    NoServerContext,
}

impl std::error::Error for StateError {}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::NotAStateFile => f.write_str("not an openssl-dtls state file"),
            StateError::Version { found, supported } => write!(
                f,
                "state file format version {found} (this library reads version {supported})"
            ),
            StateError::Truncated => f.write_str("the state file is truncated"),
            StateError::TrailingData => f.write_str("bytes follow the end of the state"),
            StateError::OtherConfiguration => f.write_str(
                "the state was saved under another configuration \
                 (ciphers, certificate, Connection ID or compact setting)",
            ),
            StateError::ShardCount { saved, ours } => write!(
                f,
                "the state was saved by a server with {saved} shard(s); this one has {ours}"
            ),
            StateError::ShardIndex { saved, ours } => {
                write!(f, "a section of shard {saved} given to shard {ours}")
            }
            StateError::TooLarge { announced, limit } => {
                write!(
                    f,
                    "the state announces {announced} (at most {limit} accepted)"
                )
            }
            StateError::Expired { age, max_age } => write!(
                f,
                "the state is {} s old (at most {} s accepted)",
                age.as_secs(),
                max_age.as_secs()
            ),
            StateError::FutureDated { ahead } => {
                write!(f, "the state is dated {} s in the future", ahead.as_secs())
            }
            StateError::Unauthenticated => f.write_str(
                "the state's seal does not verify: altered, or sealed under another key",
            ),
            StateError::Malformed => f.write_str("the state's sealed body does not parse"),
            StateError::NoServerContext => {
                f.write_str("only a server endpoint saves and restores its connections")
            }
        }
    }
}

impl From<StateError> for Error {
    fn from(e: StateError) -> Error {
        Error::State(e)
    }
}

/// Which deadline a handshake missed ([`Error::Timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutPhase {
    /// The handshake passed its deadline
    /// ([`SessionConfig::handshake_timeout`](crate::SessionConfig::handshake_timeout)).
    Handshake,
    /// The handshake used up its retransmissions
    /// ([`SessionConfig::max_retransmits`](crate::SessionConfig::max_retransmits)), or OpenSSL
    /// gave up retransmitting: the peer stopped answering.
    Retransmissions,
    /// The `timeout` given to `connect` passed before the handshake completed.
    Connect,
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Handshake => "the handshake deadline passed",
            TimeoutPhase::Retransmissions => "no answer after the last retransmission",
            TimeoutPhase::Connect => "the connect timeout passed",
        })
    }
}

/// Why a certificate did not verify, from OpenSSL's verify result (`SSL_get_verify_result`,
/// `X509_V_ERR_*`).
#[doc(alias = "SSL_get_verify_result")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VerifyReason {
    /// The certificate is not for the server name asked for (`X509_V_ERR_HOSTNAME_MISMATCH`).
    HostnameMismatch,
    /// The certificate is not for the peer's IP address (`X509_V_ERR_IP_ADDRESS_MISMATCH`).
    IpMismatch,
    /// The certificate has expired (`X509_V_ERR_CERT_HAS_EXPIRED`).
    Expired,
    /// The certificate is not valid yet (`X509_V_ERR_CERT_NOT_YET_VALID`).
    NotYetValid,
    /// No trusted root issued the chain (`X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY` and
    /// relatives).
    UnknownIssuer,
    /// A self-signed certificate that is not a trusted root
    /// (`X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT`, `X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN`).
    SelfSigned,
    /// A signature in the chain does not verify (`X509_V_ERR_CERT_SIGNATURE_FAILURE`).
    BadSignature,
    /// The certificate may not be used for this purpose, e.g. a client certificate offered by a
    /// server (`X509_V_ERR_INVALID_PURPOSE`).
    InvalidPurpose,
    /// An issuer in the chain is not a CA (`X509_V_ERR_INVALID_CA`).
    InvalidCa,
    /// The certificate is revoked (`X509_V_ERR_CERT_REVOKED`).
    Revoked,
    /// The root is not trusted for this use, or was rejected (`X509_V_ERR_CERT_UNTRUSTED`,
    /// `X509_V_ERR_CERT_REJECTED`).
    Untrusted,
    /// The verification callback rejected the certificate.
    Rejected,
    /// Any other `X509_V_ERR_*` code.
    Other(i32),
}

impl VerifyReason {
    /// The reason for an `X509_V_ERR_*` code.
    pub fn from_code(code: i32) -> VerifyReason {
        use openssl_sys as x;
        match code {
            x::X509_V_ERR_HOSTNAME_MISMATCH => VerifyReason::HostnameMismatch,
            x::X509_V_ERR_IP_ADDRESS_MISMATCH => VerifyReason::IpMismatch,
            x::X509_V_ERR_CERT_HAS_EXPIRED => VerifyReason::Expired,
            x::X509_V_ERR_CERT_NOT_YET_VALID => VerifyReason::NotYetValid,
            x::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
            | x::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
            | x::X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE => VerifyReason::UnknownIssuer,
            x::X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT | x::X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN => {
                VerifyReason::SelfSigned
            }
            x::X509_V_ERR_CERT_SIGNATURE_FAILURE
            | x::X509_V_ERR_UNABLE_TO_DECRYPT_CERT_SIGNATURE
            | x::X509_V_ERR_UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY => VerifyReason::BadSignature,
            x::X509_V_ERR_INVALID_PURPOSE => VerifyReason::InvalidPurpose,
            x::X509_V_ERR_INVALID_CA => VerifyReason::InvalidCa,
            x::X509_V_ERR_CERT_REVOKED => VerifyReason::Revoked,
            x::X509_V_ERR_CERT_UNTRUSTED | x::X509_V_ERR_CERT_REJECTED => VerifyReason::Untrusted,
            x::X509_V_OK | x::X509_V_ERR_APPLICATION_VERIFICATION => VerifyReason::Rejected,
            other => VerifyReason::Other(other),
        }
    }
}

impl fmt::Display for VerifyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyReason::HostnameMismatch => {
                f.write_str("the certificate is not for this host name")
            }
            VerifyReason::IpMismatch => f.write_str("the certificate is not for this IP address"),
            VerifyReason::Expired => f.write_str("the certificate has expired"),
            VerifyReason::NotYetValid => f.write_str("the certificate is not valid yet"),
            VerifyReason::UnknownIssuer => f.write_str("no trusted root issued the certificate"),
            VerifyReason::SelfSigned => {
                f.write_str("the certificate is self-signed and not trusted")
            }
            VerifyReason::BadSignature => f.write_str("a certificate signature does not verify"),
            VerifyReason::InvalidPurpose => {
                f.write_str("the certificate may not be used for this purpose")
            }
            VerifyReason::InvalidCa => f.write_str("an issuer in the chain is not a CA"),
            VerifyReason::Revoked => f.write_str("the certificate is revoked"),
            VerifyReason::Untrusted => f.write_str("the root is not trusted for this use"),
            VerifyReason::Rejected => {
                f.write_str("the verification callback rejected the certificate")
            }
            VerifyReason::Other(code) => write!(f, "X509 verification error {code}"),
        }
    }
}

/// A certificate verification failure ([`Error::Verification`]): OpenSSL's verify result
/// (`SSL_get_verify_result`) and the certificate it failed on (`X509_STORE_CTX_get_error_depth`,
/// `X509_STORE_CTX_get_current_cert`, captured in the verification callback).
#[doc(alias = "SSL_get_verify_result")]
#[doc(alias = "X509_STORE_CTX_get_error_depth")]
#[derive(Debug, Clone)]
pub struct VerifyFailure {
    /// Why, in words a program can match on.
    pub reason: VerifyReason,
    /// The raw `X509_V_ERR_*` code (0 when a callback rejected a certificate OpenSSL accepted).
    pub code: i32,
    /// Where in the verified chain: 0 is the peer's own certificate, 1 its issuer, ...
    pub depth: u32,
    /// The subject of the failing certificate (OpenSSL's one-line form, e.g. `CN=example`), when
    /// known.
    pub subject: Option<String>,
    /// The alert this side sent to the peer.
    pub alert: Alert,
    /// OpenSSL's error queue at the failure (also the error's
    /// [`source`](std::error::Error::source)).
    pub errors: ErrorStack,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "certificate verification failed: {}", self.reason)?;
        match &self.subject {
            Some(subject) => write!(f, " (depth {}, {subject})", self.depth)?,
            None => write!(f, " (depth {})", self.depth)?,
        }
        write!(f, "; sent {}", self.alert)
    }
}

impl Error {
    /// A copy of this error (I/O errors keep their kind and message).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Config(e) => Error::Config(e.clone()),
            Error::PayloadTooLarge { len, max } => Error::PayloadTooLarge {
                len: *len,
                max: *max,
            },
            Error::NotConnected => Error::NotConnected,
            Error::Closed => Error::Closed,
            Error::ClientClosed => Error::ClientClosed,
            Error::Timeout { peer, phase } => Error::Timeout {
                peer: *peer,
                phase: *phase,
            },
            Error::IdleTimeout { peer, idle } => Error::IdleTimeout {
                peer: *peer,
                idle: *idle,
            },
            Error::Verification(v) => Error::Verification(v.clone()),
            Error::PeerAlert(a) => Error::PeerAlert(*a),
            Error::LocalAlert { alert, reason } => Error::LocalAlert {
                alert: *alert,
                reason: reason.clone(),
            },
            Error::SequenceExhausted => Error::SequenceExhausted,
            Error::Ssl(e) => Error::Ssl(e.clone()),
            Error::Io(e) => Error::Io(io::Error::new(e.kind(), e.to_string())),
            Error::Evicted { peer, idle } => Error::Evicted {
                peer: *peer,
                idle: *idle,
            },
            Error::State(e) => Error::State(e.clone()),
            Error::Bind { addr, source } => Error::Bind {
                addr: *addr,
                source: io::Error::new(source.kind(), source.to_string()),
            },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "invalid configuration: {e}"),
            Error::PayloadTooLarge { len, max } => write!(
                f,
                "payload of {len} bytes does not fit one DTLS record (at most {max} bytes at this MTU and cipher)"
            ),
            Error::NotConnected => f.write_str("the DTLS handshake has not completed"),
            Error::Closed => f.write_str("the DTLS connection is closed"),
            Error::ClientClosed => f.write_str("the DTLS client is closed: it cannot connect"),
            Error::Timeout { peer, phase } => {
                f.write_str("DTLS handshake")?;
                if let Some(peer) = peer {
                    write!(f, " with {peer}")?;
                }
                write!(f, " timed out: {phase}")
            }
            Error::IdleTimeout { peer, idle } => {
                f.write_str("DTLS connection")?;
                if let Some(peer) = peer {
                    write!(f, " with {peer}")?;
                }
                write!(f, " dropped: nothing received for {idle:?}")
            }
            Error::Verification(v) => write!(f, "{v}"),
            Error::PeerAlert(a) => write!(f, "peer sent {}", Hinted(a)),
            Error::LocalAlert { alert, reason } => write!(f, "sent {}: {reason}", Hinted(alert)),
            Error::SequenceExhausted => {
                f.write_str("the connection's record sequence numbers are used up")
            }
            Error::Ssl(e) => write!(f, "OpenSSL error: {e}"),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Evicted { peer, idle } => {
                let idle = idle.as_secs();
                match peer {
                    Some(peer) => write!(f, "the connection with {peer} was dropped to make room for a new one (idle for {idle} s)"),
                    None => write!(f, "the connection was dropped to make room for a new one (idle for {idle} s)"),
                }
            }
            Error::State(e) => write!(f, "saved state refused: {e}"),
            Error::Bind { addr, source } => write!(f, "bind {addr}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Ssl(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::Bind { source, .. } => Some(source),
            Error::Verification(v) => Some(&v.errors),
            _ => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(e)
    }
}

impl From<ErrorStack> for Error {
    fn from(e: ErrorStack) -> Error {
        Error::Ssl(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Io(inner) => inner.kind(),
            Error::Bind { source, .. } => source.kind(),
            Error::Timeout { .. } | Error::IdleTimeout { .. } => io::ErrorKind::TimedOut,
            Error::Closed | Error::ClientClosed => io::ErrorKind::BrokenPipe,
            Error::NotConnected => io::ErrorKind::NotConnected,
            Error::PayloadTooLarge { .. } | Error::Config(_) => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::ConnectionAborted,
        };
        io::Error::new(kind, e)
    }
}

/// `Result<T, Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
