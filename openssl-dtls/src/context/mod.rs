//! Contexts: validated, frozen, shareable DTLS configuration for clients
//! ([`DtlsClientContext`]) and servers ([`DtlsServerContext`]), built by builders whose names
//! follow Dart's `dtls2` so code ports line by line.
//!
//! This module owns everything that goes into the OpenSSL `SSL_CTX` — protocol floor, options,
//! ciphers, security level, groups, signature algorithms, ALPN, PSK and certificate credentials,
//! verification, key log and (server) cookie callbacks — plus the per-session limits and timers
//! (a [`SessionConfig`]) that sessions made from the context run with. A context is built once,
//! checked at `build()` (every misconfiguration is an [`Error::Config`](crate::Error::Config)
//! naming its cause), and then shared cheaply: it is `Clone + Send + Sync` (an `SSL_CTX`
//! reference and an `Arc`).
//!
//! ```
//! use openssl_dtls::{DtlsClientContext, DtlsServerContext, PskCredentials};
//!
//! let server = DtlsServerContext::builder()
//!     .psk_key_store(|identity| (identity == b"device-1").then(|| b"secret".to_vec()))
//!     .build()?;
//! let client = DtlsClientContext::builder()
//!     .psk_credentials(PskCredentials::new(&b"device-1"[..], &b"secret"[..]))
//!     .build()?;
//! let now = std::time::Instant::now();
//! let (mut c, mut s) = (client.new_session(None, now)?, server.new_session(now)?);
//! # let mut buf = [0u8; 1500];
//! # for _ in 0..10 {
//! #     while let Some(n) = c.poll_transmit(&mut buf) { s.handle_datagram(now, &buf[..n]); }
//! #     while let Some(n) = s.poll_transmit(&mut buf) { c.handle_datagram(now, &buf[..n]); }
//! # }
//! # assert!(c.is_established() && s.is_established());
//! # Ok::<(), openssl_dtls::Error>(())
//! ```
//!
//! # Defaults, and why
//!
//! - **DTLS 1.2 minimum** (`SSL_CTX_set_min_proto_version`), set explicitly and set again after
//!   any security-level change: DTLS 1.0 is TLS 1.1-era cryptography and is refused.
//! - **No renegotiation, no compression** (`SSL_OP_NO_RENEGOTIATION`, `SSL_OP_NO_COMPRESSION`):
//!   renegotiation is an attack surface with no use here; compression leaks plaintext (CRIME).
//! - **Explicit MTU**, 1200 bytes, with `SSL_OP_NO_QUERY_MTU`: with a memory BIO OpenSSL would
//!   otherwise guess; 1200 fits the IPv6 minimum MTU with room for a tunnel. With the default
//!   ciphers and groups the ClientHello fits one such datagram (`DTLSv1_listen` drops
//!   fragmented ClientHellos).
//! - **AEAD-only ciphers**: [`CipherPreset::Auto`] picks [`PSK_CIPHERS`] and/or
//!   [`CERTIFICATE_CIPHERS`] from the credentials. A cipher string that selects nothing usable
//!   fails at `build()`, naming the string.
//! - **Security level**: OpenSSL's build default (1 upstream, 2 in Debian 12's build),
//!   except that the CCM8 suites need level 0 on OpenSSL 3.1+ (which rates their 64-bit tag as 64
//!   bits of security): when the ciphers include CCM8, OpenSSL is 3.1 or newer and no level was
//!   set, the context uses level 0 and logs it at `info`. OpenSSL 3.0 needs no change.
//! - **Groups** [`DEFAULT_GROUPS`] (`X25519:P-256:P-384`): `X25519` alone breaks ECDHE-ECDSA on
//!   OpenSSL 3.0 ("no shared cipher"), and P-384 is there for peers that insist on it.
//! - **Signature algorithms**: OpenSSL's defaults (settable).
//! - **Server certificates**: ECDSA (P-256, P-384) and RSA (2048 bits and up at the default
//!   security level). Ed25519 and Ed448 are refused at `build()`: OpenSSL (3.0) enables EdDSA
//!   certificates for the ECDHE-ECDSA suites only when the version is TLS 1.2
//!   (`ssl_set_masks`: `TLS1_get_version(s) == TLS1_2_VERSION`, never true for DTLS), so every
//!   DTLS handshake would fail with "no shared cipher".
//! - **Verification on** for clients, with no trust roots until some are added: a client trusts
//!   nothing by accident. Turning it off is `danger_disable_verification`.
//! - **Whose certificate** is checked too: the server name given, or else the peer's IP address
//!   (an IP subject alternative name). A session with neither fails rather than skip the check
//!   ([`DtlsClientContext::new_session`]); the opt-out is
//!   [`danger_skip_server_name_check`](DtlsClientContextBuilder::danger_skip_server_name_check).
//! - **Cookies** (servers): a random secret rotated every 60 s, the previous one still accepted.
//! - **Key log off**: it is a debugging aid that lets anyone with the file decrypt the traffic.
//!
//! Every callback the user supplies (PSK, verification, admission, key log, and the cookie and
//! ALPN callbacks installed here) runs inside `catch_unwind`: a panic fails that one handshake,
//! is logged, and leaves the process and every other connection untouched (rust-openssl's
//! trampolines do not catch panics, and unwinding into C aborts). With `panic = "abort"` a
//! panic still aborts.

