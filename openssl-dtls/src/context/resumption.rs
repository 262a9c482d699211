//! Session resumption: the server's opt-in session cache and session tickets (with the rotating
//! [`TicketKeys`]), and the client's per-context session store.
//!
//! Servers resume nothing unless asked (SECURITY-CONSIDERATIONS.md §3.5): a resumed session
//! skips the PSK key store and the client-certificate verification, so it outlives a withdrawn
//! identity or certificate until its lifetime ends. Clients keep and offer sessions by default;
//! a server that does not resume simply runs a full handshake.
//!
//! Ticket keys work like the cookie keys (`crate::cookie`): the current key encrypts, the
//! previous one still decrypts (and the ticket is renewed under the current one), any other
//! ticket gets a full handshake. Keys are random and rotated on the handshake's time, or derived
//! from a shared secret and the wall-clock interval so that a fleet of servers behind a layer-4
//! load balancer accept each other's tickets.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use openssl::ssl::{Ssl, SslContextBuilder, SslOptions, SslRef, SslSession, SslSessionCacheMode};

use crate::error::{ConfigError, Error, Result};
use crate::ffi::ctx::{guard, TicketKey, TICKET_KEY_NAME_LEN};

use super::psk::Secret;

/// The largest server session cache [`session_cache`](super::DtlsServerContextBuilder::session_cache)
/// accepts: 1,048,576 sessions. Each costs OpenSSL about 1 KB without a client certificate (the
/// `SSL_SESSION` and the cache's hash entry), plus the client's certificate chain when it sent
/// one (a few KB per certificate, held until the session leaves the cache).
pub const MAX_SESSION_CACHE_SIZE: usize = 1 << 20;

/// The longest session lifetime a server accepts: 24 hours.
pub const MAX_SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The default rotation interval of [`TicketKeys`]: one hour, so a ticket decrypts for one to
/// two hours (and no longer than the context's session lifetime).
pub const DEFAULT_TICKET_ROTATION: Duration = Duration::from_secs(3600);

/// The default number of sessions a client context keeps (one per server name or address).
pub const DEFAULT_CLIENT_SESSIONS: usize = 256;

/// The largest client session store: 65,536 sessions.
pub const MAX_CLIENT_SESSIONS: usize = 1 << 16;

/// Shortest secret [`TicketKeys::with_secret`] accepts: 128 bits.
const MIN_TICKET_SECRET_LEN: usize = 16;

/// Domain separation of the values derived from a shared ticket secret.
const NAME_LABEL: &[u8] = b"openssl-dtls ticket key name";
const AES_LABEL: &[u8] = b"openssl-dtls ticket aes key";
const MAC_LABEL: &[u8] = b"openssl-dtls ticket mac key";

/// The keys that encrypt and decrypt a server's session tickets (RFC 5077), rotated every
/// interval: the current key encrypts new tickets, the previous one still decrypts (the ticket is
/// then renewed under the current key), and a ticket under any other key gets a full handshake,
/// without an error. A ticket so lives one to two intervals, never longer than the server's
/// session lifetime.
///
/// Clone it to give several server contexts the same keys (a cheap reference). For servers in
/// different processes behind a load balancer, give each [`with_secret`](Self::with_secret) the
/// same secret and interval, as with `cookie_secret` (SECURITY-CONSIDERATIONS.md §3.3 and §3.5).
///
/// Tickets are AES-256-CBC with HMAC-SHA256 under 16-byte key names, OpenSSL's own ticket
/// format. Key bytes are wiped when the keys are dropped or rotated away; `Debug` shows none.
#[doc(alias = "SSL_CTX_set_tlsext_ticket_key_evp_cb")]
#[derive(Clone)]
pub struct TicketKeys {
    inner: Arc<TicketInner>,
}

struct TicketInner {
    interval: Duration,
    mode: TicketMode,
}

enum TicketMode {
    /// Random keys, rotated on the handshake's time (or by [`TicketKeys::rotate_now`]).
    Random(Mutex<RandomRing>),
    /// Keys derived from a shared secret and the wall-clock interval number.
    Shared {
        secret: Secret,
        derived: Mutex<Option<(u64, KeyPair)>>,
    },
}

#[derive(Clone)]
struct KeyPair {
    current: TicketKey,
    previous: Option<TicketKey>,
}

