//! A datagram-preserving in-memory `BIO_METHOD`, and the per-`SSL` state OpenSSL's callbacks reach.
//!
//! OpenSSL 3.0 has no `BIO_s_dgram_mem` (3.2+), and `BIO_s_mem` merges datagrams, so this BIO is
//! ours. Each `BIO_read` hands OpenSSL exactly one queued datagram (the rest of a datagram larger
//! than OpenSSL's buffer is discarded, as `recvfrom` would); each `BIO_write` is one outgoing
//! datagram, never split or merged later. Writes always succeed: the BIO never asks OpenSSL to
//! retry a write (a datagram that does not fit the bounded outgoing queue is dropped and counted,
//! which to OpenSSL looks like loss on the network).
//!
//! The BIO answers the datagram ctrls OpenSSL's DTLS code issues: MTU query/get/set (the link MTU
//! we configure), MTU overhead (0: our MTU counts UDP payload), "MTU exceeded" (never), peer
//! get/set (the address the session belongs to, for `DTLSv1_listen`), pending, flush.
//!
//! Outgoing datagrams live in recycled buffers: after the first few datagrams of a connection,
//! steady-state traffic allocates nothing.
//!
//! The same heap block ([`BioState`]) carries what OpenSSL's per-`SSL` callbacks need (the
//! retransmission timer settings and count, the last alert sent and received, the peer address and
//! the current time for the cookie callbacks): a callback reaches it through `SSL_get_rbio`.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::net::{IpAddr, SocketAddr};
use std::os::raw::{c_char, c_int, c_long, c_uint, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;
use openssl_dtls_sys as dffi;
use openssl_sys as ffi;

use crate::error::Alert;

/// Spare outgoing buffers kept for reuse; a flight rarely needs more.
const MAX_SPARE_BUFFERS: usize = 8;

/// Retransmission timer settings, read by the `DTLS_set_timer_cb` callback.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimerSettings {
    pub initial: Duration,
    pub max: Duration,
}

/// Everything the Rust side keeps per `SSL`, owned by that `SSL`'s BIO.
#[derive(Debug)]
pub(crate) struct BioState {
    /// The datagram OpenSSL reads next (valid when `inbound_ready`).
    inbound: Vec<u8>,
    inbound_ready: bool,
    /// Datagrams OpenSSL wrote, oldest first.
    outbound: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    max_outbound: usize,
    /// Datagrams dropped because the outgoing queue was full.
    pub outbound_dropped: u64,
    /// Link MTU (UDP payload bytes) reported to OpenSSL.
    pub mtu: usize,
    /// The peer this `SSL` talks to (answers `BIO_CTRL_DGRAM_GET_PEER`, read by cookie callbacks).
    pub peer: Option<SocketAddr>,
    /// The caller's clock at the current call (for the cookie callbacks' secret rotation).
    pub now: Option<Instant>,
    pub timer: TimerSettings,
    /// Retransmission timeouts that fired so far (counted by the timer callback).
    pub timeouts: u32,
    pub alert_received: Option<Alert>,
    pub alert_sent: Option<Alert>,
    /// `DTLSv1_listen`'s peek mode: reads leave the datagram in place.
    peek: bool,
    /// The next sequence number of an epoch-0 record we would send (from the headers of the
    /// epoch-0 records OpenSSL wrote), for an alert we write ourselves.
    pub epoch0_next_seq: u64,
    /// Track [`epoch1_next_seq`](Self::epoch1_next_seq) (compact mode only: it costs a header
    /// parse per outgoing datagram).
    pub track_epoch1: bool,
    /// The next sequence number of an epoch-1 record, from the headers of the epoch-1 records
    /// OpenSSL wrote: where the compact record layer continues after the hand-off, so that no
    /// sequence number (and so no AEAD nonce) is ever used twice.
    pub epoch1_next_seq: u64,
    /// The first 8 bytes of the newest epoch-1 record OpenSSL wrote: its explicit nonce under
    /// GCM and CCM (OpenSSL's GCM nonces count up from a random start, not from the sequence).
    pub epoch1_last_explicit: Option<[u8; 8]>,
    /// Append writes to the last queued datagram while it stays within the MTU (set while
    /// OpenSSL may retransmit a flight, which it does one message per write).
    pub coalesce: bool,
}

