//! The state behind our datagram `BIO_METHOD` ([`BioState`]): one inbound datagram for OpenSSL's
//! next read, the bounded queue of outgoing datagrams (recycled buffers: steady traffic allocates
//! nothing), coalescing of retransmitted flights up to the MTU, and what OpenSSL's per-`SSL`
//! callbacks record (retransmission timer settings and count, the last alert each way, the peer
//! address and time for the cookie callbacks, the write sequence numbers the compact hand-off
//! continues). Safe code: the `BIO_METHOD` itself and its callbacks are the FFI edge, in
//! [`crate::ffi::bio`].
//!
//! OpenSSL 3.0 has no `BIO_s_dgram_mem` (3.2+), and `BIO_s_mem` merges datagrams, so this BIO is
//! ours. Each `BIO_read` hands OpenSSL exactly one queued datagram (the rest of a datagram larger
//! than OpenSSL's buffer is discarded, as `recvfrom` would); each `BIO_write` is one outgoing
//! datagram, never split or merged later. Writes always succeed: the BIO never asks OpenSSL to
//! retry a write (a datagram that does not fit the bounded outgoing queue is dropped and counted,
//! which to OpenSSL looks like loss on the network).
//!
//! The BIO answers the datagram ctrls OpenSSL's DTLS code issues: MTU query/get/set (the link MTU
//! we configure), MTU overhead (0: our MTU counts UDP payload), "MTU exceeded" (never), peer
//! get/set (the address the session belongs to, for `DTLSv1_listen`), pending, flush.
//!
//! Outgoing datagrams live in recycled buffers: after the first few datagrams of a connection,
//! steady-state traffic allocates nothing.
//!
//! The same heap block ([`BioState`]) carries what OpenSSL's per-`SSL` callbacks need (the
//! retransmission timer settings and count, the last alert sent and received, the peer address and
//! the current time for the cookie callbacks): a callback reaches it through `SSL_get_rbio`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::alert::Alert;

/// Spare outgoing buffers kept for reuse; a flight rarely needs more.
pub(crate) const MAX_SPARE_BUFFERS: usize = 8;

/// Retransmission timer settings, read by the `DTLS_set_timer_cb` callback.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimerSettings {
    pub initial: Duration,
    pub max: Duration,
}

/// Everything the Rust side keeps per `SSL`, owned by that `SSL`'s BIO.
#[derive(Debug)]
pub(crate) struct BioState {
    /// The datagram OpenSSL reads next (valid when `inbound_ready`).
    pub(crate) inbound: Vec<u8>,
    pub(crate) inbound_ready: bool,
    /// A datagram lent for the duration of one feed instead of copied into `inbound`
    /// ([`crate::ffi::bio::with_lent_inbound`]); read in place by the BIO's read callback.
    pub(crate) lent: Option<(*const u8, usize)>,
    /// The longest epoch-1 handshake record (a peer's Finished, or a fragment of it) among the
    /// records queued by [`set_inbound_records`](Self::set_inbound_records), in bytes; 0 if none.
    pub(crate) inbound_epoch1_handshake_len: usize,
    /// Datagrams OpenSSL wrote, oldest first.
    outbound: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    max_outbound: usize,
    /// Datagrams dropped because the outgoing queue was full.
    pub outbound_dropped: u64,
    /// Link MTU (UDP payload bytes) reported to OpenSSL.
    pub mtu: usize,
    /// The peer this `SSL` talks to (answers `BIO_CTRL_DGRAM_GET_PEER`, read by cookie callbacks).
    pub peer: Option<SocketAddr>,
    /// The caller's clock at the current call (for the cookie callbacks' secret rotation).
    pub now: Option<Instant>,
    pub timer: TimerSettings,
    /// Retransmission timeouts that fired so far (counted by the timer callback).
    pub timeouts: u32,
    pub alert_received: Option<Alert>,
    pub alert_sent: Option<Alert>,
    /// `DTLSv1_listen`'s peek mode: reads leave the datagram in place.
    pub(crate) peek: bool,
    /// The next sequence number of an epoch-0 record we would send (from the headers of the
    /// epoch-0 records OpenSSL wrote), for an alert we write ourselves.
    pub epoch0_next_seq: u64,
    /// Set by the listener when `DTLSv1_listen` accepted a ClientHello: that record's sequence
    /// number, where our epoch-0 records continue (see [`write`](Self::write)). Taken by the
    /// first epoch-0 record OpenSSL writes, which fixes [`epoch0_shift`](Self::epoch0_shift).
    pub(crate) epoch0_continue_from: Option<u64>,
    /// Added to the sequence number of every epoch-0 record OpenSSL writes (0: none).
    epoch0_shift: u64,
    /// Track [`epoch1_next_seq`](Self::epoch1_next_seq) (compact mode only: it costs a header
    /// parse per outgoing datagram).
    pub track_epoch1: bool,
    /// The next sequence number of an epoch-1 record, from the headers of the epoch-1 records
    /// OpenSSL wrote: where the compact record layer continues after the hand-off, so that no
    /// sequence number (and so no AEAD nonce) is ever used twice.
    pub epoch1_next_seq: u64,
    /// The first 8 bytes of the newest epoch-1 record OpenSSL wrote: its explicit nonce under
    /// GCM and CCM (OpenSSL's GCM nonces count up from a random start, not from the sequence).
    pub epoch1_last_explicit: Option<[u8; 8]>,
    /// Append writes to the last queued datagram while it stays within the MTU (set while
    /// OpenSSL may retransmit a flight, which it does one message per write).
    pub coalesce: bool,
}

