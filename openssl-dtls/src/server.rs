//! [`DtlsServer`]: a blocking DTLS server on one UDP socket serving many peers, and
//! [`Incoming`], its connections as an iterator. The driver behind it is
//! `driver::blocking`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::DtlsConnection;
use crate::context::DtlsServerContext;
use crate::driver::blocking::{self, Driver, Rank};
use crate::driver::handle::Handle;
use crate::driver::moves::AddressChange;
use crate::driver::SocketOptions;
use crate::endpoint::{Endpoint, EndpointConfig, EndpointStats, HandshakeFailure};
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
#[derive(Debug)]
pub struct DtlsServer {
    driver: Driver,
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

    /// Binds a server on `addr` with the given limits and socket options.
    pub fn bind_with(
        addr: impl ToSocketAddrs,
        ctx: DtlsServerContext,
        config: EndpointConfig,
        socket: SocketOptions,
    ) -> Result<DtlsServer> {
        let endpoint = Endpoint::server(ctx, config)?;
        let driver = Driver::start(addr, endpoint, true, &socket, "server")?;
        log::debug!("DTLS server listening on {}", driver.shared.local_addr);
        Ok(DtlsServer { driver })
    }

    /// Waits for the next connection whose handshake completed. After [`close`](Self::close):
    /// [`Error::Closed`].
    pub fn accept(&self) -> Result<DtlsConnection> {
        self.accept_until(None).and_then(|c| c.ok_or(Error::Closed))
    }

    /// As [`accept`](Self::accept), but gives up after `timeout` with `Ok(None)`.
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<DtlsConnection>> {
        self.accept_until(Some(Instant::now() + timeout))
    }

    fn accept_until(&self, deadline: Option<Instant>) -> Result<Option<DtlsConnection>> {
        let shared = &self.driver.shared;
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
            Some(Ok((peer, id))) => {
                let handle = Handle::new(Arc::clone(shared), &core, peer, id);
                Ok(handle.map(DtlsConnection::from_handle))
            }
        }
    }

    /// An iterator over incoming connections ([`accept`](Self::accept) in a loop); it ends
    /// when the server is closed.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { server: self }
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.driver.shared.local_addr
    }

    /// A snapshot of the endpoint's counters, with the socket's: datagrams the kernel dropped
    /// at its receive buffer (`socket_dropped`, `SO_MEMINFO`) and sends that failed
    /// (`send_failed`).
    pub fn stats(&self) -> EndpointStats {
        let shared = &self.driver.shared;
        shared.io.stats(&shared.lock())
    }

    /// Calls `hook` for every handshake a peer started with this server that failed: its
    /// address, the PSK identity or certificate subject it presented (when the handshake got
    /// that far), and a typed reason. Without a hook each failure is logged at `info`. The hook
    /// runs on the driver thread, outside the server's lock (it may call [`stats`](Self::stats)),
    /// after the failure; a panic in it is caught and logged. Keep it short: the driver waits.
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
        self.driver.shared.lock().failures.set_hook(hook);
    }

    /// Calls `hook` for every connection that followed its peer to a new address by the
    /// Connection ID this server issued (RFC 9146; a NAT rebinding, a device that changed
    /// networks): its old and new address and the CID (see [`AddressChange`]). The connection's
    /// [`peer_addr`](DtlsConnection::peer_addr) reports the new address from then on. Without a
    /// hook each move is logged at `info`. Needs Connection IDs in the context
    /// ([`connection_id`](crate::DtlsServerContextBuilder::connection_id)); without them no
    /// connection moves. The hook runs on the driver thread, outside the server's lock, after
    /// the move; a panic in it is caught and logged. Keep it short: the driver waits.
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
        self.driver.shared.lock().moves.set_hook(hook);
    }

    /// Closes the server: `close_notify` to every peer, then the socket. Every connection's
    /// `recv` ends; `accept` returns [`Error::Closed`].
    pub fn close(&self) {
        self.driver.shutdown();
    }
}

impl Drop for DtlsServer {
    fn drop(&mut self) {
        self.close();
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
