//! The DTLS record header (RFC 6347 §4.1) as a checked, zero-copy view ([`RecordHeader`]), and
//! the iterator over the records packed back to back in one datagram ([`records`]).

use std::iter::FusedIterator;

use super::{ContentType, DropReason, DTLS1_0_VERSION, DTLS1_2_VERSION};

/// Length of a DTLS record header: type(1) version(2) epoch(2) sequence_number(6) length(2).
pub(crate) const RECORD_HEADER_LEN: usize = 13;

/// Largest record length accepted: RFC 6347 §4.1 (by way of RFC 5246 §6.2.3) bounds a
/// `DTLSCiphertext` fragment at 2^14 + 2048 bytes; anything longer is an error.
pub(crate) const MAX_RECORD_LEN: usize = (1 << 14) + 2048;

/// Bytes of a `tls12_cid` record header before its Connection ID: type(1) version(2) epoch(2)
/// sequence_number(6) (RFC 9146 §4); the CID and the 2-byte length follow.
const CID_HEADER_PREFIX: usize = 11;

/// A checked view of one DTLS record (RFC 6347 §4.1, or RFC 9146 §4's `tls12_cid` record,
/// content type 25, whose header carries the receiver's Connection ID between the sequence
/// number and the length) at the start of a buffer.
///
/// Built only by [`new_checked`](Self::new_checked) (or [`new_checked_cid`](Self::new_checked_cid)
/// when this side receives Connection IDs of a known length), which validates the content type,
/// the version and the length; the accessors then read the header without any further check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader<'a> {
    /// 13 bytes, or 13 + the CID's length for a `tls12_cid` record.
    header: &'a [u8],
    content_type: ContentType,
    fragment: &'a [u8],
    /// The whole record as it is on the wire: header and fragment.
    bytes: &'a [u8],
}

impl<'a> RecordHeader<'a> {
    /// Checks the record at the start of `buf` (which may hold further records after it).
    ///
    /// Errors: [`DropReason::TooShort`] if `buf` is shorter than a record header,
    /// [`DropReason::BadContentType`], [`DropReason::BadVersion`], [`DropReason::Oversized`] if the
    /// length exceeds [`MAX_RECORD_LEN`], and [`DropReason::BadLength`] if the record runs past
    /// the end of `buf`.
    pub(crate) fn new_checked(buf: &'a [u8]) -> Result<Self, DropReason> {
        RecordHeader::new_checked_cid(buf, 0)
    }

    /// [`new_checked`](Self::new_checked) for a receiver whose Connection IDs are `cid_len`
    /// bytes long: a `tls12_cid` record (type 25) is then accepted, its header `13 + cid_len`
    /// bytes. With `cid_len` 0 (this side asked for no CID, or none was negotiated) type 25 is
    /// [`DropReason::BadContentType`], as RFC 9146 §4 sends CID records only to a receiver that
    /// asked for a non-empty CID.
    pub(crate) fn new_checked_cid(buf: &'a [u8], cid_len: usize) -> Result<Self, DropReason> {
        if buf.len() < RECORD_HEADER_LEN {
            return Err(DropReason::TooShort);
        }
        let first = buf[0];
        let content_type = ContentType::from_u8(first)
            .filter(|&t| t != ContentType::Tls12Cid || cid_len > 0)
            .ok_or(DropReason::BadContentType)?;
        let header_len = header_len(content_type, cid_len);
        let header = buf.get(..header_len).ok_or(DropReason::TooShort)?;
        // RFC 6347 §4.2.1: a DTLS 1.2 client may send its ClientHello in a DTLS 1.0 record.
        match u16::from_be_bytes([header[1], header[2]]) {
            DTLS1_2_VERSION => {}
            DTLS1_0_VERSION if content_type != ContentType::Tls12Cid => {}
            _ => return Err(DropReason::BadVersion),
        }
        let length = usize::from(u16::from_be_bytes([
            header[header_len - 2],
            header[header_len - 1],
        ]));
        if length > MAX_RECORD_LEN {
            return Err(DropReason::Oversized);
        }
        let fragment = buf[header_len..]
            .get(..length)
            .ok_or(DropReason::BadLength)?;
        Ok(RecordHeader {
            header,
            content_type,
            fragment,
            bytes: &buf[..header_len + length],
        })
    }

    /// The view of one record that [`parse`](super::parse) has checked already (with the same
    /// `cid_len`): `bytes` is exactly that record (header and fragment), so only the slicing is
    /// repeated. `None` only if `bytes` is not such a record.
    pub(crate) fn from_parsed(bytes: &'a [u8], cid_len: usize) -> Option<Self> {
        let content_type = ContentType::from_u8(*bytes.first()?)?;
        let (header, fragment) = bytes.split_at_checked(header_len(content_type, cid_len))?;
        Some(RecordHeader {
            header,
            content_type,
            fragment,
            bytes,
        })
    }