impl BioState {
    pub(crate) fn new(mtu: usize, max_outbound: usize, timer: TimerSettings) -> BioState {
        BioState {
            inbound: Vec::new(),
            lent: None,
            inbound_epoch1_handshake_len: 0,
            inbound_ready: false,
            outbound: VecDeque::new(),
            spare: Vec::new(),
            max_outbound,
            outbound_dropped: 0,
            mtu,
            peer: None,
            now: None,
            timer,
            timeouts: 0,
            alert_received: None,
            alert_sent: None,
            peek: false,
            epoch0_next_seq: 0,
            epoch0_continue_from: None,
            epoch0_shift: 0,
            track_epoch1: false,
            epoch1_next_seq: 0,
            epoch1_last_explicit: None,
            coalesce: false,
        }
    }

    /// Queues `datagram` as the next thing OpenSSL reads, replacing any unread one.
    pub fn set_inbound(&mut self, datagram: &[u8]) {
        self.lent = None;
        self.inbound.clear();
        self.inbound.extend_from_slice(datagram);
        self.inbound_ready = true;
    }

    /// Queues `records` (views into one datagram), back to back, as the next thing OpenSSL reads:
    /// the records a filter kept. Notes the longest epoch-1 handshake record among them.
    pub fn set_inbound_records<'a>(
        &mut self,
        records: impl Iterator<Item = crate::wire::RecordHeader<'a>>,
    ) {
        self.lent = None;
        self.inbound.clear();
        self.inbound_epoch1_handshake_len = 0;
        for record in records {
            if record.epoch() == 1 && record.content_type() == crate::wire::ContentType::Handshake {
                self.inbound_epoch1_handshake_len = self
                    .inbound_epoch1_handshake_len
                    .max(record.fragment().len());
            }
            self.inbound.extend_from_slice(record.bytes());
        }
        self.inbound_ready = !self.inbound.is_empty();
    }

    /// Whether a datagram waits for OpenSSL to read it.
    pub fn has_inbound(&self) -> bool {
        self.inbound_ready
    }

    /// Moves every queued outgoing datagram to the back of `to`, oldest first.
    pub fn drain_outbound(&mut self, to: &mut VecDeque<Vec<u8>>) {
        to.extend(self.outbound.drain(..));
    }

    /// Puts datagrams taken with [`drain_outbound`](Self::drain_outbound) back, in order, as
    /// they are (a session rewrote some of their records).
    pub fn requeue_outbound(&mut self, datagrams: VecDeque<Vec<u8>>) {
        let mut datagrams = datagrams;
        datagrams.append(&mut self.outbound);
        self.outbound = datagrams;
    }

    /// Discards an unread inbound datagram.
    pub fn clear_inbound(&mut self) {
        self.lent = None;
        self.inbound_ready = false;
    }

    /// Moves the oldest outgoing datagram into `buf`. `Some(len)`: the datagram's length; if it
    /// is longer than `buf` it is dropped (counted) and `Some(0)` is never returned for it: the
    /// next datagram is tried instead.
    pub fn pop_outbound(&mut self, buf: &mut [u8]) -> Option<usize> {
        let spare = &mut self.spare;
        pop_datagram(&mut self.outbound, buf, &mut self.outbound_dropped, |d| {
            recycle_into(spare, d)
        })
    }

    /// Number of outgoing datagrams waiting.
    pub fn outbound_len(&self) -> usize {
        self.outbound.len()
    }

    /// Queues a datagram we made ourselves (not OpenSSL): numbered already, from
    /// [`epoch0_next_seq`](Self::epoch0_next_seq), so never shifted.
    pub fn push_outbound(&mut self, data: &[u8]) {
        self.write_records(data);
    }

    /// Queues what OpenSSL wrote (one or more records, or a datagram we made).
    ///
    /// After `DTLSv1_listen`, OpenSSL 3.0 numbers the server's epoch-0 records from the accepted
    /// ClientHello's record sequence number; 3.5 and later (seen in 3.5, 3.6 and 4.0: the record
    /// layer was rewritten in 3.2) from 1, whatever the ClientHello's. A client whose retransmitted ClientHellos each meet a fresh,
    /// stateless server `SSL` then gets the same record numbers again, handshake after handshake:
    /// GnuTLS discards a refusal alert numbered like one it already saw, and retransmits until its
    /// own timeout. So epoch-0 records continue from the ClientHello's number on every version, as
    /// 3.0 does (RFC 6347 §4.2.1 asks the same of the HelloVerifyRequest, for the same reason):
    /// plaintext records, whose numbers nothing authenticates.
    pub(crate) fn write(&mut self, data: &[u8]) {
        if data.get(3..5) == Some(&[0, 0])
            && (self.epoch0_continue_from.is_some() || self.epoch0_shift != 0)
            && is_record_sequence(data)
        {
            let mut patched = self.spare.pop().unwrap_or_default();
            patched.clear();
            patched.extend_from_slice(data);
            self.shift_epoch0(&mut patched);
            self.write_records(&patched);
            recycle_into(&mut self.spare, patched);
            return;
        }
        self.write_records(data);
    }

    /// Adds [`epoch0_shift`](Self::epoch0_shift) to the sequence number of each epoch-0 record
    /// of `records` (whole records back to back), fixing the shift at the first one if the
    /// listener left a number to continue from. A number that would leave 48 bits stays.
    fn shift_epoch0(&mut self, records: &mut [u8]) {
        const SEQ_LIMIT: u64 = 1 << 48;
        let mut at = 0;
        while let Some(header) = records.get_mut(at..at + crate::wire::RECORD_HEADER_LEN) {
            let len = usize::from(u16::from_be_bytes([header[11], header[12]]));
            if header[3..5] == [0, 0] {
                let mut seq = [0u8; 8];
                seq[2..].copy_from_slice(&header[5..11]);
                let seq = u64::from_be_bytes(seq);
                if let Some(from) = self.epoch0_continue_from.take() {
                    self.epoch0_shift = from.saturating_sub(seq);
                }
                let shifted = seq + self.epoch0_shift;
                if shifted < SEQ_LIMIT {
                    header[5..11].copy_from_slice(&shifted.to_be_bytes()[2..]);
                }
            }
            at += crate::wire::RECORD_HEADER_LEN + len;
        }
    }

    fn write_records(&mut self, data: &[u8]) {
        // Epoch-0 records only occur during the handshake: established traffic skips this scan
        // unless compact mode needs the epoch-1 write sequence.
        if data.get(3..5) == Some(&[0, 0]) || self.track_epoch1 {
            for record in crate::wire::records(data).flatten() {
                let next = record.sequence() + 1;
                match record.epoch() {
                    0 => self.epoch0_next_seq = self.epoch0_next_seq.max(next),
                    1 if self.track_epoch1 && next > self.epoch1_next_seq => {
                        self.epoch1_next_seq = next;
                        self.epoch1_last_explicit = record
                            .fragment()
                            .first_chunk::<8>()
                            .copied()
                            .or(self.epoch1_last_explicit);
                    }
                    _ => {}
                }
            }
        }
        // OpenSSL 3.0 packs a flight into one write, and its MTU arithmetic leaves out the AEAD
        // nonce and tag of encrypted handshake records: a flight ending in Finished can exceed
        // the MTU by up to 24 bytes. A record never spans datagrams but a datagram may carry
        // several (RFC 6347 §4.1.1), so such a write goes out split at record boundaries.
        if data.len() > self.mtu && is_record_sequence(data) {
            let (mut start, mut end) = (0, 0);
            for record in crate::wire::records(data).flatten() {
                if end > start && end - start + record.total_len() > self.mtu {
                    self.queue(&data[start..end]);
                    start = end;
                }
                end += record.total_len();
            }
            self.queue(&data[start..end]);
            return;
        }
        self.queue(data);
    }

    /// Queues one outgoing datagram, or (while `coalesce` is set) appends it to the last queued
    /// one if both fit the MTU together.
    fn queue(&mut self, data: &[u8]) {
        // OpenSSL retransmits a flight one message per write: each extra datagram is one more
        // chance to lose the flight, and the retransmissions per flight are capped (12). Whole
        // records may share a datagram (RFC 6347 §4.1.1), so pack them up to the MTU. Never a
        // ClientHello: the server's DTLSv1_listen (and our pre-parser) take it only alone.
        if self.coalesce && !crate::wire::is_client_hello(data) {
            if let Some(last) = self.outbound.back_mut() {
                if !last.is_empty()
                    && last.len() + data.len() <= self.mtu
                    && !crate::wire::is_client_hello(last)
                {
                    last.extend_from_slice(data);
                    return;
                }
            }
        }
        if self.outbound.len() >= self.max_outbound {
            self.outbound_dropped += 1;
            return;
        }
        let mut buf = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.mtu.max(data.len())));
        buf.extend_from_slice(data);
        self.outbound.push_back(buf);
    }

    pub(crate) fn read(&mut self, out: &mut [u8]) -> Option<usize> {
        if !self.inbound_ready {
            return None;
        }
        let n = self.inbound.len().min(out.len());
        out[..n].copy_from_slice(&self.inbound[..n]);
        if !self.peek {
            self.inbound_ready = false;
        }
        Some(n)
    }
}

