//! Cipher presets, and the check that a cipher string leaves usable ciphers at `build()`.
//!
//! The presets are AEAD-only: no CBC, RC4, 3DES, NULL, anonymous, export or static-RSA key
//! exchange. A cipher string is checked against what OpenSSL would really offer for DTLS 1.2 at
//! the context's security level (`SSL_get1_supported_ciphers` on a probe `SSL`), filtered by the
//! credentials the context has, so a string that selects nothing usable fails at `build()` and
//! never as a mysterious `no shared cipher` at the first handshake.
//!
//! CCM8 and the security level: OpenSSL 3.1 rates the 64-bit tag of the CCM8 suites as 64 bits of
//! security, below security level 1 (80 bits), so a CCM8 suite silently disappears from the
//! offer on 3.1+ unless the level is 0. When the selected ciphers contain a CCM8 suite that the
//! current level filters out, OpenSSL is 3.1 or newer and the user set no level (neither
//! [`security_level`](super::DtlsClientContextBuilder::security_level) nor `@SECLEVEL=` in the
//! string), the context runs at level 0 and says so at `info` level. Level 0 also admits weak
//! parameters elsewhere (keys under 1024 bits, SHA-1 signatures); the AEAD-only presets and the
//! DTLS 1.2 floor, which is set again after the level, keep the rest of the handshake modern.
//! On OpenSSL 3.0 (Debian 12) CCM8 needs no change.

use openssl::error::ErrorStack;
use openssl::ssl::{Ssl, SslCipherRef, SslContextBuilder, SslMethod, SslVersion};

use crate::error::ConfigError;

/// The certificate preset: ECDHE-ECDSA and ECDHE-RSA with AES-128-GCM, AES-256-GCM and
/// ChaCha20-Poly1305, in that order of preference, then `ECDHE-ECDSA-AES128-CCM8`
/// (`TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8`, RFC 7925 §4.4's mandatory certificate suite for
/// constrained devices, which often offer nothing else). Forward secret and AEAD only. CCM8 is
/// last, so peers that offer GCM get GCM; on OpenSSL 3.1+ its presence lowers the security level
/// to 0 as described in the [context documentation](crate::context) unless a level is set.
pub const CERTIFICATE_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-CCM8";

/// The PSK preset: `PSK-AES128-CCM8` (RFC 7925's and CoAP's mandatory suite) first, then
/// AES-128-GCM, ECDHE-PSK with ChaCha20-Poly1305 (OpenSSL 3.0 has ECDHE-PSK only with ChaCha20 or
/// CBC), and the CCM suites with 16-byte tags. CCM and CCM8 are not in OpenSSL's `DEFAULT`
/// list, so they are named one by one.
pub const PSK_CIPHERS: &str = "PSK-AES128-CCM8:PSK-AES128-GCM-SHA256:ECDHE-PSK-CHACHA20-POLY1305:\
PSK-AES128-CCM:PSK-AES256-CCM:PSK-AES256-GCM-SHA384";

/// Which ciphers a context offers or accepts (`SSL_CTX_set_cipher_list`).
#[doc(alias = "SSL_CTX_set_cipher_list")]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CipherPreset {
    /// Chosen from the credentials: [`PSK_CIPHERS`] for PSK credentials,
    /// [`CERTIFICATE_CIPHERS`] for certificates, both (PSK first) when the context has both. A
    /// PSK-only client offers only PSK suites: some servers pick a certificate suite when one is
    /// offered and then fail for lack of certificate credentials.
    #[default]
    Auto,
    /// [`CERTIFICATE_CIPHERS`].
    Certificates,
    /// [`PSK_CIPHERS`].
    Psk,
    /// [`PSK_CIPHERS`] then [`CERTIFICATE_CIPHERS`].
    PskAndCertificates,
    /// An OpenSSL cipher string (`ciphers(1)` syntax), used as given.
    Custom(String),
}

impl CipherPreset {
    /// The OpenSSL cipher string this preset stands for, given which credentials the context has.
    pub(crate) fn cipher_string(&self, psk: bool, certificates: bool) -> String {
        let both = || format!("{PSK_CIPHERS}:{CERTIFICATE_CIPHERS}");
        match self {
            CipherPreset::Auto => match (psk, certificates) {
                (true, true) => both(),
                (true, false) => PSK_CIPHERS.to_owned(),
                (false, _) => CERTIFICATE_CIPHERS.to_owned(),
            },
            CipherPreset::Certificates => CERTIFICATE_CIPHERS.to_owned(),
            CipherPreset::Psk => PSK_CIPHERS.to_owned(),
            CipherPreset::PskAndCertificates => both(),
            CipherPreset::Custom(s) => s.clone(),
        }
    }
}

