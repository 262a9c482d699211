//! A connection handle's state and the operations that do not wait ([`Handle`]), shared by
//! the blocking and the tokio `DtlsConnection`; the handshake facts read once when a handle is
//! made ([`Facts`]); and a client's table of the connections it made, to hand out again
//! ([`Known`]). The public accessors both connection types share are written once, in
//! [`connection_accessors!`](crate::driver::handle::connection_accessors).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::shared::{Core, Shared, SlotState};
use super::Io;
use crate::bio::MAX_SPARE_BUFFERS;
use crate::context::DtlsClientContext;
use crate::endpoint::{ConnectionId, ConnectionStats};
use crate::error::{Error, Result, TimeoutPhase};
use crate::session::{HandshakeFacts, Session};

/// A connection's Connection IDs, `(ours, the peer's)`, as a handle keeps them.
type ConnectionIds = (Box<[u8]>, Box<[u8]>);

/// What a connection handle knows of its handshake: the session's [`HandshakeFacts`] (read
/// once, shared among the handle's clones), the data MTU and the Connection IDs, taken when the
/// handle is made.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    pub handshake: Option<Arc<HandshakeFacts>>,
    pub data_mtu: usize,
    /// The negotiated Connection IDs, `(ours, the peer's)` ([`Session::connection_ids`]).
    pub connection_ids: Option<ConnectionIds>,
}

impl Facts {
    /// The facts of `session`; all empty without one.
    pub(crate) fn of(session: Option<&Session>) -> Facts {
        session
            .map(|s| Facts {
                handshake: s.handshake_facts().map(Arc::new),
                data_mtu: s.data_mtu(),
                connection_ids: s
                    .connection_ids()
                    .map(|(own, peer)| (own.into(), peer.into())),
            })
            .unwrap_or_default()
    }
}

/// The connection behind every clone of a `DtlsConnection`. Dropping it releases the
/// connection (`close_notify`).
#[derive(Debug)]
pub(crate) struct Handle<D: Io> {
    /// The driver's shared state.
    pub shared: Arc<Shared<D>>,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The connection's id in the endpoint.
    pub id: ConnectionId,
    /// The slot's signal: woken when data arrives or the connection ends.
    pub signal: Arc<D::Signal>,
    /// What the handshake established.
    pub facts: Facts,
}

impl<D: Io> Handle<D> {
    /// A handle for connection `id`, which must have a slot; reads the handshake facts from
    /// its session.
    pub fn new(
        shared: Arc<Shared<D>>,
        core: &Core<D>,
        peer: SocketAddr,
        id: ConnectionId,
    ) -> Option<Arc<Handle<D>>> {
        let facts = Facts::of(core.endpoint.session(peer, id));
        Handle::with_facts(shared, core, peer, id, facts)
    }

    /// A handle for connection `id` (which must have a slot) with `facts` taken earlier: an
    /// accepted connection's, taken when its handshake completed, so that a connection that
    /// ended before `accept` still tells what its handshake established.
    pub fn with_facts(
        shared: Arc<Shared<D>>,
        core: &Core<D>,
        peer: SocketAddr,
        id: ConnectionId,
        facts: Facts,
    ) -> Option<Arc<Handle<D>>> {
        let signal = Arc::clone(&core.slots.get(&id)?.signal);
        Some(Arc::new(Handle {
            shared,
            peer,
            id,
            signal,
            facts,
        }))
    }

    /// The handle `connect` hands out once its wait for the handshake ended with `outcome`
    /// ([`Core::connect_outcome`]; `None`: the deadline passed first).
    pub fn connected(
        shared: &Arc<Shared<D>>,
        core: &Core<D>,
        peer: SocketAddr,
        id: ConnectionId,
        outcome: Option<Result<()>>,
    ) -> Result<Arc<Handle<D>>> {
        match outcome {
            Some(Ok(())) => Handle::new(Arc::clone(shared), core, peer, id).ok_or(Error::Closed),
            Some(Err(e)) => Err(e),
            None => Err(Error::Timeout {
                peer: Some(peer),
                phase: TimeoutPhase::Connect,
            }),
        }
    }

    /// Sends one datagram of application data now, under the lock the caller holds.
    pub fn send_locked(&self, core: &mut Core<D>, data: &[u8]) -> Result<()> {
        match core.endpoint.send(self.peer, self.id, data) {
            Ok(()) => {
                self.shared.flush(core);
                Ok(())
            }
            Err(Error::Closed) => Err(self.ended_error(core).unwrap_or(Error::Closed)),
            Err(e) => Err(e),
        }
    }

