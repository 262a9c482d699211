//! Raw FFI declarations for the DTLS parts of OpenSSL that [`openssl-sys`](openssl_sys) lacks.
//!
//! Everything here is a plain declaration of an OpenSSL 3.0+ symbol, laid out like `openssl-sys`:
//! one module per OpenSSL header, and Rust `unsafe fn`s standing in for C macros (for example
//! [`DTLSv1_get_timeout`] is `SSL_ctrl(ssl, DTLS_CTRL_GET_TIMEOUT, 0, tv)` in `<openssl/ssl.h>`).
//! Use the types of `openssl-sys` (`SSL`, `SSL_CTX`, `BIO`) with these functions.
//!
//! The safe API lives in the `openssl-dtls` crate.
#![allow(non_camel_case_types, non_snake_case)]
#![no_std]

mod bio;
mod params;
mod ssl;

pub use crate::bio::*;
pub use crate::params::*;
pub use crate::ssl::*;

/// The OpenSSL version this crate was built against (`OPENSSL_VERSION_NUMBER`, from
/// `openssl-sys`'s build script), or 0 if unknown. Version-dependent declarations follow it.
pub const OPENSSL_VERSION_NUMBER: u64 = match option_env!("OPENSSL_DTLS_SYS_VERSION_NUMBER") {
    Some(v) => parse_hex(v),
    None => 0,
};

const fn parse_hex(s: &str) -> u64 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v = 0u64;
    while i < b.len() {
        let d = match b[i] {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'a'..=b'f' => c - b'a' + 10,
            c @ b'A'..=b'F' => c - b'A' + 10,
            _ => return 0,
        };
        v = v * 16 + d as u64;
        i += 1;
    }
    v
}

/// `struct timeval` as OpenSSL's DTLS timer functions fill it.
pub use libc::timeval;
