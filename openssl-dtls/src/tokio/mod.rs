//! The async drivers on tokio (feature `tokio`): [`DtlsServer`](crate::tokio::DtlsServer),
//! [`DtlsClient`](crate::tokio::DtlsClient) and [`DtlsConnection`](crate::tokio::DtlsConnection)
//! with the names and semantics of the blocking ones, over the same sans-IO
//! [`Endpoint`](crate::endpoint::Endpoint). (Links here spell out `crate::tokio::`: with the
//! outer doc on `mod tokio` in `lib.rs`, rustdoc resolves this page's links at the crate root,
//! where the blocking types of the same names are.)
//!
//! | module | owns |
//! |---|---|
//! | `server` | [`DtlsServer`](crate::tokio::DtlsServer), [`Incoming`](crate::tokio::Incoming) |
//! | `client` | [`DtlsClient`](crate::tokio::DtlsClient) |
//! | `connection` | [`DtlsConnection`](crate::tokio::DtlsConnection), [`Datagrams`](crate::tokio::Datagrams) |
//! | `driver` | the driver task, the send backlog, waiting on a `Notify` |
//!
//! The slot table, event dispatch, the driver turn and the connection handle's state are the
//! blocking driver's too (the crate's driver core); what is here is the tokio I/O model.
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
//! [`recv`](crate::tokio::DtlsConnection::recv) or [`accept`](crate::tokio::DtlsServer::accept)
//! loses nothing, and dropping a pending [`connect`](crate::tokio::DtlsClient::connect)
//! releases its handshake. Dropping the last clone of a
//! [`DtlsConnection`](crate::tokio::DtlsConnection) closes the connection (`close_notify`).
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

mod client;
mod connection;
mod driver;
mod server;

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

pub use self::client::DtlsClient;
pub use self::connection::{Datagrams, DtlsConnection};
pub use self::server::{DtlsServer, Incoming};

/// The boxed future a stream ([`Incoming`], [`Datagrams`]) keeps between polls.
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Polls the future a stream keeps between polls, made by `make` when there is none; drops it
/// once it completes, so the next poll starts the next one.
fn poll_kept<T>(
    kept: &mut Option<BoxFuture<T>>,
    cx: &mut Context<'_>,
    make: impl FnOnce() -> BoxFuture<T>,
) -> Poll<T> {
    let future = kept.get_or_insert_with(make);
    let output = ready!(future.as_mut().poll(cx));
    *kept = None;
    Poll::Ready(output)
}
