//! The UDP socket under a driver: [`SocketOptions`] and opening a non-blocking socket with them
//! (socket2), for the blocking and the tokio driver alike.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::AsFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, Result};
use crate::ffi::os;
use crate::ffi::reuseport;

/// Socket options for a server or client socket.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketOptions {
    /// `SO_RCVBUF` in bytes. Default 4 MiB: the kernel default (≈ 208 KB) drops 9–13% of
    /// datagrams at full rate on loopback; a few MB drop none. The kernel may cap it
    /// (`net.core.rmem_max`).
    pub recv_buffer_size: Option<usize>,
    /// `SO_SNDBUF` in bytes. Default 1 MiB.
    pub send_buffer_size: Option<usize>,
    /// `SO_REUSEPORT`, for several sockets (processes, threads) on one port. Default off.
    pub reuse_port: bool,
    /// For an IPv6 address: accept IPv4 too (`IPV6_V6ONLY` off). Default true.
    pub dual_stack: bool,
    /// Datagrams read per driver turn before timers and output get their turn. Default 64.
    /// They are read in batches (`recvmmsg(2)` on Linux, up to 16 datagrams or GRO trains per
    /// call; one per call on other systems).
    pub batch: usize,
    /// Endpoint shards of a server: this many full drivers (each its own endpoint, socket and
    /// driver thread or task) on `SO_REUSEPORT` sockets bound to one address, sharing the
    /// cookie secret, the limits and one accept queue; 0: one per core
    /// (`std::thread::available_parallelism`). Default 1, today's one driver: a socket group
    /// on a fixed port can be joined by any other socket of the same user that sets
    /// `SO_REUSEPORT`, so more than one is asked for, not assumed. With Connection IDs it needs
    /// `SO_ATTACH_REUSEPORT_CBPF` (Linux ≥ 4.5) and one more CID byte; see the
    /// [scaling model](crate::DtlsServer#shards). Ignored by clients.
    pub shards: usize,
    /// The CID steering program the group's first socket gets before it is bound (set by the
    /// sharded server, never by the application).
    pub(crate) cid_steering: Option<CidSteering>,
    /// UDP generic segmentation offload on send (`UDP_SEGMENT`, Linux 4.18): a run of
    /// equal-size datagrams to one peer (the last may be shorter) leaves in one `sendmmsg(2)`
    /// message, which the kernel (or the network card) cuts into datagrams. Where the kernel
    /// or the device refuses it (`EINVAL`, `EIO`, `ENOPROTOOPT`), the driver turns it off for
    /// the socket and sends one datagram per message. Default on; off on systems other than
    /// Linux. Datagrams on the wire are the same either way.
    pub gso: bool,
    /// UDP generic receive offload (`UDP_GRO` socket option, Linux 5.0): the kernel may hand
    /// several datagrams of one flow over as one buffer, which the driver splits by the
    /// segment size the kernel gives (`UDP_GRO` control message), each datagram handled on its
    /// own. Fewer, larger reads at high rates. Default on; ignored where the kernel lacks it.
    pub gro: bool,
}

/// What a shard group's CID steering program needs ([`crate::ffi::reuseport`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CidSteering {
    /// Sockets in the group.
    pub shards: u32,
    /// The byte of the CID that holds the shard index (the prefix's length).
    pub shard_byte: usize,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            recv_buffer_size: Some(4 << 20),
            send_buffer_size: Some(1 << 20),
            reuse_port: false,
            dual_stack: true,
            batch: 64,
            shards: 1,
            cid_steering: None,
            gso: os::GSO_AVAILABLE,
            gro: true,
        }
    }
}

/// Opens a non-blocking UDP socket on `addr` with `options` (socket2).
fn open_socket(addr: SocketAddr, options: &SocketOptions) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Only meaningful for the unspecified address; harmless otherwise.
        let _ = socket.set_only_v6(!options.dual_stack);
    }
    if options.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if let Some(size) = options.recv_buffer_size {
        if let Err(e) = socket.set_recv_buffer_size(size) {
            log::warn!("cannot set SO_RCVBUF to {size}: {e}");
        }
    }
    if let Some(size) = options.send_buffer_size {
        if let Err(e) = socket.set_send_buffer_size(size) {
            log::warn!("cannot set SO_SNDBUF to {size}: {e}");
        }
    }
    if let Some(steering) = options.cid_steering {
        reuseport::attach_cid_steering(socket.as_fd(), steering.shards, steering.shard_byte)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot attach the Connection ID steering program to the shards' \
                         sockets (SO_ATTACH_REUSEPORT_CBPF, Linux 4.5 and later): {e}; \
                         use one shard, or no Connection IDs"
                    ),
                )
            })?;
    }
    // The socket's drop counter on received datagrams, for `EndpointStats::socket_rx_dropped`.
    if let Err(e) = os::enable_rx_drop_counter(socket.as_fd()) {
        log::debug!("cannot set SO_RXQ_OVFL: {e}");
    }
    if options.gro {
        if let Err(e) = os::enable_gro(socket.as_fd()) {
            log::debug!("cannot set UDP_GRO: {e}");
        }
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Opens a socket on the first of `addrs` that binds ([`Error::Bind`] for the last that did
/// not; an [`Error::Io`] of kind `InvalidInput` if there are none).
pub(crate) fn bind(
    addrs: impl IntoIterator<Item = SocketAddr>,
    options: &SocketOptions,
) -> Result<UdpSocket> {
    let mut last_error = None;
    for addr in addrs {
        match open_socket(addr, options) {
            Ok(socket) => return Ok(socket),
            Err(source) => last_error = Some(Error::Bind { addr, source }),
        }
    }
    Err(last_error.unwrap_or_else(resolved_to_nothing))
}

/// The first address `addr` resolves to (blocking resolution).
pub(crate) fn first_addr(addr: impl ToSocketAddrs) -> Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(resolved_to_nothing)
}

fn resolved_to_nothing() -> Error {
    Error::Io(io::Error::new(
        io::ErrorKind::InvalidInput,
        "the address resolved to nothing",
    ))
}
