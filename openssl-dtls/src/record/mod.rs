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
//! * One AEAD pass per record: standard records go through OpenSSL's TLS one-shot AEAD, the path
//!   its own record layer takes (one `EVP_CIPHER_CTX_set_params` with the 13-byte additional
//!   data, one `EVP_Cipher` over explicit nonce ‖ data ‖ tag in place; the fixed IV set once per
//!   context, and AES-GCM's sealing nonces counted by OpenSSL: [`Aead::set_fixed_iv`]);
//!   `tls12_cid` records, whose additional data that mode does not take, and empty ones go
//!   through the generic EVP AEAD sequence, called directly ([`Aead::takes_one_shot`]). Both are
//!   in [`ffi::evp`](crate::ffi::evp).
//! * Idle connections hold raw keys only. A small per-thread cache of keyed `EVP_CIPHER_CTX`s
//!   serves active ones; a hit costs no allocation, and a miss re-keys the least recently used
//!   context (of the same cipher and kind if about as old: no allocation either).
//!
//! This file owns the [`RecordLayer`] API (seal, open, sequence numbers, errors); the rest is
//! by concern, and all of it is safe code: the OpenSSL calls it needs beyond rust-openssl's safe
//! API are wrapped in [`ffi::evp`](crate::ffi::evp).
//!
//! | module | owns |
//! |---|---|
//! | `aead` | the AEAD suites, their sizes and nonces, one record's cipher operations (one-shot or generic) |
//! | `replay` | the 64-record replay window |
//! | `keys` | key derivation from the finished handshake, and wiping the keys |
//! | `cache` | the per-thread cache of keyed cipher contexts and the buffer pool |
//! | `bench` | the benchmarks' view (`openssl_dtls::__bench`, hidden): a sealing and an opening layer |

mod aead;
pub mod bench;
mod cache;
mod keys;
mod replay;
mod state;
#[cfg(test)]
mod tests;

use openssl::error::ErrorStack;
use openssl::ssl::SslRef;

pub(crate) use self::aead::Aead;
use self::cache::OneShot;
pub(crate) use self::cache::{give_buffer, take_buffer, Queue};
use self::keys::Keys;
use self::replay::ReplayWindow;
pub(crate) use self::state::{Cursor, MAX_RECORD_STATE_LEN};
use crate::ffi::evp;
use crate::wire::{ContentType, RecordHeader};

/// DTLS 1.2's record version, `{254, 253}`.
const DTLS1_2: [u8; 2] = [0xfe, 0xfd];

/// The largest 48-bit sequence number. A record with it is never sealed: the connection must end
/// before sequence numbers wrap (RFC 6347 §4.1).
pub(crate) const MAX_SEQUENCE: u64 = (1 << 48) - 1;

/// Largest plaintext of one record (RFC 6347 §4.1: 2^14).
const MAX_PLAINTEXT: usize = 16_384;

/// Where [`RecordLayer::open_at`] leaves a record's plaintext in its output buffer: after 8
/// bytes, the place of the explicit nonce (AES-GCM, AES-CCM), so that the fragment is decrypted
/// in place and nothing moves after. Buffers in a session's receive queue hold their datagram
/// from here too, whichever layer opened it.
pub(crate) const PLAINTEXT_AT: usize = 8;

