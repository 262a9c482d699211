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
mod ssl;

pub use crate::bio::*;
pub use crate::ssl::*;

/// `struct timeval` as OpenSSL's DTLS timer functions fill it.
pub use libc::timeval;
