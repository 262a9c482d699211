//! One peer address's entry in the endpoint's table: [`Peer`] (its session, a replacement
//! handshake from the same address, what the application has been told, its timer), how an
//! entry is added and removed, and [`Endpoint::settle`], which brings an entry's events,
//! counters, transmit readiness and timer up to date after anything touched its sessions; and
//! [`HandshakeCount`], the handshakes in flight in all and per IP address.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use super::events::report_handshake_failure;
use super::stats::count_failure;
use super::{ConnectionId, Endpoint, Event};
use crate::error::Error;
use crate::session::earliest;
use crate::session::{Session, SessionState};

/// One peer address's entry: its session, and what the endpoint has done and told about it.
pub(super) struct Peer {
    /// The connection id of `session`.
    pub(super) id: ConnectionId,
    /// The connection (or handshake) with this address.
    pub(super) session: Session,
    /// A new handshake from the same address, replacing `session` once established.
    /// (Boxed whole: an entry without one pays a pointer.)
    pub(super) replacement: Option<Box<(ConnectionId, Session)>>,
    /// [`Event::Connected`] was queued: the connection counts in `connections`.
    pub(super) connected_emitted: bool,
    /// Counted in `compact_handoffs`.
    pub(super) compact_counted: bool,
    /// [`Event::Closed`] was queued.
    pub(super) closed_emitted: bool,
    /// [`Event::Readable`] was queued and the receive queue has not been emptied since.
    pub(super) readable_signaled: bool,
    /// In the endpoint's `ready` queue (has datagrams to send).
    pub(super) in_ready: bool,
    /// Counted in the handshake totals (until established or gone).
    pub(super) counted_handshake: bool,
    /// When the session last received authenticated input, in nanoseconds after the session
    /// started (8 bytes where an `Instant` takes 16): see [`last_activity`](Self::last_activity).
    pub(super) last_active_ns: u64,
    /// The deadline of this peer's live entry in the timer heap.
    pub(super) scheduled: Option<Deadline>,
    /// The application no longer holds a handle: drop queued data, remove when done.
    pub(super) released: bool,
    /// Moved by its Connection ID to an address that has not answered yet: what may be sent
    /// there is in the endpoint's `moved` table (see `endpoint::cid`).
    pub(super) unconfirmed: bool,
}

/// A timer deadline as the endpoint keeps it: nanoseconds since the endpoint's epoch (the
/// first `now` it was given), plus one. 8 bytes where an `Option<Instant>` takes 16; exact
/// (an `Instant` and back gives the same `Instant`) for every instant from the epoch on, and
/// an earlier one counts as the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Deadline(NonZeroU64);

impl Deadline {
    /// `at`, against `epoch` (set to `at` if there is none yet).
    pub(super) fn of(epoch: &mut Option<Instant>, at: Instant) -> Deadline {
        let epoch = *epoch.get_or_insert(at);
        let nanos =
            u64::try_from(at.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
        Deadline(NonZeroU64::MIN.saturating_add(nanos))
    }

    /// The instant, against the `epoch` it was made with.
    pub(super) fn instant(self, epoch: Instant) -> Instant {
        epoch + Duration::from_nanos(self.0.get() - 1)
    }
}

/// An entry of the endpoint's timer heap: a [`Deadline`] (its bits, high word first, so that the
/// derived order is the deadline's) and the handle of a peer in the [`PeerTable`]. 12 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct TimerEntry {
    at: [u32; 2],
    pub(super) handle: u32,
}

impl TimerEntry {
    pub(super) fn new(at: Deadline, handle: u32) -> TimerEntry {
        let bits = at.0.get();
        TimerEntry {
            at: [(bits >> 32) as u32, bits as u32],
            handle,
        }
    }

    pub(super) fn at(&self) -> Deadline {
        let bits = u64::from(self.at[0]) << 32 | u64::from(self.at[1]);
        Deadline(NonZeroU64::new(bits).unwrap_or(NonZeroU64::MIN))
    }
}

/// Peers per slab chunk of [`PeerTable`].
const CHUNK: usize = 256;

