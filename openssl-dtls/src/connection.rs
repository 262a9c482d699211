//! [`DtlsConnection`]: one established DTLS association, as a blocking handle. What it shares
//! with the tokio connection (its state, the accessors) is `driver::handle`; here is only
//! waiting on a `Condvar`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::driver::blocking::{self, Blocking, Rank};
use crate::driver::handle::{connection_accessors, Handle};
use crate::error::Result;

/// One DTLS connection with one peer, over the socket of a [`DtlsServer`](crate::DtlsServer) or
/// [`DtlsClient`](crate::DtlsClient).
///
/// `Send + Sync`: one thread may block in [`recv`](Self::recv) while another calls
/// [`send`](Self::send). Each `send` is one datagram; each `recv` returns one datagram.
/// Clones are handles to the same connection; dropping the last one closes it (`close_notify`).
///
/// The handshake's facts (cipher, version, PSK identity, peer certificate, ALPN) are fixed when
/// the connection is established and can be read without touching the network.
#[derive(Debug, Clone)]
pub struct DtlsConnection {
    inner: Arc<Handle<Blocking>>,
}

impl DtlsConnection {
    /// A connection over `inner`, a handle a client found again.
    pub(crate) fn from_handle(inner: Arc<Handle<Blocking>>) -> DtlsConnection {
        DtlsConnection { inner }
    }

    /// Sends one datagram of application data. It must fit one record within the MTU
    /// ([`data_mtu`](Self::data_mtu)); a larger one is refused with
    /// [`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge). After the connection ended:
    /// its error, or [`Error::Closed`](crate::Error::Closed).
    #[doc(alias = "SSL_write")]
    pub fn send(&self, data: &[u8]) -> Result<()> {
        let mut core = self.inner.shared.lock();
        self.inner.send_locked(&mut core, data)
    }

    /// Sends several datagrams of application data, each in its own record and datagram, in
    /// one go: all are sealed under one lock and leave together, one `sendmmsg(2)` for up to
    /// 64 messages (a run of equal sizes as one UDP GSO message where the kernel has it, see
    /// [`SocketOptions::gso`](crate::SocketOptions::gso)); nothing is allocated. The peer
    /// receives the same datagrams as from as many [`send`](Self::send) calls, in order.
    ///
    /// Each must fit one record ([`data_mtu`](Self::data_mtu)): if one does not, none is sent
    /// ([`Error::PayloadTooLarge`](crate::Error::PayloadTooLarge)). If the connection ends
    /// midway, the datagrams before that were sent and its error is returned.
    ///
    /// ```no_run
    /// # fn demo(connection: &openssl_dtls::DtlsConnection) -> openssl_dtls::Result<()> {
    /// let readings = [[1u8; 1000], [2u8; 1000], [3u8; 1000]];
    /// let batch: Vec<&[u8]> = readings.iter().map(|r| &r[..]).collect();
    /// connection.send_many(&batch)?;
    /// # Ok(())
    /// # }
    /// ```
    #[doc(alias = "sendmmsg")]
    #[doc(alias = "SSL_write")]
    pub fn send_many(&self, datagrams: &[&[u8]]) -> Result<()> {
        let mut core = self.inner.shared.lock();
        self.inner.send_many_locked(&mut core, datagrams)
    }

    /// Receives one datagram into `buf`, blocking until one arrives. Returns its length (a
    /// datagram longer than `buf` is truncated, as with UDP), or `Ok(0)` at end of stream: the
    /// connection was closed by either side with `close_notify`. A fatal alert, timeout or error
    /// ends it with that error instead.
    #[doc(alias = "SSL_read")]
    pub fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        self.recv_until(buf, None).map(|n| n.unwrap_or(0))
    }

    /// As [`recv`](Self::recv), but gives up after `timeout`: `Ok(None)` if nothing arrived.
    pub fn recv_timeout(&self, buf: &mut [u8], timeout: Duration) -> Result<Option<usize>> {
        self.recv_until(buf, Some(Instant::now() + timeout))
    }

    fn recv_until(&self, buf: &mut [u8], deadline: Option<Instant>) -> Result<Option<usize>> {
        let inner = &*self.inner;
        let core = inner.shared.lock();
        let (_core, outcome) = blocking::wait_until(
            &inner.shared,
            core,
            &inner.signal,
            Rank::Connection,
            Some((inner.peer, inner.id)),
            deadline,
            |core| {
                let got = inner.recv_locked(core, buf);
                if let Some(Ok(Some(_))) = got {
                    // Backpressure: the driver thread does not read ahead of this reader
                    // (`driver::blocking::BACKPRESSURE`).
                    core.rtc.note_read(inner.peer, inner.id);
                }
                got
            },
        );
        outcome.unwrap_or(Ok(None))
    }

    /// Sends one SRTP or SRTCP packet (RFC 7983: first byte 128–191) to the peer as it is, from
    /// the connection's socket: the media of DTLS-SRTP shares the DTLS connection's 5-tuple.
    /// See [`Endpoint::send_non_dtls`](crate::Endpoint::send_non_dtls) for the checks.
    pub fn send_non_dtls(&self, datagram: &[u8]) -> Result<()> {
        let mut core = self.inner.shared.lock();
        self.inner.send_non_dtls_locked(&mut core, datagram)
    }

    /// Waits up to `timeout` for the next RTP/RTCP datagram (RFC 7983: first byte 128–191)
    /// from this connection's peer, which the endpoint keeps aside when
    /// [`EndpointConfig::demux_rtp`](crate::EndpointConfig::demux_rtp) is on: `Ok(Some(n))`
    /// with its length in `buf` (truncated to `buf`), `Ok(None)` if none came, or the error
    /// that ended the connection. SRTP itself (decryption, replay protection) is the
    /// application's, with the keys of [`srtp_keying_material`](Self::srtp_keying_material).
    pub fn recv_non_dtls_timeout(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<Option<usize>> {
        let inner = &*self.inner;
        let deadline = Some(Instant::now() + timeout);
        let core = inner.shared.lock();
        let (_core, outcome) = blocking::wait_until(
            &inner.shared,
            core,
            &inner.signal,
            Rank::Connection,
            None,
            deadline,
            |core| inner.recv_non_dtls_locked(core, buf),
        );
        outcome.transpose()
    }

    /// Closes the connection: sends `close_notify` (`SSL_shutdown`). The peer's `recv` then
    /// reads end of stream; ours does too once queued data is read.
    #[doc(alias = "SSL_shutdown")]
    pub fn close(&self) {
        self.inner.close();
    }

    connection_accessors!();
}
