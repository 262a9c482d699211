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

/// A session's counters as it keeps them: the traffic counters (and the queue drops, which
/// traffic can make frequent) in 64 bits, the rare ones in 32 saturating bits. Read as
/// [`SessionStats`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counters {
    pub(super) datagrams_in: u64,
    pub(super) datagrams_out: u64,
    pub(super) app_in: u64,
    pub(super) app_out: u64,
    pub(super) recv_dropped: u64,
    pub(super) send_dropped: u64,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
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
    /// The public form.
    pub(super) fn public(&self) -> SessionStats {
        SessionStats {
            datagrams_in: self.datagrams_in,
            datagrams_out: self.datagrams_out,
            app_in: self.app_in,
            app_out: self.app_out,
            recv_dropped: self.recv_dropped,
            send_dropped: self.send_dropped,
            retransmits: self.retransmits,
            dropped_short_records: self.dropped_short_records.into(),
            dropped_replayed_records: self.dropped_replayed_records.into(),
            dropped_unauthenticated_records: self.dropped_unauthenticated_records.into(),
            dropped_handshake_records: self.dropped_handshake_records.into(),
            dropped_excess_records: self.dropped_excess_records.into(),
            dropped_malformed: self.dropped_malformed.into(),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
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
}
