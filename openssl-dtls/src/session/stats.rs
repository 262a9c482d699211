//! A session's counters ([`SessionStats`]).

#[cfg(doc)]
use super::{Session, MAX_HANDSHAKE_EPOCH1_RECORDS, MAX_RENEGOTIATION_REFUSALS};

/// Counters of one session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionStats {
    /// Datagrams passed to [`Session::handle_datagram`].
    pub datagrams_in: u64,
    /// Datagrams returned by [`Session::poll_transmit`].
    pub datagrams_out: u64,
    /// Application datagrams delivered to [`Session::recv`].
    pub app_in: u64,
    /// Application datagrams accepted by [`Session::send`].
    pub app_out: u64,
    /// Received application datagrams dropped because the receive queue was full.
    pub recv_dropped: u64,
    /// Outgoing datagrams dropped (send queue full, or larger than the transmit buffer).
    pub send_dropped: u64,
    /// Retransmission timeouts that fired.
    pub retransmits: u32,
    /// Protected records dropped because they were shorter than the cipher's nonce plus tag.
    pub dropped_short_records: u64,
    /// Compact mode: records dropped as replays or as older than the 64-record window.
    pub dropped_replayed_records: u64,
    /// Compact mode: records dropped because they did not authenticate (forged, corrupted,
    /// wrong epoch or version).
    pub dropped_unauthenticated_records: u64,
    /// Compact mode: handshake-layer records (a retransmitted final flight, a renegotiation
    /// request) that arrived after the `SSL` was freed, and early records beyond the buffer.
    pub dropped_handshake_records: u64,
    /// Records kept from OpenSSL because it would buffer them (a full ≈ 18 KB read buffer each,
    /// up to 100 per queue): records of epoch 2 or later (DTLS 1.2 without renegotiation never
    /// uses them), and epoch-1 records during the handshake beyond
    /// [`MAX_HANDSHAKE_EPOCH1_RECORDS`].
    pub dropped_excess_records: u64,
    /// Datagrams dropped because their records did not parse (a record cut short, an unknown
    /// content type or version, too many records): nothing of them reached OpenSSL.
    pub dropped_malformed: u64,
    /// Bytes of the datagrams passed to [`Session::handle_datagram`].
    pub bytes_in: u64,
    /// Bytes of the datagrams returned by [`Session::poll_transmit`].
    pub bytes_out: u64,
    /// Unauthenticated (epoch-0) alerts received during the handshake and kept from OpenSSL: a
    /// fatal one is reported only if the handshake then stalls (see
    /// [`Session::handle_timeout`]), so a spoofed alert cannot end it.
    pub held_alerts: u64,
    /// Compact mode, after the hand-off: authenticated renegotiation requests (a ClientHello to
    /// a server, a HelloRequest to a client) answered with a `no_renegotiation` warning, as
    /// OpenSSL does with `SSL_OP_NO_RENEGOTIATION`. Requests beyond
    /// [`MAX_RENEGOTIATION_REFUSALS`] per connection are dropped and counted in
    /// [`dropped_handshake_records`](Self::dropped_handshake_records).
    pub renegotiations_refused: u64,
    /// Records carrying a HelloVerifyRequest that was out of place (to a server, after the
    /// client read a ServerHello or already answered one) or malformed: dropped before OpenSSL,
    /// which would end the handshake with `unexpected_message`.
    pub dropped_hello_verify_requests: u64,
}

/// A counter of rare events (drops, refusals): 32 bits, saturating at `u32::MAX` instead of
/// wrapping. Kept this small so that an idle connection's counters take less room.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Rare(u32);

impl std::ops::AddAssign<u64> for Rare {
    fn add_assign(&mut self, n: u64) {
        self.0 = u32::try_from(u64::from(self.0).saturating_add(n)).unwrap_or(u32::MAX);
    }
}

impl From<Rare> for u64 {
    fn from(r: Rare) -> u64 {
        u64::from(r.0)
    }
}

/// One of a session's traffic counters ([`Counters::add`], [`Counters::get`]).
#[derive(Debug, Clone, Copy)]
pub(super) enum Traffic {
    DatagramsIn,
    DatagramsOut,
    AppIn,
    AppOut,
    RecvDropped,
    SendDropped,
    BytesIn,
    BytesOut,
}

