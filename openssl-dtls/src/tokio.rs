//! The async drivers on tokio (feature `tokio`): [`DtlsServer`], [`DtlsClient`] and
//! [`DtlsConnection`] with the names and semantics of the blocking ones, over the same sans-IO
//! [`Endpoint`].
//!
//! One task per socket owns the receive side: it waits on the `tokio::net::UdpSocket`, on the
//! endpoint's next deadline (`sleep_until`, no periodic ticks) and on a `tokio::sync::Notify` that handles
//! use when they change its deadlines (a new handshake, a close). The endpoint sits behind a
//! `std::sync::Mutex` shared with the handles, never held across an `.await`. Sends go straight
//! to the socket (`try_send_to`) from the sending task; a datagram that would block is queued
//! for the driver task, which sends it when the socket is writable, and `send` waits while that
//! queue is long.
//!
//! Every future here is cancellation-safe: a datagram or connection is taken out of the endpoint
//! only in the same synchronous step that hands it to the caller, so dropping a pending
//! [`recv`](DtlsConnection::recv) or [`accept`](DtlsServer::accept) loses nothing, and dropping
//! a pending [`connect`](DtlsClient::connect) releases its handshake. Dropping the last clone of
//! a [`DtlsConnection`] closes the connection (`close_notify`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), openssl_dtls::Error> {
//! use std::time::Duration;
//! use openssl_dtls::tokio::{DtlsClient, DtlsServer};
//! use openssl_dtls::{DtlsClientContext, DtlsServerContext, PskCredentials};
//!
//! let ctx = DtlsServerContext::builder()
//!     .psk_key_store(|identity| (identity == b"Client_identity").then(|| b"secretPSK".to_vec()))
//!     .build()?;
//! let server = DtlsServer::bind("127.0.0.1:5684", ctx).await?;
//! tokio::spawn(async move {
//!     while let Ok(connection) = server.accept().await {
//!         tokio::spawn(async move {
//!             let mut buf = [0u8; 1500];
//!             while let Ok(n @ 1..) = connection.recv(&mut buf).await {
//!                 let _ = connection.send(&buf[..n]).await; // echo
//!             }
//!         });
//!     }
//! });
//!
//! let ctx = DtlsClientContext::builder()
//!     .psk_credentials(PskCredentials::new(b"Client_identity".to_vec(), b"secretPSK".to_vec()))
//!     .build()?;
//! let client = DtlsClient::bind("127.0.0.1:0").await?;
//! let connection = client
//!     .connect("127.0.0.1:5684".parse().unwrap(), &ctx, Duration::from_secs(5))
//!     .await?;
//! connection.send(b"Hello World").await?;
//! let mut buf = [0u8; 1500];
//! let n = connection.recv(&mut buf).await?;
//! println!("{}", String::from_utf8_lossy(&buf[..n]));
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::tokio::net::{ToSocketAddrs, UdpSocket};
use ::tokio::sync::Notify;
use ::tokio::task::JoinHandle;
use ::tokio::time::Instant as TokioInstant;
use openssl::x509::X509;

use crate::connection::Facts;
use crate::context::{DtlsClientContext, DtlsServerContext};
use crate::driver::{open_socket, SocketOptions};
use crate::endpoint::{
    ConnectionId, ConnectionStats, Endpoint, EndpointConfig, EndpointStats, Event, FailureHook,
    HandshakeFailure,
};
use crate::error::{Error, Result, TimeoutPhase};

/// The largest datagram we read: anything larger than a UDP payload can be is impossible.
const RX_BUFFER: usize = 65_536;
/// The largest plaintext a DTLS record carries (2^14): the buffer size of [`Datagrams`].
const MAX_PLAINTEXT: usize = 16_384;
/// Datagrams queued for the driver (the socket would block) past which `send` waits.
const BACKLOG_HIGH: usize = 256;
/// Datagrams queued for the driver past which further ones are dropped (counted).
const BACKLOG_MAX: usize = 4_096;

/// How a connection handle sees its connection.
#[derive(Debug)]
enum SlotState {
    Handshaking,
    Established,
    Ended(Option<Error>),
}

/// Per-connection wait state, under the core's lock.
#[derive(Debug)]
struct Slot {
    state: SlotState,
    notify: Arc<Notify>,
}