/// Records a session seals or opens in one call of [`RecordLayer::seal_run`] or
/// [`RecordLayer::open_run`] at most (the calls take any number; a session's stack holds this
/// many buffers at a time).
pub(crate) const RUN: usize = 8;

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
    /// The peer sends `tls12_cid` records (this side asked for a non-empty CID). The peer's
    /// CID, which the records this side seals carry, is the caller's (an argument of
    /// [`seal`](Self::seal)): an idle connection without CIDs pays nothing for it.
    read_cid: bool,
    /// Where this layer's sealing and opening contexts were last found in this thread's cache
    /// (a hint only, checked on use: see [`cache::with_ctx`]). In the struct's padding: an idle
    /// connection pays nothing for it.
    slot_hints: [u8; 2],
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
    /// `client_write_key ‖ server_write_key ‖ client_write_IV ‖ server_write_IV`. For tests and
    /// the fuzz targets and the benchmarks: connections get theirs from
    /// [`from_ssl`](Self::from_ssl).
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
            read_cid: false,
            slot_hints: [0; 2],
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
    /// one sequence number. With the peer's Connection ID `cid` (non-empty) the record is a
    /// `tls12_cid` record carrying it (RFC 9146 §4).
    #[inline]
    pub(crate) fn seal(
        &mut self,
        cid: Option<&[u8]>,
        content_type: ContentType,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let cid = cid.filter(|c| !c.is_empty());
        let record = protect(
            self.epoch,
            self.next_write_seq,
            self.explicit_next,
            cid,
            content_type,
            plaintext.len(),
        )?;
        let keys = (&self.keys.write_key, &self.keys.write_iv);
        let aead = self.aead;
        let one_shot = record.one_shot(aead, plaintext.len());
        let sealed = cache::with_ctx(
            self.id,
            &mut self.slot_hints[0],
            aead,
            keys.0,
            keys.1,
            true,
            one_shot,
            // The path decided once (`Protect::seal` would decide it again).
            |ctx, state| {
                record
                    .seal_on(aead, one_shot, ctx, keys.1, state, plaintext, out)
                    .then_some(())
            },
        );
        if sealed.is_none() {
            return Err(SealError::Cipher);
        }
        advance(&mut self.next_write_seq, &mut self.explicit_next);
        Ok(())
    }

    /// Seals a run of records for this peer in one call: `plaintexts[i]` as one record of
    /// `content_type` appended to `outs[i]`, for as many as both hold, in order, each exactly
    /// the record [`seal`](Self::seal) would give it at that point (same sequence number,
    /// nonce, bytes). What is shared is what is not per record: one look-up of the per-thread
    /// context cache (and its borrow) for every run of records taking the same cipher path
    /// (all of them, unless some are empty), the path decided once, the keys and CID found
    /// once; per record remain the checks, header, nonce, additional data and the cipher pass.
    ///
    /// Returns how many were sealed, and the error that stopped the run at the record after
    /// them (as `seal` would have returned it for that record; the ones after it untouched).
    pub(crate) fn seal_run(
        &mut self,
        cid: Option<&[u8]>,
        content_type: ContentType,
        plaintexts: &[&[u8]],
        outs: &mut [Vec<u8>],
    ) -> (usize, Result<(), SealError>) {
        let n = plaintexts.len().min(outs.len());
        let cid = cid.filter(|c| !c.is_empty());
        let (aead, epoch) = (self.aead, self.epoch);
        let keys = (&self.keys.write_key, &self.keys.write_iv);
        let (seq, explicit_next) = (&mut self.next_write_seq, &mut self.explicit_next);
        let mut done = 0;
        while done < n {
            // The first record of each stretch decides its path (and is checked before the
            // cache is looked up, as `seal` does).
            let first = protect(
                epoch,
                *seq,
                *explicit_next,
                cid,
                content_type,
                plaintexts[done].len(),
            );
            let one_shot = match &first {
                Ok(record) => record.one_shot(aead, plaintexts[done].len()),
                Err(e) => return (done, Err(*e)),
            };
            let mut stopped = Ok(());
            let sealed = cache::with_ctx(
                self.id,
                &mut self.slot_hints[0],
                aead,
                keys.0,
                keys.1,
                true,
                one_shot,
                |ctx, state| {
                    let mut record = Some(first);
                    while done < n {
                        let plaintext = plaintexts[done];
                        let r = match record.take() {
                            Some(r) => r,
                            None => protect(
                                epoch,
                                *seq,
                                *explicit_next,
                                cid,
                                content_type,
                                plaintext.len(),
                            ),
                        };
                        let r = match r {
                            Ok(r) => r,
                            Err(e) => {
                                stopped = Err(e);
                                break;
                            }
                        };
                        if r.one_shot(aead, plaintext.len()) != one_shot {
                            break; // the next stretch, on the other path
                        }
                        let sealed = r.seal_on(
                            aead,
                            one_shot,
                            ctx,
                            keys.1,
                            state,
                            plaintext,
                            &mut outs[done],
                        );
                        if !sealed {
                            return None;
                        }
                        advance(seq, explicit_next);
                        done += 1;
                    }
                    Some(())
                },
            );
            if sealed.is_none() {
                return (done, Err(SealError::Cipher));
            }
            if stopped.is_err() {
                return (done, stopped);
            }
        }
        (done, Ok(()))
    }

    /// [`open_at`](Self::open_at) with the plaintext moved to the start of `out`: for callers
    /// that keep it alone (transcoding, tests); a session queues it where it was opened.
    pub(crate) fn open(
        &mut self,
        record: &RecordHeader<'_>,
        out: &mut Vec<u8>,
    ) -> Result<ContentType, OpenError> {
        let content_type = self.open_at(record, out)?;
        out.drain(..PLAINTEXT_AT);
        Ok(content_type)
    }

    /// Authenticates and decrypts one record (`record` is its header and fragment) into `out`
    /// (cleared first), its plaintext at `out[PLAINTEXT_AT..]` ([`PLAINTEXT_AT`]: where the
    /// explicit nonce was, so that opening in place moves nothing), enters its sequence number
    /// in the replay window and returns its content type (for a `tls12_cid` record, the real one
    /// from its `DTLSInnerPlaintext`, padding stripped). Nothing changes unless the record
    /// authenticates.
    ///
    /// With Connection IDs in this direction, only `tls12_cid` records are accepted (whose CID
    /// the caller has matched); without, only standard ones.
    #[inline]
    pub(crate) fn open_at(
        &mut self,
        record: &RecordHeader<'_>,
        out: &mut Vec<u8>,
    ) -> Result<ContentType, OpenError> {
        let admitted = admit(self.aead, self.epoch, self.read_cid, &self.window, record)?;
        let aead = self.aead;
        let keys = (&self.keys.read_key, &self.keys.read_iv);
        let one_shot = admitted.one_shot(aead);
        let opened = cache::with_ctx(
            self.id | 1,
            &mut self.slot_hints[1],
            aead,
            keys.0,
            keys.1,
            false,
            one_shot,
            |ctx, state| Some(admitted.open_on(aead, one_shot, ctx, state, keys.1, record, out)),
        );
        let content_type = match opened {
            Some(Ok(t)) => t,
            Some(Err(e)) => return Err(e),
            None => {
                out.clear();
                evp::clear_error();
                return Err(OpenError::Unauthenticated);
            }
        };
        self.window.mark(admitted.seq);
        Ok(content_type)
    }

    /// Opens a run of records from this peer in one call (the records of one datagram that
    /// carries several, RFC 6347 §4.1.1): `records[i]` into `outs[i]` with its outcome in
    /// `results[i]`, for as many as all three hold, in order, each exactly as
    /// [`open_at`](Self::open_at) would at that point (a record replaying one before it in the
    /// run is refused; one that fails leaves the others alone). What is shared: one look-up of
    /// the per-thread context cache for every stretch of records taking the same cipher path.
    pub(crate) fn open_run(
        &mut self,
        records: &[RecordHeader<'_>],
        outs: &mut [Vec<u8>],
        results: &mut [Result<ContentType, OpenError>],
    ) {
        let n = records.len().min(outs.len()).min(results.len());
        let (aead, epoch, read_cid) = (self.aead, self.epoch, self.read_cid);
        let keys = (&self.keys.read_key, &self.keys.read_iv);
        let window = &mut self.window;
        let mut k = 0;
        while k < n {
            // The first record of a stretch that passes the framing and replay checks decides
            // its path.
            let first = match admit(aead, epoch, read_cid, window, &records[k]) {
                Ok(a) => a,
                Err(e) => {
                    results[k] = Err(e);
                    k += 1;
                    continue;
                }
            };
            let one_shot = first.one_shot(aead);
            let opened = cache::with_ctx(
                self.id | 1,
                &mut self.slot_hints[1],
                aead,
                keys.0,
                keys.1,
                false,
                one_shot,
                |ctx, state| {
                    let mut admitted = Some(first);
                    while k < n {
                        let record = &records[k];
                        let a = match admitted.take() {
                            Some(a) => a,
                            None => match admit(aead, epoch, read_cid, window, record) {
                                Ok(a) => a,
                                Err(e) => {
                                    results[k] = Err(e);
                                    k += 1;
                                    continue;
                                }
                            },
                        };
                        if a.one_shot(aead) != one_shot {
                            break; // the next stretch, on the other path
                        }
                        let r = a.open_on(aead, one_shot, ctx, state, keys.1, record, &mut outs[k]);
                        if r.is_ok() {
                            window.mark(a.seq);
                        }
                        results[k] = r;
                        k += 1;
                    }
                    Some(())
                },
            );
            if opened.is_none() {
                // No context (keying failed): this record is not opened, as `open_at`.
                outs[k].clear();
                evp::clear_error();
                results[k] = Err(OpenError::Unauthenticated);
                k += 1;
            }
        }
    }

    /// The framing checks every received record passes before its tag is checked; returns the
    /// length of its data (the fragment less explicit nonce and tag).
    #[inline]
    fn check(&self, record: &RecordHeader<'_>) -> Result<usize, OpenError> {
        check(self.aead, self.epoch, record)
    }

    /// Whether the peer sends `tls12_cid` records to us (this side asked for a non-empty
    /// Connection ID, RFC 9146): they are then the only ones [`open`](Self::open) accepts.
    pub(crate) fn set_read_cid(&mut self, read: bool) {
        self.read_cid = read;
    }

    /// The newest sequence number that authenticated (replay window), if any.
    pub(crate) fn newest_read(&self) -> Option<u64> {
        self.window.newest()
    }

    /// Transcoding during the handshake (RFC 9146 over OpenSSL, which writes only standard
    /// records): rewrites `record`, a standard epoch record this side's OpenSSL sealed, as the
    /// `tls12_cid` record carrying the peer's CID, appended to `out`: same epoch, sequence
    /// number, explicit nonce and key (`cid`: the peer's). The standard record never leaves the process, so each
    /// (key, nonce) pair still protects one record on the wire.
    pub(crate) fn transcode_outbound(
        &self,
        cid: &[u8],
        record: &RecordHeader<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        if cid.is_empty() {
            out.extend_from_slice(record.bytes());
            return Ok(());
        }
        if record.is_cid() {
            return Err(OpenError::Malformed);
        }
        self.check(record)?;
        let aead = self.aead;
        let (key, iv) = (&self.keys.write_key, &self.keys.write_iv);
        let mut plain = take_buffer();
        let result = fresh_ctx(aead, key, iv, false, |ctx, state| {
            Ok(unprotect(aead, ctx, state, iv, record, &mut plain))
        })
        .map_err(|_| OpenError::Unauthenticated)
        .and_then(|r| r)
        .and_then(|content_type| {
            let p = Protect {
                epoch_seq: epoch_seq_of(record),
                explicit: explicit_of(aead, record),
                content_type,
                cid: Some(cid),
                #[cfg(test)]
                padding: 0,
                #[cfg(test)]
                no_type: false,
            };
            fresh_ctx(aead, key, iv, true, |ctx, state| {
                p.seal(aead, ctx, iv, state, &plain[PLAINTEXT_AT..], out)
                    .then_some(())
                    .ok_or_else(ErrorStack::get)
            })
            .map_err(|_| OpenError::Unauthenticated)
        });
        evp::clear_error();
        give_buffer(plain);
        result
    }

    /// Transcoding during the handshake, the other way: opens `record`, a `tls12_cid` record
    /// from the peer (entering it in the replay window), and appends the standard record
    /// OpenSSL can read, sealed under the same key with the same epoch, sequence number and
    /// explicit nonce, to `out`. Returns the real content type. Only handshake records are
    /// given to OpenSSL this way; the caller acts on others itself.
    pub(crate) fn transcode_inbound(
        &mut self,
        record: &RecordHeader<'_>,
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<ContentType, OpenError> {
        let content_type = self.open(record, plain)?;
        if content_type == ContentType::Handshake {
            self.reseal_inbound(record, plain, out)?;
        }
        Ok(content_type)
    }

    /// The second half of [`transcode_inbound`](Self::transcode_inbound): `plain`, the
    /// handshake message `record` (a `tls12_cid` record from the peer, already opened) carried,
    /// sealed again as the standard record OpenSSL reads, appended to `out`.
    pub(crate) fn reseal_inbound(
        &self,
        record: &RecordHeader<'_>,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        let aead = self.aead;
        let p = Protect {
            epoch_seq: epoch_seq_of(record),
            explicit: explicit_of(aead, record),
            content_type: ContentType::Handshake,
            cid: None,
            #[cfg(test)]
            padding: 0,
            #[cfg(test)]
            no_type: false,
        };
        let (key, iv) = (&self.keys.read_key, &self.keys.read_iv);
        let sealed = fresh_ctx(aead, key, iv, true, |ctx, state| {
            p.seal(aead, ctx, iv, state, plain, out)
                .then_some(())
                .ok_or_else(ErrorStack::get)
        });
        evp::clear_error();
        sealed.map_err(|_| OpenError::Unauthenticated)
    }
}

/// The checks of a record to seal (its length; the sequence number: the last one is kept for
/// the `close_notify` that ends the connection) and what it is sealed as: sequence number `seq`
/// of `epoch`, its explicit nonce (the epoch and sequence number, unique per record, or the
/// continuation of OpenSSL's own counter after a hand-off: `explicit_next`).
#[inline(always)]
fn protect<'c>(
    epoch: u16,
    seq: u64,
    explicit_next: Option<u64>,
    cid: Option<&'c [u8]>,
    content_type: ContentType,
    len: usize,
) -> Result<Protect<'c>, SealError> {
    if len > MAX_PLAINTEXT {
        return Err(SealError::TooLong);
    }
    let last = if content_type == ContentType::ApplicationData {
        MAX_SEQUENCE - 1
    } else {
        MAX_SEQUENCE
    };
    if seq >= last {
        return Err(SealError::SequenceExhausted);
    }
    let mut epoch_seq = seq.to_be_bytes();
    epoch_seq[..2].copy_from_slice(&epoch.to_be_bytes());
    Ok(Protect {
        epoch_seq,
        explicit: explicit_next.map_or(epoch_seq, u64::to_be_bytes),
        content_type,
        cid,
        #[cfg(test)]
        padding: 0,
        #[cfg(test)]
        no_type: false,
    })
}

