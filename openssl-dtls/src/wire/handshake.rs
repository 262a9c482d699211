//! The DTLS handshake message header (RFC 6347 §4.2.2) as a checked, zero-copy view
//! ([`HandshakeHeader`]), and what the cookie path needs to know of a ClientHello: whether a
//! record starts one, its cookie length ([`ClientHelloInfo`]), and the size of the
//! HelloVerifyRequest it would be answered with.

use super::{ContentType, DropReason, RecordHeader, RECORD_HEADER_LEN};

/// Length of a DTLS handshake message header: msg_type(1) length(3) message_seq(2)
/// fragment_offset(3) fragment_length(3).
pub(crate) const HANDSHAKE_HEADER_LEN: usize = 12;

/// Handshake message type of a ClientHello (RFC 5246 §7.4).
const HANDSHAKE_TYPE_CLIENT_HELLO: u8 = 1;

/// Largest `message_seq` of a ClientHello: 0 for the first, 1 for the one that echoes the cookie
/// (RFC 6347 §4.2.2).
const MAX_CLIENT_HELLO_MESSAGE_SEQ: u16 = 1;

/// Largest session ID a ClientHello may carry (RFC 5246 §7.4.1.2: `SessionID<0..32>`).
const MAX_SESSION_ID_LEN: usize = 32;

/// Length of `ProtocolVersion client_version` plus `Random random` at the start of a ClientHello.
const CLIENT_HELLO_VERSION_AND_RANDOM_LEN: usize = 2 + 32;

/// What the pre-parser learned from a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientHelloInfo {
    /// Length of the cookie the client echoed (0 on a first ClientHello). Also 0 when
    /// `fragmented` is set: the body is not parsed then.
    pub cookie_len: usize,
    /// The record carries only part of the ClientHello (`fragment_offset != 0` or
    /// `fragment_length < length`). `DTLSv1_listen` cannot reassemble, so the caller drops it.
    pub fragmented: bool,
    /// Version in the record header: [`DTLS1_0_VERSION`](super::DTLS1_0_VERSION) or
    /// [`DTLS1_2_VERSION`](super::DTLS1_2_VERSION).
    pub record_version: u16,
}

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
pub(super) fn starts_client_hello(record: &RecordHeader<'_>) -> bool {
    record.content_type() == ContentType::Handshake
        && record.epoch() == 0
        && record.fragment().len() >= HANDSHAKE_HEADER_LEN
        && record.fragment().first() == Some(&HANDSHAKE_TYPE_CLIENT_HELLO)
}

/// Checks the ClientHello in `record` (already known to start one) and extracts what the
/// listener needs.
pub(super) fn client_hello_info(record: &RecordHeader<'_>) -> Result<ClientHelloInfo, DropReason> {
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
