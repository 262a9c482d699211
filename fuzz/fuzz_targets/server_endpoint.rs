//! A server endpoint fed arbitrary (peer, datagram) sequences, mixed with a real client's
//! handshake and mutations of it: before a cookie, never more bytes out than in; sessions within
//! the limits.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    openssl_dtls_fuzz::server_endpoint(data);
});
