//! [`DtlsClient`]: blocking DTLS client connections over one UDP socket. What it shares with
//! the tokio client (starting a handshake, the table of connections to hand out again) is in
//! the driver core; here is only waiting on a `Condvar`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::connection::DtlsConnection;
use crate::context::DtlsClientContext;
use crate::driver::blocking::{self, Blocking, Driver, Rank};
use crate::driver::handle::{Handle, Known};
use crate::driver::SocketOptions;
use crate::endpoint::{Endpoint, EndpointConfig, EndpointStats};
use crate::error::Result;

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
    driver: Driver,
    known: Known<Blocking>,
    /// The socket options, for [`rebind`](Self::rebind).
    options: SocketOptions,
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
        let endpoint = Endpoint::client(config)?;
        let driver = Driver::start(addr, endpoint, false, &socket, "client")?;
        Ok(DtlsClient {
            driver,
            known: Known::default(),
            options: socket,
        })
    }

    /// Connects to `peer` and completes the handshake within `timeout`, or fails with
    /// [`Error::Timeout`](crate::error::Error::Timeout) or the handshake's error. No server
    /// name is sent: when the context verifies certificates, the server's certificate must be
    /// issued for `peer`'s IP address (an IP subject alternative name), unless the context
    /// opted out with
    /// [`danger_skip_server_name_check`](crate::DtlsClientContextBuilder::danger_skip_server_name_check).
    /// To send a name (SNI) and check the certificate against it instead, use
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

    fn connect_inner(
        &self,
        peer: SocketAddr,
        server_name: Option<&str>,
        ctx: &DtlsClientContext,
        timeout: Duration,
    ) -> Result<DtlsConnection> {
        if let Some(existing) = self.known.existing(peer, server_name, ctx) {
            return Ok(DtlsConnection::from_handle(existing));
        }
        let deadline = Instant::now() + timeout;
        let shared = &self.driver.shared;
        let (id, signal) = shared.begin_connect(peer, ctx, server_name)?;
        let core = shared.lock();
        let (core, outcome) = blocking::wait_until(
            shared,
            core,
            &signal,
            Rank::Connection,
            None,
            Some(deadline),
            |core| core.connect_outcome(id),
        );
        let connected = Handle::connected(shared, &core, peer, id, outcome);
        drop(core);
        match connected {
            Ok(handle) => {
                self.known.remember(&handle, server_name, ctx);
                Ok(DtlsConnection::from_handle(handle))
            }
            Err(e) => {
                shared.release(peer, id);
                Err(e)
            }
        }
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> SocketAddr {
        use crate::driver::Io as _;
        self.driver
            .shared
            .io
            .local_addr()
            .unwrap_or(self.driver.shared.local_addr)
    }

    /// Moves this client to a new socket on `addr` (e.g. `"0.0.0.0:0"`: a new port), keeping its
    /// connections: what a device does after waking on a new network, or to shed a stale NAT
    /// mapping. Connections that negotiated a Connection ID with the server
    /// ([`DtlsClientContextBuilder::connection_id`](crate::DtlsClientContextBuilder::connection_id))
    /// go on without a new handshake: their records carry the server's CID, which the server
    /// finds them by. Without one, the server knows the connection only by its old address and
    /// drops what comes from the new one. Returns the new local address; on error the old
    /// socket stays.
    ///
    /// The new socket takes the old one's place under the same descriptor (`dup3`), so the
    /// driver and every handle use it from their next call; datagrams in flight to the old
    /// address are lost, as after a NAT rebinding.
    #[doc(alias = "dup3")]
    pub fn rebind(&self, addr: impl ToSocketAddrs) -> Result<SocketAddr> {
        let addr = crate::driver::socket::first_addr(addr)?;
        let new = self.driver.shared.io.rebind(addr, &self.options)?;
        // The driver may be asleep in poll(2) on the old socket: wake it onto the new one.
        self.driver.shared.wake();
        log::debug!("DTLS client moved to {new}");
        Ok(new)
    }

    /// A snapshot of the endpoint's counters, with the socket's: datagrams the kernel dropped
    /// at its receive buffer (`socket_rx_dropped`) and sends that failed
    /// (`socket_send_errors`, `socket_send_full`).
    pub fn stats(&self) -> EndpointStats {
        self.driver.shared.stats()
    }

    /// Closes every connection (`close_notify`) and the socket.
    pub fn close(&self) {
        self.driver.shutdown();
    }
}

impl Drop for DtlsClient {
    fn drop(&mut self) {
        self.close();
    }
}
