//! Batched socket I/O over real UDP on loopback: bursts larger than one receive batch
//! (`recvmmsg`), batch sends (`send_many`, `sendmmsg`) with and without UDP GSO, GRO trains split
//! back into their datagrams, and the kernel's receive-drop counter (`SO_RXQ_OVFL`) in the
//! statistics.
//!
//! Every wait is bounded; nothing is timed.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl_dtls::{
    DropReason, DtlsClient, DtlsClientContext, DtlsConnection, DtlsServer, DtlsServerContext,
    EndpointConfig, EndpointStats, Error, PskCredentials, SessionConfig, SocketOptions,
};

const IDENTITY: &[u8] = b"Client_identity";
const KEY: &[u8] = b"secretPSK";
/// Room for 1,200-byte payloads.
const MTU: usize = 1400;
/// Every wait's bound.
const LIMIT: Duration = Duration::from_secs(30);

/// A session configuration whose receive queue holds a whole burst (so the test sees what the
/// socket delivered, not the queue's limit).
fn roomy_session() -> SessionConfig {
    let mut config = SessionConfig::default();
    config.mtu = MTU;
    config.recv_queue = 4096;
    config.recv_queue_bytes = 16 << 20;
    config
}

fn server_ctx() -> DtlsServerContext {
    DtlsServerContext::builder()
        .psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
        .session_config(roomy_session())
        .build()
        .unwrap()
}

fn client_ctx() -> DtlsClientContext {
    DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(IDENTITY.to_vec(), KEY.to_vec()))
        .session_config(roomy_session())
        .build()
        .unwrap()
}

fn options(gso: bool, gro: bool) -> SocketOptions {
    let mut options = SocketOptions::default();
    options.gso = gso;
    options.gro = gro;
    options
}

fn server(options: SocketOptions) -> DtlsServer {
    DtlsServer::bind_with(
        "127.0.0.1:0",
        server_ctx(),
        EndpointConfig::default(),
        options,
    )
    .unwrap()
}

/// A client with `options` connected to `server`, and the server's side of the connection.
fn connect(
    server: &DtlsServer,
    options: SocketOptions,
) -> (DtlsClient, DtlsConnection, DtlsConnection) {
    let client = DtlsClient::bind_with("127.0.0.1:0", EndpointConfig::default(), options).unwrap();
    let conn = client
        .connect(server.local_addr(), &client_ctx(), Duration::from_secs(10))
        .unwrap();
    let accepted = server
        .accept_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("accepted");
    (client, conn, accepted)
}

/// Datagram `seq` of a stream: `len` bytes, the sequence number first, then a pattern.
fn datagram(seq: u32, len: usize) -> Vec<u8> {
    let mut d = vec![(seq % 251) as u8; len];
    d[..4].copy_from_slice(&seq.to_be_bytes());
    d
}

