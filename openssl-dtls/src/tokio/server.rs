//! [`DtlsServer`] on tokio, and [`Incoming`], its connections as a stream.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ::tokio::net::ToSocketAddrs;
use ::tokio::sync::Notify;
use ::tokio::time::Instant as TokioInstant;

use super::connection::DtlsConnection;
use super::driver::{wait_for, Driver, TokioShared};
use super::{poll_kept, BoxFuture};
use crate::context::DtlsServerContext;
use crate::driver::handle::Handle;
use crate::driver::moves::AddressChange;
use crate::driver::shards::{self, AcceptHub};
use crate::driver::SocketOptions;
use crate::endpoint::{EndpointConfig, EndpointStats, HandshakeFailure};
use crate::error::{Error, Result};

/// A DTLS server on tokio: one UDP socket, a stateless cookie exchange (`DTLSv1_listen`) before
/// any per-peer state, and a [`DtlsConnection`] per peer whose handshake completed. The async
/// twin of [`crate::DtlsServer`].
///
/// Dropping the server (or [`close`](Self::close)) sends `close_notify` to every peer and stops
/// its driver task; every connection's `recv` then ends.
///
/// With [`SocketOptions::shards`] above 1 (0: one per core) it runs that many driver tasks,
/// each its own endpoint and socket, on `SO_REUSEPORT` sockets bound to one address, and stays
/// one server to the application: see [`crate::DtlsServer#shards`].
#[derive(Debug)]
pub struct DtlsServer {
    /// The shards' drivers, in index order (one without shards).
    shards: Vec<Driver>,
    /// Where `accept` and [`Incoming`] take connections from.
    acceptor: Arc<Acceptor>,
}

/// What `accept` takes connections from: the shards, and their shared queue (`None` with one
/// shard, which has its own).
#[derive(Debug)]
struct Acceptor {
    shards: Vec<Arc<TokioShared>>,
    hub: Option<Arc<AcceptHub<Notify>>>,
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

    /// Binds a server on `addr` with the given limits and socket options (with
    /// [`SocketOptions::shards`], that many driver tasks on `SO_REUSEPORT` sockets).
    pub async fn bind_with(
        addr: impl ToSocketAddrs,
        ctx: DtlsServerContext,
        config: EndpointConfig,
        socket: SocketOptions,
    ) -> Result<DtlsServer> {
        let bound = Bound::bind(addr, &ctx, &config, &socket).await?;
        bound.start(false)
    }

    /// Graceful restart with no gap, as the blocking
    /// [`DtlsServer::bind_and_restore`](crate::DtlsServer::bind_and_restore): binds the
    /// socket(s), awaits `state`, restores what it yields before any datagram is read, then
    /// starts the driver tasks. `state` may wait for the previous process's file (the
    /// handover of a rolling restart; see the blocking server's docs); `Ok(None)`: a fresh
    /// start. Refused state, or an error from `state`, closes the sockets and returns the error.
    pub async fn bind_and_restore<R: std::io::Read>(
        addr: impl ToSocketAddrs,
        ctx: DtlsServerContext,
        config: EndpointConfig,
        socket: SocketOptions,
        state: impl std::future::Future<Output = Result<Option<R>>>,
        key: &crate::endpoint::StateKey,
        max_age: Duration,
    ) -> Result<(DtlsServer, Option<crate::endpoint::RestoreReport>)> {
        let mut bound = Bound::bind(addr, &ctx, &config, &socket).await?;
        let report = match state.await? {
            None => None,
            Some(mut input) => {
                let mut refs: Vec<&mut crate::endpoint::Endpoint> =
                    bound.endpoints.iter_mut().collect();
                Some(shards::restore_endpoints(
                    &mut refs, &mut input, key, max_age,
                )?)
            }
        };
        let server = bound.start(report.is_some())?;
        Ok((server, report))
    }

    /// Waits for the next connection whose handshake completed (from any shard). After
    /// [`close`](Self::close): [`Error::Closed`]. Cancellation-safe: a dropped `accept` takes
    /// no connection.
    pub async fn accept(&self) -> Result<DtlsConnection> {
        accept_until(&self.acceptor, None)
            .await
            .and_then(|c| c.ok_or(Error::Closed))
    }

