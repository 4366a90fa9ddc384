#!/usr/bin/env bash
# Coordinator throughput while K clients follow the full event stream
# (`GET /api/v1/events`), for several builds in interleaved rounds
# (BENCHMARKS.md, "Events serialized once for every subscriber").
#
#   [BENCH_ARGS="--batch 1 --clients 16"] scripts/bench-watchers.sh ROUNDS WATCHERS TASKS BINARY...
#
# Each run starts a fresh `taskgrid server` (SQLite, an OS-chosen loopback
# port), connects WATCHERS `curl -sN` followers of /api/v1/events, waits
# until the server holds all of their connections, runs `taskgrid bench
# --server URL --server-pid PID --tasks TASKS --json $BENCH_ARGS`
# (in-process workers and clients), and then counts what each follower
# received (a follower that falls behind the replay buffer is sent
# `reset` and misses events, which also spares the coordinator their
# cost: compare throughput only where no follower missed any). The order of
# the binaries is reversed every round. Needs curl, ss and python3. One
# line per run:
#   BINARY  end-to-end tasks/s  coordinator CPU s  events received per follower (min)  resets (sum)
set -euo pipefail
ROUNDS=${1:?rounds}
WATCHERS=${2:?watchers}
TASKS=${3:?tasks}
shift 3
BINS=("$@")
[ ${#BINS[@]} -gt 0 ] || { echo "name at least one binary" >&2; exit 2; }
DIR=$(mktemp -d)
SERVER=
FOLLOWERS=()
cleanup() {
  if [ ${#FOLLOWERS[@]} -gt 0 ]; then kill "${FOLLOWERS[@]}" 2>/dev/null || true; fi
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; fi
  rm -rf "$DIR"
}
trap cleanup EXIT

one() {
  local bin=$1 data="$DIR/data.$RANDOM"
  rm -f "$DIR/server.out"
  "$bin" server --listen 127.0.0.1:0 --data-dir "$data" > "$DIR/server.out" 2>&1 &
  SERVER=$!
  local waited=0
  until grep -qs "listening on" "$DIR/server.out"; do
    sleep 0.1
    waited=$((waited + 1))
    if [ $waited -gt 300 ] || ! kill -0 "$SERVER" 2>/dev/null; then
      echo "the server did not start:" >&2
      cat "$DIR/server.out" >&2
      exit 1
    fi
  done
  local addr
  addr=$(grep -m1 "listening on" "$DIR/server.out" | awk '{print $5}')
  local port=${addr##*:}
  FOLLOWERS=()
  for w in $(seq "$WATCHERS"); do
    curl -sN "http://$addr/api/v1/events" > "$DIR/w$w.out" &
    FOLLOWERS+=($!)
  done
  # Every follower's connection accepted (established on the server's
  # side; that it has subscribed is seen after the run, in the events it
  # received).
  waited=0
  until [ "$(ss -Htn state established "( sport = :$port )" | wc -l)" -ge "$WATCHERS" ]; do
    sleep 0.1
    waited=$((waited + 1))
    [ $waited -le 100 ] || { echo "the followers did not connect" >&2; exit 1; }
  done
  local line
  # shellcheck disable=SC2086 # BENCH_ARGS is a list of arguments
  if ! line=$("$bin" bench --server "http://$addr" --server-pid "$SERVER" --tasks "$TASKS" --json ${BENCH_ARGS:-} 2> "$DIR/bench.err" | tail -1); then
    echo "the bench failed:" >&2
    cat "$DIR/bench.err" >&2
    exit 1
  fi
  # Let the followers read the last events (4 per task: all received, or
  # nothing more for half a second after a reset), then stop them and the
  # server.
  local want=$((4 * TASKS)) prev=-1 still=0
  for _ in $(seq 100); do
    local total=0 short=0
    for w in $(seq "$WATCHERS"); do
      local n
      n=$(grep -c '^id:' "$DIR/w$w.out" || true)
      total=$((total + n))
      [ "$n" -ge "$want" ] || short=1
    done
    [ "$short" -eq 0 ] && break
    if [ "$total" -eq "$prev" ]; then still=$((still + 1)); else still=0; fi
    [ "$still" -ge 5 ] && break
    prev=$total
    sleep 0.1
  done
  if [ ${#FOLLOWERS[@]} -gt 0 ]; then
    kill "${FOLLOWERS[@]}" 2>/dev/null || true
    wait "${FOLLOWERS[@]}" 2>/dev/null || true
  fi
  FOLLOWERS=()
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  SERVER=
  local min=0 resets=0
  for w in $(seq "$WATCHERS"); do
    local n r
    n=$(grep -c '^id:' "$DIR/w$w.out" || true)
    r=$(grep -c '^event: *reset' "$DIR/w$w.out" || true)
    resets=$((resets + r))
    if [ "$w" -eq 1 ] || [ "$n" -lt "$min" ]; then min=$n; fi
  done
  rm -rf "$data" "$DIR"/w*.out
  echo "$line" | python3 -c "import json,sys; d=json.load(sys.stdin); print('$bin', round(d['e2e_per_sec']), round(d['coordinator']['cpu_secs'], 2), $min, $resets)"
}

for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order=("${BINS[@]}"); else order=(); for ((i=${#BINS[@]}-1; i>=0; i--)); do order+=("${BINS[$i]}"); done; fi
  for b in "${order[@]}"; do one "$b"; done
done
