//! Section `restart`: graceful restart (issue 16; keys `save_1m_ms` and `restore_1m_ms`).
//!
//! A sans-IO compact server `Endpoint` (PSK-AES128-CCM8) holds `BENCH_RESTART_N` established
//! compact connections (default 100,000; the million: `BENCH_RESTART_N=1000000`, about
//! a minute of handshakes to set up and a few hundred MB); each was made by a full handshake
//! and one echo, as in the `compact` section. Measured: `Endpoint::save_state` into memory
//! (serialise, seal with AES-256-GCM), and `Endpoint::restore_state` of that state into a new
//! endpoint (open, parse every connection, insert). The reference is Californium's published
//! figure, 4,000 connections saved in 44 ms and loaded in 54 ms, scaled linearly to the same
//! number of connections (the row says so).

use std::time::{Duration, Instant, SystemTime};

use openssl_dtls::{Endpoint, StateKey};

use super::{
    compact_connection, env_usize, our_client_ctx_with, our_server_ctx_with, roomy,
    spoof_free_addr, Cert, Table, MTU, PSK,
};

/// Californium: 4,000 connections saved in 44 ms, loaded in 54 ms.
const CALIFORNIUM: (f64, f64, f64) = (4_000.0, 44.0, 54.0);

pub(super) fn section(t: &mut Table) {
    let n = env_usize("BENCH_RESTART_N", 100_000);
    let cert = Cert {
        cert_der: vec![],
        key_der: vec![],
    };
    let sctx = our_server_ctx_with(PSK, &cert, MTU as usize, true);
    let cctx = our_client_ctx_with(PSK, MTU as usize, true);
    let t0 = Instant::now();
    let mut server = Endpoint::server(sctx.clone(), roomy(n)).unwrap();
    let (mut buf, mut app) = (vec![0u8; 2048], vec![0u8; 2048]);
    for i in 0..n {
        let ok = compact_connection(&mut server, &cctx, spoof_free_addr(i), &mut buf, &mut app);
        assert_eq!(ok, Some(true), "connection {i} compact");
        if i % 256 == 0 {
            server.handle_timeout(Instant::now());
        }
    }
    let setup = t0.elapsed();
    let key = StateKey::generate().unwrap();
    let mut state = Vec::new();
    let t1 = Instant::now();
    let saved = server
        .save_state(&mut state, &key, SystemTime::now())
        .unwrap();
    let save_ms = t1.elapsed().as_secs_f64() * 1e3;
    assert_eq!(saved.saved, n);
    drop(server);
    let mut fresh = Endpoint::server(sctx, roomy(n)).unwrap();
    let t2 = Instant::now();
    let restored = fresh
        .restore_state(
            &mut &state[..],
            &key,
            Instant::now(),
            SystemTime::now(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let restore_ms = t2.elapsed().as_secs_f64() * 1e3;
    assert_eq!(restored.restored, n);
    let (cn, csave, cload) = CALIFORNIUM;
    let scale = n as f64 / cn;
    let mb = state.len() as f64 / 1e6;
    t.keyed_row(
        "save_1m_ms",
        &format!(
            "restart: save {n} idle compact connections (Endpoint::save_state, sealed AES-256-GCM, {mb:.1} MB, {:.0} B per connection; set up in {:.0} s) vs Californium's 4,000 in 44 ms scaled linearly to {n}",
            state.len() as f64 / n.max(1) as f64,
            setup.as_secs_f64()
        ),
        save_ms,
        csave * scale,
        "ms",
        false,
    );
    t.keyed_row(
        "restore_1m_ms",
        &format!(
            "restart: restore {n} compact connections into a new Endpoint (open, check, parse all, then insert) vs Californium's 4,000 in 54 ms scaled linearly to {n}"
        ),
        restore_ms,
        cload * scale,
        "ms",
        false,
    );
}
