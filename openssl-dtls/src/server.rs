//! [`DtlsServer`]: a blocking DTLS server on one UDP socket serving many peers, and
//! [`Incoming`], its connections as an iterator. The driver behind it is
//! `driver::blocking`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Condvar};
use std::time::{Duration, Instant};

use crate::connection::DtlsConnection;
use crate::context::DtlsServerContext;
use crate::driver::blocking::{self, Driver, Rank};
use crate::driver::handle::Handle;
use crate::driver::moves::AddressChange;
use crate::driver::shards::{self, AcceptHub};
use crate::driver::{socket, SocketOptions};
use crate::endpoint::{EndpointConfig, EndpointStats, HandshakeFailure};
use crate::error::{Error, Result};

/// A DTLS server: one UDP socket, a stateless cookie exchange (`DTLSv1_listen`) before any
/// per-peer state, and a [`DtlsConnection`] per peer whose handshake completed.
///
/// ```no_run
/// use openssl_dtls::{DtlsServer, DtlsServerContext};
///
/// let ctx = DtlsServerContext::builder()
///     .psk_key_store(|identity| (identity == b"Client_identity").then(|| b"secretPSK".to_vec()))
///     .build()?;
/// let server = DtlsServer::bind("127.0.0.1:5684", ctx)?;
/// for connection in server.incoming() {
///     let connection = connection?;
///     std::thread::spawn(move || {
///         let mut buf = [0u8; 1500];
///         while let Ok(n @ 1..) = connection.recv(&mut buf) {
///             let _ = connection.send(&buf[..n]); // echo
///         }
///     });
/// }
/// # Ok::<(), openssl_dtls::Error>(())
/// ```
///
/// # Shards
///
/// With [`SocketOptions::shards`] above 1 (0: one per core) the server runs that many drivers,
/// each its own endpoint, socket and thread, on `SO_REUSEPORT` sockets bound to one address:
/// the kernel spreads peers over them by a hash of their address, so every core serves
/// handshakes and records. To the application it stays one server: [`accept`](Self::accept)
/// returns connections from every shard, [`stats`](Self::stats) sums them, the hooks and
/// [`close`](Self::close) apply to all, and the limits of [`EndpointConfig`] hold for the
/// whole server. Connection IDs keep working across shards: each shard's index is in its CIDs,
/// and a BPF program on the socket group steers a moved peer's records to its shard. The
/// details, and how to scale past one machine: `docs/ARCHITECTURE.md` ("Shards").
///
/// ```no_run
/// use openssl_dtls::{DtlsServer, DtlsServerContext, EndpointConfig, SocketOptions};
///
/// let ctx = DtlsServerContext::builder()
///     .psk_key_store(|identity| (identity == b"Client_identity").then(|| b"secretPSK".to_vec()))
///     .build()?;
/// let mut socket = SocketOptions::default();
/// socket.shards = 0; // one per core
/// let server = DtlsServer::bind_with("0.0.0.0:5684", ctx, EndpointConfig::default(), socket)?;
/// # Ok::<(), openssl_dtls::Error>(())
/// ```
#[derive(Debug)]
pub struct DtlsServer {
    /// One driver per shard, in index order (one without shards).
    shards: Vec<Driver>,
    /// The accept queue the shards share; `None` with one shard (it has its own).
    hub: Option<Arc<AcceptHub<Condvar>>>,
}

impl DtlsServer {
    /// Binds a server on `addr` with default limits and socket options.
    pub fn bind(addr: impl ToSocketAddrs, ctx: DtlsServerContext) -> Result<DtlsServer> {
        DtlsServer::bind_with(
            addr,
            ctx,
            EndpointConfig::default(),
            SocketOptions::default(),
        )
    }

    /// Binds a server on `addr` with the given limits and socket options (with
    /// [`SocketOptions::shards`], that many drivers on `SO_REUSEPORT` sockets: see
    /// [Shards](Self#shards)).
    pub fn bind_with(
        addr: impl ToSocketAddrs,
        ctx: DtlsServerContext,
        config: EndpointConfig,
        socket: SocketOptions,
    ) -> Result<DtlsServer> {
        DtlsServer::start(addr, ctx, config, socket, |_| Ok(None)).map(|(server, _)| server)
    }

