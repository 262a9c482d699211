//! The `SSL` calls a session makes that rust-openssl does not wrap, each a safe function with
//! the return code as OpenSSL gives it (the session classifies it with [`get_error`]).

use std::mem::MaybeUninit;
use std::os::raw::c_int;

use openssl_dtls_sys as dffi;

use std::time::Duration;

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;
use openssl_sys as ffi;

/// `SSL_set_options`: sets option bits (never clears any).
#[doc(alias = "SSL_set_options")]
pub(crate) fn set_options(ssl: &SslRef, bits: u64) {
    // SAFETY: `ssl` is a valid SSL; SSL_set_options only ORs bits into its options.
    unsafe {
        dffi::SSL_set_options(ssl.as_ptr(), bits as _);
    }
}

/// `DTLS_set_link_mtu`: whether OpenSSL accepted `mtu` (it refuses values below its minimum).
#[doc(alias = "DTLS_set_link_mtu")]
pub(crate) fn set_link_mtu(ssl: &SslRef, mtu: usize) -> bool {
    // SAFETY: `ssl` is a valid SSL; the call only stores the value.
    unsafe { dffi::DTLS_set_link_mtu(ssl.as_ptr(), mtu as _) == 1 }
}

/// `SSL_set_max_send_fragment`: the largest plaintext OpenSSL puts in one record it writes.
#[doc(alias = "SSL_set_max_send_fragment")]
pub(crate) fn set_max_send_fragment(ssl: &SslRef, fragment: usize) {
    // SAFETY: `ssl` is a valid SSL; the macro only stores the value before any buffer exists.
    unsafe {
        dffi::SSL_set_max_send_fragment(ssl.as_ptr(), fragment as _);
    }
}

/// `SSL_get_state`: OpenSSL's handshake state machine position (`TLS_ST_*`).
#[doc(alias = "SSL_get_state")]
pub(crate) fn state(ssl: &SslRef) -> c_int {
    // SAFETY: `ssl` is a valid SSL; SSL_get_state only reads the state machine.
    unsafe { dffi::SSL_get_state(ssl.as_ptr()) }
}

/// Empties this thread's OpenSSL error queue (`ERR_clear_error`): before every `SSL_*` call,
/// so what follows it is that call's, and after it, so noise does not linger.
#[doc(alias = "ERR_clear_error")]
pub(crate) fn clear_errors() {
    // An empty queue (the usual case) is only looked at: `ERR_clear_error` resets all 16
    // entries every time, which showed in the record path's profile (1.7 % of a blocking echo).
    // SAFETY: both read or reset this thread's error queue only; no arguments.
    unsafe {
        if ffi::ERR_peek_last_error() != 0 {
            ffi::ERR_clear_error();
        }
    }
}

/// `SSL_do_handshake` on a cleared error queue; the return code as OpenSSL gives it.
#[doc(alias = "SSL_do_handshake")]
pub(crate) fn do_handshake(ssl: &SslRef) -> c_int {
    clear_errors();
    // SAFETY: `ssl` is a valid SSL with our BIO attached; the call reads and writes only
    // through that BIO and its own state.
    unsafe { ffi::SSL_do_handshake(ssl.as_ptr()) }
}

/// `SSL_read_ex` into `buf` on a cleared error queue: the return code and the bytes read, the
/// start of `buf` that OpenSSL wrote. `buf` need not be initialized (no 16 KB memset per call).
#[doc(alias = "SSL_read_ex")]
pub(crate) fn read<'b>(ssl: &SslRef, buf: &'b mut [MaybeUninit<u8>]) -> (c_int, &'b [u8]) {
    clear_errors();
    let mut n = 0usize;
    // SAFETY: `ssl` is valid; `buf` is writable for its length (OpenSSL only writes to it);
    // `n` is a valid out-pointer.
    let r = unsafe { ffi::SSL_read_ex(ssl.as_ptr(), buf.as_mut_ptr().cast(), buf.len(), &mut n) };
    let n = if r == 1 { n.min(buf.len()) } else { 0 };
    // SAFETY: on success SSL_read_ex wrote `n` bytes (at most the buffer's length) at the start
    // of `buf`; those are initialized `u8`s.
    let read = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
    (r, read)
}

