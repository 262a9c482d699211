#!/usr/bin/env bash
# Short, bounded runs of the cargo-fuzz targets in fuzz/ (libFuzzer with AddressSanitizer), from a
# fresh machine: installs what is missing (the build prerequisites via scripts/setup.sh, a C++
# compiler for libFuzzer, and cargo-fuzz from crates.io into the project's target/tools/, not
# into ~/.cargo; CARGO_TOOLS_ROOT picks another folder), builds the targets, then fuzzes each one for
# FUZZ_SECONDS (default 20) starting from the checked-in seeds in fuzz/corpus/<target>/seed-*.
# Exits non-zero if any target finds a crash, a panic, a leak or a timeout; the input that did it
# is in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                          # every target, 20 s each (about 3 min with the build)
#   scripts/fuzz.sh server_endpoint          # one target
#   FUZZ_SECONDS=3600 scripts/fuzz.sh        # a long run: an hour per target
#
# Targets: record_preparser (wire::classify), cookie_verifier (the cookie HMACs), server_endpoint
# (arbitrary (peer, datagram) sequences mixed with a real client's handshake: no amplification
# before a cookie, sessions within the limits), server_session (arbitrary datagrams at a server
# session mid-handshake and established), cid_record_parser (wire::parse_cid with a CID length
# from the first byte, every record view checked; the same datagram at a server Endpoint with
# 6-byte CIDs: nothing held, nothing amplified, every drop counted), cid_transcode (the record
# layer's RFC 9146 paths under fixed keys: tls12_cid seal/open, transcode_outbound and
# transcode_inbound on sealed and arbitrary records; round trips hold and whatever authenticates
# is exactly what the sealer makes). Half the suite choices run with compact connections
# on, so the compact record layer and its hand-off meet the same inputs.
#
# Longer runs: new inputs go to a working corpus (FUZZ_CORPUS, default fuzz/target/corpus-work,
# kept between runs and never checked in), so repeated or long runs pick up where the last left
# off. For hours-long runs use several processes and keep the working corpus:
#
#   FUZZ_SECONDS=14400 FUZZ_ARGS="-jobs=2 -workers=2" scripts/fuzz.sh server_endpoint
#
# Reproduce and minimise a finding (the stable toolchain needs RUSTC_BOOTSTRAP=1 for the
# sanitizer flags; a nightly toolchain works without it):
#
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run server_endpoint artifacts/server_endpoint/crash-...
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz tmin server_endpoint artifacts/server_endpoint/crash-...
#
# and shrink a grown working corpus with `cargo fuzz cmin <target> <dir>`. The seeds themselves
# are written by `cd fuzz && cargo run --example seed_corpus`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${FUZZ_SECONDS:-20}
work=${FUZZ_CORPUS:-$root/fuzz/target/corpus-work}
extra=${FUZZ_ARGS:-}
all_targets=(record_preparser cookie_verifier server_endpoint server_session cid_record_parser
  cid_transcode)
if (($#)); then targets=("$@"); else targets=("${all_targets[@]}"); fi

scripts/setup.sh
if ! command -v c++ >/dev/null 2>&1; then
  echo "fuzz: installing a C++ compiler (libFuzzer is C++)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends g++
fi
# cargo-fuzz: one already on PATH, else the project's own copy (installed on first use).
tools=${CARGO_TOOLS_ROOT:-$root/target/tools}
export PATH="$PATH:$tools/bin"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz into $tools (cargo install --root; remove the folder to undo)"
  cargo install cargo-fuzz --locked --root "$tools"
fi

# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, ...). The machine has one stable
# toolchain: RUSTC_BOOTSTRAP=1 lets it accept them. Harmless on nightly.
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

cd fuzz
echo "== fuzz: building ${targets[*]}"
for target in "${targets[@]}"; do
  cargo fuzz build "$target"
done

failed=()
for target in "${targets[@]}"; do
  case "$target" in
    server_endpoint | server_session | cid_transcode) max_len=8192 ;;
    *) max_len=2048 ;;
  esac
  mkdir -p "$work/$target" "artifacts/$target"
  echo "== fuzz: $target for ${seconds}s"
  # The working corpus comes first: libFuzzer writes new inputs only to the first directory,
  # so the checked-in seeds stay as they are.
  set +e
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  cargo fuzz run "$target" "$work/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=20 -rss_limit_mb=4096 \
    -print_final_stats=1 $extra >"$work/$target.log" 2>&1
  status=$?
  set -e
  grep -E "^(#[0-9]+[[:space:]]+(INITED|DONE)|Done |==[0-9]+==ERROR|SUMMARY|thread '.*panicked)" \
    "$work/$target.log" || true
  if [ "$status" != 0 ]; then
    tail -40 "$work/$target.log"
    echo "fuzz: $target FAILED (log: $work/$target.log, input in fuzz/artifacts/$target/)"
    failed+=("$target")
  fi
done

if ((${#failed[@]})); then
  echo "== fuzz: failures in ${failed[*]}"
  exit 1
fi
echo "== fuzz: ${targets[*]}: no findings in ${seconds}s each"
