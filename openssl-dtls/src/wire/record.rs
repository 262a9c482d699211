//! The DTLS record header (RFC 6347 §4.1) as a checked, zero-copy view ([`RecordHeader`]), and
//! the iterator over the records packed back to back in one datagram ([`records`]).

use std::iter::FusedIterator;

use super::{ContentType, DropReason, DTLS1_0_VERSION, DTLS1_2_VERSION};

/// Length of a DTLS record header: type(1) version(2) epoch(2) sequence_number(6) length(2).
pub(crate) const RECORD_HEADER_LEN: usize = 13;

/// Largest record length accepted: RFC 6347 §4.1 (by way of RFC 5246 §6.2.3) bounds a
/// `DTLSCiphertext` fragment at 2^14 + 2048 bytes; anything longer is an error.
pub(crate) const MAX_RECORD_LEN: usize = (1 << 14) + 2048;

/// A checked view of one DTLS record (RFC 6347 §4.1) at the start of a buffer.
///
/// Built only by [`new_checked`](Self::new_checked), which validates the content type, the
/// version and the length; the accessors then read the header without any further check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader<'a> {
    header: &'a [u8; RECORD_HEADER_LEN],
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
        let (header, rest) = buf
            .split_first_chunk::<RECORD_HEADER_LEN>()
            .ok_or(DropReason::TooShort)?;
        let content_type = ContentType::from_u8(header[0]).ok_or(DropReason::BadContentType)?;
        // RFC 6347 §4.2.1: a DTLS 1.2 client may send its ClientHello in a DTLS 1.0 record.
        match u16::from_be_bytes([header[1], header[2]]) {
            DTLS1_2_VERSION | DTLS1_0_VERSION => {}
            _ => return Err(DropReason::BadVersion),
        }
        let length = usize::from(u16::from_be_bytes([header[11], header[12]]));
        if length > MAX_RECORD_LEN {
            return Err(DropReason::Oversized);
        }
        let fragment = rest.get(..length).ok_or(DropReason::BadLength)?;
        Ok(RecordHeader {
            header,
            content_type,
            fragment,
            bytes: &buf[..RECORD_HEADER_LEN + length],
        })
    }

    /// The view of one record that [`parse`](super::parse) has checked already: `bytes` is
    /// exactly that record (header and fragment), so only the slicing is repeated. `None` only if
    /// `bytes` is not such a record.
    pub(crate) fn from_parsed(bytes: &'a [u8]) -> Option<Self> {
        let (header, fragment) = bytes.split_first_chunk::<RECORD_HEADER_LEN>()?;
        Some(RecordHeader {
            header,
            content_type: ContentType::from_u8(header[0])?,
            fragment,
            bytes,
        })
    }

    /// The 13 header bytes as they are on the wire (the AEAD additional data is built from them).
    pub(crate) fn header_bytes(&self) -> &'a [u8; RECORD_HEADER_LEN] {
        self.header
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
        RECORD_HEADER_LEN + self.fragment.len()
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
    failed: bool,
}

/// Iterates over the checked records of `datagram`, back to back.
///
/// Yields `Ok` for each well-formed record; on the first malformed one (including a trailing
/// partial record) it yields that `Err` once and then ends. An empty datagram yields nothing.
pub(crate) fn records(datagram: &[u8]) -> Records<'_> {
    Records {
        rest: datagram,
        failed: false,
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RecordHeader<'a>, DropReason>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        match RecordHeader::new_checked(self.rest) {
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
