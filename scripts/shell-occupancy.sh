#!/usr/bin/env bash
# Where short shell tasks lose time: how busy the slots were, and how long
# a slot stayed empty between one task's exit and the next start.
#
#   scripts/shell-occupancy.sh [BINARY] [EXTRA BENCH OPTIONS…]
#
# Runs `BINARY bench --kind true --slots 2 --tasks $TASKS (default 2000)
# --coordinator-process --worker-mode process` under `perf record` of the
# kernel's process tracepoints (fork, exec, exit; root or
# perf_event_paranoid <= -1), then prints, from the `true` processes'
# own lifetimes (fork to exit):
#
# - the end-to-end rate the bench printed;
# - the slots' occupancy (0..2): the time-weighted number of tasks alive;
# - the share of time with no task alive;
# - which threads started the tasks (the spawner's main thread, or others);
# - fork -> exec and exec -> exit (the task's own time), p50 and p90;
# - exit -> the next fork (any slot), p50 and p90: the hand-over gap.
#
# e.g. `scripts/shell-occupancy.sh target/release/taskgrid --prefetch 8`
# (not `--slots`: the figures are for 2). The trace is system-wide: run it
# with nothing else starting `true`. Compare builds in alternating order:
# this VM's speed varies by the hour.
set -euo pipefail
BIN=${1:-target/release/taskgrid}
shift $(( $# < 1 ? $# : 1 ))
for arg in "$@"; do
  case $arg in --slots*) echo "the slots are 2 here: leave out --slots" >&2; exit 2 ;; esac
done
TASKS=${TASKS:-2000}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT

if ! perf record -q -o "$DIR/perf.data" \
  -e sched:sched_process_exec,sched:sched_process_exit,sched:sched_process_fork -a -- \
  "$BIN" bench --kind true --slots 2 --tasks "$TASKS" --coordinator-process \
  --worker-mode process --json "$@" > "$DIR/bench.out" 2> "$DIR/bench.err"; then
  echo "perf or the bench failed:" >&2
  tail -20 "$DIR/bench.err" >&2
  exit 1
fi
tail -1 "$DIR/bench.out" > "$DIR/bench.json"
perf script -i "$DIR/perf.data" 2> "$DIR/script.err" > "$DIR/events.txt" \
  || { cat "$DIR/script.err" >&2; exit 1; }

python3 - "$DIR/bench.json" "$DIR/events.txt" <<'PY'
import bisect, json, re, sys

bench = json.load(open(sys.argv[1]))
line = re.compile(r'^\s*(\S+)\s+\d+\s+\[\d+\]\s+(\d+\.\d+): sched:(\w+): (.*)')
forks, execs, exits = {}, {}, {}
for l in open(sys.argv[2]):
    m = line.search(l)
    if not m:
        continue
    comm, t, event, rest = m.group(1), float(m.group(2)), m.group(3), m.group(4)
    if event == 'sched_process_fork':
        forks[int(re.search(r'child_pid=(\d+)', rest).group(1))] = (t, comm)
    elif event == 'sched_process_exec' and re.search(r'filename=(\S*/)?true\s', rest):
        execs[int(re.search(r' pid=(\d+)', rest).group(1))] = t
    elif event == 'sched_process_exit' and re.search(r'comm=true\s', rest):
        exits[int(re.search(r' pid=(\d+)', rest).group(1))] = t

tasks = sorted((forks[p][0], execs[p], exits[p], forks[p][1])
               for p in execs if p in forks and p in exits)
if not tasks:
    sys.exit("no `true` processes seen: is perf allowed to trace?")
start, end = tasks[0][0], max(t[2] for t in tasks)
changes = sorted([(f, 1) for f, _, _, _ in tasks] + [(x, -1) for _, _, x, _ in tasks])
alive, last, time_at = 0, start, {}
for t, d in changes:
    time_at[alive] = time_at.get(alive, 0.0) + t - last
    last, alive = t, alive + d
span = end - start
by = {}
for *_, comm in tasks:
    by[comm] = by.get(comm, 0) + 1

def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float('nan')

fork_exec = [(e - f) * 1e3 for f, e, _, _ in tasks]
own = [(x - e) * 1e3 for _, e, x, _ in tasks]
fork_times = sorted(f for f, _, _, _ in tasks)
gaps = []
for _, _, x, _ in tasks:
    i = bisect.bisect_right(fork_times, x)
    if i < len(fork_times):
        gaps.append((fork_times[i] - x) * 1e3)

print(f"rate {bench['e2e_per_sec']:.0f}/s, {len(tasks)} tasks seen")
print(f"occupancy {sum(k * v for k, v in time_at.items()) / span:.2f} of 2, "
      f"none alive {100 * time_at.get(0, 0.0) / span:.0f} % of the time")
print(f"started by {by}")
print(f"fork->exec p50 {pct(fork_exec, .5):.3f} p90 {pct(fork_exec, .9):.3f} ms; "
      f"exec->exit p50 {pct(own, .5):.3f} p90 {pct(own, .9):.3f} ms")
print(f"exit->next fork p50 {pct(gaps, .5):.3f} p90 {pct(gaps, .9):.3f} ms")
PY
