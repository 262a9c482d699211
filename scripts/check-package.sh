#!/usr/bin/env bash
# Packages both crates as crates.io would get them and builds each from its package
# (`cargo package` of both at once: openssl-dtls's build takes openssl-dtls-sys from the package
# made alongside, as it is not on crates.io). Fails on any warning from cargo (a missing licence,
# documentation link or README, a target left out of the package) or when a package lacks the
# files its README names, or holds a file outside what belongs in it (the `include` lists of the
# manifests: sources, declared targets and the files they read, licences, the documents).
#
#   scripts/check-package.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Cargo verifies openssl-dtls against the openssl-dtls-sys package it just made as if it came
# from a registry, and a registry crate is never rebuilt once built: an earlier build of the same
# version would be reused. The check builds in a target directory of its own, from which every
# earlier build of openssl-dtls-sys (and its unpacked copy in the registry cache) is removed.
check_target="${CARGO_TARGET_DIR:-target}/package-check"
rm -rf "$check_target/package" "$check_target"/debug/.fingerprint/openssl-dtls-sys-* \
  "$check_target"/debug/deps/*openssl_dtls_sys* "$check_target"/debug/build/openssl-dtls-sys-* \
  "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/openssl-dtls-sys-*
export CARGO_TARGET_DIR="$check_target"
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
# Nothing else: what cargo adds (Cargo.toml.orig, Cargo.lock, .cargo_vcs_info.json) and the
# given patterns (extended regular expressions, whole paths).
only() {
  local crate=$1 allowed extra
  shift
  allowed="^(Cargo\.toml|Cargo\.toml\.orig|Cargo\.lock|\.cargo_vcs_info\.json|README\.md|LICENSE-MIT|LICENSE-APACHE$(printf '|%s' "$@"))$"
  extra=$(cargo package -p "$crate" --allow-dirty --list 2>/dev/null | grep -Ev "$allowed" || true)
  if [ -n "$extra" ]; then
    echo "package: FAILED: $crate's package holds files that do not belong in it:" >&2
    echo "$extra" >&2
    exit 1
  fi
}
check openssl-dtls-sys README.md LICENSE-MIT LICENSE-APACHE
only openssl-dtls-sys 'build\.rs' 'src/[a-z0-9_/]+\.rs' 'tests/[a-z0-9_]+\.rs'
check openssl-dtls README.md LICENSE-MIT LICENSE-APACHE SECURITY-CONSIDERATIONS.md BENCHMARKS.md \
  examples/psk_server.rs
only openssl-dtls SECURITY-CONSIDERATIONS\.md BENCHMARKS\.md 'src/[a-z0-9_/]+\.rs' \
  '(examples|benches|tests)/[a-z0-9_/]+\.rs' 'tests/peers/(mbedtls_peer\.c|README\.md)'
echo "package: ok ($(grep -c '^ *Packaged' <<<"$out") packages, no warnings)"
