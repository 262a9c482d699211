//! Contexts: validated, frozen, shareable DTLS configuration for clients
//! ([`DtlsClientContext`]) and servers ([`DtlsServerContext`]), built by builders whose names
//! follow Dart's `dtls2` so code ports line by line.
//!
//! This module owns everything that goes into the OpenSSL `SSL_CTX` — protocol floor, options,
//! ciphers, security level, groups, signature algorithms, ALPN, PSK and certificate credentials,
//! verification, key log and (server) cookie callbacks — plus the per-session limits and timers
//! (a [`SessionConfig`](crate::SessionConfig)) that sessions made from the context run with. A
//! context is built once, checked at `build()` (every misconfiguration is an
//! [`Error::Config`](crate::Error::Config) naming its cause), and then shared cheaply: it is
//! `Clone + Send + Sync` (an `SSL_CTX` reference and an `Arc`).
//!
//! ```
//! use openssl_dtls::{DtlsClientContext, DtlsServerContext, PskCredentials};
//!
//! let server = DtlsServerContext::builder()
//!     .psk_key_store(|identity| (identity == b"device-1").then(|| b"secret".to_vec()))
//!     .build()?;
//! let client = DtlsClientContext::builder()
//!     .psk_credentials(PskCredentials::new(&b"device-1"[..], &b"secret"[..]))
//!     .build()?;
//! let now = std::time::Instant::now();
//! let (mut c, mut s) = (client.new_session(None, now)?, server.new_session(now)?);
//! # let mut buf = [0u8; 1500];
//! # for _ in 0..10 {
//! #     while let Some(n) = c.poll_transmit(&mut buf) { s.handle_datagram(now, &buf[..n]); }
//! #     while let Some(n) = s.poll_transmit(&mut buf) { c.handle_datagram(now, &buf[..n]); }
//! # }
//! # assert!(c.is_established() && s.is_established());
//! # Ok::<(), openssl_dtls::Error>(())
//! ```
//!
//! # Defaults, and why
//!
//! - **DTLS 1.2 minimum** (`SSL_CTX_set_min_proto_version`), set explicitly and set again after
//!   any security-level change: DTLS 1.0 is TLS 1.1-era cryptography and is refused.
//! - **No renegotiation, no compression** (`SSL_OP_NO_RENEGOTIATION`, `SSL_OP_NO_COMPRESSION`):
//!   renegotiation is an attack surface with no use here; compression leaks plaintext (CRIME).
//! - **Explicit MTU**, 1200 bytes, with `SSL_OP_NO_QUERY_MTU`: with a memory BIO OpenSSL would
//!   otherwise guess; 1200 fits the IPv6 minimum MTU with room for a tunnel. With the default
//!   ciphers and groups the ClientHello fits one such datagram (`DTLSv1_listen` drops
//!   fragmented ClientHellos).
//! - **AEAD-only ciphers**: [`CipherPreset::Auto`] picks [`PSK_CIPHERS`] and/or
//!   [`CERTIFICATE_CIPHERS`] from the credentials. A cipher string that selects nothing usable
//!   fails at `build()`, naming the string.
//! - **Security level**: OpenSSL's build default (1 upstream, 2 in Debian 12's build),
//!   except that the CCM8 suites need level 0 on OpenSSL 3.1+ (which rates their 64-bit tag as 64
//!   bits of security): when the ciphers include CCM8, OpenSSL is 3.1 or newer and no level was
//!   set, the context uses level 0 and logs it at `info`. OpenSSL 3.0 needs no change.
//! - **Groups** [`DEFAULT_GROUPS`] (`X25519:P-256:P-384`): `X25519` alone breaks ECDHE-ECDSA on
//!   OpenSSL 3.0 ("no shared cipher"), and P-384 is there for peers that insist on it.
//! - **Signature algorithms**: OpenSSL's defaults (settable).
//! - **Server certificates**: ECDSA (P-256, P-384) and RSA (2048 bits and up at the default
//!   security level). Ed25519 and Ed448 are refused at `build()`: OpenSSL (3.0) enables EdDSA
//!   certificates for the ECDHE-ECDSA suites only when the version is TLS 1.2
//!   (`ssl_set_masks`: `TLS1_get_version(s) == TLS1_2_VERSION`, never true for DTLS), so every
//!   DTLS handshake would fail with "no shared cipher".
//! - **Verification on** for clients, with no trust roots until some are added: a client trusts
//!   nothing by accident. Turning it off is `danger_disable_verification`.
//! - **Whose certificate** is checked too: the server name given, or else the peer's IP address
//!   (an IP subject alternative name). A session with neither fails rather than skip the check
//!   ([`DtlsClientContext::new_session`]); the opt-out is
//!   [`danger_skip_server_name_check`](DtlsClientContextBuilder::danger_skip_server_name_check).
//! - **Cookies** (servers): a random secret rotated every 60 s, the previous one still accepted.
//! - **Key log off**: it is a debugging aid that lets anyone with the file decrypt the traffic.
//!
//! Every callback the user supplies (PSK, verification, admission, key log, and the cookie and
//! ALPN callbacks installed here) runs inside `catch_unwind`: a panic fails that one handshake,
//! is logged, and leaves the process and every other connection untouched (rust-openssl's
//! trampolines do not catch panics, and unwinding into C aborts). With `panic = "abort"` a
//! panic still aborts.

