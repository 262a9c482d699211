//! A datagram parsed once ([`Parsed`]): its records as checked views and what it is. The endpoint
//! routes by it, the session filters and feeds by it, the compact layer opens its records and the
//! BIO copies kept records from it: nothing after [`parse`] walks the datagram's bytes again.

use super::handshake::{client_hello_info, starts_client_hello};
use super::record::records;
use super::{Datagram, DropReason, RecordHeader};

/// Records one datagram may carry; a datagram with more is dropped
/// ([`DropReason::TooManyRecords`]). A genuine flight packs a handful up to the MTU.
pub(crate) const MAX_RECORDS: usize = 32;

/// One datagram, parsed: see the [module documentation](self).
#[derive(Debug, Clone)]
pub(crate) struct Parsed<'a> {
    datagram: &'a [u8],
    records: [Option<RecordHeader<'a>>; MAX_RECORDS],
    len: usize,
    kind: Datagram,
}

/// Parses `datagram` into its records (each checked: content type, version, length) and
/// classifies it: a lone epoch-0 ClientHello, or records. Errors are the reasons to drop it.
pub(crate) fn parse(datagram: &[u8]) -> Result<Parsed<'_>, DropReason> {
    if datagram.is_empty() {
        return Err(DropReason::Empty);
    }
    let mut parsed = Parsed {
        datagram,
        records: [None; MAX_RECORDS],
        len: 0,
        kind: Datagram::Records {
            first_epoch: 0,
            records: 0,
        },
    };
    for record in records(datagram) {
        let record = record?;
        let slot = parsed
            .records
            .get_mut(parsed.len)
            .ok_or(DropReason::TooManyRecords)?;
        *slot = Some(record);
        parsed.len += 1;
    }
    // A non-empty datagram yields at least one record or an error; this is only defensive.
    let first = parsed.records[0].ok_or(DropReason::TooShort)?;
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
    /// The records, in order.
    pub(crate) fn records(&self) -> impl Iterator<Item = &RecordHeader<'a>> + '_ {
        self.records[..self.len].iter().flatten()
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
