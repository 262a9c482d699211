//! Keying-material exporters (RFC 5705) and DTLS-SRTP (RFC 5764) on a session, before and after
//! the compact hand-off.
//!
//! While the `SSL` exists (OpenSSL's record layer, or a lingering compact session), an export is
//! `SSL_export_keying_material`. After the compact hand-off the `SSL` is freed; the session can
//! still export if it kept an [`ExporterSecret`]: the master secret and the two randoms (112
//! bytes, in their own allocation, wiped on drop), taken at the hand-off when
//! [`SessionConfig::keep_exporter_secret`] is on or the handshake negotiated an SRTP profile.
//! The export is then RFC 5705 §4 computed as OpenSSL computes it for DTLS 1.2:
//! `PRF(master_secret, label ‖ client_random ‖ server_random [‖ uint16 context length ‖
//! context], length)` with the suite's PRF digest, the same PRF the compact layer's keys come
//! from (`evp::tls12_prf`). The values are equal to OpenSSL's (`tests/exporter.rs` checks both
//! against `openssl s_client -keymatexport` / `s_server -keymatexport`).
//!
//! The secret lives in the `Engine::Compact` variant beside the compact layer's box: that
//! variant is smaller than `Engine::Lingering`, so the option costs an idle compact connection
//! nothing when off, and 112 bytes plus one allocation when on.

use std::os::raw::c_int;

use openssl::nid::Nid;
use openssl::ssl::SslRef;

use super::Session;
use crate::error::{ConfigError, Error, Result};
use crate::ffi::evp;
use crate::session::engine::Engine;

/// The label RFC 5764 §4.2 exports SRTP keying material with.
pub const SRTP_EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// The labels OpenSSL refuses to export with (`SSL_R_TLS_ILLEGAL_EXPORTER_LABEL`): the PRF
/// labels of the handshake itself. Checked against the start of `label ‖ randoms ‖ …`, as
/// OpenSSL does.
const RESERVED_LABELS: [&[u8]; 5] = [
    b"client finished",
    b"server finished",
    b"master secret",
    b"extended master secret",
    b"key expansion",
];

/// The longest export: far beyond any use (SRTP takes at most 88 bytes), and a bound on the work
/// one call can ask of the PRF.
pub const MAX_EXPORT_LEN: usize = 16_384;

/// An SRTP protection profile (RFC 5764 §4.1.2, RFC 7714 §14.2) that OpenSSL negotiates in the
/// `use_srtp` extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SrtpProfile {
    /// `SRTP_AES128_CM_SHA1_80` (0x0001): AES-128 counter mode, 80-bit HMAC-SHA1 tag.
    Aes128CmSha1_80,
    /// `SRTP_AES128_CM_SHA1_32` (0x0002): AES-128 counter mode, 32-bit HMAC-SHA1 tag.
    Aes128CmSha1_32,
    /// `SRTP_AEAD_AES_128_GCM` (0x0007): AES-128-GCM (RFC 7714).
    AeadAes128Gcm,
    /// `SRTP_AEAD_AES_256_GCM` (0x0008): AES-256-GCM (RFC 7714).
    AeadAes256Gcm,
}

impl SrtpProfile {
    /// Every profile, in the order OpenSSL lists them.
    pub const ALL: [SrtpProfile; 4] = [
        SrtpProfile::Aes128CmSha1_80,
        SrtpProfile::Aes128CmSha1_32,
        SrtpProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm,
    ];

