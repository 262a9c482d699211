//! A fleet: several server processes ("nodes") behind one UDP load balancer, sharing one
//! operator-supplied secret.
//!
//! Every node of a fleet reads the same [`FleetSecret`] and knows its own index (0–255). From
//! the secret each node derives, by HMAC-SHA256 under a label of its own for each use:
//!
//! * the **cookie secret** ([`DtlsServerContextBuilder::fleet`]): a node accepts the cookie
//!   another node issued, so a ClientHello retransmitted to another node (the balancer's
//!   session ended, a node restarted) still completes;
//! * the **session-ticket keys** ([`FleetSecret::ticket_keys`]), rotating by the wall clock, so a
//!   client resumes on any node;
//! * the **state key** of a node's graceful-restart file ([`FleetSecret::state_key`]), so the
//!   node's successor opens what its predecessor saved, and no other node's file.
//!
//! The node index is the first byte of every Connection ID the node issues (the CID prefix,
//! [`DtlsServerContextBuilder::connection_id_prefix`]): a balancer that reads it from a
//! `tls12_cid` record routes the device to its node whatever address it comes from (see
//! `deploy/nginx/` and the README's "A fleet behind a load balancer").
//!
//! # The secret file
//!
//! [`FleetSecret::load_or_create`] reads, or creates with fresh random bytes and mode 0600,
//! a text file of this form (comment lines start with `#`; blank lines are ignored):
//!
//! ```text
//! # openssl-dtls fleet secret: keep it like a private key; every node of the fleet reads it
//! openssl-dtls-fleet-v1 6b1f0c...(64 hex digits: 32 bytes)
//! ```
//!
//! Anything else is refused with [`ConfigError::Invalid`]. A file
//! that group or others may read is accepted with a warning in the log. The same line (or its
//! hex digits alone) may come from an environment variable instead
//! ([`FleetSecret::from_env`]).
//!
//! ```no_run
//! use openssl_dtls::fleet::FleetSecret;
//! use openssl_dtls::DtlsServerContext;
//! use std::time::Duration;
//!
//! let (secret, _created) = FleetSecret::load_or_create("/etc/dtls/fleet-secret")?;
//! let node = 1; // this node's index, also the first byte of its Connection IDs
//! let ctx = DtlsServerContext::builder()
//!     .psk_key_store(|_identity| None) // your device keys
//!     .connection_id(8)
//!     .fleet(&secret, node)
//!     .session_tickets(secret.ticket_keys(Duration::from_secs(3600))?)
//!     .build()?;
//! # Ok::<(), openssl_dtls::Error>(())
//! ```

use std::fmt;
use std::path::Path;
use std::time::Duration;

use openssl::sha::Sha256;

#[cfg(doc)]
use crate::context::DtlsServerContextBuilder;
use crate::context::TicketKeys;
use crate::endpoint::StateKey;
use crate::error::{ConfigError, Error, Result};

/// The first word of the secret line, naming the format's version.
const FILE_TAG: &str = "openssl-dtls-fleet-v1";

/// The fleet's shared secret (32 bytes). Wiped on drop; `Debug` prints no byte of it.
pub struct FleetSecret([u8; 32]);

impl FleetSecret {
    /// The secret of `bytes`.
    pub fn from_bytes(bytes: &[u8; 32]) -> FleetSecret {
        FleetSecret(*bytes)
    }

    /// A fresh random secret (`RAND_priv_bytes`).
    #[doc(alias = "RAND_priv_bytes")]
    pub fn generate() -> Result<FleetSecret> {
        let mut bytes = [0u8; 32];
        openssl::rand::rand_priv_bytes(&mut bytes).map_err(Error::Ssl)?;
        let secret = FleetSecret(bytes);
        crate::ffi::evp::cleanse(&mut bytes);
        Ok(secret)
    }