    /// Sends several datagrams of application data now, under the lock the caller holds: every
    /// payload is checked against the data MTU first (none is sent if one is too large), then
    /// the records are sealed a few at a time, each few moved from the session into the
    /// driver's send batch, and the batch goes out when full and at the end: one
    /// `sendmmsg(2)` for many datagrams (GSO for equal sizes). A few: as many as the session
    /// keeps recycled outgoing buffers for ([`MAX_SPARE_BUFFERS`]), so sealing allocates
    /// nothing, and never more than its send queue holds. If the connection ends midway, the
    /// datagrams before that were sent.
    pub fn send_many_locked(&self, core: &mut Core<D>, datagrams: &[&[u8]]) -> Result<()> {
        let (max, few) = match core.endpoint.session(self.peer, self.id) {
            Some(s) => (
                s.data_mtu(),
                s.config().send_queue.clamp(1, MAX_SPARE_BUFFERS),
            ),
            None => return Err(self.ended_error(core).unwrap_or(Error::Closed)),
        };
        if let Some(d) = datagrams.iter().find(|d| d.len() > max) {
            return Err(Error::PayloadTooLarge { len: d.len(), max });
        }
        for chunk in datagrams.chunks(few) {
            if let Err(e) = core.endpoint.send_many(self.peer, self.id, chunk) {
                self.shared.flush(core);
                return Err(match e {
                    Error::Closed => self.ended_error(core).unwrap_or(Error::Closed),
                    e => e,
                });
            }
            if core.out.tx.gather(&mut core.endpoint) {
                self.shared.flush(core);
            }
        }
        self.shared.flush(core);
        Ok(())
    }

    /// Takes one received datagram into `buf`, under the lock the caller holds:
    /// `Some(Ok(Some(n)))` a datagram, `Some(Ok(Some(0)))` end of stream, `Some(Err)` the
    /// error that ended the connection, or `None`: nothing yet, wait.
    pub fn recv_locked(&self, core: &mut Core<D>, buf: &mut [u8]) -> Option<Result<Option<usize>>> {
        match core.endpoint.recv(self.peer, self.id, buf) {
            Ok(Some(n)) => Some(Ok(Some(n))),
            Ok(None) => core.shutdown.then_some(Ok(Some(0))),
            Err(Error::Closed) => match self.ended_error(core) {
                Some(e) => Some(Err(e)),
                None => Some(Ok(Some(0))),
            },
            Err(e) => Some(Err(e)),
        }
    }

    /// Sends one non-DTLS datagram (SRTP/SRTCP) to the peer now, under the lock the caller
    /// holds ([`Endpoint::send_non_dtls`](crate::endpoint::Endpoint::send_non_dtls)).
    pub fn send_non_dtls_locked(&self, core: &mut Core<D>, datagram: &[u8]) -> Result<()> {
        match core.endpoint.send_non_dtls(self.peer, self.id, datagram) {
            Ok(()) => {
                self.shared.flush(core);
                Ok(())
            }
            Err(Error::Closed) => Err(self.ended_error(core).unwrap_or(Error::Closed)),
            Err(e) => Err(e),
        }
    }

    /// Takes one non-DTLS datagram (RTP/RTCP) of this connection into `buf`, under the lock:
    /// `Some(Ok(n))` a datagram, `Some(Err)` the connection ended (with its error, or
    /// [`Error::Closed`]), `None`: nothing yet, wait.
    pub fn recv_non_dtls_locked(
        &self,
        core: &mut Core<D>,
        buf: &mut [u8],
    ) -> Option<Result<usize>> {
        if let Some(n) = core.endpoint.recv_non_dtls_from(self.id, buf) {
            return Some(Ok(n));
        }
        let ended = core.shutdown
            || matches!(
                core.slots.get(&self.id).map(|s| &s.state),
                Some(SlotState::Ended(_)) | None
            );
        ended.then(|| Err(self.ended_error(core).unwrap_or(Error::Closed)))
    }

    /// The error that ended this connection, if it ended with one.
    fn ended_error(&self, core: &Core<D>) -> Option<Error> {
        match core.slots.get(&self.id).map(|s| &s.state) {
            Some(SlotState::Ended(Some(e))) => Some(e.duplicate()),
            _ => None,
        }
    }

    /// Sends `close_notify` and wakes the driver (its deadlines changed).
    pub fn close(&self) {
        let mut core = self.shared.lock();
        core.endpoint.close(self.peer, self.id);
        self.shared.settle(&mut core);
        drop(core);
        self.shared.wake();
    }

    /// The connection's counters; `None` once it is gone from the endpoint.
    pub fn stats(&self) -> Option<ConnectionStats> {
        self.shared
            .lock()
            .endpoint
            .connection_stats(self.peer, self.id)
    }

