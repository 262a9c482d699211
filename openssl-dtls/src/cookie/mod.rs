//! Stateless DTLS cookies (RFC 6347 §4.2.1) and the rotating keys behind them.
//!
//! This module owns the cookie a server puts in its HelloVerifyRequest and checks when the client
//! echoes it: `HMAC-SHA256(key, "openssl-dtls cookie v1" || family || address || port [|| scope])`,
//! [`COOKIE_LEN`] bytes. The server keeps no per-peer state: a cookie proves only that the peer
//! received a datagram at that address and port recently, which is all RFC 6347 §4.2.1 asks.
//!
//! Keys rotate every `interval`, and a cookie verifies under the current or the previous key, so
//! a cookie lives at least one interval and less than two:
//!
//! - [`CookieSecrets::random`]: fresh random keys, rotated on the `now: Instant` the caller passes
//!   in (sans-IO: no clock is read). The first interval starts at the first `now` the keys see
//!   (the first cookie made or checked), not when they were created: the context that makes them
//!   has no business reading the clock. A gap of two intervals or more replaces both keys.
//! - [`CookieSecrets::with_secret`]: for several servers behind one load balancer, which must
//!   accept each other's cookies. The key for interval `n` is derived deterministically as
//!   `HMAC-SHA256(secret, "openssl-dtls cookie key" || n)` with `n = time since UNIX_EPOCH /
//!   interval`. This mode reads [`SystemTime`]: an `Instant` is private to one process, and the
//!   servers can only agree on which interval it is through the wall clock they share.
//!
//! Secret handling: every copy of key material in Rust memory (random bytes, derived keys, a
//! pre-hashed long secret) lives in a buffer that is wiped (`crate::wipe`: `OPENSSL_cleanse`) as
//! soon as it has been absorbed. A key is kept as its HMAC inner and outer SHA-256 states
//! ([`MacKey`], RFC 2104 precomputation), wiped the same way whenever a copy is dropped (on
//! drop, on rotation, and after each cookie). A cookie is then two SHA-256 continuations on the
//! stack: no allocation and no `EVP` context per cookie (an `EVP_DigestSign` over an HMAC
//! `EVP_PKEY`, as before, cost 33 OpenSSL allocations per cookie, two cookies per handshake:
//! the bench's `hsallocs` section).
//!
//! [`install`] puts the cookie callbacks on a server's `SSL_CTX`, over one shared
//! [`CookieSecrets`]; `DTLSv1_listen` calls them with the peer and the time the endpoint recorded
//! on the listening `SSL`'s datagram BIO.
//!
//! Thread safety: [`CookieSecrets`] is `Send + Sync`. A short `Mutex` section copies the two keys'
//! hash states (a few hundred bytes on the stack), rotating first when due; the HMACs run outside
//! it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::error::ErrorStack;
use openssl::sha::Sha256;
use openssl::ssl::SslContextBuilder;

use crate::ffi::ctx::guard;
use crate::ffi::evp::{cleanse as wipe, cleanse_sha256};

/// Length of a cookie: one HMAC-SHA256 output.
pub(crate) const COOKIE_LEN: usize = 32;

/// Shortest secret [`CookieSecrets::with_secret`] accepts: 128 bits.
pub(crate) const MIN_SHARED_SECRET_LEN: usize = 16;

/// Shortest rotation interval; shorter ones are raised to it (a zero interval would rotate on
/// every call, and no cookie would ever verify).
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Length of each HMAC key: the SHA-256 output size.
const KEY_LEN: usize = 32;

/// SHA-256 block size: HMAC hashes longer keys first (RFC 2104 §2).
const HMAC_BLOCK_LEN: usize = 64;

/// Domain separation for the cookie MAC: these keys sign nothing else.
const COOKIE_LABEL: &[u8] = b"openssl-dtls cookie v1";

/// Domain separation for deriving a shared-mode interval key from the configured secret.
const KEY_LABEL: &[u8] = b"openssl-dtls cookie key";

