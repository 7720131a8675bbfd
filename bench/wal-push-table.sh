#!/usr/bin/env bash
# Issue #12's `wal-push` benchmark beside its `limit`, in one sitting, written as a new section at
# the end of bench/RESULTS.md (and printed):
#
#   bench/wal-push-table.sh [--duration S] [--bin DIR] [--dir DATA_DIR] [--results FILE]
#
# Per mode (sync, near-sync, async) and 1 and 4 in flight: `tetrad-bench wal-push` (16 MiB
# segments into one tenant of that mode on a fresh local cluster, which also reports the tenant's
# replicas: voters + learners), then `tetrad-bench wal-push --limit --replicas R` with that R and
# the same in-flight count; the ratio is tetrad over limit. Also `dd bs=16M count=32
# conv=fdatasync` to the same disk, and the load average before and after. Figures only: nothing
# here passes or fails on a threshold. BIN defaults to $CARGO_TARGET_DIR/release (the directory
# holding tetrad-bench, tetradctl and tetrad); DATA_DIR (default /var/tmp) must be a real disk.
set -euo pipefail
duration=10
bin="${CARGO_TARGET_DIR:-target}/release"
data=/var/tmp
results="$(dirname "$0")/RESULTS.md"
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --dir) data="$2"; shift 2 ;;
    --results) results="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
bench="$bin/tetrad-bench"
size=16MiB
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
commit=$(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$(dirname "$0")" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)

ddfile="$data/tetrad-bench-dd.$$"
dd_out=$(dd if=/dev/zero of="$ddfile" bs=16M count=32 conv=fdatasync 2>&1 | tail -1)
rm -f "$ddfile"

rows=""
for mode in sync near-sync async; do
  for k in 1 4; do
    t=$("$bench" wal-push --mode "$mode" --size "$size" --in-flight "$k" --duration "$duration" --dir "$data" --json 2>/dev/null)
    r=$(jq -r .replicas <<<"$t")
    l=$("$bench" wal-push --limit --replicas "$r" --size "$size" --in-flight "$k" --duration "$duration" --dir "$data" --json 2>/dev/null)
    row=$(jq -rn --argjson t "$t" --argjson l "$l" --arg mode "$mode" --arg k "$k" \
      '"| \($mode) | \($k) | \($t.replicas) | \($t.mib_per_s*10|round/10) | \($t.p50_ms|round) / \($t.p99_ms|round) | \($l.mib_per_s*10|round/10) | \($l.p50_ms|round) / \($l.p99_ms|round) | \(($t.mib_per_s/$l.mib_per_s*100)|round)% |"')
    echo "$row" >&2
    rows+="$row"$'\n'
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

section=$(cat <<S

## WAL segments: \`wal-push\` beside its \`limit\` (issue #12), $(date -u +"%Y-%m-%d %H:%M UTC")

Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), data on $(df --output=source "$data" | tail -1) ($data).
Commit: $commit$dirty. Load average before: $load_before; after: $load_after.
Command: \`bench/wal-push-table.sh --duration $duration --dir $data\`, which ran per row
\`tetrad-bench wal-push --mode M --size $size --in-flight K --duration $duration --json\` (a fresh
local cluster each) and \`tetrad-bench wal-push --limit --replicas R --size $size --in-flight K
--duration $duration --json\` (R from the tenant's record). Target: tetrad at least 70% of limit.

\`dd if=/dev/zero of=$data/... bs=16M count=32 conv=fdatasync\`: $dd_out

| mode | in flight | replicas | tetrad MiB/s | tetrad p50 / p99 ms | limit MiB/s | limit p50 / p99 ms | tetrad / limit |
|---|---|---|---|---|---|---|---|
${rows}
S
)
printf '%s\n' "$section"
printf '%s\n' "$section" >>"$results"
