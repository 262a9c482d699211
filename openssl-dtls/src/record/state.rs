//! A record layer's state in the sealed saved form of a graceful restart (see
//! [`Endpoint::save_state`](crate::endpoint::Endpoint::save_state)): the AEAD, epoch, keys and
//! IVs, the write sequence number moved ahead by a reserve, the explicit-nonce counter, the
//! replay window and whether the peer sends `tls12_cid` records. Also the bounded reader
//! ([`Cursor`]) the saved form is parsed with. Nothing here is on the per-record path.

use super::keys::Keys;
use super::replay::ReplayWindow;
use super::{Aead, RecordLayer, MAX_SEQUENCE};

/// Bytes [`RecordLayer::write_state`] writes at most.
pub(crate) const MAX_RECORD_STATE_LEN: usize = 1 + 2 + 2 * 32 + 2 * 12 + 8 + 9 + 16 + 1;

/// A bounded reader over a byte slice: every read checks the length first and fails with
/// `None` instead of panicking.
#[derive(Debug)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A reader over `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf }
    }

    /// The next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N).and_then(|b| b.try_into().ok())
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    /// Bytes left.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
}

impl Aead {
    /// The saved form's code of this AEAD.
    fn code(self) -> u8 {
        match self {
            Aead::Aes128Gcm => 1,
            Aead::Aes256Gcm => 2,
            Aead::Aes128Ccm => 3,
            Aead::Aes256Ccm => 4,
            Aead::Aes128Ccm8 => 5,
            Aead::Aes256Ccm8 => 6,
            Aead::ChaCha20Poly1305 => 7,
        }
    }

    fn from_code(code: u8) -> Option<Aead> {
        Some(match code {
            1 => Aead::Aes128Gcm,
            2 => Aead::Aes256Gcm,
            3 => Aead::Aes128Ccm,
            4 => Aead::Aes256Ccm,
            5 => Aead::Aes128Ccm8,
            6 => Aead::Aes256Ccm8,
            7 => Aead::ChaCha20Poly1305,
            _ => return None,
        })
    }
}

impl RecordLayer {
    /// Appends this layer's state to `out` (secret: the caller seals it and wipes `out`). The
    /// write sequence number saved is `reserve` past the next one this side would use (and at
    /// least `at_least`, the sequence OpenSSL reached while it lingers), and a continued
    /// explicit-nonce counter (`last_explicit`: OpenSSL's newest one while it lingers) moves on
    /// by as much: records this process seals after the save use numbers below the saved ones,
    /// so the restored layer never repeats a sequence number or a (key, nonce) pair.
    pub(crate) fn write_state(
        &self,
        at_least: u64,
        last_explicit: Option<[u8; 8]>,
        reserve: u64,
        out: &mut Vec<u8>,
    ) {
        let next = self.next_write_seq.max(at_least);
        let next = next.saturating_add(reserve).min(MAX_SEQUENCE);
        let explicit = match (last_explicit, self.explicit_next) {
            (Some(last), _) if self.aead.explicit_nonce_len() == 8 => {
                Some(u64::from_be_bytes(last).wrapping_add(1))
            }
            (_, next) => next,
        };
        out.push(self.aead.code());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.keys.write_key);
        out.extend_from_slice(&self.keys.read_key);
        out.extend_from_slice(&self.keys.write_iv);
        out.extend_from_slice(&self.keys.read_iv);
        out.extend_from_slice(&next.to_be_bytes());
        match explicit {
            Some(e) => {
                out.push(1);
                out.extend_from_slice(&e.wrapping_add(reserve).to_be_bytes());
            }
            None => {
                out.push(0);
                out.extend_from_slice(&[0; 8]);
            }
        }
        let (top, bits) = self.window.parts();
        out.extend_from_slice(&top.to_be_bytes());
        out.extend_from_slice(&bits.to_be_bytes());
        out.push(u8::from(self.read_cid));
    }

    /// A record layer from the state [`write_state`](Self::write_state) wrote, with a fresh
    /// cache identity, its write sequence number and explicit-nonce counter moved on by
    /// `advance` (see `persist`'s `RESTORE_SEQUENCES_PER_MS`); `None` if it does not parse or
    /// the sequence numbers would run out.
    pub(crate) fn read_state(r: &mut Cursor<'_>, advance: u64) -> Option<RecordLayer> {
        let aead = Aead::from_code(r.u8()?)?;
        let epoch = r.u16()?;
        let mut keys = Keys {
            write_key: [0; 32],
            read_key: [0; 32],
            write_iv: [0; 12],
            read_iv: [0; 12],
        };
        keys.write_key.copy_from_slice(r.bytes(32)?);
        keys.read_key.copy_from_slice(r.bytes(32)?);
        keys.write_iv.copy_from_slice(r.bytes(12)?);
        keys.read_iv.copy_from_slice(r.bytes(12)?);
        let next_write_seq = r.u64()?;
        let explicit_next = match (r.u8()?, r.u64()?) {
            (0, _) => None,
            (1, e) => Some(e),
            _ => return None,
        };
        let window = ReplayWindow::from_parts(r.u64()?, r.u64()?)?;
        let read_cid = match r.u8()? {
            0 => false,
            1 => true,
            _ => return None,
        };
        let next_write_seq = next_write_seq.checked_add(advance)?;
        if next_write_seq > MAX_SEQUENCE || epoch == 0 {
            return None;
        }
        let mut layer = RecordLayer::new(aead, keys, epoch, next_write_seq);
        layer.explicit_next = explicit_next.map(|e| e.wrapping_add(advance));
        layer.window = window;
        layer.read_cid = read_cid;
        Some(layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ContentType, RecordHeader};

    #[test]
    fn a_saved_layer_resumes_past_the_reserve_and_keeps_its_window() {
        let block = [7u8; 2 * 16 + 2 * 4];
        let mut a = RecordLayer::from_key_block(Aead::Aes128Gcm, &block, true, 1, 5);
        let mut b = RecordLayer::from_key_block(Aead::Aes128Gcm, &block, false, 1, 0);
        let mut out = Vec::new();
        a.seal(None, ContentType::ApplicationData, b"hello", &mut out)
            .unwrap();
        let mut plain = Vec::new();
        let rec = RecordHeader::new_checked(&out).unwrap();
        b.open(&rec, &mut plain).unwrap();
        let mut saved = Vec::new();
        b.write_state(0, None, 1000, &mut saved);
        assert!(saved.len() <= MAX_RECORD_STATE_LEN);
        let mut restored = RecordLayer::read_state(&mut Cursor::new(&saved), 0).unwrap();
        assert_eq!(restored.next_write_seq(), 1000);
        // The replay window came along: the same record is a replay.
        assert_eq!(
            restored.open(&rec, &mut plain),
            Err(super::super::OpenError::Replayed)
        );
        // Keys too: a new record from `a` opens.
        out.clear();
        a.seal(None, ContentType::ApplicationData, b"again", &mut out)
            .unwrap();
        let rec = RecordHeader::new_checked(&out).unwrap();
        assert_eq!(
            restored.open(&rec, &mut plain),
            Ok(ContentType::ApplicationData)
        );
        assert_eq!(plain, b"again");
        // Every truncation fails cleanly.
        for cut in 0..saved.len() {
            assert!(RecordLayer::read_state(&mut Cursor::new(&saved[..cut]), 0).is_none());
        }
    }
}
