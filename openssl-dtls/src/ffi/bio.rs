//! Our datagram `BIO_METHOD` (OpenSSL 3.0 has no `BIO_s_dgram_mem`): its callbacks, the `SSL`
//! timer and info callbacks that record into the [`BioState`], and [`BioHandle`], the safe handle
//! through which a session or the listener reaches that state.

use std::net::{IpAddr, SocketAddr};
use std::os::raw::{c_char, c_int, c_long, c_uint, c_void};

use std::ptr;
use std::sync::OnceLock;
use std::time::Instant;

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;
use openssl_dtls_sys as dffi;
use openssl_sys as ffi;

use crate::alert::Alert;
use crate::bio::{BioState, TimerSettings};
use crate::ffi::ctx::guard;

/// The [`BioState`] of the datagram BIO attached to one `SSL` (see [`attach`]).
///
/// The state is a heap block owned by the BIO, which the `SSL` owns: it lives exactly as long as
/// the `SSL`. The handle is only kept next to its `SSL` (a session or the listener holds both and
/// drops the handle with the `SSL`), and OpenSSL's callbacks touch the state only inside calls on
/// that `SSL`, during which no reference from [`get`](Self::get)/[`get_mut`](Self::get_mut) is
/// alive: every use is a short statement between OpenSSL calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BioHandle(*mut BioState);

// SAFETY: the state is only reached through the handle by whoever owns the `SSL` (which is `Send`)
// and moves with it.
unsafe impl Send for BioHandle {}

/// Runs `f` with `datagram` as OpenSSL's next read on the BIO of `bio`, lent in place instead
/// of copied (the established path's input goes from the caller's buffer straight into
/// OpenSSL's).
///
/// `f` may free the `SSL` (a compact hand-off), and with it the state: so the loan is not
/// withdrawn here. The caller withdraws it after `f` with `BioState::clear_inbound` if the `SSL`
/// still exists; every `set_inbound*` and `clear_inbound` also drops any loan. The lent pointer
/// is read only by our read callback, inside an OpenSSL call that `f` makes, while `datagram`
/// is borrowed by this function.
pub(crate) fn with_lent_inbound<R>(
    mut bio: BioHandle,
    datagram: &[u8],
    f: impl FnOnce() -> R,
) -> R {
    let st = bio.get_mut();
    st.inbound.clear();
    st.lent = Some((datagram.as_ptr(), datagram.len()));
    st.inbound_ready = true;
    f()
}

impl BioHandle {
    /// Shared access to the state. Never keep the reference across a call into OpenSSL on the
    /// same `SSL`.
    pub(crate) fn get(&self) -> &BioState {
        // SAFETY: see the type's invariant: the block is alive while the SSL is, and no `&mut`
        // to it exists while this shared reference is used.
        unsafe { &*self.0 }
    }

    /// Exclusive access to the state, under the same rule as [`get`](Self::get).
    pub(crate) fn get_mut(&mut self) -> &mut BioState {
        // SAFETY: see the type's invariant; `&mut self` makes this the only reference from this
        // side, and OpenSSL's callbacks do not run while it is used.
        unsafe { &mut *self.0 }
    }
}

/// The process-wide `BIO_METHOD`, created once.
struct Method {
    ptr: *mut ffi::BIO_METHOD,
    type_: c_int,
}

// SAFETY: the BIO_METHOD is fully initialised before it is published through the OnceLock and
// never modified afterwards; OpenSSL only reads it.
unsafe impl Send for Method {}
// SAFETY: as above: immutable after initialisation.
unsafe impl Sync for Method {}

