//! [`DtlsClient`]: blocking DTLS client connections over one UDP socket.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::connection::{self, DtlsConnection};
use crate::context::DtlsClientContext;
use crate::driver::{self, Shared, Slot, SlotState, SocketOptions};
use crate::endpoint::{Endpoint, EndpointConfig, EndpointStats};
use crate::error::{Error, Result, TimeoutPhase};
use crate::server::first_addr;

/// A DTLS client socket: connect to one or several servers over one UDP socket.
///
/// ```no_run
/// use std::time::Duration;
/// use openssl_dtls::{DtlsClient, DtlsClientContext, PskCredentials};
///
/// let ctx = DtlsClientContext::builder()
///     .psk_credentials(PskCredentials::new(b"Client_identity".to_vec(), b"secretPSK".to_vec()))
///     .build()?;
/// let client = DtlsClient::bind("127.0.0.1:0")?;
/// let connection = client.connect("127.0.0.1:5684".parse().unwrap(), &ctx, Duration::from_secs(5))?;
/// connection.send(b"Hello World")?;
/// let mut buf = [0u8; 1500];
/// let n = connection.recv(&mut buf)?;
/// println!("{}", String::from_utf8_lossy(&buf[..n]));
/// # Ok::<(), openssl_dtls::Error>(())
/// ```
#[derive(Debug)]
pub struct DtlsClient {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    known: Mutex<HashMap<SocketAddr, Known>>,
}

/// A connection this client made, for `connect` to hand out again.
#[derive(Debug)]
struct Known {
    connection: Weak<connection::Inner>,
    server_name: Option<String>,
    ctx: DtlsClientContext,
}

/// Whether a connection made with `known` answers a `connect` with `server_name` and `ctx`.
pub(crate) fn same_request(
    known: (&Option<String>, &DtlsClientContext),
    server_name: Option<&str>,
    ctx: &DtlsClientContext,
) -> bool {
    known.0.as_deref() == server_name && known.1.same_as(ctx)
}

impl DtlsClient {
    /// Binds a client socket on `addr` (`"0.0.0.0:0"` or `"[::]:0"` for any port).
    pub fn bind(addr: impl ToSocketAddrs) -> Result<DtlsClient> {
        DtlsClient::bind_with(addr, EndpointConfig::default(), SocketOptions::default())
    }

    /// Binds a client socket with the given limits and socket options.
    pub fn bind_with(
        addr: impl ToSocketAddrs,
        config: EndpointConfig,
        socket: SocketOptions,
    ) -> Result<DtlsClient> {
        let addr = first_addr(addr)?;
        let endpoint = Endpoint::client(config)?;
        let udp =
            driver::open_socket(addr, &socket).map_err(|source| Error::Bind { addr, source })?;
        let (shared, thread) = driver::start(endpoint, udp, socket.batch, "client")?;
        Ok(DtlsClient {
            shared,
            thread: Mutex::new(Some(thread)),
            known: Mutex::new(HashMap::new()),
        })
    }

    /// Connects to `peer` and completes the handshake within `timeout`, or fails with
    /// [`Error::Timeout`] or the handshake's error. No server name is sent: when the context
    /// verifies certificates, the server's certificate must be issued for `peer`'s IP address
    /// (an IP subject alternative name), unless the context opted out with
    /// [`danger_skip_server_name_check`](crate::DtlsClientContextBuilder::danger_skip_server_name_check).
    /// To send a name (SNI) and check the certificate against it instead, use
    /// [`connect_named`](Self::connect_named).
    ///
    /// As Dart's `dtls2` does, connecting to a peer this client already has an established
    /// connection with, made with the same context and server name, returns another handle to
    /// that connection (no new handshake), as long as some handle to it is still held. A
    /// handshake with `peer` still in progress, or a connection made with another context or
    /// server name, fails with an [`Error::Io`] of kind
    /// [`AlreadyExists`](std::io::ErrorKind::AlreadyExists). On a closed client this fails with
    /// [`Error::ClientClosed`].
    #[doc(alias = "SSL_connect")]
    #[doc(alias = "X509_VERIFY_PARAM_set1_ip")]
    pub fn connect(
        &self,
        peer: SocketAddr,
        ctx: &DtlsClientContext,
        timeout: Duration,
    ) -> Result<DtlsConnection> {
        self.connect_inner(peer, None, ctx, timeout)
    }

