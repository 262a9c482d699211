//! [`DtlsServer`] on tokio, and [`Incoming`], its connections as a stream.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ::tokio::net::ToSocketAddrs;
use ::tokio::time::Instant as TokioInstant;

use super::connection::DtlsConnection;
use super::driver::{wait_for, Driver, TokioShared};
use super::{poll_kept, BoxFuture};
use crate::context::DtlsServerContext;
use crate::driver::handle::Handle;
use crate::driver::moves::AddressChange;
use crate::driver::SocketOptions;
use crate::endpoint::{Endpoint, EndpointConfig, EndpointStats, HandshakeFailure};
use crate::error::{Error, Result};

/// A DTLS server on tokio: one UDP socket, a stateless cookie exchange (`DTLSv1_listen`) before
/// any per-peer state, and a [`DtlsConnection`] per peer whose handshake completed. The async
/// twin of [`crate::DtlsServer`].
///
/// Dropping the server (or [`close`](Self::close)) sends `close_notify` to every peer and stops
/// its driver task; every connection's `recv` then ends.
#[derive(Debug)]
pub struct DtlsServer {
    driver: Driver,
}

impl DtlsServer {
    /// Binds a server on `addr` with default limits and socket options. Must be called within
    /// a tokio runtime (the driver task is spawned on it).
    pub async fn bind(addr: impl ToSocketAddrs, ctx: DtlsServerContext) -> Result<DtlsServer> {
        DtlsServer::bind_with(
            addr,
            ctx,
            EndpointConfig::default(),
            SocketOptions::default(),
        )
        .await
    }

    /// Binds a server on `addr` with the given limits and socket options.
    pub async fn bind_with(
        addr: impl ToSocketAddrs,
        ctx: DtlsServerContext,
        config: EndpointConfig,
        socket: SocketOptions,
    ) -> Result<DtlsServer> {
        let endpoint = Endpoint::server(ctx, config)?;
        let driver = Driver::start(addr, endpoint, true, &socket).await?;
        log::debug!(
            "DTLS server (tokio) listening on {}",
            driver.shared.local_addr
        );
        Ok(DtlsServer { driver })
    }

    /// Waits for the next connection whose handshake completed. After [`close`](Self::close):
    /// [`Error::Closed`]. Cancellation-safe: a dropped `accept` takes no connection.
    pub async fn accept(&self) -> Result<DtlsConnection> {
        accept_until(&self.driver.shared, None)
            .await
            .and_then(|c| c.ok_or(Error::Closed))
    }

    /// As [`accept`](Self::accept), but gives up after `timeout` with `Ok(None)`.
    pub async fn accept_timeout(&self, timeout: Duration) -> Result<Option<DtlsConnection>> {
        accept_until(&self.driver.shared, Some(TokioInstant::now() + timeout)).await
    }

    /// The incoming connections ([`accept`](Self::accept) in a loop) as a stream: use
    /// [`Incoming::next`] or its `futures_core::Stream` impl. It ends when the server is closed.
    pub fn incoming(&self) -> Incoming {
        Incoming {
            shared: Arc::clone(&self.driver.shared),
            pending: None,
            done: false,
        }
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.driver.shared.local_addr
    }

    /// A snapshot of the endpoint's counters.
    pub fn stats(&self) -> EndpointStats {
        self.driver.shared.stats()
    }

    /// Calls `hook` for every handshake a peer started with this server that failed: see
    /// [`crate::DtlsServer::on_handshake_failure`]. The hook runs on the driver task, outside the
    /// server's lock; it must not block.
    pub fn on_handshake_failure<F>(&self, hook: F)
    where
        F: Fn(&HandshakeFailure) + Send + Sync + 'static,
    {
        self.driver.shared.lock().failures.set_hook(hook);
    }

    /// Calls `hook` for every connection that followed its peer to a new address by the
    /// Connection ID this server issued: see [`crate::DtlsServer::on_address_change`]. The hook
    /// runs on the driver task, outside the server's lock; it must not block.
    pub fn on_address_change<F>(&self, hook: F)
    where
        F: Fn(AddressChange) + Send + Sync + 'static,
    {
        self.driver.shared.lock().moves.set_hook(hook);
    }

    /// Closes the server: `close_notify` to every peer, then the driver task. Every
    /// connection's `recv` ends; `accept` returns [`Error::Closed`].
    pub async fn close(&self) {
        self.driver.shutdown().await;
    }
}

impl Drop for DtlsServer {
    fn drop(&mut self) {
        self.driver.shutdown_now();
    }
}

/// Waits for the next established connection until `deadline`: `Ok(None)` if none came.
async fn accept_until(
    shared: &Arc<TokioShared>,
    deadline: Option<TokioInstant>,
) -> Result<Option<DtlsConnection>> {
    let got = wait_for(&shared.accept, deadline, || {
        let mut core = shared.lock();
        let (peer, id) = match core.pop_accept()? {
            Ok(next) => next,
            Err(e) => return Some(Err(e)),
        };
        let handle = Handle::new(Arc::clone(shared), &core, peer, id);
        Some(Ok(handle.map(DtlsConnection::from_handle)))
    })
    .await;
    got.unwrap_or(Ok(None))
}

/// A server's incoming connections: see [`DtlsServer::incoming`]. Also a
/// `futures_core::Stream` of `Result<DtlsConnection>`.
pub struct Incoming {
    shared: Arc<TokioShared>,
    pending: Option<BoxFuture<Result<Option<DtlsConnection>>>>,
    done: bool,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("local_addr", &self.shared.local_addr)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Incoming {
    /// The next connection; `None` once the server is closed. Cancellation-safe.
    pub async fn next(&mut self) -> Option<Result<DtlsConnection>> {
        std::future::poll_fn(|cx| self.poll_next_connection(cx)).await
    }

    fn poll_next_connection(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<DtlsConnection>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let shared = &self.shared;
        let r = ready!(poll_kept(&mut self.pending, cx, || {
            let shared = Arc::clone(shared);
            Box::pin(async move { accept_until(&shared, None).await })
        }));
        Poll::Ready(match r {
            Ok(Some(c)) => Some(Ok(c)),
            Ok(None) | Err(Error::Closed) => {
                self.done = true;
                None
            }
            Err(e) => Some(Err(e)),
        })
    }
}

impl futures_core::Stream for Incoming {
    type Item = Result<DtlsConnection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_next_connection(cx)
    }
}
