//! Declarations from `<openssl/ssl.h>` that `openssl-sys` lacks: the DTLS listener, timers, MTU,
//! PSK identity hint, info callback and alert strings.

use core::ptr;

use libc::{c_char, c_int, c_long, c_uint, c_void, size_t};
use openssl_sys::{SSL, SSL_CTX};

use crate::bio::BIO_ADDR;
use crate::timeval;

/// `DTLS_CTRL_GET_TIMEOUT`.
pub const DTLS_CTRL_GET_TIMEOUT: c_int = 73;
/// `DTLS_CTRL_HANDLE_TIMEOUT`.
pub const DTLS_CTRL_HANDLE_TIMEOUT: c_int = 74;
/// `DTLS_CTRL_SET_LINK_MTU`.
pub const DTLS_CTRL_SET_LINK_MTU: c_int = 120;
/// `DTLS_CTRL_GET_LINK_MIN_MTU`.
pub const DTLS_CTRL_GET_LINK_MIN_MTU: c_int = 121;
/// `SSL_CTRL_SET_MAX_CERT_LIST`.
pub const SSL_CTRL_SET_MAX_CERT_LIST: c_int = 51;
/// `SSL_CTRL_SET_MAX_SEND_FRAGMENT`.
pub const SSL_CTRL_SET_MAX_SEND_FRAGMENT: c_int = 52;

/// `SSL_CB_LOOP`.
pub const SSL_CB_LOOP: c_int = 0x01;
/// `SSL_CB_EXIT`.
pub const SSL_CB_EXIT: c_int = 0x02;
/// `SSL_CB_READ`.
pub const SSL_CB_READ: c_int = 0x04;
/// `SSL_CB_WRITE`.
pub const SSL_CB_WRITE: c_int = 0x08;
/// `SSL_CB_ALERT`.
pub const SSL_CB_ALERT: c_int = 0x4000;
/// `SSL_CB_READ_ALERT`: an alert was received; `val` is `(level << 8) | description`.
pub const SSL_CB_READ_ALERT: c_int = SSL_CB_ALERT | SSL_CB_READ;
/// `SSL_CB_WRITE_ALERT`: an alert was sent; `val` is `(level << 8) | description`.
pub const SSL_CB_WRITE_ALERT: c_int = SSL_CB_ALERT | SSL_CB_WRITE;
/// `SSL_CB_HANDSHAKE_START`.
pub const SSL_CB_HANDSHAKE_START: c_int = 0x10;
/// `SSL_CB_HANDSHAKE_DONE`.
pub const SSL_CB_HANDSHAKE_DONE: c_int = 0x20;

// `OSSL_HANDSHAKE_STATE` values. OpenSSL 3.2 inserted the certificate-compression states
// (`TLS_ST_CR_COMP_CERT`, `TLS_ST_CW_COMP_CERT`, `TLS_ST_SW_COMP_CERT`, `TLS_ST_SR_COMP_CERT`),
// shifting the values after them.

/// `DTLS_ST_CR_HELLO_VERIFY_REQUEST`: the client has read a HelloVerifyRequest.
pub const DTLS_ST_CR_HELLO_VERIFY_REQUEST: c_int = 2;
/// `TLS_ST_CW_CLNT_HELLO`: the client has written a ClientHello (and, until the server's
/// answer arrives, waits for a ServerHello or a HelloVerifyRequest).
#[cfg(not(ossl320))]
pub const TLS_ST_CW_CLNT_HELLO: c_int = 12;
/// `TLS_ST_CW_CLNT_HELLO`: the client has written a ClientHello (and, until the server's
/// answer arrives, waits for a ServerHello or a HelloVerifyRequest).
#[cfg(ossl320)]
pub const TLS_ST_CW_CLNT_HELLO: c_int = 13;
/// `TLS_ST_CR_CHANGE`: the client has read the server's ChangeCipherSpec.
#[cfg(not(ossl320))]
pub const TLS_ST_CR_CHANGE: c_int = 10;
/// `TLS_ST_CR_CHANGE`: the client has read the server's ChangeCipherSpec.
#[cfg(ossl320)]
pub const TLS_ST_CR_CHANGE: c_int = 11;
/// `TLS_ST_SR_CHANGE`: the server has read the client's ChangeCipherSpec.
#[cfg(not(ossl320))]
pub const TLS_ST_SR_CHANGE: c_int = 31;
/// `TLS_ST_SR_CHANGE`: the server has read the client's ChangeCipherSpec.
#[cfg(ossl320)]
pub const TLS_ST_SR_CHANGE: c_int = 35;
/// `TLS_ST_SR_FINISHED`: the server has read the client's Finished.
#[cfg(not(ossl320))]
pub const TLS_ST_SR_FINISHED: c_int = 32;
/// `TLS_ST_SR_FINISHED`: the server has read the client's Finished.
#[cfg(ossl320)]
pub const TLS_ST_SR_FINISHED: c_int = 36;

