//! The server context: PSK key store and hint, certificates, client certificates, cookies,
//! admission.

use std::ffi::CString;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::{AlpnError, Ssl, SslContext, SslContextBuilder, SslMethod, SslVerifyMode};

use super::certificate::{
    certificate_builder_methods, CertificateConfig, KeyKind, LoadedCertificate, Source,
};
use super::ciphers::{Auth, Offered};
use super::common::{common_builder_methods, Common};
use super::psk::{self, KeyStore, Secret, MAX_IDENTITY_LEN};
use super::resumption::{ServerResumption, TicketKeys};
use super::trust::{apply_roots, apply_verify, trust_builder_methods, VerifyCallback};
use crate::config::SessionConfig;
use crate::cookie::{self, CookieSecrets};
use crate::error::{ConfigError, Error, Result};
use crate::ffi::{self, ctx::guard};
use crate::session::Session;

/// Default cookie secret rotation: a cookie stays valid for one to two minutes, far longer than
/// a HelloVerifyRequest round trip, and a leaked cookie key is useless soon.
const DEFAULT_COOKIE_ROTATION: Duration = Duration::from_secs(60);

/// Whether a server asks clients for a certificate (`SSL_CTX_set_verify` on the server).
#[doc(alias = "SSL_CTX_set_verify")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClientAuth {
    /// No CertificateRequest (`SSL_VERIFY_NONE`). The default.
    #[default]
    None,
    /// Ask for a certificate; a client may send none, but one it sends must verify
    /// (`SSL_VERIFY_PEER`).
    Request,
    /// Require a verified certificate (`SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT`); a
    /// client without one fails the handshake (`handshake_failure`).
    Require,
}

/// A frozen, shareable DTLS server configuration (an OpenSSL `SSL_CTX` made with
/// `DTLS_server_method`, with cookie callbacks installed). Cloning is cheap; it is
/// `Send + Sync`.
#[doc(alias = "SSL_CTX")]
#[doc(alias = "DTLS_server_method")]
#[derive(Clone)]
pub struct DtlsServerContext {
    ctx: SslContext,
    inner: Arc<ServerInner>,
}

struct ServerInner {
    session: SessionConfig,
    cid: Option<crate::cid::CidSettings>,
    admission: Option<Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>>,
    /// The cipher string and security level the context was built with (graceful restart's
    /// configuration fingerprint).
    ciphers: String,
}

impl fmt::Debug for DtlsServerContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsServerContext")
            .field("session", &self.inner.session)
            .field("admission", &self.inner.admission.is_some())
            .finish_non_exhaustive()
    }
}

impl DtlsServerContext {
    /// A builder with the defaults described in the [module documentation](crate::context).
    #[doc(alias = "SSL_CTX_new")]
    pub fn builder() -> DtlsServerContextBuilder {
        DtlsServerContextBuilder::default()
    }

    /// The OpenSSL context, with the cookie callbacks installed (for `DTLSv1_listen`).
    pub(crate) fn ssl_context(&self) -> &SslContext {
        &self.ctx
    }

    /// The per-session limits and timers sessions made from this context run with.
    pub fn session_config(&self) -> &SessionConfig {
        &self.inner.session
    }

    /// The cipher string and security level this context was built with.
    pub(crate) fn cipher_config(&self) -> &str {
        &self.inner.ciphers
    }

    /// The length of the Connection IDs this server issues (RFC 9146), or `None` if it does not
    /// negotiate them ([`DtlsServerContextBuilder::connection_id`]).
    pub fn connection_id_len(&self) -> Option<u8> {
        self.inner.cid.as_ref().map(|c| c.len)
    }

    /// The Connection ID settings, for the endpoint that issues the CIDs.
    pub(crate) fn cid_settings(&self) -> Option<&crate::cid::CidSettings> {
        self.inner.cid.as_ref()
    }

