//! The cookie verifier on arbitrary peers, clocks and cookies: only the cookie made for that
//! peer verifies, within its lifetime.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    openssl_dtls_fuzz::cookie_verifier(data);
});