mod ciphers;
mod client;
mod psk;
mod server;

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use openssl::pkey::{Id, PKey, Private};
use openssl::ssl::{SslContextBuilder, SslOptions, SslVersion};

/// The largest certificate chain a peer may send, and so the largest handshake message OpenSSL
/// reassembles for it (`SSL_CTX_set_max_cert_list`): 32 KiB, eight times a typical public-PKI
/// chain, instead of OpenSSL's 100 KB, to bound what a hostile peer past the cookie can make a
/// handshake hold.
pub const MAX_CERT_LIST: usize = 32 * 1024;

/// `SSL_CTX_set_max_cert_list` of a context that uses PSK only and so never receives a
/// certificate: 4 KiB. OpenSSL's DTLS reassembly then bounds any handshake message by a record's
/// worth (`dtls1_max_handshake_message_len`, ≈ 18 KB) instead of [`MAX_CERT_LIST`].
pub const PSK_MAX_CERT_LIST: usize = 4 * 1024;

/// Whether OpenSSL version `v` (`OPENSSL_VERSION_NUMBER` layout) carries the DTLS fixes of the
/// 29 September 2026 advisory (CVE-2026-84782, CVE-2026-75806): 3.0.23, 3.4.8, 3.5.9, 3.6.5,
/// 4.0.3 and later releases of those branches, or any later minor version.
pub(crate) fn openssl_has_dtls_fixes(v: u64) -> bool {
    let (major, minor, patch) = ((v >> 28) & 0xf, (v >> 20) & 0xff, (v >> 4) & 0xff);
    let fixed_patch = match (major, minor) {
        (3, 0) => 23,
        (3, 1..=3) => return false, // out of support: no fix published
        (3, 4) => 8,
        (3, 5) => 9,
        (3, 6) => 5,
        (4, 0) => 3,
        (m, _) if m < 3 => return false,
        _ => 0,
    };
    patch >= fixed_patch
}

/// Logs a warning, once per process, if the OpenSSL in use lacks the DTLS fixes above. The
/// library works around what it can (see SECURITY-CONSIDERATIONS.md §3.7); update OpenSSL anyway.
pub(crate) fn warn_if_openssl_lacks_dtls_fixes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let v = openssl::version::number() as u64;
        if !openssl_has_dtls_fixes(v) {
            log::warn!(
                "{} lacks the DTLS fixes for CVE-2026-84782 and CVE-2026-75806 \
                 (3.0.23 / 3.4.8 / 3.5.9 / 3.6.5 / 4.0.3); openssl-dtls avoids both triggers, \
                 but update OpenSSL when you can",
                openssl::version::version()
            );
        }
    });
}

#[cfg(test)]
mod version_tests {
    use super::openssl_has_dtls_fixes;

    #[test]
    fn dtls_fix_versions_per_branch() {
        assert!(!openssl_has_dtls_fixes(0x3000_0130)); // 3.0.19
        assert!(openssl_has_dtls_fixes(0x3000_0170)); // 3.0.23
        assert!(!openssl_has_dtls_fixes(0x3020_0040)); // 3.2.4
        assert!(!openssl_has_dtls_fixes(0x3060_0030)); // 3.6.3
        assert!(openssl_has_dtls_fixes(0x3060_0050)); // 3.6.5
        assert!(openssl_has_dtls_fixes(0x4000_0030)); // 4.0.3
        assert!(openssl_has_dtls_fixes(0x4010_0000)); // 4.1.0
    }
}
use openssl::x509::{X509StoreContextRef, X509};

use crate::config::SessionConfig;
use crate::error::ConfigError;

