//! # openssl-dtls
//!
//! DTLS 1.2 for Rust over the OpenSSL you already trust: one UDP socket serving many peers, a
//! stateless `DTLSv1_listen` cookie exchange before any per-peer state, PSK (RFC 7925's
//! `PSK-AES128-CCM8` among them) and X.509 certificates, and a sans-IO core.
//!
//! The layers, bottom up:
//! - [`Session`]: one peer's DTLS state around one OpenSSL `SSL`, sans-IO: datagrams in,
//!   datagrams, application data and timer deadlines out.
//! - Contexts (`DtlsClientContext`, `DtlsServerContext`): validated, shareable configuration.
//! - The endpoint and drivers: one socket, demultiplexing by peer address.
//!
//! Design rationale and the security choices are in `SECURITY-CONSIDERATIONS.md` at the
//! repository root.
#![warn(missing_docs)]

mod bio;
mod client;
mod connection;
pub mod context;
pub(crate) mod cookie;
mod driver;
pub mod endpoint;
pub mod error;
mod listener;
mod server;
pub mod session;
/// The same server, client and connection on tokio (feature `tokio`).
#[cfg(feature = "tokio")]
pub mod tokio;
pub(crate) mod wire;

pub use crate::client::DtlsClient;
pub use crate::connection::DtlsConnection;
pub use crate::context::{
    CipherPreset, ClientAuth, DtlsClientContext, DtlsClientContextBuilder, DtlsServerContext,
    DtlsServerContextBuilder, PskCredentials,
};
pub use crate::driver::SocketOptions;
pub use crate::endpoint::{ConnectionId, Endpoint, EndpointConfig, EndpointStats, Event};
pub use crate::error::{Alert, ConfigError, Error, Result};
pub use crate::server::{DtlsServer, Incoming};
pub use crate::session::{Role, Session, SessionConfig, SessionState, SessionStats};
pub use crate::wire::DropReason;

/// The README's examples, compiled as doctests so they stay true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
