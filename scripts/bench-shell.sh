#!/usr/bin/env bash
# Shell `true` tasks through taskgrid (2 slots) against `xargs -P2` on the
# same machine, in interleaved pairs (BENCHMARKS.md, "shell true").
#
#   cargo build --release --bin taskgrid
#   scripts/bench-shell.sh [PAIRS] [TASKS] [EXTRA BENCH OPTIONS…]
#
# e.g. `scripts/bench-shell.sh 8 2000 --prefetch 2`.
# Prints one line per pair: xargs tasks/s, taskgrid end-to-end tasks/s, the
# ratio, and the CPU seconds each used in all (user + system, children
# included: for taskgrid the coordinator, worker and `true` processes).
set -euo pipefail
PAIRS=${1:-8}
TASKS=${2:-2000}
shift $(( $# < 2 ? $# : 2 ))
BIN=${TASKGRID:-target/release/taskgrid}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

for _ in $(seq "$PAIRS"); do
  /usr/bin/time -f "%e %U %S" -o "$OUT" sh -c "seq $TASKS | xargs -P2 -I{} true"
  read -r xwall xuser xsys < "$OUT"
  json=$(/usr/bin/time -f "%e %U %S" -o "$OUT" "$BIN" bench --kind true --slots 2 \
    --tasks "$TASKS" --coordinator-process --worker-mode process --json "$@" 2>/dev/null | tail -1)
  read -r _ tuser tsys < "$OUT"
  python3 - "$TASKS" "$xwall" "$xuser" "$xsys" "$tuser" "$tsys" "$json" <<'PY'
import json, sys
n, xwall, xu, xs, tu, ts = (float(v) for v in sys.argv[1:7])
d = json.loads(sys.argv[7])
x = n / xwall
t = d["e2e_per_sec"]
print(f"xargs {x:7.0f}/s cpu {xu + xs:5.2f} s | taskgrid {t:7.0f}/s cpu {tu + ts:5.2f} s "
      f"(coordinator {d['coordinator']['cpu_secs']:.2f}) | ratio {100 * t / x:5.1f} %")
PY
done
