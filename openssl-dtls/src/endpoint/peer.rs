//! One peer address's entry in the endpoint's table: [`Peer`] (its session, a replacement
//! handshake from the same address, what the application has been told, its timer), how an
//! entry is added and removed, and [`Endpoint::settle`], which brings an entry's events,
//! counters, transmit readiness and timer up to date after anything touched its sessions; and
//! [`HandshakeCount`], the handshakes in flight in all and per IP address.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
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
    /// When the session last received authenticated input.
    pub(super) last_activity: Instant,
    /// The deadline of this peer's live entry in the timer heap.
    pub(super) scheduled: Option<Instant>,
    /// The application no longer holds a handle: drop queued data, remove when done.
    pub(super) released: bool,
    /// Moved by its Connection ID to an address that has not answered yet: what may be sent
    /// there is in the endpoint's `moved` table (see `endpoint::cid`).
    pub(super) unconfirmed: bool,
}

/// Peers per slab chunk of [`PeerTable`].
const CHUNK: usize = 256;

/// The endpoint's peers by address: a slab of [`Peer`]s in fixed chunks, indexed by a `u32`
/// handle, and an address map that holds only the handle. A lookup is one hash probe and one
/// index (O(1), no allocation); the map's buckets stay small (address and handle), and the slab
/// grows by one chunk of [`CHUNK`] peers at a time, never copying the peers it holds (no
/// doubling: at most one partly used chunk). Freed slots are reused; chunks are kept (the table
/// is bounded by the endpoint's connection limits).
#[derive(Default)]
pub(super) struct PeerTable {
    index: HashMap<SocketAddr, u32>,
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

    /// The peer at `addr`.
    pub(super) fn get(&self, addr: &SocketAddr) -> Option<&Peer> {
        let h = *self.index.get(addr)?;
        self.slot(h).as_ref()
    }

    /// The peer at `addr`, to change.
    pub(super) fn get_mut(&mut self, addr: &SocketAddr) -> Option<&mut Peer> {
        let h = *self.index.get(addr)?;
        self.slot_mut(h).as_mut()
    }

    /// Whether a peer is at `addr`.
    pub(super) fn contains_key(&self, addr: &SocketAddr) -> bool {
        self.index.contains_key(addr)
    }

    /// Puts `peer` at `addr`, returning the one it replaces.
    pub(super) fn insert(&mut self, addr: SocketAddr, peer: Peer) -> Option<Peer> {
        if let Some(&h) = self.index.get(&addr) {
            return self.slot_mut(h).replace(peer);
        }
        let h = match self.free.pop() {
            Some(h) => h,
            None => {
                let h = u32::try_from(self.chunks.len() * CHUNK)
                    .expect("fewer than 2^32 peers (bounded by max_connections)");
                self.chunks.push((0..CHUNK).map(|_| None).collect());
                self.free.extend((h + 1..h + CHUNK as u32).rev());
                h
            }
        };
        *self.slot_mut(h) = Some(peer);
        self.index.insert(addr, h);
        None
    }

    /// Takes the peer at `addr` out; its slot is reused.
    pub(super) fn remove(&mut self, addr: &SocketAddr) -> Option<Peer> {
        let h = self.index.remove(addr)?;
        self.free.push(h);
        self.slot_mut(h).take()
    }

    /// The addresses with a peer.
    pub(super) fn keys(&self) -> impl Iterator<Item = &SocketAddr> {
        self.index.keys()
    }

    /// The peers.
    pub(super) fn values(&self) -> impl Iterator<Item = &Peer> {
        self.iter().map(|(_, p)| p)
    }

    /// The peers with their addresses.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&SocketAddr, &Peer)> {
        self.index
            .iter()
            .filter_map(|(a, &h)| self.slot(h).as_ref().map(|p| (a, p)))
    }

    /// Number of peers.
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there is no peer.
    pub(super) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

impl Peer {
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
                last_activity: now,
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
        let Some(p) = self.peers.get_mut(&addr) else {
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
                    p.last_activity = now;
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
        if established && !p.connected_emitted {
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
                next = earliest(next, Some(p.last_activity + idle));
            }
        }
        if let Some(at) = next {
            // A deadline at or before `now` that survived the handling above is retried no
            // sooner than a millisecond later, so a timer that does not advance cannot spin.
            let at = at.max(now + Duration::from_millis(1));
            if p.scheduled.is_none_or(|s| at < s) {
                p.scheduled = Some(at);
                self.timers.push(Reverse((at, p.id, addr)));
            }
        }
        let removable = p.terminal()
            && p.closed_emitted
            && !transmit
            && (p.released || !p.session.has_received());
        if removable {
            self.remove(addr);
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
