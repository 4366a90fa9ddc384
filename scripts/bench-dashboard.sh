#!/usr/bin/env bash
# Coordinator throughput with and without the web dashboard open, in
# interleaved pairs (BENCHMARKS.md, "A dashboard open while tasks flow").
#
#   cargo build --release --bin taskgrid
#   scripts/bench-dashboard.sh [PAIRS] [TASKS]
#
# Starts one `taskgrid server` on an OS-chosen loopback port with a fresh
# data directory, then for each pair runs `taskgrid bench --server` alone,
# and again with headless Chromium showing the dashboard's overview.
# Prints one line per run: condition, end-to-end tasks/s, coordinator CPU s.
set -euo pipefail
PAIRS=${1:-6}
TASKS=${2:-20000}
BIN=${TASKGRID:-target/release/taskgrid}
CHROMIUM=${CHROMIUM:-chromium}
DIR=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; pkill -f "user-data-dir=$DIR/profile" || true; rm -rf "$DIR"' EXIT

"$BIN" server --listen 127.0.0.1:0 --data-dir "$DIR/data" > "$DIR/server.out" 2>&1 &
SERVER=$!
until grep -q "listening on" "$DIR/server.out"; do sleep 0.1; done
URL="http://$(head -1 "$DIR/server.out" | awk '{print $5}')"

run() {
  "$BIN" bench --server "$URL" --server-pid "$SERVER" --tasks "$TASKS" --json 2>/dev/null |
    tail -1 |
    python3 -c "import json,sys; d=json.load(sys.stdin); print('$1', round(d['e2e_per_sec']), round(d['coordinator']['cpu_secs'], 2))"
}

for _ in $(seq "$PAIRS"); do
  run alone
  "$CHROMIUM" --headless=new --no-sandbox --disable-gpu --remote-debugging-port=0 \
    --user-data-dir="$DIR/profile" "$URL/" > /dev/null 2>&1 &
  sleep 4 # the page loads and connects
  run dashboard
  pkill -f "user-data-dir=$DIR/profile" || true
  sleep 1
done