/// Receives `count` datagrams on `conn` (bounded by [`LIMIT`]).
fn receive(conn: &DtlsConnection, count: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + LIMIT;
    let mut got = Vec::with_capacity(count);
    let mut buf = vec![0u8; 2048];
    while got.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "only {} of {count} arrived", got.len());
        if let Some(n) = conn.recv_timeout(&mut buf, left).unwrap() {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

/// Polls `server`'s statistics until `done` holds (bounded by [`LIMIT`]); the last snapshot.
fn stats_until(server: &DtlsServer, mut done: impl FnMut(&EndpointStats) -> bool) -> EndpointStats {
    let deadline = Instant::now() + LIMIT;
    loop {
        let stats = server.stats();
        if done(&stats) || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_burst_larger_than_a_batch_arrives_intact_and_in_order_per_peer() {
    let server = Arc::new(server(SocketOptions::default()));
    const PER_PEER: u32 = 300; // several 64-datagram turns, each several recvmmsg calls
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for peer in 0..2 {
        let (client, conn, accepted) = connect(&server, SocketOptions::default());
        receivers.push(std::thread::spawn(move || {
            receive(&accepted, PER_PEER as usize)
        }));
        senders.push(std::thread::spawn(move || {
            // Half one by one, half in batches of 50 (equal sizes: GSO where the kernel has it).
            for seq in 0..PER_PEER / 2 {
                conn.send(&datagram(seq, 200 + peer * 300)).unwrap();
            }
            let rest: Vec<Vec<u8>> = (PER_PEER / 2..PER_PEER)
                .map(|seq| datagram(seq, 1200))
                .collect();
            for chunk in rest.chunks(50) {
                let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                conn.send_many(&refs).unwrap();
            }
            (client, conn)
        }));
    }
    let _keep: Vec<_> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    for (peer, receiver) in receivers.into_iter().enumerate() {
        let got = receiver.join().unwrap();
        for (seq, d) in got.iter().enumerate() {
            let seq = seq as u32;
            let len = if seq < PER_PEER / 2 {
                200 + peer * 300
            } else {
                1200
            };
            assert_eq!(d, &datagram(seq, len), "peer {peer}, datagram {seq}");
        }
    }
    let stats = server.stats();
    assert_eq!(stats.socket_rx_dropped, 0, "{stats}");
}

#[test]
fn compact_connections_send_many_in_runs_of_records_both_ways() {
    // Compact connections seal `send_many`'s datagrams in runs (one call of the record layer
    // for up to 8): what arrives is what was sent, in order, both ways, and nothing is dropped.
    let compact = || {
        let mut config = roomy_session();
        config.compact = true;
        config
    };
    let server = DtlsServer::bind_with(
        "127.0.0.1:0",
        DtlsServerContext::builder()
            .psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
            .session_config(compact())
            .build()
            .unwrap(),
        EndpointConfig::default(),
        SocketOptions::default(),
    )
    .unwrap();
    let client = DtlsClient::bind("127.0.0.1:0").unwrap();
    let cctx = DtlsClientContext::builder()
        .psk_credentials(PskCredentials::new(IDENTITY.to_vec(), KEY.to_vec()))
        .session_config(compact())
        .build()
        .unwrap();
    let conn = client
        .connect(server.local_addr(), &cctx, Duration::from_secs(10))
        .unwrap();
    let accepted = server
        .accept_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("accepted");
    let stream: Vec<Vec<u8>> = (0..61u32)
        .map(|seq| datagram(seq, [1200, 100, 4, 700][seq as usize % 4]))
        .collect();
    let refs: Vec<&[u8]> = stream.iter().map(Vec::as_slice).collect();
    for chunk in refs.chunks(20) {
        conn.send_many(chunk).unwrap();
    }
    assert_eq!(receive(&accepted, stream.len()), stream);
    accepted.send_many(&refs[..37]).unwrap();
    assert_eq!(receive(&conn, 37), stream[..37]);
    let stats = server.stats();
    assert_eq!(stats.socket_rx_dropped, 0, "{stats}");
}

#[test]
fn gso_on_and_off_deliver_the_same_datagrams() {
    // Runs of equal sizes with a shorter one ending each run, a larger one starting the next.
    let sizes = [
        1200, 1200, 1200, 700, 1200, 1200, 100, 100, 100, 100, 1, 1200,
    ];
    let stream: Vec<Vec<u8>> = (0..120u32)
        .map(|seq| datagram(seq, sizes[seq as usize % sizes.len()].max(4)))
        .collect();
    let mut received = Vec::new();
    for gso in [true, false] {
        let server = server(options(false, false));
        let (client, conn, accepted) = connect(&server, options(gso, false));
        let refs: Vec<&[u8]> = stream.iter().map(Vec::as_slice).collect();
        conn.send_many(&refs).unwrap();
        let got = receive(&accepted, stream.len());
        let client_stats = client.stats();
        assert_eq!(client_stats.socket_send_errors, 0, "{client_stats}");
        assert_eq!(client_stats.socket_send_full, 0, "{client_stats}");
        let stats = server.stats();
        // Each record came as a datagram of its own: as many datagrams as records (after the
        // handshake's).
        assert_eq!(
            accepted.stats().unwrap().session.app_in,
            stream.len() as u64,
            "gso {gso}: {stats}"
        );
        received.push(got);
    }
    assert_eq!(received[0], stream, "with GSO");
    assert_eq!(received[1], stream, "without GSO");
}

/// Sends `payload` from `socket` to `to` as one GSO send of `segment`-byte datagrams
/// (`UDP_SEGMENT` control message, built by hand in the kernel's `cmsghdr` layout). `false`
/// if the kernel refused GSO.
fn send_gso(socket: &socket2::Socket, to: SocketAddr, payload: &[u8], segment: u16) -> bool {
    const SOL_UDP: i32 = 17;
    const UDP_SEGMENT: i32 = 103;
    let header = std::mem::size_of::<usize>() + 8;
    let mut control = Vec::new();
    control.extend_from_slice(&(header + 2).to_ne_bytes());
    control.extend_from_slice(&SOL_UDP.to_ne_bytes());
    control.extend_from_slice(&UDP_SEGMENT.to_ne_bytes());
    control.extend_from_slice(&segment.to_ne_bytes());
    control.resize((header + 2).div_ceil(8) * 8, 0);
    let to = socket2::SockAddr::from(to);
    let bufs = [std::io::IoSlice::new(payload)];
    let msg = socket2::MsgHdr::new()
        .with_addr(&to)
        .with_buffers(&bufs)
        .with_control(&control);
    match socket.sendmsg(&msg, 0) {
        Ok(n) => {
            assert_eq!(n, payload.len());
            true
        }
        Err(e) => {
            eprintln!("GSO send refused ({e}): the kernel lacks UDP GSO");
            false
        }
    }
}

#[test]
fn gro_trains_from_a_plain_sender_are_split_into_their_datagrams() {
    let server = server(options(true, true));
    let to = server.local_addr();
    let plain = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    plain
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    // Ten 100-byte garbage datagrams (content type 0xEE: not DTLS, not RTP) in one GSO send:
    // with GRO the server's socket may receive them as one buffer; each must be counted.
    const TRAINS: u64 = 5;
    const SEGMENTS: u64 = 10;
    let garbage = vec![0xEE; 100 * SEGMENTS as usize];
    for _ in 0..TRAINS {
        if !send_gso(&plain, to, &garbage, 100) {
            return;
        }
    }
    // A train whose last datagram is shorter.
    assert!(send_gso(&plain, to, &garbage[..950], 100));
    let expected = (TRAINS + 1) * SEGMENTS;
    let stats = stats_until(&server, |s| {
        s.dropped(DropReason::BadContentType) >= expected
    });
    assert_eq!(
        stats.dropped(DropReason::BadContentType),
        expected,
        "{stats}"
    );
    assert_eq!(stats.datagrams_in, expected, "{stats}");

    // Our client's equal-size records, sent with GSO into the same GRO socket, each decrypt.
    let (_client, conn, accepted) = connect(&server, options(true, false));
    let stream: Vec<Vec<u8>> = (0..64).map(|seq| datagram(seq, 1000)).collect();
    let refs: Vec<&[u8]> = stream.iter().map(Vec::as_slice).collect();
    conn.send_many(&refs).unwrap();
    assert_eq!(receive(&accepted, stream.len()), stream);
}

#[test]
fn kernel_drops_at_a_flooded_tiny_receive_buffer_appear_in_the_statistics() {
    let mut tiny = SocketOptions::default();
    tiny.recv_buffer_size = Some(1); // the kernel's minimum: a couple of datagrams
    let server = server(tiny);
    let to = server.local_addr();
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    let garbage = [0xEEu8; 1200];
    let mut sent = 0u64;
    let deadline = Instant::now() + LIMIT;
    // Floods until the kernel drops some; a burst of thousands into a buffer of a few
    // datagrams overflows at once, whatever the machine's load.
    let mut stats = server.stats();
    while stats.socket_rx_dropped == 0 && Instant::now() < deadline {
        for _ in 0..5_000 {
            if flood.send_to(&garbage, to).is_ok() {
                sent += 1;
            }
        }
        // The kernel reports its counter with the next datagram delivered: probe until every
        // datagram sent is accounted for (handled, or counted as dropped by the kernel).
        stats = stats_until(&server, |s| {
            let settled = s.datagrams_in + s.socket_rx_dropped == sent;
            if !settled && flood.send_to(&garbage, to).is_ok() {
                sent += 1;
            }
            settled
        });
    }
    assert!(stats.socket_rx_dropped > 0, "{stats}");
    // Every datagram sent was either handled (and dropped as garbage, counted) or dropped by
    // the kernel (counted): none vanished. Settle once more with the probes stopped.
    let settled = stats_until(&server, |s| s.datagrams_in + s.socket_rx_dropped >= sent);
    assert_eq!(
        settled.datagrams_in + settled.socket_rx_dropped,
        sent,
        "{settled}"
    );
    assert_eq!(
        settled.dropped(DropReason::BadContentType),
        settled.datagrams_in
    );
    assert!(
        settled.to_string().contains("socket_rx_dropped="),
        "{settled}"
    );
}

#[test]
fn receive_queue_drops_stay_counted_after_the_connection_is_gone() {
    // The default receive queue (64 datagrams) and an application that does not read.
    let ctx = DtlsServerContext::builder()
        .psk_key_store(|identity| (identity == IDENTITY).then(|| KEY.to_vec()))
        .build()
        .unwrap();
    let server = DtlsServer::bind_with(
        "127.0.0.1:0",
        ctx,
        EndpointConfig::default(),
        SocketOptions::default(),
    )
    .unwrap();
    let (client, conn, accepted) = connect(&server, SocketOptions::default());
    let stream: Vec<Vec<u8>> = (0..200).map(|seq| datagram(seq, 100)).collect();
    let refs: Vec<&[u8]> = stream.iter().map(Vec::as_slice).collect();
    conn.send_many(&refs).unwrap();
    let stats = stats_until(&server, |s| s.datagrams_in >= 200 + 3);
    assert!(stats.recv_queue_dropped > 0, "{stats}");
    let dropped = stats.recv_queue_dropped;
    drop((conn, accepted, client));
    let after = stats_until(&server, |s| s.connections == 0 && s.connections_closed == 1);
    assert_eq!(after.connections, 0, "{after}");
    assert!(after.recv_queue_dropped >= dropped, "{after}");
}

#[test]
fn send_many_refuses_an_oversized_payload_and_sends_none() {
    let server = server(SocketOptions::default());
    let (_client, conn, accepted) = connect(&server, SocketOptions::default());
    let big = vec![1u8; conn.data_mtu() + 1];
    let small = [2u8; 10];
    let err = conn.send_many(&[&small, &big]).unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
    conn.send_many(&[]).unwrap();
    conn.send(&[3u8; 5]).unwrap();
    // The first datagram to arrive is the one sent after the refusal.
    assert_eq!(receive(&accepted, 1), [vec![3u8; 5]]);
}

#[cfg(feature = "tokio")]
#[test]
fn tokio_send_many_and_bursts_arrive_in_order() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use openssl_dtls::tokio::{DtlsClient, DtlsServer};
        let server = DtlsServer::bind_with(
            "127.0.0.1:0",
            server_ctx(),
            EndpointConfig::default(),
            SocketOptions::default(),
        )
        .await
        .unwrap();
        let client = DtlsClient::bind_with(
            "127.0.0.1:0",
            EndpointConfig::default(),
            SocketOptions::default(),
        )
        .await
        .unwrap();
        let conn = client
            .connect(server.local_addr(), &client_ctx(), Duration::from_secs(10))
            .await
            .unwrap();
        let accepted = tokio::time::timeout(LIMIT, server.accept())
            .await
            .unwrap()
            .unwrap();
        let stream: Vec<Vec<u8>> = (0..400).map(|seq| datagram(seq, 1200)).collect();
        let sender = tokio::spawn(async move {
            for chunk in stream.chunks(100) {
                let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                conn.send_many(&refs).await.unwrap();
            }
            conn
        });
        let mut buf = vec![0u8; 2048];
        for seq in 0..400 {
            let n = tokio::time::timeout(LIMIT, accepted.recv(&mut buf))
                .await
                .expect("in time")
                .unwrap();
            assert_eq!(&buf[..n], &datagram(seq, 1200)[..], "datagram {seq}");
        }
        let _conn = sender.await.unwrap();
        let stats = server.stats();
        assert_eq!(stats.socket_rx_dropped, 0, "{stats}");
    });
}
