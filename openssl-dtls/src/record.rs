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

use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};

use openssl::cipher::{Cipher, CipherRef};
use openssl::cipher_ctx::{CipherCtx, CipherCtxRef};
use openssl::error::ErrorStack;
use openssl::ssl::SslRef;
use openssl_dtls_sys as dffi;
use openssl_sys as ffi;

use crate::wire::{ContentType, RecordHeader};

/// DTLS 1.2's record version, `{254, 253}`.
const DTLS1_2: [u8; 2] = [0xfe, 0xfd];

/// The largest 48-bit sequence number. A record with it is never sealed: the connection must end
/// before sequence numbers wrap (RFC 6347 §4.1).
pub(crate) const MAX_SEQUENCE: u64 = (1 << 48) - 1;

/// Largest plaintext of one record (RFC 6347 §4.1: 2^14).
const MAX_PLAINTEXT: usize = 16_384;

/// The AEAD suites the compact layer can carry. Anything else (CBC suites) stays on OpenSSL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Aead {
    Aes128Gcm,
    Aes256Gcm,
    Aes128Ccm,
    Aes256Ccm,
    Aes128Ccm8,
    Aes256Ccm8,
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

    fn cipher(self) -> &'static CipherRef {
        match self {
            Aead::Aes128Gcm => Cipher::aes_128_gcm(),
            Aead::Aes256Gcm => Cipher::aes_256_gcm(),
            Aead::Aes128Ccm | Aead::Aes128Ccm8 => Cipher::aes_128_ccm(),
            Aead::Aes256Ccm | Aead::Aes256Ccm8 => Cipher::aes_256_ccm(),
            Aead::ChaCha20Poly1305 => Cipher::chacha20_poly1305(),
        }
    }

    fn is_ccm(self) -> bool {
        matches!(
            self,
            Aead::Aes128Ccm | Aead::Aes256Ccm | Aead::Aes128Ccm8 | Aead::Aes256Ccm8
        )
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
}

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

/// The 64-record anti-replay window of RFC 6347 §4.1.2.6. Bit `i` of `bits` stands for sequence
/// number `top - 1 - i`; `top` is one past the highest authenticated sequence number (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReplayWindow {
    top: u64,
    bits: u64,
}

impl ReplayWindow {
    /// Whether `seq` may still be accepted (not seen, not older than the window).
    pub(crate) fn check(&self, seq: u64) -> Result<(), OpenError> {
        if seq >= self.top {
            return Ok(());
        }
        let age = self.top - 1 - seq;
        if age >= 64 {
            Err(OpenError::TooOld)
        } else if self.bits & (1 << age) != 0 {
            Err(OpenError::Replayed)
        } else {
            Ok(())
        }
    }

    /// Records `seq` as accepted. Only called after the record authenticated.
    pub(crate) fn mark(&mut self, seq: u64) {
        if seq >= self.top {
            let shift = seq + 1 - self.top;
            self.bits = if shift >= 64 { 0 } else { self.bits << shift };
            self.bits |= 1;
            self.top = seq + 1;
        } else {
            let age = self.top - 1 - seq;
            if age < 64 {
                self.bits |= 1 << age;
            }
        }
    }
}

/// The keys of one established DTLS 1.2 AEAD association, for one side.
struct Keys {
    write_key: [u8; 32],
    read_key: [u8; 32],
    write_iv: [u8; 12],
    read_iv: [u8; 12],
}

impl Drop for Keys {
    fn drop(&mut self) {
        crate::wipe(&mut self.write_key);
        crate::wipe(&mut self.read_key);
        crate::wipe(&mut self.write_iv);
        crate::wipe(&mut self.read_iv);
    }
}

