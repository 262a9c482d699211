//! [`DtlsConnection`]: one established DTLS association, as a blocking handle.

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Weak};
use std::time::{Duration, Instant};

use openssl::x509::X509;

use crate::driver::{self, Core, Shared, SlotState};
use crate::endpoint::{ConnectionId, ConnectionStats};
use crate::error::{Error, Result};

/// One DTLS connection with one peer, over the socket of a [`DtlsServer`](crate::DtlsServer) or
/// [`DtlsClient`](crate::DtlsClient).
///
/// `Send + Sync`: one thread may block in [`recv`](Self::recv) while another calls
/// [`send`](Self::send). Each `send` is one datagram; each `recv` returns one datagram.
/// Clones are handles to the same connection; dropping the last one closes it (`close_notify`).
///
/// The handshake's facts (cipher, version, PSK identity, peer certificate, ALPN) are fixed when
/// the connection is established and can be read without touching the network.
#[derive(Debug, Clone)]
pub struct DtlsConnection {
    inner: Arc<Inner>,
}

/// The connection behind every clone of a [`DtlsConnection`].
#[derive(Debug)]
pub(crate) struct Inner {
    shared: Arc<Shared>,
    peer: SocketAddr,
    id: ConnectionId,
    cond: Arc<Condvar>,
    facts: Facts,
}

/// What a handshake established, read once from the session when the connection is handed out
/// (shared by the blocking and the tokio connection).
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    pub(crate) cipher: Option<&'static str>,
    pub(crate) version: Option<&'static str>,
    pub(crate) psk_identity: Option<Vec<u8>>,
    pub(crate) peer_certificate: Option<X509>,
    pub(crate) alpn: Option<Vec<u8>>,
    pub(crate) server_name: Option<String>,
    pub(crate) data_mtu: usize,
}

impl Facts {
    pub(crate) fn of(session: Option<&crate::Session>) -> Facts {
        session
            .map(|s| Facts {
                cipher: s.cipher(),
                version: s.protocol_version(),
                psk_identity: s.psk_identity().map(<[u8]>::to_vec),
                peer_certificate: s.peer_certificate(),
                alpn: s.alpn_protocol().map(<[u8]>::to_vec),
                server_name: s.server_name().map(str::to_owned),
                data_mtu: s.data_mtu(),
            })
            .unwrap_or_default()
    }
}

impl DtlsConnection {
    /// A handle for connection `id`; reads the handshake facts from its session.
    pub(crate) fn new(
        shared: Arc<Shared>,
        core: &Core,
        peer: SocketAddr,
        id: ConnectionId,
    ) -> Option<DtlsConnection> {
        let cond = Arc::clone(&core.slots.get(&id)?.cond);
        let facts = Facts::of(core.endpoint.session(peer, id));
        Some(DtlsConnection {
            inner: Arc::new(Inner {
                shared,
                peer,
                id,
                cond,
                facts,
            }),
        })
    }

    /// A weak reference, for a client to find this connection again.
    pub(crate) fn downgrade(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// Another handle to the connection `weak` refers to, if a handle still holds it and it is
    /// still established. Call without the core's lock: the handle made here may be the last
    /// one, and dropping it takes the lock.
    pub(crate) fn upgrade(weak: &Weak<Inner>) -> Option<DtlsConnection> {
        let connection = DtlsConnection {
            inner: weak.upgrade()?,
        };
        (!connection.is_closed()).then_some(connection)
    }

    /// Sends one datagram of application data. It must fit one record within the MTU
    /// ([`data_mtu`](Self::data_mtu)); a larger one is refused with
    /// [`Error::PayloadTooLarge`]. After the connection ended: its error, or [`Error::Closed`].
    #[doc(alias = "SSL_write")]
    pub fn send(&self, data: &[u8]) -> Result<()> {
        let mut core = self.inner.shared.lock();
        match core.endpoint.send(self.inner.peer, self.inner.id, data) {
            Ok(()) => {
                self.inner.shared.flush(&mut core);
                Ok(())
            }
            Err(Error::Closed) => Err(self.ended_error(&core).unwrap_or(Error::Closed)),
            Err(e) => Err(e),
        }
    }

    /// Receives one datagram into `buf`, blocking until one arrives. Returns its length (a
    /// datagram longer than `buf` is truncated, as with UDP), or `Ok(0)` at end of stream: the
    /// connection was closed by either side with `close_notify`. A fatal alert, timeout or error
    /// ends it with that error instead.
    #[doc(alias = "SSL_read")]
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        self.recv_until(buf, None).map(|n| n.unwrap_or(0))
    }

