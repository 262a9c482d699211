//! The client context: PSK credentials, server certificate verification, client certificates.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use openssl::ssl::{Ssl, SslContext, SslContextBuilder, SslMethod, SslVerifyMode};
use openssl::x509::verify::X509CheckFlags;

use super::certificate::{certificate_builder_methods, CertificateConfig, Source};
use super::ciphers::{Auth, Offered};
use super::common::{common_builder_methods, Common};
use super::psk::{self, ClientPsk, PskCredentials};
use super::resumption::{ClientSessions, StoreKey, DEFAULT_CLIENT_SESSIONS};
use super::trust::{apply_roots, apply_verify, trust_builder_methods, VerifyCallback};
use crate::config::SessionConfig;
use crate::error::{ConfigError, Error, Result};
use crate::session::Session;

/// Longest server name accepted by [`DtlsClientContext::new_session`] (RFC 1035 §2.3.4).
const MAX_SERVER_NAME_LEN: usize = 253;

/// A frozen, shareable DTLS client configuration (an OpenSSL `SSL_CTX` made with
/// `DTLS_client_method`). Cloning is cheap; it is `Send + Sync`. Make sessions with
/// [`new_session`](Self::new_session).
#[doc(alias = "SSL_CTX")]
#[doc(alias = "DTLS_client_method")]
#[derive(Clone)]
pub struct DtlsClientContext {
    ctx: SslContext,
    inner: Arc<ClientInner>,
}

struct ClientInner {
    session: SessionConfig,
    verify: bool,
    /// Verification is on, certificate suites can be negotiated, and the server-identity check
    /// was not skipped: every session must check a name or an IP address.
    check_identity: bool,
    /// The sessions this context offers again, per server name or address; `None` when
    /// resumption is off.
    sessions: Option<Arc<ClientSessions>>,
}

impl fmt::Debug for DtlsClientContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsClientContext")
            .field("verify", &self.inner.verify)
            .field("check_identity", &self.inner.check_identity)
            .field("session", &self.inner.session)
            .field("sessions", &self.inner.sessions)
            .finish_non_exhaustive()
    }
}

impl DtlsClientContext {
    /// A builder with the defaults described in the [module documentation](crate::context).
    #[doc(alias = "SSL_CTX_new")]
    pub fn builder() -> DtlsClientContextBuilder {
        DtlsClientContextBuilder::default()
    }

    /// Whether `other` is a clone of this context.
    pub(crate) fn same_as(&self, other: &DtlsClientContext) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The per-session limits and timers sessions made from this context run with.
    pub fn session_config(&self) -> &SessionConfig {
        &self.inner.session
    }

    /// A client session whose ClientHello is ready for
    /// [`poll_transmit`](Session::poll_transmit) (`SSL_new`, `SSL_connect`).
    ///
    /// `server_name` is sent as SNI (`SSL_set_tlsext_host_name`) and, when verification is on,
    /// the server's certificate must match it (`X509_VERIFY_PARAM_set1_host`; partial wildcards
    /// refused). An IP address is not sent as SNI (RFC 6066 §3) but checked against the
    /// certificate's IP addresses (`X509_VERIFY_PARAM_set1_ip`). A name with a NUL byte, empty,
    /// or longer than 253 bytes fails with [`Error::Config`].
    ///
    /// With `None`, a context that verifies certificates has nothing to check the server's
    /// identity against, and a chain any trusted root issued, for anyone, would be accepted:
    /// this fails with [`ConfigError::NoServerIdentity`] rather than skip the check silently.
    /// Use [`new_session_to`](Self::new_session_to) to check the peer's IP address instead, or
    /// opt out with
    /// [`danger_skip_server_name_check`](DtlsClientContextBuilder::danger_skip_server_name_check).
    /// PSK-only contexts and contexts with verification disabled accept `None`.
    #[doc(alias = "SSL_set_tlsext_host_name")]
    #[doc(alias = "X509_VERIFY_PARAM_set1_host")]
    pub fn new_session(&self, server_name: Option<&str>, now: Instant) -> Result<Session> {
        if server_name.is_none() && self.inner.check_identity {
            return Err(Error::Config(ConfigError::NoServerIdentity));
        }
        self.session(server_name, None, now)
    }