/// Uses up the sequence number (and explicit nonce) of a record just sealed.
#[inline(always)]
fn advance(seq: &mut u64, explicit_next: &mut Option<u64>) {
    *seq += 1;
    if let Some(n) = explicit_next.as_mut() {
        *n = n.wrapping_add(1);
    }
}

/// A received record that passed the checks before its tag ([`admit`]).
#[derive(Debug, Clone, Copy)]
struct Admitted {
    /// Its 48-bit sequence number.
    seq: u64,
    /// Its epoch and sequence number as on the wire.
    epoch_seq: [u8; 8],
    /// Its fragment less explicit nonce and tag.
    data_len: usize,
    /// A `tls12_cid` record.
    cid: bool,
}

impl Admitted {
    /// Whether it is opened through OpenSSL's TLS one-shot AEAD ([`Aead::takes_one_shot`]).
    #[inline(always)]
    fn one_shot(&self, aead: Aead) -> bool {
        aead.takes_one_shot(self.cid, true, self.data_len)
    }

    /// Authenticates and decrypts `record` (this) with `ctx` (and its `state`), keyed for decryption for the path
    /// `one_shot` ([`one_shot`](Self::one_shot)), into `out`, the plaintext at
    /// [`PLAINTEXT_AT`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn open_on(
        &self,
        aead: Aead,
        one_shot: bool,
        ctx: &mut openssl::cipher_ctx::CipherCtxRef,
        state: &mut OneShot,
        iv: &[u8; 12],
        record: &RecordHeader<'_>,
        out: &mut Vec<u8>,
    ) -> Result<ContentType, OpenError> {
        if one_shot {
            open_one_shot(aead, ctx, state, self.epoch_seq, record, self.data_len, out)
        } else {
            unprotect(aead, ctx, state, iv, record, out)
        }
    }
}