/// `SSL_write_ex` of `data` on a cleared error queue: (return code, bytes written).
#[doc(alias = "SSL_write_ex")]
pub(crate) fn write(ssl: &SslRef, data: &[u8]) -> (c_int, usize) {
    clear_errors();
    let mut n = 0usize;
    // SAFETY: `ssl` is valid; `data` is readable for its length; `n` is a valid out-pointer.
    let r = unsafe { ffi::SSL_write_ex(ssl.as_ptr(), data.as_ptr().cast(), data.len(), &mut n) };
    (r, n)
}

/// `SSL_shutdown`: writes our `close_notify` to the BIO. The error queue is cleared before and
/// after (a failure here has nothing to report: the connection is ending).
#[doc(alias = "SSL_shutdown")]
pub(crate) fn shutdown(ssl: &SslRef) {
    clear_errors();
    // SAFETY: `ssl` is valid; SSL_shutdown writes close_notify through our BIO.
    unsafe {
        ffi::SSL_shutdown(ssl.as_ptr());
    }
    clear_errors();
}

/// `SSL_get_error` for the return code `r` of the last call on `ssl`.
#[doc(alias = "SSL_get_error")]
pub(crate) fn get_error(ssl: &SslRef, r: c_int) -> c_int {
    // SAFETY: `ssl` is valid; SSL_get_error reads the return code and the error queue.
    unsafe { ffi::SSL_get_error(ssl.as_ptr(), r) }
}

/// `DTLSv1_get_timeout`: how long until the retransmission timer fires, if it runs.
#[doc(alias = "DTLSv1_get_timeout")]
pub(crate) fn timeout(ssl: &SslRef) -> Option<Duration> {
    let mut tv = dffi::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: `ssl` is valid; `tv` is a writable timeval.
    let running = unsafe { dffi::DTLSv1_get_timeout(ssl.as_ptr(), &mut tv) } == 1;
    running.then(|| {
        Duration::from_secs(tv.tv_sec.max(0) as u64)
            + Duration::from_micros(tv.tv_usec.max(0) as u64)
    })
}

/// `DTLSv1_handle_timeout` on a cleared error queue: retransmits the last flight. Negative when
/// OpenSSL gives up.
#[doc(alias = "DTLSv1_handle_timeout")]
pub(crate) fn handle_timeout(ssl: &SslRef) -> std::os::raw::c_long {
    clear_errors();
    // SAFETY: `ssl` is valid with our BIO attached; the call writes through that BIO.
    unsafe { dffi::DTLSv1_handle_timeout(ssl.as_ptr()) }
}

/// `DTLS_get_data_mtu`: the largest application payload of one record at this MTU and cipher.
#[doc(alias = "DTLS_get_data_mtu")]
pub(crate) fn data_mtu(ssl: &SslRef) -> usize {
    // SAFETY: `ssl` is valid; the call only reads the MTU and the negotiated cipher.
    unsafe { dffi::DTLS_get_data_mtu(ssl.as_ptr()) }
}

/// Marks our `close_notify` as sent (`SSL_set_shutdown(SSL_SENT_SHUTDOWN)`), so that freeing the
/// `SSL` keeps its session resumable, as after a clean shutdown.
#[doc(alias = "SSL_set_shutdown")]
pub(crate) fn mark_shutdown_sent(ssl: &SslRef) {
    // SAFETY: `ssl` is valid; SSL_set_shutdown only sets the flag.
    unsafe { ffi::SSL_set_shutdown(ssl.as_ptr(), ffi::SSL_SENT_SHUTDOWN) }
}

/// `SSL_get_pending_cipher`: the OpenSSL name of the suite being negotiated, once chosen (a
/// server after the ClientHello, a client after the ServerHello's suite), e.g. in an extension
/// callback.
#[doc(alias = "SSL_get_pending_cipher")]
pub(crate) fn pending_cipher_name(ssl: &SslRef) -> Option<&'static str> {
    // SAFETY: `ssl` is valid; the call returns a pointer to one of OpenSSL's static cipher
    // tables (or NULL), which outlive every SSL.
    let cipher = unsafe { dffi::SSL_get_pending_cipher(ssl.as_ptr()) };
    if cipher.is_null() {
        return None;
    }
    // SAFETY: non-null, and a static SSL_CIPHER (see above): valid for 'static.
    let cipher = unsafe { openssl::ssl::SslCipherRef::from_ptr(cipher as *mut ffi::SSL_CIPHER) };
    Some(cipher.name())
}
