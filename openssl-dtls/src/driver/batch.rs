//! Datagram batches for both drivers: [`RecvBatch`] (the buffers `recvmmsg(2)` fills, and the
//! split of a GRO train back into its datagrams), [`SendBatch`] (the endpoint's output gathered
//! for one `sendmmsg(2)`, runs of equal-size datagrams to one peer grouped for UDP GSO), and
//! [`SocketCounters`] (what the socket dropped, for the statistics).
//!
//! Every buffer is allocated once, with the driver, and reused every turn: receiving and
//! sending allocate nothing per datagram. Memory is bounded and chosen as follows:
//!
//! | buffer | size | why |
//! |---|---|---|
//! | receive slots | [`RECV_SLOTS`] × 64 KiB = 1 MiB | a slot takes any datagram (≤ 65,507 bytes) or a GRO train (≤ 64 KiB, up to 64 datagrams) without truncation, so no slot size guesses what peers send. The memory is zeroed on allocation (`calloc`, fresh zero pages): the kernel maps a page only once a datagram reaches it, so traffic of 1,200-byte datagrams keeps about one page per slot resident. 16 per call already makes the system-call cost per datagram small; more slots would add memory, not speed |
//! | receive control | 96 bytes per slot | `UDP_GRO` and `SO_RXQ_OVFL`, with room to spare |
//! | send buffer | 192 KiB | up to 128 KiB of datagrams per `sendmmsg`, plus a 64 KiB window for the next one of any size |
//! | send messages | [`MAX_DATAGRAMS`] entries | at most this many datagrams per batch |

use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use super::RX_BUFFER;
use crate::endpoint::{Endpoint, EndpointStats};
use crate::ffi::os::{self, RecvControl, RecvMeta, SendMsg, MAX_BATCH, RECV_CONTROL_WORDS};

/// Datagrams (or GRO trains) one `recvmmsg(2)` call can take: the number of 64 KiB receive
/// slots.
pub(crate) const RECV_SLOTS: usize = 16;
/// The send buffer: two batches' worth of datagrams plus a window for the next.
const TX_BYTES: usize = 3 * RX_BUFFER;
/// The most datagrams one send batch gathers.
pub(crate) const MAX_DATAGRAMS: usize = 256;
/// The most bytes one GSO message carries (under the 65,507 a UDP datagram over IPv4 can, with
/// room for the headers the kernel adds to each segment).
const GSO_MAX_BYTES: usize = 65_000;
/// The most segments one GSO message carries (the kernel's `UDP_MAX_SEGMENTS` before 6.x).
const GSO_MAX_SEGMENTS: usize = 64;

/// The receive buffers of a driver: [`RECV_SLOTS`] slots of 64 KiB, their control-message
/// space, and where the last [`recv`](Self::recv) put each datagram.
pub(crate) struct RecvBatch {
    data: Vec<u8>,
    control: Vec<[u64; RECV_CONTROL_WORDS]>,
    meta: Vec<RecvMeta>,
    len: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slots", &self.meta.len())
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            data: vec![0; RECV_SLOTS * RX_BUFFER],
            control: vec![[0; RECV_CONTROL_WORDS]; RECV_SLOTS],
            meta: vec![RecvMeta::default(); RECV_SLOTS],
            len: 0,
        }
    }
}

impl RecvBatch {
    /// Receives up to `max` datagrams (at most [`RECV_SLOTS`]) from `fd` without blocking
    /// (`recvmmsg(2)`; one per call on Unix systems other than Linux). Returns how many
    /// arrived; `WouldBlock` if none was queued.
    pub fn recv(&mut self, fd: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        self.len = 0;
        let slots = max.clamp(1, RECV_SLOTS);
        let n = os::recv_batch(
            fd,
            &mut self.data[..slots * RX_BUFFER],
            RX_BUFFER,
            &mut self.control[..slots],
            &mut self.meta[..slots],
        )?;
        self.len = n;
        Ok(n)
    }

    /// The `i`-th datagram of the last receive: its sender, its bytes (several datagrams if
    /// the kernel coalesced them: see [`split`]), and its control messages.
    pub fn get(&self, i: usize) -> Option<(Option<SocketAddr>, &[u8], RecvControl)> {
        let meta = self.meta.get(i)?;
        let data = self.data.get(i * RX_BUFFER..)?.get(..meta.len)?;
        Some((meta.peer, data, meta.control))
    }
}

/// Splits what one receive slot holds into datagrams: `data` itself, or, for a GRO train
/// (`segment` from the `UDP_GRO` control message), consecutive `segment`-byte datagrams (the
/// last may be shorter).
pub(crate) fn split(data: &[u8], segment: Option<usize>) -> std::slice::Chunks<'_, u8> {
    let size = match segment {
        Some(s) if s > 0 => s,
        _ => data.len().max(1),
    };
    data.chunks(size)
}