    /// The peer's current address: where the connection was made or accepted, or where it
    /// followed its peer by its Connection ID since ([`Endpoint::peer_addr`]).
    ///
    /// [`Endpoint::peer_addr`]: crate::endpoint::Endpoint::peer_addr
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.lock().endpoint.peer_addr(self.peer, self.id)
    }

    /// RFC 5705 keying material of this connection ([`Session::export_keying_material`]);
    /// [`Error::Closed`] once it is gone from the endpoint.
    pub fn export_keying_material(
        &self,
        label: &str,
        context: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<()> {
        let core = self.shared.lock();
        let session = core
            .endpoint
            .session(self.peer, self.id)
            .ok_or(Error::Closed)?;
        session.export_keying_material(label, context, out)
    }

    /// The SRTP keying material ([`Session::srtp_keying_material`]); [`Error::Closed`] once the
    /// connection is gone from the endpoint.
    pub fn srtp_keying_material(&self) -> Result<Option<crate::session::SrtpKeyingMaterial>> {
        let core = self.shared.lock();
        let session = core
            .endpoint
            .session(self.peer, self.id)
            .ok_or(Error::Closed)?;
        session.srtp_keying_material()
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        let core = self.shared.lock();
        !matches!(
            core.slots.get(&self.id).map(|s| &s.state),
            Some(SlotState::Established)
        )
    }
}

impl<D: Io> Drop for Handle<D> {
    fn drop(&mut self) {
        self.shared.release(self.peer, self.id);
    }
}

/// The accessors every `DtlsConnection` has, over its `inner: Arc<Handle<_>>`: written once
/// for the blocking and the tokio connection.
macro_rules! connection_accessors {
    () => {
        /// This connection's counters (datagrams, bytes and application records each way, drops
        /// by cause) and when it last received authenticated input; `None` once the connection
        /// is gone from the endpoint.
        pub fn stats(&self) -> Option<$crate::endpoint::ConnectionStats> {
            self.inner.stats()
        }

        /// Whether the connection has ended (closed by either side, failed, or timed out).
        pub fn is_closed(&self) -> bool {
            self.inner.is_closed()
        }

        /// The peer's address: the one the handshake came from or went to, or, after the
        /// peer's records carrying our Connection ID (RFC 9146) authenticated from a
        /// new address (a NAT rebinding), that new address, where everything is sent from then
        /// on. Takes the driver's lock.
        pub fn peer_addr(&self) -> std::net::SocketAddr {
            self.inner.peer_addr()
        }

        /// The Connection IDs the handshake negotiated (RFC 9146), `(ours, the peer's)`: ours
        /// is what the peer puts in the records it sends us, the peer's what we put in the
        /// records we send (a client's view: `(empty, the server's CID)` with
        /// `connection_id(0)`). `None` if the handshake did not negotiate them. Print one with
        /// [`cid::to_hex`](crate::cid::to_hex).
        pub fn connection_ids(&self) -> Option<(&[u8], &[u8])> {
            self.inner
                .facts
                .connection_ids
                .as_ref()
                .map(|(own, peer)| (&**own, &**peer))
        }

        /// The local socket's address (the new one after a client's `rebind`).
        pub fn local_addr(&self) -> std::net::SocketAddr {
            use $crate::driver::Io as _;
            self.inner
                .shared
                .io
                .local_addr()
                .unwrap_or(self.inner.shared.local_addr)
        }

        /// The negotiated cipher's OpenSSL name, e.g. `"PSK-AES128-CCM8"` (`SSL_get_current_cipher`).
        #[doc(alias = "SSL_get_current_cipher")]
        pub fn cipher(&self) -> Option<&'static str> {
            self.inner.facts.handshake.as_ref().and_then(|f| f.cipher)
        }

        /// The negotiated protocol version, `"DTLSv1.2"` (`SSL_get_version`).
        #[doc(alias = "SSL_get_version")]
        pub fn protocol_version(&self) -> Option<&'static str> {
            self.inner.facts.handshake.as_ref().map(|f| f.version)
        }

        /// The PSK identity of a PSK handshake (`SSL_get_psk_identity`).
        #[doc(alias = "SSL_get_psk_identity")]
        pub fn psk_identity(&self) -> Option<&[u8]> {
            self.inner
                .facts
                .handshake
                .as_ref()
                .and_then(|f| f.psk_identity.as_deref())
        }

        /// The peer's certificate, if it sent one (`SSL_get1_peer_certificate`).
        #[doc(alias = "SSL_get1_peer_certificate")]
        pub fn peer_certificate(&self) -> Option<&openssl::x509::X509> {
            self.inner
                .facts
                .handshake
                .as_ref()
                .and_then(|f| f.peer_certificate.as_ref())
        }

        /// The ALPN protocol agreed, if any (`SSL_get0_alpn_selected`).
        #[doc(alias = "SSL_get0_alpn_selected")]
        pub fn alpn_protocol(&self) -> Option<&[u8]> {
            self.inner
                .facts
                .handshake
                .as_ref()
                .and_then(|f| f.alpn.as_deref())
        }

        /// The server name (SNI) the client sent (`SSL_get_servername`).
        #[doc(alias = "SSL_get_servername")]
        pub fn server_name(&self) -> Option<&str> {
            self.inner
                .facts
                .handshake
                .as_ref()
                .and_then(|f| f.server_name.as_deref())
        }

        /// What the handshake established, as the session told when the handle was made
        /// ([`Session::handshake_facts`](crate::Session::handshake_facts)).
        pub fn handshake_facts(&self) -> Option<&std::sync::Arc<crate::session::HandshakeFacts>> {
            self.inner.facts.handshake.as_ref()
        }

        /// Exports `out.len()` bytes of keying material (RFC 5705) under `label` and, if given,
        /// `context`: the bytes the peer's `SSL_export_keying_material` gives. A compact
        /// connection exports after its hand-off only if its context kept the secret for it
        /// (`keep_exporter_secret`, or a negotiated SRTP profile); see
        /// [`Session::export_keying_material`](crate::Session::export_keying_material) for the
        /// errors. Takes the driver's lock.
        #[doc(alias = "SSL_export_keying_material")]
        pub fn export_keying_material(
            &self,
            label: &str,
            context: Option<&[u8]>,
            out: &mut [u8],
        ) -> $crate::Result<()> {
            self.inner.export_keying_material(label, context, out)
        }

        /// The SRTP protection profile the handshake negotiated (RFC 5764), if any
        /// (`SSL_get_selected_srtp_profile`).
        #[doc(alias = "SSL_get_selected_srtp_profile")]
        pub fn selected_srtp_profile(&self) -> Option<$crate::SrtpProfile> {
            self.inner
                .facts
                .handshake
                .as_ref()
                .and_then(|f| f.srtp_profile)
        }

        /// The SRTP keying material of the negotiated profile (RFC 5764 §4.2), `Ok(None)`
        /// without one
        /// ([`Session::srtp_keying_material`](crate::Session::srtp_keying_material)). Takes
        /// the driver's lock.
        #[doc(alias = "SSL_export_keying_material")]
        pub fn srtp_keying_material(&self) -> $crate::Result<Option<$crate::SrtpKeyingMaterial>> {
            self.inner.srtp_keying_material()
        }

        /// The largest payload [`send`](Self::send) accepts (`DTLS_get_data_mtu`).
        #[doc(alias = "DTLS_get_data_mtu")]
        pub fn data_mtu(&self) -> usize {
            self.inner.facts.data_mtu
        }
    };
}
pub(crate) use connection_accessors;