    /// A client session for `peer`: as [`new_session`](Self::new_session), and without a
    /// `server_name` the server's certificate must be issued for `peer`'s IP address (an IP
    /// subject alternative name, `X509_VERIFY_PARAM_set1_ip`; an IPv4-mapped IPv6 address is
    /// checked as IPv4). The session's [`peer_addr`](Session::peer_addr) is set to `peer`. This is
    /// what [`DtlsClient::connect`](crate::DtlsClient::connect) uses.
    #[doc(alias = "X509_VERIFY_PARAM_set1_ip")]
    pub fn new_session_to(
        &self,
        peer: SocketAddr,
        server_name: Option<&str>,
        now: Instant,
    ) -> Result<Session> {
        let mut session = self.session(server_name, Some(peer), now)?;
        session.set_peer_addr(peer);
        Ok(session)
    }

    /// How many sessions this context keeps for resumption (0 with
    /// [`session_resumption(false)`](DtlsClientContextBuilder::session_resumption)).
    pub fn stored_sessions(&self) -> usize {
        self.inner.sessions.as_ref().map_or(0, |s| s.len())
    }

    /// Forgets every stored session: the next handshake with each server is a full one.
    #[doc(alias = "SSL_SESSION_free")]
    pub fn clear_sessions(&self) {
        if let Some(sessions) = &self.inner.sessions {
            sessions.clear();
        }
    }

    /// Whether sessions without a server name check the peer's IP address, or fail: `false` for
    /// PSK-only contexts, with verification disabled, or after
    /// [`danger_skip_server_name_check`](DtlsClientContextBuilder::danger_skip_server_name_check).
    pub fn checks_server_identity(&self) -> bool {
        self.inner.check_identity
    }

    fn session(
        &self,
        server_name: Option<&str>,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Result<Session> {
        let peer_ip = peer.map(|p| match p.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        });
        let mut ssl = Ssl::new(&self.ctx)?;
        if let Some(name) = server_name {
            if name.is_empty() || name.len() > MAX_SERVER_NAME_LEN || name.contains('\0') {
                return Err(Error::Config(ConfigError::Invalid(format!(
                    "server name {name:?} is not a host name (1 to {MAX_SERVER_NAME_LEN} bytes, no NUL)"
                ))));
            }
            match name.parse::<IpAddr>() {
                Ok(ip) => {
                    if self.inner.verify {
                        ssl.param_mut().set_ip(ip)?;
                    }
                }
                Err(_) => {
                    ssl.set_hostname(name)?;
                    if self.inner.verify {
                        let param = ssl.param_mut();
                        param.set_hostflags(X509CheckFlags::NO_PARTIAL_WILDCARDS);
                        param.set_host(name)?;
                    }
                }
            }
        } else if self.inner.check_identity {
            // Without a name, the certificate must be for the address we are talking to.
            let ip = peer_ip.ok_or(Error::Config(ConfigError::NoServerIdentity))?;
            ssl.param_mut().set_ip(ip)?;
        }
        if let Some(sessions) = &self.inner.sessions {
            // A session is offered only to the name, or else the address, it was made with,
            // and only by this context (same verification settings).
            let key = match (server_name, peer) {
                (Some(name), _) => Some(StoreKey::Name(name.to_owned())),
                (None, Some(peer)) => Some(StoreKey::Addr(peer)),
                (None, None) => None,
            };
            if let Some(key) = key {
                sessions.prepare(&mut ssl, key)?;
            }
        }
        Session::client(ssl, &self.inner.session, now)
    }
}