    /// As [`accept`](Self::accept), but gives up after `timeout` with `Ok(None)`.
    pub async fn accept_timeout(&self, timeout: Duration) -> Result<Option<DtlsConnection>> {
        accept_until(&self.acceptor, Some(TokioInstant::now() + timeout)).await
    }

    /// The incoming connections ([`accept`](Self::accept) in a loop) as a stream: use
    /// [`Incoming::next`] or its `futures_core::Stream` impl. It ends when the server is closed.
    pub fn incoming(&self) -> Incoming {
        Incoming {
            acceptor: Arc::clone(&self.acceptor),
            pending: None,
            done: false,
        }
    }

    /// The socket's local address (the one address every shard's socket is bound to).
    pub fn local_addr(&self) -> SocketAddr {
        self.shards[0].shared.local_addr
    }

    /// How many shards (driver tasks) the server runs: [`SocketOptions::shards`], resolved.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// A snapshot of the endpoint's counters; with shards, the sum of every shard's (see
    /// [`crate::DtlsServer::stats`]).
    pub fn stats(&self) -> EndpointStats {
        shards::sum_stats(self.shard_stats())
    }

    /// Each shard's counters, in shard order (one entry without shards).
    pub fn shard_stats(&self) -> Vec<EndpointStats> {
        self.shards.iter().map(|d| d.shared.stats()).collect()
    }

    /// Calls `hook` for every handshake a peer started with this server that failed: see
    /// [`crate::DtlsServer::on_handshake_failure`]. The hook runs on the driver task (of the
    /// peer's shard), outside the server's lock; it must not block.
    pub fn on_handshake_failure<F>(&self, hook: F)
    where
        F: Fn(&HandshakeFailure) + Send + Sync + 'static,
    {
        let hook = Arc::new(hook);
        for driver in &self.shards {
            let hook = Arc::clone(&hook);
            driver
                .shared
                .lock()
                .failures
                .set_hook(move |failure: &HandshakeFailure| hook(failure));
        }
    }

    /// Calls `hook` for every connection that followed its peer to a new address by the
    /// Connection ID this server issued: see [`crate::DtlsServer::on_address_change`]. The hook
    /// runs on the driver task (of the connection's shard), outside the server's lock; it must
    /// not block.
    pub fn on_address_change<F>(&self, hook: F)
    where
        F: Fn(AddressChange) + Send + Sync + 'static,
    {
        let hook = Arc::new(hook);
        for driver in &self.shards {
            let hook = Arc::clone(&hook);
            driver
                .shared
                .lock()
                .moves
                .set_hook(move |change: AddressChange| hook(change));
        }
    }

    /// Graceful restart: writes every established compact connection of every shard to
    /// `out`, sealed under `key` (AES-256-GCM; see [`Endpoint::save_state`] for what is saved
    /// and the format), and reports how many were saved and skipped. Each shard is saved under
    /// its lock, one after the other; the server keeps running. Datagrams received after a
    /// shard's save are not covered (a restored connection still refuses any record its saved
    /// replay window refuses), and records sent after it use sequence numbers below the saved
    /// ones as long as they are fewer than
    /// [`STATE_SEQUENCE_RESERVE`](crate::endpoint::STATE_SEQUENCE_RESERVE) per connection. Do
    /// not [`close`](Self::close) the server afterwards (its `close_notify` would end the
    /// connections the next process restores): exit, or stop with
    /// [`save_state_and_stop`](Self::save_state_and_stop), which is the usual last step. It blocks on `out`
    /// (and briefly on each shard's lock): write to a buffer, or call it from `spawn_blocking`.
    ///
    /// [`Endpoint::save_state`]: crate::Endpoint::save_state
    pub fn save_state(
        &self,
        out: &mut impl std::io::Write,
        key: &crate::endpoint::StateKey,
    ) -> Result<crate::endpoint::SaveReport> {
        let shards: Vec<_> = self.shards.iter().map(|d| &*d.shared).collect();
        shards::save_shards(&shards, out, key)
    }

