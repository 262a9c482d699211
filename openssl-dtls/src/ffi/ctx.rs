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

/// Declarations of the `SSL_CTX` calls for session resumption that neither `openssl-sys` nor
/// `openssl-dtls-sys` has (OpenSSL 3.0+, `<openssl/ssl.h>`).
mod resumption_sys {
    use std::os::raw::{c_int, c_long, c_uchar};

    use openssl_sys::{EVP_CIPHER_CTX, EVP_MAC_CTX, SSL, SSL_CTX};

    /// `SSL_CTX_set_tlsext_ticket_key_evp_cb`'s callback type.
    pub(super) type TicketKeyEvpCb = unsafe extern "C" fn(
        s: *mut SSL,
        key_name: *mut c_uchar,
        iv: *mut c_uchar,
        cctx: *mut EVP_CIPHER_CTX,
        hctx: *mut EVP_MAC_CTX,
        enc: c_int,
    ) -> c_int;

    extern "C" {
        pub(super) fn SSL_CTX_set_tlsext_ticket_key_evp_cb(
            ctx: *mut SSL_CTX,
            fp: Option<TicketKeyEvpCb>,
        ) -> c_int;
        pub(super) fn SSL_CTX_set_timeout(ctx: *mut SSL_CTX, t: c_long) -> c_long;
    }
}

/// The length of a session ticket's key name (`TLSEXT_KEYNAME_LENGTH`).
pub(crate) const TICKET_KEY_NAME_LEN: usize = 16;

/// The IV length of the ticket cipher, AES-256-CBC (OpenSSL's own ticket format).
const TICKET_IV_LEN: usize = 16;

/// One session-ticket key: its public name, the AES-256-CBC key that encrypts the ticket and the
/// HMAC-SHA256 key that authenticates it. Wiped on drop.
#[derive(Clone)]
pub(crate) struct TicketKey {
    pub(crate) name: [u8; TICKET_KEY_NAME_LEN],
    pub(crate) aes: [u8; 32],
    pub(crate) mac: [u8; 32],
}

impl Drop for TicketKey {
    fn drop(&mut self) {
        crate::ffi::evp::cleanse(&mut self.aes);
        crate::ffi::evp::cleanse(&mut self.mac);
    }
}

/// What the ticket-key callback asks: `None` for the key to encrypt a new ticket with; the key
/// name of a received ticket for the key to decrypt it with. The answer is the key and whether
/// the ticket should be renewed (it was made with a key that no longer encrypts).
pub(crate) type TicketKeyLookup = Box<
    dyn Fn(&SslRef, Option<&[u8; TICKET_KEY_NAME_LEN]>) -> Option<(TicketKey, bool)> + Send + Sync,
>;

fn ticket_lookup_index() -> Option<Index<openssl::ssl::SslContext, TicketKeyLookup>> {
    static INDEX: std::sync::OnceLock<Option<Index<openssl::ssl::SslContext, TicketKeyLookup>>> =
        std::sync::OnceLock::new();
    *INDEX.get_or_init(|| openssl::ssl::SslContext::new_ex_index().ok())
}