/// Keeps `datagram` as a spare buffer if fewer than [`MAX_SPARE_BUFFERS`] are kept.
fn recycle_into(spare: &mut Vec<Vec<u8>>, mut datagram: Vec<u8>) {
    if spare.len() < MAX_SPARE_BUFFERS {
        datagram.clear();
        spare.push(datagram);
    }
}

/// Moves the oldest datagram of `queue` into `buf` and returns its length. A datagram longer
/// than `buf` is dropped (counted in `dropped`), never truncated, and the next one is tried.
/// Every datagram taken off the queue goes to `recycle`.
pub(crate) fn pop_datagram(
    queue: &mut VecDeque<Vec<u8>>,
    buf: &mut [u8],
    dropped: &mut u64,
    mut recycle: impl FnMut(Vec<u8>),
) -> Option<usize> {
    while let Some(datagram) = queue.pop_front() {
        let len = datagram.len();
        let fits = len <= buf.len();
        if fits {
            buf[..len].copy_from_slice(&datagram);
        } else {
            *dropped += 1;
            log::warn!(
                "dropping a {len}-byte datagram: transmit buffer holds {}",
                buf.len()
            );
        }
        recycle(datagram);
        if fits {
            return Some(len);
        }
    }
    None
}

/// True if `data` is one or more whole, well-formed DTLS records back to back.
fn is_record_sequence(data: &[u8]) -> bool {
    let mut total = 0;
    for record in crate::wire::records(data) {
        match record {
            Ok(record) => total += record.total_len(),
            Err(_) => return false,
        }
    }
    total == data.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> BioState {
        BioState::new(
            1200,
            4,
            TimerSettings {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(10),
            },
        )
    }

    #[test]
    fn each_read_returns_exactly_one_datagram() {
        let mut s = state();
        s.set_inbound(b"first");
        let mut out = [0u8; 64];
        assert_eq!(s.read(&mut out), Some(5));
        assert_eq!(&out[..5], b"first");
        assert_eq!(s.read(&mut out), None, "a datagram is read once");
    }

    #[test]
    fn a_short_read_buffer_truncates_like_recvfrom() {
        let mut s = state();
        s.set_inbound(b"0123456789");
        let mut out = [0u8; 4];
        assert_eq!(s.read(&mut out), Some(4));
        assert_eq!(s.read(&mut out), None, "the rest of the datagram is gone");
    }

    #[test]
    fn writes_keep_boundaries_and_buffers_are_recycled() {
        let mut s = state();
        s.write(b"aa");
        s.write(b"bbb");
        let mut out = [0u8; 16];
        assert_eq!(s.pop_outbound(&mut out), Some(2));
        assert_eq!(&out[..2], b"aa");
        assert_eq!(s.pop_outbound(&mut out), Some(3));
        assert_eq!(&out[..3], b"bbb");
        assert_eq!(s.pop_outbound(&mut out), None);
        assert_eq!(s.spare.len(), 2);
        let caps: Vec<usize> = s.spare.iter().map(Vec::capacity).collect();
        s.write(b"c");
        // The buffer came from the spare list: no new allocation.
        assert_eq!(s.spare.len(), 1);
        assert!(caps.contains(&s.outbound[0].capacity()));
    }

    /// A DTLS 1.2 record of `len` payload bytes in `epoch`, starting a ClientHello if `hello`.
    fn record(epoch: u8, len: usize, hello: bool) -> Vec<u8> {
        let mut r = vec![22, 0xFE, 0xFD, 0, epoch, 0, 0, 0, 0, 0, 1];
        r.extend_from_slice(&(len as u16).to_be_bytes());
        r.resize(13 + len, 0);
        if hello {
            r[13] = 1; // msg_type client_hello
        }
        r
    }

    /// `record` numbered `seq`.
    fn numbered(epoch: u8, seq: u64, len: usize) -> Vec<u8> {
        let mut r = record(epoch, len, false);
        r[5..11].copy_from_slice(&seq.to_be_bytes()[2..]);
        r
    }

    /// The (epoch, sequence number) of each record of each queued datagram.
    fn queued_numbers(s: &mut BioState) -> Vec<Vec<(u16, u64)>> {
        let mut out = [0u8; 2048];
        let mut all = Vec::new();
        while let Some(n) = s.pop_outbound(&mut out) {
            let records = crate::wire::records(&out[..n]).flatten();
            all.push(records.map(|r| (r.epoch(), r.sequence())).collect());
        }
        all
    }

    #[test]
    fn after_listen_epoch0_records_continue_from_the_client_hellos_number() {
        // OpenSSL 3.2 and later: the first record after DTLSv1_listen is number 1; the accepted
        // ClientHello was number 4 (its fourth retransmission).
        let mut s = state();
        s.epoch0_continue_from = Some(4);
        s.write(&numbered(0, 1, 10));
        s.write(&[numbered(0, 2, 10), numbered(0, 3, 1), numbered(1, 0, 30)].concat());
        s.write(&numbered(1, 1, 30)); // established traffic: untouched
        assert_eq!(
            queued_numbers(&mut s),
            [vec![(0, 4)], vec![(0, 5), (0, 6), (1, 0)], vec![(1, 1)]]
        );
        // Our own alert is numbered from what went out, and not shifted again.
        assert_eq!(s.epoch0_next_seq, 7);
        s.push_outbound(&crate::wire::plaintext_alert(
            0xFEFD,
            s.epoch0_next_seq,
            2,
            51,
        ));
        assert_eq!(queued_numbers(&mut s), [vec![(0, 7)]]);

        // OpenSSL 3.0 numbers from the ClientHello's itself: nothing to shift.
        let mut s = state();
        s.epoch0_continue_from = Some(4);
        s.write(&numbered(0, 4, 10));
        s.write(&numbered(0, 5, 10));
        assert_eq!(queued_numbers(&mut s), [vec![(0, 4)], vec![(0, 5)]]);

        // A number that would leave 48 bits stays as it is.
        let mut s = state();
        s.epoch0_continue_from = Some((1 << 48) - 1);
        s.write(&numbered(0, 1, 10));
        s.write(&numbered(0, 2, 10));
        assert_eq!(
            queued_numbers(&mut s),
            [vec![(0, (1 << 48) - 1)], vec![(0, 2)]]
        );
    }

    fn queued_lengths(s: &mut BioState) -> Vec<usize> {
        let mut out = [0u8; 2048];
        std::iter::from_fn(|| s.pop_outbound(&mut out)).collect()
    }

    #[test]
    fn a_write_over_the_mtu_is_split_at_record_boundaries() {
        let timer = state().timer;
        let mut s = BioState::new(100, 8, timer);
        // 63 + 43 + 53 bytes: the first record alone, the other two together.
        let flight = [
            record(1, 50, false),
            record(1, 30, false),
            record(1, 40, false),
        ];
        s.write(&flight.concat());
        assert_eq!(queued_lengths(&mut s), [63, 96]);
        // Not a clean run of records: left as it is.
        s.write(&[7u8; 150]);
        assert_eq!(queued_lengths(&mut s), [150]);
    }

    #[test]
    fn coalescing_packs_writes_up_to_the_mtu_but_never_a_client_hello() {
        let timer = state().timer;
        let mut s = BioState::new(100, 8, timer);
        s.coalesce = true;
        for _ in 0..3 {
            s.write(&record(1, 27, false)); // 40 bytes each: two fit, the third starts anew
        }
        assert_eq!(queued_lengths(&mut s), [80, 40]);
        s.write(&record(0, 27, true));
        s.write(&record(0, 27, false));
        s.write(&record(0, 27, true));
        assert_eq!(queued_lengths(&mut s), [40, 40, 40]);
        s.coalesce = false;
        s.write(&record(1, 27, false));
        s.write(&record(1, 27, false));
        assert_eq!(queued_lengths(&mut s), [40, 40]);
    }

    #[test]
    fn a_full_outgoing_queue_drops_and_counts() {
        let mut s = state();
        for _ in 0..6 {
            s.write(b"x");
        }
        assert_eq!(s.outbound_len(), 4);
        assert_eq!(s.outbound_dropped, 2);
    }

    #[test]
    fn a_datagram_larger_than_the_transmit_buffer_is_dropped_not_truncated() {
        let mut s = state();
        s.write(&[7u8; 100]);
        s.write(b"ok");
        let mut out = [0u8; 10];
        assert_eq!(s.pop_outbound(&mut out), Some(2));
        assert_eq!(&out[..2], b"ok");
        assert_eq!(s.outbound_dropped, 1);
    }
}
