//! Pre-shared keys: the credentials type, and the OpenSSL PSK callbacks of both sides.
//!
//! OpenSSL treats a PSK identity as a C string: it is written NUL-terminated into OpenSSL's
//! buffer and read back with `strlen`, so an identity may not contain a NUL byte. This crate
//! limits identities to [`MAX_IDENTITY_LEN`] bytes: RFC 4279 §5.3 requires support for 128, and
//! OpenSSL before 3.0 accepts no more. Keys are 1 to [`MAX_KEY_LEN`] bytes.
//!
//! Key bytes are overwritten with zeros when the Rust copy is dropped (credentials, the keys a
//! server's key store returns after they are copied to OpenSSL); OpenSSL cleanses its own copy.

use std::fmt;
use std::sync::Arc;

use openssl::ssl::SslContextBuilder;

use crate::ffi::ctx::guard;

/// Longest PSK identity accepted, in bytes (RFC 4279 §5.3's required minimum, and OpenSSL 1.1.1's
/// `PSK_MAX_IDENTITY_LEN`).
pub const MAX_IDENTITY_LEN: usize = 128;

/// Longest pre-shared key accepted, in bytes (OpenSSL 3's `PSK_MAX_PSK_LEN`).
pub const MAX_KEY_LEN: usize = 512;

/// Bytes that are overwritten with zeros on drop (keys, key files, cookie secrets), with
/// [`crate::wipe_vec`]: `OPENSSL_cleanse` over the whole allocation.
#[derive(Clone, Default)]
pub(crate) struct Secret(pub Vec<u8>);

impl Drop for Secret {
    fn drop(&mut self) {
        crate::ffi::evp::cleanse_vec(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A PSK identity and key, for a client (`SSL_CTX_set_psk_client_callback`).
///
/// The key is overwritten with zeros when the credentials are dropped, and `Debug` never shows
/// it. Identities and keys are bytes, not strings: nothing is converted, nothing is lost.
#[doc(alias = "SSL_CTX_set_psk_client_callback")]
#[derive(Clone)]
pub struct PskCredentials {
    identity: Vec<u8>,
    key: Secret,
}

impl PskCredentials {
    /// Credentials from an identity (at most [`MAX_IDENTITY_LEN`] bytes, no NUL byte: OpenSSL
    /// treats it as a C string) and a key (1 to [`MAX_KEY_LEN`] bytes). Limits are checked when a
    /// context is built or, for credentials a callback returns, during the handshake.
    pub fn new(identity: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> PskCredentials {
        PskCredentials {
            identity: identity.into(),
            key: Secret(key.into()),
        }
    }

    /// The identity the client sends in its ClientKeyExchange.
    pub fn identity(&self) -> &[u8] {
        &self.identity
    }

    /// The pre-shared key.
    pub fn key(&self) -> &[u8] {
        &self.key.0
    }

    /// Why these credentials cannot be used, if they cannot.
    pub(crate) fn problem(&self) -> Option<String> {
        if self.identity.contains(&0) {
            return Some(
                "a PSK identity must not contain a NUL byte (OpenSSL treats it as a C string)"
                    .to_owned(),
            );
        }
        if self.identity.len() > MAX_IDENTITY_LEN {
            return Some(format!(
                "a PSK identity is at most {MAX_IDENTITY_LEN} bytes, this one has {}",
                self.identity.len()
            ));
        }
        if self.key.0.is_empty() || self.key.0.len() > MAX_KEY_LEN {
            return Some(format!(
                "a pre-shared key is 1 to {MAX_KEY_LEN} bytes, this one has {}",
                self.key.0.len()
            ));
        }
        None
    }
}

impl fmt::Debug for PskCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskCredentials")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("key", &self.key)
            .finish()
    }
}

/// A client's PSK credentials callback: identity hint in, credentials out.
pub(crate) type CredentialsCallback =
    Arc<dyn Fn(Option<&[u8]>) -> Option<PskCredentials> + Send + Sync>;

/// A client's source of PSK credentials.
#[derive(Clone)]
pub(crate) enum ClientPsk {
    Fixed(Arc<PskCredentials>),
    Callback(CredentialsCallback),
}

impl fmt::Debug for ClientPsk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientPsk::Fixed(c) => f.debug_tuple("Fixed").field(c).finish(),
            ClientPsk::Callback(_) => f.write_str("Callback(..)"),
        }
    }
}

/// A server's key store: identity in, key out.
pub(crate) type KeyStore = Arc<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// Installs the client PSK callback. Returning 0 to OpenSSL fails the handshake
/// (`handshake_failure`, "psk identity not found").
pub(crate) fn install_client(b: &mut SslContextBuilder, psk: ClientPsk) {
    b.set_psk_client_callback(move |_ssl, hint, identity_out, key_out| {
        let written = guard("PSK credentials", 0, || {
            let credentials = match &psk {
                ClientPsk::Fixed(c) => Some(PskCredentials::clone(c)),
                ClientPsk::Callback(f) => f(hint),
            };
            let Some(credentials) = credentials else {
                log::debug!("the PSK credentials callback returned no credentials");
                return 0;
            };
            if let Some(problem) = credentials.problem() {
                log::error!(
                    "the PSK credentials callback returned unusable credentials: {problem}"
                );
                return 0;
            }
            let id = credentials.identity();
            let key = credentials.key();
            // The identity goes in NUL-terminated; OpenSSL reads it back with strlen.
            if id.len() >= identity_out.len() || key.len() > key_out.len() {
                log::error!("PSK identity or key does not fit OpenSSL's buffer");
                return 0;
            }
            identity_out[..id.len()].copy_from_slice(id);
            identity_out[id.len()] = 0;
            key_out[..key.len()].copy_from_slice(key);
            key.len()
        });
        Ok(written)
    });
}

/// Installs the server PSK callback. An unknown identity returns 0, after which OpenSSL sends
/// `unknown_psk_identity` (115) and fails that handshake only.
pub(crate) fn install_server(b: &mut SslContextBuilder, store: KeyStore) {
    b.set_psk_server_callback(move |_ssl, identity, key_out| {
        let written = guard("PSK key store", 0, || {
            let identity = identity.unwrap_or(&[]);
            let Some(key) = store(identity) else {
                log::debug!(
                    "unknown PSK identity {:?}",
                    String::from_utf8_lossy(identity)
                );
                return 0;
            };
            let key = Secret(key);
            if key.0.is_empty() || key.0.len() > key_out.len().min(MAX_KEY_LEN) {
                log::error!(
                    "the PSK key store returned a key of {} bytes (1 to {MAX_KEY_LEN} allowed)",
                    key.0.len()
                );
                return 0;
            }
            key_out[..key.0.len()].copy_from_slice(&key.0);
            key.0.len()
        });
        Ok(written)
    });
}
