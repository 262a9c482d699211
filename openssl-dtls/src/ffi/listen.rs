//! The `DTLSv1_listen` edge: an owned `BIO_ADDR` ([`BioAddr`]) and the call itself
//! ([`dtls_listen`]), with OpenSSL's thread error queue left empty on both sides of it.

use std::os::raw::c_int;

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ssl::SslRef;
use openssl_dtls_sys as dffi;

/// An owned `BIO_ADDR` for `DTLSv1_listen` to fill
/// ([`BIO_ADDR_new`](https://www.openssl.org/docs/man3.0/man3/BIO_ADDR_new.html); freed exactly
/// once, on drop, by `BIO_ADDR_free`).
#[doc(alias = "BIO_ADDR")]
pub(crate) struct BioAddr(*mut dffi::BIO_ADDR);

// SAFETY: the BIO_ADDR is a plain heap block owned by this value alone (no OpenSSL object keeps a
// pointer to it between calls), so moving it to another thread moves the only access path.
unsafe impl Send for BioAddr {}

impl BioAddr {
    /// A zeroed address (`BIO_ADDR_new`).
    #[doc(alias = "BIO_ADDR_new")]
    pub(crate) fn new() -> Result<BioAddr, ErrorStack> {
        // SAFETY: BIO_ADDR_new allocates a zeroed address or returns null; it takes no input.
        let p = unsafe { dffi::BIO_ADDR_new() };
        if p.is_null() {
            return Err(ErrorStack::get());
        }
        Ok(BioAddr(p))
    }
}

impl Drop for BioAddr {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from BIO_ADDR_new (never null: `new` checked) and is freed exactly
        // once, here; no copy of the pointer outlives `self`.
        unsafe { dffi::BIO_ADDR_free(self.0) }
    }
}

impl std::fmt::Debug for BioAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BioAddr(..)")
    }
}

/// Runs
/// [`DTLSv1_listen`](https://www.openssl.org/docs/man3.0/man3/DTLSv1_listen.html) once on the
/// datagram waiting in `ssl`'s read BIO: 1 when a ClientHello carried a valid cookie (the peer's
/// address goes into `addr`), 0 when none did (a HelloVerifyRequest may be waiting in the write
/// BIO), negative on a fatal error. OpenSSL's error queue is cleared before and after: the
/// listener's failures are counted, not reported.
///
/// `ssl` must be a server `SSL` in accept state; the context's cookie callbacks and `ssl`'s BIO
/// callbacks run inside the call, so no reference into the BIO's state may be held across it
/// (the `&mut` borrow of `ssl` is how callers show that).
#[doc(alias = "DTLSv1_listen")]
pub(crate) fn dtls_listen(ssl: &mut SslRef, addr: &mut BioAddr) -> c_int {
    // SAFETY: `ssl` is a valid SSL and `addr.0` a valid BIO_ADDR, both borrowed mutably for the
    // call (DTLSv1_listen writes to both). ERR_clear_error only empties this thread's queue.
    unsafe {
        openssl_sys::ERR_clear_error();
        let r = dffi::DTLSv1_listen(ssl.as_ptr(), addr.0);
        openssl_sys::ERR_clear_error();
        r
    }
}
