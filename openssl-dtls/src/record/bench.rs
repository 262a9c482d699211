//! A minimal surface of the compact record layer for the benchmarks (`benches/dtls_bench/record.rs`),
//! re-exported as `openssl_dtls::__bench`: hidden from the documentation and outside semver.
//!
//! A [`RecordPair`] is the two directions of one association built from a fixed key block, so
//! that a benchmark can seal records on one side and open them on the other with nothing else
//! in between (no session, no queues, no sockets).

use super::{Aead, OpenError, RecordLayer};
use crate::wire::{ContentType, RecordHeader};

/// OpenSSL's parameter names as the record layer passes them (`"tlsaad"`, `"tlsivfixed"`,
/// each page-aligned: see `ffi::evp::ParamName`), for a raw reference that looks parameters up
/// at the same cost.
pub fn param_names() -> (&'static std::ffi::CStr, &'static std::ffi::CStr) {
    (
        crate::ffi::evp::TLS_AAD.get(),
        crate::ffi::evp::TLS_IV_FIXED.get(),
    )
}

/// Records in a run of [`RecordPair::seal_run`] and [`RecordPair::open_run`] at most (what a
/// session seals or opens in one call of the record layer's batch calls).
pub const RUN: usize = super::RUN;

/// Where [`RecordPair::open`] leaves the plaintext in its output buffer, as a session's receive
/// queue holds it.
pub const PLAINTEXT_AT: usize = super::PLAINTEXT_AT;

/// A sealing and an opening `RecordLayer` sharing one key block: what one side seals, the
/// other opens.
pub struct RecordPair {
    tx: RecordLayer,
    rx: RecordLayer,
    cid: Vec<u8>,
}

impl std::fmt::Debug for RecordPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordPair")
            .field("aead", &self.tx.aead())
            .finish_non_exhaustive()
    }
}

impl RecordPair {
    /// A pair for the AEAD of the OpenSSL suite name `suite` (e.g. `"PSK-AES128-GCM-SHA256"`),
    /// epoch 1, keys from a fixed pattern; with a non-empty `cid`, `tls12_cid` records carrying
    /// it (RFC 9146). `None` if the suite is not one the compact layer carries.
    pub fn new(suite: &str, cid: &[u8]) -> Option<RecordPair> {
        let aead = Aead::from_suite_name(suite)?;
        let len = 2 * aead.key_len() + 2 * aead.fixed_iv_len();
        let block: Vec<u8> = (0..len as u8)
            .map(|b| b.wrapping_mul(73).wrapping_add(11))
            .collect();
        let tx = RecordLayer::from_key_block(aead, &block, true, 1, 0);
        let mut rx = RecordLayer::from_key_block(aead, &block, false, 1, 0);
        rx.set_read_cid(!cid.is_empty());
        Some(RecordPair {
            tx,
            rx,
            cid: cid.to_vec(),
        })
    }

    /// Bytes a record adds to its plaintext (header, explicit nonce, tag, CID).
    pub fn overhead(&self) -> usize {
        let cid = if self.cid.is_empty() {
            0
        } else {
            self.cid.len() + 1
        };
        crate::wire::RECORD_HEADER_LEN + self.tx.aead().overhead() + cid
    }

    /// Seals `plaintext` as one application-data record appended to `out`; `false` if refused.
    #[inline]
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> bool {
        let cid = (!self.cid.is_empty()).then_some(&self.cid[..]);
        self.tx
            .seal(cid, ContentType::ApplicationData, plaintext, out)
            .is_ok()
    }

    /// Opens the record at the start of `record` into `out`, its plaintext at
    /// `out[PLAINTEXT_AT..]` as a session queues it; `false` if it is refused.
    #[inline]
    pub fn open(&mut self, record: &[u8], out: &mut Vec<u8>) -> bool {
        // The header borrowed where the parser returned it (not moved out first).
        match &RecordHeader::new_checked_cid(record, self.cid.len()) {
            Ok(header) => self.rx.open_at(header, out).is_ok(),
            Err(_) => false,
        }
    }

    /// Seals `plaintexts` as a run of application-data records in one call of the record
    /// layer (`RecordLayer::seal_run`): `plaintexts[i]` appended to `outs[i]`. Returns how many
    /// were sealed.
    pub fn seal_run(&mut self, plaintexts: &[&[u8]], outs: &mut [Vec<u8>]) -> usize {
        let cid = (!self.cid.is_empty()).then_some(&self.cid[..]);
        self.tx
            .seal_run(cid, ContentType::ApplicationData, plaintexts, outs)
            .0
    }

    /// Opens the records at the start of each of `records` (at most [`RUN`]) in one call of the
    /// record layer (`RecordLayer::open_run`, as a session opens the records of a datagram that
    /// carries several): `records[i]` into `outs[i]`, its plaintext at `PLAINTEXT_AT`.
    /// Returns how many opened.
    pub fn open_run(&mut self, records: &[&[u8]], outs: &mut [Vec<u8>]) -> usize {
        let n = records.len().min(RUN);
        let Some(Ok(first)) = records
            .first()
            .map(|r| RecordHeader::new_checked_cid(r, self.cid.len()))
        else {
            return 0;
        };
        let mut headers = [first; RUN];
        for (h, r) in headers.iter_mut().zip(records).skip(1) {
            match RecordHeader::new_checked_cid(r, self.cid.len()) {
                Ok(header) => *h = header,
                Err(_) => return 0,
            }
        }
        let mut results = [Err(OpenError::Malformed); RUN];
        self.rx.open_run(&headers[..n], outs, &mut results[..n]);
        results[..n].iter().filter(|r| r.is_ok()).count()
    }
}