/// An empty bucket of [`PeerTable`]'s address index.
const EMPTY: u64 = u64::MAX;

/// The endpoint's peers by address: a slab of [`Peer`]s in fixed chunks, indexed by a `u32`
/// handle, and an address index of 8-byte buckets, each a handle and 32 bits of its address's
/// hash; the address itself is the one its session holds
/// ([`Session::peer_addr`](crate::Session::peer_addr), which [`insert`](Self::insert) sets).
///
/// A lookup is one hash, a linear probe over the buckets (comparing the stored hash bits
/// first) and one index into the slab to compare the address: O(1), no allocation. The index is
/// kept at most 3/4 full and deletes shift the buckets after them back (no tombstones), so
/// probes stay short; it grows by doubling (not per datagram: only when a peer is added). The
/// slab grows by one chunk of [`CHUNK`] peers at a time, never copying the peers it holds.
/// Freed slots are reused; chunks are kept (the table is bounded by the endpoint's connection
/// limits). Per peer: the slot and 8 bytes × 1.33–2.67 of index (≈ 17 bytes at a million; a
/// `HashMap<SocketAddr, u32>` took ≈ 78 there).
#[derive(Default)]
pub(super) struct PeerTable {
    /// Buckets: `EMPTY`, or `handle << 32 | hash bits`; a power of two in number (or none).
    index: Vec<u64>,
    /// Peers in the table.
    len: usize,
    /// Keys the address hash (SipHash with a random key, as `HashMap`: peers choose their
    /// addresses, so their collisions must not be predictable).
    hasher: std::collections::hash_map::RandomState,
    chunks: Vec<Box<[Option<Peer>]>>,
    /// Handles of empty slots, reused first.
    free: Vec<u32>,
}

impl PeerTable {
    fn slot(&self, h: u32) -> &Option<Peer> {
        let h = h as usize;
        &self.chunks[h / CHUNK][h % CHUNK]
    }

    fn slot_mut(&mut self, h: u32) -> &mut Option<Peer> {
        let h = h as usize;
        &mut self.chunks[h / CHUNK][h % CHUNK]
    }

