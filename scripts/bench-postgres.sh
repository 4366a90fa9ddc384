#!/bin/bash
# Interleaved (TASKGRID=BINARY): SQLite vs PostgreSQL no-op throughput and latency, a fresh database each PostgreSQL run.
set -u
bin=$(realpath "${TASKGRID:-target/release/taskgrid}")
cd "$(mktemp -d)"
for r in 1 2 3; do
  t=$("$bin" bench --tasks 20000 --json 2>/dev/null | tail -1)
  l=$("$bin" bench --latency --json 2>/dev/null | tail -1)
  echo "round $r sqlite: $(echo "$t" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["e2e_per_sec"]))') tasks/s; latency $(echo "$l" | python3 -c 'import json,sys; d=json.load(sys.stdin); x=d.get("client_submit_to_done") or {}; print(x.get("p50_us",0)/1000, x.get("p99_us",0)/1000)')"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS tg_bench WITH (FORCE)" -c "CREATE DATABASE tg_bench"
  t=$("$bin" bench --tasks 20000 --store postgres://postgres@127.0.0.1:5432/tg_bench --json 2>/dev/null | tail -1)
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS tg_bench WITH (FORCE)" -c "CREATE DATABASE tg_bench"
  l=$("$bin" bench --latency --store postgres://postgres@127.0.0.1:5432/tg_bench --json 2>/dev/null | tail -1)
  echo "round $r postgres: $(echo "$t" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["e2e_per_sec"]))') tasks/s; latency $(echo "$l" | python3 -c 'import json,sys; d=json.load(sys.stdin); x=d.get("client_submit_to_done") or {}; print(x.get("p50_us",0)/1000, x.get("p99_us",0)/1000)')"
done
psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS tg_bench WITH (FORCE)"
