//! Why a certificate did not verify. The verification callback every verifying context installs
//! ([`checked`]) records the first certificate rejected — its `X509_V_ERR_*` code, depth and
//! subject — on the `SSL`; when the handshake then fails, [`failure`] turns that record and
//! `SSL_get_verify_result` into a [`VerifyFailure`].
//!
//! Nothing is stored for a chain that verifies: the record is made only on rejection, so a
//! healthy handshake costs no allocation.

use std::sync::OnceLock;

use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{Ssl, SslRef};
use openssl::x509::{X509NameRef, X509StoreContextRef, X509VerifyResult};

use crate::error::{Alert, VerifyFailure, VerifyReason};
use crate::ffi;

/// OpenSSL's `ERR_LIB_SSL`.
const ERR_LIB_SSL: i32 = 20;
/// OpenSSL's `SSL_R_CERTIFICATE_VERIFY_FAILED`: the reason `SSLfatal` records when a peer's
/// chain is rejected (`ssl/ssl_err.c`).
const SSL_R_CERTIFICATE_VERIFY_FAILED: i32 = 134;

/// What the verification saw at the first rejected certificate.
#[derive(Debug)]
struct Rejection {
    code: i32,
    depth: u32,
    subject: Option<String>,
}

/// The `SSL` ex-data slot for the [`Rejection`] (`SSL_get_ex_new_index`), made once.
fn index() -> Option<Index<Ssl, Rejection>> {
    static INDEX: OnceLock<Option<Index<Ssl, Rejection>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

/// A certificate name in one line, `CN=example, O=Org` (the short names of its entries).
pub(crate) fn one_line(name: &X509NameRef) -> String {
    name.entries()
        .map(|entry| {
            let key = entry.object().nid().short_name().unwrap_or("?");
            let value = entry.data().to_string().unwrap_or_else(|_| "?".to_owned());
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Called with the final verdict on the certificate `store` is at: records the first rejection
/// on the `SSL` being verified. Returns `verdict`.
pub(crate) fn checked(verdict: bool, store: &mut X509StoreContextRef) -> bool {
    if verdict {
        return true;
    }
    let Some(index) = index() else {
        return false;
    };
    // Only the first rejection is stored: it is the one that ends the handshake.
    ffi::ctx::set_verifying_ssl_ex_data(store, index, |store| Rejection {
        code: store.error().as_raw(),
        depth: store.error_depth(),
        subject: store.current_cert().map(|c| one_line(c.subject_name())),
    });
    false
}

/// The verification failure behind a handshake that failed with `errors` after this side sent
/// `alert`, or `Err(errors)` back if the failure was not a rejected certificate.
pub(crate) fn failure(
    ssl: &SslRef,
    alert: Alert,
    errors: ErrorStack,
) -> Result<VerifyFailure, ErrorStack> {
    let rejected_chain = errors.errors().iter().any(|e| {
        e.library_code() == ERR_LIB_SSL && e.reason_code() == SSL_R_CERTIFICATE_VERIFY_FAILED
    });
    let result = ssl.verify_result();
    let recorded = index().and_then(|i| ssl.ex_data(i));
    if !rejected_chain || (recorded.is_none() && result == X509VerifyResult::OK) {
        return Err(errors);
    }
    let (reason, code, depth, subject) = match recorded {
        Some(r) if r.code != openssl_sys::X509_V_OK => (
            VerifyReason::from_code(r.code),
            r.code,
            r.depth,
            r.subject.clone(),
        ),
        // A callback rejected a certificate OpenSSL accepted.
        Some(r) => (VerifyReason::Rejected, r.code, r.depth, r.subject.clone()),
        None => (
            VerifyReason::from_code(result.as_raw()),
            result.as_raw(),
            0,
            ssl.peer_certificate().map(|c| one_line(c.subject_name())),
        ),
    };
    Ok(VerifyFailure {
        reason,
        code,
        depth,
        subject,
        alert,
        errors,
    })
}