    /// The low 32 bits of `addr`'s keyed hash.
    fn hash(&self, addr: &SocketAddr) -> u32 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(addr) as u32
    }

    /// The bucket and handle of the peer at `addr`.
    fn find(&self, addr: &SocketAddr) -> Option<(usize, u32)> {
        if self.index.is_empty() {
            return None;
        }
        let hash = self.hash(addr);
        let mask = self.index.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let b = self.index[i];
            if b == EMPTY {
                return None;
            }
            let h = (b >> 32) as u32;
            if b as u32 == hash
                && self
                    .slot(h)
                    .as_ref()
                    .is_some_and(|p| p.session.peer_addr() == Some(*addr))
            {
                return Some((i, h));
            }
            i = (i + 1) & mask;
        }
    }

    /// Puts bucket `b` into `index` (which has an empty bucket).
    fn place(index: &mut [u64], b: u64) {
        let mask = index.len() - 1;
        let mut i = b as u32 as usize & mask;
        while index[i] != EMPTY {
            i = (i + 1) & mask;
        }
        index[i] = b;
    }

    /// Makes room for one more bucket (at most 3/4 of the index in use).
    fn reserve_one(&mut self) {
        if (self.len + 1) * 4 <= self.index.len() * 3 {
            return;
        }
        let mut index = vec![EMPTY; (self.index.len() * 2).max(16)];
        for &b in self.index.iter().filter(|&&b| b != EMPTY) {
            Self::place(&mut index, b);
        }
        self.index = index;
    }

    /// Empties bucket `i`, shifting back the buckets of its probe run that may move.
    fn unplace(&mut self, mut i: usize) {
        let mask = self.index.len() - 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let b = self.index[j];
            if b == EMPTY {
                break;
            }
            let home = b as u32 as usize & mask;
            // `b` may fill the hole at `i` if its home is not cyclically within (i, j].
            let between = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !between {
                self.index[i] = b;
                i = j;
            }
        }
        self.index[i] = EMPTY;
    }

    /// The handle of the peer at `addr` (its place in the slab while it stays in the table).
    pub(super) fn handle(&self, addr: &SocketAddr) -> Option<u32> {
        self.find(addr).map(|(_, h)| h)
    }

    /// The peer with handle `h`, if its slot holds one.
    pub(super) fn by_handle_mut(&mut self, h: u32) -> Option<&mut Peer> {
        let h = h as usize;
        self.chunks.get_mut(h / CHUNK)?[h % CHUNK].as_mut()
    }

    /// The peer at `addr`.
    pub(super) fn get(&self, addr: &SocketAddr) -> Option<&Peer> {
        let (_, h) = self.find(addr)?;
        self.slot(h).as_ref()
    }

    /// The peer at `addr`, to change. (Its session's address must stay `addr`: a peer moves
    /// by [`remove`](Self::remove) and [`insert`](Self::insert).)
    pub(super) fn get_mut(&mut self, addr: &SocketAddr) -> Option<&mut Peer> {
        let (_, h) = self.find(addr)?;
        self.slot_mut(h).as_mut()
    }

    /// Whether a peer is at `addr`.
    pub(super) fn contains_key(&self, addr: &SocketAddr) -> bool {
        self.find(addr).is_some()
    }

    /// Puts `peer` at `addr` (setting its session's address to `addr`), returning the one it
    /// replaces.
    pub(super) fn insert(&mut self, addr: SocketAddr, mut peer: Peer) -> Option<Peer> {
        if peer.session.peer_addr() != Some(addr) {
            peer.session.set_peer_addr(addr);
        }
        if let Some((_, h)) = self.find(&addr) {
            return self.slot_mut(h).replace(peer);
        }
        let h = match self.free.pop() {
            Some(h) => h,
            None => {
                let h = u32::try_from(self.chunks.len() * CHUNK)
                    .ok()
                    .filter(|h| h.checked_add(CHUNK as u32).is_some())
                    .expect("fewer than 2^32 peers (bounded by max_connections)");
                self.chunks.push((0..CHUNK).map(|_| None).collect());
                self.free.extend((h + 1..h + CHUNK as u32).rev());
                h
            }
        };
        let hash = self.hash(&addr);
        *self.slot_mut(h) = Some(peer);
        self.reserve_one();
        Self::place(&mut self.index, u64::from(h) << 32 | u64::from(hash));
        self.len += 1;
        None
    }

    /// Takes the peer at `addr` out; its slot is reused.
    pub(super) fn remove(&mut self, addr: &SocketAddr) -> Option<Peer> {
        let (i, h) = self.find(addr)?;
        self.unplace(i);
        self.len -= 1;
        self.free.push(h);
        self.slot_mut(h).take()
    }

    /// The addresses with a peer.
    pub(super) fn keys(&self) -> impl Iterator<Item = &SocketAddr> {
        self.iter().map(|(a, _)| a)
    }

    /// The peers.
    pub(super) fn values(&self) -> impl Iterator<Item = &Peer> {
        self.chunks.iter().flat_map(|c| c.iter().flatten())
    }

    /// The peers with their addresses.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&SocketAddr, &Peer)> {
        self.values()
            .filter_map(|p| p.session.peer_addr_ref().map(|a| (a, p)))
    }

    /// Number of peers.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no peer.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Peer {
    /// `at` as a [`last_active_ns`](Self::last_active_ns) of `session` (an instant before the
    /// session started counts as its start).
    pub(super) fn active_ns(session: &Session, at: Instant) -> u64 {
        let since = at.saturating_duration_since(session.started());
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    }

    /// When the session last received authenticated input (exact: the instant it was set to,
    /// or the session's start if that was earlier).
    pub(super) fn last_activity(&self) -> Instant {
        self.session.started() + Duration::from_nanos(self.last_active_ns)
    }

    /// Records authenticated input at `at`.
    pub(super) fn set_last_activity(&mut self, at: Instant) {
        self.last_active_ns = Peer::active_ns(&self.session, at);
    }

    /// Gives up this entry's count in `handshakes` (its handshake completed or ended), if it
    /// still holds one.
    pub(super) fn uncount_handshake(&mut self, handshakes: &mut HandshakeCount, ip: IpAddr) {
        if std::mem::take(&mut self.counted_handshake) {
            handshakes.remove(ip);
        }
    }

    /// Whether the session or its replacement has a datagram to send.
    pub(super) fn has_transmit(&self) -> bool {
        self.session.has_transmit()
            || self
                .replacement
                .as_deref()
                .is_some_and(|(_, r)| r.has_transmit())
    }

    /// Drops the datagrams waiting in the session's receive queue (the application released
    /// the connection and will not read them).
    pub(super) fn discard_received(&mut self) {
        let mut sink = [0u8; 0];
        while let Ok(Some(_)) = self.session.recv(&mut sink) {}
    }

    /// Whether the session has ended (closed or failed).
    pub(super) fn terminal(&self) -> bool {
        matches!(
            self.session.state(),
            SessionState::Closed | SessionState::Failed
        )
    }
}

