//! [`DtlsServer`]: a blocking DTLS server on one UDP socket serving many peers.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::connection::DtlsConnection;
use crate::context::DtlsServerContext;
use crate::driver::{self, Shared, SocketOptions};
use crate::endpoint::{Endpoint, EndpointConfig, EndpointStats, FailureHook, HandshakeFailure};
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
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
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
        let addr = first_addr(addr)?;
        let endpoint = Endpoint::server(ctx, config)?;
        let udp =
            driver::open_socket(addr, &socket).map_err(|source| Error::Bind { addr, source })?;
        let (shared, thread) = driver::start(endpoint, udp, socket.batch, "server")?;
        log::debug!("DTLS server listening on {}", shared.local_addr);
        Ok(DtlsServer {
            shared,
            thread: Mutex::new(Some(thread)),
        })
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
        let core = self.shared.lock();
        let (core, got) = driver::wait_until(core, &self.shared.accept_cond, deadline, |core| {
            if let Some((peer, id)) = core.accept_queue.pop_front() {
                return Some(Ok((peer, id)));
            }
            core.shutdown.then_some(Err(Error::Closed))
        });
        match got {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok((peer, id))) => Ok(DtlsConnection::new(
                Arc::clone(&self.shared),
                &core,
                peer,
                id,
            )),
        }
    }

    /// An iterator over incoming connections ([`accept`](Self::accept) in a loop); it ends
    /// when the server is closed.
    pub fn incoming(&self) -> Incoming<'_> {
        Incoming { server: self }
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// A snapshot of the endpoint's counters.
    pub fn stats(&self) -> EndpointStats {
        self.shared.lock().endpoint.stats()
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
        self.shared.lock().failure_hook = Some(FailureHook(Arc::new(hook)));
    }

    /// Closes the server: `close_notify` to every peer, then the socket. Every connection's
    /// `recv` ends; `accept` returns [`Error::Closed`].
    pub fn close(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        driver::shutdown(&self.shared, &mut thread);
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

pub(crate) fn first_addr(addr: impl ToSocketAddrs) -> Result<SocketAddr> {
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        ))
    })
}