pub use self::ciphers::{CipherPreset, CERTIFICATE_CIPHERS, PSK_CIPHERS};
pub use self::client::{DtlsClientContext, DtlsClientContextBuilder};
pub use self::psk::{PskCredentials, MAX_IDENTITY_LEN, MAX_KEY_LEN};
pub use self::server::{ClientAuth, DtlsServerContext, DtlsServerContextBuilder};

/// The default key-exchange groups (`SSL_CTX_set1_groups_list`): X25519, then P-256 and P-384.
/// Not X25519 alone: that breaks ECDHE-ECDSA on OpenSSL 3.0.
#[doc(alias = "SSL_CTX_set1_groups_list")]
pub const DEFAULT_GROUPS: &str = "X25519:P-256:P-384";

/// Runs a user callback for OpenSSL, turning a panic into `on_panic` (and an error log) so that no
/// panic unwinds into C.
pub(crate) fn guard<T>(what: &str, on_panic: T, f: impl FnOnce() -> T) -> T {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        log::error!("the {what} callback panicked: failing this handshake");
        on_panic
    })
}

/// A verification callback: OpenSSL's verdict in, the final verdict out.
pub(crate) type VerifyCallback = Arc<dyn Fn(bool, &mut X509StoreContextRef) -> bool + Send + Sync>;

/// Where a certificate, chain or key comes from. The bytes are wiped on drop (keys are secret;
/// wiping certificates too costs nothing).
#[derive(Clone)]
pub(crate) enum Source {
    Pem(psk::Secret),
    Der(psk::Secret),
    File(PathBuf),
}

impl Source {
    fn describe(&self, thing: &str) -> String {
        match self {
            Source::Pem(_) => format!("{thing} PEM"),
            Source::Der(_) => format!("{thing} DER"),
            Source::File(path) => format!("{thing} file {}", path.display()),
        }
    }

    /// The bytes and whether they are PEM.
    fn bytes(&self, thing: &str) -> Result<(psk::Secret, bool), ConfigError> {
        match self {
            Source::Pem(b) => Ok((b.clone(), true)),
            Source::Der(b) => Ok((b.clone(), false)),
            Source::File(path) => {
                let bytes = std::fs::read(path).map_err(|e| ConfigError::Unreadable {
                    what: self.describe(thing),
                    reason: e.to_string(),
                })?;
                let pem = is_pem(&bytes);
                Ok((psk::Secret(bytes), pem))
            }
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Pem(_) => f.write_str("Pem(..)"),
            Source::Der(_) => f.write_str("Der(..)"),
            Source::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn unreadable(what: String, reason: impl fmt::Display) -> ConfigError {
    ConfigError::Unreadable {
        what,
        reason: reason.to_string(),
    }
}

/// All certificates in `src` (a PEM bundle, or one DER certificate).
fn load_certificates(src: &Source, thing: &str) -> Result<Vec<X509>, ConfigError> {
    let (bytes, pem) = src.bytes(thing)?;
    let what = || src.describe(thing);
    let certs = if pem {
        X509::stack_from_pem(&bytes.0).map_err(|e| unreadable(what(), e))?
    } else {
        vec![X509::from_der(&bytes.0).map_err(|e| unreadable(what(), e))?]
    };
    if certs.is_empty() {
        return Err(unreadable(what(), "no PEM certificate found"));
    }
    Ok(certs)
}

/// The private key in `src` (PEM or DER; PKCS#8 or traditional). Encrypted keys are refused
/// rather than prompting on a terminal.
fn load_key(src: &Source) -> Result<PKey<Private>, ConfigError> {
    let (bytes, pem) = src.bytes("private key")?;
    let key = if pem {
        PKey::private_key_from_pem_passphrase(&bytes.0, b"")
    } else {
        PKey::private_key_from_der(&bytes.0)
    };
    key.map_err(|e| unreadable(src.describe("private key"), e))
}

/// A certificate chain and its private key.
#[derive(Debug, Clone, Default)]
pub(crate) struct CertificateConfig {
    chain: Option<Source>,
    extra_der: Vec<psk::Secret>,
    key: Option<Source>,
}

/// What kind of key a context's certificate has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// ECDSA: used with the `ECDHE-ECDSA` suites.
    Ec,
    /// Ed25519 or Ed448: the `ECDHE-ECDSA` suites in TLS 1.2, but never in OpenSSL's DTLS.
    Eddsa,
    /// RSA or RSA-PSS: used with the `ECDHE-RSA` suites.
    Rsa,
    Dsa,
    Other,
}

impl CertificateConfig {
    fn is_set(&self) -> bool {
        self.chain.is_some() || self.key.is_some()
    }

    /// Loads the chain and key and checks that they belong together.
    fn load(&self) -> Result<Option<LoadedCertificate>, ConfigError> {
        let (chain, key) = match (&self.chain, &self.key) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(ConfigError::Invalid(
                    "a certificate was given without its private key (private_key_pem/der/file)".to_owned(),
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "a private key was given without its certificate (certificate_chain_pem/file, certificate_der)"
                        .to_owned(),
                ))
            }
            (Some(chain), Some(key)) => (chain, key),
        };
        let mut certs = load_certificates(chain, "certificate")?;
        for der in &self.extra_der {
            certs.push(
                X509::from_der(&der.0)
                    .map_err(|e| unreadable("chain certificate DER".to_owned(), e))?,
            );
        }
        let key = load_key(key)?;
        let leaf = certs.remove(0);
        let public = leaf
            .public_key()
            .map_err(|e| unreadable("the certificate's public key".to_owned(), e))?;
        if !public.public_eq(&key) {
            return Err(ConfigError::KeyMismatch);
        }
        Ok(Some(LoadedCertificate {
            leaf,
            chain: certs,
            key,
        }))
    }
}

