#!/usr/bin/env bash
# The CPU each taskgrid process spends per short shell task: a `taskgrid
# server` (SQLite, fresh data dir), a `taskgrid worker --slots 2` and the
# worker's spawner, on an OS-chosen 127.0.0.1 port; TASKS (default 2000,
# at most the server's batch limit of 10,000) `true` tasks submitted in
# one batch, then the metrics polled (curl, every 0.1 s) until all ended.
#
#   scripts/shell-cpu.sh [BINARY] [TASKS]
#
# Prints the end-to-end rate and each process's user + system CPU per task
# (from /proc/PID/stat, before the batch and after the last task; the
# spawner's figure leaves out its children, the tasks themselves).
# Needs curl, pgrep and python3 (only for the JSON body and the sums).
set -euo pipefail
BIN=$(realpath "${1:-target/release/taskgrid}")
N=${2:-2000}
if [ "$N" -gt 10000 ]; then
  echo "at most 10000 tasks: the server takes batches of up to 10,000" >&2
  exit 2
fi
D=$(mktemp -d)
cleanup() {
  kill ${SP:-} ${W:-} ${S:-} 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT
fail() { echo "$1" >&2; tail -5 "$D"/*.log >&2 2>/dev/null || true; exit 1; }

"$BIN" server --listen 127.0.0.1:0 --data-dir "$D/data" > "$D/server.log" 2>&1 &
S=$!
URL=
for _ in $(seq 100); do
  ADDR=$(grep -o 'listening on 127\.0\.0\.1:[0-9]*' "$D/server.log" | head -1 || true)
  URL=${ADDR:+http://${ADDR#listening on }}
  [ -n "$URL" ] && curl -sf -o /dev/null "$URL/healthz" && break
  URL=
  sleep 0.1
done
[ -n "$URL" ] || fail "the server did not come up"
"$BIN" worker --server "$URL" --slots 2 > "$D/worker.log" 2>&1 &
W=$!
SP=
for _ in $(seq 100); do
  SP=$(pgrep -P "$W" -f __spawner | head -1 || true)
  [ -n "$SP" ] && curl -sf "$URL/api/v1/workers" | grep -q '"id"' && break
  SP=
  sleep 0.1
done
[ -n "$SP" ] || fail "the worker or its spawner did not come up"

# utime + stime: fields 14 and 15, counted after the command name's ')'.
cpu() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# A field of the metrics, by name.
metric() { grep -o "\"$1\":[0-9]*" <<< "$2" | head -1 | cut -d: -f2; }
python3 -c "import json; print(json.dumps({'tasks': [{'kind': {'type': 'shell', 'command': {'argv': ['true']}}}] * $N}))" > "$D/body.json"
s0=$(cpu "$S"); w0=$(cpu "$W"); p0=$(cpu "$SP"); t0=$(date +%s.%N)
curl -sf -o /dev/null -H 'Content-Type: application/json' "$URL/api/v1/tasks/batch" -d "@$D/body.json" \
  || fail "the batch was refused"
deadline=$(( $(date +%s) + 300 ))
while :; do
  m=$(curl -sf "$URL/api/v1/metrics") || fail "the server stopped answering"
  ok=$(metric succeeded "$m"); bad=$(( $(metric failed "$m") + $(metric timed_out "$m") ))
  [ $(( ok + bad )) -ge "$N" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || fail "only $ok of $N tasks succeeded within 300 s"
  sleep 0.1
done
t1=$(date +%s.%N); s1=$(cpu "$S"); w1=$(cpu "$W"); p1=$(cpu "$SP")
[ "$bad" -eq 0 ] || echo "warning: $bad of $N tasks did not succeed" >&2
python3 - "$N" "$t0" "$t1" "$s0" "$s1" "$w0" "$w1" "$p0" "$p1" "$(getconf CLK_TCK)" <<'PY'
import sys
n, t0, t1, s0, s1, w0, w1, p0, p1, hz = (float(v) for v in sys.argv[1:])
per = lambda a, b: (b - a) / hz / n * 1e6
print(f"{n / (t1 - t0):.0f} tasks/s; CPU per task: coordinator {per(s0, s1):.0f} us, "
      f"worker {per(w0, w1):.0f} us, spawner {per(p0, p1):.0f} us")
PY