impl BioState {
    fn new(mtu: usize, max_outbound: usize, timer: TimerSettings) -> BioState {
        BioState {
            inbound: Vec::new(),
            inbound_ready: false,
            outbound: VecDeque::new(),
            spare: Vec::new(),
            max_outbound,
            outbound_dropped: 0,
            mtu,
            peer: None,
            now: None,
            timer,
            timeouts: 0,
            alert_received: None,
            alert_sent: None,
            peek: false,
            epoch0_next_seq: 0,
            track_epoch1: false,
            epoch1_next_seq: 0,
            epoch1_last_explicit: None,
            coalesce: false,
        }
    }

    /// Queues `datagram` as the next thing OpenSSL reads, replacing any unread one.
    pub fn set_inbound(&mut self, datagram: &[u8]) {
        self.inbound.clear();
        self.inbound.extend_from_slice(datagram);
        self.inbound_ready = true;
    }

    /// The bytes queued for OpenSSL's next read.
    pub fn inbound(&self) -> &[u8] {
        &self.inbound
    }

    /// Queues the records of `datagram` that `keep` accepts, back to back, as the next thing
    /// OpenSSL reads (records after a malformed one are left out).
    pub fn set_inbound_filtered(
        &mut self,
        datagram: &[u8],
        keep: impl Fn(&crate::wire::RecordHeader<'_>) -> bool,
    ) {
        self.inbound.clear();
        let mut offset = 0;
        for record in crate::wire::records(datagram) {
            let Ok(record) = record else { break };
            let end = offset + record.total_len();
            if keep(&record) {
                self.inbound.extend_from_slice(&datagram[offset..end]);
            }
            offset = end;
        }
        self.inbound_ready = !self.inbound.is_empty();
    }

    /// Whether a datagram waits for OpenSSL to read it.
    pub fn has_inbound(&self) -> bool {
        self.inbound_ready
    }

    /// Moves every queued outgoing datagram to the back of `to`, oldest first.
    pub fn drain_outbound(&mut self, to: &mut VecDeque<Vec<u8>>) {
        to.extend(self.outbound.drain(..));
    }

    /// Discards an unread inbound datagram.
    pub fn clear_inbound(&mut self) {
        self.inbound_ready = false;
    }

    /// Moves the oldest outgoing datagram into `buf`. `Some(len)`: the datagram's length; if it
    /// is longer than `buf` it is dropped (counted) and `Some(0)` is never returned for it: the
    /// next datagram is tried instead.
    pub fn pop_outbound(&mut self, buf: &mut [u8]) -> Option<usize> {
        let spare = &mut self.spare;
        pop_datagram(&mut self.outbound, buf, &mut self.outbound_dropped, |d| {
            recycle_into(spare, d)
        })
    }

    /// Number of outgoing datagrams waiting.
    pub fn outbound_len(&self) -> usize {
        self.outbound.len()
    }

    /// Queues a datagram we made ourselves (not OpenSSL).
    pub fn push_outbound(&mut self, data: &[u8]) {
        self.write(data);
    }

    fn write(&mut self, data: &[u8]) {
        // Epoch-0 records only occur during the handshake: established traffic skips this scan
        // unless compact mode needs the epoch-1 write sequence.
        if data.get(3..5) == Some(&[0, 0]) || self.track_epoch1 {
            for record in crate::wire::records(data).flatten() {
                let next = record.sequence() + 1;
                match record.epoch() {
                    0 => self.epoch0_next_seq = self.epoch0_next_seq.max(next),
                    1 if self.track_epoch1 && next > self.epoch1_next_seq => {
                        self.epoch1_next_seq = next;
                        self.epoch1_last_explicit = record
                            .fragment()
                            .first_chunk::<8>()
                            .copied()
                            .or(self.epoch1_last_explicit);
                    }
                    _ => {}
                }
            }
        }
        // OpenSSL 3.0 packs a flight into one write, and its MTU arithmetic leaves out the AEAD
        // nonce and tag of encrypted handshake records: a flight ending in Finished can exceed
        // the MTU by up to 24 bytes. A record never spans datagrams but a datagram may carry
        // several (RFC 6347 §4.1.1), so such a write goes out split at record boundaries.
        if data.len() > self.mtu && is_record_sequence(data) {
            let (mut start, mut end) = (0, 0);
            for record in crate::wire::records(data).flatten() {
                if end > start && end - start + record.total_len() > self.mtu {
                    self.queue(&data[start..end]);
                    start = end;
                }
                end += record.total_len();
            }
            self.queue(&data[start..end]);
            return;
        }
        self.queue(data);
    }

    /// Queues one outgoing datagram, or (while `coalesce` is set) appends it to the last queued
    /// one if both fit the MTU together.
    fn queue(&mut self, data: &[u8]) {
        // OpenSSL retransmits a flight one message per write: each extra datagram is one more
        // chance to lose the flight, and the retransmissions per flight are capped (12). Whole
        // records may share a datagram (RFC 6347 §4.1.1), so pack them up to the MTU. Never a
        // ClientHello: the server's DTLSv1_listen (and our pre-parser) take it only alone.
        if self.coalesce && !crate::wire::is_client_hello(data) {
            if let Some(last) = self.outbound.back_mut() {
                if !last.is_empty()
                    && last.len() + data.len() <= self.mtu
                    && !crate::wire::is_client_hello(last)
                {
                    last.extend_from_slice(data);
                    return;
                }
            }
        }
        if self.outbound.len() >= self.max_outbound {
            self.outbound_dropped += 1;
            return;
        }
        let mut buf = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.mtu.max(data.len())));
        buf.extend_from_slice(data);
        self.outbound.push_back(buf);
    }

    fn read(&mut self, out: &mut [u8]) -> Option<usize> {
        if !self.inbound_ready {
            return None;
        }
        let n = self.inbound.len().min(out.len());
        out[..n].copy_from_slice(&self.inbound[..n]);
        if !self.peek {
            self.inbound_ready = false;
        }
        Some(n)
    }
}