/// `DTLS_timer_cb`: returns the next retransmission timeout in microseconds given the current one
/// (0 on the first call of a flight).
pub type DTLS_timer_cb = Option<unsafe extern "C" fn(s: *mut SSL, timer_us: c_uint) -> c_uint>;

/// The info callback type of `SSL_set_info_callback` / `SSL_CTX_set_info_callback`.
pub type SSL_info_callback =
    Option<unsafe extern "C" fn(ssl: *const SSL, type_: c_int, val: c_int)>;

extern "C" {
    /// [`DTLSv1_listen`](https://www.openssl.org/docs/man3.0/man3/DTLSv1_listen.html): answer
    /// ClientHellos without a valid cookie with a HelloVerifyRequest; returns 1 when one arrives
    /// with a valid cookie, 0 when there is nothing (more) to read, negative on error.
    pub fn DTLSv1_listen(s: *mut SSL, client: *mut BIO_ADDR) -> c_int;
    /// [`DTLS_set_timer_cb`](https://www.openssl.org/docs/man3.0/man3/DTLS_set_timer_cb.html).
    pub fn DTLS_set_timer_cb(s: *mut SSL, cb: DTLS_timer_cb);
    /// [`DTLS_get_data_mtu`](https://www.openssl.org/docs/man3.0/man3/DTLS_get_data_mtu.html):
    /// application bytes that fit one record within the MTU for the current cipher (0 before it).
    pub fn DTLS_get_data_mtu(s: *const SSL) -> size_t;
    /// [`SSL_CTX_use_psk_identity_hint`](https://www.openssl.org/docs/man3.0/man3/SSL_CTX_use_psk_identity_hint.html).
    pub fn SSL_CTX_use_psk_identity_hint(ctx: *mut SSL_CTX, identity_hint: *const c_char) -> c_int;
    /// `SSL_use_psk_identity_hint`.
    pub fn SSL_use_psk_identity_hint(s: *mut SSL, identity_hint: *const c_char) -> c_int;
    /// [`SSL_CTX_set_info_callback`](https://www.openssl.org/docs/man3.0/man3/SSL_CTX_set_info_callback.html).
    pub fn SSL_CTX_set_info_callback(ctx: *mut SSL_CTX, cb: SSL_info_callback);
    /// `SSL_set_info_callback`.
    pub fn SSL_set_info_callback(ssl: *mut SSL, cb: SSL_info_callback);
    /// [`SSL_alert_type_string_long`](https://www.openssl.org/docs/man3.0/man3/SSL_alert_type_string_long.html).
    pub fn SSL_alert_type_string_long(value: c_int) -> *const c_char;
    /// [`SSL_get_state`](https://www.openssl.org/docs/man3.0/man3/SSL_get_state.html): the
    /// handshake state machine's current state (`OSSL_HANDSHAKE_STATE`).
    pub fn SSL_get_state(ssl: *const SSL) -> c_int;
    /// [`SSL_get_pending_cipher`](https://www.openssl.org/docs/man3.0/man3/SSL_get_pending_cipher.html):
    /// the cipher suite being negotiated, once chosen (the server after reading the
    /// ClientHello, the client after reading the ServerHello), before it is in use.
    pub fn SSL_get_pending_cipher(ssl: *const SSL) -> *const openssl_sys::SSL_CIPHER;
    /// [`SSL_get1_supported_ciphers`](https://www.openssl.org/docs/man3.0/man3/SSL_get1_supported_ciphers.html):
    /// the ciphers this `SSL` would really offer (version, security level and credentials
    /// applied); a new stack owned by the caller, or null when none is enabled.
    pub fn SSL_get1_supported_ciphers(s: *mut SSL) -> *mut openssl_sys::stack_st_SSL_CIPHER;
    /// `SSL_in_init`: 1 while a handshake is in progress.
    pub fn SSL_in_init(s: *const SSL) -> c_int;
    /// [`SSL_set_options`](https://www.openssl.org/docs/man3.0/man3/SSL_set_options.html)
    /// (a function since OpenSSL 3.0; a macro before).
    pub fn SSL_set_options(s: *mut SSL, op: u64) -> u64;
    /// `SSL_get_options`.
    pub fn SSL_get_options(s: *const SSL) -> u64;
    /// [`SSL_renegotiate`](https://www.openssl.org/docs/man3.0/man3/SSL_renegotiate.html):
    /// schedules a renegotiation (a client's ClientHello, a server's HelloRequest) for the next
    /// `SSL_do_handshake`. Tests use it to play a peer that renegotiates.
    pub fn SSL_renegotiate(s: *mut SSL) -> c_int;
    /// `SSL_clear_options`.
    pub fn SSL_clear_options(s: *mut SSL, op: u64) -> u64;
}