/// Builds a [`DtlsClientContext`]: setters take `&mut self` and chain; [`build`](Self::build)
/// checks everything and returns the frozen context.
pub struct DtlsClientContextBuilder {
    common: Common,
    psk: Option<ClientPsk>,
    disable_verification: bool,
    skip_server_name_check: bool,
    trusted_roots: bool,
    roots: Vec<Source>,
    verify_callback: Option<VerifyCallback>,
    certificate: CertificateConfig,
    /// Our Connection ID's length, when offering CIDs.
    cid_len: Option<u8>,
    /// `None`: resumption off; else the session store's capacity.
    sessions: Option<usize>,
}

impl Default for DtlsClientContextBuilder {
    fn default() -> Self {
        DtlsClientContextBuilder {
            common: Common::default(),
            psk: None,
            disable_verification: false,
            skip_server_name_check: false,
            trusted_roots: false,
            roots: Vec::new(),
            verify_callback: None,
            certificate: CertificateConfig::default(),
            cid_len: None,
            sessions: Some(DEFAULT_CLIENT_SESSIONS),
        }
    }
}

impl fmt::Debug for DtlsClientContextBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsClientContextBuilder")
            .field("common", &self.common)
            .field("psk", &self.psk)
            .field("verify", &!self.disable_verification)
            .field("skip_server_name_check", &self.skip_server_name_check)
            .field("trusted_roots", &self.trusted_roots)
            .field("roots", &self.roots)
            .field("verify_callback", &self.verify_callback.is_some())
            .field("certificate", &self.certificate)
            .field("sessions", &self.sessions)
            .finish()
    }
}

impl DtlsClientContextBuilder {
    common_builder_methods!();
    certificate_builder_methods!("the client's (for mutual authentication)");
    trust_builder_methods!("the server's");

    /// Offers Connection IDs (RFC 9146, the `connection_id` extension), asking the server to put
    /// a CID of `len` bytes in the records it sends (0, the usual choice of devices: none; at
    /// most [`MAX_CID_LEN`](crate::cid::MAX_CID_LEN), checked at `build()`). Default: not
    /// offered. With a server that agrees, this client puts the server's CID in every record
    /// it sends, so the server keeps the connection when this side's address changes (a NAT
    /// rebinding, a new socket) without a new handshake; the connection runs on the compact
    /// record layer after the handshake. A server that does not know the extension ignores it.
    ///
    /// ```
    /// # use openssl_dtls::{DtlsClientContext, PskCredentials};
    /// let ctx = DtlsClientContext::builder()
    ///     .psk_credentials(PskCredentials::new(b"device-1", b"0123456789abcdef"))
    ///     .connection_id(0)
    ///     .build()?;
    /// # Ok::<(), openssl_dtls::Error>(())
    /// ```
    #[doc(alias = "SSL_CTX_add_custom_ext")]
    pub fn connection_id(&mut self, len: u8) -> &mut Self {
        self.cid_len = Some(len);
        self
    }

    /// Keeps the session of each handshake and offers it again to the same server (RFC 5246
    /// §7.4.1.2 session IDs and RFC 5077 tickets: `SSL_CTX_sess_set_new_cb`, `SSL_set_session`).
    /// On by default; `false` makes every handshake a full one. Sessions are kept per server
    /// name, or per address when no name is given, and only in this context: a context with
    /// other verification settings never resumes them. A server that does not resume (this
    /// crate's servers by default) runs a full handshake. Whether a handshake resumed is
    /// [`HandshakeFacts::resumed`](crate::HandshakeFacts::resumed).
    ///
    /// A resumed handshake does not verify the server's certificate again: it proves the
    /// server holds the earlier session's secret, whose certificate was verified then.
    #[doc(alias = "SSL_CTX_set_session_cache_mode")]
    #[doc(alias = "SSL_set_session")]
    pub fn session_resumption(&mut self, enabled: bool) -> &mut Self {
        self.sessions = enabled.then(|| self.sessions.unwrap_or(DEFAULT_CLIENT_SESSIONS));
        self
    }

