#!/usr/bin/env bash
# A fresh `taskgrid server` (SQLite, no worker) filled with N tasks
# submitted through the HTTP API in batches of 5,000, measured from
# outside:
# - the slowest submits: each batch is timed by the client, and the
#   median, p90 and slowest batch are printed with the eight slowest
#   batches and their index (batch i holds tasks 5000*i .. 5000*(i+1))
#   (BENCHMARKS.md, "The task table in 64 KiB chunks");
# - resident memory per queued task: RSS before, and 5 s after the last
#   batch (BENCHMARKS.md, "Memory per queued task").
#
#   scripts/mem-queued.sh [BINARY] [N] [TASK_JSON]
#
# e.g. `scripts/mem-queued.sh target/release/taskgrid 1000000
# '{"kind":{"type":"handler","name":"noop"}}'` (a shell `true` by default).
set -euo pipefail
BIN=$(readlink -f "${1:-target/release/taskgrid}")
N=${2:-1000000}
TASK=${3:-'{"kind":{"type":"shell","command":{"argv":["true"]}}}'}
DIR=$(mktemp -d)
PID=
trap 'if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi; rm -rf "$DIR"' EXIT
PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
"$BIN" server --data-dir "$DIR/data" --listen "127.0.0.1:$PORT" > "$DIR/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null || { echo "the server is not ready:" >&2; cat "$DIR/server.log" >&2; exit 1; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
BEFORE=$(rss)
python3 - "http://127.0.0.1:$PORT" "$N" "$TASK" <<'PY'
import json, statistics, sys, time, urllib.request
url, n, task = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
body = json.dumps({"tasks": [task] * 5000}).encode()
lat = []
for _ in range(n // 5000):
    req = urllib.request.Request(url + "/api/v1/tasks/batch", data=body,
                                 headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        r.read()
    lat.append((time.perf_counter() - t) * 1000)
if lat:
    s = sorted(lat)
    top = sorted(range(len(lat)), key=lambda i: -lat[i])[:8]
    print(f"batches: median {statistics.median(lat):.1f} ms, p90 {s[max(int(len(s) * 0.9) - 1, 0)]:.1f} ms, "
          f"max {s[-1]:.1f} ms; slowest {[(i, round(lat[i])) for i in top]}")
PY
sleep 5  # let the allocator settle before reading RSS (not a test: a measurement)
AFTER=$(rss)
python3 -c "import sys; b, a, n = map(int, sys.argv[1:]); print(f'rss {b} KiB -> {a} KiB with {n:,} queued: {(a - b) * 1024 / n:,.0f} bytes per task')" "$BEFORE" "$AFTER" "$N"
