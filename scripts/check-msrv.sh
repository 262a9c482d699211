#!/usr/bin/env bash
# Checks that the workspace's declared `rust-version` (Cargo.toml) is at least the
# `rust-version` of every locked dependency built on this platform, with all features (tokio,
# vendored) and the dev-dependencies. Prints the dependencies that need the most.
#
#   scripts/check-msrv.sh
#
# What it does not prove: that our own code builds with that toolchain (only one toolchain is
# installed here). Clippy's `incompatible_msrv` lint, run by scripts/test.sh, flags standard
# library APIs newer than the declared version.
set -euo pipefail
cd "$(dirname "$0")/.."

declared=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
if [ -z "$declared" ]; then
  echo "msrv: no rust-version in Cargo.toml" >&2
  exit 1
fi
host=$(rustc -vV | sed -n 's/^host: //p')

# `cargo metadata` lists each package as {"name":..,"version":..,...,"rust_version":..}: pair
# the two, keep the packages that declare one, highest first.
needs=$(cargo metadata --format-version 1 --locked --all-features --filter-platform "$host" |
  grep -o -E '"name":"[^"]+","version":"[^"]+"|"rust_version":(null|"[^"]+")' |
  paste - - |
  sed -E 's/^"name":"([^"]+)","version":"([^"]+)"\t"rust_version":"?([^"]*)"?$/\3 \1 \2/' |
  grep -v '^null ' |
  grep -v -E ' openssl-dtls(-sys)? ' |
  sort -V -r)
highest=$(head -1 <<<"$needs" | cut -d' ' -f1)
echo "msrv: declared $declared; the dependencies that need the most:"
head -3 <<<"$needs" | sed 's/^/  /'
if [ "$(printf '%s\n%s\n' "$highest" "$declared" | sort -V | tail -1)" != "$declared" ]; then
  echo "msrv: FAILED: a locked dependency needs Rust $highest, more than the declared $declared;" \
    "raise rust-version in Cargo.toml (and the README's 'Rust 1.xx+')" >&2
  exit 1
fi
for readme in README.md openssl-dtls/README.md; do
  if ! grep -q "Rust $declared+" "$readme"; then
    echo "msrv: FAILED: $readme does not say 'Rust $declared+'" >&2
    exit 1
  fi
done
echo "msrv: ok"