    /// How many sessions (servers) the store keeps, 1 to
    /// [`MAX_CLIENT_SESSIONS`](crate::context::MAX_CLIENT_SESSIONS) (checked at `build()`);
    /// default [`DEFAULT_CLIENT_SESSIONS`](crate::context::DEFAULT_CLIENT_SESSIONS). When full,
    /// the session stored longest ago goes. Each is an `SSL_SESSION` of about 1 KB plus the
    /// server's certificate chain. Turns resumption on.
    #[doc(alias = "SSL_CTX_sess_set_cache_size")]
    pub fn session_store_capacity(&mut self, sessions: usize) -> &mut Self {
        self.sessions = Some(sessions);
        self
    }

    /// Uses fixed PSK credentials for every handshake (`SSL_CTX_set_psk_client_callback`).
    /// The identity must be at most [`MAX_IDENTITY_LEN`](crate::context::MAX_IDENTITY_LEN) bytes
    /// without a NUL byte, the key 1 to [`MAX_KEY_LEN`](crate::context::MAX_KEY_LEN) bytes;
    /// otherwise `build()` fails.
    #[doc(alias = "SSL_CTX_set_psk_client_callback")]
    pub fn psk_credentials(&mut self, credentials: PskCredentials) -> &mut Self {
        self.psk = Some(ClientPsk::Fixed(Arc::new(credentials)));
        self
    }

    /// Chooses PSK credentials per handshake from the server's identity hint (`None` if it sent
    /// none) (`SSL_CTX_set_psk_client_callback`). Returning `None`, credentials that break the
    /// limits of [`PskCredentials::new`], or panicking fails that handshake only.
    #[doc(alias = "SSL_CTX_set_psk_client_callback")]
    pub fn psk_credentials_callback<F>(&mut self, callback: F) -> &mut Self
    where
        F: Fn(Option<&[u8]>) -> Option<PskCredentials> + Send + Sync + 'static,
    {
        self.psk = Some(ClientPsk::Callback(Arc::new(callback)));
        self
    }

    /// Also trusts the system's root certificates (`SSL_CTX_set_default_verify_paths`).
    /// Default `false`: a client trusts only the roots it is given.
    #[doc(alias = "SSL_CTX_set_default_verify_paths")]
    pub fn with_trusted_roots(&mut self, trusted: bool) -> &mut Self {
        self.trusted_roots = trusted;
        self
    }

    /// **Dangerous**: accepts any server certificate, from anyone, for any name
    /// (`SSL_CTX_set_verify` with `SSL_VERIFY_NONE`). A man in the middle can then read and
    /// change all traffic of certificate suites. For tests against throwaway certificates only;
    /// PSK suites do not need it. A [`verify_callback`](Self::verify_callback) is not called.
    #[doc(alias = "SSL_VERIFY_NONE")]
    pub fn danger_disable_verification(&mut self) -> &mut Self {
        self.disable_verification = true;
        self
    }

    /// **Dangerous**: verifies the server's chain but not whose it is, when no server name is
    /// given. By default a session without a server name checks the certificate against the
    /// peer's IP address ([`new_session_to`](DtlsClientContext::new_session_to),
    /// [`DtlsClient::connect`](crate::DtlsClient::connect)), and
    /// [`new_session(None, ..)`](DtlsClientContext::new_session) without a peer fails. With this
    /// opt-out, any certificate any trusted root issued — for any host, to anyone — is accepted
    /// from any server: safe only when the trusted root issues certificates to nothing but the
    /// servers this client may talk to (a private CA for one device fleet). A server name, when
    /// given, is still checked.
    #[doc(alias = "X509_VERIFY_PARAM_set1_ip")]
    pub fn danger_skip_server_name_check(&mut self) -> &mut Self {
        self.skip_server_name_check = true;
        self
    }

