//! The `EVP` calls of the compact record layer that rust-openssl does not wrap: the TLS 1.2 PRF
//! (OpenSSL's `TLS1-PRF` KDF) and the digest name it takes, clearing the error queue after an
//! expected tag failure, `OPENSSL_cleanse` for key material, and the per-record AEAD sequence
//! ([`aead_seal`], [`aead_open_append`]) called directly on a keyed context: rust-openssl's
//! safe [`CipherCtx`](openssl::cipher_ctx::CipherCtx) methods ask the provider for the IV
//! length on every `encrypt_init` and check sizes the record layer has already checked, which
//! is a large share of a small record's cost. Contexts are still created and keyed through
//! rust-openssl.
//!
//! Each function here is safe to call; the `unsafe` it needs stays inside, with its reason.

use std::ffi::CStr;
use std::ptr;

use foreign_types::ForeignTypeRef;
use libc::c_int;
use openssl::cipher_ctx::{CipherCtx, CipherCtxRef};
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

/// `EVP_CTRL_AEAD_GET_TAG` (`EVP_CTRL_GCM_GET_TAG`, the same value for every AEAD).
const EVP_CTRL_AEAD_GET_TAG: c_int = ffi::EVP_CTRL_GCM_GET_TAG;
/// `EVP_CTRL_AEAD_SET_TAG`.
const EVP_CTRL_AEAD_SET_TAG: c_int = ffi::EVP_CTRL_GCM_SET_TAG;

/// A length as the `int` the EVP calls take: every record length fits (≤ 2^14 + 256); anything
/// else is refused before a call.
fn c_len(len: usize) -> Result<c_int, ErrorStack> {
    c_int::try_from(len).map_err(|_| ErrorStack::get())
}

/// Which AEAD a generic sequence ([`aead_seal`], [`aead_open_append`]) runs on: what it needs
/// beyond the common calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AeadKind {
    /// AES-GCM: the nonce (and the tag to verify) set in one `EVP_CIPHER_CTX_set_params` call
    /// (`OSSL_CIPHER_PARAM_AEAD_TLS1_IV_FIXED` with the whole IV, `..._AEAD_TAG`) instead of
    /// `EVP_CipherInit_ex` (which on OpenSSL 3 also queries the IV length) and a ctrl.
    Gcm,
    /// AES-CCM: the data length before the additional data.
    Ccm,
    /// ChaCha20-Poly1305.
    ChaCha,
}

/// Starts one AEAD operation on `ctx`: the nonce, the tag to verify (decryption), the data
/// length (CCM, which needs it before the additional data), then the additional data.
///
/// # Safety
///
/// `ctx` must be a context of a 12-byte-nonce AEAD of kind `kind` keyed for the direction
/// `enc` (1 encrypt, 0 decrypt), borrowed mutably for the call.
unsafe fn aead_start(
    ctx: *mut ffi::EVP_CIPHER_CTX,
    enc: c_int,
    kind: AeadKind,
    nonce: &[u8; 12],
    aad: &[u8],
    tag: Option<&[u8]>,
    len: c_int,
) -> Result<(), ErrorStack> {
    let mut outl = 0;
    if kind == AeadKind::Gcm {
        // The whole 12-byte IV (`usize::MAX`: OpenSSL's "whole IV" marker, copying the
        // context's IV length, 12 as set up), and the tag to verify; OpenSSL copies both and
        // never writes through the pointers.
        let iv = octets(TLS_IV_FIXED.get(), nonce.as_ptr().cast_mut(), usize::MAX);
        let params = match tag {
            Some(tag) => [
                iv,
                octets(c"tag", tag.as_ptr().cast_mut(), tag.len()),
                params_end(),
            ],
            None => [iv, params_end(), params_end()],
        };
        // SAFETY: `ctx` is a live, keyed GCM context (the caller's contract); the array ends
        // with the end marker and names `nonce` (12 bytes) and `tag` (its length), both live
        // for the call.
        if unsafe { EVP_CIPHER_CTX_set_params(ctx, params.as_ptr()) } != 1 {
            return Err(ErrorStack::get());
        }
    } else {
        // SAFETY: `ctx` is live and keyed (the caller's contract); the cipher and key stay
        // (null), the nonce is 12 bytes as the context was set up for; `tag` is read for
        // `tag.len()` bytes (OpenSSL copies it into the context).
        unsafe {
            cvt(ffi::EVP_CipherInit_ex(
                ctx,
                ptr::null(),
                ptr::null_mut(),
                ptr::null(),
                nonce.as_ptr(),
                enc,
            ))?;
            if let Some(tag) = tag {
                let tag_len = c_len(tag.len())?;
                cvt(ffi::EVP_CIPHER_CTX_ctrl(
                    ctx,
                    EVP_CTRL_AEAD_SET_TAG,
                    tag_len,
                    tag.as_ptr().cast_mut().cast(),
                ))?;
            }
        }
    }
    // SAFETY: (both calls) `ctx` is live and keyed; a null output with a null input is CCM's
    // "set the total length" call; `aad` is read for `aad.len()` bytes.
    unsafe {
        if kind == AeadKind::Ccm {
            cvt(ffi::EVP_CipherUpdate(
                ctx,
                ptr::null_mut(),
                &mut outl,
                ptr::null(),
                len,
            ))?;
        }
        cvt(ffi::EVP_CipherUpdate(
            ctx,
            ptr::null_mut(),
            &mut outl,
            aad.as_ptr(),
            c_len(aad.len())?,
        ))?;
    }
    Ok(())
}

