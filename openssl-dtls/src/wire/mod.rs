//! Classification of a received datagram before OpenSSL sees it.
//!
//! This module owns the zero-copy, bounds-checked views of DTLS 1.2 record headers
//! (RFC 6347 §4.1) and of the handshake header of a ClientHello (RFC 6347 §4.2.2), in the
//! `new_checked` style of smoltcp and s2n-quic: a view validates every length once when it is
//! built, and afterwards no accessor can panic or read out of bounds.
//!
//! [`classify`] walks every record of a datagram and sorts it into one of three bins:
//!
//! - a lone epoch-0 ClientHello ([`Datagram::ClientHello`]), which goes to the cookie path;
//! - one or more well-formed records ([`Datagram::Records`]), which go to a known peer's session;
//! - garbage (`Err(`[`DropReason`]`)`), which is counted and dropped here, cheaply.
//!
//! Only the plaintext framing is inspected: content type, version, epoch, sequence number and
//! length of each record, and for a ClientHello its handshake header and its body up to the cookie.
//! Nothing here allocates, and no input, however malformed, can make it panic.
//!
//! The module is split by layer: this file holds what a whole datagram is ([`classify`],
//! [`Datagram`], [`DropReason`], [`ContentType`]); `record.rs` the record header view and the
//! [`records`] iterator; `handshake.rs` the handshake header view and the ClientHello checks the
//! cookie path needs; `tests.rs` the tests of all three.

mod handshake;
pub(crate) mod parsed;
mod record;
#[cfg(test)]
mod tests;

use std::fmt;

pub(crate) use self::handshake::{
    hello_verify_request_len, is_client_hello, ClientHelloInfo, HandshakeHeader,
    HANDSHAKE_HEADER_LEN,
};
pub(crate) use self::parsed::{parse, parse_cid, Parsed};
pub(crate) use self::record::{
    plaintext_alert, records, records_cid, RecordHeader, RECORD_HEADER_LEN,
};

/// Record version of DTLS 1.2 (`{254, 253}`).
pub(crate) const DTLS1_2_VERSION: u16 = 0xFEFD;

/// Record version of DTLS 1.0 (`{254, 255}`). RFC 6347 §4.2.1 lets a DTLS 1.2 client put it in
/// the record carrying its first ClientHello, because it does not know the server's version yet.
pub(crate) const DTLS1_0_VERSION: u16 = 0xFEFF;

/// Why a received datagram was dropped before OpenSSL saw it.
///
/// Counted per reason in the statistics; see [`DropReason::ALL`] and [`DropReason::index`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The datagram carried no bytes at all.
    Empty,
    /// The datagram, or the bytes after its last complete record, were shorter than a
    /// 13-byte record header.
    TooShort,
    /// A record's content type was not ChangeCipherSpec (20), Alert (21), Handshake (22) or
    /// ApplicationData (23), nor `tls12_cid` (25) to a receiver that asked for a non-empty
    /// Connection ID. Heartbeat (24) is refused: this library never negotiates it.
    BadContentType,
    /// A record's version was neither DTLS 1.2 (`0xFEFD`) nor DTLS 1.0 (`0xFEFF`).
    BadVersion,
    /// A length did not add up: a record longer than the rest of the datagram, a handshake
    /// header inconsistent with its record, or a ClientHello body cut short.
    BadLength,
    /// The datagram came from an unknown peer and was not a lone epoch-0 ClientHello with
    /// `message_seq` 0 or 1.
    NotClientHello,
    /// A record's length exceeded 2^14 + 2048 bytes.
    Oversized,
    /// More than 32 records in one datagram: a genuine flight packs a handful up to
    /// the MTU; hundreds of empty records are only work for the receiver.
    TooManyRecords,
}

impl DropReason {
    /// Every reason, in [`index`](Self::index) order: size a counter array with `ALL.len()`.
    pub const ALL: [DropReason; 8] = [
        DropReason::Empty,
        DropReason::TooShort,
        DropReason::BadContentType,
        DropReason::BadVersion,
        DropReason::BadLength,
        DropReason::NotClientHello,
        DropReason::Oversized,
        DropReason::TooManyRecords,
    ];