fn method() -> Result<&'static Method, openssl::error::ErrorStack> {
    static METHOD: OnceLock<Option<Method>> = OnceLock::new();
    let m = METHOD.get_or_init(|| {
        // SAFETY: plain OpenSSL constructor calls with valid arguments; the callbacks match the
        // signatures BIO_meth_set_* expect. On any failure the half-built method is freed.
        unsafe {
            let index = dffi::BIO_get_new_index();
            if index <= 0 {
                return None;
            }
            let type_ = index | dffi::BIO_TYPE_SOURCE_SINK;
            let m = ffi::BIO_meth_new(type_, c"openssl-dtls datagram".as_ptr());
            if m.is_null() {
                return None;
            }
            let ok = ffi::BIO_meth_set_write__fixed_rust(m, Some(bio_write)) > 0
                && ffi::BIO_meth_set_read__fixed_rust(m, Some(bio_read)) > 0
                && ffi::BIO_meth_set_puts__fixed_rust(m, Some(bio_puts)) > 0
                && ffi::BIO_meth_set_ctrl__fixed_rust(m, Some(bio_ctrl)) > 0
                && ffi::BIO_meth_set_create__fixed_rust(m, Some(bio_create)) > 0
                && ffi::BIO_meth_set_destroy__fixed_rust(m, Some(bio_destroy)) > 0;
            if !ok {
                ffi::BIO_meth_free(m);
                return None;
            }
            Some(Method { ptr: m, type_ })
        }
    });
    match m {
        Some(m) => Ok(m),
        None => Err(openssl::error::ErrorStack::get()),
    }
}

/// Creates a datagram BIO, attaches it to `ssl` as both read and write BIO, installs the timer
/// and info callbacks, and returns a pointer to its state.
///
/// The state lives as long as `ssl` does (`SSL_free` frees the BIO, whose destroy callback frees
/// the state). References made from the pointer must not outlive a single call and must not be
/// held across a call into OpenSSL on the same `SSL`.
pub(crate) fn attach(
    ssl: &mut SslRef,
    mtu: usize,
    max_outbound: usize,
    timer: TimerSettings,
) -> Result<BioHandle, openssl::error::ErrorStack> {
    let method = method()?;
    let state = Box::into_raw(Box::new(BioState::new(mtu, max_outbound, timer)));
    // SAFETY: `method` is a valid BIO_METHOD. BIO_new calls our create callback, which only sets
    // init. On success we hand the boxed state to the BIO (freed by bio_destroy) and the BIO to
    // the SSL: SSL_set_bio with rbio == wbio takes ownership of the single reference. On failure
    // the box is reclaimed here so nothing leaks or is freed twice.
    unsafe {
        let bio = ffi::BIO_new(method.ptr);
        if bio.is_null() {
            drop(Box::from_raw(state));
            return Err(openssl::error::ErrorStack::get());
        }
        ffi::BIO_set_data(bio, state.cast());
        ffi::SSL_set_bio(ssl.as_ptr(), bio, bio);
        dffi::DTLS_set_timer_cb(ssl.as_ptr(), Some(timer_cb));
        dffi::SSL_set_info_callback(ssl.as_ptr(), Some(info_cb));
    }
    Ok(BioHandle(state))
}

/// The state of the datagram BIO attached to `ssl`, if it has one of ours.
///
/// # Safety
/// `ssl` must be valid; the returned pointer is valid until the `SSL` is freed or its BIO
/// replaced. The caller must not create overlapping `&mut` references from it.
unsafe fn state_of(ssl: *const ffi::SSL) -> Option<*mut BioState> {
    // SAFETY: caller guarantees `ssl` is valid; SSL_get_rbio returns the BIO or null.
    let bio = unsafe { ffi::SSL_get_rbio(ssl) };
    if bio.is_null() {
        return None;
    }
    let method = method().ok()?;
    // SAFETY: `bio` is a valid BIO; BIO_method_type reads its method. Only BIOs of our method
    // carry a BioState in their data pointer.
    unsafe {
        if dffi::BIO_method_type(bio) != method.type_ {
            return None;
        }
        let data = ffi::BIO_get_data(bio) as *mut BioState;
        (!data.is_null()).then_some(data)
    }
}

/// The peer address and clock recorded on `ssl`'s datagram BIO, for the cookie callbacks.
pub(crate) fn peer_and_now(ssl: &SslRef) -> Option<(SocketAddr, Option<Instant>)> {
    // SAFETY: `ssl` is a live SslRef; we only copy two Copy fields out of the state and keep no
    // reference. Cookie callbacks run inside an SSL call on this same thread, while the session
    // holds no reference into the state.
    unsafe {
        let state = state_of(ssl.as_ptr())?;
        let peer = (*state).peer?;
        Some((peer, (*state).now))
    }
}

unsafe extern "C" fn bio_create(bio: *mut ffi::BIO) -> c_int {
    // SAFETY: OpenSSL passes the BIO being created.
    unsafe {
        ffi::BIO_set_init(bio, 1);
        ffi::BIO_set_data(bio, ptr::null_mut());
    }
    1
}