/// Everything behind the lock.
struct Core {
    endpoint: Endpoint,
    is_server: bool,
    slots: HashMap<ConnectionId, Slot>,
    accept_queue: VecDeque<(SocketAddr, ConnectionId)>,
    shutdown: bool,
    /// Datagrams that could not be sent (an error, or the backlog was full).
    send_errors: u64,
    /// Datagrams the socket refused with `WouldBlock`, in order, for the driver task.
    backlog: VecDeque<(SocketAddr, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
    tx: Vec<u8>,
    /// Called for every failed server handshake ([`DtlsServer::on_handshake_failure`]).
    failure_hook: Option<FailureHook>,
    /// Failed handshakes the driver task reports next, outside the lock.
    failures: Vec<HandshakeFailure>,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("endpoint", &self.endpoint)
            .field("slots", &self.slots.len())
            .field("accept_queue", &self.accept_queue.len())
            .field("shutdown", &self.shutdown)
            .field("send_errors", &self.send_errors)
            .field("backlog", &self.backlog.len())
            .finish_non_exhaustive()
    }
}

/// Shared by the driver task and every handle.
#[derive(Debug)]
struct Shared {
    core: Mutex<Core>,
    /// Wakes `accept` waiters (a connection was queued, or the driver stopped).
    accept_notify: Notify,
    /// Wakes the driver task (a handle changed its deadlines or queued a backlog).
    driver_notify: Notify,
    /// Wakes senders waiting for the backlog to drain.
    writable_notify: Notify,
    socket: UdpSocket,
    local_addr: SocketAddr,
    batch: usize,
}

impl Shared {
    /// Locks the core; a poisoned lock is taken over (the data stays consistent between
    /// statements).
    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_driver(&self) {
        self.driver_notify.notify_one();
    }

    /// Sends everything the endpoint has queued, straight to the socket; what would block goes
    /// to the backlog, in order, and the driver task is woken to send it when it can.
    fn flush(&self, core: &mut Core) {
        let Core {
            endpoint,
            tx,
            send_errors,
            backlog,
            spare,
            ..
        } = core;
        let had_backlog = !backlog.is_empty();
        while let Some((addr, datagram)) = backlog.front() {
            match self.socket.try_send_to(datagram, *addr) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                r => {
                    if let Err(e) = r {
                        *send_errors += 1;
                        log::debug!("send to {addr} failed: {e}");
                    }
                    let (_, buf) = backlog.pop_front().expect("front exists");
                    if spare.len() < 64 {
                        spare.push(buf);
                    }
                }
            }
        }
        while let Some((addr, n)) = endpoint.poll_transmit(tx) {
            if backlog.is_empty() {
                match self.socket.try_send_to(&tx[..n], addr) {
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        *send_errors += 1;
                        log::debug!("send to {addr} failed: {e}");
                        continue;
                    }
                }
            }
            if backlog.len() >= BACKLOG_MAX {
                *send_errors += 1;
                continue;
            }
            let mut buf = spare.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(&tx[..n]);
            backlog.push_back((addr, buf));
        }
        if backlog.is_empty() {
            if had_backlog {
                self.writable_notify.notify_waiters();
            }
        } else if !had_backlog {
            self.wake_driver();
        }
    }
}

/// Routes endpoint events to the handles waiting on them.
fn dispatch(shared: &Shared, core: &mut Core) {
    while let Some(event) = core.endpoint.poll_event() {
        match event {
            Event::Connected { peer, id } => match core.slots.get_mut(&id) {
                Some(slot) => {
                    slot.state = SlotState::Established;
                    slot.notify.notify_waiters();
                }
                None if core.is_server => {
                    core.slots.insert(
                        id,
                        Slot {
                            state: SlotState::Established,
                            notify: Arc::new(Notify::new()),
                        },
                    );
                    core.accept_queue.push_back((peer, id));
                    shared.accept_notify.notify_waiters();
                }
                // A client handshake whose `connect` was dropped: nobody to hand it to.
                None => core.endpoint.release(peer, id),
            },
            Event::Readable { id, .. } => {
                if let Some(slot) = core.slots.get(&id) {
                    slot.notify.notify_waiters();
                }
            }
            Event::Closed { id, error, .. } => {
                if let Some(slot) = core.slots.get_mut(&id) {
                    slot.state = SlotState::Ended(error);
                    slot.notify.notify_waiters();
                }
            }
            Event::HandshakeFailed(failure) => {
                if core.failures.len() < crate::endpoint::MAX_PENDING_FAILURES {
                    core.failures.push(failure);
                    shared.wake_driver(); // the driver task reports it, outside the lock
                } else {
                    log::info!("handshake failed: {failure}");
                }
            }
        }
    }
}

