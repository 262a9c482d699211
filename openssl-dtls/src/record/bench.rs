//! A minimal surface of the compact record layer for the benchmarks (`benches/dtls_bench/record.rs`),
//! re-exported as `openssl_dtls::__bench`: hidden from the documentation and outside semver.
//!
//! A [`RecordPair`] is the two directions of one association built from a fixed key block, so
//! that a benchmark can seal records on one side and open them on the other with nothing else
//! in between (no session, no queues, no sockets).

use super::{Aead, RecordLayer};
use crate::wire::{ContentType, RecordHeader};

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
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> bool {
        let cid = (!self.cid.is_empty()).then_some(&self.cid[..]);
        self.tx
            .seal(cid, ContentType::ApplicationData, plaintext, out)
            .is_ok()
    }

    /// Opens the record at the start of `record` into `out`, its plaintext at
    /// `out[PLAINTEXT_AT..]` as a session queues it; `false` if it is refused.
    pub fn open(&mut self, record: &[u8], out: &mut Vec<u8>) -> bool {
        let Ok(header) = RecordHeader::new_checked_cid(record, self.cid.len()) else {
            return false;
        };
        self.rx.open_at(&header, out).is_ok()
    }
}