unsafe extern "C" fn bio_destroy(bio: *mut ffi::BIO) -> c_int {
    if bio.is_null() {
        return 0;
    }
    // SAFETY: the data pointer is null or the Box we leaked in `attach`; it is reclaimed exactly
    // once here and the pointer is cleared so a second destroy cannot free it again.
    unsafe {
        let data = ffi::BIO_get_data(bio) as *mut BioState;
        if !data.is_null() {
            ffi::BIO_set_data(bio, ptr::null_mut());
            drop(Box::from_raw(data));
        }
    }
    1
}

unsafe extern "C" fn bio_write(bio: *mut ffi::BIO, buf: *const c_char, len: c_int) -> c_int {
    guard("BIO", -1, || {
        // SAFETY: OpenSSL passes our BIO and a readable buffer of `len` bytes; no other reference
        // to the state is live during this OpenSSL call.
        unsafe {
            ffi::BIO_clear_retry_flags(bio);
            let state = ffi::BIO_get_data(bio) as *mut BioState;
            if state.is_null() || len < 0 || (buf.is_null() && len > 0) {
                return -1;
            }
            let data = if len == 0 {
                &[][..]
            } else {
                std::slice::from_raw_parts(buf.cast::<u8>(), len as usize)
            };
            (*state).write(data);
            len
        }
    })
}

unsafe extern "C" fn bio_read(bio: *mut ffi::BIO, buf: *mut c_char, len: c_int) -> c_int {
    guard("BIO", -1, || {
        // SAFETY: OpenSSL passes our BIO and a writable buffer of `len` bytes; no other reference
        // to the state is live during this OpenSSL call.
        unsafe {
            ffi::BIO_clear_retry_flags(bio);
            let state = ffi::BIO_get_data(bio) as *mut BioState;
            if state.is_null() || len < 0 || (buf.is_null() && len > 0) {
                return -1;
            }
            let out = if len == 0 {
                &mut [][..]
            } else {
                std::slice::from_raw_parts_mut(buf.cast::<u8>(), len as usize)
            };
            let read = match (*state).lent {
                // SAFETY: a lent datagram is alive for the whole `with_lent_inbound` call, and
                // OpenSSL reads only inside it (the loan is withdrawn before it returns).
                Some((ptr, n)) if (*state).inbound_ready => {
                    let n = n.min(out.len());
                    out[..n].copy_from_slice(std::slice::from_raw_parts(ptr, n));
                    if !(*state).peek {
                        (*state).inbound_ready = false;
                    }
                    Some(n)
                }
                Some(_) => None,
                None => (*state).read(out),
            };
            match read {
                Some(n) => n as c_int,
                None => {
                    ffi::BIO_set_retry_read(bio);
                    -1
                }
            }
        }
    })
}

unsafe extern "C" fn bio_puts(_bio: *mut ffi::BIO, _s: *const c_char) -> c_int {
    -2 // not supported, as for other datagram BIOs
}

unsafe extern "C" fn bio_ctrl(
    bio: *mut ffi::BIO,
    cmd: c_int,
    num: c_long,
    ptr: *mut c_void,
) -> c_long {
    guard("BIO", 0, || {
        // SAFETY: OpenSSL passes our BIO; `ptr` is interpreted only for the commands whose
        // documented argument is a BIO_ADDR. No other reference to the state is live.
        unsafe {
            let state = ffi::BIO_get_data(bio) as *mut BioState;
            if state.is_null() {
                return 0;
            }
            let state = &mut *state;
            match cmd {
                dffi::BIO_CTRL_DGRAM_QUERY_MTU
                | dffi::BIO_CTRL_DGRAM_GET_MTU
                | dffi::BIO_CTRL_DGRAM_GET_FALLBACK_MTU => state.mtu as c_long,
                dffi::BIO_CTRL_DGRAM_SET_MTU => {
                    if num > 0 {
                        state.mtu = num as usize;
                    }
                    state.mtu as c_long
                }
                dffi::BIO_CTRL_DGRAM_GET_MTU_OVERHEAD => 0,
                dffi::BIO_CTRL_DGRAM_MTU_EXCEEDED => 0,
                dffi::BIO_CTRL_DGRAM_GET_PEER => match state.peer {
                    Some(peer) if !ptr.is_null() => write_bio_addr(ptr.cast(), peer),
                    _ => 0,
                },
                dffi::BIO_CTRL_DGRAM_SET_PEER
                | dffi::BIO_CTRL_DGRAM_CONNECT
                | dffi::BIO_CTRL_DGRAM_SET_CONNECTED
                | dffi::BIO_CTRL_DGRAM_SET_NEXT_TIMEOUT
                | dffi::BIO_CTRL_DGRAM_SET_DONT_FRAG
                | dffi::BIO_CTRL_DGRAM_MTU_DISCOVER => 1,
                dffi::BIO_CTRL_DGRAM_SET_PEEK_MODE => {
                    state.peek = num != 0;
                    1
                }
                dffi::BIO_CTRL_PENDING if state.inbound_ready => {
                    state.lent.map_or(state.inbound.len(), |(_, n)| n) as c_long
                }
                dffi::BIO_CTRL_PENDING => 0,
                dffi::BIO_CTRL_WPENDING => 0,
                dffi::BIO_CTRL_FLUSH => 1,
                dffi::BIO_CTRL_RESET => {
                    state.inbound_ready = false;
                    1
                }
                _ => 0,
            }
        }
    })
}

