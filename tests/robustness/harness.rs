//! The robustness suite's harness: contexts with fast timers, a seeded faulty network between one
//! server [`Endpoint`] and client [`Session`]s (drop, duplicate, delay with a bounded hold, MTU
//! check, capture for replay), a live-`SSL` counter, RSS, and the lock that keeps memory
//! measurements free of other tests' allocations.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::raw::{c_int, c_long, c_void};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use openssl_dtls::{
    ConnectionId, DtlsClientContext, DtlsClientContextBuilder, DtlsServerContext,
    DtlsServerContextBuilder, Endpoint, EndpointConfig, Event, PskCredentials, Session,
};

use super::support::Rng;

pub const IDENTITY: &[u8] = b"robustness-device";
pub const KEY: &[u8] = b"robustness pre-shared key";

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------------------------
// Isolation: tests that measure process-wide memory or count live SSL objects run alone.

static ISOLATION: RwLock<()> = RwLock::new(());

/// Taken by every ordinary test: they run in parallel with each other.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    quiet_expected_panics();
    ISOLATION.read().unwrap_or_else(|e| e.into_inner())
}

/// Taken by tests that measure RSS or count live `SSL`s: nothing else runs meanwhile.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    quiet_expected_panics();
    ISOLATION.write().unwrap_or_else(|e| e.into_inner())
}

/// Panics that tests provoke on purpose (in callbacks) say so; keep them out of the output.
pub const EXPECTED_PANIC: &str = "(expected panic: robustness test)";

fn quiet_expected_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !text.contains(EXPECTED_PANIC) {
                default(info);
            }
        }));
    });
}

// ---------------------------------------------------------------------------------------------
// Contexts.

pub fn fast_server(b: &mut DtlsServerContextBuilder) -> &mut DtlsServerContextBuilder {
    b.retransmit_timeout(ms(20), ms(160))
        .handshake_timeout(Duration::from_secs(10))
        .max_retransmits(64)
}

pub fn fast_client(b: &mut DtlsClientContextBuilder) -> &mut DtlsClientContextBuilder {
    b.retransmit_timeout(ms(20), ms(160))
        .handshake_timeout(Duration::from_secs(10))
        .max_retransmits(64)
}

/// Timers for lock-step tests, where nothing is lost: OpenSSL also checks its retransmission
/// timer inside every read and treats less than 15 ms left as expired, so fast timers would
/// retransmit spontaneously while slow steps (ECDSA in a debug build) run.
pub fn slow_server(b: &mut DtlsServerContextBuilder) -> &mut DtlsServerContextBuilder {
    b.retransmit_timeout(ms(250), Duration::from_secs(2))
        .handshake_timeout(Duration::from_secs(20))
}

pub fn slow_client(b: &mut DtlsClientContextBuilder) -> &mut DtlsClientContextBuilder {
    b.retransmit_timeout(ms(250), Duration::from_secs(2))
        .handshake_timeout(Duration::from_secs(20))
}

pub fn psk_server_builder() -> DtlsServerContextBuilder {
    let mut b = DtlsServerContext::builder();
    b.psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()));
    fast_server(&mut b);
    b
}

pub fn psk_client_builder() -> DtlsClientContextBuilder {
    let mut b = DtlsClientContext::builder();
    b.psk_credentials(PskCredentials::new(IDENTITY, KEY));
    fast_client(&mut b);
    b
}

pub fn psk_server() -> DtlsServerContext {
    psk_server_builder().build().unwrap()
}

pub fn psk_client() -> DtlsClientContext {
    psk_client_builder().build().unwrap()
}

/// Contexts for `PSK-AES128-CCM8` only: no ECDHE, the cheapest handshake.
pub fn ccm8_pair() -> (DtlsServerContext, DtlsClientContext) {
    (
        psk_server_builder()
            .ciphers("PSK-AES128-CCM8")
            .build()
            .unwrap(),
        psk_client_builder()
            .ciphers("PSK-AES128-CCM8")
            .build()
            .unwrap(),
    )
}

// ---------------------------------------------------------------------------------------------
// Addresses.

pub fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
}