    /// Parses the text of a secret file (see the [module docs](self)).
    pub fn parse(text: &str) -> Result<FleetSecret> {
        let invalid =
            |why: &str| Error::Config(ConfigError::Invalid(format!("fleet secret: {why}")));
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = lines.next().ok_or_else(|| invalid("no secret line"))?;
        if lines.next().is_some() {
            return Err(invalid("more than one secret line"));
        }
        let mut words = line.split_whitespace();
        if words.next() != Some(FILE_TAG) {
            return Err(invalid(&format!(
                "the secret line must start with {FILE_TAG}"
            )));
        }
        let hex = words.next().ok_or_else(|| invalid("no hex digits"))?;
        if words.next().is_some() || hex.len() != 64 {
            return Err(invalid("the secret is exactly 64 hex digits (32 bytes)"));
        }
        let mut bytes = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => bytes[i] = (h * 16 + l) as u8,
                _ => {
                    crate::ffi::evp::cleanse(&mut bytes);
                    return Err(invalid("the secret is exactly 64 hex digits (32 bytes)"));
                }
            }
        }
        let secret = FleetSecret(bytes);
        crate::ffi::evp::cleanse(&mut bytes);
        Ok(secret)
    }

    /// Reads the secret from environment variable `name`: the secret line of a file
    /// (`openssl-dtls-fleet-v1 HEX`) or the 64 hex digits alone. For deployments that pass
    /// secrets through the environment (a container orchestrator's secret store).
    pub fn from_env(name: &str) -> Result<FleetSecret> {
        // The error never shows the value (`VarError`'s own text would print a non-UTF-8 one).
        let mut value = std::env::var(name).map_err(|e| {
            let why = match e {
                std::env::VarError::NotPresent => "not set",
                std::env::VarError::NotUnicode(_) => "not valid UTF-8",
            };
            Error::Config(ConfigError::Invalid(format!(
                "fleet secret: ${name}: {why}"
            )))
        })?;
        let secret = if value.trim_start().starts_with(FILE_TAG) {
            FleetSecret::parse(&value)
        } else {
            let mut line = format!("{FILE_TAG} {}", value.trim());
            let secret = FleetSecret::parse(&line);
            wipe_string(&mut line);
            secret
        };
        wipe_string(&mut value);
        secret
    }

    /// The text of a secret file holding this secret (see the [module docs](self)).
    pub fn to_file_text(&self) -> String {
        let mut text = String::from(
            "# openssl-dtls fleet secret: keep it like a private key; every node of the fleet reads it\n",
        );
        text.push_str(FILE_TAG);
        text.push(' ');
        for b in self.0 {
            text.push_str(&format!("{b:02x}"));
        }
        text.push('\n');
        text
    }

    /// Reads the secret file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<FleetSecret> {
        let path = path.as_ref();
        let mut text = std::fs::read_to_string(path).map_err(Error::Io)?;
        let secret = FleetSecret::parse(&text);
        wipe_string(&mut text);
        warn_if_readable(path);
        secret
    }

    /// Reads the secret file at `path`, or, if there is none, creates it with a fresh random
    /// secret (mode 0600). The file appears whole or not at all (written to a temporary file
    /// first, then linked into place, which fails if another node created it meanwhile: then
    /// that one is read), so a node starting at the same moment never reads half a secret.
    /// Returns the secret and whether this call created the file.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<(FleetSecret, bool)> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.as_ref();
        match FleetSecret::load(path) {
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => return other.map(|s| (s, false)),
        }
        let secret = FleetSecret::generate()?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".new.{}", std::process::id()));
        let tmp = std::path::PathBuf::from(tmp);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut file| {
                let mut text = secret.to_file_text();
                let written = file
                    .write_all(text.as_bytes())
                    .and_then(|()| file.sync_all());
                wipe_string(&mut text);
                written
            });
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok((secret, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                FleetSecret::load(path).map(|s| (s, false))
            }
            Err(e) => Err(Error::Io(e)),
        }
    }

    /// The 32 bytes derived for `label` (and `extra`): `HMAC-SHA256(secret, label ‖ extra)`
    /// (RFC 2104, on OpenSSL's SHA-256, which cannot fail).
    fn derive(&self, label: &[u8], extra: &[u8]) -> [u8; 32] {
        let mut pad = [0u8; 64];
        pad[..32].copy_from_slice(&self.0);
        pad.iter_mut().for_each(|b| *b ^= 0x36);
        let mut inner = Sha256::new();
        inner.update(&pad);
        inner.update(label);
        inner.update(extra);
        let mut inner_hash = inner.finish();
        pad.iter_mut().for_each(|b| *b ^= 0x36 ^ 0x5c);
        let mut outer = Sha256::new();
        outer.update(&pad);
        outer.update(&inner_hash);
        crate::ffi::evp::cleanse(&mut pad);
        crate::ffi::evp::cleanse(&mut inner_hash);
        outer.finish()
    }

    /// The cookie secret every node uses (what [`DtlsServerContextBuilder::fleet`] sets).
    pub(crate) fn cookie_secret(&self) -> [u8; 32] {
        self.derive(b"openssl-dtls fleet cookie secret v1", &[])
    }

    /// The session-ticket keys every node uses, changing every `rotation` by the wall clock
    /// ([`TicketKeys::with_secret`]): a ticket issued by one node resumes on any other. Keep the
    /// nodes' clocks well within one interval of each other.
    pub fn ticket_keys(&self, rotation: Duration) -> Result<TicketKeys> {
        let mut secret = self.derive(b"openssl-dtls fleet ticket secret v1", &[]);
        let keys = TicketKeys::with_secret(&secret, rotation);
        crate::ffi::evp::cleanse(&mut secret);
        keys
    }

    /// The key that seals node `node`'s graceful-restart state
    /// ([`DtlsServer::save_state`](crate::DtlsServer::save_state)): the node's successor
    /// derives the same one; another node's differs, so it cannot open this node's file.
    pub fn state_key(&self, node: u8) -> StateKey {
        let mut bytes = self.derive(b"openssl-dtls fleet state key v1", &[node]);
        let key = StateKey::from_bytes(&bytes);
        crate::ffi::evp::cleanse(&mut bytes);
        key
    }
}