    /// A short, stable, `snake_case` name for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::Empty => "empty",
            DropReason::TooShort => "too_short",
            DropReason::BadContentType => "bad_content_type",
            DropReason::BadVersion => "bad_version",
            DropReason::BadLength => "bad_length",
            DropReason::NotClientHello => "not_client_hello",
            DropReason::Oversized => "oversized",
            DropReason::TooManyRecords => "too_many_records",
        }
    }

    /// Position of this reason in [`ALL`](Self::ALL), for indexing a counter array.
    pub fn index(self) -> usize {
        match self {
            DropReason::Empty => 0,
            DropReason::TooShort => 1,
            DropReason::BadContentType => 2,
            DropReason::BadVersion => 3,
            DropReason::BadLength => 4,
            DropReason::NotClientHello => 5,
            DropReason::Oversized => 6,
            DropReason::TooManyRecords => 7,
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The record content types this library accepts (RFC 6347 §4.1, RFC 5246 §6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum ContentType {
    /// `change_cipher_spec(20)`.
    ChangeCipherSpec = 20,
    /// `alert(21)`.
    Alert = 21,
    /// `handshake(22)`.
    Handshake = 22,
    /// `application_data(23)`.
    ApplicationData = 23,
    /// `tls12_cid(25)`: a record carrying a Connection ID (RFC 9146 §4); its real content type
    /// is inside the encrypted `DTLSInnerPlaintext`.
    Tls12Cid = 25,
}

impl ContentType {
    /// The content type for a wire byte, or `None` for any type this library refuses.
    pub(crate) const fn from_u8(value: u8) -> Option<Self> {
        match value {
            20 => Some(ContentType::ChangeCipherSpec),
            21 => Some(ContentType::Alert),
            22 => Some(ContentType::Handshake),
            23 => Some(ContentType::ApplicationData),
            25 => Some(ContentType::Tls12Cid),
            _ => None,
        }
    }

    /// The wire byte of this content type.
    #[cfg_attr(not(test), allow(dead_code))] // used by tests and the fuzz targets
    pub(crate) const fn to_u8(self) -> u8 {
        self as u8
    }
}

/// What a well-formed datagram is, as far as the record layer can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Datagram {
    /// A single epoch-0 handshake record carrying a ClientHello with `message_seq` 0 or 1.
    ClientHello(ClientHelloInfo),
    /// One or more well-formed records that are not a lone ClientHello.
    Records {
        /// Epoch of the first record.
        first_epoch: u16,
        /// Number of records in the datagram (at least one).
        records: usize,
    },
}

/// Classifies a received datagram; `Err` means drop it and count the reason.
///
/// Every record must be well formed and lie entirely within the datagram. A datagram that is a
/// single epoch-0 handshake record starting a ClientHello is [`Datagram::ClientHello`], after its
/// handshake header (and, when unfragmented, its body up to the cookie) checks out; everything
/// else that is well formed is [`Datagram::Records`].
pub(crate) fn classify(datagram: &[u8]) -> Result<Datagram, DropReason> {
    parse(datagram).map(|parsed| parsed.kind())
}

/// Classifies a datagram from an unknown peer: only a lone ClientHello qualifies.
///
/// The datagram must be a single epoch-0 handshake record carrying a ClientHello with
/// `message_seq` 0 or 1; any other well-formed datagram is [`DropReason::NotClientHello`].
/// A fragmented ClientHello is returned with `fragmented` set, for the caller to drop.
#[cfg_attr(not(test), allow(dead_code))] // used by tests and the fuzz targets
pub(crate) fn classify_unknown_peer(datagram: &[u8]) -> Result<ClientHelloInfo, DropReason> {
    match classify(datagram)? {
        Datagram::ClientHello(info) => Ok(info),
        Datagram::Records { .. } => Err(DropReason::NotClientHello),
    }
}