/// How a cipher suite authenticates the server, from OpenSSL's `Au=` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    Psk,
    Ecdsa,
    Rsa,
    Dss,
    /// Anonymous (`aNULL`) or something this crate does not use.
    Other,
}

/// One cipher OpenSSL would offer.
#[derive(Debug, Clone)]
pub(crate) struct Offered {
    pub name: &'static str,
    pub auth: Auth,
}

impl Offered {
    fn is_ccm8(&self) -> bool {
        self.name.contains("CCM8")
    }
}

fn auth_of(cipher: &SslCipherRef) -> Auth {
    let description = cipher.description();
    let au = description
        .split_whitespace()
        .find_map(|field| field.strip_prefix("Au="))
        .unwrap_or("");
    match au {
        "PSK" => Auth::Psk,
        "ECDSA" => Auth::Ecdsa,
        "RSA" => Auth::Rsa,
        "DSS" => Auth::Dss,
        _ => Auth::Other,
    }
}

/// The DTLS 1.2 ciphers OpenSSL enables for `ssl` (version range and security level applied).
fn supported(ssl: &mut Ssl) -> Vec<Offered> {
    let Some(stack) = crate::ffi::ctx::supported_ciphers(ssl) else {
        return Vec::new();
    };
    stack
        .iter()
        .filter(|c| c.version() != "TLSv1.3")
        .map(|c| Offered {
            name: c.name(),
            auth: auth_of(c),
        })
        .collect()
}

/// What a client context with `cipher_string` at `level` would offer. A client `SSL` with a PSK
/// callback reports PSK suites too (OpenSSL hides them when no PSK client callback is set), so
/// the same probe serves servers: it answers "which suites survive the string, the version floor
/// and the security level".
fn probe(cipher_string: &str, level: Option<u32>) -> Result<Vec<Offered>, ErrorStack> {
    let mut b = SslContextBuilder::new(SslMethod::dtls_client())?;
    b.set_cipher_list(cipher_string)?;
    if let Some(level) = level {
        b.set_security_level(level);
    }
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    b.set_psk_client_callback(|_, _, _, _| Ok(0));
    let ctx = b.build();
    let mut ssl = Ssl::new(&ctx)?;
    Ok(supported(&mut ssl))
}

/// Sets `cipher_string` and the security level on `b`, then the DTLS 1.2 floor again.
///
/// Fails with [`ConfigError::Ciphers`] if OpenSSL rejects the string, or if nothing it selects is
/// enabled for DTLS 1.2 at the security level and usable with the credentials (`usable`).
pub(crate) fn apply(
    b: &mut SslContextBuilder,
    cipher_string: &str,
    user_level: Option<u32>,
    usable: impl Fn(&Offered) -> bool,
    credentials: &str,
) -> Result<(), ConfigError> {
    let fail = |reason: String| ConfigError::Ciphers {
        ciphers: cipher_string.to_owned(),
        reason,
    };
    if cipher_string.contains('\0') {
        return Err(fail("it contains a NUL byte".to_owned()));
    }
    let mut level = user_level;
    let mut offered =
        probe(cipher_string, level).map_err(|e| fail(format!("OpenSSL rejects it: {e}")))?;
    let level_set_by_user = user_level.is_some() || cipher_string.contains("@SECLEVEL");
    if !level_set_by_user
        && openssl::version::number() >= 0x3010_0000
        && !offered.iter().any(Offered::is_ccm8)
    {
        let at_zero =
            probe(cipher_string, Some(0)).map_err(|e| fail(format!("OpenSSL rejects it: {e}")))?;
        if at_zero.iter().any(Offered::is_ccm8) {
            log::info!(
                "OpenSSL {} needs security level 0 for the CCM8 suites in {cipher_string:?}: using level 0",
                openssl::version::version()
            );
            level = Some(0);
            offered = at_zero;
        }
    }
    if offered.is_empty() {
        return Err(fail(
            "none of the ciphers it selects is enabled for DTLS 1.2 at the security level"
                .to_owned(),
        ));
    }
    if !offered.iter().any(usable) {
        let names: Vec<&str> = offered.iter().map(|c| c.name).collect();
        return Err(fail(format!(
            "none of its ciphers ({}) can be used with {credentials}",
            names.join(", ")
        )));
    }
    b.set_cipher_list(cipher_string)
        .map_err(|e| fail(format!("OpenSSL rejects it: {e}")))?;
    if let Some(level) = level {
        b.set_security_level(level);
    }
    // The floor again: lowering the security level must never bring DTLS 1.0 back.
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(|e| ConfigError::Invalid(format!("cannot set the DTLS 1.2 minimum: {e}")))?;
    Ok(())
}
