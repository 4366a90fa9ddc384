#!/usr/bin/env bash
# The CPU each taskgrid process spends per short shell task: a `taskgrid
# server` (SQLite, fresh data dir), a `taskgrid worker --slots 2` and the
# worker's spawner, on OS-chosen 127.0.0.1 ports; TASKS (default 2000)
# `true` tasks submitted in one batch, then the metrics polled until all
# succeeded.
#
#   scripts/shell-cpu.sh [BINARY] [TASKS]
#
# Prints the end-to-end rate and each process's user + system CPU per task
# (from /proc/PID/stat, before the batch and after the last task; the
# spawner's figure leaves out its children, the tasks themselves).
set -euo pipefail
BIN=$(realpath "${1:-target/release/taskgrid}")
N=${2:-2000}
D=$(mktemp -d)
cleanup() { kill "${W:-}" "${S:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT

"$BIN" server --listen 127.0.0.1:0 --data-dir "$D/data" > "$D/server.log" 2>&1 &
S=$!
URL=
for _ in $(seq 100); do
  ADDR=$(grep -o 'listening on 127\.0\.0\.1:[0-9]*' "$D/server.log" | head -1 || true)
  URL=${ADDR:+http://${ADDR#listening on }}
  [ -n "$URL" ] && curl -sf -o /dev/null "$URL/healthz" && break
  sleep 0.1
done
[ -n "$URL" ] || { echo "the server did not come up:" >&2; cat "$D/server.log" >&2; exit 1; }
"$BIN" worker --server "$URL" --slots 2 > "$D/worker.log" 2>&1 &
W=$!
SP=
for _ in $(seq 100); do
  SP=$(pgrep -P "$W" -f __spawner || true)
  [ -n "$SP" ] && curl -sf "$URL/api/v1/workers" | grep -q '"id"' && break
  sleep 0.1
done
[ -n "$SP" ] || { echo "the worker or its spawner did not come up" >&2; exit 1; }

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
python3 -c "import json; print(json.dumps({'tasks': [{'kind': {'type': 'shell', 'command': {'argv': ['true']}}}] * $N}))" > "$D/body.json"
s0=$(cpu "$S"); w0=$(cpu "$W"); p0=$(cpu "$SP"); t0=$(date +%s.%N)
curl -sf -o /dev/null -H 'Content-Type: application/json' "$URL/api/v1/tasks/batch" -d "@$D/body.json"
until [ "$(curl -sf "$URL/api/v1/metrics" | python3 -c 'import json, sys; print(json.load(sys.stdin)["succeeded"])')" -ge "$N" ]; do
  sleep 0.05
done
t1=$(date +%s.%N); s1=$(cpu "$S"); w1=$(cpu "$W"); p1=$(cpu "$SP")
python3 - "$N" "$t0" "$t1" "$s0" "$s1" "$w0" "$w1" "$p0" "$p1" "$(getconf CLK_TCK)" <<'PY'
import sys
n, t0, t1, s0, s1, w0, w1, p0, p1, hz = (float(v) for v in sys.argv[1:])
per = lambda a, b: (b - a) / hz / n * 1e6
print(f"{n / (t1 - t0):.0f} tasks/s; CPU per task: coordinator {per(s0, s1):.0f} us, "
      f"worker {per(w0, w1):.0f} us, spawner {per(p0, p1):.0f} us")
PY