/// Seals one record's data on `ctx`, an AEAD context keyed for encryption with 12-byte nonces
/// of kind `kind` (CCM: its tag length fixed to `tag.len()`): encrypts `input` into `out` (as long), or
/// `out` in place when `input` is `None`, under `nonce` and the additional data `aad`, and
/// writes the tag into `tag`. The whole sequence of the EVP AEAD interface, once each:
/// `EVP_CipherInit_ex` (nonce; GCM: `EVP_CIPHER_CTX_set_params` instead, see [`AeadKind`]),
/// [CCM: the length], `EVP_CipherUpdate` (additional data, then data), `EVP_CipherFinal_ex`,
/// `EVP_CIPHER_CTX_ctrl(EVP_CTRL_AEAD_GET_TAG)`.
#[doc(alias = "EVP_CipherUpdate")]
pub(crate) fn aead_seal(
    ctx: &mut CipherCtxRef,
    kind: AeadKind,
    nonce: &[u8; 12],
    aad: &[u8],
    input: Option<&[u8]>,
    out: &mut [u8],
    tag: &mut [u8],
) -> Result<(), ErrorStack> {
    if input.is_some_and(|i| i.len() != out.len()) {
        return Err(ErrorStack::get());
    }
    let len = c_len(out.len())?;
    let tag_len = c_len(tag.len())?;
    let ctx = ctx.as_ptr();
    // One pointer for in-place use (input and output derived from the same borrow).
    let dst = out.as_mut_ptr();
    let src = input.map_or(dst.cast_const(), <[u8]>::as_ptr);
    let mut outl = 0;
    // SAFETY: `ctx` is a live context borrowed mutably for this call, keyed for encryption by
    // the caller's contract (an AEAD with 12-byte nonces). `src` is `input` (as long as `out`,
    // checked above) or `out` itself: EVP ciphers allow exactly-overlapping (in-place) input
    // and output. `out` is writable for `len` bytes; a stream AEAD writes exactly `len` in the
    // update and nothing in the final (whose output pointer is only a position). `tag` is
    // writable for `tag_len` bytes.
    unsafe {
        aead_start(ctx, 1, kind, nonce, aad, None, len)?;
        cvt(ffi::EVP_CipherUpdate(ctx, dst, &mut outl, src, len))?;
        cvt(ffi::EVP_CipherFinal(ctx, dst.add(out.len()), &mut outl))?;
        cvt(ffi::EVP_CIPHER_CTX_ctrl(
            ctx,
            EVP_CTRL_AEAD_GET_TAG,
            tag_len,
            tag.as_mut_ptr().cast(),
        ))?;
    }
    Ok(())
}