    /// The largest certificate chain a peer may send (`SSL_CTX_get_max_cert_list`):
    /// [`MAX_CERT_LIST`](crate::context::MAX_CERT_LIST) with a certificate,
    /// [`PSK_MAX_CERT_LIST`](crate::context::PSK_MAX_CERT_LIST) for PSK only.
    pub(crate) fn max_cert_list(&self) -> usize {
        ffi::ctx::max_cert_list(&self.ctx)
    }

    /// Whether the admission hook lets `peer` (whose ClientHello carried a valid cookie) start a
    /// handshake. `true` without a hook; a panicking hook counts as `false`.
    pub(crate) fn admit(&self, peer: SocketAddr) -> bool {
        match &self.inner.admission {
            Some(hook) => guard("admission", false, || hook(peer)),
            None => true,
        }
    }

    /// A server session without a cookie exchange (in-process use and tests): it waits for a
    /// ClientHello (`SSL_new`, `SSL_set_accept_state`). Servers on a socket go through the
    /// endpoint, which verifies a cookie first.
    #[doc(alias = "SSL_accept")]
    pub fn new_session(&self, now: Instant) -> Result<Session> {
        Session::server(Ssl::new(&self.ctx)?, &self.inner.session, now)
    }
}

/// Builds a [`DtlsServerContext`]: setters take `&mut self` and chain; [`build`](Self::build)
/// checks everything and returns the frozen context.
pub struct DtlsServerContextBuilder {
    common: Common,
    psk_store: Option<KeyStore>,
    identity_hint: Option<Vec<u8>>,
    certificate: CertificateConfig,
    client_auth: ClientAuth,
    roots: Vec<Source>,
    verify_callback: Option<VerifyCallback>,
    cookie_secret: Option<Secret>,
    cookie_rotation: Duration,
    admission: Option<Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>>,
    /// Our Connection IDs' length (0: off) and prefix.
    cid_len: u8,
    cid_prefix: Vec<u8>,
    resumption: ServerResumption,
}

impl Default for DtlsServerContextBuilder {
    fn default() -> Self {
        DtlsServerContextBuilder {
            common: Common::default(),
            psk_store: None,
            identity_hint: None,
            certificate: CertificateConfig::default(),
            client_auth: ClientAuth::None,
            roots: Vec::new(),
            verify_callback: None,
            cookie_secret: None,
            cookie_rotation: DEFAULT_COOKIE_ROTATION,
            admission: None,
            cid_len: 0,
            cid_prefix: vec![0],
            resumption: ServerResumption::default(),
        }
    }
}

impl fmt::Debug for DtlsServerContextBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsServerContextBuilder")
            .field("common", &self.common)
            .field("psk_store", &self.psk_store.is_some())
            .field(
                "identity_hint",
                &self.identity_hint.as_deref().map(String::from_utf8_lossy),
            )
            .field("certificate", &self.certificate)
            .field("client_auth", &self.client_auth)
            .field("roots", &self.roots)
            .field("verify_callback", &self.verify_callback.is_some())
            .field("cookie_secret", &self.cookie_secret)
            .field("cookie_rotation", &self.cookie_rotation)
            .field("admission", &self.admission.is_some())
            .field("resumption", &self.resumption)
            .finish()
    }
}

impl DtlsServerContextBuilder {
    common_builder_methods!();
    certificate_builder_methods!("the server's");
    trust_builder_methods!("the client's");

    /// Looks up the key for a client's PSK identity (`SSL_CTX_set_psk_server_callback`).
    /// `None` (an unknown identity) fails that handshake with an `unknown_psk_identity` alert;
    /// so do a key outside 1 to [`MAX_KEY_LEN`](crate::context::MAX_KEY_LEN) bytes and a panic.
    /// The returned key is wiped after OpenSSL has copied it.
    #[doc(alias = "SSL_CTX_set_psk_server_callback")]
    pub fn psk_key_store<F>(&mut self, store: F) -> &mut Self
    where
        F: Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
    {
        self.psk_store = Some(Arc::new(store));
        self
    }

