//! The calls into the OS that need `unsafe`: `poll(2)` and a one-shot `timerfd` for the
//! blocking driver's waits, `SO_MEMINFO`'s drop count, `dup3(2)` for a client's rebind, and the datagram batches of both drivers —
//! `recvmmsg(2)`/`sendmmsg(2)` with their control messages (`UDP_GRO`, `SO_RXQ_OVFL` on receive,
//! `UDP_SEGMENT` on send) and the socket options that turn them on. Everything else about
//! sockets goes through `std` and `socket2`.
//!
//! Control messages are read and written as bytes in safe code ([`parse_control`],
//! [`segment_control`]), in the kernel's layout (`struct cmsghdr`: a `size_t` length, then level
//! and type as `int`, the data aligned to `size_t`), so a truncated or malformed one is ignored
//! rather than read past.
//!
//! On Unix systems other than Linux the batch calls move one datagram per call (`recvfrom(2)`,
//! `sendto(2)`) and GRO, GSO and the drop counter are not available.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use socket2::SockAddr;

/// Sleeps until one of `fds` is readable or `timeout` passes (`None`: no limit), as
/// `poll(2)` with `POLLIN`. A signal interrupting the wait (`EINTR`) counts as a wake-up, not an
/// error. The timeout is rounded up to the next millisecond, so the caller never wakes before
/// its deadline and spins.
#[doc(alias = "poll")]
pub(crate) fn wait_readable<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Option<Duration>,
) -> io::Result<()> {
    let timeout_ms: libc::c_int = match timeout {
        None => -1,
        Some(left) => {
            let ms = left.as_micros().div_ceil(1000);
            ms.min(libc::c_int::MAX as u128) as libc::c_int
        }
    };
    let mut pollfds = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    // SAFETY: `pollfds` is a valid, writable array of exactly `N` pollfd structs for the
    // duration of the call, and every descriptor in it is open: each comes from a `BorrowedFd`
    // whose lifetime outlives this call.
    let r = unsafe { libc::poll(pollfds.as_mut_ptr(), N as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Makes descriptor `target` refer to `with`'s socket (`dup3(2)` with `O_CLOEXEC`, so the
/// descriptor stays closed in child processes as std's sockets are), atomically: every user of
/// `target`'s number (a driver thread's `recv_from`, an application thread's `send_to`) uses the
/// new socket from the next call on; the old socket is closed. `with`'s own descriptor is
/// closed on return.
#[doc(alias = "dup3")]
pub(crate) fn replace_descriptor(target: BorrowedFd<'_>, with: OwnedFd) -> io::Result<()> {
    // SAFETY: both descriptors are open for the duration of the call (`target` is borrowed,
    // `with` owned); dup3 only rebinds the number `target` to `with`'s open file description,
    // and `target`'s owner keeps owning that number.
    let r = unsafe { libc::dup3(with.as_raw_fd(), target.as_raw_fd(), libc::O_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lowers the calling thread's scheduling priority by `nice` steps (`setpriority(2)` on the
/// thread: on Linux the nice value is per thread), so that it yields the CPU to the threads
/// serving established connections when both want it. Failure (a sandbox that forbids it) is
/// harmless and only logged.
#[doc(alias = "setpriority")]
pub(crate) fn lower_thread_priority(nice: i32) {
    // SAFETY: `setpriority` reads only its integer arguments; `who` 0 is the calling thread on
    // Linux (the nice value is a per-thread attribute).
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if r != 0 {
        log::debug!("setpriority({nice}) failed: {}", io::Error::last_os_error());
    }
}

/// Moves the calling thread to the `SCHED_IDLE` scheduling class (`sched_setscheduler(2)`):
/// it runs only on CPU time no other thread of the machine wants, and any thread that wakes
/// preempts it at once. Returns whether it did; failure (a sandbox that forbids it; not Linux)
/// is only logged.
#[doc(alias = "sched_setscheduler")]
pub(crate) fn set_thread_idle_class() -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid `sched_param` alive for the call; pid 0 is the calling
        // thread (the scheduling policy is a per-thread attribute on Linux).
        let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if r != 0 {
            log::debug!("SCHED_IDLE failed: {}", io::Error::last_os_error());
        }
        r == 0
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        false
    }
}

/// The most datagrams one [`recv_batch`] or [`send_batch`] call moves (the stack arrays of
/// `mmsghdr`s are this long).
pub(crate) const MAX_BATCH: usize = 64;

/// The most datagrams one [`recv_batch`] call can return: [`MAX_BATCH`] with `recvmmsg(2)`,
/// 1 where the system has only `recvfrom(2)`.
pub(crate) const RECV_PER_CALL: usize = if cfg!(any(target_os = "linux", target_os = "android")) {
    MAX_BATCH
} else {
    1
};

/// Whether this system has UDP GSO at all (Linux); the kernel may still refuse it.
pub(crate) const GSO_AVAILABLE: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// `SOL_UDP` (`IPPROTO_UDP`): the level of the UDP socket options.
const SOL_UDP: libc::c_int = 17;
/// `UDP_SEGMENT` (Linux 4.18): the segment size of a GSO send, as a `u16` control message.
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` (Linux 5.0): the socket option that lets the kernel coalesce received datagrams,
/// and the control message (an `int`) that gives their segment size.
const UDP_GRO: libc::c_int = 104;
/// `SO_RXQ_OVFL` (asm-generic value; the same on x86, Arm, RISC-V, MIPS, PowerPC; SPARC has
/// another, so the option is not set there): the socket option that adds the socket's drop
/// counter to each received datagram.
const SO_RXQ_OVFL: libc::c_int = 40;

/// `sizeof(size_t)`: the alignment of control messages, and the size of `cmsg_len`.
const CMSG_ALIGN: usize = size_of::<usize>();
/// The size of a `struct cmsghdr` (`cmsg_len`, `cmsg_level`, `cmsg_type`), aligned.
const CMSG_HEADER: usize = cmsg_align(CMSG_ALIGN + 2 * size_of::<libc::c_int>());

const fn cmsg_align(n: usize) -> usize {
    n.div_ceil(CMSG_ALIGN) * CMSG_ALIGN
}

/// Control-message space per received datagram, in `u64` words (8-byte aligned as `cmsghdr`
/// needs): room for `UDP_GRO` and `SO_RXQ_OVFL` (`CMSG_SPACE(4)` each) with a spare.
pub(crate) const RECV_CONTROL_WORDS: usize = 12;
/// Control-message space of a send, in `u64` words: one `UDP_SEGMENT` (`CMSG_SPACE(2)`).
const SEND_CONTROL_WORDS: usize = cmsg_align(CMSG_HEADER + 2).div_ceil(8);

/// What the control messages of one received datagram said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RecvControl {
    /// `UDP_GRO`: the datagram is several the kernel coalesced, each this long (the last may
    /// be shorter).
    pub gro_segment: Option<usize>,
    /// `SO_RXQ_OVFL`: the socket's count of datagrams dropped because its receive buffer was
    /// full (the kernel's `sk_drops`, a wrapping `u32`), sent only once it is not zero.
    pub rx_dropped: Option<u32>,
    /// `MSG_TRUNC` or `MSG_CTRUNC`: the datagram (a GRO train longer than its slot) or its
    /// control messages did not fit; what was cut off is lost.
    pub truncated: bool,
}

#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
/// Reads the control messages the kernel wrote (`control`, `msg_controllen` bytes of it) for
/// one datagram. Messages it does not know are skipped; a truncated one ends the walk.
pub(crate) fn parse_control(control: &[u8]) -> RecvControl {
    let mut out = RecvControl::default();
    let mut at = 0;
    while let Some(header) = control.get(at..at + CMSG_HEADER) {
        let (len, rest) = header.split_at(CMSG_ALIGN);
        let len = usize::from_ne_bytes(len.try_into().expect("CMSG_ALIGN bytes"));
        let level = read_int(&rest[..4]);
        let kind = read_int(&rest[4..8]);
        if len < CMSG_HEADER {
            break;
        }
        let data = control
            .get(at + CMSG_HEADER..)
            .and_then(|rest| rest.get(..len - CMSG_HEADER));
        let Some(data) = data else {
            break; // truncated (MSG_CTRUNC) or malformed
        };
        match (level, kind) {
            (SOL_UDP, UDP_GRO) if data.len() >= 4 => {
                let size = read_int(&data[..4]);
                if size > 0 {
                    out.gro_segment = Some(size as usize);
                }
            }
            (libc::SOL_SOCKET, SO_RXQ_OVFL) if data.len() >= 4 => {
                out.rx_dropped = Some(read_int(&data[..4]) as u32);
            }
            _ => {}
        }
        at += cmsg_align(len);
    }
    out
}

fn read_int(bytes: &[u8]) -> libc::c_int {
    libc::c_int::from_ne_bytes(bytes.try_into().expect("four bytes"))
}

#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
/// The `UDP_SEGMENT` control message for a GSO send of `segment`-byte datagrams, as bytes.
pub(crate) fn segment_control(segment: u16) -> [u8; SEND_CONTROL_WORDS * 8] {
    let mut out = [0u8; SEND_CONTROL_WORDS * 8];
    let len = CMSG_HEADER + 2;
    out[..CMSG_ALIGN].copy_from_slice(&len.to_ne_bytes());
    out[CMSG_ALIGN..CMSG_ALIGN + 4].copy_from_slice(&SOL_UDP.to_ne_bytes());
    out[CMSG_ALIGN + 4..CMSG_ALIGN + 8].copy_from_slice(&UDP_SEGMENT.to_ne_bytes());
    out[CMSG_HEADER..CMSG_HEADER + 2].copy_from_slice(&segment.to_ne_bytes());
    out
}

/// Where [`recv_batch`] put one datagram.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RecvMeta {
    /// Its length in its slot.
    pub len: usize,
    /// The sender (`None`: an address family we do not handle).
    pub peer: Option<SocketAddr>,
    /// Its control messages.
    pub control: RecvControl,
}

/// One datagram, or a run of equal-size datagrams to one peer sent with GSO, for
/// [`send_batch`]: `data[start..start + len]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendMsg {
    /// Where it goes.
    pub peer: SocketAddr,
    /// Its first byte in the batch's buffer.
    pub start: usize,
    /// Its length (all its segments).
    pub len: usize,
    /// `UDP_SEGMENT`: the size of each segment (the last may be shorter); 0 for one datagram.
    pub segment: u16,
}

/// `setsockopt(2)` of an `int` option.
fn set_int_option(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `fd` is open for the call; the option value is a valid `int` that lives across
    // the call, and its size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Turns on the socket's drop counter on received datagrams (`SO_RXQ_OVFL`).
#[doc(alias = "SO_RXQ_OVFL")]
pub(crate) fn enable_rx_drop_counter(fd: BorrowedFd<'_>) -> io::Result<()> {
    let known = cfg!(all(
        any(target_os = "linux", target_os = "android"),
        not(any(target_arch = "sparc", target_arch = "sparc64"))
    ));
    if known {
        set_int_option(fd, libc::SOL_SOCKET, SO_RXQ_OVFL, 1)
    } else {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Lets the kernel coalesce received datagrams of one flow (`UDP_GRO`, Linux 5.0).
#[doc(alias = "UDP_GRO")]
pub(crate) fn enable_gro(fd: BorrowedFd<'_>) -> io::Result<()> {
    if cfg!(any(target_os = "linux", target_os = "android")) {
        set_int_option(fd, SOL_UDP, UDP_GRO, 1)
    } else {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Whether a send error means the kernel or the device cannot do GSO (the message had a
/// `UDP_SEGMENT`): `EINVAL` (no support, or a segment larger than the path MTU), `EIO` (no
/// checksum offload), `ENOPROTOOPT` (a kernel before 4.18), `EOPNOTSUPP`.
pub(crate) fn is_gso_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

/// The address the kernel wrote into `storage` (`len` bytes of it).
fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    // SAFETY: `storage` is a whole `sockaddr_storage` that the kernel filled with an address
    // of `len` bytes (at most its size: the kernel truncates to `msg_namelen`).
    let addr = unsafe { SockAddr::new(*storage, len) };
    addr.as_socket()
}

/// Receives up to [`MAX_BATCH`] datagrams without blocking (`recvmmsg(2)` with
/// `MSG_DONTWAIT`): datagram `i` into `data[i * slot..][..slot]`, its control messages into
/// `control[i]`, its length, sender and control messages into `meta[i]`. Returns how many
/// arrived (`WouldBlock` when none was queued). `slot` should be 65,536: no datagram (nor GRO
/// train) is longer, so none is truncated.
/// A single-datagram call's result as a batch call's: one datagram (also an empty one, 0
/// bytes), or the error (-1).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn one_datagram(r: isize) -> libc::c_int {
    if r < 0 {
        -1
    } else {
        1
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
#[doc(alias = "recvmmsg")]
pub(crate) fn recv_batch(
    fd: BorrowedFd<'_>,
    data: &mut [u8],
    slot: usize,
    control: &mut [[u64; RECV_CONTROL_WORDS]],
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    let n = (data.len() / slot.max(1))
        .min(control.len())
        .min(meta.len())
        .min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // Only the `n` entries used are initialized (zeroed, then filled): zeroing whole arrays
    // cost 13 KB of memset per call.
    let mut names = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; MAX_BATCH];
    let mut iovecs = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_BATCH];
    let mut msgs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; MAX_BATCH];
    let chunks = data.chunks_exact_mut(slot);
    for (i, (buf, ctl)) in chunks.zip(control.iter_mut()).take(n).enumerate() {
        // SAFETY: all-zero bytes are a valid `sockaddr_storage` and `mmsghdr` (null pointers,
        // zero lengths).
        let name = names[i].write(unsafe { std::mem::zeroed() });
        let iovec = iovecs[i].write(libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        });
        // SAFETY: as above.
        let mut msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let hdr = &mut msg.msg_hdr;
        hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_iov = iovec;
        hdr.msg_iovlen = 1;
        hdr.msg_control = ctl.as_mut_ptr().cast();
        hdr.msg_controllen = size_of::<[u64; RECV_CONTROL_WORDS]>() as _;
        msgs[i].write(msg);
    }
    // `msgs[..n]` are initialized headers whose name, iovec and control pointers point into
    // `names`, `iovecs`, `data` and `control`, all alive and exclusively borrowed for the call,
    // with the lengths given beside them; the kernel writes only within those lengths.
    let r = if n == 1 {
        // One datagram (the poller waiting for its own record): `recvmsg(2)`, a little cheaper
        // than a batch of one (measured: 0.4 µs a call on this kernel).
        // SAFETY: `msgs[0]` is initialized (n == 1) and its pointers are as described above.
        let msg = unsafe { msgs[0].assume_init_mut() };
        // SAFETY: the header's name, iovec and control pointers are alive and exclusively
        // borrowed for the call, with their lengths beside them.
        let r = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg.msg_hdr, libc::MSG_DONTWAIT) };
        if r >= 0 {
            msg.msg_len = r as libc::c_uint;
        }
        one_datagram(r)
    } else {
        // SAFETY: as above, for `msgs[..n]`.
        unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                msgs.as_mut_ptr().cast::<libc::mmsghdr>(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let got = r as usize;
    for i in 0..got {
        // SAFETY: entries below `n` (and `got <= n`) were initialized above; the kernel only
        // wrote within them.
        let (msg, name) = unsafe { (msgs[i].assume_init_ref(), names[i].assume_init_ref()) };
        let hdr = &msg.msg_hdr;
        let words = &control[i];
        let mut bytes = [0u8; RECV_CONTROL_WORDS * 8];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        // `msg_controllen` is a `size_t` on glibc, a `socklen_t` elsewhere (musl).
        #[allow(clippy::unnecessary_cast)]
        let control_len = (hdr.msg_controllen as usize).min(bytes.len());
        let mut control = parse_control(&bytes[..control_len]);
        let mut len = (msg.msg_len as usize).min(slot);
        control.truncated = hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
        if hdr.msg_flags & libc::MSG_TRUNC != 0 {
            // A GRO train longer than the slot: keep its whole segments, drop the cut one.
            len = match control.gro_segment {
                Some(segment) => len - len % segment,
                None => 0,
            };
        }
        meta[i] = RecvMeta {
            len,
            peer: socket_addr(name, hdr.msg_namelen),
            control,
        };
    }
    Ok(got)
}

/// Receives one datagram without blocking (`recvfrom(2)`, `MSG_DONTWAIT`) into `data[..slot]`:
/// the portable path of the Linux batch call.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[doc(alias = "recvfrom")]
pub(crate) fn recv_batch(
    fd: BorrowedFd<'_>,
    data: &mut [u8],
    slot: usize,
    _control: &mut [[u64; RECV_CONTROL_WORDS]],
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    let (Some(buf), Some(m)) = (data.get_mut(..slot), meta.first_mut()) else {
        return Ok(0);
    };
    // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `buf` and `name` are alive and exclusively borrowed for the call, with their
    // lengths given beside them.
    let r = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&mut name as *mut libc::sockaddr_storage).cast(),
            &mut namelen,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    *m = RecvMeta {
        len: r as usize,
        peer: socket_addr(&name, namelen),
        control: RecvControl::default(),
    };
    Ok(1)
}

/// Sends `msgs` (up to [`MAX_BATCH`] of them; each `data[start..start + len]`, with a
/// `UDP_SEGMENT` control message when `segment` is set) without blocking (`sendmmsg(2)` with
/// `MSG_DONTWAIT`). Returns how many messages the kernel took: fewer than given when it
/// stopped at an error, which the next call (starting at the first not taken) reports;
/// `WouldBlock` when the send buffer is full.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[doc(alias = "sendmmsg")]
pub(crate) fn send_batch(fd: BorrowedFd<'_>, data: &[u8], msgs: &[SendMsg]) -> io::Result<usize> {
    let n = msgs.len().min(MAX_BATCH);
    if n == 0 {
        return Ok(0);
    }
    // Only the `n` entries used are initialized (no memset of whole arrays per call).
    let mut iovecs = [const { MaybeUninit::<libc::iovec>::uninit() }; MAX_BATCH];
    let mut headers = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; MAX_BATCH];
    let mut controls = [[0u64; SEND_CONTROL_WORDS]; MAX_BATCH];
    let mut names: [Option<SockAddr>; MAX_BATCH] = [const { None }; MAX_BATCH];
    for (i, msg) in msgs.iter().take(n).enumerate() {
        let buf = data
            .get(msg.start..msg.start + msg.len)
            .ok_or(io::ErrorKind::InvalidInput)?;
        let iovec = iovecs[i].write(libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        });
        let name = names[i].insert(SockAddr::from(msg.peer));
        // SAFETY: all-zero bytes are a valid `mmsghdr` (null pointers, zero lengths).
        let header = headers[i].write(unsafe { std::mem::zeroed() });
        let hdr = &mut header.msg_hdr;
        hdr.msg_name = name.as_ptr().cast_mut().cast();
        hdr.msg_namelen = name.len();
        hdr.msg_iov = iovec;
        hdr.msg_iovlen = 1;
        if msg.segment > 0 {
            let bytes = segment_control(msg.segment);
            for (word, chunk) in controls[i].iter_mut().zip(bytes.chunks_exact(8)) {
                *word = u64::from_ne_bytes(chunk.try_into().expect("eight bytes"));
            }
            hdr.msg_control = controls[i].as_mut_ptr().cast();
            hdr.msg_controllen = size_of::<[u64; SEND_CONTROL_WORDS]>() as _;
        }
    }
    let r = if n == 1 && msgs[0].segment == 0 {
        // One plain datagram (a reply, a ping-pong): `sendto(2)`, cheaper than a batch of one
        // (measured: 0.25 µs a call on this kernel).
        let (buf, name) = (&data[msgs[0].start..msgs[0].start + msgs[0].len], &names[0]);
        let name = name.as_ref().expect("set above");
        // SAFETY: `buf` and `name` are alive for the call, with their lengths given beside them.
        let r = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                name.as_ptr().cast(),
                name.len(),
            )
        };
        one_datagram(r)
    } else {
        // SAFETY: `headers[..n]` are initialized, their name, iovec and control pointers point
        // into `names`, `iovecs`, `data` and `controls`, all alive for the call with the
        // lengths given beside them; the kernel only reads the buffers (the iovecs' `*mut` is
        // the C type's, not a write).
        unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                headers.as_mut_ptr().cast::<libc::mmsghdr>(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// Sends the first of `msgs` without blocking (`sendto(2)`, `MSG_DONTWAIT`): the portable path
/// of the Linux batch call (no GSO: `segment` must be 0).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
#[doc(alias = "sendto")]
pub(crate) fn send_batch(fd: BorrowedFd<'_>, data: &[u8], msgs: &[SendMsg]) -> io::Result<usize> {
    let Some(msg) = msgs.first() else {
        return Ok(0);
    };
    let buf = data
        .get(msg.start..msg.start + msg.len)
        .ok_or(io::ErrorKind::InvalidInput)?;
    let name = SockAddr::from(msg.peer);
    // SAFETY: `buf` and `name` are alive for the call, with their lengths given beside them.
    let r = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            name.as_ptr().cast(),
            name.len(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(1)
}

/// How many datagrams the kernel dropped at socket `fd`'s receive buffer since it was opened
/// (`getsockopt(SOL_SOCKET, SO_MEMINFO)`, `SK_MEMINFO_DROPS`: the buffer was full, or a
/// checksum or memory failure). A 32-bit counter in the kernel.
#[doc(alias = "SO_MEMINFO")]
pub(crate) fn socket_drops(fd: BorrowedFd<'_>) -> io::Result<u64> {
    /// `SO_MEMINFO` (Linux ≥ 3.17; 55 on every architecture but MIPS and SPARC).
    const SO_MEMINFO: libc::c_int = 55;
    /// `SK_MEMINFO_VARS`: the kernel fills at most this many counters.
    const VARS: usize = 9;
    let mut info = [0u32; VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `fd` is open for the duration of the call; `info` is writable for `len` bytes and
    // the kernel writes at most `len` bytes, updating `len` to what it wrote.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let drops = libc::SK_MEMINFO_DROPS as usize;
    if (len as usize) < (drops + 1) * 4 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SO_MEMINFO without the drop counter",
        ));
    }
    Ok(u64::from(info[drops]))
}

/// A one-shot timer as a descriptor (`timerfd_create(CLOCK_MONOTONIC)`, non-blocking): readable
/// once it expired, until [`clear`](Self::clear). Arming it is one syscall and wakes nobody, which
/// is why the blocking driver uses it to resume after its linger.
#[doc(alias = "timerfd_create")]
#[derive(Debug)]
pub(crate) struct OneShotTimer {
    fd: OwnedFd,
}

impl OneShotTimer {
    /// A disarmed timer.
    pub(crate) fn new() -> io::Result<OneShotTimer> {
        // SAFETY: plain syscall with constant flags; the result is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by timerfd_create and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(OneShotTimer { fd })
    }

    /// (Re)arms the timer to expire once, `after` from now (`timerfd_settime`, relative); a
    /// zero `after` is rounded up to a nanosecond (zero would disarm it).
    #[doc(alias = "timerfd_settime")]
    pub(crate) fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `self.fd` is an open timerfd; `spec` is a valid itimerspec read by the call,
        // and a null old-value pointer is allowed.
        let r =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes an expiry, so the timer is no longer readable (a no-op if it has not expired).
    pub(crate) fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: `self.fd` is an open non-blocking timerfd and `count` is 8 writable bytes,
        // the size a timerfd read needs; an error (EAGAIN: not expired) is ignored.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), 8) };
    }
}

impl AsFd for OneShotTimer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};

    #[test]
    fn wait_readable_returns_once_a_descriptor_is_readable() {
        let (tx, rx) = UnixDatagram::pair().unwrap();
        tx.send(&[1]).unwrap();
        let start = Instant::now();
        super::wait_readable([rx.as_fd()], Some(Duration::from_secs(10))).unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn wait_readable_waits_out_the_timeout_when_nothing_arrives() {
        let (_tx, rx) = UnixDatagram::pair().unwrap();
        let start = Instant::now();
        super::wait_readable([rx.as_fd()], Some(Duration::from_millis(20))).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    /// Two sockets on loopback: (sender, receiver with GRO and the drop counter on).
    fn pair() -> (std::net::UdpSocket, std::net::UdpSocket) {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        super::enable_gro(rx.as_fd()).unwrap();
        super::enable_rx_drop_counter(rx.as_fd()).unwrap();
        (tx, rx)
    }

    /// Receives into fresh buffers until `want` datagrams (GRO trains counted by segment)
    /// arrived: each datagram's (sender, bytes).
    fn receive_all(rx: &std::net::UdpSocket, want: usize) -> Vec<(std::net::SocketAddr, Vec<u8>)> {
        let slot = 65_536;
        let mut data = vec![0u8; 4 * slot];
        let mut control = [[0u64; super::RECV_CONTROL_WORDS]; 4];
        let mut meta = [super::RecvMeta::default(); 4];
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < want {
            assert!(Instant::now() < deadline, "only {} of {want}", out.len());
            super::wait_readable([rx.as_fd()], Some(Duration::from_secs(1))).unwrap();
            let n = match super::recv_batch(rx.as_fd(), &mut data, slot, &mut control, &mut meta) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("recvmmsg: {e}"),
            };
            for (i, m) in meta[..n].iter().enumerate() {
                let bytes = &data[i * slot..][..m.len];
                let size = m.control.gro_segment.unwrap_or(bytes.len().max(1));
                for d in bytes.chunks(size) {
                    out.push((m.peer.unwrap(), d.to_vec()));
                }
            }
        }
        out
    }

    #[test]
    fn a_batch_with_a_gso_run_arrives_as_its_datagrams_in_order() {
        let (tx, rx) = pair();
        let to = rx.local_addr().unwrap();
        let mut data = Vec::new();
        let mut msgs = Vec::new();
        // A run of three 100-byte datagrams and a 40-byte one (GSO), then a lone 7-byte one.
        for (i, len) in [100usize, 100, 100, 40, 7].into_iter().enumerate() {
            data.extend(std::iter::repeat_n(i as u8, len));
        }
        msgs.push(super::SendMsg {
            peer: to,
            start: 0,
            len: 340,
            segment: 100,
        });
        msgs.push(super::SendMsg {
            peer: to,
            start: 340,
            len: 7,
            segment: 0,
        });
        let sent = match super::send_batch(tx.as_fd(), &data, &msgs) {
            Err(e) if super::is_gso_error(&e) => {
                eprintln!("the kernel refused GSO ({e}): nothing to test here");
                return;
            }
            r => r.unwrap(),
        };
        assert_eq!(sent, 2);
        let got = receive_all(&rx, 5);
        let from = tx.local_addr().unwrap();
        let lens: Vec<_> = got.iter().map(|(a, d)| (*a, d.len(), d[0])).collect();
        assert_eq!(
            lens,
            [
                (from, 100, 0),
                (from, 100, 1),
                (from, 100, 2),
                (from, 40, 3),
                (from, 7, 4)
            ]
        );
    }

    #[test]
    fn recv_batch_would_block_on_an_empty_socket() {
        let (_tx, rx) = pair();
        rx.set_nonblocking(true).unwrap();
        let mut data = vec![0u8; 65_536];
        let mut control = [[0u64; super::RECV_CONTROL_WORDS]; 1];
        let mut meta = [super::RecvMeta::default(); 1];
        let e =
            super::recv_batch(rx.as_fd(), &mut data, 65_536, &mut control, &mut meta).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }

    /// A control message in the kernel's layout: `len`, level, type, then `data`, padded.
    fn cmsg(level: libc::c_int, kind: libc::c_int, data: &[u8]) -> Vec<u8> {
        let len = super::CMSG_HEADER + data.len();
        let mut out = len.to_ne_bytes().to_vec();
        out.extend_from_slice(&level.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.resize(super::CMSG_HEADER, 0);
        out.extend_from_slice(data);
        out.resize(super::cmsg_align(len), 0);
        out
    }

    #[test]
    fn parse_control_reads_gro_and_the_drop_counter() {
        let mut control = cmsg(super::SOL_UDP, super::UDP_GRO, &1200i32.to_ne_bytes());
        control.extend(cmsg(
            libc::SOL_SOCKET,
            super::SO_RXQ_OVFL,
            &7u32.to_ne_bytes(),
        ));
        let parsed = super::parse_control(&control);
        assert_eq!(parsed.gro_segment, Some(1200));
        assert_eq!(parsed.rx_dropped, Some(7));
        assert_eq!(super::parse_control(&[]), super::RecvControl::default());
    }

    #[test]
    fn parse_control_skips_unknown_messages() {
        let mut control = cmsg(libc::SOL_IP, 99, &[1, 2, 3, 4, 5]);
        control.extend(cmsg(
            libc::SOL_SOCKET,
            super::SO_RXQ_OVFL,
            &3u32.to_ne_bytes(),
        ));
        let parsed = super::parse_control(&control);
        assert_eq!(parsed.rx_dropped, Some(3));
        assert_eq!(parsed.gro_segment, None);
    }

    #[test]
    fn parse_control_stops_at_a_truncated_message() {
        let mut control = cmsg(super::SOL_UDP, super::UDP_GRO, &1200i32.to_ne_bytes());
        control.extend(cmsg(
            libc::SOL_SOCKET,
            super::SO_RXQ_OVFL,
            &9u32.to_ne_bytes(),
        ));
        let first = super::cmsg_align(super::CMSG_HEADER + 4);
        // Cut anywhere before the end of the second message's data: the first still reads, the
        // second never (its padding may be missing: the last message needs none).
        for cut in first..first + super::CMSG_HEADER + 4 {
            let parsed = super::parse_control(&control[..cut]);
            assert_eq!(parsed.gro_segment, Some(1200), "cut at {cut}");
            assert_eq!(parsed.rx_dropped, None, "cut at {cut}");
        }
        assert_eq!(
            super::parse_control(&control[..control.len() - 4]).rx_dropped,
            Some(9)
        );
        // Cut inside the first (before the end of its data): nothing.
        for cut in 0..super::CMSG_HEADER + 4 {
            let parsed = super::parse_control(&control[..cut]);
            assert_eq!(parsed, super::RecvControl::default(), "cut at {cut}");
        }
    }

    #[test]
    fn parse_control_rejects_lengths_shorter_than_the_header_or_past_the_end() {
        for len in [0usize, 1, super::CMSG_HEADER - 1, 4096, usize::MAX] {
            let mut control = cmsg(super::SOL_UDP, super::UDP_GRO, &1200i32.to_ne_bytes());
            control[..super::CMSG_ALIGN].copy_from_slice(&len.to_ne_bytes());
            assert_eq!(
                super::parse_control(&control),
                super::RecvControl::default(),
                "cmsg_len {len}"
            );
        }
    }

    #[test]
    fn segment_control_is_one_udp_segment_message() {
        let bytes = super::segment_control(1200);
        let len = usize::from_ne_bytes(bytes[..super::CMSG_ALIGN].try_into().unwrap());
        assert_eq!(len, super::CMSG_HEADER + 2);
        let at = super::CMSG_ALIGN;
        assert_eq!(&bytes[at..at + 4], &super::SOL_UDP.to_ne_bytes());
        assert_eq!(&bytes[at + 4..at + 8], &super::UDP_SEGMENT.to_ne_bytes());
        let data = &bytes[super::CMSG_HEADER..super::CMSG_HEADER + 2];
        assert_eq!(data, &1200u16.to_ne_bytes());
    }
}
