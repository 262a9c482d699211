//! Hand-made DTLS 1.2 records (RFC 6347 §4.1, §4.2.2) for the attack tests: a record builder, a
//! minimal record parser, and ClientHellos of any size from 67 bytes up.
#![allow(dead_code)]

use super::support::Rng;

pub const CHANGE_CIPHER_SPEC: u8 = 20;
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

pub const DTLS1_2: u16 = 0xFEFD;
pub const DTLS1_0: u16 = 0xFEFF;

pub const CLIENT_HELLO: u8 = 1;
pub const SERVER_HELLO: u8 = 2;
pub const HELLO_VERIFY_REQUEST: u8 = 3;
pub const CLIENT_KEY_EXCHANGE: u8 = 16;
pub const FINISHED: u8 = 20;

pub const RECORD_HEADER_LEN: usize = 13;
pub const HANDSHAKE_HEADER_LEN: usize = 12;

/// The smallest well-formed ClientHello datagram: record header (13), handshake header (12),
/// version (2), random (32), empty session id (1), empty cookie (1), one cipher suite (2 + 2),
/// one compression method (1 + 1), no extensions.
pub const MIN_CLIENT_HELLO: usize = 67;

/// One DTLS record.
pub fn record(content_type: u8, version: u16, epoch: u16, seq: u64, fragment: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + fragment.len());
    out.push(content_type);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes()[2..]);
    out.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
    out.extend_from_slice(fragment);
    out
}

/// A handshake message header claiming a message of `length` bytes, followed by `body` as the
/// fragment at `offset` (fragment_length is `body.len()`).
pub fn handshake(msg_type: u8, length: u32, message_seq: u16, offset: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HANDSHAKE_HEADER_LEN + body.len());
    out.push(msg_type);
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.extend_from_slice(&message_seq.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes()[1..]);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(body);
    out
}

/// A parsed record: header fields and the byte range of the whole record in its datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub content_type: u8,
    pub version: u16,
    pub epoch: u16,
    pub seq: u64,
    pub fragment: Vec<u8>,
}

impl Record {
    pub fn to_bytes(&self) -> Vec<u8> {
        record(
            self.content_type,
            self.version,
            self.epoch,
            self.seq,
            &self.fragment,
        )
    }

    /// The handshake message type of an epoch-0 handshake record.
    pub fn handshake_type(&self) -> Option<u8> {
        (self.content_type == HANDSHAKE && self.epoch == 0)
            .then(|| self.fragment.first().copied())
            .flatten()
    }
}

/// Splits a datagram into its records; `None` if it is not a clean sequence of records.
pub fn parse(datagram: &[u8]) -> Option<Vec<Record>> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        if rest.len() < RECORD_HEADER_LEN {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let end = RECORD_HEADER_LEN + len;
        if rest.len() < end {
            return None;
        }
        let mut seq = [0u8; 8];
        seq[2..].copy_from_slice(&rest[5..11]);
        out.push(Record {
            content_type: rest[0],
            version: u16::from_be_bytes([rest[1], rest[2]]),
            epoch: u16::from_be_bytes([rest[3], rest[4]]),
            seq: u64::from_be_bytes(seq),
            fragment: rest[RECORD_HEADER_LEN..end].to_vec(),
        });
        rest = &rest[end..];
    }
    Some(out)
}

/// Concatenates records into one datagram.
pub fn join(records: &[Record]) -> Vec<u8> {
    records.iter().flat_map(Record::to_bytes).collect()
}

/// Random bytes.
pub fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// The fields of a ClientHello body (RFC 6347 §4.2.1), to be re-serialised at any size.
#[derive(Debug, Clone)]
pub struct ClientHelloParts {
    pub random: [u8; 32],
    pub session_id: Vec<u8>,
    pub cookie: Vec<u8>,
    /// The cipher_suites vector's contents (2 bytes per suite).
    pub cipher_suites: Vec<u8>,
    pub compression: Vec<u8>,
    /// The extensions block's contents (without its 2-byte length).
    pub extensions: Vec<u8>,
    pub message_seq: u16,
    pub record_version: u16,
    pub record_seq: u64,
}

