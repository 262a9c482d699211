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

use std::fmt;
use std::iter::FusedIterator;

/// Length of a DTLS record header: type(1) version(2) epoch(2) sequence_number(6) length(2).
pub(crate) const RECORD_HEADER_LEN: usize = 13;

/// Length of a DTLS handshake message header: msg_type(1) length(3) message_seq(2)
/// fragment_offset(3) fragment_length(3).
pub(crate) const HANDSHAKE_HEADER_LEN: usize = 12;

/// Largest record length accepted: RFC 6347 §4.1 (by way of RFC 5246 §6.2.3) bounds a
/// `DTLSCiphertext` fragment at 2^14 + 2048 bytes; anything longer is an error.
pub(crate) const MAX_RECORD_LEN: usize = (1 << 14) + 2048;

/// Record version of DTLS 1.2 (`{254, 253}`).
pub(crate) const DTLS1_2_VERSION: u16 = 0xFEFD;

/// Record version of DTLS 1.0 (`{254, 255}`). RFC 6347 §4.2.1 lets a DTLS 1.2 client put it in
/// the record carrying its first ClientHello, because it does not know the server's version yet.
pub(crate) const DTLS1_0_VERSION: u16 = 0xFEFF;

/// Handshake message type of a ClientHello (RFC 5246 §7.4).
const HANDSHAKE_TYPE_CLIENT_HELLO: u8 = 1;

/// Largest `message_seq` of a ClientHello: 0 for the first, 1 for the one that echoes the cookie
/// (RFC 6347 §4.2.2).
const MAX_CLIENT_HELLO_MESSAGE_SEQ: u16 = 1;

/// Largest session ID a ClientHello may carry (RFC 5246 §7.4.1.2: `SessionID<0..32>`).
const MAX_SESSION_ID_LEN: usize = 32;

/// Length of `ProtocolVersion client_version` plus `Random random` at the start of a ClientHello.
const CLIENT_HELLO_VERSION_AND_RANDOM_LEN: usize = 2 + 32;

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
    /// ApplicationData (23). Heartbeat (24) and `tls12_cid` (25) are refused too: this library
    /// negotiates neither.
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
}

impl DropReason {
    /// Every reason, in [`index`](Self::index) order: size a counter array with `ALL.len()`.
    pub const ALL: [DropReason; 7] = [
        DropReason::Empty,
        DropReason::TooShort,
        DropReason::BadContentType,
        DropReason::BadVersion,
        DropReason::BadLength,
        DropReason::NotClientHello,
        DropReason::Oversized,
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
}

impl ContentType {
    /// The content type for a wire byte, or `None` for any type this library refuses.
    pub(crate) const fn from_u8(value: u8) -> Option<Self> {
        match value {
            20 => Some(ContentType::ChangeCipherSpec),
            21 => Some(ContentType::Alert),
            22 => Some(ContentType::Handshake),
            23 => Some(ContentType::ApplicationData),
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

/// What the pre-parser learned from a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientHelloInfo {
    /// Length of the cookie the client echoed (0 on a first ClientHello). Also 0 when
    /// `fragmented` is set: the body is not parsed then.
    pub cookie_len: usize,
    /// The record carries only part of the ClientHello (`fragment_offset != 0` or
    /// `fragment_length < length`). `DTLSv1_listen` cannot reassemble, so the caller drops it.
    pub fragmented: bool,
    /// Version in the record header: [`DTLS1_0_VERSION`] or [`DTLS1_2_VERSION`].
    pub record_version: u16,
}

/// A checked view of one DTLS record (RFC 6347 §4.1) at the start of a buffer.
///
/// Built only by [`new_checked`](Self::new_checked), which validates the content type, the
/// version and the length; the accessors then read the header without any further check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader<'a> {
    header: &'a [u8; RECORD_HEADER_LEN],
    content_type: ContentType,
    fragment: &'a [u8],
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

    /// Bytes the record occupies in the datagram: header plus fragment.
    pub(crate) fn total_len(&self) -> usize {
        RECORD_HEADER_LEN + self.fragment.len()
    }
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

/// A checked view of a DTLS handshake message header (RFC 6347 §4.2.2) and the fragment after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HandshakeHeader<'a> {
    header: &'a [u8; HANDSHAKE_HEADER_LEN],
    body: &'a [u8],
}

impl<'a> HandshakeHeader<'a> {
    /// Checks the handshake header at the start of a handshake record's fragment.
    ///
    /// The record must hold exactly one handshake fragment: `fragment_length` must equal the
    /// bytes after the header, and `fragment_offset + fragment_length` must not exceed `length`.
    /// Anything else is [`DropReason::BadLength`].
    pub(crate) fn new_checked(record_fragment: &'a [u8]) -> Result<Self, DropReason> {
        let (header, body) = record_fragment
            .split_first_chunk::<HANDSHAKE_HEADER_LEN>()
            .ok_or(DropReason::BadLength)?;
        let view = HandshakeHeader { header, body };
        // Both are 24-bit values, so their sum cannot overflow a u32.
        let end = view.fragment_offset() + view.fragment_length();
        if end > view.length() || usize::try_from(view.fragment_length()) != Ok(body.len()) {
            return Err(DropReason::BadLength);
        }
        Ok(view)
    }

