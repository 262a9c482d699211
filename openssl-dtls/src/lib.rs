// The crate's front page on docs.rs and crates.io: its README, whose code blocks run as doctests.
#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod alert;
mod bio;
pub mod cid;
mod client;
pub(crate) mod config;
mod connection;
pub mod context;
pub(crate) mod cookie;
mod driver;
pub mod endpoint;
pub mod error;
mod ffi;
mod listener;
mod plaintext;
mod record;
mod server;
pub mod session;
/// The same server, client and connection on tokio (feature `tokio`).
#[cfg(feature = "tokio")]
pub mod tokio;
mod verify;
pub(crate) mod wire;

pub use crate::client::DtlsClient;
pub use crate::connection::DtlsConnection;
pub use crate::context::{
    CipherPreset, ClientAuth, DtlsClientContext, DtlsClientContextBuilder, DtlsServerContext,
    DtlsServerContextBuilder, PskCredentials,
};
pub use crate::driver::moves::AddressChange;
pub use crate::driver::SocketOptions;
pub use crate::endpoint::{
    ConnectionId, ConnectionStats, Endpoint, EndpointConfig, EndpointStats, Event,
    HandshakeFailure, PeerIdentity,
};
pub use crate::error::{
    Alert, ConfigError, Error, Result, TimeoutPhase, VerifyFailure, VerifyReason,
};
pub use crate::server::{DtlsServer, Incoming};
pub use crate::session::{
    HandshakeFacts, Role, Session, SessionConfig, SessionState, SessionStats,
};
pub use crate::wire::DropReason;

/// The README's examples, compiled as doctests so they stay true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Crate internals for the cargo-fuzz targets in `fuzz/` (run by `scripts/fuzz.sh`): the record
/// pre-parser and the cookie keys, with the invariants the targets check. Not a stable API:
/// hidden from the documentation and outside semver, and compiled only under `--cfg fuzzing`
/// (which cargo-fuzz passes, and `fuzz/.cargo/config.toml` sets for the seed generator), so
/// ordinary builds carry no fuzzing oracles.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod __fuzz {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use crate::wire::{self, Datagram, DropReason};

    /// Length of a cookie.
    pub const COOKIE_LEN: usize = crate::cookie::COOKIE_LEN;

    /// Runs the pre-parser (`wire::classify`) on `datagram` and panics if its answers disagree
    /// with each other or with the bytes.
    pub fn classify(datagram: &[u8]) {
        let records: Vec<_> = wire::records(datagram).collect();
        let all_ok = records.iter().all(Result::is_ok);
        let total: usize = records.iter().flatten().map(|r| r.total_len()).sum();
        match wire::classify(datagram) {
            Ok(Datagram::ClientHello(info)) => {
                assert!(all_ok && records.len() == 1 && total == datagram.len());
                assert!(wire::is_client_hello(datagram));
                assert_eq!(wire::classify_unknown_peer(datagram), Ok(info));
                if !info.fragmented {
                    // header, handshake header, version, random, two length bytes, the cookie
                    assert!(datagram.len() >= 13 + 12 + 2 + 32 + 2 + info.cookie_len);
                }
            }
            Ok(Datagram::Records {
                first_epoch,
                records: n,
            }) => {
                assert!(all_ok && n == records.len() && n >= 1 && total == datagram.len());
                assert_eq!(records[0].as_ref().map(|r| r.epoch()), Ok(first_epoch));
                assert!(wire::classify_unknown_peer(datagram).is_err());
            }
            Err(DropReason::TooManyRecords) => {
                // Well-formed so far, but more records than a datagram may carry.
                assert!(records
                    .iter()
                    .take(wire::parsed::MAX_RECORDS + 1)
                    .all(Result::is_ok));
                assert!(records.len() > wire::parsed::MAX_RECORDS);
                assert_eq!(
                    wire::classify_unknown_peer(datagram),
                    Err(DropReason::TooManyRecords)
                );
            }
            Err(reason) => {
                // Malformed records, or a lone ClientHello whose handshake header or body failed.
                let hello = records.len() == 1 && wire::is_client_hello(datagram);
                assert!(!all_ok || records.is_empty() || hello, "{reason}");
                assert_eq!(wire::classify_unknown_peer(datagram), Err(reason));
            }
        }
    }

    /// A server's cookie keys (`cookie::CookieSecrets`).
    #[derive(Debug)]
    pub struct Cookies(crate::cookie::CookieSecrets);

    impl Cookies {
        /// Random keys rotated every `interval` from `now`.
        pub fn random(interval: Duration, now: Instant) -> Cookies {
            Cookies(crate::cookie::CookieSecrets::random_from(interval, now).expect("random keys"))
        }

        /// Keys derived from a shared secret; `None` if it is too short.
        pub fn shared(secret: &[u8], interval: Duration) -> Option<Cookies> {
            crate::cookie::CookieSecrets::with_secret(secret, interval)
                .ok()
                .map(Cookies)
        }

        /// The cookie for `peer` into `out`; its length, or 0.
        pub fn generate(&self, now: Instant, peer: SocketAddr, out: &mut [u8]) -> usize {
            self.0.generate(now, peer, out)
        }

        /// Whether `cookie` verifies for `peer`.
        pub fn verify(&self, now: Instant, peer: SocketAddr, cookie: &[u8]) -> bool {
            self.0.verify(now, peer, cookie)
        }
    }
}
