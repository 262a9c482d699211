//! Section `record`: the compact record layer against the cipher under it (issue 22).
//!
//! * `rec_<suite>_<size>` (`gcm`, `ccm8`, `chacha`; 1,200 and 100 bytes): sealed-and-opened
//!   record pairs per CPU second through `openssl_dtls::__bench::RecordPair` (two `RecordLayer`s
//!   on one key block: header, nonce, additional data, replay window, the per-thread context
//!   cache), next to the raw AEAD limit: the same cipher on preset keys through OpenSSL's
//!   leanest EVP sequence, called directly (`EVP_CipherInit_ex` with the nonce, the 13 bytes of
//!   additional data, the data in place, `EVP_CipherFinal` (`_ex` in 3.x), the tag by
//!   `EVP_CIPHER_CTX_ctrl`), seal then open, the same sizes, no record logic at all.
//! * `rec_gcm_1200_vs_openssl`: the same compact GCM pairs next to OpenSSL's own record layer:
//!   two raw `SSL`s (ECDHE-ECDSA-AES128-GCM-SHA256, handshaken in memory) with one `SSL_write`
//!   and one `SSL_read` of 1,200 bytes per pair over the bench's in-memory datagram pipe.
//! * `rec_gcm_1200_cid` (context, not an aim): GCM with an 8-byte Connection ID (`tls12_cid`
//!   records) next to the raw limit.
//!
//! Sizes: `BENCH_REC_RAW_N` pairs per measurement (default 300,000), `BENCH_REC_REPS` rounds
//! (best kept, default 3).

use std::ptr;

use openssl_dtls::__bench::RecordPair;
use openssl_sys as ffi;

use super::{
    ecdsa_cert, env_usize, raw_contexts, raw_side, step, thread_cpu, Queue, Side, Table, ECDSA,
};

/// The suites of the rows: key prefix, an OpenSSL suite name of that AEAD, its cipher, tag
/// length and whether it is CCM.
const SUITES: [(&str, &str); 3] = [
    ("gcm", "PSK-AES128-GCM-SHA256"),
    ("ccm8", "PSK-AES128-CCM8"),
    ("chacha", "PSK-CHACHA20-POLY1305"),
];

pub(super) fn section(t: &mut Table) {
    let n = env_usize("BENCH_REC_RAW_N", 300_000).max(1);
    let reps = env_usize("BENCH_REC_REPS", 3).max(1);
    let best = |f: &mut dyn FnMut() -> f64| (0..reps).map(|_| f()).fold(0.0, f64::max);
    if std::env::var("BENCH_REC_EXP").is_ok() {
        for size in [1200usize, 100] {
            for _ in 0..3 {
                let g = raw_aead_pairs("gcm", size, n);
                let tls = raw_tls_gcm_pairs(size, n);
                println!(
                    "EXP {size}: generic {g:.0} tls {tls:.0} ratio {:.2}",
                    tls / g
                );
            }
        }
        return;
    }
    for size in [1200usize, 100] {
        for (key, suite) in SUITES {
            let ours = best(&mut || compact_pairs(suite, &[], size, n));
            let raw = best(&mut || raw_aead_pairs(key, size, n));
            t.keyed_row(
                &format!("rec_{key}_{size}"),
                &format!("{key} {size} B records: compact seal+open pairs/CPU s vs raw AEAD"),
                ours,
                raw,
                "pairs/s",
                true,
            );
        }
    }
    let cid = best(&mut || compact_pairs(SUITES[0].1, &[0xc1; 8], 1200, n));
    let raw = best(&mut || raw_aead_pairs("gcm", 1200, n));
    t.keyed_row(
        "rec_gcm_1200_cid",
        "gcm 1200 B records with an 8-byte CID: compact pairs/CPU s vs raw AEAD",
        cid,
        raw,
        "pairs/s",
        true,
    );
    let ours = best(&mut || compact_pairs(SUITES[0].1, &[], 1200, n));
    let ossl = best(&mut || openssl_pairs(1200, n / 2));
    t.keyed_row(
        "rec_gcm_1200_vs_openssl",
        "gcm 1200 B records: compact pairs/CPU s vs OpenSSL's record layer (SSL_write+SSL_read)",
        ours,
        ossl,
        "pairs/s",
        true,
    );
}

/// Seal+open pairs per thread-CPU second through the compact record layer, after a warm-up.
fn compact_pairs(suite: &str, cid: &[u8], size: usize, n: usize) -> f64 {
    let mut pair = RecordPair::new(suite, cid).expect("a compact suite");
    let msg = vec![0x5au8; size];
    let mut wire = Vec::with_capacity(size + 64);
    let mut plain = Vec::with_capacity(size + 64);
    let mut one = |pair: &mut RecordPair| {
        wire.clear();
        assert!(pair.seal(&msg, &mut wire), "seal");
        assert!(pair.open(&wire, &mut plain), "open");
        debug_assert_eq!(plain.len(), size);
    };
    for _ in 0..1000 {
        one(&mut pair);
    }
    let t0 = thread_cpu();
    for _ in 0..n {
        one(&mut pair);
    }
    n as f64 / (thread_cpu() - t0).as_secs_f64()
}

