//! Connection IDs at the endpoint (RFC 9146 §6): the table from each connection's CID to its
//! current address, the CIDs the endpoint issues (never one a connection holds), and the rules
//! by which a connection follows its peer to a new address.
//!
//! A `tls12_cid` record is routed by its CID, whatever address it came from (one hash lookup on
//! a fixed-size key, no allocation). From an address other than the connection's, it moves the
//! connection there only if it authenticates and is the newest record the connection has seen
//! (a higher sequence number than any before): a replayed or reordered record, a forged one or
//! one with a broken tag never moves it. Until the peer answers from the new address (an
//! authenticated record arriving there after we sent something there), the endpoint sends
//! there no more bytes than it received from there (no amplification towards an address that
//! may be a victim's). A move to an address that another established connection holds parks
//! that connection (behind a NAT or a load balancer an address is soon another device's, and
//! the one that sends from it now is the one there); a move to an address where a handshake
//! is under way is refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::{Endpoint, Event};
use crate::session::Session;
use crate::wire;

/// The CID table: each CID to the address of the connection that holds it, and how many
/// established connections hold one.
#[derive(Debug, Default)]
pub(super) struct CidTable {
    pub(super) map: HashMap<CidKey, SocketAddr>,
    pub(super) connections: usize,
}

/// The CID this endpoint issued to `session` (negotiated, or assigned to its handshake), as a
/// key.
pub(super) fn issued_key(session: &Session) -> Option<CidKey> {
    session.issued_cid().and_then(CidKey::new)
}

impl CidTable {
    /// A handshake at `addr` was issued `session`'s CID (before its first flight): the CID is
    /// taken from now on (no other handshake is issued it) and routes the handshake's own
    /// `tls12_cid` records (its Finished) to it, a replacement handshake's included.
    pub(super) fn reserve(&mut self, session: &Session, addr: SocketAddr) {
        if let Some(key) = issued_key(session) {
            self.map.insert(key, addr);
        }
    }

    /// `session`, at `addr`, completed its handshake: counted if it negotiated a non-empty CID;
    /// a CID the client did not ask for is given back.
    pub(super) fn established(&mut self, session: &Session, addr: SocketAddr) {
        if session
            .connection_ids()
            .is_some_and(|(own, _)| !own.is_empty())
        {
            self.connections += 1;
        } else {
            self.give_back(session, addr);
        }
    }

    /// Forgets the CID `session` holds or was issued, if it is the one mapped to `addr`;
    /// `counted`: the connection was counted by [`established`](Self::established).
    pub(super) fn forget(&mut self, session: &Session, addr: SocketAddr, counted: bool) {
        let negotiated = session
            .connection_ids()
            .is_some_and(|(own, _)| !own.is_empty());
        if self.give_back(session, addr) && counted && negotiated {
            self.connections = self.connections.saturating_sub(1);
        }
    }

    /// A connection restored from saved state (graceful restart) at `addr`: its CID (if
    /// non-empty) routes to it and it is counted. `false`, and nothing changes, if another
    /// connection or handshake holds the CID.
    pub(super) fn restored(&mut self, session: &Session, addr: SocketAddr) -> bool {
        let own = session
            .connection_ids()
            .map(|(own, _)| own)
            .filter(|own| !own.is_empty());
        let Some(own) = own else {
            return true;
        };
        let Some(key) = CidKey::new(own) else {
            return false;
        };
        if self.map.contains_key(&key) {
            return false;
        }
        self.map.insert(key, addr);
        self.connections += 1;
        true
    }

    /// Removes `session`'s issued CID if it maps to `addr`; whether it did.
    fn give_back(&mut self, session: &Session, addr: SocketAddr) -> bool {
        issued_key(session).is_some_and(|key| self.forget_key(key, addr))
    }

    /// Removes CID `key` if it maps to `addr` (a handshake's, whose session is gone); whether
    /// it did.
    pub(super) fn forget_key(&mut self, key: CidKey, addr: SocketAddr) -> bool {
        if self.map.get(&key) != Some(&addr) {
            return false;
        }
        self.map.remove(&key);
        true
    }
}

/// A CID as a fixed-size key: no allocation per lookup.
pub(super) type CidKey = crate::cid::InlineCid;

/// The address budget of a connection that moved and whose peer has not answered from there
/// yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unconfirmed {
    /// Bytes that may still be sent there: what came from there, less what went there.
    pub(super) budget: u32,
    /// Something was sent there since the move: the next authenticated record from there is
    /// the peer's answer, and confirms the address.
    pub(super) sent: bool,
}

/// Why a CID record from a new address did not move its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// No record of the datagram authenticated (forged, a broken tag, wrong keys).
    Unauthenticated,
    /// A replay, or a record that authenticated but was not newer than the newest one seen (a
    /// reordered or delayed one): RFC 9146 §6.
    NotNewest,
    /// The connection is still handshaking, is being replaced, or another connection holds
    /// the new address.
    Busy,
}