/// The keys that make and check cookies, rotated every interval. See the module docs.
pub(crate) struct CookieSecrets {
    interval: Duration,
    keys: Keys,
}

/// Where the keys come from.
enum Keys {
    /// Random keys, rotated on the caller's `Instant`.
    Random(Mutex<RandomKeys>),
    /// Keys derived from a configured secret and the wall-clock interval number.
    Shared {
        /// The configured secret, as an HMAC key.
        master: Box<MacKey>,
        /// Keys for the last interval used; `None` until the first call.
        derived: Mutex<Option<SharedKeys>>,
    },
}

/// The keys a cookie may verify under: the one cookies are made with, and the one before it.
#[derive(Clone)]
struct KeyPair {
    current: MacKey,
    previous: MacKey,
}

/// An HMAC-SHA256 key (RFC 2104) as its two precomputed hash states: SHA-256 after absorbing
/// `key ^ ipad`, and after `key ^ opad`. Every `MacKey` is wiped when dropped; a MAC's own
/// states, once the message is absorbed, pass by value through `Sha256::finish` (rust-openssl),
/// whose stack copy is not wiped.
#[derive(Clone)]
struct MacKey {
    inner: Sha256,
    outer: Sha256,
}

impl MacKey {
    /// The key `key` (hashed first if longer than a block, as HMAC does).
    fn new(key: &[u8]) -> MacKey {
        let mut block = [0u8; HMAC_BLOCK_LEN];
        if key.len() > HMAC_BLOCK_LEN {
            let mut digest = openssl::sha::sha256(key);
            block[..KEY_LEN].copy_from_slice(&digest);
            wipe(&mut digest);
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let mut pad = [0u8; HMAC_BLOCK_LEN];
        let mut keyed = |byte: u8| {
            for (p, k) in pad.iter_mut().zip(&block) {
                *p = k ^ byte;
            }
            let mut state = Sha256::new();
            state.update(&pad);
            state
        };
        let key = MacKey {
            inner: keyed(0x36),
            outer: keyed(0x5c),
        };
        wipe(&mut pad);
        wipe(&mut block);
        key
    }

    /// HMAC-SHA256 of the concatenated `parts` into `out`.
    fn mac(&self, parts: &[&[u8]], out: &mut [u8; KEY_LEN]) {
        let mut state = self.clone();
        for part in parts {
            state.inner.update(part);
        }
        let mut inner = std::mem::replace(&mut state.inner, Sha256::new()).finish();
        state.outer.update(&inner);
        wipe(&mut inner);
        *out = std::mem::replace(&mut state.outer, Sha256::new()).finish();
    }
}

impl Drop for MacKey {
    fn drop(&mut self) {
        cleanse_sha256(&mut self.inner);
        cleanse_sha256(&mut self.outer);
    }
}

/// State of [`Keys::Random`].
struct RandomKeys {
    pair: KeyPair,
    /// When `pair.current` took over; `None` until the first call, whose `now` starts the
    /// first interval.
    rotated_at: Option<Instant>,
}

/// State of [`Keys::Shared`].
struct SharedKeys {
    pair: KeyPair,
    /// Interval number `pair.current` was derived for.
    interval_number: u64,
}

/// A stack buffer for key bytes that is overwritten with zeros when dropped.
struct SecretBytes([u8; KEY_LEN]);

impl SecretBytes {
    fn zeroed() -> Self {
        SecretBytes([0; KEY_LEN])
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

impl CookieSecrets {
    /// Random keys, rotated every `interval` (at least [`MIN_INTERVAL`]), starting at the first
    /// `now` they are used with.
    ///
    /// Errors if OpenSSL's random generator or HMAC key creation fails.
    pub(crate) fn random(interval: Duration) -> Result<Self, ErrorStack> {
        CookieSecrets::random_starting(interval, None)
    }

    /// [`random`](Self::random) with the first interval starting at `now` (tests and the fuzz
    /// targets, which drive their own clock from a fixed origin).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn random_from(interval: Duration, now: Instant) -> Result<Self, ErrorStack> {
        CookieSecrets::random_starting(interval, Some(now))
    }

    fn random_starting(interval: Duration, start: Option<Instant>) -> Result<Self, ErrorStack> {
        let pair = KeyPair {
            current: fresh_key()?,
            previous: fresh_key()?,
        };
        Ok(CookieSecrets {
            interval: interval.max(MIN_INTERVAL),
            keys: Keys::Random(Mutex::new(RandomKeys {
                pair,
                rotated_at: start,
            })),
        })
    }

    /// Keys derived from `secret` (at least [`MIN_SHARED_SECRET_LEN`] bytes), so that every
    /// server configured with the same secret and `interval` makes and accepts the same cookies.
    ///
    /// Random rotation is off in this mode: the key changes when the wall-clock interval number
    /// changes (see the module docs). Keep the servers' clocks in sync to well under `interval`.
    pub(crate) fn with_secret(secret: &[u8], interval: Duration) -> Result<Self, &'static str> {
        if secret.len() < MIN_SHARED_SECRET_LEN {
            return Err("cookie secret must be at least 16 bytes long");
        }
        // RFC 2104 §2: a key longer than a block is hashed first (`MacKey::new`).
        let master = Box::new(MacKey::new(secret));
        Ok(CookieSecrets {
            interval: interval.max(MIN_INTERVAL),
            keys: Keys::Shared {
                master,
                derived: Mutex::new(None),
            },
        })
    }