/// Opens the socket and starts the driver task.
async fn start(
    addr: impl ToSocketAddrs,
    endpoint: Endpoint,
    is_server: bool,
    options: &SocketOptions,
) -> Result<(Arc<Shared>, JoinHandle<()>)> {
    let mut last_error = None;
    let mut socket = None;
    for addr in ::tokio::net::lookup_host(addr).await? {
        match open_socket(addr, options) {
            Ok(s) => {
                socket = Some(s);
                break;
            }
            Err(source) => last_error = Some(Error::Bind { addr, source }),
        }
    }
    let socket = match (socket, last_error) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e),
        (None, None) => {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the address resolved to nothing",
            )))
        }
    };
    let socket = UdpSocket::from_std(socket)?;
    let local_addr = socket.local_addr()?;
    let shared = Arc::new(Shared {
        core: Mutex::new(Core {
            endpoint,
            is_server,
            slots: HashMap::new(),
            accept_queue: VecDeque::new(),
            shutdown: false,
            send_errors: 0,
            failure_hook: None,
            failures: Vec::new(),
            backlog: VecDeque::new(),
            spare: Vec::new(),
            tx: vec![0; RX_BUFFER],
        }),
        accept_notify: Notify::new(),
        driver_notify: Notify::new(),
        writable_notify: Notify::new(),
        socket,
        local_addr,
        batch: options.batch.max(1),
    });
    let task = ::tokio::spawn(run(Arc::clone(&shared)));
    Ok((shared, task))
}

/// The driver task: sleeps until the socket is readable (or writable, with a backlog), the
/// endpoint's next deadline passes, or a handle wakes it; then takes one turn.
async fn run(shared: Arc<Shared>) {
    let mut rx = vec![0u8; RX_BUFFER];
    loop {
        let (deadline, want_write) = {
            let core = shared.lock();
            if core.shutdown {
                break;
            }
            (core.endpoint.poll_timeout(), !core.backlog.is_empty())
        };
        let sleep = async move {
            match deadline {
                Some(at) => ::tokio::time::sleep_until(TokioInstant::from_std(at)).await,
                None => std::future::pending::<()>().await,
            }
        };
        let outcome: io::Result<()> = ::tokio::select! {
            r = shared.socket.readable() => r,
            r = shared.socket.writable(), if want_write => r,
            () = sleep => Ok(()),
            () = shared.driver_notify.notified() => Ok(()),
        };
        if let Err(e) = outcome {
            log::error!("DTLS driver on {} failed: {e}", shared.local_addr);
            end_all(&shared, Some(e.kind()));
            return;
        }
        if !turn(&shared, &mut rx) {
            break;
        }
    }
    end_all(&shared, None);
}