/// A certificate chain and key, parsed and known to match.
pub(crate) struct LoadedCertificate {
    leaf: X509,
    chain: Vec<X509>,
    key: PKey<Private>,
}

impl LoadedCertificate {
    /// Which suites the key can authenticate.
    fn kind(&self) -> KeyKind {
        match self.key.id() {
            Id::EC => KeyKind::Ec,
            Id::ED25519 | Id::ED448 => KeyKind::Eddsa,
            Id::RSA | Id::RSA_PSS => KeyKind::Rsa,
            Id::DSA => KeyKind::Dsa,
            _ => KeyKind::Other,
        }
    }

    /// Installs chain and key (`SSL_CTX_use_certificate`, `SSL_CTX_add_extra_chain_cert`,
    /// `SSL_CTX_use_PrivateKey`, `SSL_CTX_check_private_key`). Call after the security level is
    /// set: it decides which keys OpenSSL accepts.
    fn install(&self, b: &mut SslContextBuilder) -> Result<(), ConfigError> {
        let rejected = |what: &str, e: openssl::error::ErrorStack| {
            ConfigError::Invalid(format!(
                "OpenSSL rejects the {what} (security level or key type): {e}"
            ))
        };
        b.set_certificate(&self.leaf)
            .map_err(|e| rejected("certificate", e))?;
        for cert in &self.chain {
            b.add_extra_chain_cert(cert.clone())
                .map_err(|e| rejected("chain certificate", e))?;
        }
        b.set_private_key(&self.key)
            .map_err(|e| rejected("private key", e))?;
        b.check_private_key().map_err(|_| ConfigError::KeyMismatch)
    }
}

/// Adds every certificate of `roots` to the context's trust store; a server also names them in
/// its CertificateRequest (`SSL_CTX_add_client_CA`) so clients know which certificate to send.
fn apply_roots(
    b: &mut SslContextBuilder,
    roots: &[Source],
    name_in_request: bool,
) -> Result<(), ConfigError> {
    for src in roots {
        for cert in load_certificates(src, "root certificate")? {
            if name_in_request {
                b.add_client_ca(&cert).map_err(|e| {
                    ConfigError::Invalid(format!("cannot add a client CA name: {e}"))
                })?;
            }
            b.cert_store_mut()
                .add_cert(cert)
                .map_err(|e| ConfigError::Invalid(format!("cannot add a root certificate: {e}")))?;
        }
    }
    Ok(())
}

/// Where key log lines go.
#[derive(Clone)]
pub(crate) enum KeyLog {
    Callback(Arc<dyn Fn(&str) + Send + Sync>),
    File(PathBuf),
}

impl fmt::Debug for KeyLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyLog::Callback(_) => f.write_str("Callback(..)"),
            KeyLog::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// Settings both sides share.
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub ciphers: CipherPreset,
    pub security_level: Option<u32>,
    pub groups: String,
    pub sigalgs: Option<String>,
    pub alpn: Vec<Vec<u8>>,
    pub session: SessionConfig,
    pub key_log: Option<KeyLog>,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            ciphers: CipherPreset::Auto,
            security_level: None,
            groups: DEFAULT_GROUPS.to_owned(),
            sigalgs: None,
            alpn: Vec::new(),
            session: SessionConfig::default(),
            key_log: None,
        }
    }
}