    /// Offers these ALPN protocols, most preferred first (`SSL_CTX_set_alpn_protos`). Each name
    /// is 1 to 255 bytes (checked at `build()`). The agreed one is
    /// [`Session::alpn_protocol`].
    #[doc(alias = "SSL_CTX_set_alpn_protos")]
    pub fn alpn_protocols(&mut self, protocols: &[&[u8]]) -> &mut Self {
        self.common.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Checks the configuration and builds the context (`SSL_CTX_new` and the setters above).
    ///
    /// Fails with [`Error::Config`] naming the cause: unreadable or malformed certificates or
    /// keys, a key that does not match its certificate, an unusable cipher string, an unknown
    /// group, settings out of range, invalid fixed PSK credentials, or a certificate-capable
    /// client that verifies but trusts no root (add roots, `with_trusted_roots(true)`, a
    /// `verify_callback`, or PSK credentials).
    pub fn build(&self) -> Result<DtlsClientContext> {
        super::warn_if_openssl_lacks_dtls_fixes();
        self.build_inner().map_err(Error::Config)
    }

    fn build_inner(&self) -> Result<DtlsClientContext, ConfigError> {
        let verify = !self.disable_verification;
        if let Some(ClientPsk::Fixed(credentials)) = &self.psk {
            if let Some(problem) = credentials.problem() {
                return Err(ConfigError::Invalid(problem));
            }
        }
        let certificate = self.certificate.load()?;
        let psk = self.psk.is_some();
        let has_trust =
            !self.roots.is_empty() || self.trusted_roots || self.verify_callback.is_some();
        // A client that can do certificate suites: no PSK, or something that says certificates.
        let certificates = !psk || has_trust || !verify || self.certificate.is_set();
        if certificates && verify && !has_trust {
            return Err(ConfigError::Invalid(
                "certificate verification is on but no root is trusted: add root_certificates_*, \
                 with_trusted_roots(true), a verify_callback, or use PSK credentials"
                    .to_owned(),
            ));
        }
        let mut b = SslContextBuilder::new(SslMethod::dtls_client())
            .map_err(|e| ConfigError::Invalid(format!("cannot create an SSL_CTX: {e}")))?;
        let usable = |c: &Offered| match c.auth {
            Auth::Psk => psk,
            Auth::Ecdsa | Auth::Rsa | Auth::Dss => certificates,
            Auth::Other => false,
        };
        let credentials = match (psk, certificates) {
            (true, true) => "PSK credentials and certificate verification",
            (true, false) => "PSK credentials only",
            (false, _) => "certificates only (no PSK credentials)",
        };
        self.common
            .apply(&mut b, psk, certificates, usable, credentials)?;
        if let Some(certificate) = &certificate {
            certificate.install(&mut b)?;
        }
        if self.trusted_roots {
            b.set_default_verify_paths().map_err(|e| {
                ConfigError::Invalid(format!("cannot load the system trust roots: {e}"))
            })?;
        }
        apply_roots(&mut b, &self.roots, false)?;
        if verify {
            apply_verify(&mut b, SslVerifyMode::PEER, self.verify_callback.as_ref());
        } else {
            b.set_verify(SslVerifyMode::NONE);
        }
        if let Some(psk) = &self.psk {
            psk::install_client(&mut b, psk.clone());
        }
        if !self.common.alpn.is_empty() {
            let wire = self.common.alpn_wire()?;
            b.set_alpn_protos(&wire)
                .map_err(|e| ConfigError::Invalid(format!("OpenSSL rejects the ALPN list: {e}")))?;
        }
        self.common.apply_key_log(&mut b)?;
        if let Some(len) = self.cid_len {
            let cid = crate::cid::CidSettings {
                len,
                prefix: Vec::new(),
            };
            cid.validate(false)?;
            crate::cid::install_client(&mut b, cid)?;
        }
        let sessions = match self.sessions {
            Some(capacity) => Some(ClientSessions::install(&mut b, capacity)?),
            None => None,
        };
        Ok(DtlsClientContext {
            ctx: b.build(),
            inner: Arc::new(ClientInner {
                session: crate::config::SessionConfig {
                    connection_ids: self.cid_len.is_some(),
                    ..self.common.session.clone()
                },
                verify,
                check_identity: verify && certificates && !self.skip_server_name_check,
                sessions,
            }),
        })
    }
}