    /// Graceful restart with no gap: binds the socket(s) as [`bind_with`](Self::bind_with) does,
    /// then calls `state`, and restores what it returns (as
    /// [`restore_state`](Self::restore_state)) **before any datagram is read**; only then do the
    /// drivers start. Datagrams that arrive meanwhile wait in the socket buffer and are then
    /// handled with the restored connections. `state` may wait for the previous process to
    /// save (the handover of a rolling restart); `Ok(None)`: nothing to restore, a fresh start.
    ///
    /// The handover: start the new process with [`SocketOptions::reuse_port`] on the address
    /// the old one serves (bound with it too), let it bind and wait in `state` for the old
    /// process's file; stop the old one with
    /// [`save_state_and_stop`](Self::save_state_and_stop) and let it exit. While both are bound
    /// the kernel hands each peer's datagrams to one of the two sockets by a hash of its
    /// address: the new socket keeps its share unread until the restore, the old one serves
    /// its share until it saves. Only what the old socket holds unread when it closes is lost
    /// (a device retransmits). With [shards](Self#shards) above 1, start the new process only
    /// after the old one exited: the two processes' sockets in one group would disorder the
    /// shard steering.
    ///
    /// Refused state (a [`StateError`](crate::StateError)) or an error from `state` closes the
    /// sockets and returns the error: nothing is half-loaded.
    ///
    /// ```no_run
    /// use openssl_dtls::{DtlsServer, DtlsServerContext, EndpointConfig, SocketOptions, StateKey};
    /// use std::time::Duration;
    ///
    /// let ctx = DtlsServerContext::builder()
    ///     .psk_key_store(|identity| (identity == b"Client_identity").then(|| b"secretPSK".to_vec()))
    ///     .compact_connections(true)
    ///     .build()?;
    /// let key = StateKey::from_bytes(&[7; 32]); // from a key file in practice
    /// let mut socket = SocketOptions::default();
    /// socket.reuse_port = true; // the old process is still bound there
    /// let (server, report) = DtlsServer::bind_and_restore(
    ///     "0.0.0.0:5684",
    ///     ctx,
    ///     EndpointConfig::default(),
    ///     socket,
    ///     || {
    ///         // The old process renames its finished state here on SIGTERM (wait for it, e.g.
    ///         // with inotify as examples/common/restart.rs does). Claim it by renaming it:
    ///         // only one process may ever restore a state (twice would reuse nonces).
    ///         let claimed = "/var/lib/dtls/state.claimed";
    ///         match std::fs::rename("/var/lib/dtls/state", claimed) {
    ///             Ok(()) => {}
    ///             Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
    ///             Err(e) => return Err(openssl_dtls::Error::Io(e)),
    ///         }
    ///         let state = std::fs::read(claimed).map_err(openssl_dtls::Error::Io)?;
    ///         std::fs::remove_file(claimed).map_err(openssl_dtls::Error::Io)?;
    ///         Ok(Some(std::io::Cursor::new(state)))
    ///     },
    ///     &key,
    ///     Duration::from_secs(60),
    /// )?;
    /// println!("restored {}", report.map_or(0, |r| r.restored));
    /// # Ok::<(), openssl_dtls::Error>(())
    /// ```
    pub fn bind_and_restore<R: std::io::Read>(
        addr: impl ToSocketAddrs,
        ctx: DtlsServerContext,
        config: EndpointConfig,
        socket: SocketOptions,
        state: impl FnOnce() -> Result<Option<R>>,
        key: &crate::endpoint::StateKey,
        max_age: Duration,
    ) -> Result<(DtlsServer, Option<crate::endpoint::RestoreReport>)> {
        DtlsServer::start(addr, ctx, config, socket, |endpoints| match state()? {
            None => Ok(None),
            Some(mut input) => {
                shards::restore_endpoints(endpoints, &mut input, key, max_age).map(Some)
            }
        })
    }

