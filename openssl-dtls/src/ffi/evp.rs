//! The `EVP` calls of the compact record layer that rust-openssl does not wrap: the TLS 1.2 PRF
//! (OpenSSL's `TLS1-PRF` KDF) and the digest name it takes, clearing the error queue after an
//! expected tag failure, and `OPENSSL_cleanse` for key material. The AEAD cipher operations
//! themselves go through rust-openssl's safe [`CipherCtx`](openssl::cipher_ctx::CipherCtx).
//!
//! Each function here is safe to call; the `unsafe` it needs stays inside, with its reason.

use std::ffi::CStr;
use std::ptr;

use libc::c_int;
use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl_dtls_sys as dffi;
use openssl_sys as ffi;

/// `1` (success) to `Ok`, anything else to the error OpenSSL queued (rust-openssl's `cvt`).
fn cvt(r: c_int) -> Result<c_int, ErrorStack> {
    if r == 1 {
        Ok(r)
    } else {
        Err(ErrorStack::get())
    }
}

/// A non-null pointer to `Ok`, null to the error OpenSSL queued (rust-openssl's `cvt_p`).
fn cvt_p<T>(p: *mut T) -> Result<*mut T, ErrorStack> {
    if p.is_null() {
        Err(ErrorStack::get())
    } else {
        Ok(p)
    }
}

/// The short name OpenSSL's object table gives `nid` (`"SHA256"`), as the NUL-terminated string
/// a KDF's `digest` parameter takes; `None` if the table has none.
#[doc(alias = "OBJ_nid2sn")]
pub(crate) fn short_name(nid: Nid) -> Option<&'static CStr> {
    // SAFETY: OBJ_nid2sn takes any integer and returns a pointer into OpenSSL's static object
    // table, or null for an unknown nid; it neither allocates nor keeps anything.
    let name = unsafe { ffi::OBJ_nid2sn(nid.as_raw()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: non-null, so a NUL-terminated string in OpenSSL's static table, never freed or
    // modified for the life of the process.
    Some(unsafe { CStr::from_ptr(name) })
}

/// An owned `EVP_KDF` (an algorithm fetched from a provider), freed once on drop.
struct Kdf(*mut ffi::EVP_KDF);

impl Kdf {
    /// Fetches the KDF called `name` from the default library context.
    #[doc(alias = "EVP_KDF_fetch")]
    fn fetch(name: &CStr) -> Result<Kdf, ErrorStack> {
        // SAFETY: `name` is NUL-terminated and outlives the call; null library context and
        // property query mean the defaults. The result is owned by the returned `Kdf`.
        let kdf =
            cvt_p(unsafe { ffi::EVP_KDF_fetch(ptr::null_mut(), name.as_ptr(), ptr::null()) })?;
        Ok(Kdf(kdf))
    }
}

impl Drop for Kdf {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from EVP_KDF_fetch, is non-null and is freed only here.
        unsafe { ffi::EVP_KDF_free(self.0) }
    }
}

/// An owned `EVP_KDF_CTX`, freed once on drop.
struct KdfCtx(*mut ffi::EVP_KDF_CTX);

impl KdfCtx {
    /// A context for `kdf` (which takes its own reference: `kdf` may be dropped afterwards).
    #[doc(alias = "EVP_KDF_CTX_new")]
    fn new(kdf: &Kdf) -> Result<KdfCtx, ErrorStack> {
        // SAFETY: `kdf.0` is a live EVP_KDF; the new context holds its own reference to it. The
        // result is owned by the returned `KdfCtx`.
        let ctx = cvt_p(unsafe { ffi::EVP_KDF_CTX_new(kdf.0) })?;
        Ok(KdfCtx(ctx))
    }
}

impl Drop for KdfCtx {
    fn drop(&mut self) {
        // SAFETY: `self.0` came from EVP_KDF_CTX_new, is non-null and is freed only here.
        unsafe { ffi::EVP_KDF_CTX_free(self.0) }
    }
}

/// The TLS 1.2 PRF (RFC 5246 §5) over the digest named `digest`, by OpenSSL's `TLS1-PRF` KDF:
/// fills `out` from `secret` and `seed` (label ‖ seeds).
#[doc(alias = "EVP_KDF_derive")]
pub(crate) fn tls12_prf(
    digest: &CStr,
    secret: &[u8],
    seed: &[u8],
    out: &mut [u8],
) -> Result<(), ErrorStack> {
    let kdf = Kdf::fetch(c"TLS1-PRF")?;
    let ctx = KdfCtx::new(&kdf)?;
    drop(kdf);
    // SAFETY: the constructors only record the pointers and lengths given: each points to a
    // live buffer of that length (the digest name NUL-terminated, length 0 meaning up to the
    // NUL), borrowed for the whole of this function, which outlives `params`. OpenSSL only
    // reads through them although the C signatures take `*mut`.
    let params = unsafe {
        [
            dffi::OSSL_PARAM_construct_utf8_string(
                c"digest".as_ptr(),
                digest.as_ptr().cast_mut(),
                0,
            ),
            ffi::OSSL_PARAM_construct_octet_string(
                c"secret".as_ptr(),
                secret.as_ptr().cast_mut().cast(),
                secret.len(),
            ),
            ffi::OSSL_PARAM_construct_octet_string(
                c"seed".as_ptr(),
                seed.as_ptr().cast_mut().cast(),
                seed.len(),
            ),
            ffi::OSSL_PARAM_construct_end(),
        ]
    };
    // SAFETY: `ctx.0` is a live KDF context; `out` is writable for `out.len()` bytes; `params`
    // ends with the end marker and every buffer it names is live (see above).
    cvt(unsafe { ffi::EVP_KDF_derive(ctx.0, out.as_mut_ptr(), out.len(), params.as_ptr()) })?;
    Ok(())
}

