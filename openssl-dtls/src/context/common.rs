//! The settings both sides of a context share ([`Common`]: options, protocol floor, ciphers,
//! security level, groups, signature algorithms, ALPN, per-session limits, key log), applied to
//! the `SSL_CTX`, and the builder methods that set them.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use openssl::ssl::{SslContextBuilder, SslOptions, SslVersion};

use super::ciphers::{self, CipherPreset};
use super::{DEFAULT_GROUPS, MAX_CERT_LIST, PSK_MAX_CERT_LIST};
use crate::config::SessionConfig;
use crate::error::ConfigError;
use crate::ffi::{self, ctx::guard};

/// Where key log lines go.
#[derive(Clone)]
pub(crate) enum KeyLog {
    Callback(Arc<dyn Fn(&str) + Send + Sync>),
    File(PathBuf),
}

impl fmt::Debug for KeyLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyLog::Callback(_) => f.write_str("Callback(..)"),
            KeyLog::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// Settings both sides share.
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub ciphers: CipherPreset,
    pub security_level: Option<u32>,
    pub groups: String,
    pub sigalgs: Option<String>,
    pub alpn: Vec<Vec<u8>>,
    pub session: SessionConfig,
    pub key_log: Option<KeyLog>,
    /// DTLS-SRTP profiles offered (client) or accepted (server), OpenSSL's syntax.
    pub srtp: Option<String>,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            ciphers: CipherPreset::Auto,
            security_level: None,
            groups: DEFAULT_GROUPS.to_owned(),
            sigalgs: None,
            alpn: Vec::new(),
            session: SessionConfig::default(),
            key_log: None,
            srtp: None,
        }
    }
}

impl Common {
    /// Checks the session settings, then sets options, protocol floor, ciphers, security level,
    /// groups and signature algorithms.
    pub(super) fn apply(
        &self,
        b: &mut SslContextBuilder,
        psk: bool,
        certificates: bool,
        usable: impl Fn(&ciphers::Offered) -> bool,
        credentials: &str,
    ) -> Result<(), ConfigError> {
        self.session.validate()?;
        if let Some(level) = self.security_level {
            if level > 5 {
                return Err(ConfigError::OutOfRange {
                    setting: "security_level",
                    value: u64::from(level),
                    allowed: "0 to 5",
                });
            }
        }
        b.set_options(
            SslOptions::NO_QUERY_MTU | SslOptions::NO_RENEGOTIATION | SslOptions::NO_COMPRESSION,
        );
        // A peer's certificate chain, and in DTLS any handshake message it makes us reassemble,
        // is bounded by max_cert_list (OpenSSL's default: 100 KB per message). A context that
        // never receives a certificate takes the smallest: OpenSSL then bounds every message by
        // a record's worth (≈ 18 KB).
        let max_cert_list = if certificates {
            MAX_CERT_LIST
        } else {
            PSK_MAX_CERT_LIST
        };
        ffi::ctx::set_max_cert_list(b, max_cert_list);
        b.set_min_proto_version(Some(SslVersion::DTLS1_2))
            .map_err(|e| ConfigError::Invalid(format!("cannot set the DTLS 1.2 minimum: {e}")))?;
        let cipher_string = self.ciphers.cipher_string(psk, certificates);
        ciphers::apply(b, &cipher_string, self.security_level, usable, credentials)?;
        let groups_error = || ConfigError::Groups {
            groups: self.groups.clone(),
        };
        if self.groups.contains('\0') {
            return Err(groups_error());
        }
        b.set_groups_list(&self.groups)
            .map_err(|_| groups_error())?;
        if let Some(sigalgs) = &self.sigalgs {
            let sigalgs_error = || ConfigError::SignatureAlgorithms {
                sigalgs: sigalgs.clone(),
            };
            if sigalgs.contains('\0') {
                return Err(sigalgs_error());
            }
            b.set_sigalgs_list(sigalgs).map_err(|_| sigalgs_error())?;
        }
        if let Some(profiles) = &self.srtp {
            crate::session::check_srtp_profiles(profiles)?;
            b.set_tlsext_use_srtp(profiles)
                .map_err(|e| ConfigError::Invalid(format!("SRTP profiles {profiles:?}: {e}")))?;
        }
        Ok(())
    }

