//! The FFI edge: every call into OpenSSL (or the OS) that needs `unsafe`, wrapped once in a safe
//! function with a `// SAFETY:` note, in the style of rust-openssl's `cvt`. The rest of the crate
//! is safe code; the raw declarations themselves live in the `openssl-dtls-sys` crate.
//!
//! | module | wraps |
//! |---|---|
//! | [`bio`] | our datagram `BIO_METHOD` and the state behind it |
//! | [`ctx`] | `SSL_CTX` settings and callbacks rust-openssl lacks |
//! | [`evp`] | the AEAD ciphers, key derivation and cleansing of the compact record layer |
//! | [`listen`] | `DTLSv1_listen` and `BIO_ADDR` |
//! | [`os`] | `poll(2)`, a one-shot `timerfd` and `SO_MEMINFO` for the blocking driver, `dup3(2)`, the datagram batches (`recvmmsg`/`sendmmsg`, GRO, GSO, `SO_RXQ_OVFL`) |
//! | [`reuseport`] | `SO_ATTACH_REUSEPORT_CBPF`: steering a shard group by Connection ID |
//! | [`ssl`] | the `SSL` calls of a session (handshake, read, write, shutdown, timers, state) |

pub(crate) mod bio;
pub(crate) mod ctx;
pub(crate) mod evp;
pub(crate) mod listen;
pub(crate) mod os;
pub(crate) mod reuseport;
pub(crate) mod ssl;
