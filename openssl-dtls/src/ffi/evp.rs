//! `OPENSSL_cleanse` for key material.
//!
//! Each function here is safe to call; the `unsafe` it needs stays inside, with its reason.

use openssl_dtls_sys as dffi;

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
    use super::*;

    #[test]
    fn cleanse_zeroes_every_byte() {
        let mut key = [0xA5u8; 32];
        cleanse(&mut key);
        assert_eq!(key, [0; 32]);
        cleanse(&mut []);
    }
}
