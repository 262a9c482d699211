//! Declarations from `<openssl/params.h>` and `<openssl/crypto.h>` that `openssl-sys` lacks.

use libc::{c_char, size_t};
use openssl_sys::OSSL_PARAM;

extern "C" {
    /// `OSSL_PARAM_construct_utf8_string`: a parameter naming a UTF-8 string of `bsize` bytes
    /// (0: up to the terminating NUL), used to pass a KDF's digest name.
    pub fn OSSL_PARAM_construct_utf8_string(
        key: *const c_char,
        buf: *mut c_char,
        bsize: size_t,
    ) -> OSSL_PARAM;
}

extern "C" {
    /// `OPENSSL_cleanse` (`<openssl/crypto.h>`): overwrites `len` bytes at `ptr` with zeros in a
    /// way the compiler cannot elide, for key material.
    pub fn OPENSSL_cleanse(ptr: *mut libc::c_void, len: size_t);
}