    /// Writes the cookie for `peer` into the first [`COOKIE_LEN`] bytes of `out` and returns
    /// [`COOKIE_LEN`]; returns 0 if `out` is too small or OpenSSL failed.
    ///
    /// Rotates the keys first if an interval has passed since the last rotation. `now` is unused
    /// with a shared secret, which follows the wall clock.
    #[doc(alias = "SSL_CTX_set_cookie_generate_cb")]
    pub(crate) fn generate(&self, now: Instant, peer: SocketAddr, out: &mut [u8]) -> usize {
        let Some(out) = out.get_mut(..COOKIE_LEN) else {
            return 0;
        };
        match self.keys(now) {
            Some(keys) => generate_with(&keys, peer, out),
            None => 0,
        }
    }

    /// True if `cookie` is what [`generate`](Self::generate) makes for `peer` under the current
    /// or the previous key. The comparison is constant-time.
    #[doc(alias = "SSL_CTX_set_cookie_verify_cb")]
    pub(crate) fn verify(&self, now: Instant, peer: SocketAddr, cookie: &[u8]) -> bool {
        if cookie.len() != COOKIE_LEN {
            return false;
        }
        match self.keys(now) {
            Some(keys) => verify_with(&keys, peer, cookie),
            None => false,
        }
    }

    /// How long a key stays current: a cookie verifies for at least this long, and for less than
    /// twice this long.
    #[cfg_attr(not(test), allow(dead_code))] // used by tests
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// The keys valid at `now`, rotating first if due; `None` if OpenSSL failed.
    fn keys(&self, now: Instant) -> Option<KeyPair> {
        match &self.keys {
            Keys::Random(state) => self.random_keys(state, now),
            Keys::Shared { master, derived } => {
                // Before 1970 only on a badly broken clock; every server would agree on 0 anyway.
                let since_epoch = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO);
                self.shared_keys(master, derived, since_epoch)
            }
        }
    }

