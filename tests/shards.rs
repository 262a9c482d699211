//! Endpoint shards over real UDP on loopback (`SocketOptions::shards`): many clients spread over
//! 2 and 4 shards of one server and all handshake and echo; a cookie made by one shard's
//! endpoint verifies on another's; `max_connections` holds for the whole server; a client with
//! Connection IDs that rebinds to new ports keeps its connection, its records steered to its
//! shard; the tokio server the same basics.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl_dtls::{
    DtlsClient, DtlsClientContext, DtlsServer, DtlsServerContext, Endpoint, EndpointConfig, Error,
    PskCredentials, SocketOptions,
};

const IDENTITY: &[u8] = b"Client_identity";
const KEY: &[u8] = b"secretPSK";
const STEP: Duration = Duration::from_secs(10);

fn server_ctx() -> DtlsServerContext {
    DtlsServerContext::builder()
        .psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
        .retransmit_timeout(Duration::from_millis(200), Duration::from_millis(800))
        .build()
        .unwrap()
}

fn client_ctx() -> DtlsClientContext {
    DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(IDENTITY.to_vec(), KEY.to_vec()))
        .retransmit_timeout(Duration::from_millis(200), Duration::from_millis(800))
        .build()
        .unwrap()
}

fn sharded(shards: usize) -> SocketOptions {
    let mut socket = SocketOptions::default();
    socket.shards = shards;
    socket
}