/// The checks a received record passes before its tag is checked, for a layer of `aead` at
/// `epoch` that receives `tls12_cid` records (`read_cid`) or standard ones, with replay window
/// `window`: its kind, framing ([`check`]) and sequence number.
#[inline(always)]
fn admit(
    aead: Aead,
    epoch: u16,
    read_cid: bool,
    window: &ReplayWindow,
    record: &RecordHeader<'_>,
) -> Result<Admitted, OpenError> {
    let cid = record.is_cid();
    if cid != read_cid {
        return Err(OpenError::Malformed);
    }
    // The epoch and sequence number as one 8-byte load (header bytes 3 to 10).
    let epoch_seq = epoch_seq_of(record);
    let seq = u64::from_be_bytes(epoch_seq) & MAX_SEQUENCE;
    let data_len = check(aead, epoch, record)?;
    window.check(seq)?;
    Ok(Admitted {
        seq,
        epoch_seq,
        data_len,
        cid,
    })
}

/// The framing checks every received record passes before its tag is checked (DTLS 1.2,
/// `epoch`, a fragment that holds `aead`'s explicit nonce and tag and no more than a record's
/// plaintext); returns the length of its data (the fragment less explicit nonce and tag).
#[inline(always)]
fn check(aead: Aead, epoch: u16, record: &RecordHeader<'_>) -> Result<usize, OpenError> {
    let header = record.header_bytes();
    if header[1..3] != DTLS1_2 || record.epoch() != epoch {
        return Err(OpenError::Malformed);
    }
    let fragment = record.fragment();
    let overhead = aead.overhead();
    // A CID record's plaintext also holds its content type: at least one byte more.
    let min = overhead + usize::from(record.is_cid());
    // A CID record's inner plaintext may add its type byte and padding (RFC 9146 §4).
    let max = MAX_PLAINTEXT + if record.is_cid() { 256 } else { 0 };
    if fragment.len() < min || fragment.len() - overhead > max {
        return Err(OpenError::Malformed);
    }
    Ok(fragment.len() - overhead)
}

