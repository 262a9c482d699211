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

use std::time::Instant;

use openssl::ssl::{Ssl, SslRef};
use openssl::x509::X509;

use super::exporter::{self, ExporterSecret, SrtpProfile};
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
    /// compact layer opens every application and alert record; OpenSSL is kept (until the
    /// session's `linger_until`, kept with its handshake state) only to answer a retransmitted
    /// final flight of the peer, and writes nothing new.
    Lingering {
        openssl: OpenSsl,
        compact: Box<Compact>,
    },
    /// Compact mode after the hand-off: the compact layer carries everything; the `SSL` is freed.
    /// The second field is the exporter's secret, kept only when asked for (see
    /// [`exporter`](super::exporter)); the variant stays smaller than `Lingering`, so it costs
    /// no room when absent.
    Compact(Box<Compact>, Option<Box<ExporterSecret>>),
    /// Only inside a transition (`std::mem::replace`); never observed between calls.
    Switching,
}

impl Engine {
    /// The OpenSSL side, while the `SSL` exists.
    pub(super) fn openssl(&self) -> Option<&OpenSsl> {
        match self {
            Engine::OpenSsl(o) | Engine::Lingering { openssl: o, .. } => Some(o),
            Engine::Compact(..) | Engine::Switching => None,
        }
    }

    pub(super) fn openssl_mut(&mut self) -> Option<&mut OpenSsl> {
        match self {
            Engine::OpenSsl(o) | Engine::Lingering { openssl: o, .. } => Some(o),
            Engine::Compact(..) | Engine::Switching => None,
        }
    }

    /// The `SSL`, while it exists.
    pub(super) fn ssl(&self) -> Option<&SslRef> {
        self.openssl().map(|o| &*o.ssl)
    }

    /// The compact layer, once it has keys (lingering or handed off).
    pub(super) fn compact(&self) -> Option<&Compact> {
        match self {
            Engine::Lingering { compact, .. } | Engine::Compact(compact, _) => Some(compact),
            Engine::OpenSsl(_) | Engine::Switching => None,
        }
    }

    pub(super) fn compact_mut(&mut self) -> Option<&mut Compact> {
        match self {
            Engine::Lingering { compact, .. } | Engine::Compact(compact, _) => Some(compact),
            Engine::OpenSsl(_) | Engine::Switching => None,
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
    pub(super) outbound: crate::record::Queue,
    /// Renegotiation requests answered with `no_renegotiation` so far (at most
    /// [`MAX_RENEGOTIATION_REFUSALS`](super::MAX_RENEGOTIATION_REFUSALS)).
    pub(super) renegotiation_refusals: u8,
}

/// What a handshake established, read once from the `SSL` when the handshake completes: the
/// one value the session's accessors, the connection handles of the drivers, the compact hand-off
/// (which frees the `SSL` and keeps these) and the statistics all read.
#[derive(Debug)]
#[non_exhaustive]
pub struct HandshakeFacts {
    /// The protocol version, e.g. `"DTLSv1.2"` (`SSL_get_version`).
    pub version: &'static str,
    /// The cipher's OpenSSL name, e.g. `"PSK-AES128-CCM8"`.
    pub cipher: Option<&'static str>,
    /// The cipher's IANA name, e.g. `"TLS_PSK_WITH_AES_128_CCM_8"`.
    pub cipher_standard_name: Option<&'static str>,
    /// The PSK identity, if a PSK suite was used.
    pub psk_identity: Option<Box<[u8]>>,
    /// The peer's certificate, if it sent one.
    pub peer_certificate: Option<X509>,
    /// The ALPN protocol agreed, if any.
    pub alpn: Option<Box<[u8]>>,
    /// The server name (SNI) the client asked for.
    pub server_name: Option<Box<str>>,
    /// Whether the handshake resumed an earlier session (`SSL_session_reused`).
    pub resumed: bool,
    /// The SRTP protection profile negotiated (RFC 5764 `use_srtp`), if any
    /// (`SSL_get_selected_srtp_profile`).
    pub srtp_profile: Option<SrtpProfile>,
    /// When the handshake started (the session was made).
    pub started: Instant,
    /// When it completed.
    pub completed: Instant,
}

impl HandshakeFacts {
    pub(super) fn of(ssl: &SslRef, started: Instant, completed: Instant) -> HandshakeFacts {
        HandshakeFacts {
            version: ssl.version_str(),
            cipher: ssl.current_cipher().map(|c| c.name()),
            cipher_standard_name: ssl.current_cipher().and_then(|c| c.standard_name()),
            psk_identity: ssl.psk_identity().map(Into::into),
            peer_certificate: ssl.peer_certificate(),
            alpn: ssl.selected_alpn_protocol().map(Into::into),
            server_name: ssl
                .servername(openssl::ssl::NameType::HOST_NAME)
                .map(Into::into),
            resumed: ssl.session_reused(),
            srtp_profile: exporter::selected_profile(ssl),
            started,
            completed,
        }
    }

    /// How long the handshake took.
    pub fn duration(&self) -> std::time::Duration {
        self.completed.saturating_duration_since(self.started)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// `Engine` as it was before the exporter's secret: the secret must find room in it.
    #[allow(dead_code)]
    enum EngineWithoutExporter {
        OpenSsl(OpenSsl),
        Lingering {
            openssl: OpenSsl,
            compact: Box<Compact>,
        },
        Compact(Box<Compact>),
        Switching,
    }

    #[test]
    fn the_exporter_secret_costs_an_idle_compact_connection_no_room() {
        assert_eq!(size_of::<Engine>(), size_of::<EngineWithoutExporter>());
        // The SRTP profile sits in the facts' padding.
        #[allow(dead_code)]
        struct FactsWithoutSrtp {
            a: &'static str,
            b: [Option<&'static str>; 2],
            c: [Option<Box<[u8]>>; 2],
            d: Option<X509>,
            e: Option<Box<str>>,
            f: bool,
            g: [Instant; 2],
        }
        assert_eq!(size_of::<HandshakeFacts>(), size_of::<FactsWithoutSrtp>());
    }
}