/// A session's counters as it keeps them: the traffic counters (and the queue drops, which
/// traffic can make frequent) as 64-bit values split in two halves, the low ones inline and the
/// high ones in a box made the first time one of them passes 2^32 (once in a connection's life,
/// if ever: an idle connection pays 4 bytes a counter and a pointer); the rare ones in 32
/// saturating bits. Read as [`SessionStats`].
#[derive(Debug, Clone, Default)]
pub(super) struct Counters {
    /// The low 32 bits of each [`Traffic`] counter.
    low: [u32; 8],
    /// The high 32 bits of each, once one is not 0.
    high: Option<Box<[u32; 8]>>,
    pub(super) retransmits: u32,
    pub(super) dropped_short_records: Rare,
    pub(super) dropped_replayed_records: Rare,
    pub(super) dropped_unauthenticated_records: Rare,
    pub(super) dropped_handshake_records: Rare,
    pub(super) dropped_excess_records: Rare,
    pub(super) dropped_malformed: Rare,
    pub(super) held_alerts: Rare,
    pub(super) renegotiations_refused: Rare,
    pub(super) dropped_hello_verify_requests: Rare,
}

impl Counters {
    /// Adds `n` to `counter` (exact up to 2^64 − 1, then saturating).
    #[inline]
    pub(super) fn add(&mut self, counter: Traffic, n: u64) {
        let i = counter as usize;
        let sum = u64::from(self.low[i]).saturating_add(n);
        self.low[i] = sum as u32;
        if sum >> 32 != 0 {
            self.carry(i, sum >> 32);
        }
    }

    /// Carries `carry` into counter `i`'s high half.
    #[cold]
    fn carry(&mut self, i: usize, carry: u64) {
        let high = self.high.get_or_insert_with(Box::default);
        match u32::try_from(u64::from(high[i]) + carry) {
            Ok(h) => high[i] = h,
            Err(_) => {
                high[i] = u32::MAX;
                self.low[i] = u32::MAX;
            }
        }
    }

    /// The value of `counter`.
    pub(super) fn get(&self, counter: Traffic) -> u64 {
        let i = counter as usize;
        let high = self.high.as_ref().map_or(0, |h| h[i]);
        u64::from(high) << 32 | u64::from(self.low[i])
    }

    /// The public form.
    pub(super) fn public(&self) -> SessionStats {
        SessionStats {
            datagrams_in: self.get(Traffic::DatagramsIn),
            datagrams_out: self.get(Traffic::DatagramsOut),
            app_in: self.get(Traffic::AppIn),
            app_out: self.get(Traffic::AppOut),
            recv_dropped: self.get(Traffic::RecvDropped),
            send_dropped: self.get(Traffic::SendDropped),
            retransmits: self.retransmits,
            dropped_short_records: self.dropped_short_records.into(),
            dropped_replayed_records: self.dropped_replayed_records.into(),
            dropped_unauthenticated_records: self.dropped_unauthenticated_records.into(),
            dropped_handshake_records: self.dropped_handshake_records.into(),
            dropped_excess_records: self.dropped_excess_records.into(),
            dropped_malformed: self.dropped_malformed.into(),
            bytes_in: self.get(Traffic::BytesIn),
            bytes_out: self.get(Traffic::BytesOut),
            held_alerts: self.held_alerts.into(),
            renegotiations_refused: self.renegotiations_refused.into(),
            dropped_hello_verify_requests: self.dropped_hello_verify_requests.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rare_counters_saturate_and_read_back() {
        let mut c = Counters::default();
        c.dropped_malformed += 1;
        c.dropped_malformed += 2;
        c.held_alerts += u64::MAX;
        c.held_alerts += 1;
        let s = c.public();
        assert_eq!(s.dropped_malformed, 3);
        assert_eq!(s.held_alerts, u64::from(u32::MAX));
        assert!(std::mem::size_of::<Counters>() < std::mem::size_of::<SessionStats>());
    }

    #[test]
    fn traffic_counters_are_exact_past_32_bits() {
        let mut c = Counters::default();
        c.add(Traffic::BytesIn, u64::from(u32::MAX));
        assert!(c.high.is_none(), "no box below 2^32");
        c.add(Traffic::BytesIn, 2);
        c.add(Traffic::DatagramsOut, 5);
        c.add(Traffic::BytesIn, 3 << 32);
        let s = c.public();
        assert_eq!(s.bytes_in, u64::from(u32::MAX) + 2 + (3 << 32));
        assert_eq!((s.datagrams_out, s.datagrams_in, s.bytes_out), (5, 0, 0));
        c.add(Traffic::AppIn, u64::MAX);
        c.add(Traffic::AppIn, 7);
        assert_eq!(c.get(Traffic::AppIn), u64::MAX, "saturates at the top");
        assert_eq!(
            std::mem::size_of::<Counters>(),
            8 * 4 + 8 + 10 * 4,
            "8 low halves, the box, 10 rare counters"
        );
    }
}