/// One driver turn: a batch of datagrams, the timers, events, output. False after shutdown.
fn turn(shared: &Shared, rx: &mut [u8]) -> bool {
    let mut core = shared.lock();
    if core.shutdown {
        return false;
    }
    for _ in 0..shared.batch {
        match shared.socket.try_recv_from(rx) {
            Ok((n, peer)) => core
                .endpoint
                .handle_datagram(Instant::now(), peer, &rx[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // ICMP errors surface as ECONNREFUSED etc. on Linux: not fatal.
            Err(e) => log::debug!("recv_from: {e}"),
        }
    }
    core.endpoint.handle_timeout(Instant::now());
    dispatch(shared, &mut core);
    shared.flush(&mut core);
    if !core.failures.is_empty() {
        let mut failures = std::mem::take(&mut core.failures);
        let hook = core.failure_hook.clone();
        drop(core);
        crate::endpoint::report_failures(hook.as_ref(), &mut failures);
    }
    true
}

/// Marks every connection ended and wakes every waiter (the driver stopped).
fn end_all(shared: &Shared, error: Option<io::ErrorKind>) {
    let mut core = shared.lock();
    core.shutdown = true;
    for slot in core.slots.values_mut() {
        if !matches!(slot.state, SlotState::Ended(_)) {
            slot.state = SlotState::Ended(
                error.map(|k| Error::Io(io::Error::new(k, "the DTLS driver stopped"))),
            );
        }
        slot.notify.notify_waiters();
    }
    drop(core);
    shared.accept_notify.notify_waiters();
    shared.writable_notify.notify_waiters();
    shared.wake_driver();
}

/// Closes every connection (`close_notify`), sends what can be sent now, and stops the driver.
fn shutdown_now(shared: &Shared) {
    {
        let mut core = shared.lock();
        if !core.shutdown {
            core.endpoint.close_all();
            dispatch(shared, &mut core);
            shared.flush(&mut core);
            core.shutdown = true;
        }
    }
    end_all(shared, None);
}

/// As [`shutdown_now`], but first gives the `close_notify` datagrams that would block up to a
/// second to leave, and waits for the driver task to end.
async fn shutdown(shared: &Shared, task: &Mutex<Option<JoinHandle<()>>>) {
    {
        let mut core = shared.lock();
        if !core.shutdown {
            core.endpoint.close_all();
            dispatch(shared, &mut core);
            shared.flush(&mut core);
        }
    }
    shared.wake_driver();
    let _ = wait_for(
        &shared.writable_notify,
        Some(TokioInstant::now() + Duration::from_secs(1)),
        || {
            let core = shared.lock();
            (core.backlog.is_empty() || core.shutdown).then_some(())
        },
    )
    .await;
    shutdown_now(shared);
    let task = task.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(task) = task {
        let _ = task.await;
    }
}

/// Waits on `notify` until `ready` returns `Some`, or `deadline` passes (then `None`).
/// `ready` runs with no lock held by the caller and must not await; the waiter is registered
/// before each check, so no wakeup is lost between a check and the wait.
async fn wait_for<T>(
    notify: &Notify,
    deadline: Option<TokioInstant>,
    mut ready: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        let notified = notify.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if let Some(v) = ready() {
            return Some(v);
        }
        match deadline {
            None => notified.await,
            Some(at) => {
                if ::tokio::time::timeout_at(at, notified).await.is_err() {
                    return ready();
                }
            }
        }
    }
}

/// A DTLS server on tokio: one UDP socket, a stateless cookie exchange (`DTLSv1_listen`) before
/// any per-peer state, and a [`DtlsConnection`] per peer whose handshake completed. The async
/// twin of [`crate::DtlsServer`].
///
/// Dropping the server (or [`close`](Self::close)) sends `close_notify` to every peer and stops
/// its driver task; every connection's `recv` then ends.
#[derive(Debug)]
pub struct DtlsServer {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
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
        let (shared, task) = start(addr, endpoint, true, &socket).await?;
        log::debug!("DTLS server (tokio) listening on {}", shared.local_addr);
        Ok(DtlsServer {
            shared,
            task: Mutex::new(Some(task)),
        })
    }

    /// Waits for the next connection whose handshake completed. After [`close`](Self::close):
    /// [`Error::Closed`]. Cancellation-safe: a dropped `accept` takes no connection.
    pub async fn accept(&self) -> Result<DtlsConnection> {
        accept_until(&self.shared, None)
            .await
            .and_then(|c| c.ok_or(Error::Closed))
    }

    /// As [`accept`](Self::accept), but gives up after `timeout` with `Ok(None)`.
    pub async fn accept_timeout(&self, timeout: Duration) -> Result<Option<DtlsConnection>> {
        accept_until(&self.shared, Some(TokioInstant::now() + timeout)).await
    }

    /// The incoming connections ([`accept`](Self::accept) in a loop) as a stream: use
    /// [`Incoming::next`] or its `futures_core::Stream` impl. It ends when the server is closed.
    pub fn incoming(&self) -> Incoming {
        Incoming {
            shared: Arc::clone(&self.shared),
            pending: None,
            done: false,
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

    /// Calls `hook` for every handshake a peer started with this server that failed: see
    /// [`crate::DtlsServer::on_handshake_failure`]. The hook runs on the driver task, outside the
    /// server's lock; it must not block.
    pub fn on_handshake_failure<F>(&self, hook: F)
    where
        F: Fn(&HandshakeFailure) + Send + Sync + 'static,
    {
        self.shared.lock().failure_hook = Some(FailureHook(Arc::new(hook)));
    }

    /// Closes the server: `close_notify` to every peer, then the driver task. Every
    /// connection's `recv` ends; `accept` returns [`Error::Closed`].
    pub async fn close(&self) {
        shutdown(&self.shared, &self.task).await;
    }
}

impl Drop for DtlsServer {
    fn drop(&mut self) {
        shutdown_now(&self.shared);
    }
}

async fn accept_until(
    shared: &Arc<Shared>,
    deadline: Option<TokioInstant>,
) -> Result<Option<DtlsConnection>> {
    let got = wait_for(&shared.accept_notify, deadline, || {
        let mut core = shared.lock();
        if let Some((peer, id)) = core.accept_queue.pop_front() {
            return Some(Ok(DtlsConnection::new(Arc::clone(shared), &core, peer, id)));
        }
        core.shutdown.then_some(Err(Error::Closed))
    })
    .await;
    match got {
        None => Ok(None),
        Some(r) => r,
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A server's incoming connections: see [`DtlsServer::incoming`]. Also a
/// `futures_core::Stream` of `Result<DtlsConnection>`.
pub struct Incoming {
    shared: Arc<Shared>,
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
        let pending = self.pending.get_or_insert_with(|| {
            let shared = Arc::clone(shared);
            Box::pin(async move { accept_until(&shared, None).await })
        });
        let r = match pending.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        self.pending = None;
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

/// A DTLS client socket on tokio: connect to one or several servers over one UDP socket. The
/// async twin of [`crate::DtlsClient`].
#[derive(Debug)]
pub struct DtlsClient {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
    known: Mutex<HashMap<SocketAddr, Known>>,
}

/// A connection this client made, for `connect` to hand out again.
#[derive(Debug)]
struct Known {
    connection: Weak<ConnectionInner>,
    server_name: Option<String>,
    ctx: DtlsClientContext,
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
        let (shared, task) = start(addr, endpoint, false, &socket).await?;
        Ok(DtlsClient {
            shared,
            task: Mutex::new(Some(task)),
            known: Mutex::new(HashMap::new()),
        })
    }

    /// Connects to `peer` and completes the handshake within `timeout`, or fails with
    /// [`Error::Timeout`] or the handshake's error. Dropping the future before it completes
    /// releases the handshake.
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
    /// server name, fails with an [`Error::Io`] of kind
    /// [`AlreadyExists`](std::io::ErrorKind::AlreadyExists). On a closed client this fails with
    /// [`Error::ClientClosed`].
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

    /// Another handle to an established connection with `peer` made with `server_name` and
    /// `ctx`, if some handle still holds it. Takes no lock while a handle may be dropped.
    fn existing(
        &self,
        peer: SocketAddr,
        server_name: Option<&str>,
        ctx: &DtlsClientContext,
    ) -> Option<DtlsConnection> {
        let weak = {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            known.retain(|_, k| k.connection.strong_count() > 0);
            let k = known.get(&peer)?;
            if !crate::client::same_request((&k.server_name, &k.ctx), server_name, ctx) {
                return None;
            }
            k.connection.clone()
        };
        let connection = DtlsConnection {
            inner: weak.upgrade()?,
        };
        (!connection.is_closed()).then_some(connection)
    }

    async fn connect_inner(
        &self,
        peer: SocketAddr,
        server_name: Option<&str>,
        ctx: &DtlsClientContext,
        timeout: Duration,
    ) -> Result<DtlsConnection> {
        if let Some(existing) = self.existing(peer, server_name, ctx) {
            return Ok(existing);
        }
        let deadline = TokioInstant::now() + timeout;
        let notify = Arc::new(Notify::new());
        let id = {
            let mut core = self.shared.lock();
            if core.shutdown {
                return Err(Error::ClientClosed);
            }
            let id = core
                .endpoint
                .connect(Instant::now(), peer, ctx, server_name)?;
            core.slots.insert(
                id,
                Slot {
                    state: SlotState::Handshaking,
                    notify: Arc::clone(&notify),
                },
            );
            dispatch(&self.shared, &mut core);
            self.shared.flush(&mut core);
            id
        };
        self.shared.wake_driver();
        // Releases the handshake if this future is dropped (or fails) before it completes.
        let mut pending = PendingConnect {
            shared: &self.shared,
            peer,
            id,
            armed: true,
        };
        let outcome = wait_for(&notify, Some(deadline), || {
            let mut core = self.shared.lock();
            let shutdown = core.shutdown;
            match core.slots.get_mut(&id).map(|s| &mut s.state) {
                Some(SlotState::Established) => Some(Ok(())),
                Some(SlotState::Ended(e)) => Some(Err(e.take().unwrap_or(Error::Closed))),
                Some(SlotState::Handshaking) => shutdown.then_some(Err(Error::ClientClosed)),
                None => Some(Err(Error::Closed)),
            }
        })
        .await;
        match outcome {
            Some(Ok(())) => {
                let connection = {
                    let core = self.shared.lock();
                    DtlsConnection::new(Arc::clone(&self.shared), &core, peer, id)
                };
                let connection = connection.ok_or(Error::Closed)?;
                pending.armed = false;
                let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
                known.insert(
                    peer,
                    Known {
                        connection: Arc::downgrade(&connection.inner),
                        server_name: server_name.map(str::to_owned),
                        ctx: ctx.clone(),
                    },
                );
                Ok(connection)
            }
            Some(Err(e)) => Err(e),
            None => Err(Error::Timeout {
                peer: Some(peer),
                phase: TimeoutPhase::Connect,
            }),
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

    /// Closes every connection (`close_notify`) and stops the driver task.
    pub async fn close(&self) {
        shutdown(&self.shared, &self.task).await;
    }
}

impl Drop for DtlsClient {
    fn drop(&mut self) {
        shutdown_now(&self.shared);
    }
}

/// A handshake started by `connect`: released unless disarmed.
struct PendingConnect<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
    id: ConnectionId,
    armed: bool,
}

impl Drop for PendingConnect<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut core = self.shared.lock();
        core.endpoint.release(self.peer, self.id);
        core.slots.remove(&self.id);
        dispatch(self.shared, &mut core);
        self.shared.flush(&mut core);
        drop(core);
        self.shared.wake_driver();
    }
}

/// One DTLS connection with one peer, over the socket of a [`DtlsServer`] or [`DtlsClient`]:
/// the async twin of [`crate::DtlsConnection`].
///
/// Cheap to clone (`Send + Sync`): one task may wait in [`recv`](Self::recv) while another
/// calls [`send`](Self::send). Each `send` is one datagram; each `recv` returns one datagram.
/// Dropping the last clone closes the connection (`close_notify`).
#[derive(Debug, Clone)]
pub struct DtlsConnection {
    inner: Arc<ConnectionInner>,
}

#[derive(Debug)]
struct ConnectionInner {
    shared: Arc<Shared>,
    peer: SocketAddr,
    id: ConnectionId,
    notify: Arc<Notify>,
    facts: Facts,
}

impl DtlsConnection {
    /// A handle for connection `id`; reads the handshake facts from its session.
    fn new(
        shared: Arc<Shared>,
        core: &Core,
        peer: SocketAddr,
        id: ConnectionId,
    ) -> Option<DtlsConnection> {
        let notify = Arc::clone(&core.slots.get(&id)?.notify);
        let facts = Facts::of(core.endpoint.session(peer, id));
        Some(DtlsConnection {
            inner: Arc::new(ConnectionInner {
                shared,
                peer,
                id,
                notify,
                facts,
            }),
        })
    }

    /// Sends one datagram of application data. It must fit one record within the MTU
    /// ([`data_mtu`](Self::data_mtu)); a larger one is refused with
    /// [`Error::PayloadTooLarge`]. After the connection ended: its error, or [`Error::Closed`].
    ///
    /// The datagram goes straight to the socket; it waits only while datagrams that the socket
    /// refused (`WouldBlock`) queue up for the driver. Cancellation-safe: once it returns
    /// `Poll::Ready` the datagram is sent or queued; before that, nothing was.
    #[doc(alias = "SSL_write")]
    pub async fn send(&self, data: &[u8]) -> Result<()> {
        let inner = &*self.inner;
        let shared = &*inner.shared;
        let sent = wait_for(&shared.writable_notify, None, || {
            let mut core = shared.lock();
            if core.backlog.len() >= BACKLOG_HIGH && !core.shutdown {
                return None;
            }
            Some(match core.endpoint.send(inner.peer, inner.id, data) {
                Ok(()) => {
                    shared.flush(&mut core);
                    Ok(())
                }
                Err(Error::Closed) => Err(self.ended_error(&core).unwrap_or(Error::Closed)),
                Err(e) => Err(e),
            })
        })
        .await;
        sent.unwrap_or(Err(Error::Closed))
    }

    /// Receives one datagram into `buf`, waiting until one arrives. Returns its length (a
    /// datagram longer than `buf` is truncated, as with UDP), or `Ok(0)` at end of stream: the
    /// connection was closed by either side with `close_notify`. A fatal alert, timeout or error
    /// ends it with that error instead. Cancellation-safe: a dropped `recv` takes no datagram.
    #[doc(alias = "SSL_read")]
    pub async fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        self.recv_until(buf, None).await.map(|n| n.unwrap_or(0))
    }

    /// As [`recv`](Self::recv), but gives up after `timeout`: `Ok(None)` if nothing arrived.
    pub async fn recv_timeout(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>> {
        self.recv_until(buf, Some(TokioInstant::now() + timeout))
            .await
    }

    async fn recv_until(
        &self,
        buf: &mut [u8],
        deadline: Option<TokioInstant>,
    ) -> Result<Option<usize>> {
        let inner = &*self.inner;
        let outcome = wait_for(&inner.notify, deadline, || {
            let mut core = inner.shared.lock();
            match core.endpoint.recv(inner.peer, inner.id, buf) {
                Ok(Some(n)) => Some(Ok(Some(n))),
                Ok(None) => core.shutdown.then_some(Ok(Some(0))),
                Err(Error::Closed) => match self.ended_error(&core) {
                    Some(e) => Some(Err(e)),
                    None => Some(Ok(Some(0))),
                },
                Err(e) => Some(Err(e)),
            }
        })
        .await;
        outcome.unwrap_or(Ok(None))
    }

    /// The received datagrams as a stream (each a `Vec<u8>` of up to 16,384 bytes): use
    /// [`Datagrams::next`] or its `futures_core::Stream` impl. It ends at end of stream; an
    /// error is its last item. The stream holds a clone of this handle.
    pub fn datagrams(&self) -> Datagrams {
        Datagrams {
            connection: self.clone(),
            pending: None,
            done: false,
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
    pub async fn close(&self) {
        let inner = &*self.inner;
        let mut core = inner.shared.lock();
        core.endpoint.close(inner.peer, inner.id);
        dispatch(&inner.shared, &mut core);
        inner.shared.flush(&mut core);
        drop(core);
        inner.shared.wake_driver();
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

impl Drop for ConnectionInner {
    fn drop(&mut self) {
        let mut core = self.shared.lock();
        core.endpoint.release(self.peer, self.id);
        core.slots.remove(&self.id);
        dispatch(&self.shared, &mut core);
        self.shared.flush(&mut core);
        drop(core);
        self.shared.wake_driver();
    }
}

/// A connection's received datagrams: see [`DtlsConnection::datagrams`]. Also a
/// `futures_core::Stream` of `Result<Vec<u8>>`.
pub struct Datagrams {
    connection: DtlsConnection,
    pending: Option<BoxFuture<Result<Option<Vec<u8>>>>>,
    done: bool,
}

impl fmt::Debug for Datagrams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datagrams")
            .field("peer", &self.connection.peer_addr())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Datagrams {
    /// The next datagram; `None` at end of stream (and after an error). Cancellation-safe.
    pub async fn next(&mut self) -> Option<Result<Vec<u8>>> {
        std::future::poll_fn(|cx| self.poll_next_datagram(cx)).await
    }

    fn poll_next_datagram(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Vec<u8>>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let connection = &self.connection;
        let pending = self.pending.get_or_insert_with(|| {
            let connection = connection.clone();
            Box::pin(async move {
                let mut buf = vec![0u8; MAX_PLAINTEXT];
                let n = connection.recv_until(&mut buf, None).await?;
                Ok(match n {
                    Some(0) | None => None,
                    Some(n) => {
                        buf.truncate(n);
                        Some(buf)
                    }
                })
            })
        });
        let r = match pending.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        self.pending = None;
        Poll::Ready(match r {
            Ok(Some(datagram)) => Some(Ok(datagram)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        })
    }
}

impl futures_core::Stream for Datagrams {
    type Item = Result<Vec<u8>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_next_datagram(cx)
    }
}
