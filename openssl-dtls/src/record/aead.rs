//! The AEAD suites the compact layer carries and the cipher operations of one record: which
//! OpenSSL cipher each suite uses, its key, IV, nonce and tag sizes, its per-record nonce, and
//! sealing or opening one fragment on a keyed `EVP_CIPHER_CTX`.
//!
//! AES-GCM (RFC 5288) and AES-CCM / CCM-8 (RFC 6655) carry a 64-bit explicit nonce in each
//! record after a 4-byte salt from the key block; ChaCha20-Poly1305 (RFC 7905) XORs the epoch
//! and sequence number into its 12-byte IV.

use openssl::cipher::{Cipher, CipherRef};
use openssl::cipher_ctx::{CipherCtx, CipherCtxRef};
use openssl::error::ErrorStack;

use crate::ffi::evp;

/// The AEAD suites the compact layer can carry. Anything else (CBC suites) stays on OpenSSL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Aead {
    /// AES-128-GCM (RFC 5288).
    Aes128Gcm,
    /// AES-256-GCM (RFC 5288).
    Aes256Gcm,
    /// AES-128-CCM with a 16-byte tag (RFC 6655).
    Aes128Ccm,
    /// AES-256-CCM with a 16-byte tag (RFC 6655).
    Aes256Ccm,
    /// AES-128-CCM with an 8-byte tag (RFC 6655).
    Aes128Ccm8,
    /// AES-256-CCM with an 8-byte tag (RFC 6655).
    Aes256Ccm8,
    /// ChaCha20-Poly1305 (RFC 7905).
    ChaCha20Poly1305,
}

impl Aead {
    /// The AEAD of an OpenSSL cipher-suite name, e.g. `"PSK-AES128-CCM8"`.
    pub(crate) fn from_suite_name(name: &str) -> Option<Aead> {
        // OpenSSL names end in the bulk cipher, optionally followed by the PRF digest.
        let name = name
            .strip_suffix("-SHA256")
            .or_else(|| name.strip_suffix("-SHA384"))
            .unwrap_or(name);
        let aead = if name.ends_with("CHACHA20-POLY1305") {
            Aead::ChaCha20Poly1305
        } else if name.ends_with("AES128-GCM") {
            Aead::Aes128Gcm
        } else if name.ends_with("AES256-GCM") {
            Aead::Aes256Gcm
        } else if name.ends_with("AES128-CCM8") {
            Aead::Aes128Ccm8
        } else if name.ends_with("AES256-CCM8") {
            Aead::Aes256Ccm8
        } else if name.ends_with("AES128-CCM") {
            Aead::Aes128Ccm
        } else if name.ends_with("AES256-CCM") {
            Aead::Aes256Ccm
        } else {
            return None;
        };
        // ARIA-GCM and CAMELLIA-GCM suites end in "-GCM" too but not in "AES128-GCM".
        Some(aead)
    }

