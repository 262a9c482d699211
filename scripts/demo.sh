#!/usr/bin/env bash
# The main demo from a fresh Debian 12 machine: installs what is missing, then runs a PSK DTLS
# server and client in one process over UDP on loopback (RUST_LOG=debug shows the handshake).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo run --quiet -p openssl-dtls --example demo
