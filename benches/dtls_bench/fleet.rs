//! Section `fleet` (issue 21): what the balancer costs, and what a second node brings. nginx
//! (Debian's `nginx-light` with the stream and njs modules, one worker, configured by
//! `deploy/nginx/fleet-conf.sh` with `dtls_route.js`) in front of in-process PSK nodes of one
//! fleet (`DtlsServerContextBuilder::fleet`, 8-byte CIDs), all on the same 2 cores as the
//! clients; interleaved rounds, best of `BENCH_FLEET_REPS` (default 3):
//!
//! - `fleet_hs_nginx`: wall PSK handshakes/s through nginx to one node vs straight to that node
//!   (`BENCH_FLEET_HS` handshakes, default 2000, from 2 client threads with `BENCH_HS_WINDOW` in
//!   flight each; every handshake from its own socket, so every one is a new nginx session and
//!   runs the njs preread);
//! - `fleet_echo_nginx`: echoes/s of 100 bytes over 4 CID connections (16 in flight each,
//!   `BENCH_FLEET_ECHO` echoes in all, default 100000) through nginx vs straight to the node;
//! - `fleet_hs_2_over_1`: handshakes/s through nginx to two nodes vs to one node.
//!
//! Without nginx the section says so and measures nothing (`scripts/setup.sh` installs it).

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl_dtls::fleet::FleetSecret;
use openssl_dtls::{
    DtlsClientContext, DtlsServer, DtlsServerContext, PskCredentials, SocketOptions,
};

use super::{client_pool, env_usize, roomy, Sizes, Table, IDENTITY, KEY, PSK};