    /// OpenSSL's name of the profile, e.g. `"SRTP_AES128_CM_SHA1_80"` (what
    /// `SSL_CTX_set_tlsext_use_srtp` takes and `SRTP_PROTECTION_PROFILE::name` holds).
    pub fn name(self) -> &'static str {
        match self {
            SrtpProfile::Aes128CmSha1_80 => "SRTP_AES128_CM_SHA1_80",
            SrtpProfile::Aes128CmSha1_32 => "SRTP_AES128_CM_SHA1_32",
            SrtpProfile::AeadAes128Gcm => "SRTP_AEAD_AES_128_GCM",
            SrtpProfile::AeadAes256Gcm => "SRTP_AEAD_AES_256_GCM",
        }
    }

    /// The profile's IANA identifier (`SRTP_PROTECTION_PROFILE::id`).
    pub fn id(self) -> u16 {
        match self {
            SrtpProfile::Aes128CmSha1_80 => 0x0001,
            SrtpProfile::Aes128CmSha1_32 => 0x0002,
            SrtpProfile::AeadAes128Gcm => 0x0007,
            SrtpProfile::AeadAes256Gcm => 0x0008,
        }
    }

    /// The profile called `name` (OpenSSL's spelling), if this library knows it.
    pub fn from_name(name: &str) -> Option<SrtpProfile> {
        SrtpProfile::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The profile with IANA identifier `id`, if this library knows it.
    pub fn from_id(id: u16) -> Option<SrtpProfile> {
        SrtpProfile::ALL.into_iter().find(|p| p.id() == id)
    }

    /// The SRTP master key length in bytes (RFC 5764 §4.1.2, RFC 7714 §12).
    pub fn key_len(self) -> usize {
        match self {
            SrtpProfile::AeadAes256Gcm => 32,
            _ => 16,
        }
    }

    /// The SRTP master salt length in bytes.
    pub fn salt_len(self) -> usize {
        match self {
            SrtpProfile::Aes128CmSha1_80 | SrtpProfile::Aes128CmSha1_32 => 14,
            SrtpProfile::AeadAes128Gcm | SrtpProfile::AeadAes256Gcm => 12,
        }
    }

    /// How many bytes RFC 5764 §4.2 exports for the profile: `2 * (key_len + salt_len)`.
    pub fn keying_material_len(self) -> usize {
        2 * (self.key_len() + self.salt_len())
    }
}