    /// OpenSSL's cipher for this AEAD.
    fn cipher(self) -> &'static CipherRef {
        match self {
            Aead::Aes128Gcm => Cipher::aes_128_gcm(),
            Aead::Aes256Gcm => Cipher::aes_256_gcm(),
            Aead::Aes128Ccm | Aead::Aes128Ccm8 => Cipher::aes_128_ccm(),
            Aead::Aes256Ccm | Aead::Aes256Ccm8 => Cipher::aes_256_ccm(),
            Aead::ChaCha20Poly1305 => Cipher::chacha20_poly1305(),
        }
    }

    /// Whether this is one of the CCM modes, which need the data length before the data.
    fn is_ccm(self) -> bool {
        matches!(
            self,
            Aead::Aes128Ccm | Aead::Aes256Ccm | Aead::Aes128Ccm8 | Aead::Aes256Ccm8
        )
    }

    /// The kind of the generic EVP sequence for this AEAD.
    fn kind(self) -> evp::AeadKind {
        match self {
            Aead::Aes128Gcm | Aead::Aes256Gcm => evp::AeadKind::Gcm,
            Aead::ChaCha20Poly1305 => evp::AeadKind::ChaCha,
            _ => evp::AeadKind::Ccm,
        }
    }

    /// Bytes of key.
    pub(crate) fn key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm | Aead::Aes128Ccm | Aead::Aes128Ccm8 => 16,
            _ => 32,
        }
    }

    /// Bytes of the IV taken from the key block: the 4-byte salt of GCM and CCM, ChaCha20's
    /// whole 12-byte IV.
    pub(crate) fn fixed_iv_len(self) -> usize {
        match self {
            Aead::ChaCha20Poly1305 => 12,
            _ => 4,
        }
    }

    /// Bytes of explicit nonce at the start of each record's fragment.
    pub(crate) fn explicit_nonce_len(self) -> usize {
        match self {
            Aead::ChaCha20Poly1305 => 0,
            _ => 8,
        }
    }

    /// Bytes of authentication tag.
    pub(crate) fn tag_len(self) -> usize {
        match self {
            Aead::Aes128Ccm8 | Aead::Aes256Ccm8 => 8,
            _ => 16,
        }
    }

    /// Bytes a record's fragment adds to its plaintext.
    pub(crate) fn overhead(self) -> usize {
        self.explicit_nonce_len() + self.tag_len()
    }

    /// The nonce of record `epoch_seq` (epoch ‖ 48-bit sequence, or for GCM and CCM the 8-byte
    /// explicit nonce the record carries) under `iv`.
    pub(super) fn nonce(self, iv: &[u8; 12], epoch_seq: [u8; 8]) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        if self == Aead::ChaCha20Poly1305 {
            // RFC 7905 §2: the IV XOR the 64-bit sequence, left-padded to 96 bits.
            nonce.copy_from_slice(iv);
            for (n, s) in nonce[4..].iter_mut().zip(epoch_seq) {
                *n ^= s;
            }
        } else {
            // RFC 5288 §3, RFC 6655 §3: salt ‖ the 8-byte explicit nonce carried in the record.
            nonce[..4].copy_from_slice(&iv[..4]);
            nonce[4..].copy_from_slice(&epoch_seq);
        }
        nonce
    }

    /// A new context of this AEAD for `encrypt`ing (or decrypting), not yet keyed.
    pub(super) fn new_ctx(self, encrypt: bool) -> Result<CipherCtx, ErrorStack> {
        let mut ctx = CipherCtx::new()?;
        init(&mut ctx, encrypt, Some(self.cipher()), None)?;
        // 12-byte nonces everywhere (CCM's default is 7); CCM's tag length is fixed per context.
        ctx.set_iv_length(12)?;
        if self.is_ccm() {
            ctx.set_tag_length(self.tag_len())?;
        }
        Ok(ctx)
    }

    /// Whether a record goes through OpenSSL's TLS one-shot AEAD
    /// ([`seal_fragment`](Self::seal_fragment), [`open_fragment`](Self::open_fragment)): one
    /// parameter call and one `EVP_Cipher` per record instead of five or six EVP calls,
    /// measured 1.1–1.7× faster (BENCHMARKS.md, issue 22). Only standard records (`cid`:
    /// a `tls12_cid` record, whose additional data OpenSSL's TLS mode does not take), with data
    /// (an empty ChaCha20-Poly1305 record sealed and opened this way does not verify on OpenSSL
    /// 3.0), and for CCM, which takes the explicit nonce of a record it seals from its sequence
    /// number, only when they are the same (`explicit_is_seq`; opening: always). Other records
    /// take the generic sequence, which every AEAD supports.
    pub(super) fn takes_one_shot(self, cid: bool, explicit_is_seq: bool, data_len: usize) -> bool {
        !cid && data_len > 0 && (explicit_is_seq || !self.is_ccm())
    }

    /// Whether this is AES-GCM, whose one-shot sealing takes its explicit nonces from a
    /// counter in the context (see [`set_fixed_iv`](Self::set_fixed_iv)).
    pub(super) fn is_gcm(self) -> bool {
        matches!(self, Aead::Aes128Gcm | Aead::Aes256Gcm)
    }

    /// Sets the fixed IV of OpenSSL's TLS one-shot records on `ctx`, just keyed for
    /// `encrypt`ing or decrypting, once for all its records: CCM's 4-byte salt (OpenSSL takes
    /// each record's explicit nonce from its sequence number when sealing, from the record
    /// when opening), ChaCha20-Poly1305's 12-byte IV (into which it XORs the sequence number),
    /// AES-GCM's 4-byte salt when decrypting (the explicit nonce comes from the record). An
    /// AES-GCM context keyed for encryption gets nothing here: given a record's whole nonce,
    /// OpenSSL seals it and counts the explicit part up by one for the next record (its
    /// `getivgen`), so a sealing layer gives the nonce only when the context's count is not
    /// its next record's ([`Protect::seal_one_shot`](super::Protect)); a 4-byte salt would
    /// make OpenSSL draw a random start. Such contexts serve one-shot records only (the cache
    /// keeps them apart from generic ones): OpenSSL's CCM context never leaves TLS mode once
    /// used (its `tls_aad_len` is never reset), and a generic record's nonce would overwrite
    /// the fixed IV or the count.
    pub(super) fn set_fixed_iv(
        self,
        ctx: &mut CipherCtxRef,
        iv: &[u8; 12],
        encrypt: bool,
    ) -> Result<(), ErrorStack> {
        if self.is_gcm() && encrypt {
            return Ok(());
        }
        evp::aead_tls_set_fixed_iv(ctx, &iv[..self.fixed_iv_len()])
    }

    /// Seals `fragment` (explicit nonce ‖ plaintext ‖ room for the tag) in place through the
    /// TLS one-shot AEAD ([`evp::aead_tls_one_shot`]) on `ctx`, keyed for encryption. `aad`:
    /// RFC 5246 §6.2.3.3's 13 bytes, whose length is the fragment's less the tag. `nonce`: the
    /// record's whole nonce, for an AES-GCM context whose count is not at this record's
    /// ([`set_fixed_iv`](Self::set_fixed_iv)); `None` for the others.
    #[inline(always)]
    pub(super) fn seal_fragment(
        self,
        ctx: &mut CipherCtxRef,
        params: &mut evp::TlsAadParams,
        nonce: Option<&[u8; 12]>,
        aad: &mut [u8; 13],
        fragment: &mut [u8],
    ) -> bool {
        evp::aead_tls_one_shot(ctx, params, nonce, aad, fragment)
    }

    /// Opens `fragment` (a copy of a record's whole fragment) in place, like
    /// [`seal_fragment`](Self::seal_fragment) on `ctx` keyed for decryption with its fixed IV
    /// ([`set_fixed_iv`](Self::set_fixed_iv)); `aad`'s length is the whole fragment's. On
    /// success the plaintext follows the explicit nonce.
    #[inline(always)]
    pub(super) fn open_fragment(
        self,
        ctx: &mut CipherCtxRef,
        params: &mut evp::TlsAadParams,
        aad: &mut [u8; 13],
        fragment: &mut [u8],
    ) -> bool {
        evp::aead_tls_one_shot(ctx, params, None, aad, fragment)
    }

    /// Encrypts `data` in place and writes the tag into `tag` (`tag_len` bytes) on `ctx`, a
    /// context of this AEAD keyed for encryption: one pass of the cipher ([`evp::aead_seal`]).
    pub(super) fn seal(
        self,
        ctx: &mut CipherCtxRef,
        nonce: &[u8; 12],
        aad: &[u8],
        data: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), ErrorStack> {
        evp::aead_seal(ctx, self.kind(), nonce, aad, None, data, tag)
    }

    /// Decrypts `ct` on `ctx`, a context of this AEAD keyed for decryption, and appends the
    /// plaintext to `out` only if `tag` verifies ([`evp::aead_open_append`]); on failure `out`
    /// is unchanged.
    pub(super) fn open_append(
        self,
        ctx: &mut CipherCtxRef,
        nonce: &[u8; 12],
        aad: &[u8],
        ct: &[u8],
        tag: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ErrorStack> {
        evp::aead_open_append(ctx, self.kind(), nonce, aad, ct, tag, out)
    }
}