/// What the socket dropped, kept by the driver beside the endpoint, for
/// [`EndpointStats`]' `socket_*` counters.
#[derive(Debug, Default, Clone)]
pub(crate) struct SocketCounters {
    /// Datagrams the kernel dropped because the receive buffer was full, summed over the
    /// sockets the driver used.
    rx_dropped: u64,
    /// The socket's counter (`SO_RXQ_OVFL`) when last seen.
    rx_last: Option<u32>,
    /// Datagrams the socket refused with an error other than `WouldBlock`.
    pub send_errors: u64,
    /// Datagrams dropped because the socket's send buffer was full (and, in the tokio driver,
    /// its backlog too).
    pub send_full: u64,
}

impl SocketCounters {
    /// Takes in what the kernel said of a received datagram: the socket's drop counter
    /// (`SO_RXQ_OVFL`) and whether it was cut off (`MSG_TRUNC`/`MSG_CTRUNC`, counted as one
    /// dropped datagram in `socket_rx_dropped`).
    pub fn note_received(&mut self, control: &RecvControl) {
        if control.truncated {
            // Part of a GRO train (or its control messages) did not fit in the slot: at least
            // one datagram lost on our side of the socket.
            self.rx_dropped += 1;
        }
        self.note_rx_dropped(control.rx_dropped);
    }

    /// Takes in the socket's drop counter from a received datagram's `SO_RXQ_OVFL`. The kernel
    /// counter only grows; a smaller value is a new socket (a client's rebind) or a wrap, and
    /// counts from zero.
    pub fn note_rx_dropped(&mut self, counter: Option<u32>) {
        let Some(now) = counter else {
            return;
        };
        let new = match self.rx_last {
            Some(last) if now >= last => now - last,
            _ => now,
        };
        self.rx_dropped += u64::from(new);
        self.rx_last = Some(now);
    }

    /// Adds these counters to `stats` (an endpoint's, which has none of its own).
    pub fn add_to(&self, stats: &mut EndpointStats) {
        stats.socket_rx_dropped += self.rx_dropped;
        stats.socket_send_errors += self.send_errors;
        stats.socket_send_full += self.send_full;
    }
}

/// The endpoint's output gathered for one `sendmmsg(2)`: the datagrams back to back in one
/// buffer, as messages of one datagram or, with GSO, of a run of equal-size datagrams to one
/// peer (the last may be shorter).
pub(crate) struct SendBatch {
    buf: Vec<u8>,
    used: usize,
    msgs: Vec<SendMsg>,
    /// Scratch for [`ungroup_from`](Self::ungroup_from).
    spare: Vec<SendMsg>,
    datagrams: usize,
    /// Whether the last message may take one more segment.
    open: bool,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("messages", &self.msgs.len())
            .field("datagrams", &self.datagrams)
            .finish_non_exhaustive()
    }
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            buf: vec![0; TX_BYTES],
            used: 0,
            msgs: Vec::with_capacity(MAX_DATAGRAMS),
            spare: Vec::with_capacity(MAX_DATAGRAMS),
            datagrams: 0,
            open: false,
        }
    }
}

impl SendBatch {
    /// Empties the batch.
    pub fn clear(&mut self) {
        self.used = 0;
        self.msgs.clear();
        self.datagrams = 0;
        self.open = false;
    }

