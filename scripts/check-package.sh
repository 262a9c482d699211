#!/usr/bin/env bash
# Packages both crates as crates.io would get them and builds each from its package
# (`cargo package` of both at once: openssl-dtls's build takes openssl-dtls-sys from the package
# made alongside, as it is not on crates.io). Fails on any warning from cargo (a missing licence,
# documentation link or README, a target left out of the package) or when a package lacks the
# files its README names.
#
#   scripts/check-package.sh
set -euo pipefail
cd "$(dirname "$0")/.."

out=$(cargo package -p openssl-dtls-sys -p openssl-dtls --allow-dirty 2>&1) || {
  echo "$out"
  exit 1
}
if grep -q '^warning' <<<"$out"; then
  echo "$out"
  echo "package: FAILED: cargo package warned" >&2
  exit 1
fi
check() {
  local crate=$1
  shift
  local files
  files=$(cargo package -p "$crate" --allow-dirty --list 2>/dev/null)
  for f in "$@"; do
    if ! grep -qx "$f" <<<"$files"; then
      echo "package: FAILED: $crate's package lacks $f" >&2
      exit 1
    fi
  done
}
check openssl-dtls-sys README.md LICENSE-MIT LICENSE-APACHE
check openssl-dtls README.md LICENSE-MIT LICENSE-APACHE SECURITY-CONSIDERATIONS.md BENCHMARKS.md \
  examples/psk_server.rs
echo "package: ok ($(grep -c '^ *Packaged' <<<"$out") packages, no warnings)"
