//! Graceful restart over real UDP on loopback: a server saves its compact connections to a
//! sealed state, a new server (a new process, for the example tool) restores them, and the
//! devices' next records are accepted with no new handshake. Also: every way a state file is
//! refused loads nothing; a restored server never reuses a sequence number it sent before;
//! Connection IDs and shards keep working across a restart.
//!
//! The devices are sans-IO client sessions, each on its own UDP socket, driven one after the
//! other (blocking receives with a timeout: no spinning). Every wait is bounded.

mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};
use support::example;

use openssl_dtls::{
    DtlsClientContext, DtlsServer, DtlsServerContext, Endpoint, EndpointConfig, Error,
    PskCredentials, Session, SocketOptions, StateError, StateKey,
};

const IDENTITY: &[u8] = b"Client_identity";
const PSK: &[u8] = b"secretPSK";
/// How long any one step may take.
const STEP: Duration = Duration::from_secs(20);
const HOUR: Duration = Duration::from_secs(3600);

fn server_ctx(ciphers: Option<&str>, cid: Option<u8>) -> DtlsServerContext {
    let mut b = DtlsServerContext::builder();
    b.psk_key_store(|id| (id == IDENTITY).then(|| PSK.to_vec()))
        .compact_connections(true);
    if let Some(c) = ciphers {
        b.ciphers(c);
    }
    if let Some(len) = cid {
        b.connection_id(len);
    }
    b.build().expect("server context")
}

fn client_ctx(cid: bool) -> DtlsClientContext {
    let mut b = DtlsClientContext::builder();
    b.psk_credentials(PskCredentials::new(IDENTITY.to_vec(), PSK.to_vec()))
        .compact_connections(true);
    if cid {
        b.connection_id(0);
    }
    b.build().expect("client context")
}

/// A device: a client session on its own UDP socket.
struct Device {
    sock: UdpSocket,
    session: Session,
    server: SocketAddr,
}

impl Device {
    /// Connects to `server` (a full handshake).
    fn connect(server: SocketAddr, ctx: &DtlsClientContext) -> Device {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a device");
        let session = ctx
            .new_session_to(server, None, Instant::now())
            .expect("client session");
        let mut d = Device {
            sock,
            session,
            server,
        };
        let deadline = Instant::now() + STEP;
        while !d.session.is_established() {
            assert!(Instant::now() < deadline, "handshake timed out");
            assert!(d.session.error().is_none(), "{:?}", d.session.error());
            d.flush();
            d.receive_once(Duration::from_millis(100));
        }
        d.flush();
        d
    }

    /// Sends everything the session has queued.
    fn flush(&mut self) {
        let mut buf = [0u8; 2048];
        while let Some(n) = self.session.poll_transmit(&mut buf) {
            self.sock.send_to(&buf[..n], self.server).expect("send");
        }
    }

    /// Waits up to `wait` (or the session's next deadline) for one datagram and hands it over;
    /// runs the session's timers.
    fn receive_once(&mut self, wait: Duration) {
        let now = Instant::now();
        let until = self.session.poll_timeout().map_or(wait, |t| {
            t.saturating_duration_since(now)
                .clamp(Duration::from_millis(1), wait)
        });
        self.sock.set_read_timeout(Some(until)).unwrap();
        let mut buf = [0u8; 2048];
        match self.sock.recv_from(&mut buf) {
            Ok((n, _)) => self.session.handle_datagram(Instant::now(), &buf[..n]),
            Err(_) => self.session.handle_timeout(Instant::now()),
        }
    }

    /// Sends `msg` and waits for its echo (sent again once a second if lost).
    fn echo(&mut self, msg: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + STEP;
        let mut next_send = Instant::now();
        loop {
            assert!(Instant::now() < deadline, "no echo of {msg:?}");
            assert!(
                self.session.is_established(),
                "the device's session ended: {:?}",
                self.session.error()
            );
            if Instant::now() >= next_send {
                self.session.send(msg).expect("send");
                self.flush();
                next_send = Instant::now() + Duration::from_secs(1);
            }
            self.receive_once(Duration::from_millis(200));
            self.flush();
            let mut buf = [0u8; 2048];
            if let Some(n) = self.session.recv(&mut buf).expect("recv") {
                return buf[..n].to_vec();
            }
        }
    }