    /// Graceful restart, the old process's last step: as [`save_state`](Self::save_state), but
    /// every shard is saved under its lock at once and then stopped without a `close_notify`
    /// to anyone (a `close_notify` would end the connections the next process restores): no
    /// datagram is handled and nothing is sent after the save. Then exit the process; closing
    /// or dropping the server sends nothing either (`accept` waits until then). If the save
    /// fails, nothing is stopped. It blocks on `out`: write to a buffer, or call it from
    /// `spawn_blocking`.
    pub fn save_state_and_stop(
        &self,
        out: &mut impl std::io::Write,
        key: &crate::endpoint::StateKey,
    ) -> Result<crate::endpoint::SaveReport> {
        let shards: Vec<_> = self.shards.iter().map(|d| &*d.shared).collect();
        shards::save_shards_and_stop(&shards, out, key)
    }

    /// Graceful restart: loads the connections a server of the same configuration and shard
    /// count saved with [`save_state`](Self::save_state) at most `max_age` ago, all or nothing
    /// (each reason for refusing the file is its own [`StateError`](crate::StateError)); each
    /// shard's connections go to the shard of the same index, so every peer lands where its
    /// connection is. The restored connections are accepted like new ones
    /// ([`accept`](Self::accept)) but count no handshake; their peers' next records are
    /// accepted as if nothing had happened.
    ///
    /// Call it right after binding. Records that arrive between the bind and the restore find
    /// no connection and are dropped (counted in `dropped_unknown_peer`); the device
    /// retransmits (a CoAP confirmable message does) and is then served. It blocks on `input`: read the file
    /// into memory first, or call it from `spawn_blocking`.
    pub fn restore_state(
        &self,
        input: &mut impl std::io::Read,
        key: &crate::endpoint::StateKey,
        max_age: std::time::Duration,
    ) -> Result<crate::endpoint::RestoreReport> {
        let shards: Vec<_> = self.shards.iter().map(|d| &*d.shared).collect();
        shards::restore_shards(&shards, input, key, max_age)
    }

    /// Closes the server: `close_notify` to every peer, then the driver task(s). Every
    /// connection's `recv` ends; `accept` returns [`Error::Closed`].
    pub async fn close(&self) {
        for driver in &self.shards {
            driver.shutdown().await;
        }
        if let Some(hub) = &self.acceptor.hub {
            hub.close();
        }
    }
}

impl Drop for DtlsServer {
    fn drop(&mut self) {
        for driver in &self.shards {
            driver.shutdown_now();
        }
        if let Some(hub) = &self.acceptor.hub {
            hub.close();
        }
    }
}

/// Waits for the next established connection until `deadline`: `Ok(None)` if none came.
async fn accept_until(
    acceptor: &Acceptor,
    deadline: Option<TokioInstant>,
) -> Result<Option<DtlsConnection>> {
    let Some(hub) = &acceptor.hub else {
        return accept_from(&acceptor.shards[0], deadline).await;
    };
    let got = wait_for(&hub.signal, deadline, || loop {
        // The hub names the shard that queued it: take it there, without waiting.
        let shard = match hub.pop()? {
            Ok(shard) => shard,
            Err(e) => return Some(Err(e)),
        };
        let shared = &acceptor.shards[shard];
        let mut core = shared.lock();
        match core.pop_accept() {
            Some(Ok((peer, id, facts))) => {
                if let Some(handle) = Handle::with_facts(Arc::clone(shared), &core, peer, id, facts)
                {
                    return Some(Ok(Some(DtlsConnection::from_handle(handle))));
                }
            }
            Some(Err(e)) => return Some(Err(e)),
            None => {}
        }
    })
    .await;
    got.unwrap_or(Ok(None))
}