impl Common {
    /// Checks the session settings, then sets options, protocol floor, ciphers, security level,
    /// groups and signature algorithms.
    fn apply(
        &self,
        b: &mut SslContextBuilder,
        psk: bool,
        certificates: bool,
        usable: impl Fn(&ciphers::Offered) -> bool,
        credentials: &str,
    ) -> Result<(), ConfigError> {
        self.session.validate()?;
        if let Some(level) = self.security_level {
            if level > 5 {
                return Err(ConfigError::OutOfRange {
                    setting: "security_level",
                    value: u64::from(level),
                    allowed: "0 to 5",
                });
            }
        }
        b.set_options(
            SslOptions::NO_QUERY_MTU | SslOptions::NO_RENEGOTIATION | SslOptions::NO_COMPRESSION,
        );
        // A peer's certificate chain, and in DTLS any handshake message it makes us reassemble,
        // is bounded by max_cert_list (OpenSSL's default: 100 KB per message). A context that
        // never receives a certificate takes the smallest: OpenSSL then bounds every message by
        // a record's worth (≈ 18 KB).
        let max_cert_list = if certificates {
            MAX_CERT_LIST
        } else {
            PSK_MAX_CERT_LIST
        };
        // SAFETY: `b` owns a valid SSL_CTX; the macro only stores the value.
        unsafe {
            openssl_dtls_sys::SSL_CTX_set_max_cert_list(b.as_ptr(), max_cert_list as _);
        }
        b.set_min_proto_version(Some(SslVersion::DTLS1_2))
            .map_err(|e| ConfigError::Invalid(format!("cannot set the DTLS 1.2 minimum: {e}")))?;
        let cipher_string = self.ciphers.cipher_string(psk, certificates);
        ciphers::apply(b, &cipher_string, self.security_level, usable, credentials)?;
        let groups_error = || ConfigError::Groups {
            groups: self.groups.clone(),
        };
        if self.groups.contains('\0') {
            return Err(groups_error());
        }
        b.set_groups_list(&self.groups)
            .map_err(|_| groups_error())?;
        if let Some(sigalgs) = &self.sigalgs {
            let sigalgs_error = || ConfigError::SignatureAlgorithms {
                sigalgs: sigalgs.clone(),
            };
            if sigalgs.contains('\0') {
                return Err(sigalgs_error());
            }
            b.set_sigalgs_list(sigalgs).map_err(|_| sigalgs_error())?;
        }
        Ok(())
    }

    /// The ALPN list in wire format (each name length-prefixed).
    fn alpn_wire(&self) -> Result<Vec<u8>, ConfigError> {
        let mut wire = Vec::new();
        for name in &self.alpn {
            let len = u8::try_from(name.len())
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "ALPN protocol names are 1 to 255 bytes; {:?} has {}",
                        String::from_utf8_lossy(name),
                        name.len()
                    ))
                })?;
            wire.push(len);
            wire.extend_from_slice(name);
        }
        Ok(wire)
    }

    /// Installs the key log callback (`SSL_CTX_set_keylog_callback`), if one is configured.
    fn apply_key_log(&self, b: &mut SslContextBuilder) -> Result<(), ConfigError> {
        let Some(key_log) = &self.key_log else {
            return Ok(());
        };
        let sink: Arc<dyn Fn(&str) + Send + Sync> = match key_log {
            KeyLog::Callback(f) => Arc::clone(f),
            KeyLog::File(path) => {
                let file = open_key_log(path).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "cannot open key log file {}: {e}",
                        path.display()
                    ))
                })?;
                let file = Mutex::new(file);
                Arc::new(move |line: &str| {
                    let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Err(e) = writeln!(file, "{line}") {
                        log::warn!("cannot write to the key log file: {e}");
                    }
                })
            }
        };
        log::warn!(
            "DTLS key logging is ON: anyone who reads the key log can decrypt this traffic. Never enable it in production"
        );
        b.set_keylog_callback(move |_ssl, line| guard("key log", (), || sink(line)));
        Ok(())
    }
}

