//! A server session fed arbitrary datagrams, mixed with a real client's handshake and
//! mutations of it: never panics, never emits a datagram over the MTU, errors stay sticky.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    openssl_dtls_fuzz::server_session(data);
});
