//! The compact record layer: DTLS 1.2 AEAD record protection for an established connection whose
//! `SSL` has been freed (see [`SessionConfig::compact`](crate::SessionConfig::compact)).
//!
//! OpenSSL does the whole handshake. Afterwards an association needs only two keys, two IVs, a
//! write sequence number and a replay window: about 130 bytes, against the ≈ 36–70 KB an
//! established `SSL` holds. This module keeps exactly that and protects records with OpenSSL's
//! own AEAD ciphers (`EVP_CIPHER`), the same code OpenSSL's record layer calls.
//!
//! * Keys come from public data: the session's master secret (`SSL_SESSION_get_master_key`),
//!   the client and server randoms, and the TLS 1.2 PRF of the suite's digest (OpenSSL's
//!   `TLS1-PRF` KDF) — RFC 5246 §6.3.
//! * Records: RFC 6347 §4.1 headers; additional data `seq_num ‖ type ‖ version ‖ length`
//!   (RFC 5246 §6.2.3.3, with the DTLS epoch in `seq_num`); AES-GCM (RFC 5288) and AES-CCM /
//!   CCM-8 (RFC 6655) carry the 64-bit epoch-and-sequence as their explicit nonce, ChaCha20-Poly1305
//!   (RFC 7905) XORs it into the IV. Sequence numbers never repeat, so neither do nonces.
//! * A 64-record sliding replay window (RFC 6347 §4.1.2.6) that moves only after a record
//!   authenticates; a write sequence number at 2^48 − 1 refuses to seal.
//! * Idle connections hold raw keys only. A small per-thread cache of keyed `EVP_CIPHER_CTX`s
//!   serves active ones; a hit costs no allocation, and a miss re-keys the least recently used
//!   context of the same cipher (no allocation either once the cache is full).
//!
//! This file owns the [`RecordLayer`] API (seal, open, sequence numbers, errors); the rest is
//! by concern, and all of it is safe code: the OpenSSL calls it needs beyond rust-openssl's safe
//! API are wrapped in [`ffi::evp`](crate::ffi::evp).
//!
//! | module | owns |
//! |---|---|
//! | `aead` | the AEAD suites, their sizes and nonces, one record's cipher operations |
//! | `replay` | the 64-record replay window |
//! | `keys` | key derivation from the finished handshake, and wiping the keys |
//! | `cache` | the per-thread cache of keyed cipher contexts and the buffer pool |

mod aead;
mod cache;
mod keys;
mod replay;
#[cfg(test)]
mod tests;

use openssl::error::ErrorStack;
use openssl::ssl::SslRef;

pub(crate) use self::aead::Aead;
pub(crate) use self::cache::{give_buffer, take_buffer};
use self::keys::Keys;
use self::replay::ReplayWindow;
use crate::ffi::evp;
use crate::wire::{ContentType, RecordHeader};

/// DTLS 1.2's record version, `{254, 253}`.
const DTLS1_2: [u8; 2] = [0xfe, 0xfd];

/// The largest 48-bit sequence number. A record with it is never sealed: the connection must end
/// before sequence numbers wrap (RFC 6347 §4.1).
pub(crate) const MAX_SEQUENCE: u64 = (1 << 48) - 1;

/// Largest plaintext of one record (RFC 6347 §4.1: 2^14).
const MAX_PLAINTEXT: usize = 16_384;

/// Why a received record was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// Not an epoch-`epoch` DTLS 1.2 record, or shorter than nonce plus tag, or too long.
    Malformed,
    /// Its sequence number was already accepted.
    Replayed,
    /// Its sequence number is older than the 64-record window.
    TooOld,
    /// The tag did not verify: forged, corrupted, or under other keys.
    Unauthenticated,
}

/// Why a record could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SealError {
    /// The write sequence number reached 2^48 − 1: the connection must end.
    SequenceExhausted,
    /// More than 2^14 bytes of plaintext.
    TooLong,
    /// OpenSSL's cipher failed (should not happen).
    Cipher,
}

