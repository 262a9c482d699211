//! `poll(2)`, for the blocking driver's wait: the one call into the OS that needs `unsafe`
//! (sockets themselves go through `std` and `socket2`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
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