/// Encrypts and decrypts this context's session tickets with the keys `lookup` gives
/// ([`SSL_CTX_set_tlsext_ticket_key_evp_cb`](https://www.openssl.org/docs/man3.0/man3/SSL_CTX_set_tlsext_ticket_key_evp_cb.html)):
/// AES-256-CBC and HMAC-SHA256, a fresh random IV per ticket. A ticket whose key name `lookup`
/// does not know gets a full handshake; one it marks for renewal is accepted and replaced by a
/// ticket under the current key. A panic in `lookup` counts as an error (full handshake when
/// decrypting, no ticket when encrypting).
#[doc(alias = "SSL_CTX_set_tlsext_ticket_key_evp_cb")]
pub(crate) fn set_ticket_key_callback(
    b: &mut SslContextBuilder,
    lookup: TicketKeyLookup,
) -> Result<(), ErrorStack> {
    let index = ticket_lookup_index().ok_or_else(ErrorStack::get)?;
    b.set_ex_data(index, lookup);
    // SAFETY: `b` owns a valid SSL_CTX, borrowed mutably for the call; the callback is a plain
    // function that finds its state in the context's ex-data, set just above, which lives as
    // long as the context.
    let ok = unsafe {
        resumption_sys::SSL_CTX_set_tlsext_ticket_key_evp_cb(b.as_ptr(), Some(ticket_key_cb))
    };
    if ok == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// Points the cipher and MAC contexts of a ticket at `key`, with `iv`.
///
/// # Safety
/// `cctx` and `hctx` must be the live contexts OpenSSL passed to the ticket-key callback.
unsafe fn init_ticket_crypto(
    key: &TicketKey,
    iv: &[u8; TICKET_IV_LEN],
    cctx: *mut openssl_sys::EVP_CIPHER_CTX,
    hctx: *mut openssl_sys::EVP_MAC_CTX,
    encrypt: bool,
) -> bool {
    // SAFETY: the caller passes OpenSSL's live contexts. EVP_*Init_ex copies the 32-byte key and
    // the 16-byte IV (AES-256-CBC's sizes, and the sizes of the arrays); EVP_MAC_CTX_set_params
    // copies the MAC key and reads the NUL-terminated parameter names and digest name, which
    // are static; the parameter array ends with OSSL_PARAM_construct_end.
    unsafe {
        let cipher = openssl_sys::EVP_aes_256_cbc();
        let ok = if encrypt {
            openssl_sys::EVP_EncryptInit_ex(
                cctx,
                cipher,
                std::ptr::null_mut(),
                key.aes.as_ptr(),
                iv.as_ptr(),
            )
        } else {
            openssl_sys::EVP_DecryptInit_ex(
                cctx,
                cipher,
                std::ptr::null_mut(),
                key.aes.as_ptr(),
                iv.as_ptr(),
            )
        };
        if ok != 1 {
            return false;
        }
        let params = [
            openssl_sys::OSSL_PARAM_construct_octet_string(
                c"key".as_ptr(),
                key.mac.as_ptr() as *mut std::ffi::c_void,
                key.mac.len(),
            ),
            openssl_dtls_sys::OSSL_PARAM_construct_utf8_string(
                c"digest".as_ptr(),
                c"SHA256".as_ptr() as *mut std::os::raw::c_char,
                0,
            ),
            openssl_sys::OSSL_PARAM_construct_end(),
        ];
        openssl_sys::EVP_MAC_CTX_set_params(hctx, params.as_ptr()) == 1
    }
}

/// The ticket-key callback: 1 = key set, 2 = key set and renew the ticket (decrypting), 0 = no
/// such key (full handshake) or no ticket (encrypting), -1 = error.
unsafe extern "C" fn ticket_key_cb(
    ssl: *mut openssl_sys::SSL,
    key_name: *mut std::os::raw::c_uchar,
    iv: *mut std::os::raw::c_uchar,
    cctx: *mut openssl_sys::EVP_CIPHER_CTX,
    hctx: *mut openssl_sys::EVP_MAC_CTX,
    enc: c_int,
) -> c_int {
    guard("session ticket key", -1, || {
        // SAFETY: OpenSSL passes the live SSL whose handshake is running, for this call only.
        let ssl = unsafe { SslRef::from_ptr(ssl) };
        let Some(lookup) = ticket_lookup_index().and_then(|i| ssl.ssl_context().ex_data(i)) else {
            return -1;
        };
        // SAFETY: OpenSSL passes a TLSEXT_KEYNAME_LENGTH (16) byte key-name buffer and an
        // EVP_MAX_IV_LENGTH (16) byte IV buffer, both valid for this call and not aliased by
        // anything we hold.
        let (name, iv) = unsafe {
            (
                &mut *key_name.cast::<[u8; TICKET_KEY_NAME_LEN]>(),
                &mut *iv.cast::<[u8; TICKET_IV_LEN]>(),
            )
        };
        if enc == 1 {
            let Some((key, _)) = lookup(ssl, None) else {
                return 0;
            };
            if openssl::rand::rand_bytes(iv).is_err() {
                return -1;
            }
            name.copy_from_slice(&key.name);
            // SAFETY: the contexts are the ones OpenSSL passed to this callback.
            if unsafe { init_ticket_crypto(&key, iv, cctx, hctx, true) } {
                1
            } else {
                -1
            }
        } else {
            let Some((key, renew)) = lookup(ssl, Some(name)) else {
                return 0;
            };
            // SAFETY: the contexts are the ones OpenSSL passed to this callback.
            if !unsafe { init_ticket_crypto(&key, iv, cctx, hctx, false) } {
                return -1;
            }
            if renew {
                2
            } else {
                1
            }
        }
    })
}

/// Sets how long sessions made by this context may be resumed, in seconds, rounded up to at least
/// 1 ([`SSL_CTX_set_timeout`](https://www.openssl.org/docs/man3.0/man3/SSL_CTX_set_timeout.html));
/// it is also the lifetime hint of its tickets.
#[doc(alias = "SSL_CTX_set_timeout")]
pub(crate) fn set_session_timeout(b: &mut SslContextBuilder, lifetime: std::time::Duration) {
    let secs = c_long::try_from(lifetime.as_secs().max(1)).unwrap_or(c_long::MAX);
    // SAFETY: `b` owns a valid SSL_CTX, borrowed mutably for the call; the call only stores the
    // value in it.
    unsafe {
        resumption_sys::SSL_CTX_set_timeout(b.as_ptr(), secs);
    }
}

/// Offers `session` for resumption in `ssl`'s next ClientHello
/// ([`SSL_set_session`](https://www.openssl.org/docs/man3.0/man3/SSL_set_session.html)).
///
/// `session` must come from a handshake on an `SSL` of the same `SSL_CTX` as `ssl`: callers
/// take it from that context's own session store.
#[doc(alias = "SSL_set_session")]
pub(crate) fn offer_session(
    ssl: &mut SslRef,
    session: &openssl::ssl::SslSessionRef,
) -> Result<(), ErrorStack> {
    // SAFETY: rust-openssl's requirement for `set_session` is that the session belong to the
    // same SSL_CTX; the client context's session store holds only sessions its own new-session
    // callback received, from SSLs made with that context (see the caller).
    unsafe { ssl.set_session(session) }
}