impl Endpoint {
    /// Adds `peer` with a new `session` (a handshake in flight) under a new connection id.
    pub(super) fn insert(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        session: Session,
    ) -> ConnectionId {
        let id = self.next_id;
        self.next_id += 1;
        self.handshakes.add(peer.ip());
        let last_active_ns = Peer::active_ns(&session, now);
        self.peers.insert(
            peer,
            Peer {
                id,
                session,
                replacement: None,
                connected_emitted: false,
                compact_counted: false,
                closed_emitted: false,
                readable_signaled: false,
                in_ready: false,
                counted_handshake: true,
                last_active_ns,
                scheduled: None,
                released: false,
                unconfirmed: false,
            },
        );
        // A server handshake's first step (its first flight, with the key exchange and the
        // signature) runs on the driver's handshake worker when offload is on, else in `settle`.
        if self.wants_offload(peer, now)
            && self
                .peers
                .get(&peer)
                .is_some_and(|p| p.session.first_step_pending())
        {
            self.check_out(peer, Vec::new());
        } else {
            self.settle(peer, now);
        }
        id
    }

    /// Brings a peer's bookkeeping up to date after anything touched its session(s): events,
    /// counters, transmit readiness, timers, removal.
    pub(super) fn settle(&mut self, addr: SocketAddr, now: Instant) {
        let Some(handle) = self.peers.handle(&addr) else {
            return;
        };
        let Some(p) = self.peers.by_handle_mut(handle) else {
            return;
        };
        // A handshake accepted after the cookie and not checked out: its first step, inline.
        p.session.run_first_step(now);
        if let Some((_, r)) = p.replacement.as_deref_mut() {
            r.run_first_step(now);
        }
        // A replacement handshake that completed takes over the address.
        let replacement_state = p.replacement.as_deref().map(|(_, r)| r.state());
        if let Some(state) = replacement_state.filter(|s| *s != SessionState::Handshaking) {
            let Some(taken) = p.replacement.take() else {
                return;
            };
            let (new_id, replacement) = *taken;
            match state {
                SessionState::Established => {
                    let old = std::mem::replace(&mut p.session, replacement);
                    let old_id = std::mem::replace(&mut p.id, new_id);
                    self.moved.remove(&old_id);
                    self.stats.connections_replaced += 1;
                    if p.connected_emitted && !p.closed_emitted {
                        self.connections -= 1;
                        self.events.push_back(Event::Closed {
                            peer: addr,
                            id: old_id,
                            established: true,
                            error: None,
                        });
                    }
                    self.cids.forget(&old, addr, p.connected_emitted);
                    drop(old);
                    p.connected_emitted = false;
                    p.unconfirmed = false;
                    p.compact_counted = false;
                    p.closed_emitted = false;
                    p.readable_signaled = false;
                    p.released = false;
                    p.set_last_activity(now);
                    // Heap entries carry the old id and will be skipped: schedule anew.
                    p.scheduled = None;
                    // The replacement's handshake count becomes the peer's (uncounted below at
                    // establishment); an old session still handshaking gives its count up.
                    p.uncount_handshake(&mut self.handshakes, addr.ip());
                    p.counted_handshake = true;
                }
                SessionState::Handshaking => {} // not taken (filtered above)
                SessionState::Closed | SessionState::Failed => {
                    // Dropped at once (its final alert, if any, with it): the old connection
                    // stays as it was, and the CID it was issued is free again.
                    self.cids.forget(&replacement, addr, false);
                    count_failure(&mut self.stats, &replacement, false);
                    report_handshake_failure(&mut self.events, addr, &replacement);
                    self.handshakes.remove(addr.ip());
                    // The old connection is evictable again: the eviction scan must see it.
                    self.no_evictable_before = None;
                }
            }
        }
        let established = p.session.is_established();
        let mut just_connected = false;
        // Also a handshake that completed and ended in one step (its peer's Finished and
        // close_notify read together, e.g. by a handshake worker): it connected, and the
        // application is told so (with its facts) before it is told it ended.
        if (established || p.session.handshake_completed()) && !p.connected_emitted {
            just_connected = true;
            self.cids.established(&p.session, addr);
            p.connected_emitted = true;
            self.connections += 1;
            self.stats.handshakes_completed += 1;
            p.uncount_handshake(&mut self.handshakes, addr.ip());
            self.events.push_back(Event::Connected {
                peer: addr,
                id: p.id,
            });
        }
        if !p.compact_counted && p.session.is_compact() {
            p.compact_counted = true;
            self.stats.compact_handoffs += 1;
        }
        if p.session.has_received() && !p.readable_signaled {
            if p.released {
                p.discard_received();
            } else {
                p.readable_signaled = true;
                self.events.push_back(Event::Readable {
                    peer: addr,
                    id: p.id,
                });
            }
        }
        if p.terminal() && !p.closed_emitted {
            p.closed_emitted = true;
            let was_connected = p.connected_emitted;
            if was_connected {
                self.connections -= 1;
            }
            p.uncount_handshake(&mut self.handshakes, addr.ip());
            count_failure(&mut self.stats, &p.session, was_connected);
            if !was_connected {
                report_handshake_failure(&mut self.events, addr, &p.session);
            }
            let error = p.session.error().map(Error::duplicate);
            self.events.push_back(Event::Closed {
                peer: addr,
                id: p.id,
                established: was_connected,
                error,
            });
        }
        let transmit = p.has_transmit();
        if transmit && !p.in_ready {
            p.in_ready = true;
            self.ready.push_back(addr);
        }
        // Timers: the earliest of the sessions' deadlines and the idle deadline. The heap entry
        // is replaced only when the deadline moves earlier; a later one is picked up lazily when
        // the earlier entry fires, so steady traffic pushes nothing.
        let mut next = p.session.poll_timeout();
        if let Some((_, r)) = p.replacement.as_deref() {
            next = earliest(next, r.poll_timeout());
        }
        if established {
            if let Some(idle) = self.config.idle_timeout {
                next = earliest(next, Some(p.last_activity() + idle));
            }
        }
        if let Some(at) = next {
            // A deadline at or before `now` that survived the handling above is retried no
            // sooner than a millisecond later, so a timer that does not advance cannot spin.
            let at = Deadline::of(&mut self.epoch, at.max(now + Duration::from_millis(1)));
            if p.scheduled.is_none_or(|s| at < s) {
                p.scheduled = Some(at);
                self.timers.push(Reverse(TimerEntry::new(at, handle)));
            }
        }
        let terminal = p.terminal();
        let removable =
            terminal && p.closed_emitted && !transmit && (p.released || !p.session.has_received());
        if removable {
            self.remove(addr);
        }
        // A handshake that took a CID connection's address ended (see `accepted`).
        if (just_connected || terminal) && !self.parked_by.is_empty() {
            if let Some(parked) = self.parked_by.remove(&addr) {
                if just_connected {
                    self.retire_parked_if_same_peer(parked, addr);
                }
            }
        }
    }