/// Largest additional data: RFC 9146 §5's with a 255-byte CID.
const MAX_AAD: usize = 23 + 255;

/// Additional data that fits a short buffer: RFC 9146 §5's with a CID as long as the ones this
/// library issues (peers' CIDs may be longer).
const SHORT_AAD: usize = 23 + crate::cid::MAX_CID_LEN;

/// Runs `f` on the additional data of a record ([`additional_data`]), built on the stack in a
/// buffer only as large as needed: zeroing [`MAX_AAD`] bytes for every CID record cost more
/// than building it.
fn with_additional_data<R>(
    epoch_seq: [u8; 8],
    content_type: ContentType,
    cid: Option<&[u8]>,
    len: usize,
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    if cid.map_or(0, <[u8]>::len) <= SHORT_AAD - 23 {
        let mut aad = [0u8; SHORT_AAD];
        let n = additional_data(&mut aad, epoch_seq, content_type, cid, len);
        f(&aad[..n])
    } else {
        let mut aad = [0u8; MAX_AAD];
        let n = additional_data(&mut aad, epoch_seq, content_type, cid, len);
        f(&aad[..n])
    }
}

/// What a record is sealed as: its epoch and sequence number, explicit nonce, content type and
/// (for a `tls12_cid` record) the receiver's Connection ID.
struct Protect<'c> {
    epoch_seq: [u8; 8],
    explicit: [u8; 8],
    content_type: ContentType,
    cid: Option<&'c [u8]>,
    /// Zero bytes after a CID record's inner content type (tests: this side never pads).
    #[cfg(test)]
    padding: usize,
    /// Tests: a CID record whose inner plaintext is the content alone, with no type byte.
    #[cfg(test)]
    no_type: bool,
}

