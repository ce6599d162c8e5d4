#!/usr/bin/env bash
# level + vad capacity, two code versions side by side in the same run (alternating per N).
#
#   BEFORE=/tmp/main-snapshot benchmarks/run_vad_compare.sh          # dir holding an 'earshot'
#   NS="100 200 250 300" DURATION=20 BEFORE=... benchmarks/run_vad_compare.sh
#
# For each N: one ingest_load.py run against the BEFORE code, then one against a snapshot of
# this checkout's src/earshot (AFTER, or the given AFTER dir), every stream asking for
# level + vad. Records go to $OUT (a JSON list, each tagged "code": before|after); a table
# follows on stdout. Run it under `nice` on a shared machine and say so.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
NS=${NS:-"100 150 200 250 300"}
DURATION=${DURATION:-20}
OUT=${OUT:-benchmarks/results/ingest-level-vad-batched.json}
: "${BEFORE:?BEFORE=dir holding the earshot package to compare against}"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ -z ${AFTER:-} ]]; then
  AFTER=$(mktemp -d /tmp/earshot-after-XXXXXX)
  cp -r src/earshot "$AFTER/"
fi
echo "# before: $BEFORE  after: $AFTER ($(git rev-parse --short HEAD)); load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
TMP=$(mktemp /tmp/vad-compare-XXXXXX.json); rm -f "$TMP"
for n in $NS; do
  for code in before after; do
    src=$BEFORE; [[ $code == after ]] && src=$AFTER
    echo "## N=$n $code" >&2
    "$PY" benchmarks/ingest_load.py --streams "$n" --seconds "$DURATION" \
      --processors level,vad --server-src "$src" --json-append "$TMP" || true
    "$PY" - "$TMP" "$code" <<'PYEOF'
import json, sys
p, code = sys.argv[1], sys.argv[2]
recs = json.load(open(p))
recs[-1].setdefault("code_label", code)
json.dump(recs, open(p, "w"), indent=1)
PYEOF
    sleep 2
  done
done
cp "$TMP" "$OUT"; rm -f "$TMP"
"$PY" - "$OUT" <<'PYEOF'
import json, sys
recs = json.load(open(sys.argv[1]))
print("| streams | code | held | server CPU % | CPU per stream | ack p50 / p99 ms | RSS MB | archives exact | machine CPU % |")
print("|---:|---|---:|---:|---:|---:|---:|:---|---:|")
for r in recs:
    per = r["server_cpu_pct_per_stream"] if r["held"] == r["streams"] else None
    print(f"| {r['streams']} | {r['code_label']} | {r['held']}/{r['streams']} | {r['server_cpu_pct']} | "
          f"{'—' if per is None else f'{per:.3f} %'} | {r['ack_p50_ms']} / {r['ack_p99_ms']} | "
          f"{r['server_rss_mb']:.0f} | {'yes' if r['archives_exact'] else 'NO'} ({r['archives_ok']}) | "
          f"{r.get('machine_cpu_pct')} |")
PYEOF