/// An echo server: a thread accepting, a thread per connection echoing.
fn echo(server: &Arc<DtlsServer>) -> std::thread::JoinHandle<()> {
    let server = Arc::clone(server);
    std::thread::spawn(move || {
        while let Ok(conn) = server.accept() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok(n @ 1..) = conn.recv(&mut buf) {
                    if conn.send(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    })
}

/// Sends `msg` on `conn` and waits for its echo.
fn round_trip(conn: &openssl_dtls::DtlsConnection, msg: &[u8]) {
    conn.send(msg).unwrap();
    let mut buf = [0u8; 2048];
    let n = conn
        .recv_timeout(&mut buf, STEP)
        .unwrap()
        .expect("an echo in time");
    assert_eq!(&buf[..n], msg);
}

#[test]
fn many_clients_spread_over_the_shards_and_all_handshake_and_echo() {
    let _ = env_logger::builder().is_test(true).try_init();
    const CLIENTS: usize = 24;
    for shards in [2, 4] {
        let server = Arc::new(
            DtlsServer::bind_with(
                "127.0.0.1:0",
                server_ctx(),
                EndpointConfig::default(),
                sharded(shards),
            )
            .unwrap(),
        );
        assert_eq!(server.shards(), shards);
        let acceptor = echo(&server);
        let to = server.local_addr();
        // Each client its own socket (its own source port), all at once.
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                std::thread::spawn(move || {
                    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
                    let conn = client.connect(to, &client_ctx(), STEP).unwrap();
                    for round in 0..3u8 {
                        round_trip(&conn, &[i as u8, round, 7, 7]);
                    }
                    conn.close();
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        let total = server.stats();
        assert_eq!(total.handshakes_completed, CLIENTS as u64, "{total}");
        let per_shard = server.shard_stats();
        assert_eq!(per_shard.len(), shards);
        let busy = per_shard
            .iter()
            .filter(|s| s.handshakes_completed > 0)
            .count();
        // 24 random source ports all hashing to one shard: one chance in 2^23 (two shards).
        assert!(busy > 1, "one shard took every connection: {per_shard:?}");
        assert_eq!(
            per_shard
                .iter()
                .map(|s| s.handshakes_completed)
                .sum::<u64>(),
            total.handshakes_completed
        );
        // Every connection's records counted on its own shard: the sums hold.
        assert_eq!(
            per_shard.iter().map(|s| s.datagrams_in).sum::<u64>(),
            total.datagrams_in
        );
        server.close();
        assert!(matches!(server.accept(), Err(Error::Closed)));
        acceptor.join().unwrap();
    }
}

#[test]
fn a_cookie_made_by_one_shard_verifies_on_another() {
    // What the shards share: clones of one context, each shard's endpoint built from its clone.
    let ctx = server_ctx();
    let mut shard_a = Endpoint::server(ctx.clone(), EndpointConfig::default()).unwrap();
    let mut shard_b = Endpoint::server(ctx, EndpointConfig::default()).unwrap();
    let mut client = Endpoint::client(EndpointConfig::default()).unwrap();
    let now = Instant::now();
    let server_addr: SocketAddr = "127.0.0.1:5684".parse().unwrap();
    let client_addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    client
        .connect(now, server_addr, &client_ctx(), None)
        .unwrap();
    let mut buf = vec![0u8; 65_536];
    // The first ClientHello to shard A: a HelloVerifyRequest with A's cookie.
    let (_, n) = client.poll_transmit(&mut buf).expect("a ClientHello");
    shard_a.handle_datagram(now, client_addr, &buf[..n]);
    let (to, n) = shard_a
        .poll_transmit(&mut buf)
        .expect("a HelloVerifyRequest");
    assert_eq!(to, client_addr);
    assert_eq!(shard_a.stats().hello_verify_requests, 1);
    client.handle_datagram(now, server_addr, &buf[..n]);
    // The ClientHello with that cookie to shard B: verified, its handshake starts there.
    let (_, n) = client
        .poll_transmit(&mut buf)
        .expect("a ClientHello with the cookie");
    shard_b.handle_datagram(now, client_addr, &buf[..n]);
    let b = shard_b.stats();
    assert_eq!(b.cookies_rejected, 0, "{b}");
    assert_eq!(b.hello_verify_requests, 0, "{b}");
    assert_eq!(b.handshakes, 1, "{b}");
    assert!(
        shard_b.poll_transmit(&mut buf).is_some(),
        "a ServerHello flight"
    );

    // A server with its own (random) cookie secret does not take it.
    let mut stranger = Endpoint::server(server_ctx(), EndpointConfig::default()).unwrap();
    let mut client = Endpoint::client(EndpointConfig::default()).unwrap();
    client
        .connect(now, server_addr, &client_ctx(), None)
        .unwrap();
    let (_, n) = client.poll_transmit(&mut buf).unwrap();
    shard_a.handle_datagram(now, client_addr, &buf[..n]);
    let (_, n) = shard_a.poll_transmit(&mut buf).unwrap();
    client.handle_datagram(now, server_addr, &buf[..n]);
    let (_, n) = client.poll_transmit(&mut buf).unwrap();
    stranger.handle_datagram(now, client_addr, &buf[..n]);
    let s = stranger.stats();
    assert_eq!((s.cookies_rejected, s.handshakes), (1, 0), "{s}");
}

#[test]
fn max_connections_holds_for_the_whole_server() {
    let _ = env_logger::builder().is_test(true).try_init();
    const LIMIT: usize = 3;
    let mut config = EndpointConfig::default();
    config.max_connections = LIMIT;
    config.evict_idle_after = None;
    let server =
        Arc::new(DtlsServer::bind_with("127.0.0.1:0", server_ctx(), config, sharded(4)).unwrap());
    let acceptor = echo(&server);
    let to = server.local_addr();
    let mut kept = Vec::new();
    for i in 0..LIMIT {
        let client = DtlsClient::bind("127.0.0.1:0").unwrap();
        let conn = client.connect(to, &client_ctx(), STEP).unwrap();
        round_trip(&conn, &[i as u8]);
        kept.push((client, conn));
    }
    // Four shards with room for three each alone: the next ones are refused all the same,
    // whichever shard their port hashes to.
    for _ in 0..3 {
        let client = DtlsClient::bind("127.0.0.1:0").unwrap();
        assert!(client.connect(to, &client_ctx(), STEP).is_err());
    }
    let s = server.stats();
    assert_eq!(s.connections, LIMIT, "{s}");
    // At least once each (a retransmitted ClientHello may be refused again).
    assert!(s.refused_connection_limit >= 3, "{s}");
    // A connection that ends gives its place back to the whole server.
    let (client, conn) = kept.pop().unwrap();
    conn.close();
    drop(conn);
    drop(client);
    let wait_until = Instant::now() + STEP;
    let conn = loop {
        let client = DtlsClient::bind("127.0.0.1:0").unwrap();
        match client.connect(to, &client_ctx(), STEP) {
            Ok(conn) => break (client, conn),
            // The server may not have seen the close yet.
            Err(_) if Instant::now() < wait_until => continue,
            Err(e) => panic!("no room came back: {e}"),
        }
    };
    round_trip(&conn.1, b"back");
    assert_eq!(server.stats().connections, LIMIT);
    server.close();
    acceptor.join().unwrap();
}

#[test]
fn the_failure_hook_hears_of_every_shards_failed_handshakes() {
    let _ = env_logger::builder().is_test(true).try_init();
    const CLIENTS: usize = 16;
    let server = DtlsServer::bind_with(
        "127.0.0.1:0",
        server_ctx(),
        EndpointConfig::default(),
        sharded(2),
    )
    .unwrap();
    let (failed_tx, failed_rx) = mpsc::channel();
    let failed_tx = std::sync::Mutex::new(failed_tx);
    server.on_handshake_failure(move |failure| {
        let _ = failed_tx.lock().unwrap().send(failure.peer);
    });
    let wrong_key = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(
            IDENTITY.to_vec(),
            b"not the key".to_vec(),
        ))
        .retransmit_timeout(Duration::from_millis(200), Duration::from_millis(800))
        .build()
        .unwrap();
    let to = server.local_addr();
    let mut peers = Vec::new();
    for _ in 0..CLIENTS {
        let client = DtlsClient::bind("127.0.0.1:0").unwrap();
        peers.push(client.local_addr());
        assert!(client.connect(to, &wrong_key, STEP).is_err());
    }
    let mut heard: Vec<SocketAddr> = (0..CLIENTS)
        .map(|_| failed_rx.recv_timeout(STEP).expect("the hook fired"))
        .collect();
    heard.sort();
    peers.sort();
    assert_eq!(heard, peers);
    let failing_shards = server
        .shard_stats()
        .iter()
        .filter(|s| s.handshakes_failed_peer_alert + s.handshakes_failed_local > 0)
        .count();
    // 16 source ports all hashed to one of two shards: one chance in 2^15.
    assert_eq!(failing_shards, 2, "{:?}", server.shard_stats());
}

fn cid_server_ctx(cid_len: u8) -> DtlsServerContext {
    let mut b = DtlsServerContext::builder();
    b.psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
        .connection_id(cid_len);
    b.build().unwrap()
}

fn cid_client_ctx() -> DtlsClientContext {
    let mut b = DtlsClientContext::builder();
    b.psk_credentials(PskCredentials::new(IDENTITY.to_vec(), KEY.to_vec()))
        .connection_id(0);
    b.build().unwrap()
}

#[test]
fn a_cid_client_that_rebinds_keeps_its_connection_on_its_shard() {
    let _ = env_logger::builder().is_test(true).try_init();
    const REBINDS: usize = 8;
    // IPv4 with 2 and 4 shards; IPv6 with 2 (the program reads the UDP payload either way).
    for (shards, ip) in [(2, "127.0.0.1"), (4, "127.0.0.1"), (2, "[::1]")] {
        let server = Arc::new(
            DtlsServer::bind_with(
                format!("{ip}:0"),
                cid_server_ctx(8),
                EndpointConfig::default(),
                sharded(shards),
            )
            .unwrap(),
        );
        let (moved_tx, moved_rx) = mpsc::channel();
        let moved_tx = std::sync::Mutex::new(moved_tx);
        server.on_address_change(move |change| {
            let _ = moved_tx.lock().unwrap().send(change.to);
        });
        let acceptor = echo(&server);
        // Several clients, so that more than one shard holds one.
        let mut homes = Vec::new();
        for c in 0..3u8 {
            let client = DtlsClient::bind(format!("{ip}:0")).unwrap();
            let conn = client
                .connect(server.local_addr(), &cid_client_ctx(), STEP)
                .unwrap();
            // The server's CID: the default one-byte prefix, then the shard's index.
            let (_, server_cid) = conn.connection_ids().expect("CIDs negotiated");
            assert_eq!(server_cid.len(), 8);
            assert_eq!(server_cid[0], 0, "the prefix");
            let home = usize::from(server_cid[1]);
            assert!(home < shards, "shard byte {home}");
            homes.push(home);
            round_trip(&conn, &[c, 0]);
            // New source ports: new 4-tuples, hashed anywhere; the CID steers them home.
            for round in 1..=REBINDS {
                let new = client.rebind(format!("{ip}:0")).unwrap();
                round_trip(&conn, &[c, round as u8]);
                assert_eq!(
                    moved_rx
                        .recv_timeout(STEP)
                        .expect("on_address_change fired"),
                    new
                );
                assert_eq!(conn.local_addr(), new);
            }
            assert_eq!(client.stats().handshakes_completed, 1);
        }
        let per_shard = server.shard_stats();
        for (shard, s) in per_shard.iter().enumerate() {
            let held = homes.iter().filter(|h| **h == shard).count();
            assert_eq!(s.handshakes_completed, held as u64, "shard {shard}: {s}");
            assert_eq!(s.cid_moves, (held * REBINDS) as u64, "shard {shard}: {s}");
            assert_eq!(s.dropped_unknown_cid, 0, "shard {shard}: {s}");
        }
        let total = server.stats();
        assert_eq!(total.cid_moves, (3 * REBINDS) as u64, "{total}");
        server.close();
        acceptor.join().unwrap();
    }
}

#[test]
fn shards_with_cids_need_a_byte_for_the_shard_index() {
    // Prefix (1) + 4 random bytes: enough alone, not with a shard byte.
    let alone = DtlsServer::bind_with(
        "127.0.0.1:0",
        cid_server_ctx(5),
        EndpointConfig::default(),
        sharded(1),
    );
    assert!(alone.is_ok());
    let two = DtlsServer::bind_with(
        "127.0.0.1:0",
        cid_server_ctx(5),
        EndpointConfig::default(),
        sharded(2),
    );
    assert!(matches!(two, Err(Error::Config(_))), "{two:?}");
    let too_many = DtlsServer::bind_with(
        "127.0.0.1:0",
        server_ctx(),
        EndpointConfig::default(),
        sharded(257),
    );
    assert!(matches!(too_many, Err(Error::Config(_))), "{too_many:?}");
}

#[cfg(feature = "tokio")]
#[test]
fn tokio_server_with_shards_accepts_and_echoes_from_every_shard() {
    let _ = env_logger::builder().is_test(true).try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use openssl_dtls::tokio as dtls;
        const CLIENTS: usize = 16;
        let server = Arc::new(
            dtls::DtlsServer::bind_with(
                "127.0.0.1:0",
                server_ctx(),
                EndpointConfig::default(),
                sharded(2),
            )
            .await
            .unwrap(),
        );
        assert_eq!(server.shards(), 2);
        let acceptor = {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                while let Ok(conn) = server.accept().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 2048];
                        while let Ok(n @ 1..) = conn.recv(&mut buf).await {
                            if conn.send(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            })
        };
        let to = server.local_addr();
        let mut tasks = Vec::new();
        for i in 0..CLIENTS {
            tasks.push(tokio::spawn(async move {
                let client = dtls::DtlsClient::bind("127.0.0.1:0").await.unwrap();
                let conn = client.connect(to, &client_ctx(), STEP).await.unwrap();
                let mut buf = [0u8; 64];
                for round in 0..3u8 {
                    let msg = [i as u8, round];
                    conn.send(&msg).await.unwrap();
                    let n = tokio::time::timeout(STEP, conn.recv(&mut buf))
                        .await
                        .expect("an echo in time")
                        .unwrap();
                    assert_eq!(&buf[..n], &msg);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let total = server.stats();
        assert_eq!(total.handshakes_completed, CLIENTS as u64, "{total}");
        let busy = server
            .shard_stats()
            .iter()
            .filter(|s| s.handshakes_completed > 0)
            .count();
        assert_eq!(busy, 2, "{:?}", server.shard_stats());
        server.close().await;
        assert!(matches!(server.accept().await, Err(Error::Closed)));
        acceptor.await.unwrap();
    });
}
