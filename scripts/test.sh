#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what is missing, then runs
# formatting and lint checks, unit, integration and interop tests (real UDP on loopback against
# OpenSSL's and GnuTLS's tools), short fuzz runs, and the tests against a freshly built OpenSSL
# (`vendored` feature).
#
#   scripts/test.sh            # everything (≈ 15 min on 2 cores, most of it the vendored build)
#   QUICK=1 scripts/test.sh    # skip the vendored OpenSSL build
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
echo "== tests (system OpenSSL: $(openssl version))"
cargo test --workspace --features openssl-dtls/tokio
echo "== fuzz smoke runs (FUZZ_SECONDS=${FUZZ_SECONDS:=10} per target; scripts/fuzz.sh documents long runs)"
FUZZ_SECONDS=$FUZZ_SECONDS scripts/fuzz.sh
if [ -z "${QUICK:-}" ]; then
  echo "== tests against a freshly built OpenSSL 3.x (all features: vendored, tokio)"
  cargo test --workspace --all-features --target-dir target/vendored \
    --lib --test link --test session --test context --test udp --test async_tokio --test compact
fi
echo "== all tests passed"
