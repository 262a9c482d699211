//! DTLS alerts (RFC 5246 §7.2, RFC 6347 §4.1.2.7): the [`Alert`] type the errors and events
//! carry, the description codes this crate names, and their human-readable names (OpenSSL's
//! `SSL_alert_desc_string_long`). Every other module that needs an alert's name asks here.
//!
//! Re-exported as `openssl_dtls::Alert` and `openssl_dtls::error::Alert`.

use std::fmt;

/// A DTLS alert: a level (warning or fatal) and a description code (RFC 5246 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Alert {
    /// 1 = warning, 2 = fatal.
    pub level: u8,
    /// The alert description code, e.g. 40 (`handshake_failure`), 115 (`unknown_psk_identity`).
    pub description: u8,
}

impl Alert {
    /// `close_notify` (0).
    pub const CLOSE_NOTIFY: u8 = 0;
    /// `handshake_failure` (40).
    pub const HANDSHAKE_FAILURE: u8 = 40;
    /// `bad_certificate` (42).
    pub const BAD_CERTIFICATE: u8 = 42;
    /// `unknown_ca` (48).
    pub const UNKNOWN_CA: u8 = 48;
    /// `illegal_parameter` (47).
    pub const ILLEGAL_PARAMETER: u8 = 47;
    /// `decode_error` (50).
    pub const DECODE_ERROR: u8 = 50;
    /// `decrypt_error` (51).
    pub const DECRYPT_ERROR: u8 = 51;
    /// `protocol_version` (70).
    pub const PROTOCOL_VERSION: u8 = 70;
    /// `unknown_psk_identity` (115).
    pub const UNKNOWN_PSK_IDENTITY: u8 = 115;

    pub(crate) fn from_info_value(val: i32) -> Alert {
        Alert {
            level: ((val >> 8) & 0xff) as u8,
            description: (val & 0xff) as u8,
        }
    }

    /// Whether this is a fatal alert.
    pub fn is_fatal(&self) -> bool {
        self.level == 2
    }

    /// OpenSSL's long description of the alert, e.g. `"handshake failure"`
    /// (`SSL_alert_desc_string_long`).
    #[doc(alias = "SSL_alert_desc_string_long")]
    pub fn description_str(&self) -> &'static str {
        alert_desc_str(self.description)
    }
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = if self.is_fatal() { "fatal" } else { "warning" };
        write!(
            f,
            "{level} alert {} ({})",
            self.description,
            self.description_str()
        )
    }
}

/// An alert with a hint for the person reading the error, when the alert usually has one cause:
/// a `decrypt_error` that is not a certificate failure ([`Error::Verification`] has its own
/// words) almost always means the two sides derived different keys, which with PSK means a wrong
/// pre-shared key.
pub(crate) struct Hinted<'a>(pub(crate) &'a Alert);

impl fmt::Display for Hinted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.0;
        let level = if a.is_fatal() { "fatal" } else { "warning" };
        let hint = match a.description {
            Alert::DECRYPT_ERROR => " (wrong pre-shared key?)",
            _ => "",
        };
        write!(
            f,
            "{level} alert {} ({}{hint})",
            a.description,
            a.description_str()
        )
    }
}

/// OpenSSL's long name of an alert description, e.g. `"handshake failure"` for 40
/// (`SSL_alert_desc_string_long`; `"unknown"` for codes OpenSSL does not know).
#[doc(alias = "SSL_alert_desc_string_long")]
pub(crate) fn alert_desc_str(description: u8) -> &'static str {
    crate::ffi::ctx::alert_desc_string_long(description)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_names_are_openssls() {
        assert_eq!(alert_desc_str(40), "handshake failure");
        assert_eq!(alert_desc_str(115), "unknown PSK identity");
        assert_eq!(alert_desc_str(0), "close notify");
        assert_eq!(alert_desc_str(255), "unknown");
    }

    #[test]
    fn display_names_level_code_and_description() {
        let alert = Alert::from_info_value(0x0228);
        assert_eq!(
            alert,
            Alert {
                level: 2,
                description: 40
            }
        );
        assert!(alert.is_fatal());
        assert_eq!(alert.to_string(), "fatal alert 40 (handshake failure)");
        let wrong_key = Alert {
            level: 2,
            description: Alert::DECRYPT_ERROR,
        };
        assert!(Hinted(&wrong_key)
            .to_string()
            .ends_with("(wrong pre-shared key?))"));
    }
}