impl Protect<'_> {
    /// Whether this record, with `len` bytes of data, is sealed through OpenSSL's TLS one-shot
    /// AEAD ([`Aead::takes_one_shot`]).
    fn one_shot(&self, aead: Aead, len: usize) -> bool {
        aead.takes_one_shot(self.cid.is_some(), self.explicit == self.epoch_seq, len)
    }

    /// Appends the record protecting `plaintext` to `out` with `ctx` (keyed for encryption;
    /// `state`: its explicit-nonce count and parameter array, see
    /// [`seal_one_shot`](Self::seal_one_shot)); on error
    /// `out` is as it was.
    #[inline(always)]
    fn seal(
        &self,
        aead: Aead,
        ctx: &mut openssl::cipher_ctx::CipherCtxRef,
        iv: &[u8; 12],
        state: &mut OneShot,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        #[cfg(not(test))]
        let plain = true;
        // Tests seal CID records with padding or without their type byte.
        #[cfg(test)]
        let plain = self.padding == 0 && !self.no_type;
        if plain && self.one_shot(aead, plaintext.len()) {
            self.seal_one_shot(aead, ctx, iv, state, plaintext, out)
        } else {
            self.seal_generic(aead, ctx, iv, plaintext, out)
        }
    }

    /// [`seal`](Self::seal) on the path already decided: `one_shot` is
    /// [`one_shot`](Self::one_shot)'s answer for `plaintext`, and `ctx` is keyed for it.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn seal_on(
        &self,
        aead: Aead,
        one_shot: bool,
        ctx: &mut openssl::cipher_ctx::CipherCtxRef,
        iv: &[u8; 12],
        state: &mut OneShot,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        if one_shot {
            self.seal_one_shot(aead, ctx, iv, state, plaintext, out)
        } else {
            self.seal_generic(aead, ctx, iv, plaintext, out)
        }
    }

    /// [`seal`](Self::seal) through the generic EVP AEAD sequence: `tls12_cid` and empty
    /// records, CCM records continuing OpenSSL's nonces.
    #[inline(never)]
    fn seal_generic(
        &self,
        aead: Aead,
        ctx: &mut openssl::cipher_ctx::CipherCtxRef,
        iv: &[u8; 12],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        // A CID record's DTLSInnerPlaintext: the content, its real type, no padding.
        #[cfg(not(test))]
        let (type_len, padding) = (usize::from(self.cid.is_some()), 0);
        #[cfg(test)]
        let (type_len, padding) = (
            usize::from(self.cid.is_some() && !self.no_type),
            self.padding,
        );
        let inner_len = plaintext.len() + type_len + padding;
        let fragment_len = inner_len + aead.overhead();
        let start = out.len();
        // One reservation for the whole record: the pushes below never reallocate.
        out.reserve(
            crate::wire::RECORD_HEADER_LEN + self.cid.map_or(0, <[u8]>::len) + fragment_len,
        );
        match self.cid {
            None => out.push(self.content_type as u8),
            Some(_) => out.push(ContentType::Tls12Cid as u8),
        }
        out.extend_from_slice(&DTLS1_2);
        out.extend_from_slice(&self.epoch_seq);
        if let Some(cid) = self.cid {
            out.extend_from_slice(cid);
        }
        out.extend_from_slice(&(fragment_len as u16).to_be_bytes());
        if aead.explicit_nonce_len() == 8 {
            out.extend_from_slice(&self.explicit);
        }
        let body = out.len();
        let nonce = aead.nonce(iv, self.explicit);
        // The (inner) plaintext written where its ciphertext goes and sealed in place (CCM
        // takes its data in one call): a CID record's DTLSInnerPlaintext is content ‖ type ‖
        // zeros. Only the padding and the tag's room are zero-filled.
        out.extend_from_slice(plaintext);
        if type_len == 1 {
            out.push(self.content_type as u8);
        }
        out.resize(body + inner_len + aead.tag_len(), 0);
        let (inner, tag) = out[body..].split_at_mut(inner_len);
        let r = with_additional_data(
            self.epoch_seq,
            self.content_type,
            self.cid,
            inner_len,
            |aad| aead.seal(ctx, &nonce, aad, inner, tag),
        )
        .is_ok();
        if !r {
            out.truncate(start);
        }
        r
    }

    /// [`seal`](Self::seal) of a standard record with data through OpenSSL's TLS one-shot AEAD
    /// ([`one_shot`](Self::one_shot)): the header and explicit nonce written as one piece, the
    /// plaintext where its ciphertext goes, room for the tag, then sealed in place in one call.
    ///
    /// AES-GCM: `state.next_explicit` is the explicit nonce OpenSSL's count in `ctx` gives the next record
    /// ([`Aead::set_fixed_iv`]). The record's whole nonce is given only when that is not this
    /// record's (a fresh context, or a layer continuing OpenSSL's nonces), and the explicit
    /// nonce OpenSSL wrote is checked: a record sealed under any other nonce is discarded, so
    /// a count out of step can never put a repeated nonce on the wire.
    #[inline(always)]
    fn seal_one_shot(
        &self,
        aead: Aead,
        ctx: &mut openssl::cipher_ctx::CipherCtxRef,
        iv: &[u8; 12],
        state: &mut OneShot,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        const HEADER: usize = crate::wire::RECORD_HEADER_LEN;
        let explicit_len = aead.explicit_nonce_len();
        let data_len = explicit_len + plaintext.len();
        let fragment_len = data_len + aead.tag_len();
        let start = out.len();
        // One reservation for the whole record: the appends below never reallocate.
        out.reserve(HEADER + fragment_len);
        // Header ‖ explicit nonce (GCM, CCM; OpenSSL writes it again).
        let mut head = [0u8; HEADER + 8];
        head[0] = self.content_type as u8;
        head[1..3].copy_from_slice(&DTLS1_2);
        head[3..11].copy_from_slice(&self.epoch_seq);
        head[11..13].copy_from_slice(&(fragment_len as u16).to_be_bytes());
        head[13..].copy_from_slice(&self.explicit);
        // Constant-size appends (inline stores, no library call), cut to size after.
        out.extend_from_slice(&head);
        out.truncate(start + HEADER + explicit_len);
        out.extend_from_slice(plaintext);
        out.extend_from_slice(&[0; 16]);
        out.truncate(start + HEADER + fragment_len);
        let mut aad = tls_aad(self.epoch_seq, self.content_type, data_len);
        let gcm = aead.is_gcm();
        let next = &mut state.next_explicit;
        let nonce = (gcm && *next != Some(self.explicit)).then(|| aead.nonce(iv, self.explicit));
        *next = None;
        let fragment = &mut out[start + HEADER..];
        let mut r = aead.seal_fragment(ctx, &mut state.params, nonce.as_ref(), &mut aad, fragment);
        if r && gcm {
            if fragment.first_chunk::<8>() == Some(&self.explicit) {
                state.next_explicit = Some(
                    u64::from_be_bytes(self.explicit)
                        .wrapping_add(1)
                        .to_be_bytes(),
                );
            } else {
                r = false;
            }
        }
        if !r {
            out.truncate(start);
        }
        r
    }
}