    /// The header bytes as they are on the wire: 13, or 13 + the CID's length for a
    /// `tls12_cid` record (the AEAD additional data is built from them).
    pub(crate) fn header_bytes(&self) -> &'a [u8] {
        self.header
    }

    /// The Connection ID of a `tls12_cid` record; empty for every other record.
    pub(crate) fn cid(&self) -> &'a [u8] {
        &self.header[CID_HEADER_PREFIX..self.header.len() - 2]
    }

    /// Whether this is a `tls12_cid` record (RFC 9146 §4).
    pub(crate) fn is_cid(&self) -> bool {
        self.content_type == ContentType::Tls12Cid
    }

    /// The record's content type.
    pub(crate) fn content_type(&self) -> ContentType {
        self.content_type
    }

    /// The record's version: [`DTLS1_2_VERSION`] or [`DTLS1_0_VERSION`].
    pub(crate) fn version(&self) -> u16 {
        u16::from_be_bytes([self.header[1], self.header[2]])
    }

    /// The record's epoch.
    pub(crate) fn epoch(&self) -> u16 {
        u16::from_be_bytes([self.header[3], self.header[4]])
    }

    /// The record's 48-bit sequence number.
    pub(crate) fn sequence(&self) -> u64 {
        let h = self.header;
        u64::from_be_bytes([0, 0, h[5], h[6], h[7], h[8], h[9], h[10]])
    }

    /// The record's length field: the number of bytes in [`fragment`](Self::fragment).
    #[cfg_attr(not(test), allow(dead_code))] // used by tests and the fuzz targets
    pub(crate) fn length(&self) -> usize {
        self.fragment.len()
    }

    /// The record's payload, exactly [`length`](Self::length) bytes (ciphertext after epoch 0).
    pub(crate) fn fragment(&self) -> &'a [u8] {
        self.fragment
    }

    /// The whole record as it is on the wire: header plus fragment.
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Bytes the record occupies in the datagram: header plus fragment.
    pub(crate) fn total_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The header length of a record of `content_type` for a receiver of `cid_len`-byte CIDs.
fn header_len(content_type: ContentType, cid_len: usize) -> usize {
    if content_type == ContentType::Tls12Cid {
        CID_HEADER_PREFIX + cid_len + 2
    } else {
        RECORD_HEADER_LEN
    }
}

/// A plaintext (epoch-0) alert record: `version` on the wire, the 48-bit sequence number `seq`,
/// and the alert's level and description. For the alerts this library sends outside OpenSSL
/// (a refusal at a limit, a wrong key's `decrypt_error`).
pub(crate) fn plaintext_alert(version: u16, seq: u64, level: u8, description: u8) -> [u8; 15] {
    let mut record = [0u8; 15];
    record[0] = ContentType::Alert as u8;
    record[1..3].copy_from_slice(&version.to_be_bytes());
    // epoch 0 (bytes 3..5), then the sequence number's low 48 bits
    record[5..11].copy_from_slice(&seq.to_be_bytes()[2..8]);
    record[11..13].copy_from_slice(&2u16.to_be_bytes());
    record[13] = level;
    record[14] = description;
    record
}

/// Iterator over the records of a datagram; see [`records`].
#[derive(Debug, Clone)]
pub(crate) struct Records<'a> {
    rest: &'a [u8],
    cid_len: usize,
    failed: bool,
}

/// Iterates over the checked records of `datagram`, back to back.
///
/// Yields `Ok` for each well-formed record; on the first malformed one (including a trailing
/// partial record) it yields that `Err` once and then ends. An empty datagram yields nothing.
pub(crate) fn records(datagram: &[u8]) -> Records<'_> {
    records_cid(datagram, 0)
}

/// [`records`] for a receiver of `cid_len`-byte Connection IDs (see
/// [`RecordHeader::new_checked_cid`]).
pub(crate) fn records_cid(datagram: &[u8], cid_len: usize) -> Records<'_> {
    Records {
        rest: datagram,
        cid_len,
        failed: false,
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RecordHeader<'a>, DropReason>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        match RecordHeader::new_checked_cid(self.rest, self.cid_len) {
            Ok(record) => {
                self.rest = self.rest.get(record.total_len()..).unwrap_or_default();
                Some(Ok(record))
            }
            Err(reason) => {
                self.failed = true;
                Some(Err(reason))
            }
        }
    }
}

impl FusedIterator for Records<'_> {}
