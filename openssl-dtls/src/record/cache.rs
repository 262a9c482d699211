//! Per-thread resources of the compact record layer, so that idle connections hold neither:
//!
//! * a small cache of keyed `EVP_CIPHER_CTX`s. A connection direction hits its own context
//!   without allocating; a miss re-keys the least recently used context of the same cipher
//!   (no allocation either once the cache is full). Each direction of each connection has an
//!   identity that is never reused, so a stale entry can never serve another connection.
//! * a pool of datagram and plaintext buffers ([`take_buffer`], [`give_buffer`]), so a steady
//!   flow allocates nothing.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use openssl::cipher_ctx::CipherCtxRef;
use openssl::error::ErrorStack;

use super::aead::{self, Aead};
use super::MAX_PLAINTEXT;
use crate::ffi::evp;

/// The next identity for the cipher-context cache (never reused, so a stale cache entry can
/// never serve another connection).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh cache identity for a connection: even, used as is for its write direction and with
/// the low bit set (`id | 1`) for its read direction.
pub(super) fn new_identity() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed) << 1
}

/// Keyed cipher contexts kept per thread.
pub(super) const CACHE_SLOTS: usize = 16;
// A slot's index fits the `u8` hint a record layer keeps (see `with_ctx`).
const _: () = assert!(CACHE_SLOTS <= 256);

/// One cached context.
struct Slot {
    /// The direction identity whose key the context holds; 0: none (must be re-keyed; no
    /// identity is 0, so an empty slot never matches).
    owner: u64,
    /// The context's cipher.
    aead: Aead,
    /// The context serves only OpenSSL's TLS one-shot AEAD, with the fixed IV of its owner set
    /// when keyed ([`Aead::set_fixed_iv`]): as if another cipher.
    one_shot: bool,
    /// `None` in a slot not used yet.
    ctx: Option<evp::OwnedCipherCtx>,
    /// What its one-shot records need beyond it.
    state: OneShot,
    /// The tick of its latest use, for least-recently-used replacement.
    used: u64,
}

impl Slot {
    /// A slot not used yet.
    const EMPTY: Slot = Slot {
        owner: 0,
        aead: Aead::Aes128Gcm,
        one_shot: false,
        ctx: None,
        state: OneShot::NEW,
        used: 0,
    };
}

/// What a context keeps for OpenSSL's one-shot records beyond the context itself.
pub(super) struct OneShot {
    /// An AES-GCM one-shot context keyed for encryption: the explicit nonce OpenSSL gives its
    /// next record, if known ([`Aead::set_fixed_iv`]); `None` after keying.
    pub(super) next_explicit: Option<[u8; 8]>,
    /// The parameter array of its records, built once ([`evp::TlsAadParams`]).
    pub(super) params: evp::TlsAadParams,
}

impl OneShot {
    /// No count known, the parameter array pointing nowhere yet.
    pub(super) const NEW: OneShot = OneShot {
        next_explicit: None,
        params: evp::TlsAadParams::new(),
    };
}

impl Default for OneShot {
    fn default() -> OneShot {
        OneShot::NEW
    }
}

/// This thread's cached contexts and its clock for least-recently-used replacement. A fixed
/// array (the first `len` slots used): the slot a record layer's hint names is found with no
/// bounds check and no pointer to load.
struct Cache {
    slots: [Slot; CACHE_SLOTS],
    /// Slots used (keyed once), from the first.
    len: usize,
    /// Counts uses: the `used` tick of the newest.
    tick: u64,
}

