//! The tls12_cid parser (`wire::parse_cid`) on arbitrary datagrams and CID lengths, its record
//! views checked against the bytes; the same bytes at a server Endpoint with 6-byte CIDs: never
//! a panic, never state or amplification before a cookie, every datagram counted.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    openssl_dtls_fuzz::cid_record_parser(data);
});
