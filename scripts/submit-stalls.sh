#!/usr/bin/env bash
# The slowest submits while a fresh `taskgrid server` (SQLite, no worker)
# fills up: 1,000,000 no-op tasks through `POST /api/v1/tasks/batch` in
# batches of 5,000, each batch timed by the client (BENCHMARKS.md, "The
# task table in 64 KiB chunks").
#
#   scripts/submit-stalls.sh [BINARY]
#
# Prints the median, p90 and slowest batch latency, and the eight slowest
# batches with their index (batch i holds tasks 5000*i .. 5000*(i+1)).
set -euo pipefail
BIN=$(readlink -f "${1:-target/release/taskgrid}")
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
python3 - "http://127.0.0.1:$PORT" <<'PY'
import json, statistics, sys, time, urllib.request
url = sys.argv[1]
body = json.dumps({"tasks": [{"kind": {"type": "handler", "name": "noop"}}] * 5000}).encode()
lat = []
for _ in range(200):
    req = urllib.request.Request(url + "/api/v1/tasks/batch", data=body,
                                 headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        r.read()
    lat.append((time.perf_counter() - t) * 1000)
s = sorted(lat)
top = sorted(range(len(lat)), key=lambda i: -lat[i])[:8]
print(f"median {statistics.median(lat):.1f} ms, p90 {s[int(len(s) * 0.9) - 1]:.1f} ms, "
      f"max {s[-1]:.1f} ms; slowest batches {[(i, round(lat[i])) for i in top]}")
PY
