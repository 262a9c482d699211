//! The `SSL_CTX` edge: the context settings rust-openssl does not wrap, each a safe function
//! over one OpenSSL call (named in its docs), and [`guard`], which every callback a context
//! installs runs inside so that no panic unwinds into OpenSSL.

use std::panic::{self, AssertUnwindSafe};

/// Runs a user callback for OpenSSL, turning a panic into `on_panic` (and an error log) so that no
/// panic unwinds into C.
pub(crate) fn guard<T>(what: &str, on_panic: T, f: impl FnOnce() -> T) -> T {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        log::error!("the {what} callback panicked: failing this handshake");
        on_panic
    })
}
