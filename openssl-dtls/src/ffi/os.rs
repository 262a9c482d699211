//! `poll(2)` and a one-shot `timerfd`, for the blocking driver's waits: the calls into the OS
//! that need `unsafe` (sockets themselves go through `std` and `socket2`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

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
}
