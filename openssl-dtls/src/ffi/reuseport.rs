//! Steering a `SO_REUSEPORT` group's datagrams by Connection ID: a classic BPF program attached
//! with `setsockopt(SO_ATTACH_REUSEPORT_CBPF)` that picks the socket (the shard) a `tls12_cid`
//! record goes to from the shard byte of its Connection ID, and leaves every other datagram to
//! the kernel's 4-tuple hash. See [`crate::driver::shards`] for the CID layout it reads.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `tls12_cid` (RFC 9146): the content type of a record that carries a Connection ID.
const TLS12_CID: u32 = 25;

/// Where a `tls12_cid` record's CID starts: content type (1), version (2), epoch (2), sequence
/// number (6).
pub(crate) const CID_OFFSET: usize = 11;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const BPF_LD: u16 = 0x00;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_LEN: u16 = 0x80;
const BPF_MOD: u16 = 0x90;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_K: u16 = 0x00;
const BPF_A: u16 = 0x10;

/// One classic BPF instruction (`struct sock_filter`).
fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The steering program for a group of `shards` sockets whose CIDs carry the shard index at
/// byte `shard_byte` of the CID. The program sees the UDP payload at offset 0 and returns the
/// index (in the order the sockets joined the group) of the socket that gets the datagram:
///
/// - a datagram whose first byte is 25 (`tls12_cid`) and that is long enough to hold the shard
///   byte: that byte modulo `shards`;
/// - anything else: `u32::MAX`, an index past the group, on which the kernel falls back to its
///   own 4-tuple hash — the same socket the group would pick without the program (this keeps
///   a peer's handshake on one shard, as plain `SO_REUSEPORT` does).
pub(crate) fn steering_program(shards: u32, shard_byte: usize) -> Vec<libc::sock_filter> {
    let at = (CID_OFFSET + shard_byte) as u32;
    vec![
        // A = datagram length; too short to hold the shard byte: the kernel's hash.
        insn(BPF_LD | BPF_W | BPF_LEN, 0, 0, 0),
        insn(BPF_JMP | BPF_JGE | BPF_K, 0, 5, at + 1),
        // A = content type; not tls12_cid: the kernel's hash.
        insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, 0),
        insn(BPF_JMP | BPF_JEQ | BPF_K, 0, 3, TLS12_CID),
        // A = shard byte % shards.
        insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, at),
        insn(BPF_ALU | BPF_MOD | BPF_K, 0, 0, shards.max(1)),
        insn(BPF_RET | BPF_A, 0, 0, 0),
        insn(BPF_RET | BPF_K, 0, 0, u32::MAX),
    ]
}