/// Opens one record's data on `ctx`, an AEAD context keyed for decryption with 12-byte nonces
/// of kind `kind` (CCM: its tag length fixed to `tag.len()`): decrypts `ct` under `nonce` and `aad`,
/// verifies `tag`, and only then appends the plaintext to `out` (into its spare capacity: no
/// zero-filling first). On failure `out` is as it was and the spare capacity the unverified
/// plaintext went to is wiped. The calls are [`aead_seal`]'s, with
/// `EVP_CIPHER_CTX_ctrl(EVP_CTRL_AEAD_SET_TAG)` before the data instead of reading the tag
/// after; an `Err` is most often a tag that did not verify.
#[doc(alias = "EVP_CipherUpdate")]
pub(crate) fn aead_open_append(
    ctx: &mut CipherCtxRef,
    kind: AeadKind,
    nonce: &[u8; 12],
    aad: &[u8],
    ct: &[u8],
    tag: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ErrorStack> {
    let len = c_len(ct.len())?;
    out.reserve(ct.len());
    let start = out.len();
    let dst = out.spare_capacity_mut().as_mut_ptr().cast::<u8>();
    let ctx = ctx.as_ptr();
    let mut outl = 0;
    // SAFETY: `ctx` is a live context borrowed mutably, keyed for decryption (the caller's
    // contract). `dst` points to at least `ct.len()` bytes of `out`'s spare capacity (reserved
    // above), which OpenSSL writes (exactly `len` in the update, nothing in the final); `ct`
    // does not overlap it (a shared borrow while `out` is borrowed mutably). `tag` is read for
    // its length.
    let r = unsafe {
        aead_start(ctx, 0, kind, nonce, aad, Some(tag), len).and_then(|()| {
            cvt(ffi::EVP_CipherUpdate(ctx, dst, &mut outl, ct.as_ptr(), len))?;
            cvt(ffi::EVP_CipherFinal(ctx, dst.add(ct.len()), &mut outl))
        })
    };
    match r {
        // SAFETY: the `ct.len()` bytes after `start` were written by the update above (a
        // stream AEAD's output is as long as its input) and the tag verified.
        Ok(_) => unsafe { out.set_len(start + ct.len()) },
        Err(e) => {
            // SAFETY: the same reserved range (possibly partly written): zeros are written to
            // it, the length is unchanged, so nothing becomes readable.
            unsafe { dffi::OPENSSL_cleanse(dst.cast(), ct.len()) };
            return Err(e);
        }
    }
    Ok(())
}

extern "C" {
    /// `int EVP_CIPHER_CTX_set_params(EVP_CIPHER_CTX *ctx, const OSSL_PARAM params[])`
    /// (OpenSSL 3.0), which openssl-sys does not declare.
    fn EVP_CIPHER_CTX_set_params(
        ctx: *mut ffi::EVP_CIPHER_CTX,
        params: *const ffi::OSSL_PARAM,
    ) -> c_int;
    /// `int EVP_Cipher(EVP_CIPHER_CTX *c, unsigned char *out, const unsigned char *in,
    /// unsigned int inl)`, which openssl-sys does not declare: for a provider AEAD in TLS mode,
    /// the number of bytes processed, or -1.
    fn EVP_Cipher(ctx: *mut ffi::EVP_CIPHER_CTX, out: *mut u8, inp: *const u8, inl: u32) -> c_int;
}

/// `OSSL_PARAM_OCTET_STRING` (`openssl/core.h`).
const OSSL_PARAM_OCTET_STRING: libc::c_uint = 5;
/// `OSSL_PARAM_UNMODIFIED` (`openssl/params.h`): a parameter no call has written yet.
const OSSL_PARAM_UNMODIFIED: usize = usize::MAX;

/// An owned `EVP_CIPHER_CTX` (freed with `EVP_CIPHER_CTX_free` on drop) as a non-null
/// pointer: rust-openssl's [`CipherCtx`] holds a raw pointer, so an `Option` of it needs a tag
/// of its own, and the per-thread cache's slots, which start empty, checked that tag and
/// stepped 136 bytes instead of 128 on every record.
pub(crate) struct OwnedCipherCtx(ptr::NonNull<ffi::EVP_CIPHER_CTX>);

impl OwnedCipherCtx {
    /// Takes over `ctx`.
    pub(crate) fn new(ctx: CipherCtx) -> OwnedCipherCtx {
        // Ownership moves here: `ctx` is never dropped (which would free the context).
        let p = std::mem::ManuallyDrop::new(ctx).as_ptr();
        // rust-openssl's `CipherCtx::new` fails rather than hold a null pointer.
        OwnedCipherCtx(ptr::NonNull::new(p).unwrap_or_else(|| unreachable!("a null CipherCtx")))
    }

    /// The context, to use.
    #[inline(always)]
    pub(crate) fn get_mut(&mut self) -> &mut CipherCtxRef {
        // SAFETY: the pointer came from a live `CipherCtx` this value owns alone (`new`) and is
        // freed only on drop; the `&mut self` borrow makes the reference unique for its life.
        unsafe { CipherCtxRef::from_ptr_mut(self.0.as_ptr()) }
    }
}

impl Drop for OwnedCipherCtx {
    fn drop(&mut self) {
        // SAFETY: owned alone since `new` (the `CipherCtx` it came from is never dropped), freed
        // only here.
        unsafe { ffi::EVP_CIPHER_CTX_free(self.0.as_ptr()) }
    }
}

/// A parameter name at the start of a 4 KiB page of its own. OpenSSL finds a parameter by
/// `strcmp`ing its name with each name the provider knows, and glibc's `strcmp` (AVX2 and
/// SSE) leaves its fast path for a byte loop whenever the page offsets of its two strings,
/// OR-ed, come within 128 bytes of a page's end: with a literal wherever the linker puts it,
/// that cost moved by 20–45 instructions a record pair between builds of the same code.
/// Page-aligned, the offset is OpenSSL's alone.
#[repr(C, align(4096))]
pub(crate) struct ParamName<const N: usize>([u8; N]);

impl<const N: usize> ParamName<N> {
    /// The name.
    pub(crate) const fn get(&'static self) -> &'static CStr {
        match CStr::from_bytes_with_nul(&self.0) {
            Ok(name) => name,
            Err(_) => panic!("a parameter name ends with its only NUL"),
        }
    }
}

/// `OSSL_CIPHER_PARAM_AEAD_TLS1_AAD`.
pub(crate) static TLS_AAD: ParamName<7> = ParamName(*b"tlsaad\0");
/// `OSSL_CIPHER_PARAM_AEAD_TLS1_IV_FIXED`.
pub(crate) static TLS_IV_FIXED: ParamName<11> = ParamName(*b"tlsivfixed\0");

/// An `OSSL_PARAM` of octets, built in place as OpenSSL's own `OSSL_PARAM_octet_string` macro
/// does (the struct is public and fixed in `openssl/core.h`): calling the constructor returns a
/// 40-byte struct by value, a measurable share of a small record's cost. Building one is safe;
/// using it is sound while `data` is valid for `data_size` bytes.
const fn octets(key: &'static CStr, data: *mut u8, data_size: usize) -> ffi::OSSL_PARAM {
    ffi::OSSL_PARAM {
        key: key.as_ptr(),
        data_type: OSSL_PARAM_OCTET_STRING,
        data: data.cast::<std::ffi::c_void>(),
        data_size,
        return_size: OSSL_PARAM_UNMODIFIED,
    }
}

/// The end of an `OSSL_PARAM` array (`OSSL_PARAM_END`: a null key).
const fn params_end() -> ffi::OSSL_PARAM {
    ffi::OSSL_PARAM {
        key: ptr::null(),
        data_type: 0,
        data: ptr::null_mut(),
        data_size: 0,
        return_size: 0,
    }
}

/// Sets the fixed part of the IV of OpenSSL's TLS one-shot AEAD on `ctx` (a keyed context):
/// `OSSL_CIPHER_PARAM_AEAD_TLS1_IV_FIXED` (`EVP_CTRL_AEAD_SET_IV_FIXED`), the 4-byte salt of
/// AES-CCM (or of AES-GCM keyed for decryption: for encryption OpenSSL would draw the rest of
/// the IV at random) or ChaCha20-Poly1305's 12-byte IV, into which OpenSSL puts each record's
/// explicit nonce (GCM, CCM) or XORs its sequence number (RFC 7905) when [`aead_tls_one_shot`]
/// seals or opens it.
#[doc(alias = "EVP_CIPHER_CTX_set_params")]
pub(crate) fn aead_tls_set_fixed_iv(ctx: &mut CipherCtxRef, iv: &[u8]) -> Result<(), ErrorStack> {
    // OpenSSL copies the IV; it never writes through the pointer although the field is `*mut`.
    let params = [
        octets(TLS_IV_FIXED.get(), iv.as_ptr().cast_mut(), iv.len()),
        params_end(),
    ];
    // SAFETY: `ctx` is a live context borrowed mutably for this call; the array ends with the
    // end marker and names `iv`, valid for `iv.len()` bytes during the call.
    if unsafe { EVP_CIPHER_CTX_set_params(ctx.as_ptr(), params.as_ptr()) } != 1 {
        return Err(ErrorStack::get());
    }
    Ok(())
}

/// The parameter array of a record of OpenSSL's TLS one-shot AEAD ([`aead_tls_one_shot`]):
/// `OSSL_CIPHER_PARAM_AEAD_TLS1_AAD` (13 bytes) and the end marker, built once and kept with
/// the context it serves, so that a record only points it at its additional data (building
/// the 80-byte array on the stack for every record was ≈ 10 instructions of each).
pub(crate) struct TlsAadParams([ffi::OSSL_PARAM; 2]);

impl TlsAadParams {
    /// The array, pointing at no additional data yet ([`aead_tls_one_shot`] sets it).
    pub(crate) const fn new() -> TlsAadParams {
        TlsAadParams([octets(TLS_AAD.get(), ptr::null_mut(), 13), params_end()])
    }
}

impl Default for TlsAadParams {
    fn default() -> TlsAadParams {
        TlsAadParams::new()
    }
}

/// Seals or opens one whole TLS/DTLS 1.2 AEAD record fragment in place through OpenSSL's TLS
/// one-shot AEAD, the path its own record layer takes: `EVP_CIPHER_CTX_set_params` with
/// `OSSL_CIPHER_PARAM_AEAD_TLS1_AAD` (the 13 bytes of additional data, whose length field is
/// the fragment's length less the tag when sealing and the whole fragment's when opening) and,
/// when `nonce` is given (AES-GCM sealing), `OSSL_CIPHER_PARAM_AEAD_TLS1_IV_FIXED` with the
/// record's whole nonce (OpenSSL's "length -1" case; otherwise the context has its fixed IV
/// from [`aead_tls_set_fixed_iv`] or, AES-GCM sealing, the count a previous whole nonce
/// started), then one `EVP_Cipher` over `fragment` (explicit nonce if any ‖ data ‖ tag).
/// `params`: the context's kept parameter array ([`TlsAadParams`]). Returns whether it
/// succeeded; on failure OpenSSL's error queue says why (the callers, which report their own
/// errors, clear it: no `ErrorStack` travels back through the record path).
/// Sealing fills in the explicit nonce (GCM: from its IV, then counts the IV's last 8 bytes up
/// by one; CCM: the epoch and sequence number of the additional data) and the tag; opening
/// takes the explicit nonce from `fragment`, verifies the tag and leaves the plaintext after the
/// explicit nonce, or fails with the data wiped by OpenSSL. `ctx` must be keyed for the
/// direction wanted (rust-openssl's safe API does that).
#[doc(alias = "EVP_Cipher")]
#[doc(alias = "EVP_CIPHER_CTX_set_params")]
#[inline(always)]
pub(crate) fn aead_tls_one_shot(
    ctx: &mut CipherCtxRef,
    params: &mut TlsAadParams,
    nonce: Option<&[u8; 12]>,
    aad: &mut [u8; 13],
    fragment: &mut [u8],
) -> bool {
    let Ok(len) = u32::try_from(fragment.len()) else {
        return false;
    };
    let ctx = ctx.as_ptr();
    // OpenSSL copies both (and corrects its copy of the additional data's length); it never
    // writes through the pointers although the field is `*mut`. `usize::MAX` is the "whole IV"
    // marker: OpenSSL copies the context's IV length, 12 as the context was set up.
    let set = match nonce {
        Some(nonce) => {
            let aad = octets(TLS_AAD.get(), aad.as_mut_ptr(), 13);
            let iv = octets(TLS_IV_FIXED.get(), nonce.as_ptr().cast_mut(), usize::MAX);
            let params = [aad, iv, params_end()];
            // SAFETY: `ctx` is a live, keyed context borrowed mutably for this call; the array
            // ends with the end marker and names only `aad` (13 bytes) and `nonce` (12 bytes,
            // see above), which outlive the call.
            unsafe { EVP_CIPHER_CTX_set_params(ctx, params.as_ptr()) }
        }
        None => {
            // The kept array: only its data pointer changes, to this record's additional data.
            params.0[0].data = aad.as_mut_ptr().cast();
            // SAFETY: as above; the array (made by `TlsAadParams::new`: the 13-byte additional
            // data parameter, then the end marker) names only `aad`, just set, which outlives
            // the call.
            unsafe { EVP_CIPHER_CTX_set_params(ctx, params.0.as_ptr()) }
        }
    };
    if set != 1 {
        return false;
    }
    let p = fragment.as_mut_ptr();
    // SAFETY: `ctx` as above, its additional data just set; `fragment` is transformed in place
    // (input and output the same pointer, which OpenSSL's TLS AEAD mode requires) for exactly
    // `len` bytes: an AEAD in TLS mode writes no more than its input.
    unsafe { EVP_Cipher(ctx, p, p, len) > 0 }
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