/// The next identity for the cipher-context cache (never reused, so a stale cache entry can
/// never serve another connection).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

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
        evict(self.id);
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
        // SAFETY: a static NUL-terminated name from OpenSSL's object table, or null.
        let md_name = unsafe { ffi::OBJ_nid2sn(digest.type_().as_raw()) };
        if md_name.is_null() {
            return Ok(None);
        }
        // SAFETY: non-null, NUL-terminated, static.
        let md_name = unsafe { CStr::from_ptr(md_name) };
        let mut block = [0u8; 2 * 32 + 2 * 12];
        let len = 2 * aead.key_len() + 2 * aead.fixed_iv_len();
        let mut seed = [0u8; 13 + 64];
        seed[..13].copy_from_slice(b"key expansion");
        seed[13..45].copy_from_slice(&server_random);
        seed[45..].copy_from_slice(&client_random);
        let derived = tls12_prf(md_name, &master, &seed, &mut block[..len]);
        crate::wipe(&mut master);
        derived?;
        let layer =
            RecordLayer::from_key_block(aead, &block[..len], is_client, epoch, next_write_seq);
        crate::wipe(&mut block);
        Ok(Some(layer))
    }

    /// A record layer from an RFC 5246 §6.3 key block (no MAC keys: AEAD suites only):
    /// `client_write_key ‖ server_write_key ‖ client_write_IV ‖ server_write_IV`.
    pub(crate) fn from_key_block(
        aead: Aead,
        block: &[u8],
        is_client: bool,
        epoch: u16,
        next_write_seq: u64,
    ) -> RecordLayer {
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
        RecordLayer {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed) << 1,
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

    /// The nonce of record `epoch_seq` (epoch ‖ 48-bit sequence) under `iv`.
    fn nonce(&self, iv: &[u8; 12], epoch_seq: [u8; 8]) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        if self.aead == Aead::ChaCha20Poly1305 {
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
        let nonce = self.nonce(&self.keys.write_iv, explicit);
        let aead = self.aead;
        let (ct, tag) = out[body..].split_at_mut(plaintext.len());
        let sealed = with_ctx(self.id, aead, &self.keys.write_key, true, |ctx| {
            ctx.encrypt_init(None, None, Some(&nonce))?;
            if aead.is_ccm() {
                ctx.set_data_len(plaintext.len())?;
            }
            ctx.cipher_update(&aad, None)?;
            let n = ctx.cipher_update(plaintext, Some(ct))?;
            debug_assert_eq!(n, plaintext.len());
            ctx.cipher_final(&mut [])?;
            ctx.tag(tag)
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
            self.nonce(&self.keys.read_iv, epoch_seq)
        };
        out.clear();
        out.resize(ct.len(), 0);
        let aead = self.aead;
        let opened = with_ctx(self.id | 1, aead, &self.keys.read_key, false, |ctx| {
            ctx.decrypt_init(None, None, Some(&nonce))?;
            ctx.set_tag(tag)?;
            if aead.is_ccm() {
                ctx.set_data_len(ct.len())?;
            }
            ctx.cipher_update(&aad, None)?;
            ctx.cipher_update(ct, Some(&mut out[..]))?;
            ctx.cipher_final(&mut [])
        });
        if opened.is_err() {
            out.clear();
            // SAFETY: plain error-queue reset: a failed tag check is expected input.
            unsafe { ffi::ERR_clear_error() };
            return Err(OpenError::Unauthenticated);
        }
        self.window.mark(seq);
        Ok(record.content_type())
    }
}

/// The TLS 1.2 PRF (RFC 5246 §5) over `digest`, by OpenSSL's `TLS1-PRF` KDF: fills `out` from
/// `secret` and `seed` (label ‖ seeds).
fn tls12_prf(digest: &CStr, secret: &[u8], seed: &[u8], out: &mut [u8]) -> Result<(), ErrorStack> {
    // SAFETY: every pointer passed is valid for the length given and outlives the calls; the
    // KDF and its context are freed on every path; the params array ends with the end marker.
    unsafe {
        let kdf = ffi::EVP_KDF_fetch(std::ptr::null_mut(), c"TLS1-PRF".as_ptr(), std::ptr::null());
        if kdf.is_null() {
            return Err(ErrorStack::get());
        }
        let ctx = ffi::EVP_KDF_CTX_new(kdf);
        ffi::EVP_KDF_free(kdf);
        if ctx.is_null() {
            return Err(ErrorStack::get());
        }
        let params = [
            dffi::OSSL_PARAM_construct_utf8_string(
                c"digest".as_ptr(),
                digest.as_ptr().cast_mut(),
                0,
            ),
            ffi::OSSL_PARAM_construct_octet_string(
                c"secret".as_ptr(),
                secret.as_ptr().cast_mut().cast(),
                secret.len(),
            ),
            ffi::OSSL_PARAM_construct_octet_string(
                c"seed".as_ptr(),
                seed.as_ptr().cast_mut().cast(),
                seed.len(),
            ),
            ffi::OSSL_PARAM_construct_end(),
        ];
        let r = ffi::EVP_KDF_derive(ctx, out.as_mut_ptr(), out.len(), params.as_ptr());
        ffi::EVP_KDF_CTX_free(ctx);
        if r != 1 {
            return Err(ErrorStack::get());
        }
    }
    Ok(())
}

/// Keyed cipher contexts kept per thread.
const CACHE_SLOTS: usize = 16;

struct Slot {
    owner: u64,
    aead: Aead,
    ctx: CipherCtx,
    used: u64,
}

thread_local! {
    static CACHE: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
    static TICK: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` on a context keyed with `key` for `owner` (a direction of one connection), from this
/// thread's cache.
fn with_ctx<R>(
    owner: u64,
    aead: Aead,
    key: &[u8; 32],
    encrypt: bool,
    f: impl FnOnce(&mut CipherCtxRef) -> Result<R, ErrorStack>,
) -> Result<R, ErrorStack> {
    let tick = TICK
        .try_with(|t| {
            let v = t.get() + 1;
            t.set(v);
            v
        })
        .unwrap_or(0);
    let key = &key[..aead.key_len()];
    // `try_with`: during thread-local teardown there is no cache: fail the record, never panic.
    let Ok(result) = CACHE.try_with(|cache| -> Result<R, ErrorStack> {
        let mut cache = cache.borrow_mut();
        let index = match cache.iter().position(|s| s.owner == owner) {
            Some(i) => i,
            None => {
                let i = if cache.len() < CACHE_SLOTS {
                    cache.push(Slot {
                        owner: 0,
                        aead,
                        ctx: new_ctx(aead, encrypt)?,
                        used: 0,
                    });
                    cache.len() - 1
                } else {
                    // The least recently used slot, preferring one of the same cipher (re-keying
                    // it allocates nothing).
                    let lru = |same: bool| {
                        cache
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| !same || s.aead == aead)
                            .min_by_key(|(_, s)| s.used)
                            .map(|(i, _)| i)
                    };
                    let i = lru(true).or_else(|| lru(false)).expect("cache is full");
                    if cache[i].aead != aead {
                        cache[i].ctx = new_ctx(aead, encrypt)?;
                        cache[i].aead = aead;
                    }
                    i
                };
                let slot = &mut cache[i];
                slot.owner = 0; // unusable until keyed
                init(&mut slot.ctx, encrypt, None, Some(key))?;
                slot.owner = owner;
                i
            }
        };
        let slot = &mut cache[index];
        slot.used = tick;
        let r = f(&mut slot.ctx);
        if r.is_err() {
            // A failed call may leave the context mid-operation; it is re-keyed before reuse.
            slot.owner = 0;
        }
        r
    }) else {
        return Err(ErrorStack::get());
    };
    result
}

fn new_ctx(aead: Aead, encrypt: bool) -> Result<CipherCtx, ErrorStack> {
    let mut ctx = CipherCtx::new()?;
    init(&mut ctx, encrypt, Some(aead.cipher()), None)?;
    // 12-byte nonces everywhere (CCM's default is 7); CCM's tag length is fixed per context.
    ctx.set_iv_length(12)?;
    if aead.is_ccm() {
        ctx.set_tag_length(aead.tag_len())?;
    }
    Ok(ctx)
}

fn init(
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

/// Drops this thread's cached contexts of connection `id` (both directions).
fn evict(id: u64) {
    // `try_with`: the thread may be exiting; `try_borrow_mut`: never while a cipher call runs.
    let _ = CACHE.try_with(|cache| {
        if let Ok(mut cache) = cache.try_borrow_mut() {
            for slot in cache.iter_mut().filter(|s| s.owner | 1 == id | 1) {
                slot.owner = 0;
                // Overwrite the key schedule by keying it with zeros.
                let zero = [0u8; 32];
                let _ = init(
                    &mut slot.ctx,
                    true,
                    None,
                    Some(&zero[..slot.aead.key_len()]),
                );
            }
        }
    });
}

/// Buffers kept per thread for compact connections' datagrams and plaintexts.
const POOL_BUFFERS: usize = 64;
/// A buffer that grew beyond this is freed rather than pooled.
const POOL_BUFFER_MAX: usize = 2 * MAX_PLAINTEXT;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer from this thread's pool (or a new one). Compact connections hold no buffers
/// of their own while idle: every datagram and plaintext buffer comes from here and goes back
/// with [`give_buffer`], so a steady flow allocates nothing.
pub(crate) fn take_buffer() -> Vec<u8> {
    POOL.try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop()))
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Returns a buffer to this thread's pool (freed if the pool is full or the buffer huge).
pub(crate) fn give_buffer(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > POOL_BUFFER_MAX {
        return;
    }
    buf.clear();
    let _ = POOL.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            if p.len() < POOL_BUFFERS {
                p.push(buf);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::RECORD_HEADER_LEN;

    fn pair(aead: Aead) -> (RecordLayer, RecordLayer) {
        let len = 2 * aead.key_len() + 2 * aead.fixed_iv_len();
        let block: Vec<u8> = (0..len as u8)
            .map(|b| b.wrapping_mul(31).wrapping_add(7))
            .collect();
        (
            RecordLayer::from_key_block(aead, &block, true, 1, 0),
            RecordLayer::from_key_block(aead, &block, false, 1, 0),
        )
    }

    const ALL: [Aead; 7] = [
        Aead::Aes128Gcm,
        Aead::Aes256Gcm,
        Aead::Aes128Ccm,
        Aead::Aes256Ccm,
        Aead::Aes128Ccm8,
        Aead::Aes256Ccm8,
        Aead::ChaCha20Poly1305,
    ];

    fn open_one(rx: &mut RecordLayer, wire: &[u8]) -> Result<(ContentType, Vec<u8>), OpenError> {
        let record = RecordHeader::new_checked(wire).map_err(|_| OpenError::Malformed)?;
        let mut out = Vec::new();
        rx.open(&record, &mut out).map(|t| (t, out))
    }

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

    #[test]
    fn every_aead_round_trips_and_detects_tampering() {
        for aead in ALL {
            let (mut a, mut b) = pair(aead);
            for len in [0usize, 1, 15, 16, 17, 1000] {
                let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut wire = Vec::new();
                a.seal(ContentType::ApplicationData, &data, &mut wire)
                    .unwrap();
                assert_eq!(
                    wire.len(),
                    RECORD_HEADER_LEN + len + aead.overhead(),
                    "{aead:?}"
                );
                for i in 0..wire.len() {
                    let mut bad = wire.clone();
                    bad[i] ^= 0x40;
                    if i < 3 || (11..13).contains(&i) {
                        continue; // type/version/length: caught by parsing or the AAD below
                    }
                    assert!(
                        open_one(&mut b, &bad).is_err(),
                        "{aead:?} byte {i} of {len}"
                    );
                }
                let (t, got) = open_one(&mut b, &wire).unwrap();
                assert_eq!((t, got), (ContentType::ApplicationData, data), "{aead:?}");
                // A replayed record is refused before any decryption, whatever its type.
                let mut retyped = wire.clone();
                retyped[0] = ContentType::Alert as u8;
                assert_eq!(open_one(&mut b, &retyped), Err(OpenError::Replayed));
                assert_eq!(open_one(&mut b, &wire), Err(OpenError::Replayed));
            }
            // And the other way.
            let mut wire = Vec::new();
            b.seal(ContentType::Alert, &[1, 0], &mut wire).unwrap();
            assert_eq!(
                open_one(&mut a, &wire).unwrap(),
                (ContentType::Alert, vec![1, 0])
            );
            // A record sealed for the other direction does not open on the sender.
            let mut own = Vec::new();
            a.seal(ContentType::ApplicationData, b"x", &mut own)
                .unwrap();
            assert_eq!(open_one(&mut a, &own), Err(OpenError::Unauthenticated));
        }
    }

    #[test]
    fn retyping_a_record_breaks_its_tag() {
        for aead in ALL {
            let (mut a, mut b) = pair(aead);
            let mut wire = Vec::new();
            a.seal(ContentType::ApplicationData, b"hello", &mut wire)
                .unwrap();
            wire[0] = ContentType::Alert as u8;
            assert_eq!(
                open_one(&mut b, &wire),
                Err(OpenError::Unauthenticated),
                "{aead:?}"
            );
            // The failure left the window alone: the genuine record still opens.
            wire[0] = ContentType::ApplicationData as u8;
            assert!(open_one(&mut b, &wire).is_ok());
        }
    }

    #[test]
    fn the_replay_window_slides_over_64_records() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check(0), Ok(()));
        w.mark(100);
        assert_eq!(w.check(100), Err(OpenError::Replayed));
        assert_eq!(w.check(99), Ok(()));
        assert_eq!(w.check(37), Ok(()));
        assert_eq!(w.check(36), Err(OpenError::TooOld));
        w.mark(40);
        assert_eq!(w.check(40), Err(OpenError::Replayed));
        w.mark(103);
        assert_eq!(w.check(100), Err(OpenError::Replayed));
        assert_eq!(w.check(40), Err(OpenError::Replayed));
        assert_eq!(w.check(39), Err(OpenError::TooOld));
        assert_eq!(w.check(101), Ok(()));
        w.mark(1000);
        assert_eq!(w.check(103), Err(OpenError::TooOld));
        assert_eq!(w.check(999), Ok(()));
    }

    #[test]
    fn reordered_records_open_once_each() {
        let (mut a, mut b) = pair(Aead::Aes128Ccm8);
        let mut records = Vec::new();
        for i in 0..80u8 {
            let mut wire = Vec::new();
            a.seal(ContentType::ApplicationData, &[i], &mut wire)
                .unwrap();
            records.push(wire);
        }
        // Newest first: the first 64 open, older ones fall out of the window.
        let mut opened = 0;
        for wire in records.iter().rev() {
            if open_one(&mut b, wire).is_ok() {
                opened += 1;
            }
        }
        assert_eq!(opened, 64);
        for wire in &records {
            assert!(open_one(&mut b, wire).is_err());
        }
    }

    #[test]
    fn sequence_numbers_end_with_a_reserved_one_for_close_notify() {
        let (mut a, mut b) = pair(Aead::Aes128Gcm);
        a.next_write_seq = MAX_SEQUENCE - 2;
        let mut wire = Vec::new();
        a.seal(ContentType::ApplicationData, b"last", &mut wire)
            .unwrap();
        let mut refused = Vec::new();
        assert_eq!(
            a.seal(ContentType::ApplicationData, b"one more", &mut refused),
            Err(SealError::SequenceExhausted)
        );
        assert!(refused.is_empty(), "nothing written on refusal");
        let mut alert = Vec::new();
        a.seal(ContentType::Alert, &[1, 0], &mut alert).unwrap();
        assert_eq!(a.next_write_seq(), MAX_SEQUENCE);
        assert_eq!(
            a.seal(ContentType::Alert, &[1, 0], &mut refused),
            Err(SealError::SequenceExhausted)
        );
        // Both records open: sequence numbers 2^48 − 3 and 2^48 − 2, the highest ever used.
        assert_eq!(open_one(&mut b, &wire).unwrap().1, b"last");
        assert_eq!(open_one(&mut b, &alert).unwrap().0, ContentType::Alert);
        assert_eq!(&alert[5..11], &(MAX_SEQUENCE - 1).to_be_bytes()[2..]);
    }

    #[test]
    fn more_connections_than_cache_slots_still_work() {
        let mut pairs: Vec<_> = (0..CACHE_SLOTS + 5)
            .map(|i| pair(ALL[i % ALL.len()]))
            .collect();
        for round in 0..3u8 {
            for (a, b) in pairs.iter_mut() {
                let mut wire = Vec::new();
                a.seal(ContentType::ApplicationData, &[round; 9], &mut wire)
                    .unwrap();
                assert_eq!(open_one(b, &wire).unwrap().1, vec![round; 9]);
            }
        }
        assert!(CACHE.with(|c| c.borrow().len()) <= CACHE_SLOTS);
    }

    #[test]
    fn explicit_nonces_continue_after_openssls_last_one() {
        for aead in [Aead::Aes128Gcm, Aead::Aes128Ccm8, Aead::ChaCha20Poly1305] {
            let (mut a, mut b) = pair(aead);
            a.next_write_seq = 5;
            a.continue_explicit_nonce_after(u64::MAX.to_be_bytes()); // wraps to 0
            let mut explicit = Vec::new();
            for _ in 0..3 {
                let mut wire = Vec::new();
                a.seal(ContentType::ApplicationData, b"n", &mut wire)
                    .unwrap();
                explicit.push(wire[13..21].to_vec());
                assert_eq!(open_one(&mut b, &wire).unwrap().1, b"n", "{aead:?}");
            }
            if aead.explicit_nonce_len() == 8 {
                let want: Vec<Vec<u8>> = (0u64..3).map(|n| n.to_be_bytes().to_vec()).collect();
                assert_eq!(
                    explicit, want,
                    "{aead:?}: counts on from OpenSSL's last nonce"
                );
            }
            assert_eq!(a.next_write_seq(), 8);
        }
    }

    #[test]
    fn gcm_matches_a_known_answer() {
        // RFC 5288's construction checked against OpenSSL's own AES-128-GCM one-shot.
        let (mut a, _) = pair(Aead::Aes128Gcm);
        let mut wire = Vec::new();
        a.seal(ContentType::ApplicationData, b"abc", &mut wire)
            .unwrap();
        let key = &a.keys.write_key[..16];
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&a.keys.write_iv[..4]);
        nonce[4..].copy_from_slice(&wire[3..11]);
        let mut aad = [0u8; 13];
        aad[..8].copy_from_slice(&wire[3..11]);
        aad[8] = 23;
        aad[9..11].copy_from_slice(&DTLS1_2);
        aad[11..13].copy_from_slice(&3u16.to_be_bytes());
        let mut tag = [0u8; 16];
        let ct = openssl::symm::encrypt_aead(
            openssl::symm::Cipher::aes_128_gcm(),
            key,
            Some(&nonce),
            &aad,
            b"abc",
            &mut tag,
        )
        .unwrap();
        assert_eq!(
            &wire[13..21],
            &wire[3..11],
            "explicit nonce = epoch and sequence"
        );
        assert_eq!(&wire[21..24], &ct[..]);
        assert_eq!(&wire[24..], &tag[..]);
    }
}