/// An in-process node: a blocking server of the fleet; `echo`: a thread per connection echoes
/// (otherwise accepted connections are dropped at once, for handshake rates).
fn node(secret: &FleetSecret, index: u8, echo: bool) -> Arc<DtlsServer> {
    let ctx = DtlsServerContext::builder()
        .psk_key_store(|id| (id == IDENTITY).then(|| KEY.to_vec()))
        .ciphers(PSK)
        .connection_id(8)
        .fleet(secret, index)
        .build()
        .unwrap();
    let server = Arc::new(
        DtlsServer::bind_with("127.0.0.1:0", ctx, roomy(65_536), SocketOptions::default()).unwrap(),
    );
    let s = Arc::clone(&server);
    std::thread::spawn(move || {
        while let Ok(conn) = s.accept() {
            if !echo {
                continue;
            }
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok(n @ 1..) = conn.recv(&mut buf) {
                    if conn.send(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    server
}

fn client_ctx(cid: bool) -> DtlsClientContext {
    let mut b = DtlsClientContext::builder();
    b.psk_credentials(PskCredentials::new(IDENTITY.to_vec(), KEY.to_vec()))
        .ciphers(PSK);
    if cid {
        b.connection_id(0);
    }
    b.build().unwrap()
}

/// nginx in the foreground (one process) for `fleets`; stopped on drop.
struct Nginx(Child, PathBuf);

impl Nginx {
    fn start(fleets: &[(&str, SocketAddr, Vec<SocketAddr>)]) -> Option<Nginx> {
        let nginx = Path::new("/usr/sbin/nginx");
        let modules = Path::new("/usr/lib/nginx/modules");
        if !nginx.exists()
            || !modules.join("ngx_stream_module.so").exists()
            || !modules.join("ngx_stream_js_module.so").exists()
        {
            return None;
        }
        let dir =
            std::env::temp_dir().join(format!("openssl-dtls-bench-fleet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ok()?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/fleet-conf.sh");
        let mut cmd = Command::new(script);
        // Every benchmark handshake is a new nginx session (a new client port): room for all
        // of them within the sessions' lifetime.
        cmd.args(["--prefix", &dir.display().to_string(), "--single-process"])
            .args(["--proxy-timeout", "3s", "--worker-connections", "65536"]);
        for (name, listen, nodes) in fleets {
            let nodes: Vec<String> = nodes.iter().map(|a| a.to_string()).collect();
            cmd.args(["--fleet", &format!("{name}={listen}={}", nodes.join(","))]);
        }
        let conf = cmd.output().ok()?;
        if !conf.status.success() {
            return None;
        }
        std::fs::write(dir.join("nginx.conf"), conf.stdout).ok()?;
        // Only errors in the log: no line per session while measuring.
        let conf_path = dir.join("nginx.conf");
        let text = std::fs::read_to_string(&conf_path).ok()?;
        std::fs::write(
            &conf_path,
            text.replace("error.log info;", "error.log error;"),
        )
        .ok()?;
        let child = Command::new(nginx)
            .args([
                "-p",
                &dir.display().to_string(),
                "-c",
                &conf_path.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let n = Nginx(child, dir);
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, listen, _) in fleets {
            while UdpSocket::bind(listen).is_ok() {
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Some(n)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn free_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
}

/// Wall handshakes/s against `to`: `n` from 2 client threads, `window` in flight each.
fn hs_rate(to: SocketAddr, n: usize, window: usize) -> (f64, usize) {
    let ctx = client_ctx(false);
    let threads = 2;
    let t0 = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let ctx = ctx.clone();
            std::thread::spawn(move || client_pool(&ctx, to, (n / threads).max(1), window, false))
        })
        .collect();
    let (mut done, mut failed) = (0, 0);
    for w in workers {
        let (d, f, _) = w.join().unwrap();
        done += d;
        failed += f;
    }
    (done as f64 / t0.elapsed().as_secs_f64(), failed)
}

/// Echoes/s of 4 CID connections to `to`, 16 in flight each, `n` in all.
fn echo_rate(to: SocketAddr, n: usize) -> f64 {
    super::shards::echo_clients(to, &client_ctx(true), 4, n).0
}

pub(super) fn section(sizes: &Sizes, t: &mut Table) {
    let hs_n = env_usize("BENCH_FLEET_HS", 2000);
    let echo_n = env_usize("BENCH_FLEET_ECHO", 100_000);
    let reps = env_usize("BENCH_FLEET_REPS", 3).max(1);
    let window = sizes.hs_window.max(1);
    let secret = FleetSecret::generate().unwrap();
    let (h0, h1, e) = (
        node(&secret, 0, false),
        node(&secret, 1, false),
        node(&secret, 0, true),
    );
    let (one, two, echo) = (free_addr(), free_addr(), free_addr());
    let Some(_nginx) = Nginx::start(&[
        ("one", one, vec![h0.local_addr()]),
        ("two", two, vec![h0.local_addr(), h1.local_addr()]),
        ("echo", echo, vec![e.local_addr()]),
    ]) else {
        t.note(
            "fleet section: nginx with the stream and njs modules not found (scripts/setup.sh installs them); nothing measured",
            String::from("-"),
            "",
            "",
        );
        return;
    };
    // Warm-up, not counted.
    hs_rate(one, window, window);
    hs_rate(two, window, window);
    let (mut direct, mut via1, mut via2, mut failed) = (0f64, 0f64, 0f64, 0);
    let (mut echo_direct, mut echo_via) = (0f64, 0f64);
    let per = (hs_n / reps).max(1);
    for _ in 0..reps {
        for (slot, to) in [
            (&mut direct, h0.local_addr()),
            (&mut via1, one),
            (&mut via2, two),
        ] {
            let (rate, f) = hs_rate(to, per, window);
            *slot = slot.max(rate);
            failed += f;
        }
        echo_direct = echo_direct.max(echo_rate(e.local_addr(), (echo_n / reps).max(1)));
        echo_via = echo_via.max(echo_rate(echo, (echo_n / reps).max(1)));
    }
    t.keyed_row(
        "fleet_hs_nginx",
        &format!(
            "{PSK}: wall handshakes/s through nginx (njs CID route, 1 worker) to one node vs \
             straight to it (2 client threads x {window} in flight, a new nginx session each; \
             nginx, clients and node on the same 2 cores; {failed} failed)"
        ),
        via1,
        direct,
        "/s",
        true,
    );
    t.keyed_row(
        "fleet_echo_nginx",
        "echo 100 B over 4 CID connections (16 in flight each): echoes/s through nginx vs straight to the node",
        echo_via,
        echo_direct,
        "/s",
        true,
    );
    t.keyed_row(
        "fleet_hs_2_over_1",
        "wall handshakes/s through nginx: 2 nodes vs 1 (same clients; nginx, clients and both nodes on the same 2 cores)",
        via2,
        via1,
        "/s",
        true,
    );
}