    /// Sends an identity hint in PSK handshakes (`SSL_CTX_use_psk_identity_hint`); at most
    /// [`MAX_IDENTITY_LEN`](crate::context::MAX_IDENTITY_LEN) bytes, no NUL byte (a C string
    /// to OpenSSL); checked at `build()`.
    #[doc(alias = "SSL_CTX_use_psk_identity_hint")]
    pub fn identity_hint(&mut self, hint: &[u8]) -> &mut Self {
        self.identity_hint = Some(hint.to_vec());
        self
    }

    /// Negotiates Connection IDs (RFC 9146, the `connection_id` extension) with clients that
    /// offer them, issuing each connection a CID of `len` bytes (at most
    /// [`MAX_CID_LEN`](crate::cid::MAX_CID_LEN), with at least
    /// [`MIN_RANDOM_CID_BYTES`](crate::cid::MIN_RANDOM_CID_BYTES) random bytes after the prefix:
    /// 5 to 16 with the default one-byte prefix; 6 to 8 is usual; 0 turns it off, the default;
    /// checked at `build()`). Records to this server then carry its CID, and an
    /// [`Endpoint`](crate::Endpoint) finds the connection by it when the client's address
    /// changes (a NAT rebinding), without a new handshake. A client that does not offer the
    /// extension gets exactly the behaviour without it. CID connections always run on the
    /// compact record layer after the handshake (AEAD suites only: with another suite the server
    /// does not agree to CIDs).
    ///
    /// CIDs start with [`connection_id_prefix`](Self::connection_id_prefix) (one byte, `0x00`,
    /// by default), then random bytes; see [`crate::cid`] for the layout and
    /// `SECURITY-CONSIDERATIONS.md` for what a constant, visible CID means for privacy.
    ///
    /// ```
    /// # use openssl_dtls::DtlsServerContext;
    /// let ctx = DtlsServerContext::builder()
    ///     .psk_key_store(|_identity: &[u8]| Some(b"0123456789abcdef".to_vec()))
    ///     .connection_id(8)
    ///     .build()?;
    /// assert_eq!(ctx.connection_id_len(), Some(8));
    /// # Ok::<(), openssl_dtls::Error>(())
    /// ```
    #[doc(alias = "SSL_CTX_add_custom_ext")]
    pub fn connection_id(&mut self, len: u8) -> &mut Self {
        self.cid_len = len;
        self
    }

    /// The first bytes of every Connection ID this server issues: a node or shard number, so
    /// that a load balancer (or `SO_REUSEPORT` shards) can send a `tls12_cid` record to the node
    /// that issued its CID whatever address it came from. Default one byte, `0x00`; at most the
    /// CID's length (checked at `build()`).
    pub fn connection_id_prefix(&mut self, prefix: &[u8]) -> &mut Self {
        self.cid_prefix = prefix.to_vec();
        self
    }

    /// Joins a fleet of servers behind one load balancer ([`fleet`](crate::fleet)): the cookie
    /// secret is derived from `secret` (every node accepts the others' cookies, as with
    /// [`cookie_secret`](Self::cookie_secret)), and `node` becomes the Connection ID prefix
    /// (as [`connection_id_prefix`](Self::connection_id_prefix)`(&[node])`), so a balancer reading
    /// the CID's first byte routes a device to this node from any address. Turn CIDs on with
    /// [`connection_id`](Self::connection_id); share session tickets with
    /// [`FleetSecret::ticket_keys`](crate::fleet::FleetSecret::ticket_keys).
    pub fn fleet(&mut self, secret: &crate::fleet::FleetSecret, node: u8) -> &mut Self {
        let mut cookie = secret.cookie_secret();
        self.cookie_secret(&cookie);
        crate::ffi::evp::cleanse(&mut cookie);
        self.connection_id_prefix(&[node])
    }

    /// Asks clients for certificates, or requires them (`SSL_CTX_set_verify`). Default
    /// [`ClientAuth::None`]. `Request` and `Require` need roots or a verify callback (checked
    /// at `build()`); the roots' names go into the CertificateRequest
    /// (`SSL_CTX_add_client_CA`).
    #[doc(alias = "SSL_CTX_set_verify")]
    #[doc(alias = "SSL_CTX_add_client_CA")]
    pub fn client_auth(&mut self, mode: ClientAuth) -> &mut Self {
        self.client_auth = mode;
        self
    }