    /// As [`recv`](Self::recv), but gives up after `timeout`: `Ok(None)` if nothing arrived.
    pub fn recv_timeout(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>> {
        self.recv_until(buf, Some(Instant::now() + timeout))
    }

    fn recv_until(&self, buf: &mut [u8], deadline: Option<Instant>) -> Result<Option<usize>> {
        let core = self.inner.shared.lock();
        let (_core, outcome) = driver::wait_until(core, &self.inner.cond, deadline, |core| {
            match core.endpoint.recv(self.inner.peer, self.inner.id, buf) {
                Ok(Some(n)) => Some(Ok(Some(n))),
                Ok(None) => {
                    if core.shutdown {
                        Some(Ok(Some(0)))
                    } else {
                        None
                    }
                }
                Err(Error::Closed) => match self.ended_error(core) {
                    Some(e) => Some(Err(e)),
                    None => Some(Ok(Some(0))),
                },
                Err(e) => Some(Err(e)),
            }
        });
        match outcome {
            Some(r) => r,
            None => Ok(None),
        }
    }

    /// The error that ended this connection, if it ended with one.
    fn ended_error(&self, core: &Core) -> Option<Error> {
        match core.slots.get(&self.inner.id).map(|s| &s.state) {
            Some(SlotState::Ended(Some(e))) => Some(e.duplicate()),
            _ => None,
        }
    }

    /// Closes the connection: sends `close_notify` (`SSL_shutdown`). The peer's `recv` then
    /// reads end of stream; ours does too once queued data is read.
    #[doc(alias = "SSL_shutdown")]
    pub fn close(&self) {
        let mut core = self.inner.shared.lock();
        core.endpoint.close(self.inner.peer, self.inner.id);
        driver::dispatch(&self.inner.shared, &mut core);
        self.inner.shared.flush(&mut core);
        drop(core);
        self.inner.shared.wake();
    }

    /// This connection's counters (datagrams, bytes and application records each way, drops
    /// by cause) and when it last received authenticated input; `None` once the connection is
    /// gone from the endpoint.
    pub fn stats(&self) -> Option<ConnectionStats> {
        self.inner
            .shared
            .lock()
            .endpoint
            .connection_stats(self.inner.peer, self.inner.id)
    }

    /// Whether the connection has ended (closed by either side, failed, or timed out).
    pub fn is_closed(&self) -> bool {
        let core = self.inner.shared.lock();
        !matches!(
            core.slots.get(&self.inner.id).map(|s| &s.state),
            Some(SlotState::Established)
        )
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer
    }

    /// The local socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.shared.local_addr
    }

    /// The negotiated cipher's OpenSSL name, e.g. `"PSK-AES128-CCM8"` (`SSL_get_current_cipher`).
    #[doc(alias = "SSL_get_current_cipher")]
    pub fn cipher(&self) -> Option<&'static str> {
        self.inner.facts.cipher
    }

    /// The negotiated protocol version, `"DTLSv1.2"` (`SSL_get_version`).
    #[doc(alias = "SSL_get_version")]
    pub fn protocol_version(&self) -> Option<&'static str> {
        self.inner.facts.version
    }

    /// The PSK identity of a PSK handshake (`SSL_get_psk_identity`).
    #[doc(alias = "SSL_get_psk_identity")]
    pub fn psk_identity(&self) -> Option<&[u8]> {
        self.inner.facts.psk_identity.as_deref()
    }

    /// The peer's certificate, if it sent one (`SSL_get1_peer_certificate`).
    #[doc(alias = "SSL_get1_peer_certificate")]
    pub fn peer_certificate(&self) -> Option<&X509> {
        self.inner.facts.peer_certificate.as_ref()
    }

    /// The ALPN protocol agreed, if any (`SSL_get0_alpn_selected`).
    #[doc(alias = "SSL_get0_alpn_selected")]
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.inner.facts.alpn.as_deref()
    }

    /// The server name (SNI) the client sent (`SSL_get_servername`).
    #[doc(alias = "SSL_get_servername")]
    pub fn server_name(&self) -> Option<&str> {
        self.inner.facts.server_name.as_deref()
    }

    /// The largest payload [`send`](Self::send) accepts (`DTLS_get_data_mtu`).
    #[doc(alias = "DTLS_get_data_mtu")]
    pub fn data_mtu(&self) -> usize {
        self.inner.facts.data_mtu
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut core = self.shared.lock();
        core.endpoint.release(self.peer, self.id);
        core.slots.remove(&self.id);
        driver::dispatch(&self.shared, &mut core);
        self.shared.flush(&mut core);
    }
}