/// Attaches [`steering_program`]`(shards, shard_byte)` to the `SO_REUSEPORT` group of `socket`
/// (`setsockopt(SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF)`). Called on the group's first socket
/// before it is bound, so the program is in place before any datagram arrives; the sockets
/// that join later share it. Fails on kernels without it (before Linux 4.5) or where a
/// sandbox forbids it.
#[doc(alias = "SO_ATTACH_REUSEPORT_CBPF")]
pub(crate) fn attach_cid_steering(
    socket: BorrowedFd<'_>,
    shards: u32,
    shard_byte: usize,
) -> io::Result<()> {
    let mut program = steering_program(shards, shard_byte);
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, `len` valid instructions that outlive the call (the
    // kernel copies them); `socket` is an open descriptor borrowed for the call; the option
    // length is that of `sock_fprog`.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsFd;
    use std::time::Duration;

    use socket2::{Domain, Protocol, Socket, Type};

    /// A group of `n` reuse-port sockets on one loopback port, the steering program attached
    /// to the first before it was bound.
    fn group(n: u32, shard_byte: usize) -> Vec<UdpSocket> {
        let mut sockets = Vec::new();
        let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for i in 0..n {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            s.set_reuse_port(true).unwrap();
            if i == 0 {
                super::attach_cid_steering(s.as_fd(), n, shard_byte).unwrap();
            }
            s.bind(&addr.into()).unwrap();
            let s: UdpSocket = s.into();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            addr = s.local_addr().unwrap();
            sockets.push(s);
        }
        sockets
    }

    #[test]
    fn cid_records_go_to_the_shard_their_cid_names() {
        let sockets = group(4, 1);
        let to = sockets[0].local_addr().unwrap();
        // Several senders (different 4-tuples), each sending to every shard by CID.
        for _ in 0..4 {
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            for shard in 0..4u8 {
                let mut record = [0u8; 40];
                record[0] = 25;
                record[super::CID_OFFSET] = 0xAA; // the prefix
                record[super::CID_OFFSET + 1] = shard;
                client.send_to(&record, to).unwrap();
                let mut buf = [0u8; 64];
                let (n, _) = sockets[usize::from(shard)].recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], &record[..]);
            }
        }
    }

    #[test]
    fn other_datagrams_keep_the_kernel_hash() {
        let sockets = group(2, 1);
        let to = sockets[0].local_addr().unwrap();
        for s in &sockets {
            s.set_nonblocking(true).unwrap();
        }
        // A handshake record (22) and a short CID record: each sender's datagrams all land on
        // one socket, whichever the hash picks.
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for payload in [&[22u8; 40][..], &[25u8; 5][..], &[22u8; 40][..]] {
            client.send_to(payload, to).unwrap();
        }
        let mut got = [0usize; 2];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.iter().sum::<usize>() < 3 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "only {got:?} arrived");
            crate::ffi::os::wait_readable([sockets[0].as_fd(), sockets[1].as_fd()], Some(left))
                .unwrap();
            for (i, s) in sockets.iter().enumerate() {
                let mut buf = [0u8; 64];
                while s.recv_from(&mut buf).is_ok() {
                    got[i] += 1;
                }
            }
        }
        assert!(got == [3, 0] || got == [0, 3], "{got:?}");
    }

    /// Runs a classic BPF program as the kernel does (only the opcodes the steering program
    /// uses): what index it returns for the datagram `pkt`.
    fn interpret(prog: &[libc::sock_filter], pkt: &[u8]) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                0x80 => a = pkt.len() as u32, // LD W LEN
                0x30 => match pkt.get(i.k as usize) {
                    Some(&b) => a = b.into(), // LD B ABS
                    None => return 0,         // the kernel ends the program on a miss
                },
                0x35 => pc += usize::from(if a >= i.k { i.jt } else { i.jf }), // JGE K
                0x15 => pc += usize::from(if a == i.k { i.jt } else { i.jf }), // JEQ K
                0x94 => a %= i.k,                                              // ALU MOD K
                0x16 => return a,                                              // RET A
                0x06 => return i.k,                                            // RET K
                c => panic!("opcode {c:#x} not interpreted"),
            }
        }
    }

    #[test]
    fn the_program_returns_the_shard_byte_for_cid_records_and_past_the_group_otherwise() {
        let prog = super::steering_program(64, 1);
        let at = super::CID_OFFSET + 1;
        // Every other content type, any length: an index past the group (the kernel's hash).
        for content_type in [20u8, 21, 22, 23, 24, 0, 255] {
            for len in [1, at, at + 1, 60] {
                let mut d = vec![0u8; len];
                d[0] = content_type;
                assert_eq!(
                    interpret(&prog, &d),
                    u32::MAX,
                    "type {content_type} len {len}"
                );
            }
        }
        // A CID record too short to hold the shard byte: the hash too.
        for len in [1, 5, at] {
            assert_eq!(interpret(&prog, &vec![25u8; len]), u32::MAX, "len {len}");
        }
        // Long enough: the shard byte, modulo the group's size.
        let mut cid = [0u8; 40];
        cid[0] = 25;
        cid[at] = 7;
        assert_eq!(interpret(&prog, &cid[..at + 1]), 7);
        assert_eq!(interpret(&prog, &cid), 7);
        cid[at] = 200;
        assert_eq!(interpret(&prog, &cid), 200 % 64);
    }

    /// More shards than the largest content type: records without a CID must still spread by
    /// the 4-tuple hash (an off-by-one jump once sent every handshake record to socket 22).
    #[test]
    fn other_datagrams_spread_over_a_group_larger_than_any_content_type() {
        let sockets = group(24, 1);
        let to = sockets[0].local_addr().unwrap();
        for s in &sockets {
            s.set_nonblocking(true).unwrap();
        }
        let senders = 64;
        for _ in 0..senders {
            let client = UdpSocket::bind("127.0.0.1:0").unwrap();
            client.send_to(&[22u8; 60], to).unwrap();
        }
        let mut got = vec![0usize; sockets.len()];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while got.iter().sum::<usize>() < senders && std::time::Instant::now() < deadline {
            for (i, s) in sockets.iter().enumerate() {
                let mut buf = [0u8; 64];
                while s.recv_from(&mut buf).is_ok() {
                    got[i] += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got.iter().sum::<usize>(), senders, "{got:?}");
        // 64 senders hashed over 24 sockets: many sockets get some (all on one: the bug).
        assert!(got.iter().filter(|&&n| n > 0).count() > 4, "{got:?}");
    }
}