/// Writes the additional data of a record into `aad` and returns its length: RFC 5246
/// §6.2.3.3's `seq_num ‖ type ‖ version ‖ length` (with the DTLS epoch in `seq_num`), or for a
/// `tls12_cid` record RFC 9146 §5's `seq_num_placeholder ‖ tls12_cid ‖ cid_length ‖ tls12_cid ‖
/// version ‖ epoch ‖ sequence_number ‖ cid ‖ length_of_DTLSInnerPlaintext`. `aad` holds at
/// least 23 bytes more than the CID ([`with_additional_data`] sizes it).
fn additional_data(
    aad: &mut [u8],
    epoch_seq: [u8; 8],
    content_type: ContentType,
    cid: Option<&[u8]>,
    len: usize,
) -> usize {
    let len = (len as u16).to_be_bytes();
    match cid {
        None => {
            aad[..8].copy_from_slice(&epoch_seq);
            aad[8] = content_type as u8;
            aad[9..11].copy_from_slice(&DTLS1_2);
            aad[11..13].copy_from_slice(&len);
            13
        }
        Some(cid) => {
            let n = cid.len();
            aad[..8].fill(0xff);
            aad[8] = ContentType::Tls12Cid as u8;
            aad[9] = n as u8;
            aad[10] = ContentType::Tls12Cid as u8;
            aad[11..13].copy_from_slice(&DTLS1_2);
            aad[13..21].copy_from_slice(&epoch_seq);
            aad[21..21 + n].copy_from_slice(cid);
            aad[21 + n..23 + n].copy_from_slice(&len);
            23 + n
        }
    }
}

/// RFC 5246 §6.2.3.3's additional data of a standard record, `seq_num ‖ type ‖ version ‖
/// length`, for OpenSSL's TLS one-shot AEAD (which takes `len` as the fragment's length less the
/// tag when sealing, the whole fragment's when opening, and corrects its own copy).
#[inline(always)]
fn tls_aad(epoch_seq: [u8; 8], content_type: ContentType, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&epoch_seq);
    aad[8] = content_type as u8;
    aad[9..11].copy_from_slice(&DTLS1_2);
    aad[11..13].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// Whether `record` (checked by [`RecordLayer::check`], `data_len` bytes of data) is opened
/// through OpenSSL's TLS one-shot AEAD ([`Aead::takes_one_shot`]).
fn opens_one_shot(aead: Aead, record: &RecordHeader<'_>, data_len: usize) -> bool {
    aead.takes_one_shot(record.is_cid(), true, data_len)
}

/// A record's epoch and sequence number as on the wire (8 bytes: header bytes 3 to 10, in
/// standard and `tls12_cid` records alike).
#[inline]
fn epoch_seq_of(record: &RecordHeader<'_>) -> [u8; 8] {
    match record
        .header_bytes()
        .get(3..11)
        .and_then(|b| b.first_chunk())
    {
        Some(epoch_seq) => *epoch_seq,
        // Unreachable: a checked header is at least 13 bytes.
        None => {
            let mut epoch_seq = record.sequence().to_be_bytes();
            epoch_seq[..2].copy_from_slice(&record.epoch().to_be_bytes());
            epoch_seq
        }
    }
}

/// The nonce input a record carries: its explicit nonce (GCM, CCM) or its epoch and sequence
/// number (ChaCha20-Poly1305). `check` has made sure the fragment holds it.
fn explicit_of(aead: Aead, record: &RecordHeader<'_>) -> [u8; 8] {
    match record.fragment().first_chunk::<8>() {
        Some(explicit) if aead.explicit_nonce_len() == 8 => *explicit,
        _ => epoch_seq_of(record),
    }
}