struct RandomRing {
    pair: KeyPair,
    /// When `pair.current` took over; `None` until the first ticket.
    rotated_at: Option<Instant>,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.inner.mode {
            TicketMode::Random(_) => "random",
            TicketMode::Shared { .. } => "shared secret",
        };
        f.debug_struct("TicketKeys")
            .field("mode", &mode)
            .field("rotation", &self.inner.interval)
            .finish_non_exhaustive()
    }
}

impl TicketKeys {
    /// Random keys, rotated every `rotation` (at least 1 s; checked here), starting with the
    /// first ticket. Only the contexts holding these keys (or clones of them) accept their
    /// tickets.
    pub fn random(rotation: Duration) -> Result<TicketKeys> {
        check_rotation(rotation)?;
        let current = random_key().map_err(Error::from)?;
        Ok(TicketKeys {
            inner: Arc::new(TicketInner {
                interval: rotation,
                mode: TicketMode::Random(Mutex::new(RandomRing {
                    pair: KeyPair {
                        current,
                        previous: None,
                    },
                    rotated_at: None,
                })),
            }),
        })
    }

    /// Keys derived from `secret` (at least 16 bytes, kept secret like a private key) and the
    /// wall-clock interval number (Unix time ÷ `rotation`), so that servers sharing the secret
    /// and the interval accept each other's tickets: key material of interval *n* is
    /// `HMAC-SHA256(secret, label ‖ n)`. Keep the servers' clocks well within one interval of
    /// each other. A server with another secret (or a changed one) gives those tickets a full
    /// handshake.
    pub fn with_secret(secret: &[u8], rotation: Duration) -> Result<TicketKeys> {
        check_rotation(rotation)?;
        if secret.len() < MIN_TICKET_SECRET_LEN {
            return Err(Error::Config(ConfigError::Invalid(format!(
                "a ticket key secret is at least {MIN_TICKET_SECRET_LEN} bytes, this one has {}",
                secret.len()
            ))));
        }
        Ok(TicketKeys {
            inner: Arc::new(TicketInner {
                interval: rotation,
                mode: TicketMode::Shared {
                    secret: Secret(secret.to_vec()),
                    derived: Mutex::new(None),
                },
            }),
        })
    }

    /// The rotation interval.
    pub fn rotation(&self) -> Duration {
        self.inner.interval
    }

    /// Rotates random keys now: a new key encrypts, the current one becomes the previous one
    /// (still decrypting), and the previous one is forgotten (its tickets get full handshakes).
    /// Returns `false`, doing nothing, for keys derived from a shared secret, which follow the
    /// wall clock.
    pub fn rotate_now(&self) -> Result<bool> {
        let TicketMode::Random(ring) = &self.inner.mode else {
            return Ok(false);
        };
        let fresh = random_key().map_err(Error::from)?;
        let mut ring = lock(ring);
        let old = std::mem::replace(&mut ring.pair.current, fresh);
        ring.pair.previous = Some(old);
        Ok(true)
    }

    /// The keys in force at `now` (random keys) or at the wall-clock time (shared keys).
    fn pair(&self, now: Option<Instant>) -> Option<KeyPair> {
        let interval = self.inner.interval;
        match &self.inner.mode {
            TicketMode::Random(ring) => {
                let mut ring = lock(ring);
                if let Some(now) = now {
                    match ring.rotated_at {
                        None => ring.rotated_at = Some(now),
                        Some(at) => {
                            let elapsed = now.saturating_duration_since(at);
                            if elapsed >= interval.saturating_mul(2) {
                                ring.pair = KeyPair {
                                    current: random_key().ok()?,
                                    previous: None,
                                };
                                ring.rotated_at = Some(now);
                            } else if elapsed >= interval {
                                let fresh = random_key().ok()?;
                                let old = std::mem::replace(&mut ring.pair.current, fresh);
                                ring.pair.previous = Some(old);
                                ring.rotated_at = Some(at + interval);
                            }
                        }
                    }
                }
                Some(ring.pair.clone())
            }
            TicketMode::Shared { secret, derived } => {
                let since = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
                let n = (since.as_nanos() / interval.as_nanos().max(1)) as u64;
                let mut derived = lock(derived);
                if let Some((m, pair)) = derived.as_ref() {
                    if *m == n {
                        return Some(pair.clone());
                    }
                }
                let pair = KeyPair {
                    current: derive_key(&secret.0, n).ok()?,
                    previous: match n.checked_sub(1) {
                        Some(p) => Some(derive_key(&secret.0, p).ok()?),
                        None => None,
                    },
                };
                *derived = Some((n, pair.clone()));
                Some(pair)
            }
        }
    }