    /// The handshake message type (1 is ClientHello).
    pub(crate) fn msg_type(&self) -> u8 {
        self.header[0]
    }

    /// Length of the whole handshake message, all fragments together.
    pub(crate) fn length(&self) -> u32 {
        u24(self.header[1], self.header[2], self.header[3])
    }

    /// The message sequence number.
    pub(crate) fn message_seq(&self) -> u16 {
        u16::from_be_bytes([self.header[4], self.header[5]])
    }

    /// Offset of this fragment within the message.
    pub(crate) fn fragment_offset(&self) -> u32 {
        u24(self.header[6], self.header[7], self.header[8])
    }

    /// Length of this fragment (checked to equal `body().len()`).
    pub(crate) fn fragment_length(&self) -> u32 {
        u24(self.header[9], self.header[10], self.header[11])
    }

    /// True unless this fragment is the whole message.
    pub(crate) fn is_fragmented(&self) -> bool {
        self.fragment_offset() != 0 || self.fragment_length() != self.length()
    }

    /// The fragment's bytes after the header.
    pub(crate) fn body(&self) -> &'a [u8] {
        self.body
    }
}

fn u24(a: u8, b: u8, c: u8) -> u32 {
    u32::from_be_bytes([0, a, b, c])
}

/// Classifies a received datagram; `Err` means drop it and count the reason.
///
/// Every record must be well formed and lie entirely within the datagram. A datagram that is a
/// single epoch-0 handshake record starting a ClientHello is [`Datagram::ClientHello`], after its
/// handshake header (and, when unfragmented, its body up to the cookie) checks out; everything
/// else that is well formed is [`Datagram::Records`].
pub(crate) fn classify(datagram: &[u8]) -> Result<Datagram, DropReason> {
    if datagram.is_empty() {
        return Err(DropReason::Empty);
    }
    let mut first = None;
    let mut count = 0_usize;
    for record in records(datagram) {
        let record = record?;
        first.get_or_insert(record);
        count += 1;
    }
    // A non-empty datagram yields at least one record or an error; this is only defensive.
    let first = first.ok_or(DropReason::TooShort)?;
    if count == 1 && starts_client_hello(&first) {
        return client_hello_info(&first).map(Datagram::ClientHello);
    }
    Ok(Datagram::Records {
        first_epoch: first.epoch(),
        records: count,
    })
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

/// True if the datagram's first record is an epoch-0 handshake record carrying a ClientHello.
///
/// Used for known peers (a rebooted device starting over, RFC 6347 §4.2.8). Only the first
/// record and its handshake type are looked at. Never panics.
#[cfg_attr(not(test), allow(dead_code))] // used by tests and the fuzz targets
pub(crate) fn is_client_hello(datagram: &[u8]) -> bool {
    RecordHeader::new_checked(datagram).is_ok_and(|record| starts_client_hello(&record))
}

/// Size of the HelloVerifyRequest datagram the listener sends for a cookie of `cookie_len` bytes:
/// record header, handshake header, `server_version` (2) and the cookie with its length byte
/// (RFC 6347 §4.2.1). A ClientHello shorter than this is dropped, so that the answer is never
/// larger than the datagram that caused it (anti-amplification).
pub(crate) const fn hello_verify_request_len(cookie_len: usize) -> usize {
    (RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + 2 + 1).saturating_add(cookie_len)
}

/// True if the record is an epoch-0 handshake record whose message type is ClientHello.
fn starts_client_hello(record: &RecordHeader<'_>) -> bool {
    record.content_type() == ContentType::Handshake
        && record.epoch() == 0
        && record.fragment().len() >= HANDSHAKE_HEADER_LEN
        && record.fragment().first() == Some(&HANDSHAKE_TYPE_CLIENT_HELLO)
}

/// Checks the ClientHello in `record` (already known to start one) and extracts what the
/// listener needs.
fn client_hello_info(record: &RecordHeader<'_>) -> Result<ClientHelloInfo, DropReason> {
    let handshake = HandshakeHeader::new_checked(record.fragment())?;
    if handshake.msg_type() != HANDSHAKE_TYPE_CLIENT_HELLO
        || handshake.message_seq() > MAX_CLIENT_HELLO_MESSAGE_SEQ
    {
        return Err(DropReason::NotClientHello);
    }
    let fragmented = handshake.is_fragmented();
    let cookie_len = if fragmented {
        0
    } else {
        client_hello_cookie_len(handshake.body())?
    };
    Ok(ClientHelloInfo {
        cookie_len,
        fragmented,
        record_version: record.version(),
    })
}

/// Reads a complete ClientHello body (RFC 6347 §4.2.1) far enough to return its cookie length:
/// `client_version(2) random(32) session_id<0..32> cookie<0..2^8-1>`.
fn client_hello_cookie_len(body: &[u8]) -> Result<usize, DropReason> {
    let rest = body
        .get(CLIENT_HELLO_VERSION_AND_RANDOM_LEN..)
        .ok_or(DropReason::BadLength)?;
    let (&session_id_len, rest) = rest.split_first().ok_or(DropReason::BadLength)?;
    let session_id_len = usize::from(session_id_len);
    if session_id_len > MAX_SESSION_ID_LEN {
        return Err(DropReason::BadLength);
    }
    let rest = rest.get(session_id_len..).ok_or(DropReason::BadLength)?;
    let (&cookie_len, rest) = rest.split_first().ok_or(DropReason::BadLength)?;
    let cookie_len = usize::from(cookie_len);
    if rest.len() < cookie_len {
        return Err(DropReason::BadLength);
    }
    Ok(cookie_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds one DTLS record.
    fn record(
        content_type: u8,
        version: u16,
        epoch: u16,
        sequence: u64,
        fragment: &[u8],
    ) -> Vec<u8> {
        let mut out = vec![content_type];
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&sequence.to_be_bytes()[2..]);
        out.extend_from_slice(&u16::try_from(fragment.len()).unwrap().to_be_bytes());
        out.extend_from_slice(fragment);
        out
    }

    /// Builds a handshake header followed by `body`.
    fn handshake(msg_type: u8, length: u32, message_seq: u16, offset: u32, body: &[u8]) -> Vec<u8> {
        let mut out = vec![msg_type];
        out.extend_from_slice(&length.to_be_bytes()[1..]);
        out.extend_from_slice(&message_seq.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes()[1..]);
        out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        out.extend_from_slice(body);
        out
    }

    /// A ClientHello body offering one cipher suite and null compression.
    fn client_hello_body(session_id: &[u8], cookie: &[u8]) -> Vec<u8> {
        let mut body = vec![0xFE, 0xFD];
        body.extend_from_slice(&[0x5A; 32]);
        body.push(u8::try_from(session_id.len()).unwrap());
        body.extend_from_slice(session_id);
        body.push(u8::try_from(cookie.len()).unwrap());
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0x00, 0x02, 0xC0, 0xAE]); // TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body
    }