    /// Random mode: rotate when `interval` has passed since the last rotation.
    fn random_keys(&self, state: &Mutex<RandomKeys>, now: Instant) -> Option<KeyPair> {
        let mut state = lock(state);
        let rotated_at = *state.rotated_at.get_or_insert(now);
        let elapsed = now.saturating_duration_since(rotated_at);
        if elapsed >= self.interval {
            let two_intervals = self.interval.checked_mul(2).unwrap_or(Duration::MAX);
            if elapsed >= two_intervals {
                // Two or more rotations at once: the previous key would also have been replaced,
                // so no cookie made before the gap may verify.
                state.pair = KeyPair {
                    current: fresh_key().ok()?,
                    previous: fresh_key().ok()?,
                };
                state.rotated_at = Some(now);
            } else {
                let current = fresh_key().ok()?;
                // The old previous key is dropped here; OpenSSL wipes it once no copy is in use.
                state.pair.previous = std::mem::replace(&mut state.pair.current, current);
                // Stay on the interval grid so that cookie lifetimes do not drift.
                state.rotated_at = Some(rotated_at.checked_add(self.interval).unwrap_or(now));
            }
        }
        Some(state.pair.clone())
    }

    /// Shared mode: the keys of the interval containing `since_epoch` and of the one before it.
    fn shared_keys(
        &self,
        master: &MacKey,
        derived: &Mutex<Option<SharedKeys>>,
        since_epoch: Duration,
    ) -> Option<KeyPair> {
        let number = interval_number(since_epoch, self.interval);
        let mut derived = lock(derived);
        let cached = derived.as_ref().map(|keys| keys.interval_number);
        if cached == Some(number) {
            // Nothing to do: the common case.
        } else if let (Some(keys), true) = (
            derived.as_mut(),
            cached.and_then(|n| n.checked_add(1)) == Some(number),
        ) {
            let current = derive_interval_key(master, number).ok()?;
            keys.pair.previous = std::mem::replace(&mut keys.pair.current, current);
            keys.interval_number = number;
        } else {
            // First use, a long pause, or a clock that stepped: derive both.
            *derived = Some(SharedKeys {
                pair: KeyPair {
                    current: derive_interval_key(master, number).ok()?,
                    previous: derive_interval_key(master, number.wrapping_sub(1)).ok()?,
                },
                interval_number: number,
            });
        }
        derived.as_ref().map(|keys| keys.pair.clone())
    }
}

impl fmt::Debug for CookieSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.keys {
            Keys::Random(_) => "random",
            Keys::Shared { .. } => "shared secret",
        };
        f.debug_struct("CookieSecrets")
            .field("mode", &mode)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Locks `mutex`, ignoring poisoning: every update assigns whole values, so the state is
/// consistent even if a thread panicked while holding the lock.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `floor(since_epoch / interval)`; `interval` is at least [`MIN_INTERVAL`].
fn interval_number(since_epoch: Duration, interval: Duration) -> u64 {
    let interval_ms = interval.as_millis().max(1);
    u64::try_from(since_epoch.as_millis() / interval_ms).unwrap_or(u64::MAX)
}

/// A new HMAC key from OpenSSL's private random generator.
fn fresh_key() -> Result<MacKey, ErrorStack> {
    let mut bytes = SecretBytes::zeroed();
    openssl::rand::rand_priv_bytes(&mut bytes.0)?;
    Ok(MacKey::new(&bytes.0))
}

/// The shared-mode key of interval `number`: `HMAC(secret, KEY_LABEL || number)`.
fn derive_interval_key(master: &MacKey, number: u64) -> Result<MacKey, ErrorStack> {
    let mut bytes = SecretBytes::zeroed();
    hmac_sha256(master, &[KEY_LABEL, &number.to_be_bytes()], &mut bytes.0)?;
    Ok(MacKey::new(&bytes.0))
}

/// HMAC-SHA256 of the concatenated `parts` into `out` (exactly [`KEY_LEN`] bytes). Cannot fail
/// (kept fallible for the callers' error paths).
fn hmac_sha256(key: &MacKey, parts: &[&[u8]], out: &mut [u8; KEY_LEN]) -> Result<(), ErrorStack> {
    key.mac(parts, out);
    Ok(())
}