/// Authenticates and decrypts `record` (checked by [`RecordLayer::check`]: `data_len` bytes of
/// data; opened one-shot: [`opens_one_shot`]; `epoch_seq`: its header's epoch and sequence
/// number) through OpenSSL's TLS
/// one-shot AEAD with `ctx` (keyed for decryption) into `out` (the plaintext at
/// [`PLAINTEXT_AT`]), and returns its content type.
#[inline(always)]
fn open_one_shot(
    aead: Aead,
    ctx: &mut openssl::cipher_ctx::CipherCtxRef,
    state: &mut OneShot,
    epoch_seq: [u8; 8],
    record: &RecordHeader<'_>,
    data_len: usize,
    out: &mut Vec<u8>,
) -> Result<ContentType, OpenError> {
    let fragment = record.fragment();
    // OpenSSL's one-shot AEAD works in place: on a copy of the fragment (the received datagram
    // is not ours to change) placed so that its data lands at `PLAINTEXT_AT`: an explicit nonce
    // (8 bytes) fills the room before it, else the room is left as is.
    out.clear();
    let room = if aead.explicit_nonce_len() == 0 {
        out.extend_from_slice(&[0; PLAINTEXT_AT]);
        PLAINTEXT_AT
    } else {
        0
    };
    out.extend_from_slice(fragment);
    let mut aad = tls_aad(epoch_seq, record.content_type(), fragment.len());
    if !aead.open_fragment(ctx, &mut state.params, &mut aad, &mut out[room..]) {
        // OpenSSL wiped the unverified plaintext; a failed tag is expected input.
        out.clear();
        evp::clear_error();
        return Err(OpenError::Unauthenticated);
    }
    out.truncate(PLAINTEXT_AT + data_len);
    Ok(record.content_type())
}

/// Authenticates and decrypts `record` (checked by [`RecordLayer::check`]) with `ctx` (keyed for
/// decryption) into `out` (the plaintext at [`PLAINTEXT_AT`]); returns its content type, for a
/// `tls12_cid` record the inner one after stripping the zero padding (RFC 9146 §4: a record with
/// no non-zero byte is an error).
fn unprotect(
    aead: Aead,
    ctx: &mut openssl::cipher_ctx::CipherCtxRef,
    state: &mut OneShot,
    iv: &[u8; 12],
    record: &RecordHeader<'_>,
    out: &mut Vec<u8>,
) -> Result<ContentType, OpenError> {
    let data_len = record.fragment().len() - aead.overhead();
    if opens_one_shot(aead, record, data_len) {
        return open_one_shot(
            aead,
            ctx,
            state,
            epoch_seq_of(record),
            record,
            data_len,
            out,
        );
    }
    let fragment = record.fragment();
    let explicit_len = aead.explicit_nonce_len();
    let nonce = aead.nonce(iv, explicit_of(aead, record));
    let (ct, tag) = fragment[explicit_len..].split_at(fragment.len() - aead.overhead());
    let cid = record.is_cid().then(|| record.cid());
    out.clear();
    out.resize(PLAINTEXT_AT, 0);
    let opened = with_additional_data(
        epoch_seq_of(record),
        record.content_type(),
        cid,
        ct.len(),
        |aad| aead.open_append(ctx, &nonce, aad, ct, tag, out),
    );
    if opened.is_err() {
        // A failed tag check is expected input, not an error to report.
        evp::clear_error();
        return Err(OpenError::Unauthenticated);
    }
    if cid.is_none() {
        return Ok(record.content_type());
    }
    // DTLSInnerPlaintext: content ‖ real type ‖ zeros.
    let Some(last) = out[PLAINTEXT_AT..].iter().rposition(|&b| b != 0) else {
        out.clear();
        return Err(OpenError::Malformed);
    };
    let last = PLAINTEXT_AT + last;
    let inner = ContentType::from_u8(out[last]).filter(|&t| t != ContentType::Tls12Cid);
    out.truncate(last);
    if out.len() - PLAINTEXT_AT > MAX_PLAINTEXT {
        out.clear();
        return Err(OpenError::Malformed);
    }
    inner.ok_or(OpenError::Malformed)
}

/// Runs `f` on a fresh context of `aead` keyed with `key` and the fixed IV `iv` of the one-shot
/// path ([`Aead::set_fixed_iv`]), with its explicit-nonce count (unknown); the handshake's
/// transcoding only: rare, so it does not disturb the per-thread cache.
fn fresh_ctx<R>(
    aead: Aead,
    key: &[u8; 32],
    iv: &[u8; 12],
    encrypt: bool,
    f: impl FnOnce(&mut openssl::cipher_ctx::CipherCtxRef, &mut OneShot) -> Result<R, ErrorStack>,
) -> Result<R, ErrorStack> {
    let mut ctx = aead.new_ctx(encrypt)?;
    aead::init(&mut ctx, encrypt, None, Some(&key[..aead.key_len()]))?;
    aead.set_fixed_iv(&mut ctx, iv, encrypt)?;
    f(&mut ctx, &mut OneShot::default())
}