/// Fills a `BIO_ADDR` from `peer`; returns the sockaddr size as the dgram BIO does.
///
/// # Safety
/// `addr` must point to a valid, writable `BIO_ADDR`.
unsafe fn write_bio_addr(addr: *mut dffi::BIO_ADDR, peer: SocketAddr) -> c_long {
    let port = peer.port().to_be();
    // SAFETY: `addr` is valid per the caller; the raw address buffers live across the call.
    unsafe {
        match peer.ip() {
            IpAddr::V4(ip) => {
                let raw = ip.octets();
                if dffi::BIO_ADDR_rawmake(addr, libc::AF_INET, raw.as_ptr().cast(), raw.len(), port)
                    == 1
                {
                    std::mem::size_of::<libc::sockaddr_in>() as c_long
                } else {
                    0
                }
            }
            IpAddr::V6(ip) => {
                let raw = ip.octets();
                if dffi::BIO_ADDR_rawmake(
                    addr,
                    libc::AF_INET6,
                    raw.as_ptr().cast(),
                    raw.len(),
                    port,
                ) == 1
                {
                    std::mem::size_of::<libc::sockaddr_in6>() as c_long
                } else {
                    0
                }
            }
        }
    }
}

/// `DTLS_set_timer_cb` callback: the initial timeout on a new flight (`timer_us == 0`), else
/// doubles up to the maximum and counts the timeout.
unsafe extern "C" fn timer_cb(ssl: *mut ffi::SSL, timer_us: c_uint) -> c_uint {
    guard("DTLS timer", 1_000_000, || {
        // SAFETY: OpenSSL passes the SSL whose timer fires; its BIO state is ours and no other
        // reference to it is live during this OpenSSL call.
        let Some(state) = (unsafe { state_of(ssl) }) else {
            return timer_us.saturating_mul(2).clamp(1_000_000, 60_000_000);
        };
        // SAFETY: see above.
        let state = unsafe { &mut *state };
        let initial = state
            .timer
            .initial
            .as_micros()
            .clamp(1, u128::from(u32::MAX)) as c_uint;
        let max = state.timer.max.as_micros().clamp(1, u128::from(u32::MAX)) as c_uint;
        if timer_us == 0 {
            initial
        } else {
            state.timeouts = state.timeouts.saturating_add(1);
            timer_us.saturating_mul(2).min(max).max(initial.min(max))
        }
    })
}

/// Info callback: records alerts sent and received.
unsafe extern "C" fn info_cb(ssl: *const ffi::SSL, where_: c_int, val: c_int) {
    guard("BIO", (), || {
        if where_ & dffi::SSL_CB_ALERT == 0 {
            return;
        }
        // SAFETY: OpenSSL passes a live SSL; no other reference to its BIO state is live during
        // this OpenSSL call.
        let Some(state) = (unsafe { state_of(ssl) }) else {
            return;
        };
        // SAFETY: see above.
        let state = unsafe { &mut *state };
        let alert = Alert::from_info_value(val);
        if where_ & dffi::SSL_CB_READ != 0 {
            log::debug!("received {alert}");
            state.alert_received = Some(alert);
        } else {
            log::debug!("sent {alert}");
            state.alert_sent = Some(alert);
        }
    })
}
