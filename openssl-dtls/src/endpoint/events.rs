//! What an endpoint tells the driver above it: [`Event`]s, and for a failed server handshake a
//! [`HandshakeFailure`] naming the peer (and its [`PeerIdentity`] as far as the handshake got),
//! which the drivers hand to the application's [`FailureHook`] or log ([`report_failures`]).

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::ConnectionId;
use crate::error::Error;
use crate::session::Session;
use crate::verify::one_line;

/// Something that happened on an endpoint, for the driver above it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A handshake completed: a new connection.
    Connected {
        /// The peer.
        peer: SocketAddr,
        /// The connection.
        id: ConnectionId,
    },
    /// Application data is waiting for [`Endpoint::recv`](super::Endpoint::recv).
    Readable {
        /// The peer.
        peer: SocketAddr,
        /// The connection.
        id: ConnectionId,
    },
    /// A connection or handshake ended: `error` is `None` for an orderly close (either side's
    /// `close_notify`), else why it failed.
    Closed {
        /// The peer.
        peer: SocketAddr,
        /// The connection.
        id: ConnectionId,
        /// Whether the handshake had completed.
        established: bool,
        /// Why, if not orderly.
        error: Option<Error>,
    },
    /// A handshake that a peer started with this server failed (timed out, an alert either way,
    /// a verification failure). Emitted just before its [`Event::Closed`]; client handshakes
    /// report their failure to the caller of `connect` instead.
    HandshakeFailed(HandshakeFailure),
    /// A connection followed its peer to a new address: an authenticated `tls12_cid` record
    /// newer than any before came from `to` (RFC 9146 §6; a NAT rebinding, a device's new
    /// socket). Everything is sent to `to` from now on; the calls that take `(peer, id)` keep
    /// accepting `from` ([`Endpoint::peer_addr`](super::Endpoint::peer_addr) tells the current
    /// one).
    AddressChanged {
        /// The connection.
        id: ConnectionId,
        /// Its address until now.
        from: SocketAddr,
        /// Its address from now on.
        to: SocketAddr,
    },
    /// A non-DTLS datagram (RTP/RTCP, RFC 7983) from connection `id`'s peer waits for
    /// [`Endpoint::recv_non_dtls`](super::Endpoint::recv_non_dtls) or
    /// [`Endpoint::recv_non_dtls_from`](super::Endpoint::recv_non_dtls_from): one event per
    /// datagram queued ([`EndpointConfig::demux_rtp`](crate::EndpointConfig::demux_rtp)).
    NonDtlsReadable {
        /// The address it came from.
        peer: SocketAddr,
        /// The connection at that address.
        id: ConnectionId,
    },
}

/// Who the peer of a failed handshake said it was, as far as the handshake got.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerIdentity {
    /// The PSK identity it sent (`SSL_get_psk_identity`).
    Psk(Vec<u8>),
    /// The subject of the certificate it sent, in OpenSSL's one-line form.
    Certificate(String),
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerIdentity::Psk(id) => write!(f, "PSK identity {:?}", String::from_utf8_lossy(id)),
            PeerIdentity::Certificate(subject) => write!(f, "certificate {subject}"),
        }
    }
}

/// A server-side handshake that failed: who, and why. Its `Display` reads `ADDR: REASON`
/// (with the identity when known), one line for a log.
#[derive(Debug)]
#[non_exhaustive]
pub struct HandshakeFailure {
    /// The peer's address.
    pub peer: SocketAddr,
    /// The PSK identity or certificate subject the peer presented, if the handshake got that far.
    pub identity: Option<PeerIdentity>,
    /// Why it failed.
    pub reason: Error,
}

impl HandshakeFailure {
    fn of(peer: SocketAddr, session: &Session) -> Option<HandshakeFailure> {
        let reason = session.error()?.duplicate();
        let identity = if let Some(id) = session.psk_identity() {
            Some(PeerIdentity::Psk(id.to_vec()))
        } else {
            session
                .peer_certificate()
                .map(|c| PeerIdentity::Certificate(one_line(c.subject_name())))
        };
        Some(HandshakeFailure {
            peer,
            identity,
            reason,
        })
    }
}

/// A callback the drivers call for every [`HandshakeFailure`] (set with
/// `DtlsServer::on_handshake_failure`). Runs on the driver's thread or task, outside its lock,
/// inside `catch_unwind`: keep it short.
#[derive(Clone)]
pub(crate) struct FailureHook(pub std::sync::Arc<dyn Fn(&HandshakeFailure) + Send + Sync>);

impl std::fmt::Debug for FailureHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailureHook(..)")
    }
}

/// Failures waiting for the driver to report them, at most this many (more are only logged).
pub(crate) const MAX_PENDING_FAILURES: usize = 1024;

/// Reports `failures` to `hook` (outside any lock), or logs each at `info` without one.
pub(crate) fn report_failures(hook: Option<&FailureHook>, failures: &mut Vec<HandshakeFailure>) {
    for failure in failures.drain(..) {
        match hook {
            Some(hook) => crate::context::guard("handshake failure", (), || (hook.0)(&failure)),
            None => log::info!("handshake failed: {failure}"),
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.peer)?;
        if let Some(identity) = &self.identity {
            write!(f, "({identity}) ")?;
        }
        write!(f, "{}", self.reason)
    }
}

/// Queues [`Event::HandshakeFailed`] for a server session's failed handshake.
pub(super) fn report_handshake_failure(
    events: &mut VecDeque<Event>,
    addr: SocketAddr,
    session: &Session,
) {
    if session.role() != crate::session::Role::Server {
        return;
    }
    if let Some(failure) = HandshakeFailure::of(addr, session) {
        events.push_back(Event::HandshakeFailed(failure));
    }
}