/// A keyed `EVP_CIPHER_CTX`, freed on drop.
struct Ctx(*mut ffi::EVP_CIPHER_CTX);

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: from EVP_CIPHER_CTX_new, freed only here.
        unsafe { ffi::EVP_CIPHER_CTX_free(self.0) }
    }
}

/// A context of `key`'s cipher keyed for `enc` with a 12-byte nonce (and, for CCM-8, an 8-byte
/// tag).
fn raw_ctx(key: &str, enc: bool) -> Ctx {
    // SAFETY: plain EVP calls on a context this function owns; every pointer is live for the
    // call. Failures panic (a benchmark set-up error).
    unsafe {
        let ctx = Ctx(ffi::EVP_CIPHER_CTX_new());
        assert!(!ctx.0.is_null());
        let cipher = match key {
            "gcm" => ffi::EVP_aes_128_gcm(),
            "ccm8" => ffi::EVP_aes_128_ccm(),
            _ => ffi::EVP_chacha20_poly1305(),
        };
        let e = i32::from(enc);
        assert_eq!(
            ffi::EVP_CipherInit_ex(ctx.0, cipher, ptr::null_mut(), ptr::null(), ptr::null(), e),
            1
        );
        assert_eq!(
            ffi::EVP_CIPHER_CTX_ctrl(ctx.0, ffi::EVP_CTRL_GCM_SET_IVLEN, 12, ptr::null_mut()),
            1
        );
        if key == "ccm8" {
            assert_eq!(
                ffi::EVP_CIPHER_CTX_ctrl(ctx.0, ffi::EVP_CTRL_GCM_SET_TAG, 8, ptr::null_mut()),
                1
            );
        }
        let k = [0x42u8; 32];
        assert_eq!(
            ffi::EVP_CipherInit_ex(
                ctx.0,
                ptr::null(),
                ptr::null_mut(),
                k.as_ptr(),
                ptr::null(),
                e
            ),
            1
        );
        ctx
    }
}

/// Seal+open pairs per thread-CPU second of the bare AEAD (see the module docs).
fn raw_aead_pairs(key: &str, size: usize, n: usize) -> f64 {
    let ccm = key == "ccm8";
    let tag_len = if ccm { 8 } else { 16 };
    let seal = raw_ctx(key, true);
    let open = raw_ctx(key, false);
    let mut buf = vec![0x5au8; size];
    let mut tag = [0u8; 16];
    let mut nonce = [7u8; 12];
    let aad = [1u8; 13];
    let mut one = |i: u64| {
        nonce[4..].copy_from_slice(&i.to_be_bytes());
        let mut outl = 0;
        // SAFETY: live contexts keyed above; `buf`, `aad`, `nonce` and `tag` outlive each call,
        // with the lengths given; the data is transformed in place, which EVP allows.
        unsafe {
            for (ctx, enc) in [(&seal, true), (&open, false)] {
                let c = ctx.0;
                let e = i32::from(enc);
                let ok = ffi::EVP_CipherInit_ex(
                    c,
                    ptr::null(),
                    ptr::null_mut(),
                    ptr::null(),
                    nonce.as_ptr(),
                    e,
                ) == 1
                    && (enc
                        || ffi::EVP_CIPHER_CTX_ctrl(
                            c,
                            ffi::EVP_CTRL_GCM_SET_TAG,
                            tag_len,
                            tag.as_mut_ptr().cast(),
                        ) == 1)
                    && (!ccm
                        || ffi::EVP_CipherUpdate(
                            c,
                            ptr::null_mut(),
                            &mut outl,
                            ptr::null(),
                            size as i32,
                        ) == 1)
                    && ffi::EVP_CipherUpdate(c, ptr::null_mut(), &mut outl, aad.as_ptr(), 13) == 1
                    && ffi::EVP_CipherUpdate(
                        c,
                        buf.as_mut_ptr(),
                        &mut outl,
                        buf.as_ptr(),
                        size as i32,
                    ) == 1
                    && ffi::EVP_CipherFinal(c, buf.as_mut_ptr().add(size), &mut outl) == 1
                    && (!enc
                        || ffi::EVP_CIPHER_CTX_ctrl(
                            c,
                            ffi::EVP_CTRL_GCM_GET_TAG,
                            tag_len,
                            tag.as_mut_ptr().cast(),
                        ) == 1);
                assert!(ok, "raw AEAD {key} enc={enc}");
            }
        }
    };
    for i in 0..1000 {
        one(i);
    }
    let t0 = thread_cpu();
    for i in 0..n as u64 {
        one(1000 + i);
    }
    let rate = n as f64 / (thread_cpu() - t0).as_secs_f64();
    assert!(buf.iter().all(|&b| b == 0x5a), "raw AEAD round trip");
    rate
}

