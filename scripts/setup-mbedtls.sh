#!/usr/bin/env bash
# Builds the Mbed TLS test peer (tests/peers/mbedtls_peer.c) into
# ${CARGO_TARGET_DIR:-target}/peers/mbedtls_peer, for the RFC 9146 (Connection ID) interop tests.
#
# Mbed TLS 3.6.5's C source comes from the crates.io package mbedtls-rs-sys 0.3.1, which carries
# it unmodified under mbedtls/ (fetched with `cargo info`, which only downloads the .crate, or
# with curl from crates.io). It is extracted to ${CARGO_TARGET_DIR:-target}/peers/mbedtls-3.6.5/
# and its three static libraries are built with its own Makefile (default configuration).
# Idempotent: does nothing when the binary is newer than the .c file (and this script).
# Prints one line saying what it did; exits non-zero with a message on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

crate=mbedtls-rs-sys
version=0.3.1
mbedtls_version=3.6.5
# The .crate's SHA-256, as the crates.io index lists it ("cksum").
sha256=ed3d6fe75492994df511a63da8de669a0c59938ada3345e3d4756aec095d2ffb
target=${CARGO_TARGET_DIR:-target}
case "$target" in /*) ;; *) target="$root/$target" ;; esac
peers="$target/peers"
src="$peers/mbedtls-$mbedtls_version"
bin="$peers/mbedtls_peer"
peer_c="$root/tests/peers/mbedtls_peer.c"
log="$peers/setup-mbedtls.log"

die() {
  echo "setup-mbedtls: error: $*" >&2
  exit 1
}

mkdir -p "$peers" || die "cannot create $peers"
# One build at a time (test processes may call this concurrently).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$peers/.setup-mbedtls.lock"
  flock 9
fi
if [ -x "$bin" ] && [ "$bin" -nt "$peer_c" ] && [ "$bin" -nt "$root/scripts/setup-mbedtls.sh" ]; then
  echo "setup-mbedtls: $bin is up to date"
  exit 0
fi

command -v cc >/dev/null 2>&1 || die "no C compiler (cc); run scripts/setup.sh"
if ! command -v make >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "setup-mbedtls: installing make" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends make >&2 ||
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
      --no-install-recommends make >&2; } || die "could not install make"
fi
command -v make >/dev/null 2>&1 || die "no make (the Mbed TLS libraries are built with it)"
start=$(date +%s)
: >"$log"
did=()

# 1. The Mbed TLS source, from the mbedtls-rs-sys .crate.
if [ ! -f "$src/.complete" ]; then
  file=""
  find_crate() {
    file=$(ls -1 "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate-$version.crate" 2>/dev/null |
      head -n 1 || true)
  }
  find_crate
  if [ -z "$file" ] && command -v cargo >/dev/null 2>&1; then
    # `cargo info NAME@VERSION` downloads the .crate into cargo's cache to read its manifest.
    (cd "$peers" && cargo info "$crate@$version" >>"$log" 2>&1) || true
    find_crate
  fi
  if [ -z "$file" ]; then
    command -v curl >/dev/null 2>&1 || die "could not get $crate $version via cargo, and no curl"
    file="$peers/$crate-$version.crate"
    curl -fsSL --retry 2 -o "$file.tmp" \
      "https://static.crates.io/crates/$crate/$crate-$version.crate" ||
      curl -fsSL --retry 2 -o "$file.tmp" \
        "https://crates.io/api/v1/crates/$crate/$version/download" ||
      die "could not download $crate $version from crates.io"
    mv "$file.tmp" "$file"
  fi
  echo "$sha256  $file" | sha256sum -c --quiet - >/dev/null 2>&1 ||
    die "$file does not have the SHA-256 the crates.io index lists for $crate $version"
  rm -rf "$src" "$src.tmp"
  mkdir -p "$src.tmp"
  tar -xzf "$file" -C "$src.tmp" --strip-components=2 "$crate-$version/mbedtls/include" \
    "$crate-$version/mbedtls/library" "$crate-$version/mbedtls/3rdparty" \
    "$crate-$version/mbedtls/scripts" "$crate-$version/mbedtls/LICENSE" ||
    die "could not extract the Mbed TLS source from $file"
  grep -q "MBEDTLS_VERSION_STRING *\"$mbedtls_version\"" "$src.tmp/include/mbedtls/build_info.h" ||
    die "$file does not carry Mbed TLS $mbedtls_version"
  # library/Makefile names this script as an (order-only) prerequisite of a file the package
  # already ships generated; the framework/ submodule is not in the package.
  mkdir -p "$src.tmp/framework/scripts"
  : >"$src.tmp/framework/scripts/generate_ssl_debug_helpers.py"
  touch "$src.tmp/.complete"
  mv "$src.tmp" "$src"
  did+=("extracted Mbed TLS $mbedtls_version from $crate $version")
fi

# 2. The static libraries (make is incremental).
libs=(libmbedtls.a libmbedx509.a libmbedcrypto.a)
if [ ! -f "$src/library/libmbedtls.a" ] || [ ! -f "$src/library/libmbedx509.a" ] ||
  [ ! -f "$src/library/libmbedcrypto.a" ]; then
  make -j"${MBEDTLS_JOBS:-2}" -C "$src/library" libmbedcrypto.a libmbedx509.a libmbedtls.a \
    >>"$log" 2>&1 || { tail -n 30 "$log" >&2; die "building the Mbed TLS libraries failed (log: $log)"; }
  did+=("built ${libs[*]}")
fi

# 3. The peer.
cc -std=c99 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -O1 -g -Wall -Wextra -Werror \
  -I"$src/include" -o "$bin.tmp" "$peer_c" \
  "$src/library/libmbedtls.a" "$src/library/libmbedx509.a" "$src/library/libmbedcrypto.a" \
  >>"$log" 2>&1 || { tail -n 30 "$log" >&2; die "compiling $peer_c failed (log: $log)"; }
mv "$bin.tmp" "$bin"
did+=("compiled $bin")

echo "setup-mbedtls: $(IFS=';'; echo "${did[*]}" | sed 's/;/, /g') in $(($(date +%s) - start)) s"