    /// The ALPN list in wire format (each name length-prefixed).
    pub(super) fn alpn_wire(&self) -> Result<Vec<u8>, ConfigError> {
        let mut wire = Vec::new();
        for name in &self.alpn {
            let len = u8::try_from(name.len())
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "ALPN protocol names are 1 to 255 bytes; {:?} has {}",
                        String::from_utf8_lossy(name),
                        name.len()
                    ))
                })?;
            wire.push(len);
            wire.extend_from_slice(name);
        }
        Ok(wire)
    }

    /// Installs the key log callback (`SSL_CTX_set_keylog_callback`), if one is configured.
    pub(super) fn apply_key_log(&self, b: &mut SslContextBuilder) -> Result<(), ConfigError> {
        let Some(key_log) = &self.key_log else {
            return Ok(());
        };
        let sink: Arc<dyn Fn(&str) + Send + Sync> = match key_log {
            KeyLog::Callback(f) => Arc::clone(f),
            KeyLog::File(path) => {
                let file = open_key_log(path).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "cannot open key log file {}: {e}",
                        path.display()
                    ))
                })?;
                let file = Mutex::new(file);
                Arc::new(move |line: &str| {
                    let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Err(e) = writeln!(file, "{line}") {
                        log::warn!("cannot write to the key log file: {e}");
                    }
                })
            }
        };
        log::warn!(
            "DTLS key logging is ON: anyone who reads the key log can decrypt this traffic. Never enable it in production"
        );
        b.set_keylog_callback(move |_ssl, line| guard("key log", (), || sink(line)));
        Ok(())
    }
}

