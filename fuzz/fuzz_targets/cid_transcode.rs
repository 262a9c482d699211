//! The record layer's CID paths under fixed keys: seal/open of tls12_cid records, transcoding
//! both ways (transcode_outbound, transcode_inbound) on sealed and arbitrary records; round trips
//! hold, and whatever authenticates is exactly what the sealer makes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    openssl_dtls_fuzz::cid_transcode(data);
});