// `SSL_alert_desc_string_long` is in openssl-sys already; re-export so users find both here.
pub use openssl_sys::SSL_alert_desc_string_long;

/// `DTLSv1_get_timeout(ssl, tv)`: 1 and the time left in `tv` if a retransmission timer runs.
///
/// # Safety
/// `s` must be a valid DTLS `SSL`, `tv` a valid `timeval` to write.
pub unsafe fn DTLSv1_get_timeout(s: *mut SSL, tv: *mut timeval) -> c_long {
    // SAFETY: forwarded caller contract; this is the macro's expansion.
    unsafe { openssl_sys::SSL_ctrl(s, DTLS_CTRL_GET_TIMEOUT, 0, tv as *mut c_void) }
}

/// `DTLSv1_handle_timeout(ssl)`: retransmit if the timer expired (1), nothing to do (0), or fatal
/// (negative: too many retransmissions).
///
/// # Safety
/// `s` must be a valid DTLS `SSL`.
pub unsafe fn DTLSv1_handle_timeout(s: *mut SSL) -> c_long {
    // SAFETY: forwarded caller contract; this is the macro's expansion.
    unsafe { openssl_sys::SSL_ctrl(s, DTLS_CTRL_HANDLE_TIMEOUT, 0, ptr::null_mut()) }
}

/// `DTLS_set_link_mtu(ssl, mtu)`: 1 on success, 0 if `mtu` is below the minimum.
///
/// # Safety
/// `s` must be a valid DTLS `SSL`.
pub unsafe fn DTLS_set_link_mtu(s: *mut SSL, mtu: c_long) -> c_long {
    // SAFETY: forwarded caller contract; this is the macro's expansion.
    unsafe { openssl_sys::SSL_ctrl(s, DTLS_CTRL_SET_LINK_MTU, mtu, ptr::null_mut()) }
}

/// `DTLS_get_link_min_mtu(ssl)`: the smallest link MTU OpenSSL accepts.
///
/// # Safety
/// `s` must be a valid DTLS `SSL`.
pub unsafe fn DTLS_get_link_min_mtu(s: *mut SSL) -> c_long {
    // SAFETY: forwarded caller contract; this is the macro's expansion.
    unsafe { openssl_sys::SSL_ctrl(s, DTLS_CTRL_GET_LINK_MIN_MTU, 0, ptr::null_mut()) }
}

/// `SSL_set_max_send_fragment(ssl, m)`.
///
/// # Safety
/// `s` must be a valid `SSL`.
pub unsafe fn SSL_set_max_send_fragment(s: *mut SSL, m: c_long) -> c_long {
    // SAFETY: forwarded caller contract; this is the macro's expansion.
    unsafe { openssl_sys::SSL_ctrl(s, SSL_CTRL_SET_MAX_SEND_FRAGMENT, m, ptr::null_mut()) }
}

/// `SSL_CTX_set_max_send_fragment(ctx, m)`.
///
/// # Safety
/// `ctx` must be a valid `SSL_CTX`.
pub unsafe fn SSL_CTX_set_max_send_fragment(ctx: *mut SSL_CTX, m: c_long) -> c_long {
    // SAFETY: forwarded caller contract; this is the macro's expansion.
    unsafe { openssl_sys::SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MAX_SEND_FRAGMENT, m, ptr::null_mut()) }
}

/// `SSL_CTX_set_max_cert_list(ctx, m)`: the largest certificate chain (and, in DTLS, handshake
/// message) a peer may send; returns the previous value.
///
/// # Safety
/// `ctx` must be a valid `SSL_CTX`.
pub unsafe fn SSL_CTX_set_max_cert_list(ctx: *mut SSL_CTX, m: c_long) -> c_long {
    // SAFETY: forwarded caller contract; this is the macro's expansion.
    unsafe { openssl_sys::SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MAX_CERT_LIST, m, ptr::null_mut()) }
}

/// `SSL_CTRL_GET_MAX_CERT_LIST` (`ssl.h`).
pub const SSL_CTRL_GET_MAX_CERT_LIST: c_int = 50;

/// `SSL_CTX_get_max_cert_list(ctx)`: the largest certificate chain (and, in DTLS, handshake
/// message beyond ≈ 18 KB) a peer may send.
///
/// # Safety
/// `ctx` must be a valid `SSL_CTX`.
pub unsafe fn SSL_CTX_get_max_cert_list(ctx: *mut SSL_CTX) -> c_long {
    // SAFETY: forwarded caller contract; this is the macro's expansion.
    unsafe { openssl_sys::SSL_CTX_ctrl(ctx, SSL_CTRL_GET_MAX_CERT_LIST, 0, ptr::null_mut()) }
}