thread_local! {
    static CACHE: RefCell<Cache> = const {
        RefCell::new(Cache {
            slots: [const { Slot::EMPTY }; CACHE_SLOTS],
            len: 0,
            tick: 0,
        })
    };
    /// How many times this thread keyed a context (a miss), for tests.
    static REKEYS: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` on a context keyed with `key` for `owner` (a direction of one connection), from this
/// thread's cache. `one_shot`: one that serves only OpenSSL's one-shot records, whose fixed IV,
/// `iv`, is set when it is keyed ([`Aead::set_fixed_iv`]). `f` also gets the context's
/// [`OneShot`] state to read and update. `None` if keying or `f` failed (what OpenSSL queued
/// is taken off its error queue and dropped: callers report their own errors).
///
/// A hit is one comparison at `hint`, where `owner`'s context was last found, else a scan of
/// at most [`CACHE_SLOTS`] identities and keying on a miss, out of line ([`Cache::find`];
/// `hint` is updated there).
#[inline]
#[allow(clippy::too_many_arguments)]
pub(super) fn with_ctx<R>(
    owner: u64,
    hint: &mut u8,
    aead: Aead,
    key: &[u8; 32],
    iv: &[u8; 12],
    encrypt: bool,
    one_shot: bool,
    f: impl FnOnce(&mut CipherCtxRef, &mut OneShot) -> Option<R>,
) -> Option<R> {
    // `try_with`: during thread-local teardown there is no cache: fail the record, never panic.
    CACHE
        .try_with(|cache| -> Option<R> {
            let mut cache = cache.borrow_mut();
            let cache = &mut *cache;
            cache.tick += 1;
            let tick = cache.tick;
            let at = &mut cache.slots[usize::from(*hint) % CACHE_SLOTS];
            let slot = if at.owner == owner && at.one_shot == one_shot {
                at
            } else {
                let i = cache.find(owner, aead, key, iv, encrypt, one_shot)?;
                *hint = i as u8; // < CACHE_SLOTS
                &mut cache.slots[i % CACHE_SLOTS]
            };
            slot.used = tick;
            let r = f(slot.ctx.as_mut()?.get_mut(), &mut slot.state);
            if r.is_none() {
                // A failed call may leave the context mid-operation; it is re-keyed before reuse.
                slot.owner = 0;
                evp::clear_error();
            }
            r
        })
        .ok()
        .flatten()
}

impl Cache {
    /// Not at the hint: `owner`'s context elsewhere in the cache, or a newly keyed one
    /// ([`key`](Self::key)); its index.
    #[cold]
    #[inline(never)]
    fn find(
        &mut self,
        owner: u64,
        aead: Aead,
        key: &[u8; 32],
        iv: &[u8; 12],
        encrypt: bool,
        one_shot: bool,
    ) -> Option<usize> {
        let found = self.slots[..self.len]
            .iter()
            .position(|s| s.owner == owner && s.one_shot == one_shot);
        match found {
            Some(i) => Some(i),
            None => self.key(owner, aead, key, iv, encrypt, one_shot).ok(),
        }
    }

    /// A miss: keys a slot for `owner` (see [`with_ctx`]) and returns its index. A new slot
    /// while the cache is not full, else the least recently used one; one of the same cipher
    /// instead (re-keying it allocates nothing) only if it is about as old. Always preferring
    /// the same cipher made two connections of a cipher that held one slot of a full cache
    /// evict each other on every record (measured: 0.6x of the raw AEAD for a GCM pair on a
    /// thread whose other 15 slots held CCM-8 contexts).
    fn key(
        &mut self,
        owner: u64,
        aead: Aead,
        key: &[u8; 32],
        iv: &[u8; 12],
        encrypt: bool,
        one_shot: bool,
    ) -> Result<usize, ErrorStack> {
        let tick = self.tick;
        let key = &key[..aead.key_len()];
        let used = self.len;
        let slots = &mut self.slots;
        let i = if used < CACHE_SLOTS {
            slots[used] = Slot {
                owner: 0,
                aead,
                one_shot,
                ctx: Some(evp::OwnedCipherCtx::new(aead.new_ctx(encrypt)?)),
                state: OneShot::NEW,
                used: 0,
            };
            self.len += 1;
            used
        } else {
            let lru = |same: bool| {
                slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !same || (s.aead == aead && s.one_shot == one_shot))
                    .min_by_key(|(_, s)| s.used)
                    .map(|(i, _)| i)
            };
            let oldest = lru(false).unwrap_or(0); // the cache is full: always some
                                                  // "About as old": in the older half of the span from the oldest use to now.
            let span = tick.saturating_sub(slots[oldest].used);
            let i = match lru(true) {
                Some(same) if slots[same].used - slots[oldest].used <= span / 2 => same,
                _ => oldest,
            };
            if slots[i].aead != aead || slots[i].one_shot != one_shot || slots[i].ctx.is_none() {
                slots[i].ctx = Some(evp::OwnedCipherCtx::new(aead.new_ctx(encrypt)?));
                slots[i].aead = aead;
                slots[i].one_shot = one_shot;
            }
            i
        };
        let slot = &mut slots[i];
        REKEYS.with(|r| r.set(r.get() + 1));
        slot.owner = 0; // unusable until keyed
        slot.state.next_explicit = None;
        let ctx = match slot.ctx.as_mut() {
            Some(ctx) => ctx,
            None => slot
                .ctx
                .insert(evp::OwnedCipherCtx::new(aead.new_ctx(encrypt)?)),
        }
        .get_mut();
        aead::init(ctx, encrypt, None, Some(key))?;
        if one_shot {
            aead.set_fixed_iv(ctx, iv, encrypt)?;
        }
        slot.owner = owner;
        Ok(i)
    }
}

/// Drops this thread's cached contexts of connection `id` (both directions).
pub(super) fn evict(id: u64) {
    // `try_with`: the thread may be exiting; `try_borrow_mut`: never while a cipher call runs.
    let _ = CACHE.try_with(|cache| {
        if let Ok(mut cache) = cache.try_borrow_mut() {
            let len = cache.len;
            for slot in cache.slots[..len]
                .iter_mut()
                .filter(|s| s.owner | 1 == id | 1)
            {
                slot.owner = 0;
                // Overwrite the key schedule by keying it with zeros.
                let zero = [0u8; 32];
                if let Some(ctx) = slot.ctx.as_mut() {
                    let _ = aead::init(
                        ctx.get_mut(),
                        true,
                        None,
                        Some(&zero[..slot.aead.key_len()]),
                    );
                }
            }
        }
    });
}

/// How many times this thread's cache keyed a context (its misses).
#[cfg(test)]
pub(super) fn rekeys() -> u64 {
    REKEYS.with(Cell::get)
}

/// How many contexts this thread's cache holds.
#[cfg(test)]
pub(super) fn cached_contexts() -> usize {
    CACHE.with(|c| c.borrow().len)
}

/// Buffers kept per thread for compact connections' datagrams and plaintexts.
const POOL_BUFFERS: usize = 64;
/// A buffer that grew beyond this is freed rather than pooled.
const POOL_BUFFER_MAX: usize = 2 * MAX_PLAINTEXT;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Buffers kept for all threads, beyond each thread's own: where buffers go that one thread
/// (the driver, or the thread that waits and reads) filled and another (the application's
/// `recv`) emptied, so that they come back instead of being freed and allocated again.
const SHARED_BUFFERS: usize = 256;

static SHARED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer from this thread's pool, else the shared one, else a new one. Sessions hold
/// no buffers of their own while idle: every datagram and plaintext buffer comes from here and
/// goes back with [`give_buffer`], so a steady flow allocates nothing, whichever threads
/// receive and read.
pub(crate) fn take_buffer() -> Vec<u8> {
    POOL.try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop()))
        .ok()
        .flatten()
        .or_else(|| SHARED.lock().ok().and_then(|mut s| s.pop()))
        .unwrap_or_default()
}

/// Returns a buffer to this thread's pool, or the shared one when that is full (freed if both
/// are full or the buffer huge).
pub(crate) fn give_buffer(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > POOL_BUFFER_MAX {
        return;
    }
    buf.clear();
    let overflow = POOL
        .try_with(|p| match p.try_borrow_mut() {
            Ok(mut p) if p.len() < POOL_BUFFERS => {
                p.push(buf);
                None
            }
            _ => Some(buf),
        })
        .unwrap_or(None);
    if let Some(buf) = overflow {
        if let Ok(mut shared) = SHARED.lock() {
            if shared.len() < SHARED_BUFFERS {
                shared.push(buf);
            }
        }
    }
}

/// A queue of datagrams (or plaintexts) whose storage is pooled like the buffers: a pointer and
/// no storage while empty. A session's receive and send queues take storage when their first
/// datagram arrives and give it back when they drain, so an idle session holds none and a steady
/// flow allocates none.
#[derive(Default)]
pub(crate) struct Queue(Option<Storage>);

/// A queue's storage, boxed on purpose: the queue is then one pointer (8 bytes, the deque's
/// header 32), which is what every idle connection pays, and the storage moves in and out of the
/// pools without touching its buffer.
#[allow(clippy::box_collection)]
type Storage = Box<VecDeque<Vec<u8>>>;

/// Queue storages kept per thread, and for all threads beyond that. Few per thread: a queue
/// filled on one thread (the driver) is often drained on another (the application's), and the
/// storage it gives back should soon reach the shared pool the filling thread takes from.
const POOL_QUEUES: usize = 8;
const SHARED_QUEUES: usize = 256;
/// A queue whose storage grew beyond this many slots is freed rather than pooled.
const POOL_QUEUE_MAX: usize = 64;

thread_local! {
    static QUEUES: RefCell<Vec<Storage>> = const { RefCell::new(Vec::new()) };
}

static SHARED_QUEUE_POOL: Mutex<Vec<Storage>> = Mutex::new(Vec::new());

impl Queue {
    /// Datagrams waiting.
    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    /// Whether none waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots of the storage held (0: none).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.capacity())
    }

    /// Appends `datagram`, taking pooled storage first if the queue has none (this thread's,
    /// else the shared pool's; allocated only when both are empty).
    pub(crate) fn push_back(&mut self, datagram: Vec<u8>) {
        let q = self.0.get_or_insert_with(|| {
            QUEUES
                .try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop()))
                .ok()
                .flatten()
                .or_else(|| SHARED_QUEUE_POOL.lock().ok().and_then(|mut s| s.pop()))
                .unwrap_or_default()
        });
        q.push_back(datagram);
    }

    /// Takes the oldest datagram; the storage goes back to the pool when the queue drains.
    pub(crate) fn pop_front(&mut self) -> Option<Vec<u8>> {
        let datagram = self.0.as_mut()?.pop_front();
        self.release();
        datagram
    }

    /// The storage, if any, to work on directly; call [`release`](Self::release) after.
    pub(crate) fn storage_mut(&mut self) -> Option<&mut VecDeque<Vec<u8>>> {
        self.0.as_deref_mut()
    }

    /// Puts `front` before what the queue holds.
    pub(crate) fn prepend(&mut self, mut front: VecDeque<Vec<u8>>) {
        if front.is_empty() {
            return;
        }
        if let Some(q) = self.0.as_mut() {
            front.append(q);
            **q = front;
        } else {
            self.0 = Some(Box::new(front));
        }
    }

    /// Gives the storage back to the pool if the queue is empty (freed if the pools are full or
    /// it grew large). Does nothing while datagrams wait.
    pub(crate) fn release(&mut self) {
        if self.0.as_ref().is_none_or(|q| !q.is_empty()) {
            return;
        }
        let Some(mut storage) = self.0.take() else {
            return;
        };
        if storage.capacity() > POOL_QUEUE_MAX {
            return; // freed
        }
        storage.clear(); // empty already: puts its head back at the start of the storage
        let overflow = QUEUES
            .try_with(|p| match p.try_borrow_mut() {
                Ok(mut p) if p.len() < POOL_QUEUES => {
                    p.push(storage);
                    None
                }
                _ => Some(storage),
            })
            .unwrap_or(None);
        if let Some(storage) = overflow {
            if let Ok(mut shared) = SHARED_QUEUE_POOL.lock() {
                if shared.len() < SHARED_QUEUES {
                    shared.push(storage);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_comes_back_empty_with_its_allocation() {
        let mut buf = take_buffer();
        buf.extend_from_slice(b"datagram");
        let ptr = buf.as_ptr();
        give_buffer(buf);
        let again = take_buffer();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "reused, not reallocated");
        // One that grew past the limit is freed instead of pooled.
        give_buffer(Vec::with_capacity(POOL_BUFFER_MAX + 1));
        assert_eq!(take_buffer().capacity(), 0);
    }

    #[test]
    fn a_drained_queue_holds_no_storage_and_its_storage_is_reused() {
        let mut q = Queue::default();
        assert_eq!(q.capacity(), 0);
        q.push_back(b"one".to_vec());
        q.push_back(b"two".to_vec());
        let ptr: *const VecDeque<Vec<u8>> = &**q.0.as_ref().unwrap();
        assert_eq!(q.pop_front().as_deref(), Some(&b"one"[..]));
        assert!(q.capacity() > 0, "kept while a datagram waits");
        assert_eq!(q.pop_front().as_deref(), Some(&b"two"[..]));
        assert_eq!(q.capacity(), 0, "an empty queue holds no storage");
        assert_eq!(q.pop_front(), None);
        let mut again = Queue::default();
        again.push_back(Vec::new());
        let reused: *const VecDeque<Vec<u8>> = &**again.0.as_ref().unwrap();
        assert_eq!(reused, ptr, "reused, not reallocated");
    }
}