/// Keeps `datagram` as a spare buffer if fewer than [`MAX_SPARE_BUFFERS`] are kept.
fn recycle_into(spare: &mut Vec<Vec<u8>>, mut datagram: Vec<u8>) {
    if spare.len() < MAX_SPARE_BUFFERS {
        datagram.clear();
        spare.push(datagram);
    }
}

/// Moves the oldest datagram of `queue` into `buf` and returns its length. A datagram longer
/// than `buf` is dropped (counted in `dropped`), never truncated, and the next one is tried.
/// Every datagram taken off the queue goes to `recycle`.
pub(crate) fn pop_datagram(
    queue: &mut VecDeque<Vec<u8>>,
    buf: &mut [u8],
    dropped: &mut u64,
    mut recycle: impl FnMut(Vec<u8>),
) -> Option<usize> {
    while let Some(datagram) = queue.pop_front() {
        let len = datagram.len();
        let fits = len <= buf.len();
        if fits {
            buf[..len].copy_from_slice(&datagram);
        } else {
            *dropped += 1;
            log::warn!(
                "dropping a {len}-byte datagram: transmit buffer holds {}",
                buf.len()
            );
        }
        recycle(datagram);
        if fits {
            return Some(len);
        }
    }
    None
}

/// True if `data` is one or more whole, well-formed DTLS records back to back.
fn is_record_sequence(data: &[u8]) -> bool {
    let mut total = 0;
    for record in crate::wire::records(data) {
        match record {
            Ok(record) => total += record.total_len(),
            Err(_) => return false,
        }
    }
    total == data.len()
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
) -> Result<*mut BioState, openssl::error::ErrorStack> {
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
    Ok(state)
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

/// OpenSSL's long name of an alert description.
pub(crate) fn alert_desc_str(description: u8) -> &'static str {
    // SAFETY: SSL_alert_desc_string_long returns a pointer to a static NUL-terminated string for
    // any input ("unknown" for codes it does not know).
    let s = unsafe { CStr::from_ptr(dffi::SSL_alert_desc_string_long(c_int::from(description))) };
    s.to_str().unwrap_or("unknown")
}

