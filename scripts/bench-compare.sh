#!/usr/bin/env bash
# Interleaved no-op throughput and light-load latency of several builds:
#   scripts/bench-compare.sh ROUNDS BINARY...
# Each round runs `taskgrid bench --tasks 100000` (coordinator in process,
# SQLite, one in-process worker) and `taskgrid bench --latency` once per
# binary, alternating, and prints one line per run (with the process's
# CPU seconds for the throughput run: coordinator, worker and clients).
set -euo pipefail
rounds=${1:?rounds}; shift
(( $# > 0 )) || { echo "usage: $0 ROUNDS BINARY..." >&2; exit 2; }
cd "$(mktemp -d)"
for r in $(seq 1 "$rounds"); do
    for bin in "$@"; do
        t=$("$bin" bench --tasks 100000 --json 2>/dev/null | tail -1)
        l=$("$bin" bench --latency --json 2>/dev/null | tail -1)
        python3 - "$r" "$bin" "$t" "$l" <<'PY'
import json, sys
r, b, t, l = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
lat = l.get("client_submit_to_done") or {}
p50 = lat.get("p50_us", 0) / 1000
p99 = lat.get("p99_us", 0) / 1000
cpu = (t.get("coordinator") or {}).get("cpu_secs", 0)
print(f"round {r} {b}: {t['e2e_per_sec']:,.0f} tasks/s, {cpu:.2f} CPU s; latency p50 {p50:.2f} ms p99 {p99:.2f} ms")
PY
    done
done