    /// Binds every shard's socket, runs `before_start` on the endpoints (nothing is read yet),
    /// then starts the drivers.
    fn start(
        addr: impl ToSocketAddrs,
        ctx: DtlsServerContext,
        config: EndpointConfig,
        socket: SocketOptions,
        before_start: impl FnOnce(
            &mut [&mut crate::endpoint::Endpoint],
        ) -> Result<Option<crate::endpoint::RestoreReport>>,
    ) -> Result<(DtlsServer, Option<crate::endpoint::RestoreReport>)> {
        let requested = socket::first_addr(addr)?;
        let plans = shards::plan(&ctx, &config, &socket)?;
        let mut sockets: Vec<std::net::UdpSocket> = Vec::with_capacity(plans.len());
        for (index, plan) in plans.iter().enumerate() {
            let first = sockets.first().map(|s| s.local_addr()).transpose()?;
            let at = shards::shard_addr(index, requested, first);
            sockets.push(socket::bind([at], &plan.socket)?);
        }
        let (mut endpoints, options): (Vec<_>, Vec<_>) =
            plans.into_iter().map(|p| (p.endpoint, p.socket)).unzip();
        let report = {
            let mut refs: Vec<&mut crate::endpoint::Endpoint> = endpoints.iter_mut().collect();
            before_start(&mut refs)?
        };
        let hub = (sockets.len() > 1).then(|| Arc::new(AcceptHub::<Condvar>::default()));
        let mut drivers: Vec<Driver> = Vec::with_capacity(sockets.len());
        for (index, ((sock, endpoint), options)) in
            sockets.into_iter().zip(endpoints).zip(&options).enumerate()
        {
            let driver = match Driver::start_on(sock, endpoint, true, options, "server") {
                Ok(driver) => driver,
                Err(e) => {
                    drivers.iter().for_each(Driver::shutdown);
                    return Err(e);
                }
            };
            if let Some(hub) = &hub {
                driver.shared.install_accept_hook(hub.hook(index));
            }
            if report.is_some() {
                // Restored connections go to the accept queue; the driver recomputes its
                // deadline.
                let mut core = driver.shared.lock();
                driver.shared.settle(&mut core);
                drop(core);
                driver.shared.wake();
            }
            drivers.push(driver);
        }
        let server = DtlsServer {
            shards: drivers,
            hub,
        };
        log::debug!(
            "DTLS server listening on {} ({} shard(s))",
            server.local_addr(),
            server.shards.len()
        );
        Ok((server, report))
    }

    /// Waits for the next connection whose handshake completed (from any shard). After
    /// [`close`](Self::close): [`Error::Closed`].
    pub fn accept(&self) -> Result<DtlsConnection> {
        self.accept_until(None).and_then(|c| c.ok_or(Error::Closed))
    }

    /// As [`accept`](Self::accept), but gives up after `timeout` with `Ok(None)`.
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<DtlsConnection>> {
        self.accept_until(Some(Instant::now() + timeout))
    }

