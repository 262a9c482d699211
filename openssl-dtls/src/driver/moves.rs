//! Connections that followed their peer to a new address by its Connection ID (RFC 9146), on
//! their way to the server's address-change hook ([`AddressChange`]): queued under the driver's
//! lock as the endpoint reports them ([`Event::AddressChanged`](crate::endpoint::Event)), at most
//! [`MAX_PENDING_MOVES`], and handed to the hook by the driver after each turn, outside the lock
//! (the hook may call back into the server). The same path as failed handshakes
//! (`driver::failures`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::endpoint::ConnectionId;

/// Moves waiting for the driver to report them, at most this many (more are only logged, as the
/// endpoint logs every move).
pub(crate) const MAX_PENDING_MOVES: usize = 1024;

/// A connection that moved to a new peer address: the peer's records, carrying the Connection
/// ID this server issued, authenticated from `to` (a NAT rebinding, a device that changed
/// networks). Everything is sent to `to` from now on; the connection's handle reports it as its
/// [`peer_addr`](crate::DtlsConnection::peer_addr). Its `Display` reads `FROM -> TO cid=HEX`
/// (`cid=-` for an empty CID), one line for a log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AddressChange {
    /// The connection, as the endpoint numbers it.
    pub id: ConnectionId,
    /// The peer's address until now.
    pub from: SocketAddr,
    /// The peer's address from now on.
    pub to: SocketAddr,
    /// The server's own Connection ID of this connection: what the peer puts in the records it
    /// sends, by which the server found the connection at the new address
    /// ([`Session::connection_ids`](crate::Session::connection_ids)`().0`).
    pub cid: Vec<u8>,
}

impl fmt::Display for AddressChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} cid={}",
            self.from,
            self.to,
            crate::cid::to_hex(&self.cid)
        )
    }
}

/// The application's callback for every [`AddressChange`] (set with
/// `DtlsServer::on_address_change`).
#[derive(Clone)]
struct MoveHook(Arc<dyn Fn(AddressChange) + Send + Sync>);

impl fmt::Debug for MoveHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MoveHook(..)")
    }
}

/// The address-change hook and the moves waiting for it.
#[derive(Debug, Default)]
pub(crate) struct PendingMoves {
    hook: Option<MoveHook>,
    pending: Vec<AddressChange>,
}

/// Moves taken out from under the lock, with the hook to report them to.
#[derive(Debug)]
pub(crate) struct Report {
    hook: MoveHook,
    moves: Vec<AddressChange>,
}

impl PendingMoves {
    /// Sets the hook called for every move from now on.
    pub fn set_hook<F>(&mut self, hook: F)
    where
        F: Fn(AddressChange) + Send + Sync + 'static,
    {
        self.hook = Some(MoveHook(Arc::new(hook)));
    }

    /// Whether a hook waits for moves: without one, nothing is queued (the endpoint already
    /// logs each move).
    pub fn wanted(&self) -> bool {
        self.hook.is_some()
    }

    /// Queues `change` for the driver to report; true if it was queued (the driver should be
    /// woken). Without a hook, or past [`MAX_PENDING_MOVES`], it is dropped (the endpoint
    /// logged it).
    pub fn push(&mut self, change: AddressChange) -> bool {
        if self.hook.is_none() || self.pending.len() >= MAX_PENDING_MOVES {
            return false;
        }
        self.pending.push(change);
        true
    }

    /// Takes the queued moves, to [`report`](Report::report) once the lock is released;
    /// `None` if there are none.
    pub fn take(&mut self) -> Option<Report> {
        if self.pending.is_empty() {
            return None;
        }
        let hook = self.hook.clone()?;
        Some(Report {
            hook,
            moves: std::mem::take(&mut self.pending),
        })
    }
}

impl Report {
    /// Calls the hook for each move; a panic in it is caught and logged. Call without the
    /// driver's lock.
    pub fn report(self) {
        for change in self.moves {
            crate::ffi::ctx::guard("address change", (), || (self.hook.0)(change));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn change(n: u16) -> AddressChange {
        AddressChange {
            id: 7,
            from: SocketAddr::from(([127, 0, 0, 1], n)),
            to: SocketAddr::from(([127, 0, 0, 1], n + 1)),
            cid: vec![0, 0xab],
        }
    }

    #[test]
    fn an_address_change_reads_from_to_and_the_cid_in_hex() {
        assert_eq!(
            change(5000).to_string(),
            "127.0.0.1:5000 -> 127.0.0.1:5001 cid=00ab"
        );
        let empty = AddressChange {
            cid: Vec::new(),
            ..change(1)
        };
        assert!(empty.to_string().ends_with(" cid=-"));
    }

    #[test]
    fn moves_are_queued_only_for_a_hook_and_a_panicking_hook_does_not_unwind() {
        let mut moves = PendingMoves::default();
        assert!(!moves.push(change(1)), "queued without a hook");
        assert!(moves.take().is_none());

        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        moves.set_hook(move |c| {
            seen.fetch_add(1, Ordering::SeqCst);
            assert_ne!(c.from.port(), 2, "the hook panics for this one");
        });
        assert!(moves.push(change(1)));
        assert!(moves.push(change(2)));
        assert!(moves.push(change(3)));
        moves.take().expect("three moves").report();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "the panic stopped the report"
        );
        assert!(moves.take().is_none(), "reported twice");
    }

    #[test]
    fn moves_past_the_bound_are_dropped() {
        let mut moves = PendingMoves::default();
        moves.set_hook(|_| {});
        for _ in 0..MAX_PENDING_MOVES {
            assert!(moves.push(change(1)));
        }
        assert!(!moves.push(change(1)));
    }
}
