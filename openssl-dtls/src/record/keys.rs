//! The keys of one established association: derived once, at the hand-off, from public data of
//! the finished handshake, and wiped when dropped.
//!
//! The key block is RFC 5246 §6.3's `PRF(master_secret, "key expansion", server_random ‖
//! client_random)`, computed with the session's master secret (`SSL_SESSION_get_master_key`),
//! the two randoms and the TLS 1.2 PRF of the suite's digest (OpenSSL's `TLS1-PRF` KDF, in
//! [`ffi::evp`](crate::ffi::evp)). AEAD suites have no MAC keys, so the block is
//! `client_write_key ‖ server_write_key ‖ client_write_IV ‖ server_write_IV`.

use openssl::error::ErrorStack;
use openssl::ssl::SslRef;

use super::Aead;
use crate::ffi::evp;

/// The keys of one established DTLS 1.2 AEAD association, for one side. Only the first
/// [`Aead::key_len`] bytes of a key and [`Aead::fixed_iv_len`] bytes of an IV are used.
pub(super) struct Keys {
    /// The key records this side sends are sealed with.
    pub(super) write_key: [u8; 32],
    /// The key records from the peer are opened with.
    pub(super) read_key: [u8; 32],
    /// The salt (GCM, CCM) or IV (ChaCha20-Poly1305) of records this side sends.
    pub(super) write_iv: [u8; 12],
    /// The salt or IV of records from the peer.
    pub(super) read_iv: [u8; 12],
}

impl Drop for Keys {
    fn drop(&mut self) {
        crate::ffi::evp::cleanse(&mut self.write_key);
        crate::ffi::evp::cleanse(&mut self.read_key);
        crate::ffi::evp::cleanse(&mut self.write_iv);
        crate::ffi::evp::cleanse(&mut self.read_iv);
    }
}

impl Keys {
    /// This side's keys from an RFC 5246 §6.3 key block of `aead` (see the module docs);
    /// `is_client` picks which half of the block writes.
    ///
    /// # Panics
    ///
    /// If `block` is not exactly `2 * key_len + 2 * fixed_iv_len` bytes.
    pub(super) fn from_key_block(aead: Aead, block: &[u8], is_client: bool) -> Keys {
        let (k, i) = (aead.key_len(), aead.fixed_iv_len());
        assert_eq!(block.len(), 2 * k + 2 * i, "key block length");
        let mut keys = Keys {
            write_key: [0; 32],
            read_key: [0; 32],
            write_iv: [0; 12],
            read_iv: [0; 12],
        };
        let (client_key, rest) = block.split_at(k);
        let (server_key, rest) = rest.split_at(k);
        let (client_iv, server_iv) = rest.split_at(i);
        let (wk, rk, wi, ri) = if is_client {
            (client_key, server_key, client_iv, server_iv)
        } else {
            (server_key, client_key, server_iv, client_iv)
        };
        keys.write_key[..k].copy_from_slice(wk);
        keys.read_key[..k].copy_from_slice(rk);
        keys.write_iv[..i].copy_from_slice(wi);
        keys.read_iv[..i].copy_from_slice(ri);
        keys
    }

    /// The AEAD and this side's keys of an established `ssl`, or `None` if its suite is not an
    /// AEAD the compact layer carries (or OpenSSL lacks a piece of the derivation's input).
    /// Every intermediate secret (master secret, key block) is wiped before returning.
    pub(super) fn from_ssl(
        ssl: &SslRef,
        is_client: bool,
    ) -> Result<Option<(Aead, Keys)>, ErrorStack> {
        let Some(cipher) = ssl.current_cipher() else {
            return Ok(None);
        };
        let Some(aead) = Aead::from_suite_name(cipher.name()) else {
            return Ok(None);
        };
        let Some(digest) = cipher.handshake_digest() else {
            return Ok(None);
        };
        let Some(session) = ssl.session() else {
            return Ok(None);
        };
        let mut master = [0u8; 48];
        let mut client_random = [0u8; 32];
        let mut server_random = [0u8; 32];
        if session.master_key(&mut master) != 48
            || ssl.client_random(&mut client_random) != 32
            || ssl.server_random(&mut server_random) != 32
        {
            return Ok(None);
        }
        let Some(md_name) = evp::short_name(digest.type_()) else {
            return Ok(None);
        };
        let mut block = [0u8; 2 * 32 + 2 * 12];
        let len = 2 * aead.key_len() + 2 * aead.fixed_iv_len();
        let mut seed = [0u8; 13 + 64];
        seed[..13].copy_from_slice(b"key expansion");
        seed[13..45].copy_from_slice(&server_random);
        seed[45..].copy_from_slice(&client_random);
        let derived = evp::tls12_prf(md_name, &master, &seed, &mut block[..len]);
        crate::ffi::evp::cleanse(&mut master);
        derived?;
        let keys = Keys::from_key_block(aead, &block[..len], is_client);
        crate::ffi::evp::cleanse(&mut block);
        Ok(Some((aead, keys)))
    }
}
