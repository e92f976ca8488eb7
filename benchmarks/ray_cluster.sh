#!/usr/bin/env bash
# A two-node Ray cluster on this machine (loopback), one CPU per node, for `compress --ray-address` and
# `benchmarks/bench_scale.py --ray-address` (issue #15):
#
#   BIN=.venv/bin benchmarks/ray_cluster.sh start [PORT]   # prints the address to give --ray-address
#   BIN=.venv/bin benchmarks/ray_cluster.sh stop  [PORT]
#
# Each node is a `ray start --block` in the background; stop sends SIGTERM to those two processes only (their
# own shutdown ends the Ray processes they started), never `ray stop`, which would end every Ray process of the
# machine. Workers import sbc_onnx from this checkout (PYTHONPATH) and run one thread each.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/.venv/bin}
CMD=${1:-}
PORT=${2:-6390}
STATE=${TMPDIR:-/tmp}/sbc-ray-cluster-$PORT
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
export RAY_USAGE_STATS_ENABLED=0
# loopback only (both nodes on 127.0.0.1), so no token authentication; a driver joining it needs the same
# setting: run it with RAY_AUTH_MODE=disabled
export RAY_AUTH_MODE=disabled

case "$CMD" in
start)
    if [ -e "$STATE" ]; then echo "a cluster on port $PORT seems to run ($STATE exists); stop it first" >&2; exit 1; fi
    mkdir -p "$STATE"
    "$BIN/ray" start --head --node-ip-address 127.0.0.1 --port "$PORT" --num-cpus 1 --include-dashboard false --block \
        >"$STATE/head.log" 2>&1 &
    echo $! >"$STATE/head.pid"
    for _ in $(seq 60); do  # the head is up when it accepts a second node
        if grep -q "Ray runtime started" "$STATE/head.log" 2>/dev/null; then break; fi
        sleep 1
    done
    "$BIN/ray" start --node-ip-address 127.0.0.1 --address "127.0.0.1:$PORT" --num-cpus 1 --block >"$STATE/node.log" 2>&1 &
    echo $! >"$STATE/node.pid"
    for _ in $(seq 60); do
        if grep -q "Ray runtime started" "$STATE/node.log" 2>/dev/null; then break; fi
        sleep 1
    done
    echo "127.0.0.1:$PORT"
    ;;
stop)
    for p in node head; do
        if [ -f "$STATE/$p.pid" ]; then kill -TERM "$(cat "$STATE/$p.pid")" 2>/dev/null || true; fi
        sleep 2
    done
    rm -rf "$STATE"
    # the address `ray start` left for a bare ray.init(): stale now (only if it is this cluster's)
    f=${TMPDIR:-/tmp}/ray/ray_current_cluster
    if [ -f "$f" ] && grep -q ":$PORT\$" "$f"; then rm -f "$f"; fi
    ;;
*)
    echo "usage: $0 start|stop [PORT]" >&2
    exit 2
    ;;
esac
