//! Declarations from `<openssl/bio.h>`: `BIO_ADDR` and the datagram `BIO_ctrl` commands.

use libc::{c_int, c_ushort, c_void, size_t};

/// `BIO_ADDR`, OpenSSL's socket-address union (opaque; only handled through pointers).
#[allow(missing_debug_implementations)]
pub enum BIO_ADDR {}

/// `BIO_TYPE_SOURCE_SINK`: flag for BIO types that are the end of a chain.
pub const BIO_TYPE_SOURCE_SINK: c_int = 0x0400;

/// `BIO_CTRL_RESET`.
pub const BIO_CTRL_RESET: c_int = 1;
/// `BIO_CTRL_EOF`.
pub const BIO_CTRL_EOF: c_int = 2;
/// `BIO_CTRL_PUSH`.
pub const BIO_CTRL_PUSH: c_int = 6;
/// `BIO_CTRL_POP`.
pub const BIO_CTRL_POP: c_int = 7;
/// `BIO_CTRL_GET_CLOSE`.
pub const BIO_CTRL_GET_CLOSE: c_int = 8;
/// `BIO_CTRL_SET_CLOSE`.
pub const BIO_CTRL_SET_CLOSE: c_int = 9;
/// `BIO_CTRL_PENDING`: bytes waiting to be read.
pub const BIO_CTRL_PENDING: c_int = 10;
/// `BIO_CTRL_FLUSH`.
pub const BIO_CTRL_FLUSH: c_int = 11;
/// `BIO_CTRL_DUP`.
pub const BIO_CTRL_DUP: c_int = 12;
/// `BIO_CTRL_WPENDING`: bytes waiting to be written.
pub const BIO_CTRL_WPENDING: c_int = 13;
/// `BIO_CTRL_DGRAM_CONNECT`.
pub const BIO_CTRL_DGRAM_CONNECT: c_int = 31;
/// `BIO_CTRL_DGRAM_SET_CONNECTED`.
pub const BIO_CTRL_DGRAM_SET_CONNECTED: c_int = 32;
/// `BIO_CTRL_DGRAM_GET_RECV_TIMER_EXP`.
pub const BIO_CTRL_DGRAM_GET_RECV_TIMER_EXP: c_int = 37;
/// `BIO_CTRL_DGRAM_GET_SEND_TIMER_EXP`.
pub const BIO_CTRL_DGRAM_GET_SEND_TIMER_EXP: c_int = 38;
/// `BIO_CTRL_DGRAM_MTU_DISCOVER`.
pub const BIO_CTRL_DGRAM_MTU_DISCOVER: c_int = 39;
/// `BIO_CTRL_DGRAM_QUERY_MTU`: ask the transport for the path MTU.
pub const BIO_CTRL_DGRAM_QUERY_MTU: c_int = 40;
/// `BIO_CTRL_DGRAM_GET_MTU`.
pub const BIO_CTRL_DGRAM_GET_MTU: c_int = 41;
/// `BIO_CTRL_DGRAM_SET_MTU`.
pub const BIO_CTRL_DGRAM_SET_MTU: c_int = 42;
/// `BIO_CTRL_DGRAM_MTU_EXCEEDED`: did the last write fail because it was too large?
pub const BIO_CTRL_DGRAM_MTU_EXCEEDED: c_int = 43;
/// `BIO_CTRL_DGRAM_SET_PEER`.
pub const BIO_CTRL_DGRAM_SET_PEER: c_int = 44;
/// `BIO_CTRL_DGRAM_SET_NEXT_TIMEOUT`: OpenSSL tells the BIO its next retransmission deadline.
pub const BIO_CTRL_DGRAM_SET_NEXT_TIMEOUT: c_int = 45;
/// `BIO_CTRL_DGRAM_GET_PEER`.
pub const BIO_CTRL_DGRAM_GET_PEER: c_int = 46;
/// `BIO_CTRL_DGRAM_GET_FALLBACK_MTU`.
pub const BIO_CTRL_DGRAM_GET_FALLBACK_MTU: c_int = 47;
/// `BIO_CTRL_DGRAM_SET_DONT_FRAG`.
pub const BIO_CTRL_DGRAM_SET_DONT_FRAG: c_int = 48;
/// `BIO_CTRL_DGRAM_GET_MTU_OVERHEAD`: bytes of transport header inside the link MTU.
pub const BIO_CTRL_DGRAM_GET_MTU_OVERHEAD: c_int = 49;
/// `BIO_CTRL_DGRAM_SET_PEEK_MODE`.
pub const BIO_CTRL_DGRAM_SET_PEEK_MODE: c_int = 71;

extern "C" {
    /// [`BIO_get_new_index`](https://www.openssl.org/docs/man3.0/man3/BIO_get_new_index.html):
    /// a fresh BIO type number for a custom `BIO_METHOD`.
    pub fn BIO_get_new_index() -> c_int;
    /// [`BIO_method_type`](https://www.openssl.org/docs/man3.0/man3/BIO_method_type.html): the
    /// type number of a BIO's method.
    pub fn BIO_method_type(b: *const openssl_sys::BIO) -> c_int;
    /// [`BIO_ADDR_new`](https://www.openssl.org/docs/man3.0/man3/BIO_ADDR_new.html)
    pub fn BIO_ADDR_new() -> *mut BIO_ADDR;
    /// `BIO_ADDR_free`
    pub fn BIO_ADDR_free(ap: *mut BIO_ADDR);
    /// `BIO_ADDR_clear`
    pub fn BIO_ADDR_clear(ap: *mut BIO_ADDR);
    /// `BIO_ADDR_rawmake`: fill `ap` from a raw address (network order) and port (network order).
    pub fn BIO_ADDR_rawmake(
        ap: *mut BIO_ADDR,
        family: c_int,
        where_: *const c_void,
        wherelen: size_t,
        port: c_ushort,
    ) -> c_int;
    /// `BIO_ADDR_family`: `AF_INET`, `AF_INET6`, `AF_UNIX` or `AF_UNSPEC`.
    pub fn BIO_ADDR_family(ap: *const BIO_ADDR) -> c_int;
    /// `BIO_ADDR_rawaddress`: copy the raw address (network order) into `p`, length into `l`.
    pub fn BIO_ADDR_rawaddress(ap: *const BIO_ADDR, p: *mut c_void, l: *mut size_t) -> c_int;
    /// `BIO_ADDR_rawport`: the port, in network byte order.
    pub fn BIO_ADDR_rawport(ap: *const BIO_ADDR) -> c_ushort;
}
