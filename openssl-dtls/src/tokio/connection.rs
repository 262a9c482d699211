//! [`DtlsConnection`] on tokio, and [`Datagrams`], its received datagrams as a stream. What it
//! shares with the blocking connection (its state, the accessors) is `driver::handle`; here
//! is only waiting on a `Notify`.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ::tokio::time::Instant as TokioInstant;

use super::driver::{wait_for, TokioIo, BACKLOG_HIGH};
use super::{poll_kept, BoxFuture};
use crate::config::MAX_PLAINTEXT;
use crate::driver::handle::{connection_accessors, Handle};
use crate::error::{Error, Result};

/// One DTLS connection with one peer, over the socket of a [`DtlsServer`](super::DtlsServer) or
/// [`DtlsClient`](super::DtlsClient):
/// the async twin of [`crate::DtlsConnection`].
///
/// Cheap to clone (`Send + Sync`): one task may wait in [`recv`](Self::recv) while another
/// calls [`send`](Self::send). Each `send` is one datagram; each `recv` returns one datagram.
/// Dropping the last clone closes the connection (`close_notify`).
#[derive(Debug, Clone)]
pub struct DtlsConnection {
    inner: Arc<Handle<TokioIo>>,
}

impl DtlsConnection {
    /// A connection over `inner`, a handle a client found again.
    pub(super) fn from_handle(inner: Arc<Handle<TokioIo>>) -> DtlsConnection {
        DtlsConnection { inner }
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
        self.send_when_writable(|inner, core| inner.send_locked(core, data))
            .await
    }

    /// Sends several datagrams of application data, each in its own record and datagram, in
    /// one go (the async twin of
    /// [`crate::DtlsConnection::send_many`]): all are sealed under one lock and leave together,
    /// one `sendmmsg(2)` for up to 64 messages (UDP GSO for equal sizes where the kernel has
    /// it). If one does not fit a record, none is sent
    /// ([`Error::PayloadTooLarge`]). Waits, as [`send`](Self::send), only while the driver's
    /// backlog is full; cancellation-safe in the same way.
    ///
    /// ```no_run
    /// # async fn demo(connection: &openssl_dtls::tokio::DtlsConnection) -> openssl_dtls::Result<()> {
    /// let readings = [[1u8; 1000], [2u8; 1000]];
    /// connection.send_many(&[&readings[0], &readings[1]]).await?;
    /// # Ok(())
    /// # }
    /// ```
    #[doc(alias = "sendmmsg")]
    pub async fn send_many(&self, datagrams: &[&[u8]]) -> Result<()> {
        self.send_when_writable(|inner, core| inner.send_many_locked(core, datagrams))
            .await
    }

    /// Waits until the driver's send backlog is below its high mark, then runs `send` under the
    /// lock.
    async fn send_when_writable(
        &self,
        send: impl Fn(&Handle<TokioIo>, &mut crate::driver::shared::Core<TokioIo>) -> Result<()>,
    ) -> Result<()> {
        let inner = &*self.inner;
        let shared = &*inner.shared;
        let sent = wait_for(&shared.io.writable_notify, None, || {
            let mut core = shared.lock();
            if core.out.queue.len() >= BACKLOG_HIGH && !core.shutdown {
                return None;
            }
            Some(send(inner, &mut core))
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
        let outcome = wait_for(&inner.signal, deadline, || {
            let mut core = inner.shared.lock();
            inner.recv_locked(&mut core, buf)
        })
        .await;
        outcome.unwrap_or(Ok(None))
    }

    /// Sends one SRTP or SRTCP packet (RFC 7983: first byte 128–191) to the peer as it is, from
    /// the connection's socket (as the blocking
    /// [`DtlsConnection::send_non_dtls`](crate::DtlsConnection::send_non_dtls)).
    pub async fn send_non_dtls(&self, datagram: &[u8]) -> Result<()> {
        self.send_when_writable(|inner, core| inner.send_non_dtls_locked(core, datagram))
            .await
    }

    /// Waits up to `timeout` for the next RTP/RTCP datagram from this connection's peer (as the
    /// blocking [`DtlsConnection::recv_non_dtls_timeout`](crate::DtlsConnection::recv_non_dtls_timeout)).
    pub async fn recv_non_dtls_timeout(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<Option<usize>> {
        let inner = &*self.inner;
        let deadline = Some(TokioInstant::now() + timeout);
        let outcome = wait_for(&inner.signal, deadline, || {
            let mut core = inner.shared.lock();
            inner.recv_non_dtls_locked(&mut core, buf)
        })
        .await;
        outcome.transpose()
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

    /// Closes the connection: sends `close_notify` (`SSL_shutdown`). The peer's `recv` then
    /// reads end of stream; ours does too once queued data is read.
    #[doc(alias = "SSL_shutdown")]
    pub async fn close(&self) {
        self.inner.close();
    }

    connection_accessors!();
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
        let r = ready!(poll_kept(&mut self.pending, cx, || {
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
        }));
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