impl ClientHelloParts {
    /// The parts of a real, unfragmented ClientHello datagram (as OpenSSL sends it).
    pub fn parse(datagram: &[u8]) -> Option<ClientHelloParts> {
        let records = parse(datagram)?;
        let [r] = records.as_slice() else { return None };
        if r.handshake_type() != Some(CLIENT_HELLO) {
            return None;
        }
        let f = &r.fragment;
        let message_seq = u16::from_be_bytes([f[4], f[5]]);
        let body = f.get(HANDSHAKE_HEADER_LEN..)?;
        let mut at = 2;
        let random: [u8; 32] = body.get(at..at + 32)?.try_into().ok()?;
        at += 32;
        let mut vector = |width: usize| -> Option<Vec<u8>> {
            let len = match width {
                1 => usize::from(*body.get(at)?),
                _ => usize::from(u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?])),
            };
            let v = body.get(at + width..at + width + len)?.to_vec();
            at += width + len;
            Some(v)
        };
        let session_id = vector(1)?;
        let cookie = vector(1)?;
        let cipher_suites = vector(2)?;
        let compression = vector(1)?;
        let extensions = vector(2).unwrap_or_default();
        Some(ClientHelloParts {
            random,
            session_id,
            cookie,
            cipher_suites,
            compression,
            extensions,
            message_seq,
            record_version: r.version,
            record_seq: r.seq,
        })
    }

    /// A minimal ClientHello: one cipher suite, null compression, no extensions.
    pub fn minimal(rng: &mut Rng) -> ClientHelloParts {
        let mut random = [0u8; 32];
        random.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
        ClientHelloParts {
            random,
            session_id: Vec::new(),
            cookie: Vec::new(),
            cipher_suites: vec![0xC0, 0xA8], // TLS_PSK_WITH_AES_128_CCM_8
            compression: vec![0],
            extensions: Vec::new(),
            message_seq: 0,
            record_version: DTLS1_2,
            record_seq: 0,
        }
    }

    fn body(&self, padding: Option<usize>) -> Vec<u8> {
        let mut body = vec![0xFE, 0xFD];
        body.extend_from_slice(&self.random);
        body.push(self.session_id.len() as u8);
        body.extend_from_slice(&self.session_id);
        body.push(self.cookie.len() as u8);
        body.extend_from_slice(&self.cookie);
        body.extend_from_slice(&(self.cipher_suites.len() as u16).to_be_bytes());
        body.extend_from_slice(&self.cipher_suites);
        body.push(self.compression.len() as u8);
        body.extend_from_slice(&self.compression);
        let mut extensions = self.extensions.clone();
        if let Some(pad) = padding {
            // RFC 7685 padding extension (21): 4 bytes of header, `pad` zero bytes.
            extensions.extend_from_slice(&21u16.to_be_bytes());
            extensions.extend_from_slice(&(pad as u16).to_be_bytes());
            extensions.resize(extensions.len() + pad, 0);
        }
        if !extensions.is_empty() || padding.is_some() {
            body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
            body.extend_from_slice(&extensions);
        }
        body
    }

    /// The datagram without padding.
    pub fn to_datagram(&self) -> Vec<u8> {
        self.datagram_with_body(&self.body(None))
    }

    fn datagram_with_body(&self, body: &[u8]) -> Vec<u8> {
        let hs = handshake(CLIENT_HELLO, body.len() as u32, self.message_seq, 0, body);
        record(HANDSHAKE, self.record_version, 0, self.record_seq, &hs)
    }

    /// The datagram padded (padding extension, or extra cipher suites when the room is too small
    /// for an extension) to exactly `size` bytes; `None` if it is already longer.
    pub fn to_datagram_of_size(&self, size: usize) -> Option<Vec<u8>> {
        let plain = self.to_datagram();
        if plain.len() == size {
            return Some(plain);
        }
        if plain.len() > size {
            return None;
        }
        let room = size - plain.len();
        // Adding an extensions block costs 2 bytes when there is none; the padding extension 4.
        let block = if self.extensions.is_empty() { 2 } else { 0 };
        if room >= block + 4 {
            let dgram = self.datagram_with_body(&self.body(Some(room - block - 4)));
            debug_assert_eq!(dgram.len(), size);
            return Some(dgram);
        }
        if room % 2 == 0 {
            // Too little room for an extension: more cipher suites (GREASE-like values).
            let mut more = self.clone();
            for i in 0..room / 2 {
                more.cipher_suites
                    .extend_from_slice(&[0x0A + i as u8 * 0x10, 0x0A]);
            }
            return Some(more.to_datagram());
        }
        // An odd byte: one more compression method (and even room for the rest).
        let mut more = self.clone();
        more.compression.push(1);
        more.to_datagram_of_size(size)
    }
}
