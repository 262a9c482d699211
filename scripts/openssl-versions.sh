#!/usr/bin/env bash
# Builds other OpenSSL releases than the system's and the `vendored` feature's, and runs the test
# suite against each, without touching Cargo.lock: the OpenSSL source comes from the openssl-src
# crate of that release (its .crate, fetched with `cargo info` or curl and checked against the
# SHA-256 the crates.io index lists), is built as static libraries with the options openssl-src
# uses, and installed into ${CARGO_TARGET_DIR:-target}/openssl-<major.minor>/prefix; the tests
# then link it through openssl-sys's OPENSSL_DIR and OPENSSL_STATIC, in a target directory of
# their own (${CARGO_TARGET_DIR:-target}/openssl-<major.minor>/target). A build is kept and
# reused while its prefix says it is of the same release.
#
#   scripts/openssl-versions.sh               # OpenSSL 3.5 (LTS) and 4.0: the releases below
#   scripts/openssl-versions.sh 3.5           # one of them
#   OPENSSL_VERSIONS_BUILD_ONLY=1 scripts/openssl-versions.sh   # build OpenSSL, run no tests
#   OPENSSL_JOBS=2 (default)                  # make -j
#
# Run scripts/setup.sh first on a fresh machine (compiler, perl, make, the interop peers).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# branch  openssl-src version  the .crate's SHA-256 (crates.io index "cksum")
releases=(
  "3.5 300.5.5+3.5.5 3f1787d533e03597a7934fd0a765f0d28e94ecc5fb7789f8053b1e699a56f709"
  "4.0 400.0.2+4.0.3 d2093956673b8dbda85c87fa4fb78e70698ce6c5978a2837d1613f661d3bef76"
)
# The tests run against each release: all of the workspace's but the examples run as processes
# (tests/examples.rs, which the system run covers) and the doc tests.
tests=(--lib --test link --test session --test context --test udp --test verify --test interop
  --test async_tokio --test robustness --test compact --test limits --test spoof
  --test cid --test cid_endpoint --test cid_udp --test cid_interop --test resumption)
# Known failures, skipped by name (--exact) and listed on every run: tests that pass against the
# system's OpenSSL 3.0 (where scripts/test.sh runs them) and not against a release here. None
# today; the four that were listed here (issue #17) are fixed or now assert what every release
# guarantees (the README's "Supported OpenSSL versions" says which).
known_failures=()
known_failures_4_0=()

target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target="$root/$target" ;; esac
jobs=${OPENSSL_JOBS:-2}

die() {
  echo "openssl-versions: error: $*" >&2
  exit 1
}

# Fetches openssl-src $1 (SHA-256 $2) and prints the .crate's path.
fetch_crate() {
  local version=$1 sha256=$2 file
  find_crate() {
    ls -1 "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"openssl-src-$version.crate" 2>/dev/null |
      head -n 1 || true
  }
  file=$(find_crate)
  if [ -z "$file" ] && command -v cargo >/dev/null 2>&1; then
    # `cargo info NAME@VERSION` downloads the .crate into cargo's cache to read its manifest.
    (cd "$target" && cargo info "openssl-src@$version" >/dev/null 2>&1) || true
    file=$(find_crate)
  fi
  if [ -z "$file" ]; then
    command -v curl >/dev/null 2>&1 || die "could not get openssl-src $version via cargo, and no curl"
    file="$target/openssl-src-$version.crate"
    curl -fsSL --retry 2 -o "$file.tmp" \
      "https://static.crates.io/crates/openssl-src/openssl-src-$version.crate" ||
      die "could not download openssl-src $version from crates.io"
    mv "$file.tmp" "$file"
  fi
  echo "$sha256  $file" | sha256sum -c --quiet - >/dev/null 2>&1 ||
    die "$file does not have the SHA-256 the crates.io index lists for openssl-src $version"
  echo "$file"
}

# Builds and installs OpenSSL from openssl-src $2 (SHA-256 $3) into $1/prefix unless it is there.
build_openssl() {
  local dir=$1 version=$2 sha256=$3 file start log=$1/build.log
  local prefix=$dir/prefix src=$dir/src
  if [ -f "$prefix/.complete" ] && [ "$(cat "$prefix/.complete")" = "$version" ]; then
    echo "openssl-versions: $prefix holds OpenSSL from openssl-src $version (kept)"
    return
  fi
  start=$(date +%s)
  mkdir -p "$dir"
  file=$(fetch_crate "$version" "$sha256")
  rm -rf "$src" "$prefix"
  mkdir -p "$src"
  tar -xzf "$file" -C "$src" --strip-components=2 "openssl-src-$version/openssl" ||
    die "could not extract the OpenSSL source from $file"
  : >"$log"
  # The options of openssl-src's own build (its defaults: no optional features).
  (cd "$src" && ./Configure --prefix="$prefix" --openssldir="$prefix/ssl" --libdir=lib \
    no-shared no-module no-tests no-comp no-zlib no-zlib-dynamic no-legacy no-ssl3 no-md2 no-rc5 \
    no-weak-ssl-ciphers no-camellia no-idea no-seed) >>"$log" 2>&1 ||
    { tail -n 30 "$log" >&2; die "configuring OpenSSL (openssl-src $version) failed (log: $log)"; }
  make -C "$src" -j"$jobs" build_libs >>"$log" 2>&1 ||
    { tail -n 30 "$log" >&2; die "building OpenSSL (openssl-src $version) failed (log: $log)"; }
  make -C "$src" install_dev >>"$log" 2>&1 ||
    { tail -n 30 "$log" >&2; die "installing OpenSSL (openssl-src $version) failed (log: $log)"; }
  echo "$version" >"$prefix/.complete"
  rm -rf "$src" # ≈ 1 GB of objects; the prefix is what the tests need
  echo "openssl-versions: built OpenSSL from openssl-src $version into $prefix in $(($(date +%s) - start)) s"
}

selected=("$@")
for release in "${releases[@]}"; do
  read -r branch version sha256 <<<"$release"
  if ((${#selected[@]})) && ! printf '%s\n' "${selected[@]}" | grep -qx "$branch"; then
    continue
  fi
  dir="$target/openssl-$branch"
  build_openssl "$dir" "$version" "$sha256"
  if [ -n "${OPENSSL_VERSIONS_BUILD_ONLY:-}" ]; then
    continue
  fi
  echo "== tests against OpenSSL ${version#*+} (openssl-src $version, static, $dir/prefix)"
  skipped=("${known_failures[@]}")
  if [ "$branch" = 4.0 ]; then skipped+=("${known_failures_4_0[@]}"); fi
  skip_args=(--exact)
  for name in "${skipped[@]}"; do skip_args+=(--skip "$name"); done
  start=$(date +%s)
  # The interop peers stay where scripts/setup.sh put them: CARGO_TARGET_DIR (or ./target) is
  # left as it is, and only this build's own target directory is passed.
  OPENSSL_DIR="$dir/prefix" OPENSSL_STATIC=1 OPENSSL_NO_VENDOR=1 \
    cargo test --workspace --features openssl-dtls/tokio --target-dir "$dir/target" --no-fail-fast \
    "${tests[@]}" -- "${skip_args[@]}"
  echo "openssl-versions: OpenSSL ${version#*+}: skipped (known failures, see the script):" \
    "${skipped[*]:-none}"
  echo "openssl-versions: OpenSSL ${version#*+}: tests passed in $(($(date +%s) - start)) s"
done