    /// Forgets `addr`'s entry, giving up what it counted against the limits.
    pub(super) fn remove(&mut self, addr: SocketAddr) {
        if let Some(mut p) = self.peers.remove(&addr) {
            // `stats()` sums the live sessions' receive-queue drops: keep the leaving one's.
            self.stats.recv_queue_dropped += p.session.stats().recv_dropped;
            self.cids.forget(&p.session, addr, p.connected_emitted);
            if self.moved.get(&p.id).is_some_and(|(at, _)| *at == addr) {
                self.moved.remove(&p.id);
            }
            if !p.closed_emitted && p.connected_emitted {
                self.connections -= 1;
            }
            p.uncount_handshake(&mut self.handshakes, addr.ip());
            if p.replacement.is_some() {
                self.handshakes.remove(addr.ip());
            }
            // Ended before its `Connected` was taken: its session stays findable until it is.
            let id = p.id;
            if p.connected_emitted
                && self
                    .events
                    .iter()
                    .any(|e| matches!(e, Event::Connected { id: i, .. } if *i == id))
            {
                if self.ended.len() >= super::ENDED_KEPT {
                    self.ended.pop_front();
                }
                self.ended.push_back((id, p.session, false));
            }
        }
    }
}

/// Handshakes in flight (after the cookie exchange), in all and per IP address: what
/// `max_handshakes`, `max_handshakes_per_ip` and `handshake_memory` are checked against.
#[derive(Debug, Default)]
pub(super) struct HandshakeCount {
    /// All handshakes in flight.
    total: usize,
    /// Handshakes in flight per IP address; an address with none has no entry.
    per_ip: HashMap<IpAddr, usize>,
    /// The server-wide budget of a shard, which every count also goes to (`None`: one endpoint).
    pub(super) shared: Option<super::admission::SharedCount>,
}

