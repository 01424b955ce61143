#!/usr/bin/env bash
# A two-node Ray cluster on this machine (head + one joining node), token authentication on,
# to try `bgl study run --address` / `ray job submit` against a real multi-node cluster.
#
#   cluster/local_two_nodes.sh start     # prints the address; same as no argument
#   cluster/local_two_nodes.sh status
#   cluster/local_two_nodes.sh stop      # stops these two nodes only (never `ray stop`, which
#                                        # would kill every Ray instance of this user)
#
# Settings (environment): BGL_RAY_PORT (GCS port, default 6390), BGL_RAY_DASHBOARD_PORT (8265),
# BGL_RAY_CPUS (CPUs per node, 1), BGL_RAY_TMP (temp-dir prefix, /tmp/bgl-ray: the nodes use
# /tmp/bgl-ray-h and /tmp/bgl-ray-w; keep it short, unix socket paths are limited to ~107 bytes).
# The dashboard (and with it `ray job submit`) needs ray[default]; without it the head starts
# with the dashboard off and says so.
#
# How it works (checked with Ray 2.60 on one host):
# - Each node gets its own --temp-dir (sessions, sockets and logs); the joining node does not need
#   the head's. Both register with the host's IP even when 127.0.0.1 is given: Ray maps
#   loopback to the machine's address; the GCS listens on all interfaces, so 127.0.0.1:PORT works.
# - Token auth: RAY_AUTH_MODE=token is exported to both nodes (a joining `ray start` does not turn
#   it on by itself) and every client must set it too; the token is ~/.ray/auth_token (created
#   here if missing) unless RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH is set.
# - Each node runs `ray start --block` in its own session; stop signals that session only.
# - A raylet starts at most min(cores, CPUs) worker processes at a time, so with 1 CPU per node
#   RAY_worker_maximum_startup_concurrency (default 4 here) lets a trial's actors start together.
set -euo pipefail

PORT="${BGL_RAY_PORT:-6390}"
DASHBOARD_PORT="${BGL_RAY_DASHBOARD_PORT:-8265}"
CPUS="${BGL_RAY_CPUS:-1}"
PREFIX="${BGL_RAY_TMP:-/tmp/bgl-ray}"
HEAD_DIR="${PREFIX}-h"
WORKER_DIR="${PREFIX}-w"
ADDRESS="127.0.0.1:${PORT}"

export RAY_AUTH_MODE=token
export RAY_worker_maximum_startup_concurrency="${RAY_worker_maximum_startup_concurrency:-4}"
unset RAY_ADDRESS

session_pids() {  # processes whose session id is $1
  ps -eo pid=,sid= | awk -v s="$1" '$2 == s { print $1 }'
}

alive() {  # the `ray start --block` recorded in pid file $1 still runs
  [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

start_node() {  # name, temp dir, ray start arguments...
  local name="$1" dir="$2"
  shift 2
  if alive "${dir}.pid"; then
    echo "${name}: already running (pid $(cat "${dir}.pid"))"
    return
  fi
  mkdir -p "$dir"
  setsid ray start "$@" --temp-dir="$dir" --num-cpus="$CPUS" --disable-usage-stats --block \
    >"${dir}.log" 2>&1 </dev/null &
  echo $! >"${dir}.pid"
  local waited=0
  until grep -q "Ray runtime started" "${dir}.log"; do
    if ! alive "${dir}.pid" || ((waited >= 240)); then
      echo "${name}: ray start failed (log ${dir}.log):" >&2
      tail -n 30 "${dir}.log" >&2
      exit 1
    fi
    sleep 0.5
    waited=$((waited + 1))
  done
  echo "${name}: started (pid $(cat "${dir}.pid"), temp dir ${dir}, log ${dir}.log)"
}

stop_node() {  # name, temp dir, grace seconds
  local name="$1" dir="$2" grace="$3" pid
  if ! [[ -f "${dir}.pid" ]]; then
    echo "${name}: not running"
    return
  fi
  pid="$(cat "${dir}.pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 5; i++)); do
    [[ -z "$(session_pids "$pid")" ]] && break
    sleep 0.2
  done
  local left
  left="$(session_pids "$pid")"
  if [[ -n "$left" ]]; then
    # shellcheck disable=SC2086  # a list of pids
    kill -KILL $left 2>/dev/null || true
  fi
  rm -f "${dir}.pid"
  echo "${name}: stopped"
}

dashboard_args() {  # on 127.0.0.1 when ray[default]'s packages are there, else off
  if python -c 'import sys, ray._private.utils as u; sys.exit(u.get_dashboard_dependency_error() is not None)' 2>/dev/null; then
    echo --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT"
  else
    echo --include-dashboard=false
  fi
}

ensure_token() {
  if [[ -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" && ! -s "$HOME/.ray/auth_token" ]]; then
    ray get-auth-token --generate >/dev/null  # writes ~/.ray/auth_token (prints it: hidden)
  fi
}

case "${1:-start}" in
  start)
    ensure_token
    dashboard="$(dashboard_args)"
    # shellcheck disable=SC2086  # several arguments
    start_node head "$HEAD_DIR" --head --node-ip-address=127.0.0.1 --port="$PORT" $dashboard
    start_node worker "$WORKER_DIR" --address="$ADDRESS"
    if [[ "$dashboard" == *=false ]]; then
      dashboard_note="dashboard off: pip install 'ray[default]==2.60.0' for it and ray job submit"
    else
      dashboard_note="dashboard: http://127.0.0.1:${DASHBOARD_PORT}"
    fi
    cat <<EOF

Two-node Ray cluster at ${ADDRESS}, token auth on (${dashboard_note}).
Clients need token mode (and the same token, ~/.ray/auth_token):
  export RAY_AUTH_MODE=token
  bgl study run studies/quickstart.yaml --address ${ADDRESS} \\
      --set resources.cpus_per_worker=0.5 --set search.num_samples=2
  ray job submit --address http://127.0.0.1:${DASHBOARD_PORT} --working-dir . -- \\
      bgl study run studies/quickstart.yaml --address auto --set resources.cpus_per_worker=0.5
  ray status --address ${ADDRESS}
Stop:  $0 stop
EOF
    ;;
  stop)
    # the joining node drains in a second or two; the head would wait 30 s: it gets 2
    stop_node worker "$WORKER_DIR" 10
    stop_node head "$HEAD_DIR" 2
    rm -rf "$HEAD_DIR" "$WORKER_DIR"
    ;;
  status)
    for d in "$HEAD_DIR" "$WORKER_DIR"; do
      if alive "${d}.pid"; then echo "${d}: running (pid $(cat "${d}.pid"))"; else echo "${d}: stopped"; fi
    done
    if alive "${HEAD_DIR}.pid"; then ray status --address "$ADDRESS"; fi
    ;;
  *)
    echo "usage: $0 [start|stop|status]" >&2
    exit 2
    ;;
esac
