#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what is missing (Debian packages
# via scripts/setup.sh, cargo-fuzz into target/tools/ via scripts/fuzz.sh; nothing global from
# crates.io), then runs formatting and lint checks, the declared minimum Rust version against the
# locked dependencies, the crates' packages, unit, integration and interop tests (real UDP on
# loopback against OpenSSL's and GnuTLS's tools), the example tools as processes, short fuzz
# runs, the tests against a freshly built OpenSSL (`vendored` feature, built in
# $CARGO_TARGET_DIR/vendored, default target/vendored), and against OpenSSL 3.5 (LTS) and 4.0
# built from their openssl-src crates (scripts/openssl-versions.sh, in
# $CARGO_TARGET_DIR/openssl-3.5 and openssl-4.0; kept and reused).
#
#   scripts/test.sh            # everything (≈ 15 min on a fresh 2-core machine, of which ≈ 7 for
#                              # scripts/openssl-versions.sh: per release ≈ 1.5 min building
#                              # OpenSSL, 0.5 min compiling, 1.5 min testing)
#   QUICK=1 scripts/test.sh    # skip the OpenSSL builds: the system OpenSSL only
#   FUZZ_SECONDS=600 scripts/test.sh   # longer fuzz runs (default 10 s per target)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

export CARGO_TERM_COLOR=never
echo "== format"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --features openssl-dtls/tokio -- -D warnings
echo "== docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet --features openssl-dtls/tokio
echo "== minimum Rust version (rust-version) against the locked dependencies"
scripts/check-msrv.sh
echo "== packages (cargo package: licences, README, no warnings)"
scripts/check-package.sh
echo "== tests (system OpenSSL: $(openssl version))"
# A plain `cargo test` also builds the examples, which tests/examples.rs runs as processes.
cargo test --workspace --features openssl-dtls/tokio
echo "== fuzz smoke runs (FUZZ_SECONDS=${FUZZ_SECONDS:=10} per target; scripts/fuzz.sh documents long runs)"
FUZZ_SECONDS=$FUZZ_SECONDS scripts/fuzz.sh
if [ -z "${QUICK:-}" ]; then
  echo "== tests against a freshly built OpenSSL 3.x (all features: vendored, tokio)"
  cargo test --workspace --all-features --target-dir "${CARGO_TARGET_DIR:-target}/vendored" \
    --lib --test link --test session --test context --test udp --test async_tokio --test compact \
    --test cid --test cid_endpoint --test cid_udp --test cid_interop --test resumption
  echo "== tests against OpenSSL 3.5 (LTS) and 4.0 (scripts/openssl-versions.sh)"
  scripts/openssl-versions.sh
fi
echo "== all tests passed"
