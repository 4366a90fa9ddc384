#!/bin/bash
# Interleaved PostgreSQL figures of two builds: ROUNDS rounds, the order
# reversed every round, a fresh database each run, each after a
# CHECKPOINT (so that every run pays the same full-page writes).
#   scripts/bench-postgres-compare.sh ROUNDS OLD_BINARY NEW_BINARY
# Each run: `taskgrid bench --tasks $TASKS (default 60000) --store
# postgres://… --json`, then `taskgrid bench --latency --store … --json`.
# Prints no-op tasks/s, the CPU of the bench process (coordinator, worker
# and clients) and of PostgreSQL's backends per task, and latency p50/p99.
# PostgreSQL's CPU is what its exited children used during the throughput
# run (the bench's connections end with it; autovacuum counts too): run it
# on the machine PostgreSQL runs on, nothing else using that server.
set -u
rounds=$1; old=$(realpath "$2"); new=$(realpath "$3")
url=postgres://postgres@127.0.0.1:5432/tg_bench
tasks=${TASKS:-60000}
cd "$(mktemp -d)"
fresh() {
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS tg_bench WITH (FORCE)" \
    -c "CREATE DATABASE tg_bench" -c "CHECKPOINT" 2>/dev/null
}
postmaster_children_cpu() { awk '{print $16 + $17}' "/proc/$(pgrep -xo postgres)/stat"; }
one() {
  fresh
  local before t after l
  before=$(postmaster_children_cpu)
  t=$("$1" bench --tasks "$tasks" --store "$url" --json 2>/dev/null | tail -1)
  # The bench's backends count once they have exited.
  for _ in $(seq 1 50); do
    [ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atc \
      "SELECT count(*) FROM pg_stat_activity WHERE datname = 'tg_bench'")" = 0 ] && break
    sleep 0.1
  done
  after=$(postmaster_children_cpu)
  fresh
  l=$("$1" bench --latency --store "$url" --json 2>/dev/null | tail -1)
  python3 - "$2" "$t" "$l" "$before" "$after" <<'PY'
import json, os, sys
name, t, l, before, after = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), *map(int, sys.argv[4:])
hz = os.sysconf("SC_CLK_TCK")
n = t["tasks"]
x = l.get("client_submit_to_done") or {}
print(f'{name}: {t["e2e_per_sec"]:,.0f} tasks/s; CPU per task: bench {t["coordinator"]["cpu_secs"] / n * 1e6:.0f} us, '
      f'postgres {(after - before) / hz / n * 1e6:.0f} us; latency p50 {x.get("p50_us", 0) / 1000:.2f} ms, '
      f'p99 {x.get("p99_us", 0) / 1000:.2f} ms')
PY
}
for r in $(seq 1 "$rounds"); do
  echo "round $r"
  if [ $((r % 2)) = 1 ]; then one "$old" old; one "$new" new; else one "$new" new; one "$old" old; fi
done
psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS tg_bench WITH (FORCE)" 2>/dev/null