impl Endpoint {
    /// The CID a new server handshake is issued: the context's prefix and random bytes (a
    /// shard's index in the first byte after the prefix), never one a connection or handshake
    /// of this endpoint holds. `Ok(None)` without CIDs; `Err` if
    /// 16 draws found none free (the handshake is then refused: with at least 4 random bytes,
    /// checked when the context is built, that takes billions of connections).
    pub(super) fn fresh_cid(&mut self) -> Result<Option<Box<[u8]>>, ()> {
        let Some(settings) = self.server.as_ref().and_then(|(ctx, _)| ctx.cid_settings()) else {
            return Ok(None);
        };
        for _ in 0..16 {
            let mut cid = settings.generate();
            // A shard's index follows the prefix, for the socket group's steering program.
            if let (Some(index), Some(byte)) =
                (self.shard_index(), cid.get_mut(settings.prefix.len()))
            {
                *byte = index;
            }
            let key = CidKey::new(&cid).ok_or(())?;
            if !self.cids.map.contains_key(&key) {
                return Ok(Some(cid));
            }
        }
        log::error!("no unused Connection ID in 16 draws: refusing the handshake");
        Err(())
    }

    /// A `tls12_cid` datagram from `from` for the connection now at `at`: handled by that
    /// connection, which then moves to `from` if the rules allow (see the module docs).
    pub(super) fn handle_cid_from_new_address(
        &mut self,
        now: Instant,
        at: SocketAddr,
        from: SocketAddr,
        parsed: &wire::Parsed<'_>,
    ) {
        // Another connection's address, or a checked-out handshake's (offload). An established
        // connection there steps aside if this record moves ours (below): its device has left
        // that address, since ours sends from it now; a handshake there keeps it.
        let holder_parks = self.holds_established_connection(from);
        let taken = !holder_parks
            && (self.peers.contains_key(&from) || self.offload.away.contains_key(&from));
        let Some(p) = self.peers.get_mut(&at) else {
            return;
        };
        let authenticated = p.session.authenticated_count();
        let newest = p.session.newest_read();
        let replayed = p.session.stats().dropped_replayed_records;
        p.session.handle_parsed(now, parsed);
        let refusal = if p.session.authenticated_count() == authenticated {
            if p.session.stats().dropped_replayed_records != replayed {
                Some(Refusal::NotNewest) // a replay: already seen
            } else {
                Some(Refusal::Unauthenticated)
            }
        } else if p.session.newest_read() <= newest {
            Some(Refusal::NotNewest)
        } else if !p.session.is_established() || p.replacement.is_some() || taken {
            Some(Refusal::Busy)
        } else {
            None
        };
        if p.session.authenticated_count() != authenticated {
            p.set_last_activity(now);
        }
        match refusal {
            Some(reason) => {
                match reason {
                    Refusal::Unauthenticated => self.stats.cid_moves_refused_unauthenticated += 1,
                    Refusal::NotNewest => self.stats.cid_moves_refused_not_newest += 1,
                    Refusal::Busy => self.stats.cid_moves_refused_busy += 1,
                }
                log::debug!("{at}: no move to {from} ({reason:?})");
                self.settle(at, now);
            }
            None => {
                if holder_parks {
                    self.park_connection(now, from);
                }
                self.move_peer(now, at, from, parsed.bytes().len());
            }
        }
    }

    /// Whether the connection at `addr` is established, not ending, with no replacement under
    /// way.
    fn holds_established_connection(&self, addr: SocketAddr) -> bool {
        self.peers
            .get(&addr)
            .is_some_and(|p| p.session.is_established() && !p.terminal() && p.replacement.is_none())
    }

    /// Whether the connection at `addr` is an established Connection ID connection with no
    /// replacement under way: one that does not need its address, because its device proves
    /// itself by its CID from wherever it is.
    pub(super) fn holds_cid_connection(&self, addr: SocketAddr) -> bool {
        self.holds_established_connection(addr)
            && self.peers.get(&addr).is_some_and(|p| {
                p.session
                    .connection_ids()
                    .is_some_and(|(own, _)| !own.is_empty())
            })
    }

