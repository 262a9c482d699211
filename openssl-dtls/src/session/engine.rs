//! Which record layer carries a session's records: [`Engine`], whose variants are the real states
//! of a connection, and the transitions between them (explicit functions on
//! [`Session`](super::Session): `start_compact` and `hand_off`).
//!
//! ```text
//! OpenSsl ──(handshake done, compact mode, AEAD suite)──┬─ received the last flight ──> Compact
//!                                                       └─ sent it ──> Lingering ──(peer's first
//!                                                            authenticated record, our first write,
//!                                                            close, or `compact_linger`)──> Compact
//! ```

use std::collections::VecDeque;
use std::time::Instant;

use openssl::ssl::{Ssl, SslRef};
use openssl::x509::X509;

use crate::ffi::bio::BioHandle;
use crate::record::RecordLayer;

/// The OpenSSL side of a session: the `SSL` and the state of its datagram BIO (which the `SSL`
/// owns: the handle is dropped with it).
pub(super) struct OpenSsl {
    pub(super) ssl: Ssl,
    pub(super) bio: BioHandle,
}

/// Which record layer carries the records of a session.
pub(super) enum Engine {
    /// OpenSSL runs the handshake and, without compact mode (or on a suite the compact layer does
    /// not carry), every record after it.
    OpenSsl(OpenSsl),
    /// Compact mode after the handshake, on the side that sent the handshake's last flight: the
    /// compact layer opens every application and alert record; OpenSSL is kept until `until`
    /// only to answer a retransmitted final flight of the peer, and writes nothing new.
    Lingering {
        openssl: OpenSsl,
        compact: Box<Compact>,
        until: Instant,
    },
    /// Compact mode after the hand-off: the compact layer carries everything; the `SSL` is freed.
    Compact(Box<Compact>),
    /// Only inside a transition (`std::mem::replace`); never observed between calls.
    Switching,
}

impl Engine {
    /// The OpenSSL side, while the `SSL` exists.
    pub(super) fn openssl(&self) -> Option<&OpenSsl> {
        match self {
            Engine::OpenSsl(o) | Engine::Lingering { openssl: o, .. } => Some(o),
            Engine::Compact(_) | Engine::Switching => None,
        }
    }

    pub(super) fn openssl_mut(&mut self) -> Option<&mut OpenSsl> {
        match self {
            Engine::OpenSsl(o) | Engine::Lingering { openssl: o, .. } => Some(o),
            Engine::Compact(_) | Engine::Switching => None,
        }
    }

    /// The `SSL`, while it exists.
    pub(super) fn ssl(&self) -> Option<&SslRef> {
        self.openssl().map(|o| &*o.ssl)
    }

    /// The compact layer, once it has keys (lingering or handed off).
    pub(super) fn compact(&self) -> Option<&Compact> {
        match self {
            Engine::Lingering { compact, .. } | Engine::Compact(compact) => Some(compact),
            Engine::OpenSsl(_) | Engine::Switching => None,
        }
    }

    pub(super) fn compact_mut(&mut self) -> Option<&mut Compact> {
        match self {
            Engine::Lingering { compact, .. } | Engine::Compact(compact) => Some(compact),
            Engine::OpenSsl(_) | Engine::Switching => None,
        }
    }

    /// When a lingering `SSL` is freed at the latest.
    pub(super) fn linger_until(&self) -> Option<Instant> {
        match self {
            Engine::Lingering { until, .. } => Some(*until),
            _ => None,
        }
    }

    pub(super) fn is_lingering(&self) -> bool {
        matches!(self, Engine::Lingering { .. })
    }
}

/// A compact session's record layer and what it remembers of the freed `SSL`.
pub(super) struct Compact {
    pub(super) layer: RecordLayer,
    /// Datagrams sealed by the compact layer (or left by OpenSSL at the hand-off).
    pub(super) outbound: VecDeque<Vec<u8>>,
    /// The handshake's facts, read from the `SSL` before it was freed.
    pub(super) facts: Option<Box<SslFacts>>,
    /// Renegotiation requests answered with `no_renegotiation` so far (at most
    /// [`MAX_RENEGOTIATION_REFUSALS`](super::MAX_RENEGOTIATION_REFUSALS)).
    pub(super) renegotiation_refusals: u8,
}

/// What a handshake established, read once from the `SSL` when it is freed: what the accessors
/// of a compact session report.
pub(super) struct SslFacts {
    pub(super) version: &'static str,
    pub(super) cipher: Option<&'static str>,
    pub(super) cipher_standard_name: Option<&'static str>,
    pub(super) psk_identity: Option<Box<[u8]>>,
    pub(super) peer_certificate: Option<X509>,
    pub(super) alpn: Option<Box<[u8]>>,
    pub(super) server_name: Option<Box<str>>,
    pub(super) client_random: [u8; 32],
}

impl SslFacts {
    pub(super) fn of(ssl: &SslRef) -> SslFacts {
        let mut client_random = [0u8; 32];
        ssl.client_random(&mut client_random);
        SslFacts {
            version: ssl.version_str(),
            cipher: ssl.current_cipher().map(|c| c.name()),
            cipher_standard_name: ssl.current_cipher().and_then(|c| c.standard_name()),
            psk_identity: ssl.psk_identity().map(Into::into),
            peer_certificate: ssl.peer_certificate(),
            alpn: ssl.selected_alpn_protocol().map(Into::into),
            server_name: ssl
                .servername(openssl::ssl::NameType::HOST_NAME)
                .map(Into::into),
            client_random,
        }
    }
}