    /// A buffer for one datagram of any size, outside the batch (which it empties).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn scratch(&mut self) -> &mut [u8] {
        self.clear();
        &mut self.buf[..RX_BUFFER]
    }

    /// Gathers the endpoint's next datagrams ([`Endpoint::poll_transmit`]) behind those the
    /// batch holds, runs of equal-size datagrams to one peer grouped for GSO, until the
    /// endpoint has no more or the batch is full. Returns whether it is full (send it before
    /// gathering more).
    pub fn gather(&mut self, endpoint: &mut Endpoint) -> bool {
        while !self.is_full() {
            let window = &mut self.buf[self.used..self.used + RX_BUFFER];
            let Some((peer, n)) = endpoint.poll_transmit(window) else {
                return false;
            };
            self.push(peer, n);
        }
        true
    }

    /// Whether the batch can take no more: [`MAX_BATCH`] messages, [`MAX_DATAGRAMS`]
    /// datagrams, or less room than a datagram of any size needs.
    fn is_full(&self) -> bool {
        self.msgs.len() >= MAX_BATCH
            || self.datagrams >= MAX_DATAGRAMS
            || self.buf.len() - self.used < RX_BUFFER
    }

    /// Whether the batch holds no datagram.
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Adds the `n`-byte datagram for `peer` that sits at `used` in the buffer: to the last
    /// message if it continues its run, else as a new message.
    fn push(&mut self, peer: SocketAddr, n: usize) {
        let start = self.used;
        self.used += n;
        self.datagrams += 1;
        if let Some(last) = self.msgs.last_mut().filter(|_| self.open && n > 0) {
            let segment = if last.segment == 0 {
                last.len
            } else {
                usize::from(last.segment)
            };
            let fits = last.peer == peer
                && n <= segment
                && last.start + last.len == start
                && last.len + n <= GSO_MAX_BYTES
                && last.len / segment < GSO_MAX_SEGMENTS;
            if let (true, Ok(segment16)) = (fits, u16::try_from(segment)) {
                last.segment = segment16;
                last.len += n;
                self.open = n == segment;
                return;
            }
        }
        self.msgs.push(SendMsg {
            peer,
            start,
            len: n,
            segment: 0,
        });
        self.open = n > 0;
    }

    /// How many messages the batch holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Sends the batch with `send` (a `sendmmsg(2)` of the messages given, returning how many
    /// the kernel took): runs as GSO messages if `gso`, else one message per datagram. A
    /// message the kernel refuses with an error is counted in `counters.send_errors` (each of
    /// its datagrams) and skipped; a GSO message refused because GSO is not available turns
    /// `gso` off for good and goes again as single datagrams. Returns the index of the first
    /// message not sent because the socket would block (the number of messages when all
    /// went): the caller drops or queues the rest ([`unsent`](Self::unsent)), then
    /// [`clear`](Self::clear)s the batch.
    pub fn send(
        &mut self,
        gso: &AtomicBool,
        counters: &mut SocketCounters,
        mut send: impl FnMut(&[u8], &[SendMsg]) -> io::Result<usize>,
    ) -> usize {
        if !gso.load(Ordering::Relaxed) {
            self.ungroup_from(0);
        }
        let mut i = 0;
        while i < self.msgs.len() {
            match send(&self.buf, &self.msgs[i..]) {
                Ok(0) => return i,
                Ok(k) => i += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return i,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.msgs[i].segment != 0 && os::is_gso_error(&e) => {
                    if gso.swap(false, Ordering::Relaxed) {
                        log::info!("UDP GSO refused ({e}): sending one datagram per message");
                    }
                    self.ungroup_from(i);
                }
                Err(e) => {
                    let msg = self.msgs[i];
                    counters.send_errors += segments(&msg) as u64;
                    log::debug!("send to {} failed: {e}", msg.peer);
                    i += 1;
                }
            }
        }
        i
    }

    /// The datagrams of the messages from index `from` on, one by one, in order.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub fn unsent(&self, from: usize) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.msgs
            .get(from..)
            .unwrap_or_default()
            .iter()
            .flat_map(|m| {
                let data = &self.buf[m.start..m.start + m.len];
                let size = if m.segment == 0 {
                    m.len.max(1)
                } else {
                    usize::from(m.segment)
                };
                data.chunks(size).map(move |d| (m.peer, d))
            })
    }

    /// How many datagrams the messages from index `from` on hold.
    pub fn datagrams_from(&self, from: usize) -> usize {
        self.msgs
            .get(from..)
            .unwrap_or_default()
            .iter()
            .map(segments)
            .sum()
    }

    /// Replaces the messages from index `i` on by one message per datagram.
    fn ungroup_from(&mut self, i: usize) {
        self.spare.clear();
        for m in self.msgs.get(i..).unwrap_or_default() {
            if m.segment == 0 {
                self.spare.push(*m);
                continue;
            }
            let size = usize::from(m.segment);
            let mut start = m.start;
            while start < m.start + m.len {
                let len = size.min(m.start + m.len - start);
                self.spare.push(SendMsg {
                    peer: m.peer,
                    start,
                    len,
                    segment: 0,
                });
                start += len;
            }
        }
        self.msgs.truncate(i);
        self.msgs.append(&mut self.spare);
        self.open = false;
    }
}

