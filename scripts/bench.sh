#!/usr/bin/env bash
# Runs the benchmark harness (openssl-dtls/benches -> benches/dtls_bench.rs) in release mode and
# prints one table: each figure next to a reference measured in the same run, with the ratio.
# Run scripts/setup.sh first on a fresh machine. Sizes are environment variables (defaults):
#   BENCH_ONLY=handshake,throughput,latency,async,memory,allocs,compact,cid,hostile,shards,idle,hsallocs,storm,batch,restart,fleet,record   (all; async
#                                      needs the tokio feature, which this script turns on)
#   BENCH_HS_PSK=4000 BENCH_HS_ECDSA=1500 BENCH_RAW_PSK=4000 BENCH_RAW_ECDSA=1500
#   BENCH_HS_WINDOW=32 BENCH_HS_REPS=3          handshakes in flight; interleaved rounds (best kept)
#   BENCH_TP_N=100000 BENCH_TP_WINDOW=32 BENCH_ONEWAY_N=200000 BENCH_LAT_N=20000
#   BENCH_MEM=10000,100000                      idle connections held in memory (sans-IO)
#   BENCH_ALLOC_N=20000                         round trips counted for allocations
#   BENCH_IDLE=1000,10000 BENCH_IDLE_SECS=5 BENCH_IDLE_SETTLE=3
#   BENCH_COMPACT_MEM=10000                     idle compact connections held (sans-IO server
#                                               Endpoint); the 100,000 figure of BENCHMARKS.md:
#                                               BENCH_ONLY=compact BENCH_COMPACT_MEM=10000,100000
#                                               (≈ 25 s more, ≈ 150 MB RSS); BENCH_COMPACT_MEM=1000000:
#                                               the compact_*_1m rows (issue 16; ≈ 100 s, ≈ 0.8 GB)
#   BENCH_CID_MEM=10000                         idle compact connections with (and without) 8-byte
#                                               Connection IDs held (sans-IO server Endpoint)
#   BENCH_KNOBS_MEM=10000                       raw OpenSSL SSLs with every knob (the reference)
#   BENCH_REC_N=100000 BENCH_REC_REPS=3         records per rate measurement; rounds (best kept)
#                                               (compact and cid sections)
#   BENCH_HOSTILE_N=50                          hostile post-cookie handshakes held (worst-case memory)
#   BENCH_SHARDS_HS=4000 BENCH_SHARDS_HS_THREADS=2 BENCH_SHARDS_CLIENTS=8 BENCH_SHARDS_ECHO=100000
#   BENCH_SHARDS_REPS=3                         2 shards vs 1: handshakes, echoes of many connections
#   BENCH_HSALLOC_N=200                         handshakes whose OpenSSL allocations are attributed
#   BENCH_STORM_N=20000 BENCH_STORM_K=2 BENCH_STORM_WINDOW=16   echoes per p99; flood threads;
#                                               handshakes in flight per thread (storm section;
#                                               BENCH_STORM_NICE_CLIENTS=1: flood at nice 19)
#   BENCH_RESTART_N=100000                      compact connections saved and restored (restart
#                                               section; the issue's million: 1000000)
#   BENCH_FLEET_HS=2000 BENCH_FLEET_ECHO=100000 BENCH_FLEET_REPS=3   through nginx vs direct; 2 nodes
#                                               vs 1 (fleet section; needs nginx: scripts/setup.sh)
#   BENCH_BATCH_N=200000 BENCH_BATCH_CHUNK=32   one-way 1200 B datagrams with batching (send_many
#                                               of CHUNK; refs: naive plain UDP, sendmmsg/recvmmsg)
# Cargo's own CARGO_TARGET_DIR applies (e.g. CARGO_TARGET_DIR=target/bench scripts/bench.sh), and
# so do openssl-sys's OPENSSL_DIR and OPENSSL_STATIC (an OpenSSL that scripts/openssl-versions.sh
# built). BENCH_FEATURES adds features to tokio's, e.g. BENCH_FEATURES=vendored (the OpenSSL of
# the `vendored` feature; use a target directory of its own).
# Usage: scripts/bench.sh [output-file]   (the output is also kept in target/bench-latest.txt; the
# table's rows, tab-separated, in target/bench-summary.tsv)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/bench-latest.txt}"
mkdir -p "$(dirname "$out")"

# Many idle connections need many sockets (one per client in the idle test).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

{
  echo "## machine"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  lscpu | head -15
  echo "memory: $(free -g | awk '/Mem:/ {print $2 " GB"}')"
  echo "kernel: $(uname -r)"
  echo "openssl (command line): $(openssl version 2>/dev/null || echo none)"
  echo "openssl (pkg-config libssl): $(pkg-config --modversion openssl 2>/dev/null || echo unknown)"
  echo "rustc: $(rustc --version)"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
} | tee "$out"

cargo bench -p openssl-dtls --bench dtls_bench --features "tokio${BENCH_FEATURES:+,$BENCH_FEATURES}" 2>&1 | tee -a "$out"
