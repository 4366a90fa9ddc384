#!/usr/bin/env bash
# The store stays flat under a steady load with retention: a coordinator
# with `--retain 1m` (SQLite), fed 30,000 no-op tasks a minute by
# `taskgrid bench` against it, for MINUTES minutes (default 30); prints,
# once a minute, the size of the database files and the tasks in them.
#
#   cargo build --release && scripts/retention-soak.sh [MINUTES] [TASKS_PER_MINUTE]
set -euo pipefail
minutes=${1:-30}
per_minute=${2:-30000}
tg=${TASKGRID:-target/release/taskgrid}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
"$tg" server --listen 127.0.0.1:$port --data-dir "$dir" --retain 1m >"$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.1; done
db=$dir/taskgrid.db
printf '%-7s %12s %12s %10s\n' minute db_bytes wal_bytes tasks
start=$(date +%s)
for m in $(seq 1 "$minutes"); do
  "$tg" bench --server "$url" --tasks "$per_minute" --kind noop >>"$dir/bench.log" 2>&1
  # Sleep out the rest of this minute, then sample.
  next=$((start + m * 60))
  now=$(date +%s)
  [ "$now" -lt "$next" ] && sleep $((next - now))
  tasks=$(sqlite3 "file:$db?mode=ro" 'SELECT COUNT(*) FROM tasks' 2>/dev/null || echo '?')
  printf '%-7s %12s %12s %10s\n' "$m" "$(stat -c %s "$db")" "$(stat -c %s "$db-wal" 2>/dev/null || echo 0)" "$tasks"
done