    /// A complete ClientHello in one epoch-0 record with DTLS 1.0 record version.
    fn client_hello(message_seq: u16, cookie: &[u8]) -> Vec<u8> {
        let body = client_hello_body(&[], cookie);
        let len = u32::try_from(body.len()).unwrap();
        record(
            22,
            DTLS1_0_VERSION,
            0,
            message_seq.into(),
            &handshake(1, len, message_seq, 0, &body),
        )
    }

    /// The smallest ClientHello a real client could send: no session ID, no cookie, one suite.
    fn minimal_client_hello() -> Vec<u8> {
        client_hello(0, &[])
    }

    /// A tiny deterministic PRNG so the fuzz-style tests need no extra crate.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, bound: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(bound).unwrap()).unwrap()
        }
    }

    #[test]
    fn minimal_client_hello_is_67_bytes_and_classified_as_client_hello() {
        let datagram = minimal_client_hello();
        assert_eq!(datagram.len(), 67);
        let info = ClientHelloInfo {
            cookie_len: 0,
            fragmented: false,
            record_version: DTLS1_0_VERSION,
        };
        assert_eq!(classify(&datagram), Ok(Datagram::ClientHello(info)));
        assert_eq!(classify_unknown_peer(&datagram), Ok(info));
        assert!(is_client_hello(&datagram));
    }

    #[test]
    fn client_hello_with_cookie_reports_cookie_length_and_record_version() {
        let mut body = client_hello_body(&[7; 32], &[9; 32]);
        let len = u32::try_from(body.len()).unwrap();
        let datagram = record(22, DTLS1_2_VERSION, 0, 1, &handshake(1, len, 1, 0, &body));
        let info = classify_unknown_peer(&datagram).unwrap();
        assert_eq!(info.cookie_len, 32);
        assert!(!info.fragmented);
        assert_eq!(info.record_version, DTLS1_2_VERSION);

        // The largest cookie a u8 length can express is fine too.
        body = client_hello_body(&[], &[1; 255]);
        let len = u32::try_from(body.len()).unwrap();
        let datagram = record(22, DTLS1_2_VERSION, 0, 1, &handshake(1, len, 1, 0, &body));
        assert_eq!(classify_unknown_peer(&datagram).unwrap().cookie_len, 255);
    }

    #[test]
    fn client_hello_truncated_at_every_length_is_rejected() {
        for full in [minimal_client_hello(), client_hello(1, &[3; 32])] {
            for len in 0..full.len() {
                let cut = &full[..len];
                let expected = match len {
                    0 => DropReason::Empty,
                    1..RECORD_HEADER_LEN => DropReason::TooShort,
                    _ => DropReason::BadLength,
                };
                assert_eq!(classify(cut), Err(expected), "length {len}");
                assert_eq!(classify_unknown_peer(cut), Err(expected), "length {len}");
                assert!(!is_client_hello(cut), "length {len}");
                assert!(records(cut).all(|r| r.is_err()), "length {len}");
            }
        }
    }

    #[test]
    fn client_hello_body_truncated_inside_a_consistent_record_is_bad_length() {
        let body = client_hello_body(&[1; 16], &[2; 20]);
        // Every cut up to and including the last cookie byte leaves the cookie incomplete.
        for cut in 0..(2 + 32 + 1 + 16 + 1 + 20) {
            let part = &body[..cut];
            let len = u32::try_from(part.len()).unwrap();
            let datagram = record(22, DTLS1_2_VERSION, 0, 0, &handshake(1, len, 0, 0, part));
            assert_eq!(classify(&datagram), Err(DropReason::BadLength), "cut {cut}");
            assert!(is_client_hello(&datagram));
        }
    }

    #[test]
    fn session_id_longer_than_32_bytes_is_bad_length() {
        let body = client_hello_body(&[1; 33], &[]);
        let len = u32::try_from(body.len()).unwrap();
        let datagram = record(22, DTLS1_2_VERSION, 0, 0, &handshake(1, len, 0, 0, &body));
        assert_eq!(classify(&datagram), Err(DropReason::BadLength));
    }

    #[test]
    fn only_the_four_dtls_content_types_are_accepted() {
        for content_type in 0..=u8::MAX {
            let datagram = record(content_type, DTLS1_2_VERSION, 1, 7, &[0; 24]);
            let result = classify(&datagram);
            if (20..=23).contains(&content_type) {
                assert_eq!(
                    result,
                    Ok(Datagram::Records {
                        first_epoch: 1,
                        records: 1
                    }),
                    "type {content_type}"
                );
                let header = RecordHeader::new_checked(&datagram).unwrap();
                assert_eq!(header.content_type().to_u8(), content_type);
            } else {
                assert_eq!(
                    result,
                    Err(DropReason::BadContentType),
                    "type {content_type}"
                );
            }
        }
        // Heartbeat and tls12_cid are named explicitly in the design: refused.
        for content_type in [24, 25] {
            let datagram = record(content_type, DTLS1_2_VERSION, 1, 7, &[0; 24]);
            assert_eq!(classify(&datagram), Err(DropReason::BadContentType));
        }
    }

    #[test]
    fn only_dtls_1_2_and_1_0_record_versions_are_accepted() {
        for version in 0..=u16::MAX {
            let datagram = record(23, version, 1, 7, &[0; 8]);
            let result = classify(&datagram);
            if version == DTLS1_2_VERSION || version == DTLS1_0_VERSION {
                assert!(result.is_ok(), "version {version:#06x}");
                let header = RecordHeader::new_checked(&datagram).unwrap();
                assert_eq!(header.version(), version);
            } else {
                assert_eq!(
                    result,
                    Err(DropReason::BadVersion),
                    "version {version:#06x}"
                );
            }
        }
    }

    #[test]
    fn record_header_accessors_read_every_field() {
        let datagram = record(23, DTLS1_2_VERSION, 0xABCD, 0x0000_1234_5678_9ABC, b"hello");
        let header = RecordHeader::new_checked(&datagram).unwrap();
        assert_eq!(header.content_type(), ContentType::ApplicationData);
        assert_eq!(header.version(), DTLS1_2_VERSION);
        assert_eq!(header.epoch(), 0xABCD);
        assert_eq!(header.sequence(), 0x1234_5678_9ABC);
        assert_eq!(header.length(), 5);
        assert_eq!(header.fragment(), b"hello");
        assert_eq!(header.total_len(), RECORD_HEADER_LEN + 5);

        let max = record(23, DTLS1_2_VERSION, 0, 0xFFFF_FFFF_FFFF, &[]);
        let header = RecordHeader::new_checked(&max).unwrap();
        assert_eq!(header.sequence(), 0xFFFF_FFFF_FFFF);
        assert_eq!(header.length(), 0);
    }

    #[test]
    fn several_records_in_one_datagram_are_all_checked_and_counted() {
        let mut datagram = record(22, DTLS1_2_VERSION, 0, 5, &handshake(16, 4, 2, 0, &[1; 4]));
        datagram.extend(record(20, DTLS1_2_VERSION, 0, 6, &[1]));
        datagram.extend(record(22, DTLS1_2_VERSION, 1, 0, &[0xEE; 40]));
        assert_eq!(
            classify(&datagram),
            Ok(Datagram::Records {
                first_epoch: 0,
                records: 3
            })
        );
        let epochs: Vec<u16> = records(&datagram).map(|r| r.unwrap().epoch()).collect();
        assert_eq!(epochs, [0, 0, 1]);
        // Not a ClientHello: an unknown peer sending it is refused.
        assert_eq!(
            classify_unknown_peer(&datagram),
            Err(DropReason::NotClientHello)
        );
        assert!(!is_client_hello(&datagram));
    }

    #[test]
    fn trailing_garbage_after_valid_records_is_rejected() {
        let valid = record(23, DTLS1_2_VERSION, 1, 1, &[0; 32]);

        let mut short_tail = valid.clone();
        short_tail.extend_from_slice(&[23, 0xFE, 0xFD]);
        assert_eq!(classify(&short_tail), Err(DropReason::TooShort));

        let mut partial_record = valid.clone();
        partial_record.extend_from_slice(&record(23, DTLS1_2_VERSION, 1, 2, &[0; 32])[..30]);
        assert_eq!(classify(&partial_record), Err(DropReason::BadLength));

        let mut bad_type = valid.clone();
        bad_type.extend_from_slice(&[0xFF; 20]);
        assert_eq!(classify(&bad_type), Err(DropReason::BadContentType));

        let mut hello_then_garbage = minimal_client_hello();
        hello_then_garbage.push(0);
        assert_eq!(
            classify_unknown_peer(&hello_then_garbage),
            Err(DropReason::TooShort)
        );

        // The iterator reports the error once, then stops.
        let mut iter = records(&partial_record);
        assert!(iter.next().unwrap().is_ok());
        assert_eq!(iter.next(), Some(Err(DropReason::BadLength)));
        assert_eq!(iter.next(), None);
        assert_eq!(iter.next(), None);
    }

    #[test]
    fn empty_datagram_is_rejected() {
        assert_eq!(classify(&[]), Err(DropReason::Empty));
        assert_eq!(classify_unknown_peer(&[]), Err(DropReason::Empty));
        assert!(!is_client_hello(&[]));
        assert_eq!(records(&[]).count(), 0);
        assert_eq!(RecordHeader::new_checked(&[]), Err(DropReason::TooShort));
    }

    #[test]
    fn record_longer_than_2_pow_14_plus_2048_is_oversized() {
        let at_limit = record(23, DTLS1_2_VERSION, 1, 0, &vec![0; MAX_RECORD_LEN]);
        assert!(classify(&at_limit).is_ok());
        let over = record(23, DTLS1_2_VERSION, 1, 0, &vec![0; MAX_RECORD_LEN + 1]);
        assert_eq!(classify(&over), Err(DropReason::Oversized));
        // A header claiming too much is oversized even when the bytes are not there.
        let mut header_only = record(23, DTLS1_2_VERSION, 1, 0, &[]);
        header_only[11..13].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(classify(&header_only), Err(DropReason::Oversized));
    }

    #[test]
    fn fragmented_client_hello_is_flagged() {
        let body = client_hello_body(&[], &[]);
        let len = u32::try_from(body.len()).unwrap();

        let first_half = record(
            22,
            DTLS1_2_VERSION,
            0,
            0,
            &handshake(1, len, 0, 0, &body[..20]),
        );
        let info = classify_unknown_peer(&first_half).unwrap();
        assert!(info.fragmented);
        assert_eq!(info.cookie_len, 0);

        let second_half = record(
            22,
            DTLS1_2_VERSION,
            0,
            1,
            &handshake(1, len, 0, 20, &body[20..]),
        );
        assert!(classify_unknown_peer(&second_half).unwrap().fragmented);
        assert!(is_client_hello(&second_half));

        // Both fragments in one datagram: two records, so not a lone ClientHello.
        let mut both = first_half.clone();
        both.extend(second_half);
        assert_eq!(
            classify(&both),
            Ok(Datagram::Records {
                first_epoch: 0,
                records: 2
            })
        );
        assert_eq!(
            classify_unknown_peer(&both),
            Err(DropReason::NotClientHello)
        );
        assert!(is_client_hello(&both));
    }

    #[test]
    fn inconsistent_handshake_header_is_bad_length() {
        let body = client_hello_body(&[], &[]);
        let len = u32::try_from(body.len()).unwrap();

        // fragment_offset + fragment_length beyond the message length.
        let beyond = record(22, DTLS1_2_VERSION, 0, 0, &handshake(1, len, 0, 1, &body));
        assert_eq!(classify(&beyond), Err(DropReason::BadLength));

        // fragment_length not matching the record.
        let mut mismatch = minimal_client_hello();
        mismatch[RECORD_HEADER_LEN + 11] ^= 1;
        assert_eq!(classify(&mismatch), Err(DropReason::BadLength));

        // A record too short to hold a handshake header is not taken for a ClientHello.
        let tiny = record(22, DTLS1_2_VERSION, 0, 0, &[1, 0, 0]);
        assert!(!is_client_hello(&tiny));
        assert_eq!(
            classify_unknown_peer(&tiny),
            Err(DropReason::NotClientHello)
        );
        assert!(HandshakeHeader::new_checked(&[1, 0, 0]).is_err());
    }

    #[test]
    fn epoch_1_record_from_unknown_peer_is_not_client_hello() {
        let body = client_hello_body(&[], &[]);
        let len = u32::try_from(body.len()).unwrap();
        let datagram = record(22, DTLS1_2_VERSION, 1, 0, &handshake(1, len, 0, 0, &body));
        assert_eq!(
            classify_unknown_peer(&datagram),
            Err(DropReason::NotClientHello)
        );
        assert_eq!(
            classify(&datagram),
            Ok(Datagram::Records {
                first_epoch: 1,
                records: 1
            })
        );
        assert!(!is_client_hello(&datagram));

        let app_data = record(23, DTLS1_2_VERSION, 1, 3, &[0; 40]);
        assert_eq!(
            classify_unknown_peer(&app_data),
            Err(DropReason::NotClientHello)
        );
    }

    #[test]
    fn other_handshake_messages_from_unknown_peer_are_not_client_hello() {
        for msg_type in [0, 2, 3, 11, 12, 14, 16, 20] {
            let datagram = record(
                22,
                DTLS1_2_VERSION,
                0,
                0,
                &handshake(msg_type, 8, 0, 0, &[0; 8]),
            );
            assert_eq!(
                classify_unknown_peer(&datagram),
                Err(DropReason::NotClientHello)
            );
            assert!(!is_client_hello(&datagram));
        }
    }

    #[test]
    fn client_hello_with_message_seq_above_1_is_not_client_hello() {
        assert!(classify_unknown_peer(&client_hello(1, &[4; 16])).is_ok());
        for message_seq in [2, 3, 0xFFFF] {
            let datagram = client_hello(message_seq, &[]);
            assert_eq!(classify(&datagram), Err(DropReason::NotClientHello));
            assert_eq!(
                classify_unknown_peer(&datagram),
                Err(DropReason::NotClientHello)
            );
        }
    }

    #[test]
    fn hello_verify_request_len_follows_rfc_6347_layout() {
        assert_eq!(hello_verify_request_len(0), 28);
        assert_eq!(hello_verify_request_len(32), 60);
        assert_eq!(hello_verify_request_len(usize::MAX), usize::MAX);
        // A minimal ClientHello is larger than the HelloVerifyRequest it triggers.
        assert!(minimal_client_hello().len() >= hello_verify_request_len(32));
    }

    #[test]
    fn drop_reason_index_and_name_are_consistent() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
            assert_eq!(reason.to_string(), reason.as_str());
        }
        let mut names: Vec<&str> = DropReason::ALL.iter().map(DropReason::as_str).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }

    #[test]
    fn random_and_mutated_datagrams_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let seed = client_hello(1, &[0x42; 32]);
        let mut buf = Vec::new();
        for i in 0..10_000 {
            buf.clear();
            if i % 2 == 0 {
                // Pure noise, sometimes starting like a record to get past the first checks.
                let len = rng.below(200);
                buf.extend((0..len).map(|_| rng.next() as u8));
                if let Some(first) = buf.first_mut() {
                    *first = 20 + (rng.next() % 4) as u8;
                }
                if buf.len() >= 3 && rng.next() % 2 == 0 {
                    buf[1] = 0xFE;
                    buf[2] = 0xFD;
                }
            } else {
                // A valid ClientHello with a few bytes flipped, then cut short or extended.
                buf.extend_from_slice(&seed);
                for _ in 0..=rng.below(4) {
                    let at = rng.below(buf.len());
                    buf[at] = rng.next() as u8;
                }
                match rng.below(3) {
                    0 => buf.truncate(rng.below(seed.len() + 1)),
                    1 => buf.extend((0..rng.below(40)).map(|_| rng.next() as u8)),
                    _ => {}
                }
            }
            let classified = classify(&buf);
            let unknown = classify_unknown_peer(&buf);
            let _ = is_client_hello(&buf);
            // The two classifiers agree with each other.
            match classified {
                Ok(Datagram::ClientHello(info)) => assert_eq!(unknown, Ok(info)),
                Ok(Datagram::Records { records, .. }) => {
                    assert!(records >= 1);
                    assert_eq!(unknown, Err(DropReason::NotClientHello));
                }
                Err(reason) => assert_eq!(unknown, Err(reason)),
            }
            for record in records(&buf).flatten() {
                let _ = (record.sequence(), record.epoch(), record.fragment().len());
            }
        }
    }
}
