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
fn exchange(
    server: &mut Endpoint,
    client: &mut Session,
    peer: std::net::SocketAddr,
    acc: &mut u64,
) {
    let mut buf = vec![0u8; 2048];
    let now = Instant::now();
    while let Some(n) = client.poll_transmit(&mut buf) {
        *acc += allocs(|| server.handle_datagram(now, peer, &buf[..n])).1;
    }
    *acc += allocs(|| run_jobs(server)).1;
    loop {
        let (out, a) = allocs(|| server.poll_transmit(&mut buf));
        *acc += a;
        let Some((to, n)) = out else { break };
        if to == peer {
            client.handle_datagram(now, &buf[..n]);
        }
    }
}

/// Runs the handshake steps the endpoint checked out (handshake offload on, so that the
/// first flight is measured apart from the cookie check).
fn run_jobs(server: &mut Endpoint) {
    while let Some(mut job) = server.poll_handshake_job() {
        let now = Instant::now();
        job.run(now);
        server.finish_handshake_job(now, job).expect("its own job");
    }
}

/// Ours, per step: [first ClientHello (DTLSv1_listen, HelloVerifyRequest), verified ClientHello
/// (DTLSv1_listen verifies the cookie; a fresh listening SSL replaces the one that becomes the
/// session), first flight, the rest of the handshake, close and free]; and what a fresh `SSL`
/// with our configuration costs alone (`Ssl::new` + BIO + options).
fn ours(suite: &str, cert: &Cert, n: usize) -> ([f64; 5], f64) {
    let mut server = Endpoint::server(our_server_ctx(suite, cert), roomy(16)).unwrap();
    server.set_handshake_offload(true);
    let sctx = our_server_ctx(suite, cert);
    let cctx = our_client_ctx(suite);
    let mut sums = [0u64; 5];
    let mut fresh = 0u64;
    let mut buf = vec![0u8; 2048];
    for i in 0..n + 10 {
        let peer = spoof_free_addr(i);
        let mut c = cctx.new_session(None, Instant::now()).unwrap();
        let mut steps = [0u64; 5];
        // Step 0: the first ClientHello, answered with a HelloVerifyRequest.
        let k = c.poll_transmit(&mut buf).unwrap();
        steps[0] += allocs(|| server.handle_datagram(Instant::now(), peer, &buf[..k])).1;
        let (to, k) = server.poll_transmit(&mut buf).unwrap();
        assert_eq!(to, peer);
        c.handle_datagram(Instant::now(), &buf[..k]);
        // Step 1: the ClientHello with the cookie.
        let k = c.poll_transmit(&mut buf).unwrap();
        steps[1] += allocs(|| server.handle_datagram(Instant::now(), peer, &buf[..k])).1;
        // Step 2: the first flight.
        steps[2] += allocs(|| run_jobs(&mut server)).1;
        // Step 3: the rest.
        let mut id = None;
        for _ in 0..16 {
            exchange(&mut server, &mut c, peer, &mut steps[3]);
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
        // Step 4: close and free.
        c.close();
        while let Some(k) = c.poll_transmit(&mut buf) {
            steps[4] += allocs(|| server.handle_datagram(Instant::now(), peer, &buf[..k])).1;
        }
        steps[4] += allocs(|| {
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

/// OpenSSL heap calls per cookie: HMAC-SHA256 as the library computed it before (an
/// `EVP_DigestSign` over an HMAC `PKey`, a `Signer` per cookie), as it computes it now (`src/cookie`:
/// the key's inner and outer SHA-256 states precomputed, two stack copies continued per
/// cookie), and the raw reference's cookie (one SHA-256 `hash`). Returns (before, now, raw).
fn cookie_costs(n: usize) -> (f64, f64, f64) {
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::sha::Sha256;
    use openssl::sign::Signer;
    let key = PKey::hmac(&[7u8; 32]).unwrap();
    let keyed = |byte: u8| {
        let mut state = Sha256::new();
        state.update(&[7 ^ byte; 32]);
        state.update(&[byte; 32]);
        state
    };
    let (inner, outer) = (keyed(0x36), keyed(0x5c));
    let mut out = [0u8; 32];
    let (mut signer_allocs, mut precomputed, mut hash) = (0, 0, 0);
    for _ in 0..n {
        signer_allocs += allocs(|| {
            let mut signer = Signer::new(MessageDigest::sha256(), &key).unwrap();
            signer.update(b"cookie 127.0.0.1:40000").unwrap();
            signer.sign(&mut out).unwrap()
        })
        .1;
        precomputed += allocs(|| {
            let mut i = inner.clone();
            i.update(b"cookie 127.0.0.1:40000");
            let mut o = outer.clone();
            o.update(&i.finish());
            out = o.finish();
        })
        .1;
        hash +=
            allocs(|| openssl::hash::hash(MessageDigest::sha256(), b"secret|127.0.0.1:40000")).1;
    }
    let per = |k: u64| k as f64 / n as f64;
    (per(signer_allocs), per(precomputed), per(hash))
}

/// The `hsallocs` section.
pub(super) fn hs_allocs_section(cert: &Cert, t: &mut Table) {
    let n = env_usize("BENCH_HSALLOC_N", 200).max(1);
    let (before, now, hash) = cookie_costs(n);
    t.note(
        "OpenSSL allocations per cookie computation, three per handshake (HelloVerifyRequest; DTLSv1_listen's check; the state machine's check when the handshake continues): ours now (precomputed HMAC-SHA256 states) / before (EVP_DigestSign over an HMAC PKey per cookie); raw reference: one SHA-256 hash",
        format!("{now:.0} / before {before:.0}"),
        &format!("{hash:.0}"),
        &format!(
            "{:+.0} per handshake (before {:+.0}; raw computes two)",
            3.0 * now - 2.0 * hash,
            3.0 * before - 2.0 * hash
        ),
    );
    for (suite, name) in [(PSK, "PSK"), (ECDSA, "ECDSA")] {
        let (o, fresh) = ours(suite, cert, n);
        let r = raw(suite, cert, n);
        let (ot, rt) = (o.iter().sum::<f64>(), r.iter().sum::<f64>());
        t.note(
            &format!("{name} OpenSSL allocations per server handshake, by step (ours: ClientHello → HelloVerifyRequest / cookie verified + fresh listening SSL / first flight / the rest / close + free; raw: SSL_new / HelloVerifyRequest / first flight / the rest / free)"),
            format!("{ot:.0}: {:.0} / {:.0} / {:.0} / {:.0} / {:.0}; a fresh configured SSL alone {fresh:.0}", o[0], o[1], o[2], o[3], o[4]),
            &format!("{rt:.0}: {:.0} / {:.0} / {:.0} / {:.0} / {:.0}", r[0], r[1], r[2], r[3], r[4]),
            &format!("{:+.0}", ot - rt),
        );
    }
}