/// One direction's protection state of an established connection.
pub(crate) struct RecordLayer {
    /// Cache identity: `id` for writing, `id | 1` for reading (`id` is even).
    id: u64,
    aead: Aead,
    epoch: u16,
    keys: Keys,
    next_write_seq: u64,
    /// GCM/CCM: the next explicit nonce when continuing OpenSSL's counter (see
    /// [`continue_explicit_nonce_after`](Self::continue_explicit_nonce_after)); `None`: the
    /// record's epoch and sequence number.
    explicit_next: Option<u64>,
    window: ReplayWindow,
}

impl std::fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("RecordLayer")
            .field("aead", &self.aead)
            .field("epoch", &self.epoch)
            .field("next_write_seq", &self.next_write_seq)
            .finish_non_exhaustive()
    }
}

impl Drop for RecordLayer {
    fn drop(&mut self) {
        // Keyed contexts of this connection cached on this thread go too (other threads' copies
        // age out of their caches: they can never match another connection's identity).
        cache::evict(self.id);
    }
}

impl RecordLayer {
    /// The record layer of an established `ssl`, or `None` if its suite is not an AEAD this
    /// layer carries. `is_client` picks which half of the key block writes.
    pub(crate) fn from_ssl(
        ssl: &SslRef,
        is_client: bool,
        epoch: u16,
        next_write_seq: u64,
    ) -> Result<Option<RecordLayer>, ErrorStack> {
        Ok(Keys::from_ssl(ssl, is_client)?
            .map(|(aead, keys)| RecordLayer::new(aead, keys, epoch, next_write_seq)))
    }

    /// A record layer from an RFC 5246 §6.3 key block (no MAC keys: AEAD suites only):
    /// `client_write_key ‖ server_write_key ‖ client_write_IV ‖ server_write_IV`. For tests:
    /// connections get theirs from [`from_ssl`](Self::from_ssl).
    #[cfg(test)]
    pub(crate) fn from_key_block(
        aead: Aead,
        block: &[u8],
        is_client: bool,
        epoch: u16,
        next_write_seq: u64,
    ) -> RecordLayer {
        let keys = Keys::from_key_block(aead, block, is_client);
        RecordLayer::new(aead, keys, epoch, next_write_seq)
    }

    /// A record layer of `aead` under `keys`, with a fresh cache identity and replay window.
    fn new(aead: Aead, keys: Keys, epoch: u16, next_write_seq: u64) -> RecordLayer {
        RecordLayer {
            id: cache::new_identity(),
            aead,
            epoch,
            keys,
            next_write_seq,
            explicit_next: None,
            window: ReplayWindow::default(),
        }
    }

    /// The negotiated AEAD.
    pub(crate) fn aead(&self) -> Aead {
        self.aead
    }

    /// The sequence number the next sealed record gets.
    pub(crate) fn next_write_seq(&self) -> u64 {
        self.next_write_seq
    }

    /// Continues the explicit nonces (GCM and CCM) after `last`, the explicit nonce of the newest
    /// record OpenSSL sealed under the same key. OpenSSL's GCM counts its explicit nonces up from
    /// a random start (its CCM uses the sequence number); counting on from its last one keeps
    /// every (key, nonce) pair unique across the hand-off whichever it did.
    pub(crate) fn continue_explicit_nonce_after(&mut self, last: [u8; 8]) {
        if self.aead.explicit_nonce_len() == 8 {
            self.explicit_next = Some(u64::from_be_bytes(last).wrapping_add(1));
        }
    }

    /// Moves the write sequence number forward (never back) to `next`.
    pub(crate) fn set_next_write_seq(&mut self, next: u64) {
        self.next_write_seq = self.next_write_seq.max(next);
    }

