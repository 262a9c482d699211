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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
}

/// What a handshake established, read once from the `SSL` when the handshake completes and kept
/// through the compact hand-off (which frees the `SSL`): what
/// [`Session::handshake_facts`](super::Session::handshake_facts) returns and the connection
/// handles of the drivers hold. A session keeps these compactly (the parts equal connections
/// share are shared) and builds this value when asked for it.
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
    /// The facts `kept` by a session that started at `started`.
    pub(super) fn from_kept(kept: &KeptFacts, started: Instant) -> HandshakeFacts {
        let common = &*kept.common;
        HandshakeFacts {
            version: common.version,
            cipher: common.cipher,
            cipher_standard_name: common.cipher_standard_name,
            psk_identity: kept.psk_identity.clone(),
            peer_certificate: kept.peer_certificate.as_deref().cloned(),
            alpn: common.alpn.clone(),
            server_name: common.server_name.clone(),
            resumed: common.resumed,
            srtp_profile: common.srtp_profile,
            started,
            completed: started + kept.duration(),
        }
    }

    /// How long the handshake took.
    pub fn duration(&self) -> std::time::Duration {
        self.completed.saturating_duration_since(self.started)
    }
}
/// The part of a handshake's facts that many connections have in common (version, suite,
/// ALPN, server name, whether it resumed, SRTP profile): one shared value per distinct set,
/// not one per connection (see [`shared_common_facts`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct CommonFacts {
    pub(super) version: &'static str,
    pub(super) cipher: Option<&'static str>,
    pub(super) cipher_standard_name: Option<&'static str>,
    pub(super) alpn: Option<Box<[u8]>>,
    pub(super) server_name: Option<Box<str>>,
    pub(super) resumed: bool,
    pub(super) srtp_profile: Option<SrtpProfile>,
}

/// What a session keeps of its handshake's facts: the shared [`CommonFacts`] and what is its
/// own (PSK identity, peer certificate, how long the handshake took; it started when the
/// session did). [`HandshakeFacts`] are built from it when asked for, so an idle connection
/// pays 40 bytes in its session (and its identity) rather than a 168-byte block of its own.
pub(super) struct KeptFacts {
    pub(super) common: Arc<CommonFacts>,
    pub(super) psk_identity: Option<Box<[u8]>>,
    /// Boxed: `X509` is a raw pointer, whose `Option` would take 16 bytes (a PSK connection
    /// has none and pays 8).
    pub(super) peer_certificate: Option<Box<X509>>,
    /// `completed - started` in nanoseconds (saturating at 584 years).
    duration_ns: u64,
}

impl std::ops::Deref for KeptFacts {
    type Target = CommonFacts;

    fn deref(&self) -> &CommonFacts {
        &self.common
    }
}

impl KeptFacts {
    /// The facts of an established `ssl` whose handshake started at `started` and completed at
    /// `completed` (the `SSL_get_*` calls of [`HandshakeFacts`]'s fields).
    pub(super) fn of(ssl: &SslRef, started: Instant, completed: Instant) -> KeptFacts {
        let common = CommonFacts {
            version: ssl.version_str(),
            cipher: ssl.current_cipher().map(|c| c.name()),
            cipher_standard_name: ssl.current_cipher().and_then(|c| c.standard_name()),
            alpn: ssl.selected_alpn_protocol().map(Into::into),
            server_name: ssl
                .servername(openssl::ssl::NameType::HOST_NAME)
                .map(Into::into),
            resumed: ssl.session_reused(),
            srtp_profile: exporter::selected_profile(ssl),
        };
        KeptFacts::new(
            common,
            ssl.psk_identity().map(Into::into),
            ssl.peer_certificate(),
            completed.saturating_duration_since(started),
        )
    }

    /// Facts of `common` (shared with equal ones), with this connection's own parts.
    pub(super) fn new(
        common: CommonFacts,
        psk_identity: Option<Box<[u8]>>,
        peer_certificate: Option<X509>,
        duration: Duration,
    ) -> KeptFacts {
        KeptFacts {
            common: shared_common_facts(common),
            psk_identity,
            peer_certificate: peer_certificate.map(Box::new),
            duration_ns: u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// How long the handshake took.
    pub(super) fn duration(&self) -> Duration {
        Duration::from_nanos(self.duration_ns)
    }
}

/// Distinct [`CommonFacts`] kept for sharing (at most).
const SHARED_FACTS: usize = 16;

/// The shared copy of `common`: the one already kept if an equal value is, else a new one
/// (kept in place of one no session uses any more, or of the oldest when all are in use). One
/// short lock per completed handshake; nothing per datagram. Sharing saves memory only: a
/// value not found is simply not shared.
fn shared_common_facts(common: CommonFacts) -> Arc<CommonFacts> {
    static SHARED: Mutex<Vec<Arc<CommonFacts>>> = Mutex::new(Vec::new());
    let Ok(mut shared) = SHARED.lock() else {
        return Arc::new(common);
    };
    if let Some(c) = shared.iter().find(|c| ***c == common) {
        return Arc::clone(c);
    }
    if shared.len() >= SHARED_FACTS {
        shared.retain(|c| Arc::strong_count(c) > 1);
        if shared.len() >= SHARED_FACTS {
            shared.remove(0);
        }
    }
    let c = Arc::new(common);
    shared.push(Arc::clone(&c));
    c
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
