#!/usr/bin/env bash
# Shell `true` tasks through taskgrid (2 slots) against `xargs -P2` on the
# same machine, in interleaved rounds (BENCHMARKS.md, "shell true").
#
#   cargo build --release --bin taskgrid
#   scripts/bench-shell.sh [ROUNDS] [TASKS] [EXTRA BENCH OPTIONS…]
#
# e.g. `scripts/bench-shell.sh 10 2000 --prefetch 2`. To compare builds,
# list several binaries: `TASKGRID="/tmp/old /tmp/new" scripts/bench-shell.sh`;
# each round then runs `xargs` and every binary in turn.
# Prints one line per round: xargs tasks/s, then for each binary its
# end-to-end tasks/s, the ratio to that round's xargs, and the CPU seconds
# used in all (user + system, children included: for taskgrid the
# coordinator, worker and `true` processes; the coordinator's own in
# parentheses). The last line gives each binary's median ratio.
set -euo pipefail
ROUNDS=${1:-8}
TASKS=${2:-2000}
shift $(( $# < 2 ? $# : 2 ))
read -r -a BINS <<< "${TASKGRID:-target/release/taskgrid}"
OUT=$(mktemp)
RATIOS=$(mktemp)
trap 'rm -f "$OUT" "$RATIOS"' EXIT

for _ in $(seq "$ROUNDS"); do
  /usr/bin/time -f "%e %U %S" -o "$OUT" sh -c "seq $TASKS | xargs -P2 -I{} true"
  read -r xwall xuser xsys < "$OUT"
  line=$(python3 -c "import sys; n, w, u, s = map(float, sys.argv[1:]); print(f'xargs {n / w:5.0f}/s cpu {u + s:4.2f} s')" \
    "$TASKS" "$xwall" "$xuser" "$xsys")
  i=0
  for bin in "${BINS[@]}"; do
    json=$(/usr/bin/time -f "%e %U %S" -o "$OUT" "$bin" bench --kind true --slots 2 \
      --tasks "$TASKS" --coordinator-process --worker-mode process --json "$@" 2>/dev/null | tail -1)
    read -r _ tuser tsys < "$OUT"
    part=$(python3 - "$TASKS" "$xwall" "$tuser" "$tsys" "$json" "$i" "$RATIOS" <<'PY'
import json, sys
n, xwall, tu, ts = (float(v) for v in sys.argv[1:5])
d = json.loads(sys.argv[5])
ratio = 100 * d["e2e_per_sec"] / (n / xwall)
with open(sys.argv[7], "a") as f:
    f.write(f"{sys.argv[6]} {ratio}\n")
print(f"{d['e2e_per_sec']:5.0f}/s {ratio:5.1f} % cpu {tu + ts:4.2f} s "
      f"({d['coordinator']['cpu_secs']:.2f})")
PY
)
    line="$line | ${bin##*/} $part"
    i=$((i + 1))
  done
  echo "$line"
done
python3 - "$RATIOS" "${BINS[@]}" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for i, name in enumerate(sys.argv[2:]):
    r = sorted(float(v) for k, v in rows if int(k) == i)
    print(f"{name}: median {statistics.median(r):.1f} % of xargs (range {r[0]:.0f}-{r[-1]:.0f}, n={len(r)})")
PY