fn open_key_log(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Builder methods both sides share; `$field` is the builder's [`Common`].
macro_rules! common_builder_methods {
    () => {
        /// Uses an OpenSSL cipher string (`ciphers(1)` syntax) instead of the preset, e.g.
        /// `"PSK-AES128-CCM8"` (`SSL_CTX_set_cipher_list`). A string OpenSSL rejects, or that
        /// leaves no cipher usable with the configured credentials at the security level, fails
        /// at `build()` with [`ConfigError::Ciphers`](crate::ConfigError::Ciphers).
        #[doc(alias = "SSL_CTX_set_cipher_list")]
        pub fn ciphers(&mut self, ciphers: &str) -> &mut Self {
            self.common.ciphers = $crate::context::CipherPreset::Custom(ciphers.to_owned());
            self
        }

        /// Uses a named cipher preset (default [`CipherPreset::Auto`](crate::context::CipherPreset::Auto))
        /// (`SSL_CTX_set_cipher_list`).
        #[doc(alias = "SSL_CTX_set_cipher_list")]
        pub fn cipher_preset(&mut self, preset: $crate::context::CipherPreset) -> &mut Self {
            self.common.ciphers = preset;
            self
        }

        /// Sets OpenSSL's security level, 0 to 5 (`SSL_CTX_set_security_level`). Default:
        /// OpenSSL's build default (1 upstream, 2 in Debian 12's build), lowered to 0 only when
        /// the ciphers include CCM8 on OpenSSL 3.1+ and no level was set here. The DTLS 1.2
        /// minimum is set again after the level, whatever it is.
        #[doc(alias = "SSL_CTX_set_security_level")]
        pub fn security_level(&mut self, level: u32) -> &mut Self {
            self.common.security_level = Some(level);
            self
        }

        /// Sets the key-exchange groups, most preferred first, e.g. `"X25519:P-256"`
        /// (`SSL_CTX_set1_groups_list`). Default [`DEFAULT_GROUPS`](crate::context::DEFAULT_GROUPS).
        /// An unknown group fails at `build()` with [`ConfigError::Groups`](crate::ConfigError::Groups).
        #[doc(alias = "SSL_CTX_set1_groups_list")]
        pub fn groups(&mut self, groups: &str) -> &mut Self {
            self.common.groups = groups.to_owned();
            self
        }

        /// Sets the signature algorithms, e.g. `"ECDSA+SHA256:RSA-PSS+SHA256:ed25519"`
        /// (`SSL_CTX_set1_sigalgs_list`). Default: OpenSSL's list. A list OpenSSL rejects fails
        /// at `build()` with [`ConfigError::SignatureAlgorithms`](crate::ConfigError::SignatureAlgorithms).
        #[doc(alias = "SSL_CTX_set1_sigalgs_list")]
        pub fn signature_algorithms(&mut self, sigalgs: &str) -> &mut Self {
            self.common.sigalgs = Some(sigalgs.to_owned());
            self
        }

        /// Sets the link MTU: the largest UDP payload a session emits (`DTLS_set_link_mtu`, with
        /// `SSL_OP_NO_QUERY_MTU`). Default 1200; 256 to 65,507 (checked at `build()`).
        #[doc(alias = "DTLS_set_link_mtu")]
        pub fn mtu(&mut self, mtu: usize) -> &mut Self {
            self.common.session.mtu = mtu;
            self
        }

        /// Sets how long a handshake may take before it fails with
        /// [`Error::Timeout`](crate::Error::Timeout). Default 30 s.
        pub fn handshake_timeout(&mut self, timeout: ::std::time::Duration) -> &mut Self {
            self.common.session.handshake_timeout = timeout;
            self
        }

        /// Sets the first retransmission timeout of a flight and the cap of its doubling
        /// (`DTLS_set_timer_cb`). Default 1 s and 10 s.
        #[doc(alias = "DTLS_set_timer_cb")]
        pub fn retransmit_timeout(
            &mut self,
            initial: ::std::time::Duration,
            max: ::std::time::Duration,
        ) -> &mut Self {
            self.common.session.retransmit_initial = initial;
            self.common.session.retransmit_max = max;
            self
        }

        /// Sets how many retransmission timeouts one handshake may take before it fails
        /// (OpenSSL's own cap is `DTLS1_TMO_ALERT_COUNT`, 12). Default 12.
        #[doc(alias = "DTLSv1_handle_timeout")]
        pub fn max_retransmits(&mut self, count: u32) -> &mut Self {
            self.common.session.max_retransmits = count;
            self
        }

        /// Compact connections (opt-in, default off): after the handshake, move each
        /// connection's record layer from OpenSSL to this library's compact AEAD record layer
        /// and free its `SSL` (`SSL_free`), so an idle established connection costs about 1 KB
        /// instead of ≈ 36–70 KB. See [`SessionConfig::compact`](crate::SessionConfig::compact)
        /// and the "Compact connections" section of `SECURITY-CONSIDERATIONS.md`.
        pub fn compact_connections(&mut self, on: bool) -> &mut Self {
            self.common.session.compact = on;
            self
        }

        /// How long the side that sent the handshake's last flight keeps its `SSL` in compact
        /// mode, unless the peer's first record proves sooner that it finished
        /// ([`SessionConfig::compact_linger`](crate::SessionConfig::compact_linger)). Default
        /// 240 s (RFC 6347 §4.2.4); at most 1 hour.
        pub fn compact_linger(&mut self, linger: ::std::time::Duration) -> &mut Self {
            self.common.session.compact_linger = linger;
            self
        }

        /// Replaces all per-session limits and timers at once (checked at `build()`).
        pub fn session_config(&mut self, config: $crate::SessionConfig) -> &mut Self {
            self.common.session = config;
            self
        }

        /// Sends every TLS secret to `callback` as one NSS key log line
        /// (`CLIENT_RANDOM <client random> <master secret>`, hex, no newline), the format
        /// Wireshark reads (`SSL_CTX_set_keylog_callback`).
        ///
        /// A debugging aid only: whoever sees these lines can decrypt the traffic. Never enable
        /// it in production; `build()` logs a warning when it is on.
        #[doc(alias = "SSL_CTX_set_keylog_callback")]
        #[doc(alias = "SSLKEYLOGFILE")]
        pub fn key_log_callback<F>(&mut self, callback: F) -> &mut Self
        where
            F: Fn(&str) + Send + Sync + 'static,
        {
            self.common.key_log = Some($crate::context::KeyLog::Callback(::std::sync::Arc::new(
                callback,
            )));
            self
        }

        /// Appends NSS key log lines (the `SSLKEYLOGFILE` format Wireshark reads) to the file at
        /// `path`, created with mode 0600 if missing (`SSL_CTX_set_keylog_callback`).
        ///
        /// A debugging aid only: whoever reads the file can decrypt the traffic. Never enable it
        /// in production; `build()` logs a warning when it is on, and fails if the file cannot be
        /// opened.
        #[doc(alias = "SSL_CTX_set_keylog_callback")]
        #[doc(alias = "SSLKEYLOGFILE")]
        pub fn key_log_file(&mut self, path: impl AsRef<::std::path::Path>) -> &mut Self {
            self.common.key_log = Some($crate::context::KeyLog::File(path.as_ref().to_path_buf()));
            self
        }
    };
}

/// Builder methods for a certificate chain and private key; `$what` names whose certificate it
/// is in the docs.
macro_rules! certificate_builder_methods {
    ($what:literal) => {
        #[doc = concat!("Sets ", $what, " certificate chain from PEM: the leaf first, then the intermediates")]
        /// (`SSL_CTX_use_certificate_chain_file` semantics, from bytes). Unreadable or malformed
        /// PEM fails at `build()` with [`ConfigError::Unreadable`](crate::ConfigError::Unreadable).
        #[doc(alias = "SSL_CTX_use_certificate_chain_file")]
        pub fn certificate_chain_pem(&mut self, pem: &[u8]) -> &mut Self {
            self.certificate.chain = Some($crate::context::Source::Pem($crate::context::psk::Secret(pem.to_vec())));
            self
        }

        #[doc = concat!("Reads ", $what, " certificate chain from a file at `build()`: PEM (leaf first, then")]
        /// intermediates) or one DER certificate (`SSL_CTX_use_certificate_chain_file`).
        #[doc(alias = "SSL_CTX_use_certificate_chain_file")]
        pub fn certificate_chain_file(&mut self, path: impl AsRef<::std::path::Path>) -> &mut Self {
            self.certificate.chain = Some($crate::context::Source::File(path.as_ref().to_path_buf()));
            self
        }

        #[doc = concat!("Sets ", $what, " certificate from DER (`SSL_CTX_use_certificate_ASN1`); add")]
        /// intermediates with [`chain_certificate_der`](Self::chain_certificate_der).
        #[doc(alias = "SSL_CTX_use_certificate_ASN1")]
        pub fn certificate_der(&mut self, der: &[u8]) -> &mut Self {
            self.certificate.chain = Some($crate::context::Source::Der($crate::context::psk::Secret(der.to_vec())));
            self
        }

        /// Appends one intermediate certificate (DER) to the chain sent after the leaf
        /// (`SSL_CTX_add_extra_chain_cert`).
        #[doc(alias = "SSL_CTX_add_extra_chain_cert")]
        pub fn chain_certificate_der(&mut self, der: &[u8]) -> &mut Self {
            self.certificate.extra_der.push($crate::context::psk::Secret(der.to_vec()));
            self
        }

        /// Sets the private key from PEM, PKCS#8 or traditional (`SSL_CTX_use_PrivateKey`).
        /// Encrypted keys are refused. A key that does not match the certificate fails at
        /// `build()` with [`ConfigError::KeyMismatch`](crate::ConfigError::KeyMismatch). The
        /// builder's copy of the bytes is wiped when the builder is dropped.
        #[doc(alias = "SSL_CTX_use_PrivateKey")]
        pub fn private_key_pem(&mut self, pem: &[u8]) -> &mut Self {
            self.certificate.key = Some($crate::context::Source::Pem($crate::context::psk::Secret(pem.to_vec())));
            self
        }

        /// Sets the private key from DER, PKCS#8 or traditional (`SSL_CTX_use_PrivateKey_ASN1`).
        #[doc(alias = "SSL_CTX_use_PrivateKey_ASN1")]
        pub fn private_key_der(&mut self, der: &[u8]) -> &mut Self {
            self.certificate.key = Some($crate::context::Source::Der($crate::context::psk::Secret(der.to_vec())));
            self
        }

        /// Reads the private key from a PEM or DER file at `build()` (`SSL_CTX_use_PrivateKey_file`).
        #[doc(alias = "SSL_CTX_use_PrivateKey_file")]
        pub fn private_key_file(&mut self, path: impl AsRef<::std::path::Path>) -> &mut Self {
            self.certificate.key = Some($crate::context::Source::File(path.as_ref().to_path_buf()));
            self
        }
    };
}

/// Builder methods for trust roots and the verification callback.
macro_rules! trust_builder_methods {
    ($whose:literal) => {
        #[doc = concat!("Trusts the certificates in `pem` (one or more) as roots for ", $whose, " certificate")]
        /// (`X509_STORE_add_cert` on the context's store).
        #[doc(alias = "X509_STORE_add_cert")]
        #[doc(alias = "SSL_CTX_get_cert_store")]
        pub fn root_certificates_pem(&mut self, pem: &[u8]) -> &mut Self {
            self.roots.push($crate::context::Source::Pem($crate::context::psk::Secret(pem.to_vec())));
            self
        }

        #[doc = concat!("Trusts one DER certificate as a root for ", $whose, " certificate (`X509_STORE_add_cert`).")]
        #[doc(alias = "X509_STORE_add_cert")]
        pub fn root_certificate_der(&mut self, der: &[u8]) -> &mut Self {
            self.roots.push($crate::context::Source::Der($crate::context::psk::Secret(der.to_vec())));
            self
        }

        #[doc = concat!("Trusts the certificates in a PEM (or single DER) file as roots for ", $whose, " certificate,")]
        /// read at `build()` (`SSL_CTX_load_verify_locations` semantics).
        #[doc(alias = "SSL_CTX_load_verify_locations")]
        pub fn root_certificates_file(&mut self, path: impl AsRef<::std::path::Path>) -> &mut Self {
            self.roots.push($crate::context::Source::File(path.as_ref().to_path_buf()));
            self
        }

        #[doc = concat!("Decides on ", $whose, " certificate chain: called for each certificate with OpenSSL's")]
        /// verdict (`preverified`) and the store context; returns the final verdict
        /// (`SSL_CTX_set_verify`). A panic counts as `false`.
        #[doc(alias = "SSL_CTX_set_verify")]
        pub fn verify_callback<F>(&mut self, callback: F) -> &mut Self
        where
            F: Fn(bool, &mut ::openssl::x509::X509StoreContextRef) -> bool + Send + Sync + 'static,
        {
            self.verify_callback = Some(::std::sync::Arc::new(callback));
            self
        }
    };
}

pub(crate) use {certificate_builder_methods, common_builder_methods, trust_builder_methods};

/// Installs `callback` (if any) with `mode` (`SSL_CTX_set_verify`), panics caught. The
/// callback always installed records the first rejected certificate (depth, subject, reason) so
/// that a failed handshake reports it as [`Error::Verification`](crate::Error::Verification).
fn apply_verify(
    b: &mut SslContextBuilder,
    mode: openssl::ssl::SslVerifyMode,
    callback: Option<&VerifyCallback>,
) {
    match callback {
        Some(cb) => {
            let cb = Arc::clone(cb);
            b.set_verify_callback(mode, move |preverified, store| {
                let verdict = guard("verify", false, || cb(preverified, store));
                guard("verify", false, || crate::verify::checked(verdict, store))
            });
        }
        None => b.set_verify_callback(mode, |preverified, store| {
            guard("verify", false, || {
                crate::verify::checked(preverified, store)
            })
        }),
    }
}