/// A client's connections, by peer, for `connect` to hand out again: as Dart's `dtls2` does,
/// connecting again to a peer with the same context and server name returns another handle
/// to the established connection while some handle still holds it.
#[derive(Debug)]
pub(crate) struct Known<D: Io> {
    map: Mutex<HashMap<SocketAddr, Entry<D>>>,
}

/// A connection a client made, and the request that made it.
#[derive(Debug)]
struct Entry<D: Io> {
    handle: Weak<Handle<D>>,
    server_name: Option<String>,
    ctx: DtlsClientContext,
}

impl<D: Io> Default for Known<D> {
    fn default() -> Self {
        Known {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<D: Io> Known<D> {
    /// Another handle to an established connection with `peer` made with `server_name` and
    /// `ctx`, if some handle still holds it. Call without the core's lock: the handle made here
    /// may be the last one, and dropping it takes the lock.
    pub fn existing(
        &self,
        peer: SocketAddr,
        server_name: Option<&str>,
        ctx: &DtlsClientContext,
    ) -> Option<Arc<Handle<D>>> {
        let weak = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, entry| entry.handle.strong_count() > 0);
            let entry = map.get(&peer)?;
            if entry.server_name.as_deref() != server_name || !entry.ctx.same_as(ctx) {
                return None;
            }
            entry.handle.clone()
        };
        let handle = weak.upgrade()?;
        (!handle.is_closed()).then_some(handle)
    }

    /// Records `handle`, made for `peer` with `server_name` and `ctx`.
    pub fn remember(
        &self,
        handle: &Arc<Handle<D>>,
        server_name: Option<&str>,
        ctx: &DtlsClientContext,
    ) {
        let entry = Entry {
            handle: Arc::downgrade(handle),
            server_name: server_name.map(str::to_owned),
            ctx: ctx.clone(),
        };
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(handle.peer, entry);
    }
}
