#!/usr/bin/env bash
# The store stays flat under a steady load with retention: a coordinator
# with `--retain 1m` (SQLite), fed 30,000 no-op tasks a minute by
# `taskgrid bench` against it, for MINUTES minutes (default 30); prints,
# once a minute, the size of the database files and the tasks in them.
# With PG=1, the store is a fresh database on the local PostgreSQL
# (postgres@127.0.0.1:5432), and the size that of its tables and indexes;
# with VACUUM=1 as well, the script runs VACUUM on the task tables once a
# minute, as autovacuum would (for a server where autovacuum is off).
#
#   cargo build --release && [PG=1] scripts/retention-soak.sh [MINUTES] [TASKS_PER_MINUTE]
set -euo pipefail
minutes=${1:-30}
per_minute=${2:-30000}
tg=${TASKGRID:-target/release/taskgrid}
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
store=()
pg="psql -qAt -h 127.0.0.1 -U postgres"
if [ -n "${PG:-}" ]; then
  db_name=tg_soak_$$
  $pg -c "CREATE DATABASE $db_name" >/dev/null
  store=(--store "postgres://postgres@127.0.0.1:5432/$db_name")
fi
"$tg" server --listen 127.0.0.1:$port --data-dir "$dir" --retain 1m "${store[@]}" >"$dir/server.log" 2>&1 &
server=$!
cleanup() {
  kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"
  [ -n "${PG:-}" ] && $pg -c "DROP DATABASE IF EXISTS $db_name" >/dev/null
  return 0
}
trap cleanup EXIT
# Wait (up to 10 s) for it to answer.
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
  if [ -n "${PG:-}" ]; then
    if [ -n "${VACUUM:-}" ]; then
      $pg -d "$db_name" -c "VACUUM tasks, task_tags, attempts, output"
    fi
    size=$($pg -d "$db_name" -c "SELECT sum(pg_total_relation_size(c)) FROM unnest(ARRAY['tasks','task_tags','attempts','output']) AS c")
    tasks=$($pg -d "$db_name" -c 'SELECT count(*) FROM tasks')
    printf '%-7s %12s %12s %10s\n' "$m" "$size" - "$tasks"
  else
    tasks=$(sqlite3 "file:$db?mode=ro" 'SELECT COUNT(*) FROM tasks' 2>/dev/null || echo '?')
    printf '%-7s %12s %12s %10s\n' "$m" "$(stat -c %s "$db")" "$(stat -c %s "$db-wal" 2>/dev/null || echo 0)" "$tasks"
  fi
done