    fn accept_until(&self, deadline: Option<Instant>) -> Result<Option<DtlsConnection>> {
        let Some(hub) = &self.hub else {
            return accept_from(&self.shards[0].shared, deadline);
        };
        loop {
            let shard = match hub.wait(deadline) {
                None => return Ok(None),
                Some(Err(e)) => return Err(e),
                Some(Ok(shard)) => shard,
            };
            // The hub names the shard that queued it: take it there, without waiting.
            let shared = &self.shards[shard].shared;
            let mut core = shared.lock();
            match core.pop_accept() {
                Some(Ok((peer, id, facts))) => {
                    let handle = Handle::with_facts(Arc::clone(shared), &core, peer, id, facts);
                    if let Some(handle) = handle {
                        return Ok(Some(DtlsConnection::from_handle(handle)));
                    }
                }
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
    }

    /// An iterator over incoming connections ([`accept`](Self::accept) in a loop); it ends
    /// when the server is closed.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { server: self }
    }

    /// The socket's local address (the one address every shard's socket is bound to).
    pub fn local_addr(&self) -> SocketAddr {
        self.shards[0].shared.local_addr
    }

    /// How many shards (drivers) the server runs: [`SocketOptions::shards`], resolved.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// A snapshot of the endpoint's counters; with shards, the sum of every shard's (each
    /// field, the gauges `connections`, `handshakes`, `handshake_memory_in_use` and
    /// `cid_connections` too: a connection lives on one shard).
    pub fn stats(&self) -> EndpointStats {
        shards::sum_stats(self.shard_stats())
    }

    /// Each shard's counters, in shard order (one entry without shards): how the load spreads.
    pub fn shard_stats(&self) -> Vec<EndpointStats> {
        self.shards.iter().map(|d| d.shared.stats()).collect()
    }

    /// Calls `hook` for every handshake a peer started with this server that failed: its
    /// address, the PSK identity or certificate subject it presented (when the handshake got
    /// that far), and a typed reason. Without a hook each failure is logged at `info`. The hook
    /// runs on the driver thread (of the peer's shard), outside the server's lock (it may call
    /// [`stats`](Self::stats)), after the failure; a panic in it is caught and logged. Keep it
    /// short: the driver waits.
    ///
    /// ```no_run
    /// # use openssl_dtls::{DtlsServer, DtlsServerContext};
    /// # let ctx = DtlsServerContext::builder().psk_key_store(|_| None).build()?;
    /// let server = DtlsServer::bind("0.0.0.0:5684", ctx)?;
    /// server.on_handshake_failure(|failure| eprintln!("handshake failed: {failure}"));
    /// # Ok::<(), openssl_dtls::Error>(())
    /// ```
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
    /// Connection ID this server issued (RFC 9146; a NAT rebinding, a device that changed
    /// networks): its old and new address and the CID (see [`AddressChange`]). The connection's
    /// [`peer_addr`](DtlsConnection::peer_addr) reports the new address from then on. Without a
    /// hook each move is logged at `info`. Needs Connection IDs in the context
    /// ([`connection_id`](crate::DtlsServerContextBuilder::connection_id)); without them no
    /// connection moves. The hook runs on the driver thread (of the connection's shard),
    /// outside the server's lock, after the move; a panic in it is caught and logged. Keep it
    /// short: the driver waits.
    ///
    /// ```no_run
    /// # use openssl_dtls::{DtlsServer, DtlsServerContext};
    /// # let ctx = DtlsServerContext::builder().psk_key_store(|_| None).connection_id(8).build()?;
    /// let server = DtlsServer::bind("0.0.0.0:5684", ctx)?;
    /// // "address changed: 192.0.2.7:40001 -> 192.0.2.7:51234 cid=00f1c2d3e4a5b6c7"
    /// server.on_address_change(|change| println!("address changed: {change}"));
    /// # Ok::<(), openssl_dtls::Error>(())
    /// ```
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
    /// [`save_state_and_stop`](Self::save_state_and_stop), which is the usual last step.
    ///
    /// [`Endpoint::save_state`]: crate::Endpoint::save_state
    ///
    /// ```no_run
    /// use openssl_dtls::{DtlsServer, DtlsServerContext, StateKey};
    ///
    /// let ctx = DtlsServerContext::builder()
    ///     .psk_key_store(|_| Some(b"secretPSK".to_vec()))
    ///     .compact_connections(true)
    ///     .build()?;
    /// let key = StateKey::from_bytes(&[7; 32]); // from a key file in practice
    /// let server = DtlsServer::bind("0.0.0.0:5684", ctx.clone())?;
    /// // ... serve; on SIGTERM:
    /// let mut file = std::fs::File::create("/var/lib/dtls/state").map_err(openssl_dtls::Error::Io)?;
    /// let saved = server.save_state_and_stop(&mut file, &key)?;
    /// // The next process:
    /// let server = DtlsServer::bind("0.0.0.0:5684", ctx)?;
    /// let mut file = std::fs::File::open("/var/lib/dtls/state").map_err(openssl_dtls::Error::Io)?;
    /// let restored = server.restore_state(&mut file, &key, std::time::Duration::from_secs(3600))?;
    /// println!("restored {} of {} connections", restored.restored, saved.saved);
    /// # Ok::<(), openssl_dtls::Error>(())
    /// ```
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
    /// datagram is handled and nothing is sent after the save, so nothing the peers send is
    /// lost to the state. Then exit the process; closing or dropping the server sends nothing
    /// either (`accept` waits until then). If the save fails, nothing is stopped.
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
    /// retransmits (a CoAP confirmable message does) and is then served.
    pub fn restore_state(
        &self,
        input: &mut impl std::io::Read,
        key: &crate::endpoint::StateKey,
        max_age: std::time::Duration,
    ) -> Result<crate::endpoint::RestoreReport> {
        let shards: Vec<_> = self.shards.iter().map(|d| &*d.shared).collect();
        shards::restore_shards(&shards, input, key, max_age)
    }

    /// Closes the server: `close_notify` to every peer, then the socket(s). Every connection's
    /// `recv` ends; `accept` returns [`Error::Closed`].
    pub fn close(&self) {
        for driver in &self.shards {
            driver.shutdown();
        }
        if let Some(hub) = &self.hub {
            hub.close();
        }
    }
}

impl Drop for DtlsServer {
    fn drop(&mut self) {
        self.close();
    }
}

/// Waits for the next connection of a one-driver server on its own accept queue.
fn accept_from(
    shared: &Arc<blocking::BlockingShared>,
    deadline: Option<Instant>,
) -> Result<Option<DtlsConnection>> {
    let core = shared.lock();
    let (core, got) = blocking::wait_until(
        shared,
        core,
        &shared.accept,
        Rank::Accept,
        None,
        deadline,
        |core| core.pop_accept(),
    );
    match got {
        None => Ok(None),
        Some(Err(e)) => Err(e),
        Some(Ok((peer, id, facts))) => {
            let handle = Handle::with_facts(Arc::clone(shared), &core, peer, id, facts);
            Ok(handle.map(DtlsConnection::from_handle))
        }
    }
}

/// Iterator over a server's incoming connections: see [`DtlsServer::incoming`].
#[derive(Debug)]
pub struct Incoming<'a> {
    server: &'a DtlsServer,
}

impl Iterator for Incoming<'_> {
    type Item = Result<DtlsConnection>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.server.accept() {
            Err(Error::Closed) => None,
            other => Some(other),
        }
    }
}
