//! A datagram parsed once ([`Parsed`]): its records as checked views and what it is. The endpoint
//! routes by it, the session filters and feeds by it, the compact layer opens its records and the
//! BIO copies kept records from it: nothing after [`parse`] walks the datagram's bytes again.

use super::handshake::{client_hello_info, starts_client_hello};
use super::record::records_cid;
use super::{Datagram, DropReason, RecordHeader};

/// Records one datagram may carry; a datagram with more is dropped
/// ([`DropReason::TooManyRecords`]). A genuine flight packs a handful up to the MTU.
pub(crate) const MAX_RECORDS: usize = 32;

/// One datagram, parsed: see the [module documentation](self).
///
/// The records are kept as their end offsets (64 bytes, not 32 views, so that making one costs
/// next to nothing on the established path); [`records`](Self::records) hands out views made by
/// slicing at those offsets, with no check repeated.
#[derive(Debug, Clone)]
pub(crate) struct Parsed<'a> {
    datagram: &'a [u8],
    /// The receiver's Connection ID length the records were parsed with (0: none).
    cid_len: u8,
    ends: [u16; MAX_RECORDS],
    len: usize,
    kind: Datagram,
}

/// Parses `datagram` into its records (each checked: content type, version, length) and
/// classifies it: a lone epoch-0 ClientHello, or records. Errors are the reasons to drop it.
pub(crate) fn parse(datagram: &[u8]) -> Result<Parsed<'_>, DropReason> {
    parse_cid(datagram, 0)
}

/// [`parse`] for a receiver whose Connection IDs are `cid_len` bytes long (RFC 9146): its
/// `tls12_cid` records (type 25) are then well formed; with 0 they are
/// [`DropReason::BadContentType`].
pub(crate) fn parse_cid(datagram: &[u8], cid_len: u8) -> Result<Parsed<'_>, DropReason> {
    if datagram.is_empty() {
        return Err(DropReason::Empty);
    }
    let mut parsed = Parsed {
        datagram,
        cid_len,
        ends: [0; MAX_RECORDS],
        len: 0,
        kind: Datagram::Records {
            first_epoch: 0,
            records: 0,
        },
    };
    let mut first = None;
    let mut end = 0usize;
    for record in records_cid(datagram, usize::from(cid_len)) {
        let record = record?;
        first.get_or_insert(record);
        end += record.total_len();
        let slot = parsed
            .ends
            .get_mut(parsed.len)
            .ok_or(DropReason::TooManyRecords)?;
        // A datagram is at most 65,535 bytes (a UDP payload); a larger one is no datagram.
        *slot = u16::try_from(end).map_err(|_| DropReason::Oversized)?;
        parsed.len += 1;
    }
    // A non-empty datagram yields at least one record or an error; this is only defensive.
    let first = first.ok_or(DropReason::TooShort)?;
    parsed.kind = if parsed.len == 1 && starts_client_hello(&first) {
        Datagram::ClientHello(client_hello_info(&first)?)
    } else {
        Datagram::Records {
            first_epoch: first.epoch(),
            records: parsed.len,
        }
    };
    Ok(parsed)
}

impl<'a> Parsed<'a> {
    /// The records, in order, as views into the datagram.
    pub(crate) fn records(&self) -> impl Iterator<Item = RecordHeader<'a>> + '_ {
        let datagram = self.datagram;
        let cid_len = usize::from(self.cid_len);
        let mut start = 0usize;
        self.ends[..self.len].iter().filter_map(move |&end| {
            let bytes = datagram.get(start..usize::from(end))?;
            start = usize::from(end);
            RecordHeader::from_parsed(bytes, cid_len)
        })
    }

    /// The Connection ID of the datagram's first `tls12_cid` record, if it has one: the key the
    /// endpoint routes it by (RFC 9146 §6). Every CID record of one datagram is meant for the
    /// same connection; the session drops any whose CID is not its own.
    pub(crate) fn cid(&self) -> Option<&'a [u8]> {
        if self.cid_len == 0 {
            return None;
        }
        self.records().find(RecordHeader::is_cid).map(|r| r.cid())
    }

    /// What the datagram is.
    pub(crate) fn kind(&self) -> Datagram {
        self.kind
    }

    /// The datagram's bytes.
    pub(crate) fn bytes(&self) -> &'a [u8] {
        self.datagram
    }
}
