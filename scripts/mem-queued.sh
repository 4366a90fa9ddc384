#!/usr/bin/env bash
# Resident memory per queued task of a `taskgrid server` (SQLite, no
# worker), measured from outside: RSS before, then after N tasks submitted
# through the HTTP API in batches of 5,000 (BENCHMARKS.md, "Memory per
# queued task").
#
#   scripts/mem-queued.sh [BINARY] [N] [TASK_JSON]
#
# e.g. `scripts/mem-queued.sh target/release/taskgrid 1000000
# '{"kind":{"type":"handler","name":"noop"}}'`.
set -euo pipefail
BIN=$(readlink -f "${1:-target/release/taskgrid}")
N=${2:-1000000}
TASK=${3:-'{"kind":{"type":"shell","command":{"argv":["true"]}}}'}
DIR=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$DIR"' EXIT
PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
"$BIN" server --data-dir "$DIR/data" --listen "127.0.0.1:$PORT" > "$DIR/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 0.1
done
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
BEFORE=$(rss)
python3 - "http://127.0.0.1:$PORT" "$N" "$TASK" <<'PY'
import json, sys, urllib.request
url, n, task = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
body = json.dumps({"tasks": [task] * 5000}).encode()
for _ in range(n // 5000):
    req = urllib.request.Request(url + "/api/v1/tasks/batch", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        r.read()
PY
sleep 5  # let the allocator settle before reading RSS (not a test: a measurement)
AFTER=$(rss)
python3 -c "import sys; b, a, n = map(int, sys.argv[1:]); print(f'rss {b} KiB -> {a} KiB with {n:,} queued: {(a - b) * 1024 / n:,.0f} bytes per task')" "$BEFORE" "$AFTER" "$N"