    /// Appends one protected record of `content_type` carrying `plaintext` to `out` and uses up
    /// one sequence number.
    pub(crate) fn seal(
        &mut self,
        content_type: ContentType,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(SealError::TooLong);
        }
        let seq = self.next_write_seq;
        // The last usable sequence number is kept for the close_notify that ends the connection.
        let last = if content_type == ContentType::ApplicationData {
            MAX_SEQUENCE - 1
        } else {
            MAX_SEQUENCE
        };
        if seq >= last {
            return Err(SealError::SequenceExhausted);
        }
        let mut epoch_seq = seq.to_be_bytes();
        epoch_seq[..2].copy_from_slice(&self.epoch.to_be_bytes());
        let fragment_len = plaintext.len() + self.aead.overhead();
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&epoch_seq);
        aad[8] = content_type as u8;
        aad[9..11].copy_from_slice(&DTLS1_2);
        aad[11..13].copy_from_slice(&(plaintext.len() as u16).to_be_bytes());

        let start = out.len();
        out.push(content_type as u8);
        out.extend_from_slice(&DTLS1_2);
        out.extend_from_slice(&epoch_seq);
        out.extend_from_slice(&(fragment_len as u16).to_be_bytes());
        // The explicit nonce (GCM, CCM): the epoch and sequence number, unique per record, or
        // the continuation of OpenSSL's own counter after a hand-off.
        let explicit = self.explicit_next.map_or(epoch_seq, u64::to_be_bytes);
        if self.aead.explicit_nonce_len() == 8 {
            out.extend_from_slice(&explicit);
        }
        let body = out.len();
        out.resize(body + plaintext.len() + self.aead.tag_len(), 0);
        let aead = self.aead;
        let nonce = aead.nonce(&self.keys.write_iv, explicit);
        let (ct, tag) = out[body..].split_at_mut(plaintext.len());
        let sealed = cache::with_ctx(self.id, aead, &self.keys.write_key, true, |ctx| {
            aead.seal(ctx, &nonce, &aad, plaintext, ct, tag)
        });
        if sealed.is_err() {
            out.truncate(start);
            return Err(SealError::Cipher);
        }
        self.next_write_seq = seq + 1;
        if let Some(n) = self.explicit_next.as_mut() {
            *n = n.wrapping_add(1);
        }
        Ok(())
    }

    /// Authenticates and decrypts one record (`record` is its header and fragment) into `out`
    /// (cleared first), enters its sequence number in the replay window and returns its content
    /// type. Nothing changes unless the record authenticates.
    pub(crate) fn open(
        &mut self,
        record: &RecordHeader<'_>,
        out: &mut Vec<u8>,
    ) -> Result<ContentType, OpenError> {
        let header = record.header_bytes();
        if header[1..3] != DTLS1_2 || record.epoch() != self.epoch {
            return Err(OpenError::Malformed);
        }
        let fragment = record.fragment();
        let overhead = self.aead.overhead();
        if fragment.len() < overhead || fragment.len() - overhead > MAX_PLAINTEXT {
            return Err(OpenError::Malformed);
        }
        let seq = record.sequence();
        self.window.check(seq)?;
        let epoch_seq: [u8; 8] = header[3..11].try_into().expect("8 bytes");
        let explicit = self.aead.explicit_nonce_len();
        let (ct, tag) = fragment[explicit..].split_at(fragment.len() - overhead);
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&epoch_seq);
        aad[8] = header[0];
        aad[9..11].copy_from_slice(&DTLS1_2);
        aad[11..13].copy_from_slice(&(ct.len() as u16).to_be_bytes());
        let nonce = if explicit == 8 {
            // GCM and CCM take the explicit nonce from the record, whatever the sender chose.
            let mut n = [0u8; 12];
            n[..4].copy_from_slice(&self.keys.read_iv[..4]);
            n[4..].copy_from_slice(&fragment[..8]);
            n
        } else {
            self.aead.nonce(&self.keys.read_iv, epoch_seq)
        };
        out.clear();
        out.resize(ct.len(), 0);
        let aead = self.aead;
        let opened = cache::with_ctx(self.id | 1, aead, &self.keys.read_key, false, |ctx| {
            aead.open(ctx, &nonce, &aad, ct, tag, &mut out[..])
        });
        if opened.is_err() {
            out.clear();
            // A failed tag check is expected input, not an error to report.
            evp::clear_error();
            return Err(OpenError::Unauthenticated);
        }
        self.window.mark(seq);
        Ok(record.content_type())
    }
}