    /// Parks the connection at `addr` off its address, which another peer takes (a verified
    /// handshake from there, or another CID connection's authenticated, newest record): behind
    /// a NAT or a load balancer, a device's last address is soon another device's (nginx hands
    /// the upstream port of an expired session to a new one). The connection moves to an
    /// address of its own in `100::/64`, the discard-only prefix (RFC 6666), where nothing is
    /// sent (an unconfirmed address with no budget). A CID connection stays there until its
    /// device's next record moves it to wherever it is, as any CID move does; one without a CID
    /// can no longer be reached (its device's records come from elsewhere now, a stranger's)
    /// and ends at its idle timeout. Reported as an address change.
    pub(super) fn park_connection(&mut self, now: Instant, addr: SocketAddr) -> SocketAddr {
        self.parked += 1;
        let n = self.parked;
        let words = [
            (n >> 48) as u16,
            (n >> 32) as u16,
            (n >> 16) as u16,
            n as u16,
        ];
        let parked = SocketAddr::new(
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(
                0x100, 0, 0, 0, words[0], words[1], words[2], words[3],
            )),
            addr.port(),
        );
        log::debug!(
            "{addr}: a new handshake takes the address; its CID connection parks at {parked}"
        );
        self.stats.cid_parked += 1;
        self.move_peer(now, addr, parked, 0);
        parked
    }

    /// The handshake that took a parked CID connection's address (now at `addr`) completed: if
    /// it authenticated the same peer (PSK identity, or certificate) as the parked connection,
    /// it was that device starting over (a reboot), and the parked connection ends, as a
    /// replaced one does; another device's leaves it parked.
    pub(super) fn retire_parked_if_same_peer(&mut self, parked: SocketAddr, addr: SocketAddr) {
        let (Some(new), Some(old)) = (self.peers.get(&addr), self.peers.get(&parked)) else {
            return;
        };
        let (Some(new), Some(old_id)) = (new.session.handshake_facts(), Some(old.id)) else {
            return;
        };
        let Some(old_facts) = old.session.handshake_facts() else {
            return;
        };
        let der = |f: &crate::session::HandshakeFacts| {
            f.peer_certificate.as_ref().and_then(|c| c.to_der().ok())
        };
        let same = new.psk_identity == old_facts.psk_identity && der(&new) == der(&old_facts);
        if same {
            log::debug!("{addr}: the new handshake is the parked connection's device: it ends");
            self.stats.connections_replaced += 1;
            self.close(parked, old_id);
        }
    }

    /// Moves the connection at `from` to `to`, whose peer sent `received` bytes from there.
    fn move_peer(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, received: usize) {
        let Some(mut p) = self.peers.remove(&from) else {
            return;
        };
        // Entries of the old address in the timer heap and the ready queue are skipped from
        // now on; schedule and queue anew under the new one.
        p.scheduled = None;
        p.in_ready = false;
        p.unconfirmed = true;
        p.session.set_peer_addr(to);
        if let Some((own, _)) = p.session.connection_ids() {
            if let Some(key) = CidKey::new(own) {
                self.cids.map.insert(key, to);
            }
            log::info!(
                "address changed: {from} -> {to} cid={}",
                crate::cid::to_hex(own)
            );
        }
        self.moved.insert(
            p.id,
            (
                to,
                Some(Unconfirmed {
                    budget: u32::try_from(received).unwrap_or(u32::MAX),
                    sent: false,
                }),
            ),
        );
        self.stats.cid_moves += 1;
        self.events
            .push_back(Event::AddressChanged { id: p.id, from, to });
        self.peers.insert(to, p);
        self.settle(to, now);
    }

    /// Authenticated input arrived at `addr` from the connection's own (moved) address:
    /// confirms the address if we sent something there since the move, else adds to the
    /// budget.
    pub(super) fn credit_unconfirmed(&mut self, addr: SocketAddr, received: usize) {
        let Some(p) = self.peers.get_mut(&addr) else {
            return;
        };
        let Some((_, unconfirmed)) = self.moved.get_mut(&p.id) else {
            p.unconfirmed = false;
            return;
        };
        match unconfirmed {
            Some(u) if u.sent => {
                *unconfirmed = None;
                p.unconfirmed = false;
            }
            Some(u) => {
                u.budget = u
                    .budget
                    .saturating_add(u32::try_from(received).unwrap_or(u32::MAX))
            }
            None => p.unconfirmed = false,
        }
    }

    /// Whether a datagram of `len` bytes may go to connection `id`'s unconfirmed new address now
    /// (its anti-amplification budget); charges it if so.
    pub(super) fn may_send(&mut self, id: super::ConnectionId, len: usize) -> bool {
        let Some((_, Some(u))) = self.moved.get_mut(&id) else {
            return true;
        };
        let Some(left) = u32::try_from(len)
            .ok()
            .and_then(|l| u.budget.checked_sub(l))
        else {
            self.stats.cid_amplification_dropped += 1;
            return false;
        };
        u.budget = left;
        u.sent = true;
        true
    }

    /// The address connection `id` has now: `peer` unless it moved.
    ///
    /// Without moves (the table is empty) this costs nothing; with some, one lookup by id.
    pub(super) fn resolve(&self, peer: SocketAddr, id: super::ConnectionId) -> SocketAddr {
        if self.moved.is_empty() {
            return peer;
        }
        match self.moved.get(&id) {
            Some((to, _)) => *to,
            None => peer,
        }
    }
}