// The files of this module, one concern each:
//
// | file | owns |
// |---|---|
// | `mod.rs` | this overview, the limits and defaults below, the OpenSSL advisory check, `guard` (from `ffi::ctx`) |
// | `common.rs` | the settings both sides share (`Common`), their builder methods, the key log |
// | `certificate.rs` | where certificates and keys come from, loading them, installing them |
// | `trust.rs` | trust roots and the verification callback |
// | `ciphers.rs` | cipher presets and the check that a cipher string is usable |
// | `psk.rs` | PSK credentials, key stores and their callbacks |
// | `resumption.rs` | server session cache and tickets (`TicketKeys`), the client's session store |
// | `client.rs`, `server.rs` | the two contexts and their builders |
//
// The cookie callbacks a server context installs live with the cookies, in `crate::cookie`.

mod certificate;
mod ciphers;
mod client;
mod common;
mod psk;
mod resumption;
mod server;
mod trust;

pub use self::ciphers::{CipherPreset, CERTIFICATE_CIPHERS, PSK_CIPHERS};
pub use self::client::{DtlsClientContext, DtlsClientContextBuilder};
pub use self::psk::{PskCredentials, MAX_IDENTITY_LEN, MAX_KEY_LEN};
pub use self::resumption::{
    TicketKeys, DEFAULT_CLIENT_SESSIONS, DEFAULT_TICKET_ROTATION, MAX_CLIENT_SESSIONS,
    MAX_SESSION_CACHE_SIZE, MAX_SESSION_LIFETIME,
};
pub use self::server::{ClientAuth, DtlsServerContext, DtlsServerContextBuilder};
/// Runs a user callback without letting a panic unwind (kept here for the endpoint's hooks).
pub(crate) use crate::ffi::ctx::guard;

/// The largest certificate chain a peer may send, and so the largest handshake message OpenSSL
/// reassembles for it (`SSL_CTX_set_max_cert_list`): 32 KiB, eight times a typical public-PKI
/// chain, instead of OpenSSL's 100 KB, to bound what a hostile peer past the cookie can make a
/// handshake hold.
pub const MAX_CERT_LIST: usize = 32 * 1024;

/// `SSL_CTX_set_max_cert_list` of a context that uses PSK only and so never receives a
/// certificate: 4 KiB. OpenSSL's DTLS reassembly then bounds any handshake message by a record's
/// worth (`dtls1_max_handshake_message_len`, ≈ 18 KB) instead of [`MAX_CERT_LIST`].
pub const PSK_MAX_CERT_LIST: usize = 4 * 1024;

/// Whether OpenSSL version `v` (`OPENSSL_VERSION_NUMBER` layout) carries the DTLS fixes of the
/// 29 September 2026 advisory (CVE-2026-84782, CVE-2026-75806): 3.0.23, 3.4.8, 3.5.9, 3.6.5,
/// 4.0.3 and later releases of those branches, or any later minor version.
pub(crate) fn openssl_has_dtls_fixes(v: u64) -> bool {
    let (major, minor, patch) = ((v >> 28) & 0xf, (v >> 20) & 0xff, (v >> 4) & 0xff);
    let fixed_patch = match (major, minor) {
        (3, 0) => 23,
        (3, 1..=3) => return false, // out of support: no fix published
        (3, 4) => 8,
        (3, 5) => 9,
        (3, 6) => 5,
        (4, 0) => 3,
        (m, _) if m < 3 => return false,
        _ => 0,
    };
    patch >= fixed_patch
}

/// Logs a warning, once per process, if the OpenSSL in use lacks the DTLS fixes above. The
/// library works around what it can (see SECURITY-CONSIDERATIONS.md §3.7); update OpenSSL anyway.
pub(crate) fn warn_if_openssl_lacks_dtls_fixes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let v = openssl::version::number() as u64;
        if !openssl_has_dtls_fixes(v) {
            log::warn!(
                "{} lacks the DTLS fixes for CVE-2026-84782 and CVE-2026-75806 \
                 (3.0.23 / 3.4.8 / 3.5.9 / 3.6.5 / 4.0.3); openssl-dtls avoids both triggers, \
                 but update OpenSSL when you can",
                openssl::version::version()
            );
        }
    });
}

/// The default key-exchange groups (`SSL_CTX_set1_groups_list`): X25519, then P-256 and P-384.
/// Not X25519 alone: that breaks ECDHE-ECDSA on OpenSSL 3.0.
#[doc(alias = "SSL_CTX_set1_groups_list")]
pub const DEFAULT_GROUPS: &str = "X25519:P-256:P-384";

#[cfg(test)]
mod version_tests {
    use super::openssl_has_dtls_fixes;

    #[test]
    fn dtls_fix_versions_per_branch() {
        assert!(!openssl_has_dtls_fixes(0x3000_0130)); // 3.0.19
        assert!(openssl_has_dtls_fixes(0x3000_0170)); // 3.0.23
        assert!(!openssl_has_dtls_fixes(0x3020_0040)); // 3.2.4
        assert!(!openssl_has_dtls_fixes(0x3060_0030)); // 3.6.3
        assert!(openssl_has_dtls_fixes(0x3060_0050)); // 3.6.5
        assert!(openssl_has_dtls_fixes(0x4000_0030)); // 4.0.3
        assert!(openssl_has_dtls_fixes(0x4010_0000)); // 4.1.0
    }
}
