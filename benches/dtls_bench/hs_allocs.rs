//! Section `hsallocs`: where a server handshake's OpenSSL allocations go, step by step, for the
//! sans-IO endpoint and for raw OpenSSL in memory (the "OpenSSL allocations per handshake" rows
//! of the handshake section, attributed; issue 15, "the library's own handshake overhead").
//!
//! Every figure is OpenSSL heap calls (`CRYPTO_set_mem_functions` hook: malloc + realloc) made
//! on the server side, averaged over `BENCH_HSALLOC_N` handshakes (default 200) after 10
//! warm-up ones, one thread, datagrams in memory.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use openssl_dtls::{Endpoint, Event, Session};

use super::{
    env_usize, our_client_ctx, our_server_ctx, raw_contexts, raw_side, roomy, spoof_free_addr,
    step, Cert, Queue, Side, Table, ECDSA, OSSL_ALLOCS, PSK,
};

/// OpenSSL heap calls made by `f`.
fn allocs<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let a0 = OSSL_ALLOCS.load(Relaxed);
    let r = f();
    (r, OSSL_ALLOCS.load(Relaxed) - a0)
}

/// Moves every datagram of `client` to `server` (counting the server's calls into `acc`) and
/// back, once.
fn exchange(server: &mut Endpoint, client: &mut Session, peer: std::net::SocketAddr, acc: &mut u64) {
    let mut buf = vec![0u8; 2048];
    let now = Instant::now();
    while let Some(n) = client.poll_transmit(&mut buf) {
        *acc += allocs(|| server.handle_datagram(now, peer, &buf[..n])).1;
    }
    loop {
        let (out, a) = allocs(|| server.poll_transmit(&mut buf));
        *acc += a;
        let Some((to, n)) = out else { break };
        if to == peer {
            client.handle_datagram(now, &buf[..n]);
        }
    }
}

/// Ours, per step: [first ClientHello (DTLSv1_listen, HelloVerifyRequest), verified ClientHello
/// (fresh listening SSL + first flight), the rest of the handshake, close and free]; and what a
/// fresh `SSL` with our configuration costs alone (`Ssl::new` + BIO + options).
fn ours(suite: &str, cert: &Cert, n: usize) -> ([f64; 4], f64) {
    let mut server = Endpoint::server(our_server_ctx(suite, cert), roomy(16)).unwrap();
    let sctx = our_server_ctx(suite, cert);
    let cctx = our_client_ctx(suite);
    let mut sums = [0u64; 4];
    let mut fresh = 0u64;
    let mut buf = vec![0u8; 2048];
    for i in 0..n + 10 {
        let peer = spoof_free_addr(i);
        let mut c = cctx.new_session(None, Instant::now()).unwrap();
        let mut steps = [0u64; 4];
        // Step 0: the first ClientHello, answered with a HelloVerifyRequest.
        let k = c.poll_transmit(&mut buf).unwrap();
        steps[0] += allocs(|| server.handle_datagram(Instant::now(), peer, &buf[..k])).1;
        let (to, k) = server.poll_transmit(&mut buf).unwrap();
        assert_eq!(to, peer);
        c.handle_datagram(Instant::now(), &buf[..k]);
        // Step 1: the ClientHello with the cookie.
        let k = c.poll_transmit(&mut buf).unwrap();
        steps[1] += allocs(|| server.handle_datagram(Instant::now(), peer, &buf[..k])).1;
        // Step 2: the rest.
        let mut id = None;
        for _ in 0..16 {
            exchange(&mut server, &mut c, peer, &mut steps[2]);
            while let Some(e) = server.poll_event() {
                if let Event::Connected { id: i, .. } = e {
                    id = Some(i);
                }
            }
            if c.is_established() && id.is_some() && !c.has_transmit() {
                break;
            }
        }
        let id = id.expect("sans-IO handshake");
        // Step 3: close and free.
        c.close();
        while let Some(k) = c.poll_transmit(&mut buf) {
            steps[3] += allocs(|| server.handle_datagram(Instant::now(), peer, &buf[..k])).1;
        }
        steps[3] += allocs(|| {
            server.release(peer, id);
            while server.poll_transmit(&mut buf).is_some() {}
            while server.poll_event().is_some() {}
        })
        .1;
        let (s, a) = allocs(|| sctx.new_session(Instant::now()).unwrap());
        drop(s);
        if i >= 10 {
            for (sum, s) in sums.iter_mut().zip(steps) {
                *sum += s;
            }
            fresh += a;
        }
    }
    (sums.map(|s| s as f64 / n as f64), fresh as f64 / n as f64)
}

/// Raw OpenSSL, per step: [`SSL_new` + MTU, first flight (HelloVerifyRequest), second flight
/// (ServerHello ...), the rest, free].
fn raw(suite: &str, cert: &Cert, n: usize) -> [f64; 5] {
    let (cctx, sctx) = raw_contexts(suite, cert);
    let mut sums = [0u64; 5];
    for i in 0..n + 10 {
        let (a, b) = (Queue::default(), Queue::default());
        let mut client = raw_side(&cctx, &a, &b);
        let mut steps = [0u64; 5];
        let (mut server, k) = allocs(|| raw_side(&sctx, &b, &a));
        steps[0] += k;
        let mut round = 1;
        loop {
            client = step(client, false);
            let (next, k) = allocs(|| step(server, true));
            server = next;
            steps[round.min(3)] += k;
            round += 1;
            if matches!((&client, &server), (Side::Done(_), Side::Done(_))) {
                break;
            }
            assert!(round < 50, "raw handshake stuck");
        }
        steps[4] += allocs(|| drop(server)).1;
        drop(client);
        if i >= 10 {
            for (sum, s) in sums.iter_mut().zip(steps) {
                *sum += s;
            }
        }
    }
    sums.map(|s| s as f64 / n as f64)
}

/// The `hsallocs` section.
pub(super) fn hs_allocs_section(cert: &Cert, t: &mut Table) {
    let n = env_usize("BENCH_HSALLOC_N", 200).max(1);
    for (suite, name) in [(PSK, "PSK"), (ECDSA, "ECDSA")] {
        let (o, fresh) = ours(suite, cert, n);
        let r = raw(suite, cert, n);
        let (ot, rt) = (o.iter().sum::<f64>(), r.iter().sum::<f64>());
        t.note(
            &format!("{name} OpenSSL allocations per server handshake, by step (ours: ClientHello → HelloVerifyRequest / verified ClientHello → first flight / the rest / close + free; raw: SSL_new / HelloVerifyRequest / first flight / the rest / free)"),
            format!("{ot:.0}: {:.0} / {:.0} / {:.0} / {:.0}; a fresh configured SSL alone {fresh:.0}", o[0], o[1], o[2], o[3]),
            &format!("{rt:.0}: {:.0} / {:.0} / {:.0} / {:.0} / {:.0}", r[0], r[1], r[2], r[3], r[4]),
            &format!("+{:.0}", ot - rt),
        );
    }
}
