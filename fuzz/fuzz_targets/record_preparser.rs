//! The record pre-parser (`wire::classify`) on arbitrary datagrams: never panics, and its
//! answers agree with each other and with the bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    openssl_dtls_fuzz::record_preparser(data);
});
