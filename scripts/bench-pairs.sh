#!/usr/bin/env bash
# Two builds side by side on any `taskgrid bench` arguments:
#   scripts/bench-pairs.sh ROUNDS BASE NEW [BENCH ARGS...]
# Each round runs `BIN bench --coordinator-process --json BENCH ARGS` once
# with each binary, the order alternating from round to round, and prints
# one line per run: end-to-end tasks/s, the client's submit → done p50 and
# p99 and submit → answer p50 (with --latency), and the coordinator
# process's CPU seconds (throughput runs).
set -euo pipefail
rounds=${1:?rounds}; base=$(readlink -f "${2:?base binary}"); new=$(readlink -f "${3:?new binary}"); shift 3
err=$(mktemp)
trap 'rm -f "$err"' EXIT
for r in $(seq 1 "$rounds"); do
    if (( r % 2 )); then order=("$base" "$new"); else order=("$new" "$base"); fi
    for bin in "${order[@]}"; do
        # Each bench makes (and removes) its own data directory.
        if ! out=$("$bin" bench --coordinator-process --json "$@" 2>"$err" | tail -1) || [[ -z $out ]]; then
            echo "$bin bench failed:" >&2; cat "$err" >&2; exit 1
        fi
        python3 - "$r" "$bin" "$out" <<'PY'
import json, sys
r, b, d = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
done = d.get("client_submit_to_done") or {}
ack = d.get("client_submit_ack") or {}
coord = d.get("coordinator")
cpu = coord.get("cpu_secs") if isinstance(coord, dict) else None
print(f"round {r} {b}: {d.get('e2e_per_sec', 0):,.0f} tasks/s"
      f"; client p50 {done.get('p50_us')} p99 {done.get('p99_us')} us, answer p50 {ack.get('p50_us')} us"
      f"; coordinator CPU {cpu} s")
PY
    done
done
