#!/usr/bin/env bash
# Writes an nginx configuration (to stdout) that balances DTLS fleets of openssl-dtls nodes
# over UDP with Connection-ID-aware routing (dtls_route.js, next to this script):
# `tls12_cid` records go to the node whose index their CID carries; every other datagram is
# hashed on the client's address and port (consistent hashing).
#
#   deploy/nginx/fleet-conf.sh [--prefix DIR] [--proxy-timeout 60s] [--standalone] \
#       --fleet NAME=LISTEN=NODE0,NODE1[,...] [--fleet ...] > nginx.conf
#
#   NAME     a name for the fleet (letters, digits, _), unique in the configuration
#   LISTEN   the address nginx receives the devices' datagrams on, e.g. 0.0.0.0:5684
#   NODEi    the address of node i (the node started with --node-id i), e.g. 10.0.0.5:5684
#
# --standalone (default) writes a whole nginx.conf for `nginx -p DIR -c FILE` (modules loaded
# from Debian's paths, pid and logs under DIR, in the foreground); without it, only the
# `stream { ... }` block, for an nginx whose modules are loaded already (Debian:
# libnginx-mod-stream and libnginx-mod-stream-js installed).
# --single-process: no master process (`master_process off`): one process that a plain kill
# stops (for tests; not for production).
# --worker-connections N (default 4096): nginx's limit of connections per worker; each UDP
# session takes two (client and upstream), so sessions within one proxy_timeout <= N/2.
# --proxy-timeout: how long nginx keeps a UDP session (a device's address and port → node)
# without datagrams; after it the device's next datagram starts a new session, routed again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=/tmp/dtls-fleet
timeout=60s
standalone=1
single=0
connections=4096
fleets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --proxy-timeout) timeout=$2; shift 2 ;;
    --standalone) standalone=1; shift ;;
    --stream-only) standalone=0; shift ;;
    --single-process) single=1; shift ;;
    --worker-connections) connections=$2; shift 2 ;;
    --fleet) fleets+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "fleet-conf.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ ${#fleets[@]} -eq 0 ]; then
  echo "fleet-conf.sh: at least one --fleet NAME=LISTEN=NODE0,NODE1 is needed" >&2
  exit 2
fi
if [ "$standalone" = 1 ]; then
  cat <<CONF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
load_module /usr/lib/nginx/modules/ngx_stream_js_module.so;
daemon off;
$([ "$single" = 1 ] && echo "master_process off;")
worker_processes 1;
worker_rlimit_nofile $((2 * connections + 64));
pid $prefix/nginx.pid;
error_log $prefix/error.log info;
events { worker_connections $connections; }
CONF
fi
echo "stream {"
echo "    js_import dtls_route from $here/dtls_route.js;"
echo "    # The node index a tls12_cid record's CID carries; empty for every other datagram."
echo "    js_var \$dtls_node \"\";"
for fleet in "${fleets[@]}"; do
  IFS='=' read -r name listen nodes <<<"$fleet"
  if [ -z "$name" ] || [ -z "$listen" ] || [ -z "$nodes" ]; then
    echo "fleet-conf.sh: --fleet wants NAME=LISTEN=NODE0,NODE1: $fleet" >&2
    exit 2
  fi
  IFS=',' read -r -a addrs <<<"$nodes"
  echo ""
  echo "    # Fleet $name: ${#addrs[@]} node(s) behind $listen."
  echo "    map \$dtls_node \$${name}_upstream {"
  for i in "${!addrs[@]}"; do
    echo "        \"$i\" ${name}_node$i;"
  done
  echo "        default ${name}_by_address;"
  echo "    }"
  for i in "${!addrs[@]}"; do
    echo "    upstream ${name}_node$i { server ${addrs[$i]}; }"
  done
  echo "    upstream ${name}_by_address {"
  echo "        hash \$remote_addr\$remote_port consistent;"
  for i in "${!addrs[@]}"; do
    echo "        server ${addrs[$i]} max_fails=1 fail_timeout=10s;"
  done
  echo "    }"
  echo "    server {"
  echo "        listen $listen udp;"
  echo "        js_preread dtls_route.preread;"
  echo "        proxy_pass \$${name}_upstream;"
  echo "        proxy_timeout $timeout;"
  echo "    }"
done
echo "}"