pub fn server_addr() -> SocketAddr {
    v4(192, 0, 2, 1, 5684)
}

/// The `n`th client address: a distinct IP per client, so per-IP limits never interfere.
pub fn client_addr(n: u32) -> SocketAddr {
    let [_, b, c, d] = n.to_be_bytes();
    v4(10, b, c, d.max(1), 40_000 + (n % 20_000) as u16)
}

/// A random IPv4 or IPv6 address and port.
pub fn random_addr(rng: &mut Rng) -> SocketAddr {
    let port = (rng.next_u64() as u16).max(1);
    if rng.chance(0.5) {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32)), port)
    } else {
        let hi = u128::from(rng.next_u64()) << 64;
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(hi | u128::from(rng.next_u64()))),
            port,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Memory and live SSL objects.

/// Resident set size of this process, in bytes.
pub fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

static LIVE_SSL: AtomicI64 = AtomicI64::new(0);
static MARK: u8 = 0;

unsafe extern "C" fn count_new(
    parent: *mut c_void,
    _ptr: *mut c_void,
    _ad: *mut openssl_sys::CRYPTO_EX_DATA,
    idx: c_int,
    _argl: c_long,
    _argp: *mut c_void,
) {
    // SAFETY: OpenSSL calls this from SSL_new with the SSL being created; setting our own index
    // marks it as one we counted.
    unsafe {
        openssl_sys::SSL_set_ex_data(parent.cast(), idx, std::ptr::addr_of!(MARK) as *mut c_void);
    }
    LIVE_SSL.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn count_free(
    _parent: *mut c_void,
    ptr: *mut c_void,
    _ad: *mut openssl_sys::CRYPTO_EX_DATA,
    _idx: c_int,
    _argl: c_long,
    _argp: *mut c_void,
) {
    if !ptr.is_null() {
        LIVE_SSL.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The number of live OpenSSL `SSL` objects created since the first call (process-wide): an
/// ex_data index whose new/free callbacks count `SSL_new` and `SSL_free`.
pub fn live_ssl_objects() -> i64 {
    static INDEX: OnceLock<c_int> = OnceLock::new();
    INDEX.get_or_init(|| {
        openssl_sys::init();
        // SAFETY: registers an ex_data index for SSL objects with plain counting callbacks.
        let idx = unsafe {
            openssl_sys::SSL_get_ex_new_index(
                0,
                std::ptr::null_mut(),
                Some(count_new),
                None,
                Some(count_free),
            )
        };
        assert!(idx >= 0, "SSL_get_ex_new_index failed");
        idx
    });
    LIVE_SSL.load(Ordering::SeqCst)
}

// ---------------------------------------------------------------------------------------------
// The faulty network.

/// A datagram on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// What the network does with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Deliver,
    Drop,
    Duplicate,
    /// Hold it back; it is delivered after the next datagram, or when the network is idle.
    Delay,
}

/// Decides each datagram's fate from (index over all datagrams sent, packet, rng).
pub type Policy = Box<dyn FnMut(usize, &Packet, &mut Rng) -> Fate + Send>;

/// A seeded network between one server endpoint and many client sessions.
pub struct Wire {
    pub rng: Rng,
    pub policy: Policy,
    /// Datagrams held back (delayed); at most `max_held` at once.
    pub max_held: usize,
    held: VecDeque<Packet>,
    queue: VecDeque<Packet>,
    /// Every datagram sent, in order (when `capture` is set).
    pub capture: bool,
    pub captured: Vec<Packet>,
    pub sent: usize,
    pub dropped: usize,
    pub duplicated: usize,
    pub delayed: usize,
    pub largest: usize,
    /// The largest datagram allowed; larger ones are counted in `oversized`.
    pub mtu: usize,
    pub oversized: usize,
}

impl Wire {
    pub fn perfect() -> Wire {
        Wire::new(1, |_, _, _| Fate::Deliver)
    }

    pub fn new(
        seed: u64,
        policy: impl FnMut(usize, &Packet, &mut Rng) -> Fate + Send + 'static,
    ) -> Wire {
        Wire {
            rng: Rng::new(seed),
            policy: Box::new(policy),
            max_held: 2,
            held: VecDeque::new(),
            queue: VecDeque::new(),
            capture: false,
            captured: Vec::new(),
            sent: 0,
            dropped: 0,
            duplicated: 0,
            delayed: 0,
            largest: 0,
            mtu: usize::MAX,
            oversized: 0,
        }
    }

    pub fn send(&mut self, packet: Packet) {
        let index = self.sent;
        self.sent += 1;
        self.largest = self.largest.max(packet.data.len());
        if packet.data.len() > self.mtu {
            self.oversized += 1;
        }
        if self.capture {
            self.captured.push(packet.clone());
        }
        let fate = (self.policy)(index, &packet, &mut self.rng);
        match fate {
            Fate::Drop => {
                self.dropped += 1;
                return;
            }
            Fate::Delay if self.held.len() < self.max_held => {
                self.delayed += 1;
                self.held.push_back(packet);
                return;
            }
            Fate::Duplicate => {
                self.duplicated += 1;
                self.queue.push_back(packet.clone());
                self.queue.push_back(packet);
            }
            Fate::Delay | Fate::Deliver => self.queue.push_back(packet),
        }
        // A held datagram goes out after the next one that was not held.
        if let Some(held) = self.held.pop_front() {
            self.queue.push_back(held);
        }
    }

    pub fn flush_held(&mut self) {
        self.queue.extend(self.held.drain(..));
    }

    pub fn pop(&mut self) -> Option<Packet> {
        self.queue.pop_front()
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.held.is_empty()
    }
}

/// One client: a session at an address.
pub struct Client {
    pub addr: SocketAddr,
    pub session: Session,
    /// Application datagrams received, in order.
    pub received: Vec<Vec<u8>>,
}

/// A server endpoint and its clients over one [`Wire`], in real time (OpenSSL's retransmission
/// timers read the system clock).
pub struct Net {
    pub server: Endpoint,
    pub addr: SocketAddr,
    pub clients: Vec<Client>,
    pub wire: Wire,
    pub events: Vec<Event>,
    /// Application datagrams the server received: (peer, data).
    pub server_received: Vec<(SocketAddr, Vec<u8>)>,
    buf: Vec<u8>,
}

impl Net {
    pub fn new(ctx: DtlsServerContext, config: EndpointConfig, wire: Wire) -> Net {
        Net {
            server: Endpoint::server(ctx, config).unwrap(),
            addr: server_addr(),
            clients: Vec::new(),
            wire,
            events: Vec::new(),
            server_received: Vec::new(),
            buf: vec![0; 65_536],
        }
    }

    /// Adds a client at `addr` (its ClientHello is queued at once); returns its index.
    pub fn connect(&mut self, ctx: &DtlsClientContext, addr: SocketAddr) -> usize {
        let mut session = ctx.new_session(None, Instant::now()).unwrap();
        session.set_peer_addr(self.addr);
        self.clients.push(Client {
            addr,
            session,
            received: Vec::new(),
        });
        self.clients.len() - 1
    }

    /// The server's connection id for `peer`, once its `Connected` event was seen.
    pub fn connected(&self, peer: SocketAddr) -> Option<ConnectionId> {
        self.events.iter().rev().find_map(|e| match e {
            Event::Connected { peer: p, id } if *p == peer => Some(*id),
            _ => None,
        })
    }

    /// The `Closed` events seen for `peer`.
    pub fn closed(&self, peer: SocketAddr) -> Vec<&Event> {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Closed { peer: p, .. } if *p == peer))
            .collect()
    }

    pub fn established(&self, client: usize) -> bool {
        let c = &self.clients[client];
        c.session.is_established()
            && self
                .server
                .connection_id(c.addr)
                .and_then(|id| self.server.session(c.addr, id))
                .is_some_and(Session::is_established)
    }

    /// One round: every output onto the wire, everything on the wire delivered, timers run.
    /// Returns whether anything moved.
    pub fn step(&mut self, now: Instant) -> bool {
        let mut moved = false;
        for c in &mut self.clients {
            while let Some(n) = c.session.poll_transmit(&mut self.buf) {
                self.wire.send(Packet {
                    from: c.addr,
                    to: self.addr,
                    data: self.buf[..n].to_vec(),
                });
                moved = true;
            }
        }
        while let Some((to, n)) = self.server.poll_transmit(&mut self.buf) {
            self.wire.send(Packet {
                from: self.addr,
                to,
                data: self.buf[..n].to_vec(),
            });
            moved = true;
        }
        if !moved {
            self.wire.flush_held();
        }
        while let Some(p) = self.wire.pop() {
            self.deliver(now, &p);
            moved = true;
        }
        self.server.handle_timeout(now);
        for c in &mut self.clients {
            c.session.handle_timeout(now);
        }
        self.drain_events();
        moved
    }

    /// Hands `p` to its destination.
    pub fn deliver(&mut self, now: Instant, p: &Packet) {
        if p.to == self.addr {
            self.server.handle_datagram(now, p.from, &p.data);
        } else if let Some(c) = self.clients.iter_mut().find(|c| c.addr == p.to) {
            if p.from == self.addr {
                c.session.handle_datagram(now, &p.data);
            }
        }
    }

    /// Collects server events and received data, and client received data.
    pub fn drain_events(&mut self) {
        while let Some(e) = self.server.poll_event() {
            if let Event::Readable { peer, id } = e {
                while let Ok(Some(n)) = self.server.recv(peer, id, &mut self.buf) {
                    self.server_received.push((peer, self.buf[..n].to_vec()));
                }
            }
            self.events.push(e);
        }
        for c in &mut self.clients {
            while let Ok(Some(n)) = c.session.recv(&mut self.buf) {
                c.received.push(self.buf[..n].to_vec());
            }
        }
    }

    /// Runs rounds until `done` holds or `deadline` passes, sleeping until the next timer when
    /// nothing moves. Returns whether `done` held.
    pub fn run_until(&mut self, deadline: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let end = Instant::now() + deadline;
        loop {
            let now = Instant::now();
            let moved = self.step(now);
            if done(self) {
                return true;
            }
            if now >= end {
                return false;
            }
            let busy = self.clients.iter().any(|c| c.session.has_transmit());
            if !moved && !busy && self.wire.is_idle() {
                let next = self
                    .clients
                    .iter()
                    .filter_map(|c| c.session.poll_timeout())
                    .chain(self.server.poll_timeout())
                    .min()
                    .unwrap_or(now + ms(5))
                    .min(end);
                let nap = next.saturating_duration_since(Instant::now()).min(ms(20));
                std::thread::sleep(nap.max(Duration::from_micros(200)));
            }
        }
    }

    /// Runs until client `i` and its server connection are established.
    pub fn handshake(&mut self, i: usize, deadline: Duration) -> bool {
        self.run_until(deadline, |n| n.established(i))
    }

    /// Runs until nothing is in flight and no client or server has output (no timers).
    pub fn settle(&mut self) {
        for _ in 0..100 {
            if !self.step(Instant::now()) {
                return;
            }
        }
    }

    /// Sends from the server to client `i`.
    pub fn server_send(&mut self, i: usize, data: &[u8]) -> openssl_dtls::Result<()> {
        let addr = self.clients[i].addr;
        let id = self.server.connection_id(addr).expect("a connection");
        self.server.send(addr, id, data)
    }
}

/// A message that proves its own integrity: index, length and a keyed pattern.
pub fn message(seed: u64, index: u32, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ (u64::from(index) << 32) ^ 0xA5A5);
    let mut m = Vec::with_capacity(len.max(8));
    m.extend_from_slice(&index.to_be_bytes());
    m.extend_from_slice(&(len as u32).to_be_bytes());
    while m.len() < len {
        m.push(rng.next_u64() as u8);
    }
    m
}

/// The index of a message made by [`message`], if it is intact.
pub fn check_message(seed: u64, data: &[u8]) -> Option<u32> {
    let index = u32::from_be_bytes(data.get(..4)?.try_into().ok()?);
    let len = u32::from_be_bytes(data.get(4..8)?.try_into().ok()?) as usize;
    (data.len() == len && message(seed, index, len) == data).then_some(index)
}
