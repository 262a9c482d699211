#!/usr/bin/env bash
# A local fleet to try on loopback: nginx (stream module + njs, the Connection-ID-aware route
# of deploy/nginx/) on 127.0.0.1:5684 in front of two `psk_server` nodes (127.0.0.1:5701 and
# :5702) that share one fleet secret, issue Connection IDs carrying their node index, and save
# their connections for a graceful restart. Installs what is missing first (scripts/setup.sh:
# Debian's nginx-light, libnginx-mod-stream, libnginx-mod-stream-js).
#
#   scripts/fleet.sh            # start the fleet in the foreground; Ctrl-C stops it
#   scripts/fleet.sh restart N  # (another terminal) rolling restart of node N: a successor
#                               # binds next to it, the node saves and exits, the successor
#                               # restores its connections; no device notices
#   scripts/fleet.sh demo       # start, talk through it with a CID device that sleeps longer
#                               # than nginx remembers it, restart both nodes under it, stop
#
# Devices, in another terminal while the fleet runs:
#   target/debug/examples/psk_client --connect 127.0.0.1:5684 --cid --message hi \
#       --count 10 --interval-ms 3000
# (nginx forgets a device 2 s after its last datagram here; with --cid it keeps its connection
# anyway, without --cid its second message goes unanswered).
#
# Files: target/fleet/ (nginx.conf, logs, the fleet secret, node states, pids, node output).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
run=$root/target/fleet
target=${CARGO_TARGET_DIR:-$root/target}
examples=$target/debug/examples
lb=127.0.0.1:5684
nodes=(127.0.0.1:5701 127.0.0.1:5702)

node_start() { # index [extra flags...]: starts a node process, its output in a file of its own
  local i=$1
  shift
  out="$run/node$i.$(date +%s%N).out"
  "$examples/psk_server" --listen "${nodes[$i]}" --cid-len 8 --node-id "$i" \
    --fleet-secret-file "$run/fleet-secret" --state-file "$run/node$i.state" "$@" \
    >"$out" 2>>"$run/node$i.log" &
  pid=$!
}

wait_line() { # file text seconds
  local deadline=$((SECONDS + $3))
  until grep -q "$2" "$1" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      echo "fleet: no '$2' in $1 after $3 s" >&2
      return 1
    fi
    sleep 0.1
  done
}

start() {
  scripts/setup.sh
  cargo build -q -p openssl-dtls --examples
  mkdir -p "$run"
  rm -f "$run"/*.out "$run"/*.log "$run"/*.pid "$run"/*.state
  deploy/nginx/fleet-conf.sh --prefix "$run" --proxy-timeout 2s \
    --fleet "psk=$lb=$(IFS=,; echo "${nodes[*]}")" >"$run/nginx.conf"
  nginx -p "$run" -c "$run/nginx.conf" &
  echo $! >"$run/nginx.pid"
  for i in "${!nodes[@]}"; do
    node_start "$i"
    echo "$pid" >"$run/node$i.pid"
    wait_line "$out" "listening on" 10
  done
  echo "fleet: nginx on $lb -> nodes ${nodes[*]} (files in $run)"
}

stop() {
  for f in "$run"/node*.pid "$run"/nginx.pid; do
    [ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}

restart() { # index
  local i=$1 old
  old=$(cat "$run/node$i.pid")
  node_start "$i" --handover 30
  wait_line "$out" "taking over" 10
  kill -TERM "$old"
  wait_line "$out" "restored " 30
  echo "fleet: node $i: $(grep '^restored ' "$out") (pid $old -> $pid)"
  echo "$pid" >"$run/node$i.pid"
}

case "${1:-start}" in
  start)
    trap stop EXIT INT TERM
    start
    echo "fleet: running; Ctrl-C stops it"
    wait
    ;;
  restart)
    restart "${2:?usage: scripts/fleet.sh restart N}"
    ;;
  demo)
    trap stop EXIT
    start
    "$examples/psk_client" --connect "$lb" --cid --message hello --count 6 --interval-ms 2500 &
    client=$!
    sleep 4
    restart 0
    restart 1
    wait "$client"
    echo "fleet: the device got all 6 echoes through nginx, across nginx forgetting it and"
    echo "fleet: both nodes restarting. What the nodes printed:"
    for f in "$run"/node*.out; do
      echo "  $(basename "$f"):"
      grep -E "^(handshake completed|address changed|saved|restored|handshakes completed)" \
        "$f" | sed 's/^/    /'
    done
    ;;
  *)
    sed -n '2,22p' "$0"
    exit 2
    ;;
esac
