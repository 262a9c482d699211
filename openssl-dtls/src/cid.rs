//! Connection ID negotiation (RFC 9146 §3): the `connection_id` extension (type 54) in the
//! ClientHello and ServerHello, through OpenSSL's custom-extension API
//! (`SSL_CTX_add_custom_ext`), and what it decided, kept on each `SSL` (ex data) for the session.
//!
//! OpenSSL 3.x knows nothing of Connection IDs in DTLS 1.2. It carries the extension for us
//! (our callbacks write and parse `opaque cid<0..2^8-1>`) and runs the handshake as always;
//! this library rewrites the few epoch-1 handshake records between OpenSSL's standard format
//! and the `tls12_cid` format (`RecordLayer::transcode_*`), and a CID connection always moves to
//! the compact record layer when the handshake completes.
//!
//! **Layout of the CIDs a server issues** (documented for load balancers and shards): the
//! configured prefix (one byte by default, `0x00`; a node or shard number) followed by random
//! bytes up to the configured length. A balancer can route a `tls12_cid` record (content type
//! 25; the CID starts at byte 11 of the record) to the node its prefix names, whatever address
//! it came from. A server with shards ([`SocketOptions::shards`](crate::SocketOptions::shards))
//! writes the shard's index in the byte after the prefix, so the CID is: prefix, shard index,
//! random bytes; its socket group steers each `tls12_cid` record by that byte
//! (`driver/shards.rs`). An [`Endpoint`](crate::Endpoint) never issues a CID that one of its
//! connections holds.

use std::sync::OnceLock;

use openssl::ex_data::Index;
use openssl::ssl::{ExtensionContext, Ssl, SslAlert, SslContextBuilder, SslRef};

use crate::error::ConfigError;
use crate::ffi::ctx::guard;

/// The `connection_id` extension's type (RFC 9146 §3).
pub const CONNECTION_ID_EXTENSION: u16 = 54;

/// The longest Connection ID this library issues (its own CID). A peer's CID may be anything
/// RFC 9146 allows (up to 255 bytes).
pub const MAX_CID_LEN: usize = 16;

/// The fewest random bytes an issued CID carries after its prefix: fewer would make CIDs
/// guessable and their space too small to hand out without collisions.
pub const MIN_RANDOM_CID_BYTES: usize = 4;

/// How a context uses Connection IDs: the length of its own CID (what the peer puts in records
/// it sends us) and, for servers, the prefix every issued CID starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CidSettings {
    /// Our CID's length: 0 asks the peer to send no CID (a client's usual choice).
    pub len: u8,
    /// The first bytes of every CID issued (servers; at most `len`).
    pub prefix: Vec<u8>,
}

impl CidSettings {
    /// Checks the length and prefix.
    pub(crate) fn validate(&self, server: bool) -> Result<(), ConfigError> {
        if usize::from(self.len) > MAX_CID_LEN {
            return Err(ConfigError::OutOfRange {
                setting: "connection_id",
                value: u64::from(self.len),
                allowed: "0 to 16 bytes",
            });
        }
        if server && self.len == 0 {
            return Err(ConfigError::OutOfRange {
                setting: "connection_id",
                value: 0,
                allowed: "1 to 16 bytes for a server (0 turns Connection IDs off)",
            });
        }
        if server && self.prefix.len() + MIN_RANDOM_CID_BYTES > usize::from(self.len) {
            return Err(ConfigError::Invalid(format!(
                "a Connection ID of {} bytes leaves fewer than {MIN_RANDOM_CID_BYTES} random bytes \
                 after the {}-byte prefix: make it longer or the prefix shorter",
                self.len,
                self.prefix.len()
            )));
        }
        Ok(())
    }

    /// A fresh CID: the prefix, then random bytes.
    pub(crate) fn generate(&self) -> Box<[u8]> {
        let mut cid = vec![0u8; usize::from(self.len)];
        cid[..self.prefix.len()].copy_from_slice(&self.prefix);
        // A failing RNG leaves zeros: the endpoint's uniqueness check still holds; say so.
        if openssl::rand::rand_bytes(&mut cid[self.prefix.len()..]).is_err() {
            log::error!("RAND_bytes failed while making a Connection ID");
        }
        cid.into_boxed_slice()
    }
}

/// One of our CIDs held inline (at most [`MAX_CID_LEN`] bytes, no allocation): the session's
/// own CID and the endpoint's routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct InlineCid {
    len: u8,
    bytes: [u8; MAX_CID_LEN],
}

