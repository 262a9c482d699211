//! The `SSL_CTX` edge: the context settings and callbacks rust-openssl does not wrap, each a safe
//! function over one OpenSSL call named in its docs, with the `// SAFETY:` argument next to the
//! call; and [`guard`], which every callback a context installs runs inside so that no panic
//! unwinds into OpenSSL.
//!
//! Also here, for want of a better home at the edge: the two lookups the context code makes on a
//! probe `SSL` or on no object at all (the ciphers a probe would offer, an alert's name), and the
//! one `SSL` ex-data write of the verification callback.

use std::ffi::CStr;
use std::os::raw::{c_int, c_long};
use std::panic::{self, AssertUnwindSafe};

use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslCipher, SslContextBuilder, SslContextRef, SslRef};
use openssl::stack::Stack;
use openssl::x509::{X509StoreContext, X509StoreContextRef};

/// Runs a user callback for OpenSSL, turning a panic into `on_panic` (and an error log) so that no
/// panic unwinds into C.
pub(crate) fn guard<T>(what: &str, on_panic: T, f: impl FnOnce() -> T) -> T {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        log::error!(
            "the {what} callback panicked: treated as its failure (this handshake or datagram)"
        );
        on_panic
    })
}

/// Sets the largest certificate list (and, in DTLS, handshake message) a peer may send, in bytes
/// ([`SSL_CTX_set_max_cert_list`](https://www.openssl.org/docs/man3.0/man3/SSL_CTX_set_max_cert_list.html)).
#[doc(alias = "SSL_CTX_set_max_cert_list")]
pub(crate) fn set_max_cert_list(b: &mut SslContextBuilder, max: usize) {
    let max = c_long::try_from(max).unwrap_or(c_long::MAX);
    // SAFETY: `b` owns a valid SSL_CTX, borrowed mutably for the call; the macro only stores the
    // value in it.
    unsafe {
        openssl_dtls_sys::SSL_CTX_set_max_cert_list(b.as_ptr(), max);
    }
}

/// The largest certificate list a peer may send, in bytes
/// ([`SSL_CTX_get_max_cert_list`](https://www.openssl.org/docs/man3.0/man3/SSL_CTX_get_max_cert_list.html)).
#[doc(alias = "SSL_CTX_get_max_cert_list")]
pub(crate) fn max_cert_list(ctx: &SslContextRef) -> usize {
    // SAFETY: `ctx` is a valid SSL_CTX for the borrow; the macro only reads a field (through
    // `SSL_CTX_ctrl`, which takes a mutable pointer but does not write for this command).
    let n = unsafe { openssl_dtls_sys::SSL_CTX_get_max_cert_list(ctx.as_ptr()) };
    usize::try_from(n).unwrap_or(0)
}

/// Sets the PSK identity hint a server sends
/// ([`SSL_CTX_use_psk_identity_hint`](https://www.openssl.org/docs/man3.0/man3/SSL_CTX_use_psk_identity_hint.html)).
/// OpenSSL copies `hint`; it fails for hints longer than `PSK_MAX_IDENTITY_LEN` (128 bytes).
#[doc(alias = "SSL_CTX_use_psk_identity_hint")]
pub(crate) fn use_psk_identity_hint(
    b: &mut SslContextBuilder,
    hint: &CStr,
) -> Result<(), ErrorStack> {
    // SAFETY: `b` owns a valid SSL_CTX, borrowed mutably for the call; `hint` is a NUL-terminated
    // string that outlives the call, and OpenSSL copies it.
    let ok = unsafe { openssl_dtls_sys::SSL_CTX_use_psk_identity_hint(b.as_ptr(), hint.as_ptr()) };
    if ok == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// The ciphers `ssl` would offer or accept: its context's list filtered by the version range and
/// security level
/// ([`SSL_get1_supported_ciphers`](https://www.openssl.org/docs/man3.0/man3/SSL_get1_supported_ciphers.html));
/// empty if OpenSSL returns none.
#[doc(alias = "SSL_get1_supported_ciphers")]
pub(crate) fn supported_ciphers(ssl: &mut SslRef) -> Option<Stack<SslCipher>> {
    // SAFETY: `ssl` is a live SSL, borrowed mutably for the call. The returned stack is ours (or
    // NULL); its elements are static SSL_CIPHERs and `SslCipher` has no destructor, so dropping
    // the `Stack` frees only the stack itself.
    unsafe {
        let p = openssl_dtls_sys::SSL_get1_supported_ciphers(ssl.as_ptr());
        (!p.is_null()).then(|| Stack::<SslCipher>::from_ptr(p))
    }
}

/// Stores `make(store)` in ex-data slot `index` of the `SSL` whose certificate chain `store` is
/// verifying, unless the slot is taken (then `make` is not called)
/// ([`SSL_set_ex_data`](https://www.openssl.org/docs/man3.0/man3/SSL_set_ex_data.html)). The
/// `SSL` owns the value from then on (it drops it when freed). Returns whether it was stored;
/// `false` also when `store` belongs to no `SSL` (`SSL_get_ex_data_X509_STORE_CTX_idx`).
///
/// For the verification callback, which reaches the `SSL` only through `store`, as a shared
/// reference: OpenSSL calls that callback from inside the handshake that holds the `SSL`, on this
/// thread, so nothing else touches its ex-data meanwhile.
#[doc(alias = "SSL_set_ex_data")]
pub(crate) fn set_verifying_ssl_ex_data<T>(
    store: &mut X509StoreContextRef,
    index: Index<Ssl, T>,
    make: impl FnOnce(&X509StoreContextRef) -> T,
) -> bool {
    let Ok(ssl_index) = X509StoreContext::ssl_idx() else {
        return false;
    };
    let Some(ssl) = store.ex_data(ssl_index) else {
        return false;
    };
    if ssl.ex_data(index).is_some() {
        return false;
    }
    let data = Box::into_raw(Box::new(make(store)));
    // SAFETY: `ssl` is the live `SSL` whose handshake is verifying (OpenSSL stores it in the
    // store context for exactly this callback, and the `&mut` store proves we are inside it), so
    // no other thread uses it and no reference into the slot exists: it is empty (checked
    // above), so nothing is overwritten or leaked. The index was made by
    // `Ssl::new_ex_index::<T>`, whose free callback drops a `Box<T>` when the `SSL` is freed:
    // ownership of `data` passes to the `SSL` on success; on failure it is taken back and
    // dropped here.
    unsafe {
        if openssl_sys::SSL_set_ex_data(ssl.as_ptr(), index.as_raw(), data.cast()) != 1 {
            drop(Box::from_raw(data));
            return false;
        }
    }
    true
}

/// OpenSSL's long name of an alert description, e.g. `"handshake failure"` for 40, `"unknown"`
/// for codes it does not know
/// ([`SSL_alert_desc_string_long`](https://www.openssl.org/docs/man3.0/man3/SSL_alert_desc_string_long.html)).
#[doc(alias = "SSL_alert_desc_string_long")]
pub(crate) fn alert_desc_string_long(description: u8) -> &'static str {
    // SAFETY: SSL_alert_desc_string_long returns a pointer to a static NUL-terminated string for
    // any input ("unknown" for codes it does not know).
    let s = unsafe {
        CStr::from_ptr(openssl_dtls_sys::SSL_alert_desc_string_long(c_int::from(
            description,
        )))
    };
    s.to_str().unwrap_or("unknown")
}