/// Waits for the next connection of a one-driver server on its own accept queue.
async fn accept_from(
    shared: &Arc<TokioShared>,
    deadline: Option<TokioInstant>,
) -> Result<Option<DtlsConnection>> {
    let got = wait_for(&shared.accept, deadline, || {
        let mut core = shared.lock();
        let (peer, id, facts) = match core.pop_accept()? {
            Ok(next) => next,
            Err(e) => return Some(Err(e)),
        };
        let handle = Handle::with_facts(Arc::clone(shared), &core, peer, id, facts);
        Some(Ok(handle.map(DtlsConnection::from_handle)))
    })
    .await;
    got.unwrap_or(Ok(None))
}

/// A server's incoming connections: see [`DtlsServer::incoming`]. Also a
/// `futures_core::Stream` of `Result<DtlsConnection>`.
pub struct Incoming {
    acceptor: Arc<Acceptor>,
    pending: Option<BoxFuture<Result<Option<DtlsConnection>>>>,
    done: bool,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("local_addr", &self.acceptor.shards[0].local_addr)
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
        let acceptor = &self.acceptor;
        let r = ready!(poll_kept(&mut self.pending, cx, || {
            let acceptor = Arc::clone(acceptor);
            Box::pin(async move { accept_until(&acceptor, None).await })
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

/// A server's sockets, bound, and its endpoints, before any driver task reads a datagram.
struct Bound {
    sockets: Vec<std::net::UdpSocket>,
    endpoints: Vec<crate::endpoint::Endpoint>,
    options: Vec<SocketOptions>,
}

impl Bound {
    /// Binds every shard's socket: the first what was asked (resolved by tokio), the others
    /// its actual address.
    async fn bind(
        addr: impl ToSocketAddrs,
        ctx: &DtlsServerContext,
        config: &EndpointConfig,
        socket: &SocketOptions,
    ) -> Result<Bound> {
        let plans = shards::plan(ctx, config, socket)?;
        let mut sockets: Vec<std::net::UdpSocket> = Vec::with_capacity(plans.len());
        for (index, plan) in plans.iter().enumerate() {
            let sock = match sockets.first() {
                None => crate::driver::socket::bind(
                    ::tokio::net::lookup_host(&addr).await?,
                    &plan.socket,
                )?,
                Some(first) => {
                    let first = first.local_addr()?;
                    let at = shards::shard_addr(index, first, Some(first));
                    crate::driver::socket::bind([at], &plan.socket)?
                }
            };
            sockets.push(sock);
        }
        let (endpoints, options) = plans.into_iter().map(|p| (p.endpoint, p.socket)).unzip();
        Ok(Bound {
            sockets,
            endpoints,
            options,
        })
    }

    /// Starts the driver tasks; `restored`: the endpoints hold restored connections, which go
    /// to the accept queue.
    fn start(self, restored: bool) -> Result<DtlsServer> {
        let hub = (self.sockets.len() > 1).then(|| Arc::new(AcceptHub::<Notify>::default()));
        let mut drivers: Vec<Driver> = Vec::with_capacity(self.sockets.len());
        let parts = self
            .sockets
            .into_iter()
            .zip(self.endpoints)
            .zip(&self.options);
        for ((sock, endpoint), options) in parts {
            match Driver::start_on(sock, endpoint, true, options) {
                Ok(driver) => drivers.push(driver),
                Err(e) => {
                    drivers.iter().for_each(Driver::shutdown_now);
                    return Err(e);
                }
            }
        }
        if let Some(hub) = &hub {
            for (index, driver) in drivers.iter().enumerate() {
                driver.shared.install_accept_hook(hub.hook(index));
            }
        }
        if restored {
            for driver in &drivers {
                // The task recomputes its deadline; the connections reach the accept queue.
                let mut core = driver.shared.lock();
                driver.shared.settle(&mut core);
                drop(core);
                driver.shared.wake();
            }
        }
        let acceptor = Arc::new(Acceptor {
            shards: drivers.iter().map(|d| Arc::clone(&d.shared)).collect(),
            hub,
        });
        log::debug!(
            "DTLS server (tokio) listening on {} ({} shard(s))",
            drivers[0].shared.local_addr,
            drivers.len()
        );
        Ok(DtlsServer {
            shards: drivers,
            acceptor,
        })
    }
}
