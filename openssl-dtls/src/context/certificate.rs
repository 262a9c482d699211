//! A context's own certificate: where the chain and key come from ([`Source`]: PEM, DER or a
//! file, wiped on drop), loading and checking that they belong together ([`CertificateConfig`]),
//! installing them on the `SSL_CTX` ([`LoadedCertificate`]), and the builder methods that set
//! them.

use std::fmt;
use std::path::PathBuf;

use openssl::pkey::{Id, PKey, Private};
use openssl::ssl::SslContextBuilder;
use openssl::x509::X509;

use super::psk;
use crate::error::ConfigError;

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
pub(super) fn load_certificates(src: &Source, thing: &str) -> Result<Vec<X509>, ConfigError> {
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
    pub(super) chain: Option<Source>,
    pub(super) extra_der: Vec<psk::Secret>,
    pub(super) key: Option<Source>,
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
    pub(super) fn is_set(&self) -> bool {
        self.chain.is_some() || self.key.is_some()
    }

    /// Loads the chain and key and checks that they belong together.
    pub(super) fn load(&self) -> Result<Option<LoadedCertificate>, ConfigError> {
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
    pub(super) fn kind(&self) -> KeyKind {
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
    pub(super) fn install(&self, b: &mut SslContextBuilder) -> Result<(), ConfigError> {
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

/// Builder methods for a certificate chain and private key; `$what` names whose certificate it
/// is in the docs.
macro_rules! certificate_builder_methods {
    ($what:literal) => {
        #[doc = concat!("Sets ", $what, " certificate chain from PEM: the leaf first, then the intermediates")]
        /// (`SSL_CTX_use_certificate_chain_file` semantics, from bytes). Unreadable or malformed
        /// PEM fails at `build()` with [`ConfigError::Unreadable`](crate::ConfigError::Unreadable).
        #[doc(alias = "SSL_CTX_use_certificate_chain_file")]
        pub fn certificate_chain_pem(&mut self, pem: &[u8]) -> &mut Self {
            self.certificate.chain = Some($crate::context::certificate::Source::Pem($crate::context::psk::Secret(pem.to_vec())));
            self
        }

        #[doc = concat!("Reads ", $what, " certificate chain from a file at `build()`: PEM (leaf first, then")]
        /// intermediates) or one DER certificate (`SSL_CTX_use_certificate_chain_file`).
        #[doc(alias = "SSL_CTX_use_certificate_chain_file")]
        pub fn certificate_chain_file(&mut self, path: impl AsRef<::std::path::Path>) -> &mut Self {
            self.certificate.chain = Some($crate::context::certificate::Source::File(path.as_ref().to_path_buf()));
            self
        }

        #[doc = concat!("Sets ", $what, " certificate from DER (`SSL_CTX_use_certificate_ASN1`); add")]
        /// intermediates with [`chain_certificate_der`](Self::chain_certificate_der).
        #[doc(alias = "SSL_CTX_use_certificate_ASN1")]
        pub fn certificate_der(&mut self, der: &[u8]) -> &mut Self {
            self.certificate.chain = Some($crate::context::certificate::Source::Der($crate::context::psk::Secret(der.to_vec())));
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
            self.certificate.key = Some($crate::context::certificate::Source::Pem($crate::context::psk::Secret(pem.to_vec())));
            self
        }

        /// Sets the private key from DER, PKCS#8 or traditional (`SSL_CTX_use_PrivateKey_ASN1`).
        #[doc(alias = "SSL_CTX_use_PrivateKey_ASN1")]
        pub fn private_key_der(&mut self, der: &[u8]) -> &mut Self {
            self.certificate.key = Some($crate::context::certificate::Source::Der($crate::context::psk::Secret(der.to_vec())));
            self
        }

        /// Reads the private key from a PEM or DER file at `build()` (`SSL_CTX_use_PrivateKey_file`).
        #[doc(alias = "SSL_CTX_use_PrivateKey_file")]
        pub fn private_key_file(&mut self, path: impl AsRef<::std::path::Path>) -> &mut Self {
            self.certificate.key = Some($crate::context::certificate::Source::File(path.as_ref().to_path_buf()));
            self
        }
    };
}

pub(crate) use certificate_builder_methods;
