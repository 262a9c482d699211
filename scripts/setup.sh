#!/usr/bin/env bash
# Installs what building and testing openssl-dtls needs on Debian/Ubuntu, when it is missing:
# the OpenSSL headers and pkg-config (build), the interop peers (OpenSSL's and GnuTLS's
# command-line tools) and nginx with its stream and njs modules (the fleet tests). Safe to run repeatedly; does nothing when everything is present.
set -euo pipefail

need=()
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v gnutls-serv >/dev/null 2>&1 || need+=(gnutls-bin)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v perl >/dev/null 2>&1 || need+=(perl make)   # for the `vendored` OpenSSL build
# nginx's stream module with njs: the load balancer of the fleet tests (tests/fleet.rs) and of
# scripts/fleet.sh (deploy/nginx/).
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
[ -e /usr/lib/nginx/modules/ngx_stream_js_module.so ] || need+=(libnginx-mod-stream-js)

if ((${#need[@]})); then
  echo "setup: installing ${need[*]}"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (rustup) first" >&2
  exit 1
fi
"$(dirname "$0")/setup-mbedtls.sh"   # the Mbed TLS peer for the RFC 9146 (connection ID) interop tests
