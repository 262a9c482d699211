//! [`DtlsClient`] on tokio: connections to one or several servers over one UDP socket.

use std::net::SocketAddr;
use std::time::Duration;

use ::tokio::net::ToSocketAddrs;
use ::tokio::time::Instant as TokioInstant;

use super::connection::DtlsConnection;
use super::driver::{wait_for, Driver, TokioIo, TokioShared};
use crate::context::DtlsClientContext;
use crate::driver::handle::{Handle, Known};
use crate::driver::SocketOptions;
use crate::endpoint::{ConnectionId, Endpoint, EndpointConfig, EndpointStats};
use crate::error::Result;

/// A DTLS client socket on tokio: connect to one or several servers over one UDP socket. The
/// async twin of [`crate::DtlsClient`].
#[derive(Debug)]
pub struct DtlsClient {
    driver: Driver,
    known: Known<TokioIo>,
}

impl DtlsClient {
    /// Binds a client socket on `addr` (`"0.0.0.0:0"` or `"[::]:0"` for any port). Must be
    /// called within a tokio runtime.
    pub async fn bind(addr: impl ToSocketAddrs) -> Result<DtlsClient> {
        DtlsClient::bind_with(addr, EndpointConfig::default(), SocketOptions::default()).await
    }

    /// Binds a client socket with the given limits and socket options.
    pub async fn bind_with(
        addr: impl ToSocketAddrs,
        config: EndpointConfig,
        socket: SocketOptions,
    ) -> Result<DtlsClient> {
        let endpoint = Endpoint::client(config)?;
        let driver = Driver::start(addr, endpoint, false, &socket).await?;
        Ok(DtlsClient {
            driver,
            known: Known::default(),
        })
    }

    /// Connects to `peer` and completes the handshake within `timeout`, or fails with
    /// [`Error::Timeout`](crate::error::Error::Timeout) or the handshake's error. Dropping the
    /// future before it completes releases the handshake.
    ///
    /// No server name is sent: when the context verifies certificates, the server's
    /// certificate must be issued for `peer`'s IP address (an IP subject alternative name),
    /// unless the context opted out with
    /// [`danger_skip_server_name_check`](crate::DtlsClientContextBuilder::danger_skip_server_name_check).
    /// To send a name (SNI) and check the certificate against it, use
    /// [`connect_named`](Self::connect_named).
    ///
    /// As Dart's `dtls2` does, connecting to a peer this client already has an established
    /// connection with, made with the same context and server name, returns another handle to
    /// that connection (no new handshake), as long as some handle to it is still held. A
    /// handshake with `peer` still in progress, or a connection made with another context or
    /// server name, fails with an [`Error::Io`](crate::error::Error::Io) of kind
    /// [`AlreadyExists`](std::io::ErrorKind::AlreadyExists). On a closed client this fails with
    /// [`Error::ClientClosed`](crate::error::Error::ClientClosed).
    #[doc(alias = "SSL_connect")]
    #[doc(alias = "X509_VERIFY_PARAM_set1_ip")]
    pub async fn connect(
        &self,
        peer: SocketAddr,
        ctx: &DtlsClientContext,
        timeout: Duration,
    ) -> Result<DtlsConnection> {
        self.connect_inner(peer, None, ctx, timeout).await
    }

    /// As [`connect`](Self::connect), sending `server_name` (SNI) and, when the context
    /// verifies certificates, checking the server's certificate against it
    /// (`X509_VERIFY_PARAM_set1_host`; an IP address given as the name is checked as one).
    #[doc(alias = "X509_VERIFY_PARAM_set1_host")]
    pub async fn connect_named(
        &self,
        peer: SocketAddr,
        server_name: &str,
        ctx: &DtlsClientContext,
        timeout: Duration,
    ) -> Result<DtlsConnection> {
        self.connect_inner(peer, Some(server_name), ctx, timeout)
            .await
    }

    async fn connect_inner(
        &self,
        peer: SocketAddr,
        server_name: Option<&str>,
        ctx: &DtlsClientContext,
        timeout: Duration,
    ) -> Result<DtlsConnection> {
        if let Some(existing) = self.known.existing(peer, server_name, ctx) {
            return Ok(DtlsConnection::from_handle(existing));
        }
        let deadline = TokioInstant::now() + timeout;
        let shared = &self.driver.shared;
        let (id, notify) = shared.begin_connect(peer, ctx, server_name)?;
        // Releases the handshake if this future is dropped (or fails) before it completes.
        let mut pending = PendingConnect {
            shared,
            peer,
            id,
            armed: true,
        };
        let outcome = wait_for(&notify, Some(deadline), || {
            shared.lock().connect_outcome(id)
        })
        .await;
        let handle = {
            let core = shared.lock();
            Handle::connected(shared, &core, peer, id, outcome)?
        };
        pending.armed = false;
        self.known.remember(&handle, server_name, ctx);
        Ok(DtlsConnection::from_handle(handle))
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.driver.shared.local_addr
    }

    /// A snapshot of the endpoint's counters.
    pub fn stats(&self) -> EndpointStats {
        self.driver.shared.stats()
    }

    /// Closes every connection (`close_notify`) and stops the driver task.
    pub async fn close(&self) {
        self.driver.shutdown().await;
    }
}

impl Drop for DtlsClient {
    fn drop(&mut self) {
        self.driver.shutdown_now();
    }
}

/// A handshake started by `connect`: released unless disarmed.
struct PendingConnect<'a> {
    shared: &'a TokioShared,
    peer: SocketAddr,
    id: ConnectionId,
    armed: bool,
}

impl Drop for PendingConnect<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.shared.release(self.peer, self.id);
    }
}
