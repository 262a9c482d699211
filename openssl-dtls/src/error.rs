//! The library's error type: one enum, a documented variant per cause.
//!
//! Protocol failures are sticky and fatal for their session: once a [`Session`](crate::Session)
//! has failed, every later call returns the same error. Noise from the network (malformed,
//! replayed or unauthenticated records) is not an error: it is dropped and counted.

use std::fmt;
use std::io;

use openssl::error::ErrorStack;

/// A DTLS alert: a level (warning or fatal) and a description code (RFC 5246 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Alert {
    /// 1 = warning, 2 = fatal.
    pub level: u8,
    /// The alert description code, e.g. 40 (`handshake_failure`), 115 (`unknown_psk_identity`).
    pub description: u8,
}

impl Alert {
    /// `close_notify` (0).
    pub const CLOSE_NOTIFY: u8 = 0;
    /// `handshake_failure` (40).
    pub const HANDSHAKE_FAILURE: u8 = 40;
    /// `bad_certificate` (42).
    pub const BAD_CERTIFICATE: u8 = 42;
    /// `unknown_ca` (48).
    pub const UNKNOWN_CA: u8 = 48;
    /// `illegal_parameter` (47).
    pub const ILLEGAL_PARAMETER: u8 = 47;
    /// `decode_error` (50).
    pub const DECODE_ERROR: u8 = 50;
    /// `decrypt_error` (51).
    pub const DECRYPT_ERROR: u8 = 51;
    /// `protocol_version` (70).
    pub const PROTOCOL_VERSION: u8 = 70;
    /// `unknown_psk_identity` (115).
    pub const UNKNOWN_PSK_IDENTITY: u8 = 115;

    pub(crate) fn from_info_value(val: i32) -> Alert {
        Alert {
            level: ((val >> 8) & 0xff) as u8,
            description: (val & 0xff) as u8,
        }
    }

    /// Whether this is a fatal alert.
    pub fn is_fatal(&self) -> bool {
        self.level == 2
    }

    /// OpenSSL's long description of the alert, e.g. `"handshake failure"`
    /// (`SSL_alert_desc_string_long`).
    #[doc(alias = "SSL_alert_desc_string_long")]
    pub fn description_str(&self) -> &'static str {
        crate::bio::alert_desc_str(self.description)
    }
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = if self.is_fatal() { "fatal" } else { "warning" };
        write!(
            f,
            "{level} alert {} ({})",
            self.description,
            self.description_str()
        )
    }
}

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
    /// Anything else, with a message naming the cause.
    Invalid(String),
}

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
    /// The handshake did not complete within its deadline or retransmission budget, or a
    /// connection was idle past its idle timeout.
    Timeout,
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
            Error::Timeout => Error::Timeout,
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
            Error::Timeout => f.write_str("timed out"),
            Error::PeerAlert(a) => write!(f, "peer sent {a}"),
            Error::LocalAlert { alert, reason } => write!(f, "sent {alert}: {reason}"),
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
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Ssl(e) => Some(e),
            Error::Io(e) => Some(e),
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
            Error::Timeout => io::ErrorKind::TimedOut,
            Error::Closed => io::ErrorKind::BrokenPipe,
            Error::NotConnected => io::ErrorKind::NotConnected,
            Error::PayloadTooLarge { .. } | Error::Config(_) => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::ConnectionAborted,
        };
        io::Error::new(kind, e)
    }
}

/// `Result<T, Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