/// How many datagrams `msg` carries.
fn segments(msg: &SendMsg) -> usize {
    if msg.segment == 0 {
        1
    } else {
        msg.len.div_ceil(usize::from(msg.segment)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::{split, SendBatch, SocketCounters};
    use crate::ffi::os::SendMsg;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A batch holding datagrams of `sizes` for `peers`, as `gather` would make it.
    fn batch(datagrams: &[(u16, usize)]) -> SendBatch {
        let mut b = SendBatch::default();
        for (i, &(port, n)) in datagrams.iter().enumerate() {
            b.buf[b.used..b.used + n].fill(i as u8);
            b.push(addr(port), n);
        }
        b
    }

    #[test]
    fn runs_of_equal_size_to_one_peer_group_and_a_shorter_one_ends_the_run() {
        let b = batch(&[(1, 100), (1, 100), (1, 60), (1, 100), (2, 100), (2, 120)]);
        let groups: Vec<_> = b
            .msgs
            .iter()
            .map(|m| (m.peer.port(), m.len, m.segment))
            .collect();
        assert_eq!(
            groups,
            [(1, 260, 100), (1, 100, 0), (2, 100, 0), (2, 120, 0)]
        );
        assert_eq!(b.datagrams_from(0), 6);
        let sizes: Vec<_> = b
            .unsent(0)
            .map(|(a, d)| (a.port(), d.len(), d[0]))
            .collect();
        assert_eq!(
            sizes,
            [
                (1, 100, 0),
                (1, 100, 1),
                (1, 60, 2),
                (1, 100, 3),
                (2, 100, 4),
                (2, 120, 5)
            ]
        );
    }

    #[test]
    fn without_gso_every_datagram_goes_as_its_own_message() {
        let mut b = batch(&[(1, 100), (1, 100), (1, 100), (2, 7)]);
        assert_eq!(b.len(), 2);
        let gso = AtomicBool::new(false);
        let mut counters = SocketCounters::default();
        let mut sent = Vec::new();
        let all = b.send(&gso, &mut counters, |_, msgs: &[SendMsg]| {
            sent.extend(msgs.iter().map(|m| (m.peer.port(), m.len, m.segment)));
            Ok(msgs.len())
        });
        assert_eq!(all, 4);
        assert_eq!(sent, [(1, 100, 0), (1, 100, 0), (1, 100, 0), (2, 7, 0)]);
    }

    #[test]
    fn a_run_stops_at_the_segment_limit() {
        let b = batch(&[(1, 10); 70]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.msgs[0].len, 640);
        assert_eq!(b.datagrams_from(0), 70);
    }

    #[test]
    fn a_gso_refusal_turns_gso_off_and_resends_one_by_one() {
        let mut b = batch(&[(1, 100), (1, 100), (1, 100), (2, 50)]);
        assert_eq!(b.len(), 2);
        let gso = AtomicBool::new(true);
        let mut counters = SocketCounters::default();
        let mut sent = Vec::new();
        let stopped = b.send(&gso, &mut counters, |_, msgs: &[SendMsg]| {
            if msgs[0].segment != 0 {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            sent.push((msgs[0].peer.port(), msgs[0].len));
            Ok(1)
        });
        assert_eq!(stopped, 4);
        assert!(!gso.load(Ordering::Relaxed));
        assert_eq!(sent, [(1, 100), (1, 100), (1, 100), (2, 50)]);
        assert_eq!(counters.send_errors, 0);
    }

    #[test]
    fn send_errors_count_each_datagram_and_would_block_stops() {
        let mut b = batch(&[(1, 100), (1, 100), (2, 50), (3, 10)]);
        let gso = AtomicBool::new(true);
        let mut counters = SocketCounters::default();
        let stopped = b.send(&gso, &mut counters, |_, msgs: &[SendMsg]| {
            match msgs[0].peer.port() {
                1 => Err(std::io::Error::from_raw_os_error(libc::EPERM)),
                2 => Ok(1),
                _ => Err(std::io::ErrorKind::WouldBlock.into()),
            }
        });
        assert_eq!(stopped, 2);
        assert_eq!(counters.send_errors, 2);
        assert_eq!(b.datagrams_from(stopped), 1);
        assert!(gso.load(Ordering::Relaxed));
    }

    #[test]
    fn split_cuts_a_gro_train_into_its_segments() {
        let data = [0u8; 250];
        let sizes: Vec<_> = split(&data, Some(100)).map(<[u8]>::len).collect();
        assert_eq!(sizes, [100, 100, 50]);
        assert_eq!(split(&data, None).count(), 1);
        assert_eq!(split(&data, Some(0)).count(), 1);
        assert_eq!(split(&[], None).count(), 0);
    }

    #[test]
    fn a_cut_off_buffer_counts_as_one_dropped_datagram() {
        let mut c = SocketCounters::default();
        use crate::endpoint::EndpointStats;
        use crate::ffi::os::RecvControl;
        c.note_received(&RecvControl::default());
        c.note_received(&RecvControl {
            truncated: true,
            ..RecvControl::default()
        });
        c.note_received(&RecvControl {
            rx_dropped: Some(4),
            ..RecvControl::default()
        });
        let mut stats = EndpointStats::default();
        c.add_to(&mut stats);
        assert_eq!(stats.socket_rx_dropped, 5);
    }

    #[test]
    fn the_kernel_drop_counter_is_summed_across_resets() {
        let mut c = SocketCounters::default();
        c.note_rx_dropped(None);
        c.note_rx_dropped(Some(5));
        c.note_rx_dropped(Some(8));
        c.note_rx_dropped(Some(2)); // a new socket
        let mut stats = crate::endpoint::EndpointStats::default();
        c.add_to(&mut stats);
        assert_eq!(stats.socket_rx_dropped, 10);
    }
}