fn open_key_log(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Builder methods both sides share; `$field` is the builder's [`Common`].
macro_rules! common_builder_methods {
    () => {
        /// Uses an OpenSSL cipher string (`ciphers(1)` syntax) instead of the preset, e.g.
        /// `"PSK-AES128-CCM8"` (`SSL_CTX_set_cipher_list`). A string OpenSSL rejects, or that
        /// leaves no cipher usable with the configured credentials at the security level, fails
        /// at `build()` with [`ConfigError::Ciphers`](crate::ConfigError::Ciphers).
        #[doc(alias = "SSL_CTX_set_cipher_list")]
        pub fn ciphers(&mut self, ciphers: &str) -> &mut Self {
            self.common.ciphers = $crate::context::CipherPreset::Custom(ciphers.to_owned());
            self
        }

        /// Uses a named cipher preset (default [`CipherPreset::Auto`](crate::context::CipherPreset::Auto))
        /// (`SSL_CTX_set_cipher_list`).
        #[doc(alias = "SSL_CTX_set_cipher_list")]
        pub fn cipher_preset(&mut self, preset: $crate::context::CipherPreset) -> &mut Self {
            self.common.ciphers = preset;
            self
        }

        /// Sets OpenSSL's security level, 0 to 5 (`SSL_CTX_set_security_level`). Default:
        /// OpenSSL's build default (1 upstream, 2 in Debian 12's build), lowered to 0 only when
        /// the ciphers include CCM8 on OpenSSL 3.1+ and no level was set here. The DTLS 1.2
        /// minimum is set again after the level, whatever it is.
        #[doc(alias = "SSL_CTX_set_security_level")]
        pub fn security_level(&mut self, level: u32) -> &mut Self {
            self.common.security_level = Some(level);
            self
        }

        /// Sets the key-exchange groups, most preferred first, e.g. `"X25519:P-256"`
        /// (`SSL_CTX_set1_groups_list`). Default [`DEFAULT_GROUPS`](crate::context::DEFAULT_GROUPS).
        /// An unknown group fails at `build()` with [`ConfigError::Groups`](crate::ConfigError::Groups).
        #[doc(alias = "SSL_CTX_set1_groups_list")]
        pub fn groups(&mut self, groups: &str) -> &mut Self {
            self.common.groups = groups.to_owned();
            self
        }

        /// Sets the signature algorithms, e.g. `"ECDSA+SHA256:RSA-PSS+SHA256:ed25519"`
        /// (`SSL_CTX_set1_sigalgs_list`). Default: OpenSSL's list. A list OpenSSL rejects fails
        /// at `build()` with [`ConfigError::SignatureAlgorithms`](crate::ConfigError::SignatureAlgorithms).
        #[doc(alias = "SSL_CTX_set1_sigalgs_list")]
        pub fn signature_algorithms(&mut self, sigalgs: &str) -> &mut Self {
            self.common.sigalgs = Some(sigalgs.to_owned());
            self
        }

        /// Sets the link MTU: the largest UDP payload a session emits (`DTLS_set_link_mtu`, with
        /// `SSL_OP_NO_QUERY_MTU`). Default 1200; 256 to 65,507 (checked at `build()`).
        #[doc(alias = "DTLS_set_link_mtu")]
        pub fn mtu(&mut self, mtu: usize) -> &mut Self {
            self.common.session.mtu = mtu;
            self
        }

        /// Sets how long a handshake may take before it fails with
        /// [`Error::Timeout`](crate::Error::Timeout). Default 30 s.
        pub fn handshake_timeout(&mut self, timeout: ::std::time::Duration) -> &mut Self {
            self.common.session.handshake_timeout = timeout;
            self
        }

        /// Sets the first retransmission timeout of a flight and the cap of its doubling
        /// (`DTLS_set_timer_cb`). Default 1 s and 10 s.
        #[doc(alias = "DTLS_set_timer_cb")]
        pub fn retransmit_timeout(
            &mut self,
            initial: ::std::time::Duration,
            max: ::std::time::Duration,
        ) -> &mut Self {
            self.common.session.retransmit_initial = initial;
            self.common.session.retransmit_max = max;
            self
        }

        /// Sets how many retransmission timeouts one handshake may take before it fails
        /// (OpenSSL's own cap is `DTLS1_TMO_ALERT_COUNT`, 12). Default 12.
        #[doc(alias = "DTLSv1_handle_timeout")]
        pub fn max_retransmits(&mut self, count: u32) -> &mut Self {
            self.common.session.max_retransmits = count;
            self
        }

        /// Compact connections (opt-in, default off): after the handshake, move each
        /// connection's record layer from OpenSSL to this library's compact AEAD record layer
        /// and free its `SSL` (`SSL_free`), so an idle established connection costs about 1 KB
        /// instead of ≈ 36–70 KB. See [`SessionConfig::compact`](crate::SessionConfig::compact)
        /// and the "Compact connections" section of `SECURITY-CONSIDERATIONS.md`.
        pub fn compact_connections(&mut self, on: bool) -> &mut Self {
            self.common.session.compact = on;
            self
        }

        /// How long the side that sent the handshake's last flight keeps its `SSL` in compact
        /// mode, unless the peer's first record proves sooner that it finished
        /// ([`SessionConfig::compact_linger`](crate::SessionConfig::compact_linger)). Default
        /// 240 s (RFC 6347 §4.2.4); at most 1 hour.
        pub fn compact_linger(&mut self, linger: ::std::time::Duration) -> &mut Self {
            self.common.session.compact_linger = linger;
            self
        }

        /// In compact mode, keep the exporter's secret (master secret and randoms, 112 bytes per
        /// connection) after the hand-off, so that `export_keying_material` keeps working
        /// ([`SessionConfig::keep_exporter_secret`](crate::SessionConfig::keep_exporter_secret),
        /// `SSL_export_keying_material`). Default off.
        #[doc(alias = "SSL_export_keying_material")]
        pub fn keep_exporter_secret(&mut self, on: bool) -> &mut Self {
            self.common.session.keep_exporter_secret = on;
            self
        }

        /// DTLS-SRTP (RFC 5764): the SRTP protection profiles a client offers, or a server
        /// accepts, most preferred first, in OpenSSL's syntax:
        /// `"SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80"` (`SSL_CTX_set_tlsext_use_srtp`).
        /// Every name must be a [`SrtpProfile`](crate::SrtpProfile), checked at `build()`. The
        /// negotiated profile and its keying material are on the connection
        /// ([`Session::srtp_keying_material`](crate::Session::srtp_keying_material)); a compact
        /// connection that negotiated one keeps the exporter's secret for it.
        #[doc(alias = "SSL_CTX_set_tlsext_use_srtp")]
        #[doc(alias = "use_srtp")]
        pub fn srtp_profiles(&mut self, profiles: &str) -> &mut Self {
            self.common.srtp = Some(profiles.to_owned());
            self
        }

        /// Replaces all per-session limits and timers at once (checked at `build()`).
        pub fn session_config(&mut self, config: $crate::SessionConfig) -> &mut Self {
            self.common.session = config;
            self
        }

        /// Sends every TLS secret to `callback` as one NSS key log line
        /// (`CLIENT_RANDOM <client random> <master secret>`, hex, no newline), the format
        /// Wireshark reads (`SSL_CTX_set_keylog_callback`).
        ///
        /// A debugging aid only: whoever sees these lines can decrypt the traffic. Never enable
        /// it in production; `build()` logs a warning when it is on.
        #[doc(alias = "SSL_CTX_set_keylog_callback")]
        #[doc(alias = "SSLKEYLOGFILE")]
        pub fn key_log_callback<F>(&mut self, callback: F) -> &mut Self
        where
            F: Fn(&str) + Send + Sync + 'static,
        {
            self.common.key_log = Some($crate::context::common::KeyLog::Callback(
                ::std::sync::Arc::new(callback),
            ));
            self
        }

        /// Appends NSS key log lines (the `SSLKEYLOGFILE` format Wireshark reads) to the file at
        /// `path`, created with mode 0600 if missing (`SSL_CTX_set_keylog_callback`).
        ///
        /// A debugging aid only: whoever reads the file can decrypt the traffic. Never enable it
        /// in production; `build()` logs a warning when it is on, and fails if the file cannot be
        /// opened.
        #[doc(alias = "SSL_CTX_set_keylog_callback")]
        #[doc(alias = "SSLKEYLOGFILE")]
        pub fn key_log_file(&mut self, path: impl AsRef<::std::path::Path>) -> &mut Self {
            self.common.key_log = Some($crate::context::common::KeyLog::File(
                path.as_ref().to_path_buf(),
            ));
            self
        }
    };
}

pub(crate) use common_builder_methods;