/// The cookie for `peer` under `key`. Address family, address, port and (IPv6) scope ID are
/// all bound: a link-local peer on another interface is another peer.
fn cookie_mac(
    key: &MacKey,
    peer: SocketAddr,
    out: &mut [u8; COOKIE_LEN],
) -> Result<(), ErrorStack> {
    match peer {
        SocketAddr::V4(addr) => hmac_sha256(
            key,
            &[
                COOKIE_LABEL,
                &[4],
                &addr.ip().octets(),
                &addr.port().to_be_bytes(),
            ],
            out,
        ),
        SocketAddr::V6(addr) => hmac_sha256(
            key,
            &[
                COOKIE_LABEL,
                &[6],
                &addr.ip().octets(),
                &addr.port().to_be_bytes(),
                &addr.scope_id().to_be_bytes(),
            ],
            out,
        ),
    }
}

/// Writes the cookie for `peer` under the current key into `out` (exactly [`COOKIE_LEN`] bytes).
fn generate_with(keys: &KeyPair, peer: SocketAddr, out: &mut [u8]) -> usize {
    let mut mac = [0; COOKIE_LEN];
    if cookie_mac(&keys.current, peer, &mut mac).is_err() {
        return 0;
    }
    match out.get_mut(..COOKIE_LEN) {
        Some(out) => {
            out.copy_from_slice(&mac);
            COOKIE_LEN
        }
        None => 0,
    }
}

/// True if `cookie` matches `peer` under the current or the previous key (constant-time).
fn verify_with(keys: &KeyPair, peer: SocketAddr, cookie: &[u8]) -> bool {
    if cookie.len() != COOKIE_LEN {
        return false;
    }
    [&keys.current, &keys.previous].into_iter().any(|key| {
        let mut expected = [0; COOKIE_LEN];
        cookie_mac(key, peer, &mut expected).is_ok() && openssl::memcmp::eq(&expected, cookie)
    })
}

/// Installs the cookie callbacks on a server context (`SSL_CTX_set_cookie_generate_cb`,
/// `SSL_CTX_set_cookie_verify_cb`) over `secrets`, shared by both.
///
/// They read the peer and the time from the `SSL`'s datagram BIO, where the listener records
/// them before every `DTLSv1_listen`; no clock is read here. Without a peer or a time, generation
/// fails (no HelloVerifyRequest) and verification says no, with a debug log: a cookie is never
/// made or accepted on a guess. A panic counts as failure.
#[doc(alias = "SSL_CTX_set_cookie_generate_cb")]
#[doc(alias = "SSL_CTX_set_cookie_verify_cb")]
pub(crate) fn install(b: &mut SslContextBuilder, secrets: CookieSecrets) {
    let secrets = std::sync::Arc::new(secrets);
    let generate = std::sync::Arc::clone(&secrets);
    b.set_cookie_generate_cb(move |ssl, out| {
        let n = guard(
            "cookie generate",
            0,
            || match crate::ffi::bio::peer_and_now(ssl) {
                Some((peer, Some(now))) => generate.generate(now, peer, out),
                Some((_, None)) => {
                    log::debug!("cookie requested without the time on the SSL's BIO: none made");
                    0
                }
                None => {
                    log::debug!("cookie requested for an SSL without a known peer");
                    0
                }
            },
        );
        if n == 0 {
            Err(ErrorStack::get())
        } else {
            Ok(n)
        }
    });
    let verify = secrets;
    b.set_cookie_verify_cb(move |ssl, cookie| {
        guard(
            "cookie verify",
            false,
            || match crate::ffi::bio::peer_and_now(ssl) {
                Some((peer, Some(now))) => verify.verify(now, peer, cookie),
                Some((_, None)) => {
                    log::debug!("cookie to verify without the time on the SSL's BIO: refused");
                    false
                }
                None => false,
            },
        )
    });
}

#[cfg(test)]
mod tests;