    /// Selects ALPN: the first of `protocols` (the server's preference order) that the client
    /// also offers (`SSL_CTX_set_alpn_select_cb`, `SSL_select_next_proto`). A client offering
    /// none of them fails with `no_application_protocol` (RFC 7301 §3.2); a client offering no
    /// ALPN at all is accepted without. Each name is 1 to 255 bytes (checked at `build()`).
    #[doc(alias = "SSL_CTX_set_alpn_select_cb")]
    #[doc(alias = "SSL_select_next_proto")]
    pub fn alpn_protocols(&mut self, protocols: &[&[u8]]) -> &mut Self {
        self.common.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Rotates the random cookie secret every `interval`, the previous secret still accepted
    /// (`SSL_CTX_set_cookie_generate_cb`). Default 60 s. With a
    /// [`cookie_secret`](Self::cookie_secret), the interval at which the derived key changes.
    /// Must be at least 1 s (checked at `build()`).
    #[doc(alias = "SSL_CTX_set_cookie_generate_cb")]
    pub fn cookie_secret_rotation(&mut self, interval: Duration) -> &mut Self {
        self.cookie_rotation = interval;
        self
    }

    /// Derives cookie keys from `secret` (at least 16 bytes) instead of random ones, so that
    /// several servers behind one load balancer accept each other's cookies
    /// (`SSL_CTX_set_cookie_verify_cb`). The key changes with the wall-clock interval, so keep
    /// the servers' clocks in sync. The builder's copy is wiped when it is dropped.
    #[doc(alias = "SSL_CTX_set_cookie_verify_cb")]
    pub fn cookie_secret(&mut self, secret: &[u8]) -> &mut Self {
        self.cookie_secret = Some(Secret(secret.to_vec()));
        self
    }

    /// Turns on OpenSSL's server session cache (`SSL_CTX_set_session_cache_mode` with
    /// `SSL_SESS_CACHE_SERVER`): up to `size` sessions (1 to
    /// [`MAX_SESSION_CACHE_SIZE`](crate::context::MAX_SESSION_CACHE_SIZE);
    /// `SSL_CTX_sess_set_cache_size`), each resumable for `lifetime` (1 s to
    /// [`MAX_SESSION_LIFETIME`](crate::context::MAX_SESSION_LIFETIME); `SSL_CTX_set_timeout`, which
    /// also bounds [tickets](Self::session_tickets)). Both are checked at `build()`. Off by
    /// default.
    ///
    /// **A resumed handshake skips the PSK key store and the client-certificate verification**:
    /// an identity removed from the key store, or a client certificate no longer trusted, still
    /// resumes until its session's lifetime ends. Choose `lifetime` as the longest such delay you
    /// accept (SECURITY-CONSIDERATIONS.md §3.5). Sessions are resumed only by a context with the
    /// same client-authentication settings and roots (`SSL_CTX_set_session_id_context`).
    ///
    /// Memory: OpenSSL holds about 1 KB per cached session, plus the client's certificate chain
    /// when it sent one; `size` bounds it. A resumed handshake is reported by
    /// [`HandshakeFacts::resumed`](crate::HandshakeFacts::resumed).
    #[doc(alias = "SSL_CTX_set_session_cache_mode")]
    #[doc(alias = "SSL_CTX_sess_set_cache_size")]
    #[doc(alias = "SSL_CTX_set_timeout")]
    pub fn session_cache(&mut self, size: usize, lifetime: Duration) -> &mut Self {
        self.resumption.cache = Some((size, lifetime));
        self
    }

    /// Issues and accepts stateless session tickets (RFC 5077) under `keys`
    /// (`SSL_CTX_set_tlsext_ticket_key_evp_cb`): the server keeps nothing per session, and
    /// servers sharing the keys (clones of one [`TicketKeys`], or
    /// [`TicketKeys::with_secret`] with one secret; SECURITY-CONSIDERATIONS.md §3.5 for fleets) resume each other's sessions. A ticket under
    /// a key that was rotated away, or that another secret made, gets a full handshake, never an
    /// error. Without [`session_cache`](Self::session_cache), sessions are resumable for twice
    /// the key rotation (at most 24 h). Off by default (`SSL_OP_NO_TICKET`).
    ///
    /// The same warning as for the session cache applies: a resumed handshake skips the PSK key
    /// store and the client-certificate verification (SECURITY-CONSIDERATIONS.md §3.5).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use openssl_dtls::{context::TicketKeys, DtlsServerContext};
    /// let keys = TicketKeys::random(Duration::from_secs(3600))?;
    /// let ctx = DtlsServerContext::builder()
    ///     .psk_key_store(|_identity: &[u8]| Some(b"0123456789abcdef".to_vec()))
    ///     .session_tickets(keys.clone())
    ///     .session_cache(1024, Duration::from_secs(600))
    ///     .build()?;
    /// # Ok::<(), openssl_dtls::Error>(())
    /// ```
    #[doc(alias = "SSL_CTX_set_tlsext_ticket_key_evp_cb")]
    #[doc(alias = "SSL_OP_NO_TICKET")]
    pub fn session_tickets(&mut self, keys: TicketKeys) -> &mut Self {
        self.resumption.tickets = Some(keys);
        self
    }

    /// Decides whether a peer whose ClientHello carried a valid cookie may start a handshake:
    /// `false` ignores it (nothing is allocated for it). A panic counts as `false`.
    pub fn admission<F>(&mut self, hook: F) -> &mut Self
    where
        F: Fn(SocketAddr) -> bool + Send + Sync + 'static,
    {
        self.admission = Some(Arc::new(hook));
        self
    }

    /// Checks the configuration and builds the context (`SSL_CTX_new` and the setters above).
    ///
    /// Fails with [`Error::Config`] naming the cause: neither a PSK key store nor a certificate
    /// ([`ConfigError::NoCredentials`]), unreadable or malformed certificates or keys, a key
    /// that does not match its certificate ([`ConfigError::KeyMismatch`]), an unusable cipher
    /// string, an unknown group, settings out of range, an invalid identity hint or cookie
    /// secret, or client authentication without roots or a verify callback.
    pub fn build(&self) -> Result<DtlsServerContext> {
        super::warn_if_openssl_lacks_dtls_fixes();
        self.build_inner().map_err(Error::Config)
    }

    fn build_inner(&self) -> Result<DtlsServerContext, ConfigError> {
        let psk = self.psk_store.is_some();
        if !psk && !self.certificate.is_set() {
            return Err(ConfigError::NoCredentials);
        }
        if self.client_auth != ClientAuth::None
            && self.roots.is_empty()
            && self.verify_callback.is_none()
        {
            return Err(ConfigError::Invalid(format!(
                "client_auth({:?}) needs root certificates for client certificates or a verify_callback",
                self.client_auth
            )));
        }
        if self.cookie_rotation < Duration::from_secs(1) {
            return Err(ConfigError::OutOfRange {
                setting: "cookie_secret_rotation",
                value: self.cookie_rotation.as_millis().min(u128::from(u64::MAX)) as u64,
                allowed: "at least 1 s",
            });
        }
        let hint = self.checked_identity_hint()?;
        let mut b = SslContextBuilder::new(SslMethod::dtls_server())
            .map_err(|e| ConfigError::Invalid(format!("cannot create an SSL_CTX: {e}")))?;
        // The certificate first: its key type decides which suites are usable.
        let certificate = self.certificate.load()?;
        let kind = certificate.as_ref().map(LoadedCertificate::kind);
        if kind == Some(KeyKind::Eddsa) {
            // OpenSSL 3.0's ssl_set_masks() enables an Ed25519/Ed448 certificate for the
            // ECDHE-ECDSA suites only when TLS1_get_version(s) == TLS1_2_VERSION, which is never
            // true for DTLS: every handshake would end in "no shared cipher".
            return Err(ConfigError::Invalid(
                "OpenSSL cannot authenticate a DTLS 1.2 server with an Ed25519 or Ed448 key \
                 (it enables EdDSA certificates for TLS 1.2 only): use ECDSA P-256/P-384 or RSA"
                    .to_owned(),
            ));
        }
        let usable = |c: &Offered| match c.auth {
            Auth::Psk => psk,
            Auth::Ecdsa => kind == Some(KeyKind::Ec),
            Auth::Rsa => kind == Some(KeyKind::Rsa),
            Auth::Dss => kind == Some(KeyKind::Dsa),
            Auth::Other => false,
        };
        let credentials = match (psk, kind) {
            (true, Some(_)) => "a PSK key store and the configured certificate",
            (true, None) => "a PSK key store only (no certificate)",
            (false, _) => "the configured certificate only (no PSK key store)",
        };
        self.common
            .apply(&mut b, psk, kind.is_some(), usable, credentials)?;
        if let Some(certificate) = &certificate {
            certificate.install(&mut b)?;
        }
        // The server's preset order decides (PSK-AES128-CCM8 first for PSK, AES-128-GCM first
        // for certificates), not the client's (`SSL_OP_CIPHER_SERVER_PREFERENCE`).
        b.set_options(openssl::ssl::SslOptions::CIPHER_SERVER_PREFERENCE);
        // No session resumption unless asked for: a resumed session would outlive a PSK
        // identity or a client certificate that has since been withdrawn, so by default every
        // handshake re-checks credentials (`SSL_OP_NO_TICKET`, session cache off; §3.5).
        self.resumption
            .apply(&mut b, &self.verification_context())?;
        apply_roots(&mut b, &self.roots, true)?;
        let mode = match self.client_auth {
            ClientAuth::None => SslVerifyMode::NONE,
            ClientAuth::Request => SslVerifyMode::PEER,
            ClientAuth::Require => SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        };
        if self.client_auth == ClientAuth::None {
            b.set_verify(mode);
        } else {
            apply_verify(&mut b, mode, self.verify_callback.as_ref());
        }
        if let Some(store) = &self.psk_store {
            psk::install_server(&mut b, Arc::clone(store));
        }
        if let Some(hint) = hint {
            ffi::ctx::use_psk_identity_hint(&mut b, &hint).map_err(|e| {
                ConfigError::Invalid(format!("OpenSSL rejects the identity hint: {e}"))
            })?;
        }
        if !self.common.alpn.is_empty() {
            self.common.alpn_wire()?; // checks the names
            let ours = self.common.alpn.clone();
            b.set_alpn_select_callback(move |_ssl, client| {
                guard("ALPN", Err(AlpnError::ALERT_FATAL), || {
                    select_alpn(&ours, client).ok_or(AlpnError::ALERT_FATAL)
                })
            });
        }
        self.common.apply_key_log(&mut b)?;
        cookie::install(&mut b, self.cookie_secrets()?);
        let cid = (self.cid_len > 0).then(|| crate::cid::CidSettings {
            len: self.cid_len,
            prefix: self.cid_prefix.clone(),
        });
        if let Some(cid) = &cid {
            cid.validate(true)?;
            crate::cid::install_server(&mut b, cid.clone())?;
        }
        Ok(DtlsServerContext {
            ctx: b.build(),
            inner: Arc::new(ServerInner {
                session: crate::config::SessionConfig {
                    connection_ids: cid.is_some(),
                    ..self.common.session.clone()
                },
                cid,
                admission: self.admission.clone(),
                ciphers: format!(
                    "{}@{:?}",
                    self.common.ciphers.cipher_string(psk, kind.is_some()),
                    self.common.security_level
                ),
            }),
        })
    }

    /// What a resumed session skips, as bytes for the session-id context: client
    /// authentication, the roots (their bytes or file names), whether a verify callback or a
    /// PSK key store decides.
    fn verification_context(&self) -> Vec<u8> {
        let mut out = format!(
            "openssl-dtls server; client_auth={:?}; verify_callback={}; psk={}; roots=",
            self.client_auth,
            self.verify_callback.is_some(),
            self.psk_store.is_some()
        )
        .into_bytes();
        for root in &self.roots {
            match root {
                Source::Pem(bytes) | Source::Der(bytes) => out.extend_from_slice(&bytes.0),
                Source::File(path) => out.extend_from_slice(path.to_string_lossy().as_bytes()),
            }
            out.push(0);
        }
        out
    }

    /// The identity hint as a C string, checked.
    fn checked_identity_hint(&self) -> Result<Option<CString>, ConfigError> {
        let Some(hint) = &self.identity_hint else {
            return Ok(None);
        };
        if hint.len() > MAX_IDENTITY_LEN {
            return Err(ConfigError::Invalid(format!(
                "a PSK identity hint is at most {MAX_IDENTITY_LEN} bytes, this one has {}",
                hint.len()
            )));
        }
        CString::new(hint.clone()).map(Some).map_err(|_| {
            ConfigError::Invalid(
                "a PSK identity hint must not contain a NUL byte (OpenSSL treats it as a C string)"
                    .to_owned(),
            )
        })
    }

    /// The cookie keys: derived from the configured secret, or random.
    fn cookie_secrets(&self) -> Result<CookieSecrets, ConfigError> {
        match &self.cookie_secret {
            Some(secret) => CookieSecrets::with_secret(&secret.0, self.cookie_rotation)
                .map_err(|reason| ConfigError::Invalid(format!("cookie secret: {reason}"))),
            None => CookieSecrets::random(self.cookie_rotation).map_err(|e| {
                ConfigError::Invalid(format!("cannot make a random cookie secret: {e}"))
            }),
        }
    }
}

/// The first of `ours` (server preference order) that the client's wire-format list `client`
/// also has, as a slice of `client` (what `SSL_select_next_proto` does, without its
/// fall-back to the client's first protocol). A malformed client list matches nothing.
fn select_alpn<'a>(ours: &[Vec<u8>], client: &'a [u8]) -> Option<&'a [u8]> {
    let mut offered = Vec::new();
    let mut rest = client;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if len == 0 || len > tail.len() {
            return None;
        }
        let (name, tail) = tail.split_at(len);
        offered.push(name);
        rest = tail;
    }
    ours.iter().find_map(|want| {
        offered
            .iter()
            .copied()
            .find(|name| *name == want.as_slice())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psk_builder() -> DtlsServerContextBuilder {
        let mut b = DtlsServerContext::builder();
        b.psk_key_store(|_| Some(b"key".to_vec()));
        b
    }

    #[test]
    fn admission_hook_decides_and_a_panic_refuses() {
        let peer: SocketAddr = "192.0.2.7:5684".parse().unwrap();
        assert!(psk_builder().build().unwrap().admit(peer));
        let picky = psk_builder()
            .admission(|p| p.port() != 5684)
            .build()
            .unwrap();
        assert!(!picky.admit(peer));
        let panicking = psk_builder()
            .admission(|_| panic!("admission hook panics (expected in this test)"))
            .build()
            .unwrap();
        assert!(!panicking.admit(peer));
        assert!(panicking.admit(peer) == panicking.clone().admit(peer));
    }

    #[test]
    fn alpn_selection_follows_server_preference_and_tolerates_garbage() {
        let ours = vec![b"coap".to_vec(), b"h2".to_vec()];
        assert_eq!(select_alpn(&ours, b"\x02h2\x04coap"), Some(&b"coap"[..]));
        assert_eq!(select_alpn(&ours, b"\x02h2"), Some(&b"h2"[..]));
        assert_eq!(select_alpn(&ours, b"\x03foo"), None);
        assert_eq!(select_alpn(&ours, b"\x09h2"), None);
        assert_eq!(select_alpn(&ours, b"\x00"), None);
        assert_eq!(select_alpn(&ours, b""), None);
    }
}