impl HandshakeCount {
    /// All handshakes in flight.
    pub(super) fn total(&self) -> usize {
        self.total
    }

    /// Handshakes in flight from `ip`.
    pub(super) fn of_ip(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Counts a new handshake from `ip`.
    pub(super) fn add(&mut self, ip: IpAddr) {
        self.total += 1;
        *self.per_ip.entry(ip).or_insert(0) += 1;
        if let Some(s) = self.shared.as_mut() {
            s.add(ip);
        }
    }

    /// Gives up the count of a handshake from `ip` that completed or ended.
    pub(super) fn remove(&mut self, ip: IpAddr) {
        if let Some(s) = self.shared.as_mut() {
            s.remove(ip);
        }
        self.total -= 1;
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::time::Instant;

    use super::{Peer, PeerTable};
    use crate::context::DtlsServerContext;

    fn peer(ctx: &DtlsServerContext, id: u64, now: Instant) -> Peer {
        Peer {
            id,
            session: ctx.new_session(now).unwrap(),
            replacement: None,
            connected_emitted: false,
            compact_counted: false,
            closed_emitted: false,
            readable_signaled: false,
            in_ready: false,
            counted_handshake: false,
            last_active_ns: 0,
            scheduled: None,
            released: false,
            unconfirmed: false,
        }
    }

    fn addr(i: u64) -> SocketAddr {
        if i % 2 == 0 {
            SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 5684))
        } else {
            SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, (i >> 16) as u16, i as u16], 5684))
        }
    }

    /// Inserts, removals (which shift probe runs back) and reinserts against a `HashMap`: every
    /// address finds its own peer, never another's, and a reused handle names the new peer.
    #[test]
    fn the_address_index_finds_each_peer_through_removals_and_slot_reuse() {
        let now = Instant::now();
        let ctx = DtlsServerContext::builder()
            .psk_key_store(|_| Some(b"k".to_vec()))
            .build()
            .unwrap();
        let mut table = PeerTable::default();
        let mut model: HashMap<SocketAddr, u64> = HashMap::new();
        let mut next = 0u64;
        for round in 0..3u64 {
            for _ in 0..700 {
                let a = addr(next);
                assert!(table.insert(a, peer(&ctx, next, now)).is_none());
                model.insert(a, next);
                next += 1;
            }
            // Remove about a third, spread over the table.
            let gone: Vec<SocketAddr> = model
                .keys()
                .copied()
                .filter(|a| table.get(a).unwrap().id % 3 == round)
                .collect();
            for a in gone {
                let h = table.handle(&a).unwrap();
                let p = table.remove(&a).unwrap();
                assert_eq!(Some(p.id), model.remove(&a));
                assert!(table.get(&a).is_none() && table.by_handle_mut(h).is_none());
            }
            assert_eq!(table.len(), model.len());
            for (a, id) in &model {
                assert_eq!(table.get(a).map(|p| p.id), Some(*id), "{a}");
                let h = table.handle(a).unwrap();
                assert_eq!(table.by_handle_mut(h).unwrap().id, *id);
            }
            assert_eq!(table.iter().count(), model.len());
            assert!(table.iter().all(|(a, p)| model.get(a) == Some(&p.id)));
        }
        // A freed slot is reused: the handle then names the new peer, at its own address.
        let a = *model.keys().next().unwrap();
        let h = table.handle(&a).unwrap();
        table.remove(&a).unwrap();
        let b = addr(1 << 20);
        table.insert(b, peer(&ctx, 99_999, now));
        assert_eq!(table.handle(&b), Some(h), "the last freed slot first");
        let p = table.by_handle_mut(h).unwrap();
        assert_eq!((p.id, p.session.peer_addr()), (99_999, Some(b)));
        assert!(table.get(&a).is_none());
        // Replacing the peer at an address keeps its handle.
        let old = table.insert(b, peer(&ctx, 100_000, now)).unwrap();
        assert_eq!(old.id, 99_999);
        assert_eq!(table.handle(&b), Some(h));
    }

    #[test]
    fn a_deadline_is_exact_from_the_epoch_on_and_orders_like_its_instant() {
        use super::{Deadline, TimerEntry};
        use std::time::Duration;
        let t0 = Instant::now();
        let mut epoch = None;
        let d0 = Deadline::of(&mut epoch, t0);
        assert_eq!(epoch, Some(t0));
        for nanos in [
            0u64,
            1,
            999_999_999,
            1 << 32,
            (1 << 32) + 7,
            86_400_000_000_123,
        ] {
            let at = t0 + Duration::from_nanos(nanos);
            let d = Deadline::of(&mut epoch, at);
            assert_eq!(d.instant(t0), at, "{nanos} ns");
            assert!(d >= d0);
            let e = TimerEntry::new(d, 7);
            assert_eq!((e.at(), e.handle), (d, 7));
        }
        // Entries order by deadline first (across the 32-bit word boundary), then handle.
        let a = TimerEntry::new(
            Deadline::of(&mut epoch, t0 + Duration::from_nanos(u32::MAX.into())),
            9,
        );
        let b = TimerEntry::new(
            Deadline::of(&mut epoch, t0 + Duration::from_nanos(1 << 33)),
            1,
        );
        assert!(a < b);
        // Before the epoch counts as the epoch (never earlier).
        let before = t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0);
        assert_eq!(Deadline::of(&mut epoch, before), d0);
        assert_eq!(std::mem::size_of::<TimerEntry>(), 12);
        // A peer's bookkeeping beside its session: id, replacement, two times, flags.
        assert!(std::mem::size_of::<Peer>() <= std::mem::size_of::<crate::Session>() + 40);
        assert_eq!(std::mem::size_of::<Option<Deadline>>(), 8);
    }

    /// Two full handshakes between a client endpoint and `server`, the client at `at` (as the
    /// server sees it); returns the client endpoint.
    fn connect(
        server: &mut crate::endpoint::Endpoint,
        at: SocketAddr,
        now: Instant,
        cctx: &crate::context::DtlsClientContext,
    ) -> crate::endpoint::Endpoint {
        use crate::endpoint::{Endpoint, EndpointConfig};
        let server_addr: SocketAddr = "10.0.0.1:5684".parse().unwrap();
        let mut c = Endpoint::client(EndpointConfig::default()).unwrap();
        c.connect(now, server_addr, cctx, None).unwrap();
        let mut buf = vec![0u8; 4096];
        for _ in 0..16 {
            let mut moved = false;
            while let Some((_, n)) = c.poll_transmit(&mut buf) {
                server.handle_datagram(now, at, &buf[..n]);
                moved = true;
            }
            while let Some((to, n)) = server.poll_transmit(&mut buf) {
                if to == at {
                    c.handle_datagram(now, server_addr, &buf[..n]);
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        assert!(server.connection_id(at).is_some_and(|id| server
            .session(at, id)
            .is_some_and(crate::Session::is_established)));
        c
    }

    /// A connection that left its slot (and a timer entry for its idle deadline) behind: the
    /// connection that reuses the slot idles out at its own deadline, not the old one's, and
    /// another connection at its own.
    #[test]
    fn a_reused_slot_keeps_its_new_connections_idle_deadline() {
        use crate::context::{DtlsClientContext, PskCredentials};
        use crate::endpoint::{Endpoint, EndpointConfig, Event};
        use std::time::Duration;
        let key = b"0123456789abcdef".to_vec();
        let sctx = {
            let k = key.clone();
            DtlsServerContext::builder()
                .psk_key_store(move |_| Some(k.clone()))
                .compact_connections(true)
                .build()
                .unwrap()
        };
        let cctx = DtlsClientContext::builder()
            .psk_credentials(PskCredentials::new(b"device".to_vec(), key))
            .compact_connections(true)
            .build()
            .unwrap();
        let config = EndpointConfig {
            idle_timeout: Some(Duration::from_secs(10)),
            ..EndpointConfig::default()
        };
        let mut ep = Endpoint::server(sctx, config).unwrap();
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let (a, b, c) = (addr(1), addr(2), addr(4));
        let _ca = connect(&mut ep, a, s(0), &cctx);
        let _cb = connect(&mut ep, b, s(1), &cctx);
        let ha = ep.peers.handle(&a).unwrap();
        // `a` closes at 2 s and leaves (its idle entry, due at 10 s, stays in the heap).
        let ida = ep.connection_id(a).unwrap();
        ep.handle_timeout(s(2));
        ep.close(a, ida);
        let mut buf = [0u8; 2048];
        while ep.poll_transmit(&mut buf).is_some() {}
        ep.handle_timeout(s(2));
        assert!(ep.connection_id(a).is_none(), "a left");
        // `c` takes the slot at 3 s: its idle deadline is 13 s.
        let _cc = connect(&mut ep, c, s(3), &cctx);
        assert_eq!(ep.peers.handle(&c), Some(ha), "the freed slot is reused");
        let idc = ep.connection_id(c).unwrap();
        let idled = |ep: &mut Endpoint| -> Vec<SocketAddr> {
            std::iter::from_fn(|| ep.poll_event())
                .filter_map(|e| match e {
                    Event::Closed {
                        peer,
                        error: Some(crate::Error::IdleTimeout { .. }),
                        ..
                    } => Some(peer),
                    _ => None,
                })
                .collect()
        };
        idled(&mut ep);
        ep.handle_timeout(s(10));
        assert_eq!(
            idled(&mut ep),
            Vec::<SocketAddr>::new(),
            "nothing at a's old deadline"
        );
        ep.handle_timeout(s(11));
        assert_eq!(idled(&mut ep), vec![b], "b at its own");
        ep.handle_timeout(s(13) - Duration::from_millis(1));
        assert!(idled(&mut ep).is_empty());
        assert_eq!(ep.connection_id(c), Some(idc));
        assert_eq!(ep.poll_timeout(), Some(s(13)), "c's deadline, exactly");
        ep.handle_timeout(s(13));
        assert_eq!(idled(&mut ep), vec![c], "c at its own");
        assert_eq!(ep.stats().idle_timeouts, 2);
    }
}
