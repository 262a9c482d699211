//! The `SSL` calls a session makes that rust-openssl does not wrap, each a safe function with
//! the return code as OpenSSL gives it (the session classifies it with [`get_error`]).

use std::ffi::CStr;
use std::os::raw::c_int;

use openssl_dtls_sys as dffi;

/// OpenSSL's long name of an alert description.
pub(crate) fn alert_desc_str(description: u8) -> &'static str {
    // SAFETY: SSL_alert_desc_string_long returns a pointer to a static NUL-terminated string for
    // any input ("unknown" for codes it does not know).
    let s = unsafe { CStr::from_ptr(dffi::SSL_alert_desc_string_long(c_int::from(description))) };
    s.to_str().unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_strings_come_from_openssl() {
        assert_eq!(alert_desc_str(40), "handshake failure");
        assert_eq!(alert_desc_str(115), "unknown PSK identity");
        assert_eq!(alert_desc_str(0), "close notify");
    }
}