    /// As [`connect`](Self::connect), sending `server_name` (SNI) and, when the context
    /// verifies certificates, checking the server's certificate against it
    /// (`X509_VERIFY_PARAM_set1_host`; an IP address given as the name is checked as one).
    #[doc(alias = "X509_VERIFY_PARAM_set1_host")]
    pub fn connect_named(
        &self,
        peer: SocketAddr,
        server_name: &str,
        ctx: &DtlsClientContext,
        timeout: Duration,
    ) -> Result<DtlsConnection> {
        self.connect_inner(peer, Some(server_name), ctx, timeout)
    }

    /// Another handle to an established connection with `peer` made with `server_name` and
    /// `ctx`, if some handle still holds it.
    fn existing(
        &self,
        peer: SocketAddr,
        server_name: Option<&str>,
        ctx: &DtlsClientContext,
    ) -> Option<DtlsConnection> {
        let weak = {
            let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
            known.retain(|_, k| k.connection.strong_count() > 0);
            let k = known.get(&peer)?;
            if !same_request((&k.server_name, &k.ctx), server_name, ctx) {
                return None;
            }
            k.connection.clone()
        };
        DtlsConnection::upgrade(&weak)
    }

    fn connect_inner(
        &self,
        peer: SocketAddr,
        server_name: Option<&str>,
        ctx: &DtlsClientContext,
        timeout: Duration,
    ) -> Result<DtlsConnection> {
        if let Some(existing) = self.existing(peer, server_name, ctx) {
            return Ok(existing);
        }
        let deadline = Instant::now() + timeout;
        let mut core = self.shared.lock();
        if core.shutdown {
            return Err(Error::ClientClosed);
        }
        let id = core
            .endpoint
            .connect(Instant::now(), peer, ctx, server_name)?;
        let cond = Arc::new(Condvar::new());
        core.slots.insert(
            id,
            Slot {
                state: SlotState::Handshaking,
                cond: Arc::clone(&cond),
            },
        );
        driver::dispatch(&self.shared, &mut core);
        self.shared.flush(&mut core);
        self.shared.wake();
        let (mut core, outcome) =
            driver::wait_until(core, &cond, Some(deadline), |core| {
                match core.slots.get_mut(&id).map(|s| &mut s.state) {
                    Some(SlotState::Established) => Some(Ok(())),
                    Some(SlotState::Ended(e)) => Some(Err(e.take().unwrap_or(Error::Closed))),
                    Some(SlotState::Handshaking) => {
                        core.shutdown.then_some(Err(Error::ClientClosed))
                    }
                    None => Some(Err(Error::Closed)),
                }
            });
        match outcome {
            Some(Ok(())) => {
                let connection = DtlsConnection::new(Arc::clone(&self.shared), &core, peer, id)
                    .ok_or(Error::Closed)?;
                drop(core);
                let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
                known.insert(
                    peer,
                    Known {
                        connection: connection.downgrade(),
                        server_name: server_name.map(str::to_owned),
                        ctx: ctx.clone(),
                    },
                );
                Ok(connection)
            }
            other => {
                core.endpoint.release(peer, id);
                core.slots.remove(&id);
                self.shared.flush(&mut core);
                Err(match other {
                    Some(Err(e)) => e,
                    _ => Error::Timeout {
                        peer: Some(peer),
                        phase: TimeoutPhase::Connect,
                    },
                })
            }
        }
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// A snapshot of the endpoint's counters.
    pub fn stats(&self) -> EndpointStats {
        self.shared.lock().endpoint.stats()
    }

    /// Closes every connection (`close_notify`) and the socket.
    pub fn close(&self) {
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        driver::shutdown(&self.shared, &mut thread);
    }
}

impl Drop for DtlsClient {
    fn drop(&mut self) {
        self.close();
    }
}