    /// The ticket-key callback's answer: the key to encrypt with (`name` is `None`), or the key
    /// named `name` and whether to renew its ticket.
    fn lookup(
        &self,
        ssl: &SslRef,
        name: Option<&[u8; TICKET_KEY_NAME_LEN]>,
    ) -> Option<(TicketKey, bool)> {
        let now = crate::ffi::bio::peer_and_now(ssl).and_then(|(_, now)| now);
        let pair = self.pair(now)?;
        match name {
            None => Some((pair.current, false)),
            Some(name) if *name == pair.current.name => Some((pair.current, false)),
            Some(name) => match pair.previous {
                Some(previous) if *name == previous.name => Some((previous, true)),
                _ => {
                    log::debug!("session ticket under an unknown or expired key: full handshake");
                    None
                }
            },
        }
    }
}

fn check_rotation(rotation: Duration) -> Result<()> {
    if rotation < Duration::from_secs(1) {
        return Err(Error::Config(ConfigError::OutOfRange {
            setting: "ticket key rotation",
            value: rotation.as_millis().min(u128::from(u64::MAX)) as u64,
            allowed: "at least 1 s",
        }));
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn random_key() -> Result<TicketKey, ErrorStack> {
    let mut key = TicketKey {
        name: [0; TICKET_KEY_NAME_LEN],
        aes: [0; 32],
        mac: [0; 32],
    };
    openssl::rand::rand_bytes(&mut key.name)?;
    openssl::rand::rand_bytes(&mut key.aes)?;
    openssl::rand::rand_bytes(&mut key.mac)?;
    Ok(key)
}

/// The key of interval `n` derived from `secret`.
fn derive_key(secret: &[u8], n: u64) -> Result<TicketKey, ErrorStack> {
    let master = PKey::hmac(secret)?;
    let mac = |label: &[u8], out: &mut [u8]| -> Result<(), ErrorStack> {
        let mut signer = Signer::new(MessageDigest::sha256(), &master)?;
        signer.update(label)?;
        signer.update(&n.to_be_bytes())?;
        let mut full = signer.sign_to_vec()?;
        out.copy_from_slice(&full[..out.len()]);
        crate::ffi::evp::cleanse(&mut full);
        Ok(())
    };
    let mut key = TicketKey {
        name: [0; TICKET_KEY_NAME_LEN],
        aes: [0; 32],
        mac: [0; 32],
    };
    mac(NAME_LABEL, &mut key.name)?;
    mac(AES_LABEL, &mut key.aes)?;
    mac(MAC_LABEL, &mut key.mac)?;
    Ok(key)
}

/// A server's resumption settings (none by default).
#[derive(Clone, Default)]
pub(crate) struct ServerResumption {
    /// Cache size and session lifetime.
    pub(crate) cache: Option<(usize, Duration)>,
    pub(crate) tickets: Option<TicketKeys>,
}

impl fmt::Debug for ServerResumption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerResumption")
            .field("cache", &self.cache)
            .field("tickets", &self.tickets)
            .finish()
    }
}

impl ServerResumption {
    /// Applies the settings to a server context. `verification` describes the settings a
    /// resumed session skips (client authentication, roots): it becomes the session-id context,
    /// so a session (or ticket) made under other settings is never resumed here.
    pub(crate) fn apply(
        &self,
        b: &mut SslContextBuilder,
        verification: &[u8],
    ) -> Result<(), ConfigError> {
        if self.cache.is_none() && self.tickets.is_none() {
            // The secure default: every handshake re-checks credentials (§3.5).
            b.set_options(SslOptions::NO_TICKET);
            b.set_session_cache_mode(SslSessionCacheMode::OFF);
            return Ok(());
        }
        // SSL_CTX_set_session_id_context: OpenSSL refuses to resume sessions with client
        // certificates without one, and resumes only sessions made under the same one.
        let digest = openssl::hash::hash(MessageDigest::sha256(), verification)
            .map_err(|e| ConfigError::Invalid(format!("cannot hash the session context: {e}")))?;
        b.set_session_id_context(&digest)
            .map_err(|e| ConfigError::Invalid(format!("session id context: {e}")))?;
        let lifetime = match (&self.cache, &self.tickets) {
            (Some((size, lifetime)), _) => {
                if *size == 0 || *size > MAX_SESSION_CACHE_SIZE {
                    return Err(ConfigError::OutOfRange {
                        setting: "session_cache size",
                        value: *size as u64,
                        allowed: "1 to 1048576 sessions",
                    });
                }
                if *lifetime < Duration::from_secs(1) || *lifetime > MAX_SESSION_LIFETIME {
                    return Err(ConfigError::OutOfRange {
                        setting: "session_cache lifetime",
                        value: lifetime.as_secs(),
                        allowed: "1 s to 24 h",
                    });
                }
                b.set_session_cache_mode(SslSessionCacheMode::SERVER);
                b.set_session_cache_size(i32::try_from(*size).unwrap_or(i32::MAX));
                *lifetime
            }
            (None, Some(keys)) => {
                b.set_session_cache_mode(SslSessionCacheMode::OFF);
                keys.rotation().saturating_mul(2).min(MAX_SESSION_LIFETIME)
            }
            (None, None) => unreachable!("handled above"),
        };
        crate::ffi::ctx::set_session_timeout(b, lifetime);
        match &self.tickets {
            Some(keys) => {
                let keys = keys.clone();
                crate::ffi::ctx::set_ticket_key_callback(
                    b,
                    Box::new(move |ssl, name| keys.lookup(ssl, name)),
                )
                .map_err(|e| ConfigError::Invalid(format!("session ticket callback: {e}")))?;
            }
            None => {
                b.set_options(SslOptions::NO_TICKET);
            }
        }
        Ok(())
    }
}