/// Runs `f`, turning a panic into `on_panic` so no Rust panic unwinds into OpenSSL.
fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        log::error!("panic inside an OpenSSL callback; treated as failure");
        on_panic
    })
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
    guard(-1, || {
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
    guard(-1, || {
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
            match (*state).read(out) {
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
    guard(0, || {
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
                dffi::BIO_CTRL_PENDING if state.inbound_ready => state.inbound.len() as c_long,
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
    guard(1_000_000, || {
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
    guard((), || {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> BioState {
        BioState::new(
            1200,
            4,
            TimerSettings {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(10),
            },
        )
    }

    #[test]
    fn each_read_returns_exactly_one_datagram() {
        let mut s = state();
        s.set_inbound(b"first");
        let mut out = [0u8; 64];
        assert_eq!(s.read(&mut out), Some(5));
        assert_eq!(&out[..5], b"first");
        assert_eq!(s.read(&mut out), None, "a datagram is read once");
    }

    #[test]
    fn a_short_read_buffer_truncates_like_recvfrom() {
        let mut s = state();
        s.set_inbound(b"0123456789");
        let mut out = [0u8; 4];
        assert_eq!(s.read(&mut out), Some(4));
        assert_eq!(s.read(&mut out), None, "the rest of the datagram is gone");
    }

    #[test]
    fn writes_keep_boundaries_and_buffers_are_recycled() {
        let mut s = state();
        s.write(b"aa");
        s.write(b"bbb");
        let mut out = [0u8; 16];
        assert_eq!(s.pop_outbound(&mut out), Some(2));
        assert_eq!(&out[..2], b"aa");
        assert_eq!(s.pop_outbound(&mut out), Some(3));
        assert_eq!(&out[..3], b"bbb");
        assert_eq!(s.pop_outbound(&mut out), None);
        assert_eq!(s.spare.len(), 2);
        let caps: Vec<usize> = s.spare.iter().map(Vec::capacity).collect();
        s.write(b"c");
        // The buffer came from the spare list: no new allocation.
        assert_eq!(s.spare.len(), 1);
        assert!(caps.contains(&s.outbound[0].capacity()));
    }

    /// A DTLS 1.2 record of `len` payload bytes in `epoch`, starting a ClientHello if `hello`.
    fn record(epoch: u8, len: usize, hello: bool) -> Vec<u8> {
        let mut r = vec![22, 0xFE, 0xFD, 0, epoch, 0, 0, 0, 0, 0, 1];
        r.extend_from_slice(&(len as u16).to_be_bytes());
        r.resize(13 + len, 0);
        if hello {
            r[13] = 1; // msg_type client_hello
        }
        r
    }

    fn queued_lengths(s: &mut BioState) -> Vec<usize> {
        let mut out = [0u8; 2048];
        std::iter::from_fn(|| s.pop_outbound(&mut out)).collect()
    }

    #[test]
    fn a_write_over_the_mtu_is_split_at_record_boundaries() {
        let timer = state().timer;
        let mut s = BioState::new(100, 8, timer);
        // 63 + 43 + 53 bytes: the first record alone, the other two together.
        let flight = [
            record(1, 50, false),
            record(1, 30, false),
            record(1, 40, false),
        ];
        s.write(&flight.concat());
        assert_eq!(queued_lengths(&mut s), [63, 96]);
        // Not a clean run of records: left as it is.
        s.write(&[7u8; 150]);
        assert_eq!(queued_lengths(&mut s), [150]);
    }

    #[test]
    fn coalescing_packs_writes_up_to_the_mtu_but_never_a_client_hello() {
        let timer = state().timer;
        let mut s = BioState::new(100, 8, timer);
        s.coalesce = true;
        for _ in 0..3 {
            s.write(&record(1, 27, false)); // 40 bytes each: two fit, the third starts anew
        }
        assert_eq!(queued_lengths(&mut s), [80, 40]);
        s.write(&record(0, 27, true));
        s.write(&record(0, 27, false));
        s.write(&record(0, 27, true));
        assert_eq!(queued_lengths(&mut s), [40, 40, 40]);
        s.coalesce = false;
        s.write(&record(1, 27, false));
        s.write(&record(1, 27, false));
        assert_eq!(queued_lengths(&mut s), [40, 40]);
    }

    #[test]
    fn a_full_outgoing_queue_drops_and_counts() {
        let mut s = state();
        for _ in 0..6 {
            s.write(b"x");
        }
        assert_eq!(s.outbound_len(), 4);
        assert_eq!(s.outbound_dropped, 2);
    }

    #[test]
    fn a_datagram_larger_than_the_transmit_buffer_is_dropped_not_truncated() {
        let mut s = state();
        s.write(&[7u8; 100]);
        s.write(b"ok");
        let mut out = [0u8; 10];
        assert_eq!(s.pop_outbound(&mut out), Some(2));
        assert_eq!(&out[..2], b"ok");
        assert_eq!(s.outbound_dropped, 1);
    }

    #[test]
    fn alert_strings_come_from_openssl() {
        assert_eq!(alert_desc_str(40), "handshake failure");
        assert_eq!(alert_desc_str(115), "unknown PSK identity");
        assert_eq!(alert_desc_str(0), "close notify");
    }
}