/// `SSL_write` + `SSL_read` pairs per thread-CPU second of two raw OpenSSL `SSL`s (AES-128-GCM)
/// over the in-memory datagram pipe, after a warm-up.
fn openssl_pairs(size: usize, n: usize) -> f64 {
    use std::io::{Read, Write};
    let cert = ecdsa_cert();
    let (cctx, sctx) = raw_contexts(ECDSA, &cert);
    let (a, b) = (Queue::default(), Queue::default());
    let mut client = raw_side(&cctx, &a, &b);
    let mut server = raw_side(&sctx, &b, &a);
    for _ in 0..50 {
        client = step(client, false);
        server = step(server, true);
        if matches!((&client, &server), (Side::Done(_), Side::Done(_))) {
            break;
        }
    }
    let (Side::Done(mut c), Side::Done(mut s)) = (client, server) else {
        panic!("raw handshake did not finish");
    };
    let msg = vec![0x5au8; size];
    let mut buf = vec![0u8; 2048];
    let mut one = || {
        assert_eq!(c.write(&msg).expect("SSL_write"), size);
        assert_eq!(s.read(&mut buf).expect("SSL_read"), size);
    };
    for _ in 0..1000 {
        one();
    }
    let t0 = thread_cpu();
    for _ in 0..n {
        one();
    }
    n as f64 / (thread_cpu() - t0).as_secs_f64()
}

extern "C" {
    fn EVP_CIPHER_CTX_set_params(
        ctx: *mut ffi::EVP_CIPHER_CTX,
        params: *const ffi::OSSL_PARAM,
    ) -> i32;
    fn EVP_Cipher(ctx: *mut ffi::EVP_CIPHER_CTX, out: *mut u8, inp: *const u8, len: u32) -> i32;
}

/// Experiment: GCM through the TLS one-shot AEAD (`OSSL_CIPHER_PARAM_AEAD_TLS1_AAD` +
/// `EVP_Cipher` in place), seal then open, with the copies an immutable received record forces.
pub(super) fn raw_tls_gcm_pairs(size: usize, n: usize) -> f64 {
    let seal = raw_ctx("gcm", true);
    let open = raw_ctx("gcm", false);
    let msg = vec![0x5au8; size];
    let mut rec = vec![0u8; size + 24];
    let mut buf = Vec::with_capacity(size + 24);
    let mut out = Vec::with_capacity(size + 24);
    let mut nonce = [7u8; 12];
    let mut one = |i: u64| unsafe {
        nonce[4..].copy_from_slice(&i.to_be_bytes());
        let mut aad = [1u8; 13];
        aad[11..13].copy_from_slice(&((size + 8) as u16).to_be_bytes());
        rec[8..8 + size].copy_from_slice(&msg);
        let p = [
            ffi::OSSL_PARAM_construct_octet_string(c"tlsaad".as_ptr(), aad.as_mut_ptr().cast(), 13),
            ffi::OSSL_PARAM_construct_octet_string(
                c"tlsivfixed".as_ptr(),
                nonce.as_mut_ptr().cast(),
                usize::MAX,
            ),
            ffi::OSSL_PARAM_construct_end(),
        ];
        assert_eq!(EVP_CIPHER_CTX_set_params(seal.0, p.as_ptr()), 1);
        let r = EVP_Cipher(seal.0, rec.as_mut_ptr(), rec.as_ptr(), (size + 24) as u32);
        assert_eq!(r as usize, size + 24);
        // open: copy the fragment, decrypt in place, move the plaintext to the front
        buf.clear();
        buf.extend_from_slice(&rec);
        let mut aad = [1u8; 13];
        aad[11..13].copy_from_slice(&((size + 24) as u16).to_be_bytes());
        let p = [
            ffi::OSSL_PARAM_construct_octet_string(c"tlsaad".as_ptr(), aad.as_mut_ptr().cast(), 13),
            ffi::OSSL_PARAM_construct_octet_string(
                c"tlsivfixed".as_ptr(),
                nonce.as_mut_ptr().cast(),
                usize::MAX,
            ),
            ffi::OSSL_PARAM_construct_end(),
        ];
        assert_eq!(EVP_CIPHER_CTX_set_params(open.0, p.as_ptr()), 1);
        let r = EVP_Cipher(open.0, buf.as_mut_ptr(), buf.as_ptr(), (size + 24) as u32);
        assert!(r > 0);
        out.clear();
        out.extend_from_slice(&buf[8..8 + size]);
    };
    for i in 0..1000 {
        one(i);
    }
    let t0 = thread_cpu();
    for i in 0..n as u64 {
        one(1000 + i);
    }
    let rate = n as f64 / (thread_cpu() - t0).as_secs_f64();
    assert_eq!(out, msg);
    rate
}
