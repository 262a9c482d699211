//! Whom a context trusts: root certificates for the peer's chain (`X509_STORE_add_cert`, and
//! for servers the CA names of the CertificateRequest), the user's verification callback, and
//! the builder methods that set them.

use std::sync::Arc;

use openssl::ssl::SslContextBuilder;
use openssl::x509::X509StoreContextRef;

use super::certificate::{load_certificates, Source};
use crate::error::ConfigError;
use crate::ffi::ctx::guard;

/// A verification callback: OpenSSL's verdict in, the final verdict out.
pub(crate) type VerifyCallback = Arc<dyn Fn(bool, &mut X509StoreContextRef) -> bool + Send + Sync>;

/// Adds every certificate of `roots` to the context's trust store; a server also names them in
/// its CertificateRequest (`SSL_CTX_add_client_CA`) so clients know which certificate to send.
pub(super) fn apply_roots(
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

/// Builder methods for trust roots and the verification callback.
macro_rules! trust_builder_methods {
    ($whose:literal) => {
        #[doc = concat!("Trusts the certificates in `pem` (one or more) as roots for ", $whose, " certificate")]
        /// (`X509_STORE_add_cert` on the context's store).
        #[doc(alias = "X509_STORE_add_cert")]
        #[doc(alias = "SSL_CTX_get_cert_store")]
        pub fn root_certificates_pem(&mut self, pem: &[u8]) -> &mut Self {
            self.roots.push($crate::context::certificate::Source::Pem($crate::context::psk::Secret(pem.to_vec())));
            self
        }

        #[doc = concat!("Trusts one DER certificate as a root for ", $whose, " certificate (`X509_STORE_add_cert`).")]
        #[doc(alias = "X509_STORE_add_cert")]
        pub fn root_certificate_der(&mut self, der: &[u8]) -> &mut Self {
            self.roots.push($crate::context::certificate::Source::Der($crate::context::psk::Secret(der.to_vec())));
            self
        }

        #[doc = concat!("Trusts the certificates in a PEM (or single DER) file as roots for ", $whose, " certificate,")]
        /// read at `build()` (`SSL_CTX_load_verify_locations` semantics).
        #[doc(alias = "SSL_CTX_load_verify_locations")]
        pub fn root_certificates_file(&mut self, path: impl AsRef<::std::path::Path>) -> &mut Self {
            self.roots.push($crate::context::certificate::Source::File(path.as_ref().to_path_buf()));
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

/// Installs `callback` (if any) with `mode` (`SSL_CTX_set_verify`), panics caught. The
/// callback always installed records the first rejected certificate (depth, subject, reason) so
/// that a failed handshake reports it as [`Error::Verification`](crate::Error::Verification).
pub(super) fn apply_verify(
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

pub(crate) use trust_builder_methods;