/// (Re-)initialises `ctx` for encryption or decryption, with a new cipher and/or key.
pub(super) fn init(
    ctx: &mut CipherCtxRef,
    encrypt: bool,
    cipher: Option<&CipherRef>,
    key: Option<&[u8]>,
) -> Result<(), ErrorStack> {
    if encrypt {
        ctx.encrypt_init(cipher, key, None)
    } else {
        ctx.decrypt_init(cipher, key, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_names_map_to_their_aead() {
        assert_eq!(
            Aead::from_suite_name("PSK-AES128-CCM8"),
            Some(Aead::Aes128Ccm8)
        );
        assert_eq!(
            Aead::from_suite_name("PSK-AES256-CCM"),
            Some(Aead::Aes256Ccm)
        );
        assert_eq!(
            Aead::from_suite_name("PSK-AES128-GCM-SHA256"),
            Some(Aead::Aes128Gcm)
        );
        assert_eq!(
            Aead::from_suite_name("ECDHE-ECDSA-AES256-GCM-SHA384"),
            Some(Aead::Aes256Gcm)
        );
        assert_eq!(
            Aead::from_suite_name("ECDHE-PSK-CHACHA20-POLY1305"),
            Some(Aead::ChaCha20Poly1305)
        );
        assert_eq!(
            Aead::from_suite_name("ECDHE-ECDSA-AES128-CCM8"),
            Some(Aead::Aes128Ccm8)
        );
        assert_eq!(Aead::from_suite_name("PSK-AES128-CBC-SHA256"), None);
        assert_eq!(
            Aead::from_suite_name("ECDHE-ECDSA-ARIA128-GCM-SHA256"),
            None
        );
        assert_eq!(
            Aead::from_suite_name("ECDHE-ECDSA-CAMELLIA128-SHA256"),
            None
        );
    }
}
