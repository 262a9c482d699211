//! PSK contexts with Connection IDs for the CID tests (tests/cid.rs, tests/cid_udp.rs).

use openssl_dtls::{DtlsClientContext, DtlsServerContext, PskCredentials};

/// The pre-shared key of the CID tests (identity `device`).
pub const KEY: &[u8] = b"0123456789abcdef";

/// A PSK server context issuing `cid_len`-byte CIDs (0: off) on `cipher`.
pub fn server_ctx(cid_len: u8, cipher: &str) -> DtlsServerContext {
    let mut b = DtlsServerContext::builder();
    b.psk_key_store(|_: &[u8]| Some(KEY.to_vec()))
        .ciphers(cipher)
        .connection_id(cid_len);
    b.build().unwrap()
}

/// A PSK client context offering a CID of that length (`None`: not offering) on `cipher`.
pub fn client_ctx(cid: Option<u8>, cipher: &str) -> DtlsClientContext {
    let mut b = DtlsClientContext::builder();
    b.psk_credentials(PskCredentials::new(b"device".to_vec(), KEY.to_vec()))
        .ciphers(cipher);
    if let Some(len) = cid {
        b.connection_id(len);
    }
    b.build().unwrap()
}