    /// Moves to a new local port (a NAT rebinding).
    fn rebind(&mut self) {
        self.sock = UdpSocket::bind("127.0.0.1:0").expect("bind a new port");
    }
}

/// An echo server thread: accepts until the server closes, one echo thread per connection.
fn echo(server: &Arc<DtlsServer>) -> JoinHandle<()> {
    let server = Arc::clone(server);
    thread::spawn(move || {
        while let Ok(conn) = server.accept() {
            thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok(n @ 1..) = conn.recv(&mut buf) {
                    if conn.send(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// Binds `addr` again once the previous server's sockets are gone (bounded): a plain bind
/// (no `SO_REUSEPORT`) succeeds only then, so the new shards cannot join a group the old
/// sockets (held a moment longer by ending connection threads) are still in.
fn bind_again(addr: SocketAddr, ctx: DtlsServerContext, socket: SocketOptions) -> Arc<DtlsServer> {
    let deadline = Instant::now() + STEP;
    while UdpSocket::bind(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} still bound");
        thread::sleep(Duration::from_millis(20));
    }
    loop {
        match DtlsServer::bind_with(addr, ctx.clone(), EndpointConfig::default(), socket.clone()) {
            Ok(s) => return Arc::new(s),
            Err(e) if Instant::now() < deadline => {
                eprintln!("bind {addr} again: {e}; retrying");
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

fn key() -> StateKey {
    StateKey::from_bytes(&[0x5a; 32])
}

fn state_error(r: Result<impl std::fmt::Debug, Error>) -> StateError {
    match r {
        Err(Error::State(e)) => e,
        other => panic!("expected a state error, got {other:?}"),
    }
}

/// A record the relay saw from the server: epoch, sequence number, explicit nonce.
type Seen = (u16, u64, [u8; 8]);

/// A relay between one device and the server that records the (epoch, sequence number) of
/// every record the server sends and counts the device's epoch-0 handshake records.
struct Relay {
    /// Where the device sends.
    inside: SocketAddr,
    from_server: Arc<Mutex<Vec<Seen>>>,
    device_handshake_records: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// The (content type, epoch, sequence number, first 8 bytes of the fragment: a GCM or CCM
/// record's explicit nonce) of each record of a datagram without CIDs.
fn records(d: &[u8]) -> Vec<(u8, u16, u64, [u8; 8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while d.len() >= at + 13 {
        let h = &d[at..at + 13];
        let epoch = u16::from_be_bytes([h[3], h[4]]);
        let mut seq = [0u8; 8];
        seq[2..].copy_from_slice(&h[5..11]);
        let len = usize::from(u16::from_be_bytes([h[11], h[12]]));
        let mut explicit = [0u8; 8];
        if let Some(f) = d.get(at + 13..at + 21) {
            explicit.copy_from_slice(f);
        }
        out.push((h[0], epoch, u64::from_be_bytes(seq), explicit));
        at += 13 + len;
    }
    out
}

impl Relay {
    fn start(server: SocketAddr) -> Relay {
        let inside = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let outside = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        // The read timeouts only let the threads see `stop`.
        inside
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        outside
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let from_server = Arc::new(Mutex::new(Vec::new()));
        let hs = Arc::new(Mutex::new(0));
        let device = Arc::new(Mutex::new(None::<SocketAddr>));
        let mut threads = Vec::new();
        {
            let (inside, outside, stop, hs, device) = (
                Arc::clone(&inside),
                Arc::clone(&outside),
                Arc::clone(&stop),
                Arc::clone(&hs),
                Arc::clone(&device),
            );
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = inside.recv_from(&mut buf) {
                        *device.lock().unwrap() = Some(from);
                        let handshakes = records(&buf[..n])
                            .iter()
                            .filter(|(t, e, _, _)| *t == 22 && *e == 0)
                            .count();
                        *hs.lock().unwrap() += handshakes;
                        let _ = outside.send_to(&buf[..n], server);
                    }
                }
            }));
        }
        {
            let (inside, outside, stop, log, device) = (
                Arc::clone(&inside),
                Arc::clone(&outside),
                Arc::clone(&stop),
                Arc::clone(&from_server),
                Arc::clone(&device),
            );
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = outside.recv_from(&mut buf) {
                        log.lock()
                            .unwrap()
                            .extend(records(&buf[..n]).into_iter().map(|(_, e, s, x)| (e, s, x)));
                        if let Some(d) = *device.lock().unwrap() {
                            let _ = inside.send_to(&buf[..n], d);
                        }
                    }
                }
            }));
        }
        Relay {
            inside: inside.local_addr().unwrap(),
            from_server,
            device_handshake_records: hs,
            stop,
            threads,
        }
    }

    /// The server's epoch-1 sequence numbers seen so far, and forgets them.
    fn take_epoch1(&self) -> Vec<u64> {
        self.take_epoch1_nonces()
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    /// The server's epoch-1 (sequence number, explicit nonce) pairs seen so far, and forgets
    /// them.
    fn take_epoch1_nonces(&self) -> Vec<(u64, [u8; 8])> {
        let mut log = self.from_server.lock().unwrap();
        let seen = log
            .iter()
            .filter(|(e, _, _)| *e == 1)
            .map(|(_, s, x)| (*s, *x))
            .collect();
        log.clear();
        seen
    }

    fn device_handshake_records(&self) -> usize {
        *self.device_handshake_records.lock().unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn a_restored_server_never_sends_a_sequence_number_it_used_before() {
    let ctx = server_ctx(None, None);
    let old = Arc::new(DtlsServer::bind("127.0.0.1:0", ctx.clone()).unwrap());
    let addr = old.local_addr();
    let old_echo = echo(&old);
    let relay = Relay::start(addr);
    let mut device = Device::connect(relay.inside, &client_ctx(false));
    for i in 0..5u8 {
        assert_eq!(device.echo(&[i; 20]), [i; 20]);
    }
    let mut state = Vec::new();
    let saved = old.save_state(&mut state, &key()).unwrap();
    assert_eq!(saved.saved, 1);
    // The old process keeps serving for a moment after the save.
    for i in 5..8u8 {
        assert_eq!(device.echo(&[i; 20]), [i; 20]);
    }
    let before = relay.take_epoch1();
    assert!(before.len() >= 8, "the old server's records: {before:?}");
    let handshake_records = relay.device_handshake_records();
    // Then it stops (without a close_notify, which would end the device's session); the new
    // server restores the earlier state.
    old.save_state_and_stop(&mut Vec::new(), &key()).unwrap();
    old.close(); // sends nothing: the drivers are stopped
    old_echo.join().unwrap();
    drop(old);

    let new = bind_again(addr, ctx, SocketOptions::default());
    let report = new.restore_state(&mut &state[..], &key(), HOUR).unwrap();
    assert_eq!(report.restored, 1);
    let new_echo = echo(&new);
    for i in 8..12u8 {
        assert_eq!(device.echo(&[i; 20]), [i; 20]);
    }
    let after = relay.take_epoch1();
    assert!(!after.is_empty());
    let newest_before = before.iter().max().unwrap();
    assert!(
        after.iter().all(|s| s > newest_before),
        "reused sequence numbers: before {before:?}, after {after:?}"
    );
    assert!(after.iter().min().unwrap() >= &openssl_dtls::endpoint::STATE_SEQUENCE_RESERVE);
    // No handshake: none on the server, no handshake record from the device.
    assert_eq!(new.stats().handshakes_completed, 0);
    assert_eq!(new.stats().connections, 1);
    assert_eq!(relay.device_handshake_records(), handshake_records);
    new.close();
    new_echo.join().unwrap();
}

/// A state of three connections saved by a one-shard server, and the server's address.
fn three_connection_state(ctx: &DtlsServerContext) -> (Vec<u8>, Vec<Device>) {
    let old = Arc::new(DtlsServer::bind("127.0.0.1:0", ctx.clone()).unwrap());
    let old_echo = echo(&old);
    let client = client_ctx(false);
    let mut devices: Vec<Device> = (0..3)
        .map(|_| Device::connect(old.local_addr(), &client))
        .collect();
    for d in &mut devices {
        assert_eq!(d.echo(b"hello"), b"hello");
    }
    let mut state = Vec::new();
    assert_eq!(
        old.save_state_and_stop(&mut state, &key()).unwrap().saved,
        3
    );
    old.close();
    old_echo.join().unwrap();
    (state, devices)
}

#[test]
fn a_refused_state_file_loads_nothing_and_says_why() {
    let ctx = server_ctx(None, None);
    let (state, _devices) = three_connection_state(&ctx);
    let new = DtlsServer::bind("127.0.0.1:0", ctx.clone()).unwrap();
    let restore = |bytes: &[u8], key: &StateKey, max_age: Duration| {
        let r = new.restore_state(&mut &bytes[..], key, max_age);
        assert_eq!(new.stats().connections, 0, "half loaded: {r:?}");
        r
    };
    const HEADER: usize = 82;
    // Tampered: a byte of the header (its nonce, authenticated as additional data), a byte of
    // the body, a byte of the tag.
    for at in [HEADER - 1, HEADER + 5, state.len() - 1] {
        let mut bad = state.clone();
        bad[at] ^= 0x01;
        assert_eq!(
            state_error(restore(&bad, &key(), HOUR)),
            StateError::Unauthenticated,
            "byte {at} flipped"
        );
    }
    // Another key.
    assert_eq!(
        state_error(restore(&state, &StateKey::from_bytes(&[1; 32]), HOUR)),
        StateError::Unauthenticated
    );
    // Truncated anywhere.
    for cut in [
        0,
        3,
        9,
        40,
        HEADER - 1,
        HEADER,
        HEADER + 10,
        state.len() - 17,
        state.len() - 1,
    ] {
        assert_eq!(
            state_error(restore(&state[..cut], &key(), HOUR)),
            StateError::Truncated,
            "cut at {cut}"
        );
    }
    // Not a state file; another version; bytes after the end.
    assert_eq!(
        state_error(restore(
            b"hello, world: not a state file at all",
            &key(),
            HOUR
        )),
        StateError::NotAStateFile
    );
    let mut other_version = state.clone();
    other_version[9] = 99;
    assert!(matches!(
        state_error(restore(&other_version, &key(), HOUR)),
        StateError::Version {
            found: 99,
            supported: 1
        }
    ));
    let mut trailing = state.clone();
    trailing.push(0);
    assert_eq!(
        state_error(restore(&trailing, &key(), HOUR)),
        StateError::TrailingData
    );
    // Expired: an age limit shorter than the file's age.
    thread::sleep(Duration::from_millis(20));
    assert!(matches!(
        state_error(restore(&state, &key(), Duration::from_millis(10))),
        StateError::Expired { .. }
    ));
    // Another configuration: other ciphers, Connection IDs on.
    for other in [
        server_ctx(Some("PSK-AES256-GCM-SHA384"), None),
        server_ctx(None, Some(8)),
    ] {
        let server = DtlsServer::bind("127.0.0.1:0", other).unwrap();
        assert_eq!(
            state_error(server.restore_state(&mut &state[..], &key(), HOUR)),
            StateError::OtherConfiguration
        );
        assert_eq!(server.stats().connections, 0);
    }
    // The file itself was fine all along.
    let report = new.restore_state(&mut &state[..], &key(), HOUR).unwrap();
    assert_eq!(report.restored, 3);
    assert_eq!(new.stats().connections, 3);
}

#[test]
fn the_sans_io_endpoint_takes_wall_time_as_an_argument() {
    let ctx = server_ctx(None, None);
    let (state, _devices) = three_connection_state(&ctx);
    let mut ep = Endpoint::server(ctx, EndpointConfig::default()).unwrap();
    let now = Instant::now();
    let wall = SystemTime::now();
    // Two hours later, with a one-hour limit: expired.
    let r = ep.restore_state(&mut &state[..], &key(), now, wall + 2 * HOUR, HOUR);
    assert!(matches!(
        state_error(r),
        StateError::Expired { max_age, .. } if max_age == HOUR
    ));
    // Dated an hour in the future (a clock stepped back): refused.
    let r = ep.restore_state(&mut &state[..], &key(), now, wall - HOUR, 2 * HOUR);
    assert!(matches!(state_error(r), StateError::FutureDated { .. }));
    assert!(ep.is_empty());
    // Within the limit: every connection is back, announced as connected, no handshake.
    let report = ep
        .restore_state(
            &mut &state[..],
            &key(),
            now,
            wall + Duration::from_secs(60),
            HOUR,
        )
        .unwrap();
    assert_eq!(report.restored, 3);
    assert_eq!(ep.stats().connections, 3);
    assert_eq!(ep.stats().handshakes_completed, 0);
    let connected = std::iter::from_fn(|| ep.poll_event())
        .filter(|e| matches!(e, openssl_dtls::Event::Connected { .. }))
        .count();
    assert_eq!(connected, 3);
    // The same state again: every address is taken, nothing changes.
    let again = ep
        .restore_state(&mut &state[..], &key(), now, wall, HOUR)
        .unwrap();
    assert_eq!((again.restored, again.skipped_existing), (0, 3));
    // Saving it reports what it wrote; a client-only endpoint has nothing to save.
    let mut out = Vec::new();
    let saved = ep.save_state(&mut out, &key(), wall).unwrap();
    assert_eq!(saved.saved, 3);
    assert_eq!(saved.bytes, out.len() as u64);
    let client = Endpoint::client(EndpointConfig::default()).unwrap();
    assert_eq!(
        state_error(client.save_state(&mut Vec::new(), &key(), wall)),
        StateError::NoServerContext
    );
    assert_eq!(format!("{:?}", key()), "StateKey(..)");
}

#[test]
fn a_restored_cid_connection_follows_its_device_to_a_new_address() {
    let ctx = server_ctx(None, Some(8));
    let old = Arc::new(DtlsServer::bind("127.0.0.1:0", ctx.clone()).unwrap());
    let addr = old.local_addr();
    let old_echo = echo(&old);
    let mut device = Device::connect(addr, &client_ctx(true));
    assert!(device
        .session
        .connection_ids()
        .is_some_and(|(_, peer)| peer.len() == 8));
    assert_eq!(device.echo(b"before"), b"before");
    let mut state = Vec::new();
    assert_eq!(
        old.save_state_and_stop(&mut state, &key()).unwrap().saved,
        1
    );
    old.close();
    old_echo.join().unwrap();
    drop(old);

    let new = bind_again(addr, ctx, SocketOptions::default());
    assert_eq!(
        new.restore_state(&mut &state[..], &key(), HOUR)
            .unwrap()
            .restored,
        1
    );
    assert_eq!(new.stats().cid_connections, 1);
    let new_echo = echo(&new);
    // The NAT gave the device a new port while the server restarted: its record routes by
    // the CID and the connection follows it.
    device.rebind();
    assert_eq!(device.echo(b"after"), b"after");
    let stats = new.stats();
    assert_eq!(stats.cid_moves, 1);
    assert_eq!(stats.handshakes_completed, 0);
    new.close();
    new_echo.join().unwrap();
}

#[test]
fn shards_restore_into_the_shard_of_the_same_index() {
    let ctx = server_ctx(None, None);
    let mut two = SocketOptions::default();
    two.shards = 2;
    let old = Arc::new(
        DtlsServer::bind_with(
            "127.0.0.1:0",
            ctx.clone(),
            EndpointConfig::default(),
            two.clone(),
        )
        .unwrap(),
    );
    let addr = old.local_addr();
    let old_echo = echo(&old);
    let client = client_ctx(false);
    let mut devices: Vec<Device> = (0..16).map(|_| Device::connect(addr, &client)).collect();
    for d in &mut devices {
        assert_eq!(d.echo(b"one"), b"one");
    }
    let per_shard: Vec<usize> = old.shard_stats().iter().map(|s| s.connections).collect();
    let mut state = Vec::new();
    assert_eq!(
        old.save_state_and_stop(&mut state, &key()).unwrap().saved,
        16
    );
    old.close();
    old_echo.join().unwrap();
    drop(old);

    // Two shards' state into one shard: refused.
    let one = DtlsServer::bind("127.0.0.1:0", ctx.clone()).unwrap();
    assert_eq!(
        state_error(one.restore_state(&mut &state[..], &key(), HOUR)),
        StateError::ShardCount { saved: 2, ours: 1 }
    );
    assert_eq!(one.stats().connections, 0);

    let new = bind_again(addr, ctx, two);
    assert_eq!(
        new.restore_state(&mut &state[..], &key(), HOUR)
            .unwrap()
            .restored,
        16
    );
    let restored: Vec<usize> = new.shard_stats().iter().map(|s| s.connections).collect();
    assert_eq!(
        restored, per_shard,
        "each shard gets its own connections back"
    );
    let new_echo = echo(&new);
    for d in &mut devices {
        assert_eq!(d.echo(b"two"), b"two");
    }
    let stats = new.stats();
    assert_eq!(stats.handshakes_completed, 0);
    assert_eq!(stats.connections, 16);
    // Every record went to the shard holding its connection: none was dropped as unknown.
    assert_eq!(stats.dropped_unknown_peer, 0);
    new.close();
    new_echo.join().unwrap();
}

#[cfg(feature = "tokio")]
#[cfg(feature = "tokio")]
#[test]
fn the_tokio_server_saves_and_restores_too() {
    let ctx = server_ctx(None, None);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let old = rt
        .block_on(openssl_dtls::tokio::DtlsServer::bind(
            "127.0.0.1:0",
            ctx.clone(),
        ))
        .unwrap();
    let addr = old.local_addr();
    let old = Arc::new(old);
    let serve = |rt: &tokio::runtime::Runtime, server: Arc<openssl_dtls::tokio::DtlsServer>| {
        rt.spawn(async move {
            while let Ok(conn) = server.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    while let Ok(n @ 1..) = conn.recv(&mut buf).await {
                        if conn.send(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    };
    let old_task = serve(&rt, Arc::clone(&old));
    let mut device = Device::connect(addr, &client_ctx(false));
    assert_eq!(device.echo(b"tokio"), b"tokio");
    let mut state = Vec::new();
    assert_eq!(
        old.save_state_and_stop(&mut state, &key()).unwrap().saved,
        1
    );
    rt.block_on(old.close());
    old_task.abort();
    drop(old);
    let deadline = Instant::now() + STEP;
    let new = loop {
        match rt.block_on(openssl_dtls::tokio::DtlsServer::bind(addr, ctx.clone())) {
            Ok(s) => break Arc::new(s),
            Err(e) if Instant::now() < deadline => {
                eprintln!("bind again: {e}");
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(
        new.restore_state(&mut &state[..], &key(), HOUR)
            .unwrap()
            .restored,
        1
    );
    let _task = serve(&rt, Arc::clone(&new));
    assert_eq!(device.echo(b"again"), b"again");
    assert_eq!(new.stats().handshakes_completed, 0);
    rt.block_on(new.close());
}

// The example tool as separate processes: the "a new server process".

/// A running `psk_server` and its stdout lines.
struct ServerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl ServerProcess {
    fn start(addr: SocketAddr, state: &std::path::Path) -> ServerProcess {
        let mut child = Command::new(example("psk_server"))
            .args(["--listen", &addr.to_string(), "--state-file"])
            .arg(state)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start psk_server");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        ServerProcess { child, lines }
    }

    /// Waits for a line starting with `prefix` and returns it.
    fn wait_for(&self, prefix: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!("no `{prefix}` line from psk_server: {e}"),
            }
        }
    }

    /// SIGTERM (through kill(1)), then the exit status.
    fn terminate(mut self) -> (String, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let saved = self.wait_for("saved ");
        let handshakes = self.wait_for("handshakes completed: ");
        let deadline = Instant::now() + STEP;
        loop {
            match self.child.try_wait().unwrap() {
                Some(status) => {
                    assert!(status.success(), "psk_server exited with {status}");
                    return (saved, handshakes);
                }
                None if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                None => {
                    let _ = self.child.kill();
                    panic!("psk_server did not exit after SIGTERM");
                }
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_thousand_devices_resume_on_a_new_server_process_without_a_handshake() {
    const DEVICES: usize = 1000;
    let dir = std::env::temp_dir().join(format!("openssl-dtls-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state");
    // A free port for both processes.
    let addr = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    let old = ServerProcess::start(addr, &state);
    old.wait_for("listening on");
    let client = client_ctx(false);
    let mut devices: Vec<Device> = (0..DEVICES)
        .map(|_| Device::connect(addr, &client))
        .collect();
    for (i, d) in devices.iter_mut().enumerate() {
        let msg = format!("before {i}");
        assert_eq!(d.echo(msg.as_bytes()), msg.as_bytes());
    }
    let (saved, handshakes) = old.terminate();
    assert_eq!(saved, format!("saved {DEVICES} connections"));
    assert_eq!(handshakes, format!("handshakes completed: {DEVICES}"));
    assert!(state.exists());
    // The key file was created for the operator's eyes only.
    use std::os::unix::fs::PermissionsExt;
    let key_mode = std::fs::metadata(dir.join("state.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let new = ServerProcess::start(addr, &state);
    assert_eq!(
        new.wait_for("restored "),
        format!("restored {DEVICES} connections")
    );
    new.wait_for("listening on");
    // Restored once only: the file is gone.
    assert!(!state.exists());
    for (i, d) in devices.iter_mut().enumerate() {
        let msg = format!("after {i}");
        assert_eq!(d.echo(msg.as_bytes()), msg.as_bytes());
        assert!(d.session.is_established());
    }
    let (saved, handshakes) = new.terminate();
    assert_eq!(saved, format!("saved {DEVICES} connections"));
    // Not one handshake on the new server.
    assert_eq!(handshakes, "handshakes completed: 0");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_connection_saved_while_its_server_lingers_resumes_on_a_gcm_suite() {
    // The server sent the handshake's last flight and keeps its SSL until the device's first
    // record: saved in that state, the write sequence and GCM's explicit nonce must continue
    // after OpenSSL's own records.
    let ctx = server_ctx(Some("PSK-AES128-GCM-SHA256"), None);
    let old = Arc::new(DtlsServer::bind("127.0.0.1:0", ctx.clone()).unwrap());
    let addr = old.local_addr();
    let relay = Relay::start(addr);
    let mut device = Device::connect(relay.inside, &client_ctx(false));
    assert_eq!(device.session.cipher(), Some("PSK-AES128-GCM-SHA256"));
    let conn = old.accept().unwrap();
    assert_eq!(
        old.stats().compact_handoffs,
        0,
        "the server still holds its SSL"
    );
    let mut state = Vec::new();
    assert_eq!(
        old.save_state_and_stop(&mut state, &key()).unwrap().saved,
        1
    );
    drop(conn);
    old.close();
    drop(old);
    let before = relay.take_epoch1_nonces(); // the server's Finished, from OpenSSL
    assert!(!before.is_empty());

    let new = bind_again(addr, ctx, SocketOptions::default());
    assert_eq!(
        new.restore_state(&mut &state[..], &key(), HOUR)
            .unwrap()
            .restored,
        1
    );
    let new_echo = echo(&new);
    assert_eq!(device.echo(b"first words"), b"first words");
    let after = relay.take_epoch1_nonces();
    assert!(!after.is_empty());
    let newest = before.iter().map(|(s, _)| *s).max().unwrap();
    assert!(
        after.iter().all(|(s, _)| *s > newest),
        "{before:?} {after:?}"
    );
    // No explicit nonce (OpenSSL's GCM counter starts at a random value) repeats either.
    for (_, x) in &after {
        assert!(before.iter().all(|(_, y)| y != x), "{before:?} {after:?}");
    }
    assert_eq!(new.stats().handshakes_completed, 0);
    new.close();
    new_echo.join().unwrap();
}

/// A file restored twice (a crash loop restoring a stale file, an operator's mistake) at
/// different times: each restore moves the write sequence numbers on by the time since the
/// save, so the two never send the same sequence number (and so never the same nonce) unless
/// one sent a million records a second in between.
#[test]
fn the_same_file_restored_twice_at_different_times_uses_disjoint_sequence_numbers() {
    let ctx = server_ctx(None, None);
    let (state, _devices) = three_connection_state(&ctx);
    let now = Instant::now();
    let wall = SystemTime::now();
    let first_record_seq = |later: Duration| {
        let mut ep = Endpoint::server(ctx.clone(), EndpointConfig::default()).unwrap();
        ep.restore_state(&mut &state[..], &key(), now, wall + later, HOUR)
            .unwrap();
        let mut seqs = Vec::new();
        while let Some(event) = ep.poll_event() {
            if let openssl_dtls::Event::Connected { peer, id } = event {
                ep.send(peer, id, b"after the restore").unwrap();
                let mut buf = vec![0u8; 2048];
                let (_, n) = ep.poll_transmit(&mut buf).expect("a record");
                let recs = records(&buf[..n]);
                assert_eq!(recs.len(), 1);
                seqs.push((peer, recs[0].2));
            }
        }
        seqs.sort();
        seqs
    };
    let early = first_record_seq(Duration::ZERO);
    let late = first_record_seq(Duration::from_secs(1));
    assert_eq!(early.len(), 3);
    for ((a, s1), (b, s2)) in early.iter().zip(&late) {
        assert_eq!(a, b);
        // 1 s later: at least RESTORE_SEQUENCES_PER_MS × 1000 further on.
        let step = openssl_dtls::endpoint::RESTORE_SEQUENCES_PER_MS * 1000;
        assert!(s2 >= &(s1 + step), "{a}: {s1} then {s2}");
    }
}