/// What a client session is stored under: the server name it was made for, or else the peer's
/// address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum StoreKey {
    Name(String),
    Addr(SocketAddr),
}

/// A client context's sessions, one per [`StoreKey`], at most `capacity` (the oldest stored
/// goes first).
pub(crate) struct ClientSessions {
    capacity: usize,
    map: Mutex<Store>,
}

#[derive(Default)]
struct Store {
    next: u64,
    sessions: HashMap<StoreKey, (u64, SslSession)>,
}

impl fmt::Debug for ClientSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSessions")
            .field("capacity", &self.capacity)
            .field("stored", &self.len())
            .finish()
    }
}

fn key_index() -> Option<Index<Ssl, StoreKey>> {
    static INDEX: OnceLock<Option<Index<Ssl, StoreKey>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

impl ClientSessions {
    /// An empty store, installed on the client context being built: OpenSSL hands every new
    /// resumable session to it (`SSL_CTX_sess_set_new_cb`, client cache mode without OpenSSL's
    /// own store).
    pub(crate) fn install(
        b: &mut SslContextBuilder,
        capacity: usize,
    ) -> Result<Arc<ClientSessions>, ConfigError> {
        if capacity == 0 || capacity > MAX_CLIENT_SESSIONS {
            return Err(ConfigError::OutOfRange {
                setting: "session_store_capacity",
                value: capacity as u64,
                allowed: "1 to 65536 sessions",
            });
        }
        let store = Arc::new(ClientSessions {
            capacity,
            map: Mutex::new(Store::default()),
        });
        b.set_session_cache_mode(
            SslSessionCacheMode::CLIENT | SslSessionCacheMode::NO_INTERNAL_STORE,
        );
        let callback_store = Arc::clone(&store);
        b.set_new_session_callback(move |ssl, session| {
            guard("new session", (), || {
                let key = key_index().and_then(|i| ssl.ex_data(i)).cloned();
                if let Some(key) = key {
                    callback_store.insert(key, session);
                }
            })
        });
        Ok(store)
    }

    /// Tags `ssl` with `key` and offers the session stored under it, if any.
    pub(crate) fn prepare(&self, ssl: &mut SslRef, key: StoreKey) -> Result<(), ErrorStack> {
        let index = key_index().ok_or_else(ErrorStack::get)?;
        let stored = lock(&self.map).sessions.get(&key).map(|(_, s)| s.clone());
        ssl.set_ex_data(index, key);
        if let Some(session) = stored {
            crate::ffi::ctx::offer_session(ssl, &session)?;
        }
        Ok(())
    }

    fn insert(&self, key: StoreKey, session: SslSession) {
        let mut store = lock(&self.map);
        let seq = store.next;
        store.next += 1;
        if !store.sessions.contains_key(&key) && store.sessions.len() >= self.capacity {
            let oldest = store
                .sessions
                .iter()
                .min_by_key(|(_, (seq, _))| *seq)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                store.sessions.remove(&oldest);
            }
        }
        store.sessions.insert(key, (seq, session));
    }

    /// How many sessions are stored.
    pub(crate) fn len(&self) -> usize {
        lock(&self.map).sessions.len()
    }

    /// Forgets every stored session.
    pub(crate) fn clear(&self) {
        lock(&self.map).sessions.clear();
    }
}