/// Empties this thread's OpenSSL error queue, for failures that are expected input (a record
/// whose tag does not verify) rather than errors to report. Unlike `ErrorStack::get`, it keeps
/// nothing and allocates nothing.
#[doc(alias = "ERR_clear_error")]
pub(crate) fn clear_error() {
    // SAFETY: ERR_clear_error takes no arguments and only frees this thread's queued errors.
    unsafe { ffi::ERR_clear_error() }
}

/// Overwrites `buf` with zeros through `OPENSSL_cleanse`, a write the optimizer cannot remove as
/// a dead store.
#[doc(alias = "OPENSSL_cleanse")]
pub(crate) fn cleanse(buf: &mut [u8]) {
    if buf.is_empty() {
        return;
    }
    // SAFETY: `buf` is a live, writable slice of exactly `buf.len()` bytes; OPENSSL_cleanse
    // writes zeros to that range and nothing else.
    unsafe { dffi::OPENSSL_cleanse(buf.as_mut_ptr().cast(), buf.len()) }
}

/// Like [`cleanse`], over a SHA-256 state (the inner or outer hash of a keyed HMAC, which is key
/// material): it is left all zeros, a valid if meaningless `SHA256_CTX`.
#[doc(alias = "OPENSSL_cleanse")]
pub(crate) fn cleanse_sha256(state: &mut openssl::sha::Sha256) {
    // SAFETY: `Sha256` is a `SHA256_CTX` (plain integers: any bit pattern, zeros included, is a
    // valid value) borrowed mutably for the call; the range is exactly its size.
    unsafe {
        dffi::OPENSSL_cleanse(
            (state as *mut openssl::sha::Sha256).cast(),
            std::mem::size_of::<openssl::sha::Sha256>(),
        )
    }
}

/// Like [`cleanse`], over the whole allocation of `buf` (its spare capacity too, where earlier
/// contents may linger after a truncation), then empties it; the allocation is kept.
#[doc(alias = "OPENSSL_cleanse")]
pub(crate) fn cleanse_vec(buf: &mut Vec<u8>) {
    let capacity = buf.capacity();
    if capacity == 0 {
        return;
    }
    // SAFETY: `as_mut_ptr` points to an allocation of `capacity` bytes owned by `buf` (u8 has
    // no drop glue, and writing zeros into spare capacity is allowed); the length is reset to 0
    // afterwards, so no byte is read as initialised that was not before.
    unsafe { dffi::OPENSSL_cleanse(buf.as_mut_ptr().cast(), capacity) };
    buf.clear();
}

#[cfg(test)]
mod tests {
    #[test]
    fn cleanse_zeroes_every_byte_of_the_slice() {
        let mut key = [0xA5u8; 48];
        cleanse(&mut key[..]);
        assert_eq!(key, [0; 48]);
        cleanse(&mut []); // empty: nothing to do, no call with a dangling pointer
    }

    #[test]
    fn wipe_vec_zeroes_the_spare_capacity_and_empties() {
        let mut secret = vec![0x5Au8; 64];
        secret.truncate(16); // 48 secret bytes now sit in spare capacity
        let ptr = secret.as_ptr();
        let capacity = secret.capacity();
        crate::ffi::evp::cleanse_vec(&mut secret);
        assert!(secret.is_empty());
        assert_eq!(
            secret.capacity(),
            capacity,
            "wiped in place, not reallocated"
        );
        assert_eq!(secret.as_ptr(), ptr);
        // SAFETY: the allocation is still owned by `secret` and `wipe_vec` initialised all
        // `capacity` bytes (to zero); reading them through the raw pointer is in bounds.
        let all = unsafe { std::slice::from_raw_parts(secret.as_ptr(), capacity) };
        assert!(all.iter().all(|&b| b == 0));
        crate::ffi::evp::cleanse_vec(&mut Vec::new());
    }

    use super::*;

    #[test]
    fn tls12_prf_matches_a_known_answer() {
        // The TLS 1.2 PRF over SHA-256 recomputed from RFC 5246 §5 with HMAC (P_SHA256):
        // A(1) = HMAC(secret, seed), output = HMAC(secret, A(1) ‖ seed) ‖ …
        use openssl::hash::MessageDigest;
        use openssl::pkey::PKey;
        use openssl::sign::Signer;
        let secret = [0x0bu8; 48];
        let seed = b"key expansionabcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        let key = PKey::hmac(&secret).unwrap();
        let hmac = |data: &[u8]| {
            let mut s = Signer::new(MessageDigest::sha256(), &key).unwrap();
            s.update(data).unwrap();
            s.sign_to_vec().unwrap()
        };
        let mut want = Vec::new();
        let mut a = hmac(seed);
        while want.len() < 88 {
            want.extend(hmac(&[&a[..], &seed[..]].concat()));
            a = hmac(&a);
        }
        let name = short_name(Nid::SHA256).expect("SHA256 has a short name");
        assert_eq!(name, c"SHA256");
        let mut out = [0u8; 88];
        tls12_prf(name, &secret, seed, &mut out).unwrap();
        assert_eq!(&out[..], &want[..88]);
    }

    #[test]
    fn an_unknown_digest_fails_the_prf_with_openssls_reason() {
        let mut out = [0u8; 16];
        let err = tls12_prf(c"NO-SUCH-DIGEST", &[1; 48], b"seed", &mut out).unwrap_err();
        assert!(!err.errors().is_empty());
        clear_error();
    }

    #[test]
    fn cleanse_zeroes_every_byte() {
        let mut key = [0xA5u8; 32];
        cleanse(&mut key);
        assert_eq!(key, [0; 32]);
        cleanse(&mut []);
    }
}