impl Drop for FleetSecret {
    fn drop(&mut self) {
        crate::ffi::evp::cleanse(&mut self.0);
    }
}

impl fmt::Debug for FleetSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetSecret(<redacted>)")
    }
}

/// Zeroes a string holding secret text before it is freed.
fn wipe_string(text: &mut String) {
    let mut bytes = std::mem::take(text).into_bytes();
    crate::ffi::evp::cleanse_vec(&mut bytes);
}

/// Logs a warning if group or others may read the file at `path`.
fn warn_if_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            log::warn!(
                "{}: the fleet secret is readable by group or others (mode {:o}); 0600 is advised",
                path.display(),
                mode & 0o777
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_text_round_trips_and_malformed_files_are_refused() {
        let secret = FleetSecret::from_bytes(&[0xab; 32]);
        let text = secret.to_file_text();
        let back = FleetSecret::parse(&text).unwrap();
        assert_eq!(back.0, [0xab; 32]);
        for bad in [
            "",
            "# only a comment\n",
            "openssl-dtls-fleet-v2 abab\n",
            &format!("{FILE_TAG} {}\n", "ab".repeat(31)),
            &format!("{FILE_TAG} {}\n", "zz".repeat(32)),
            &format!("{FILE_TAG} {} extra\n", "ab".repeat(32)),
            &format!("{FILE_TAG} {0}\n{FILE_TAG} {0}\n", "ab".repeat(32)),
        ] {
            let err = FleetSecret::parse(bad).expect_err(bad);
            assert!(
                matches!(err, Error::Config(ConfigError::Invalid(_))),
                "{bad:?}: {err:?}"
            );
        }
        assert_eq!(format!("{secret:?}"), "FleetSecret(<redacted>)");
    }

    #[test]
    fn the_environment_holds_the_line_or_the_hex_alone() {
        let hex = "cd".repeat(32);
        std::env::set_var("OPENSSL_DTLS_TEST_FLEET_HEX", &hex);
        std::env::set_var("OPENSSL_DTLS_TEST_FLEET_LINE", format!("{FILE_TAG} {hex}"));
        std::env::set_var("OPENSSL_DTLS_TEST_FLEET_BAD", "cd");
        for name in [
            "OPENSSL_DTLS_TEST_FLEET_HEX",
            "OPENSSL_DTLS_TEST_FLEET_LINE",
        ] {
            assert_eq!(FleetSecret::from_env(name).unwrap().0, [0xcd; 32], "{name}");
        }
        for name in [
            "OPENSSL_DTLS_TEST_FLEET_BAD",
            "OPENSSL_DTLS_TEST_FLEET_UNSET",
        ] {
            assert!(matches!(
                FleetSecret::from_env(name),
                Err(Error::Config(ConfigError::Invalid(_)))
            ));
        }
    }

    #[test]
    fn derive_is_hmac_sha256() {
        // Against OpenSSL's own HMAC (`EVP_PKEY_HMAC`) over the same key and message.
        let secret = FleetSecret::from_bytes(&[0x0b; 32]);
        let key = openssl::pkey::PKey::hmac(&[0x0b; 32]).unwrap();
        let mut signer =
            openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
        let expected = signer.sign_oneshot_to_vec(b"Hi There").unwrap();
        assert_eq!(
            secret.derive(b"Hi ", b"There").as_slice(),
            expected.as_slice()
        );
    }

    #[test]
    fn derived_secrets_differ_by_use_and_node_and_agree_across_nodes() {
        let a = FleetSecret::from_bytes(&[1; 32]);
        let b = FleetSecret::from_bytes(&[1; 32]);
        let other = FleetSecret::from_bytes(&[2; 32]);
        assert_eq!(a.cookie_secret(), b.cookie_secret());
        assert_ne!(a.cookie_secret(), other.cookie_secret());
        assert_eq!(a.state_key(3).as_bytes(), b.state_key(3).as_bytes());
        assert_ne!(a.state_key(3).as_bytes(), a.state_key(4).as_bytes());
        assert_ne!(&a.cookie_secret(), a.state_key(0).as_bytes());
    }

    #[test]
    fn load_or_create_creates_a_private_file_once_and_then_reads_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("fleet-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        let (first, created) = FleetSecret::load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, created) = FleetSecret::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(first.0, second.0);
        std::fs::write(&path, "garbage").unwrap();
        assert!(FleetSecret::load_or_create(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