impl InlineCid {
    /// `cid` inline, or `None` if it is longer than any CID this library issues.
    pub(crate) fn new(cid: &[u8]) -> Option<InlineCid> {
        let mut bytes = [0u8; MAX_CID_LEN];
        bytes.get_mut(..cid.len())?.copy_from_slice(cid);
        Some(InlineCid {
            len: cid.len() as u8,
            bytes,
        })
    }
}

impl std::ops::Deref for InlineCid {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// What the extension decided for one `SSL`, kept in its ex data.
#[derive(Debug, Default)]
pub(crate) struct CidState {
    /// Our CID (what the peer puts in the records it sends us), once chosen: assigned by the
    /// endpoint before the handshake, or made when the extension is written.
    pub own: Option<Box<[u8]>>,
    /// The peer's CID (what we put in the records we send), once its extension arrived.
    pub peer: Option<Box<[u8]>>,
    /// Both sides sent the extension: records of epoch 1 on use the negotiated CIDs.
    pub negotiated: bool,
}

/// The ex data slot of [`CidState`].
fn index() -> Option<Index<Ssl, CidState>> {
    static INDEX: OnceLock<Option<Index<Ssl, CidState>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

/// The negotiation state of `ssl`, if the extension was sent or received or a CID assigned.
pub(crate) fn state(ssl: &SslRef) -> Option<&CidState> {
    ssl.ex_data(index()?)
}

/// The negotiated CIDs of `ssl` (own, peer), once both sides sent the extension.
pub(crate) fn negotiated(ssl: &SslRef) -> Option<(&[u8], &[u8])> {
    let st = state(ssl).filter(|s| s.negotiated)?;
    Some((st.own.as_deref()?, st.peer.as_deref()?))
}

/// The state of `ssl`, created empty when missing.
fn state_mut(ssl: &mut SslRef) -> Option<&mut CidState> {
    let index = index()?;
    if ssl.ex_data(index).is_none() {
        ssl.set_ex_data(index, CidState::default());
    }
    ssl.ex_data_mut(index)
}

/// Assigns our CID for the handshake on `ssl` before it starts (the endpoint, which knows which
/// CIDs its connections hold).
pub(crate) fn assign(ssl: &mut SslRef, cid: Box<[u8]>) {
    if let Some(st) = state_mut(ssl) {
        st.own = Some(cid);
    }
}

/// Parses the extension's body, `opaque cid<0..2^8-1>`.
fn parse_body(data: &[u8]) -> Result<&[u8], SslAlert> {
    match data.split_first() {
        Some((&len, cid)) if cid.len() == usize::from(len) => Ok(cid),
        _ => Err(SslAlert::DECODE_ERROR),
    }
}

/// The extension's body for `cid`.
fn body(cid: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + cid.len());
    body.push(cid.len() as u8);
    body.extend_from_slice(cid);
    body
}

/// Whether the suite being negotiated on `ssl` is one the compact record layer carries (every
/// AEAD suite): a CID connection runs on it after the handshake.
fn pending_suite_is_aead(ssl: &SslRef) -> bool {
    crate::ffi::ssl::pending_cipher_name(ssl)
        .is_some_and(|name| crate::record::Aead::from_suite_name(name).is_some())
}

/// A server context: parse the client's extension, answer with ours (only to a client that
/// offered it, as OpenSSL sends a server's custom extension only then), and only for an AEAD
/// suite. The issued CID is the endpoint's assignment, or a fresh one.
pub(crate) fn install_server(
    b: &mut SslContextBuilder,
    settings: CidSettings,
) -> Result<(), ConfigError> {
    add_extension(
        b,
        move |ssl| {
            if !pending_suite_is_aead(ssl) {
                log::debug!("no Connection ID: the suite is not an AEAD suite");
                return Ok(None);
            }
            let Some(st) = state_mut(ssl) else {
                return Ok(None);
            };
            if st.peer.is_none() {
                return Ok(None);
            }
            let own = st.own.get_or_insert_with(|| settings.generate());
            let body = body(own);
            st.negotiated = true;
            Ok(Some(body))
        },
        |ssl, data| {
            let cid = parse_body(data)?;
            if let Some(st) = state_mut(ssl) {
                st.peer = Some(cid.into());
            }
            Ok(())
        },
    )
}

/// A client context: offer our CID (`settings.len` random bytes, usually none), and take the
/// server's. A server that agrees to CIDs on a suite the compact layer cannot carry fails the
/// handshake with `illegal_parameter`.
pub(crate) fn install_client(
    b: &mut SslContextBuilder,
    settings: CidSettings,
) -> Result<(), ConfigError> {
    add_extension(
        b,
        move |ssl| {
            let Some(st) = state_mut(ssl) else {
                return Ok(None);
            };
            // The same CID in a second ClientHello (after a HelloVerifyRequest).
            let own = st.own.get_or_insert_with(|| settings.generate());
            Ok(Some(body(own)))
        },
        |ssl, data| {
            let cid = parse_body(data)?;
            if !pending_suite_is_aead(ssl) {
                log::debug!("the server agreed to Connection IDs on a non-AEAD suite");
                return Err(SslAlert::ILLEGAL_PARAMETER);
            }
            let Some(st) = state_mut(ssl) else {
                return Err(SslAlert::HANDSHAKE_FAILURE);
            };
            st.peer = Some(cid.into());
            st.negotiated = st.own.is_some();
            Ok(())
        },
    )
}

/// Registers the `connection_id` extension for the ClientHello and the (D)TLS 1.2 ServerHello
/// (`SSL_CTX_add_custom_ext`): `add` writes our body, `parse` reads the peer's. A panic in
/// either is a `handshake_failure`, never an unwind into OpenSSL.
fn add_extension(
    b: &mut SslContextBuilder,
    add: impl Fn(&mut SslRef) -> Result<Option<Vec<u8>>, SslAlert> + Send + Sync + 'static,
    parse: impl Fn(&mut SslRef, &[u8]) -> Result<(), SslAlert> + Send + Sync + 'static,
) -> Result<(), ConfigError> {
    let context = ExtensionContext::CLIENT_HELLO
        | ExtensionContext::TLS1_2_SERVER_HELLO
        | ExtensionContext::DTLS_ONLY
        | ExtensionContext::TLS1_2_AND_BELOW_ONLY;
    b.add_custom_ext(
        CONNECTION_ID_EXTENSION,
        context,
        move |ssl: &mut SslRef, _ctx, _cert| {
            guard("connection_id", Err(SslAlert::HANDSHAKE_FAILURE), || {
                add(ssl)
            })
        },
        move |ssl: &mut SslRef, _ctx, data: &[u8], _cert| {
            guard("connection_id", Err(SslAlert::HANDSHAKE_FAILURE), || {
                parse(ssl, data)
            })
        },
    )
    .map_err(|e| ConfigError::Invalid(format!("cannot add the connection_id extension: {e}")))
}

/// A CID as hex, for logs and the examples' output (`-` for an empty one).
pub fn to_hex(cid: &[u8]) -> String {
    if cid.is_empty() {
        return "-".to_owned();
    }
    cid.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_body_is_a_length_and_the_cid() {
        assert_eq!(parse_body(&[0]).unwrap(), &[] as &[u8]);
        assert_eq!(parse_body(&[2, 7, 8]).unwrap(), &[7, 8]);
        for bad in [&[][..], &[1][..], &[2, 7][..], &[1, 7, 8][..]] {
            assert!(parse_body(bad).is_err(), "{bad:?}");
        }
        assert_eq!(body(&[9, 9]), vec![2, 9, 9]);
    }

    #[test]
    fn issued_cids_start_with_the_prefix_and_differ() {
        let s = CidSettings {
            len: 8,
            prefix: vec![0x42],
        };
        s.validate(true).unwrap();
        let (a, b) = (s.generate(), s.generate());
        assert_eq!((a.len(), a[0], b[0]), (8, 0x42, 0x42));
        assert_ne!(a, b);
        let too_long = CidSettings {
            len: 17,
            prefix: vec![],
        };
        assert!(too_long.validate(false).is_err());
        let prefix_too_long = CidSettings {
            len: 1,
            prefix: vec![1, 2],
        };
        assert!(prefix_too_long.validate(true).is_err());
        // At least four random bytes after the prefix.
        let short = |len, prefix: &[u8]| CidSettings {
            len,
            prefix: prefix.to_vec(),
        };
        assert!(short(4, &[0]).validate(true).is_err());
        assert!(short(5, &[0]).validate(true).is_ok());
        assert!(short(4, &[]).validate(true).is_ok());
        assert!(CidSettings {
            len: 0,
            prefix: vec![]
        }
        .validate(true)
        .is_err());
        assert!(CidSettings {
            len: 0,
            prefix: vec![]
        }
        .validate(false)
        .is_ok());
        assert_eq!(to_hex(&[]), "-");
        assert_eq!(to_hex(&[0, 0xab]), "00ab");
    }
}