impl std::fmt::Display for SrtpProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks an OpenSSL SRTP profile list (`"SRTP_AES128_CM_SHA1_80:SRTP_AEAD_AES_128_GCM"`):
/// every name must be a [`SrtpProfile`] (which this library knows the key lengths of).
pub(crate) fn check_srtp_profiles(list: &str) -> std::result::Result<(), ConfigError> {
    let bad = |why: String| ConfigError::Invalid(format!("SRTP profiles {list:?}: {why}"));
    if list.is_empty() || list.contains('\0') {
        return Err(bad("empty, or contains a NUL byte".into()));
    }
    for name in list.split(':') {
        if SrtpProfile::from_name(name).is_none() {
            let known: Vec<&str> = SrtpProfile::ALL.iter().map(|p| p.name()).collect();
            return Err(bad(format!(
                "unknown profile {name:?} (known: {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// The SRTP keying material of a DTLS-SRTP connection (RFC 5764 §4.2):
/// `client_write_SRTP_master_key ‖ server_write_SRTP_master_key ‖ client_write_SRTP_master_salt
/// ‖ server_write_SRTP_master_salt`. Wiped on drop; `Debug` shows the profile only.
pub struct SrtpKeyingMaterial {
    profile: SrtpProfile,
    bytes: [u8; 2 * (32 + 12)],
}

impl SrtpKeyingMaterial {
    /// The negotiated profile the material is for.
    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// All of it, as exported: [`SrtpProfile::keying_material_len`] bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.profile.keying_material_len()]
    }

    /// The client's SRTP master key (what the client protects its SRTP with).
    pub fn client_write_key(&self) -> &[u8] {
        let k = self.profile.key_len();
        &self.bytes[..k]
    }

    /// The server's SRTP master key.
    pub fn server_write_key(&self) -> &[u8] {
        let k = self.profile.key_len();
        &self.bytes[k..2 * k]
    }

    /// The client's SRTP master salt.
    pub fn client_write_salt(&self) -> &[u8] {
        let (k, s) = (self.profile.key_len(), self.profile.salt_len());
        &self.bytes[2 * k..2 * k + s]
    }

    /// The server's SRTP master salt.
    pub fn server_write_salt(&self) -> &[u8] {
        let (k, s) = (self.profile.key_len(), self.profile.salt_len());
        &self.bytes[2 * k + s..2 * k + 2 * s]
    }
}

impl Drop for SrtpKeyingMaterial {
    fn drop(&mut self) {
        evp::cleanse(&mut self.bytes);
    }
}

impl std::fmt::Debug for SrtpKeyingMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpKeyingMaterial")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

/// What a compact session keeps to export after its `SSL` is freed: the master secret, the two
/// randoms and the PRF digest. Wiped on drop.
pub(super) struct ExporterSecret {
    master: [u8; 48],
    client_random: [u8; 32],
    server_random: [u8; 32],
    /// The suite's PRF digest.
    digest: c_int,
}

impl Drop for ExporterSecret {
    fn drop(&mut self) {
        evp::cleanse(&mut self.master);
        evp::cleanse(&mut self.client_random);
        evp::cleanse(&mut self.server_random);
    }
}

impl ExporterSecret {
    /// The secret of an established `ssl` (`SSL_SESSION_get_master_key`,
    /// `SSL_get_client_random`, `SSL_get_server_random`, the suite's handshake digest), or
    /// `None` if OpenSSL lacks a piece.
    #[doc(alias = "SSL_SESSION_get_master_key")]
    pub(super) fn of(ssl: &SslRef) -> Option<Box<ExporterSecret>> {
        let digest = ssl.current_cipher()?.handshake_digest()?;
        let session = ssl.session()?;
        let mut secret = Box::new(ExporterSecret {
            master: [0; 48],
            client_random: [0; 32],
            server_random: [0; 32],
            digest: digest.type_().as_raw(),
        });
        let complete = session.master_key(&mut secret.master) == 48
            && ssl.client_random(&mut secret.client_random) == 32
            && ssl.server_random(&mut secret.server_random) == 32;
        complete.then_some(secret)
    }

    /// RFC 5705's exporter, as OpenSSL's `tls1_export_keying_material` computes it.
    fn export(&self, label: &str, context: Option<&[u8]>, out: &mut [u8]) -> Result<()> {
        let md = evp::short_name(Nid::from_raw(self.digest))
            .ok_or_else(|| invalid("the suite's PRF digest has no name".into()))?;
        let context_len = context.map_or(0, |c| 2 + c.len());
        let mut seed = Vec::with_capacity(label.len() + 64 + context_len);
        seed.extend_from_slice(label.as_bytes());
        seed.extend_from_slice(&self.client_random);
        seed.extend_from_slice(&self.server_random);
        if let Some(context) = context {
            seed.extend_from_slice(&(context.len() as u16).to_be_bytes());
            seed.extend_from_slice(context);
        }
        if RESERVED_LABELS.iter().any(|r| seed.starts_with(r)) {
            evp::cleanse_vec(&mut seed);
            return Err(invalid(format!(
                "the exporter label {label:?} is reserved (OpenSSL: illegal exporter label)"
            )));
        }
        let derived = evp::tls12_prf(md, &self.master, &seed, out);
        evp::cleanse_vec(&mut seed);
        derived.map_err(Error::Ssl)
    }
}

fn invalid(why: String) -> Error {
    Error::Config(ConfigError::Invalid(why))
}

impl Session {
    /// Exports `out.len()` bytes of keying material (RFC 5705) under `label` and, if given,
    /// `context` (at most 65,535 bytes): the same bytes the peer's
    /// `SSL_export_keying_material` gives, for as long as the connection is established or
    /// closed in order.
    ///
    /// A compact session after its hand-off (its `SSL` freed) exports only if it kept the
    /// secret for it: [`SessionConfig::keep_exporter_secret`], or a negotiated SRTP profile.
    /// Otherwise, and for a label OpenSSL refuses (`"master secret"`, `"key expansion"`, …), it
    /// fails with [`Error::Config`]; before the handshake completed with
    /// [`Error::NotConnected`]; after a failure with the session's error.
    ///
    /// [`SessionConfig::keep_exporter_secret`]: crate::SessionConfig::keep_exporter_secret
    #[doc(alias = "SSL_export_keying_material")]
    pub fn export_keying_material(
        &self,
        label: &str,
        context: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<()> {
        if self.facts.is_none() {
            return Err(self.error().map_or(Error::NotConnected, Error::duplicate));
        }
        if let Some(e) = self.error() {
            return Err(e.duplicate());
        }
        if out.len() > MAX_EXPORT_LEN || context.is_some_and(|c| c.len() > usize::from(u16::MAX)) {
            return Err(invalid(format!(
                "exports are at most {MAX_EXPORT_LEN} bytes and contexts at most 65535"
            )));
        }
        if let Some(ssl) = self.engine.ssl() {
            return ssl
                .export_keying_material(out, label, context)
                .map_err(Error::Ssl);
        }
        match &self.engine {
            Engine::Compact(_, Some(secret)) => secret.export(label, context, out),
            _ => Err(invalid(
                "this compact connection freed its SSL without keeping the exporter secret \
                 (SessionConfig::keep_exporter_secret)"
                    .into(),
            )),
        }
    }

    /// The SRTP protection profile the handshake negotiated (RFC 5764 `use_srtp`), if any.
    #[doc(alias = "SSL_get_selected_srtp_profile")]
    pub fn selected_srtp_profile(&self) -> Option<SrtpProfile> {
        self.facts.as_ref().and_then(|f| f.srtp_profile)
    }

    /// The SRTP keying material of the negotiated profile (RFC 5764 §4.2: the exporter with
    /// label `"EXTRACTOR-dtls_srtp"`, no context, `2 * (key + salt)` bytes); `Ok(None)` if
    /// the handshake negotiated no SRTP profile. Errors as
    /// [`export_keying_material`](Self::export_keying_material).
    #[doc(alias = "SSL_export_keying_material")]
    #[doc(alias = "SSL_get_selected_srtp_profile")]
    pub fn srtp_keying_material(&self) -> Result<Option<SrtpKeyingMaterial>> {
        if self.facts.is_none() {
            return Err(self.error().map_or(Error::NotConnected, Error::duplicate));
        }
        let Some(profile) = self.selected_srtp_profile() else {
            return Ok(None);
        };
        let mut material = SrtpKeyingMaterial {
            profile,
            bytes: [0; 2 * (32 + 12)],
        };
        let len = profile.keying_material_len();
        self.export_keying_material(SRTP_EXPORTER_LABEL, None, &mut material.bytes[..len])?;
        Ok(Some(material))
    }

    /// Whether the hand-off keeps an [`ExporterSecret`].
    pub(super) fn keeps_exporter_secret(&self) -> bool {
        self.config.keep_exporter_secret || self.selected_srtp_profile().is_some()
    }
}

/// The SRTP profile an established `ssl` negotiated, for its [`HandshakeFacts`](super::HandshakeFacts).
#[doc(alias = "SSL_get_selected_srtp_profile")]
pub(super) fn selected_profile(ssl: &SslRef) -> Option<SrtpProfile> {
    let profile = ssl.selected_srtp_profile()?;
    u16::try_from(profile.id().as_raw())
        .ok()
        .and_then(SrtpProfile::from_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_lengths_follow_rfc_5764_and_7714() {
        assert_eq!(SrtpProfile::Aes128CmSha1_80.keying_material_len(), 60);
        assert_eq!(SrtpProfile::Aes128CmSha1_32.keying_material_len(), 60);
        assert_eq!(SrtpProfile::AeadAes128Gcm.keying_material_len(), 56);
        assert_eq!(SrtpProfile::AeadAes256Gcm.keying_material_len(), 88);
        for p in SrtpProfile::ALL {
            assert_eq!(SrtpProfile::from_name(p.name()), Some(p));
            assert_eq!(SrtpProfile::from_id(p.id()), Some(p));
        }
    }

    #[test]
    fn profile_lists_are_checked() {
        assert!(check_srtp_profiles("SRTP_AES128_CM_SHA1_80:SRTP_AEAD_AES_128_GCM").is_ok());
        assert!(check_srtp_profiles("SRTP_AES128_CM_SHA1_80:NOPE").is_err());
        assert!(check_srtp_profiles("").is_err());
        assert!(check_srtp_profiles("SRTP_AES128_CM_SHA1_80\0").is_err());
    }

    #[test]
    fn keying_material_splits_in_rfc_order() {
        let mut m = SrtpKeyingMaterial {
            profile: SrtpProfile::AeadAes128Gcm,
            bytes: [0; 88],
        };
        for (i, b) in m.bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(m.client_write_key(), &(0..16).collect::<Vec<u8>>()[..]);
        assert_eq!(m.server_write_key(), &(16..32).collect::<Vec<u8>>()[..]);
        assert_eq!(m.client_write_salt(), &(32..44).collect::<Vec<u8>>()[..]);
        assert_eq!(m.server_write_salt(), &(44..56).collect::<Vec<u8>>()[..]);
        assert_eq!(m.as_bytes().len(), 56);
        assert!(!format!("{m:?}").contains("16"));
    }
}
