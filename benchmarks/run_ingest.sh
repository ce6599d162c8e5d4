#!/usr/bin/env bash
# Ingest capacity runs: N = 10, 100, then a search for the highest N the server holds.
#
#   benchmarks/run_ingest.sh                  # all runs, ~20 s of audio each
#   DURATION=10 SEARCH="200 300" benchmarks/run_ingest.sh
#
# Every run starts its own `earshot serve` (free port, temp data dir) via
# benchmarks/ingest_load.py. The search stops at the first N that is not 100% held, then
# (REFINE_STEP > 0) bisects between the last held and the first failed N down to that step.
# Results: benchmarks/results/ingest-YYYYMMDD.json (a JSON list, one record per run) and a
# markdown table on stdout.
#
# Environment: DURATION (s, default 20), BASE ("10 100"), SEARCH ("200 400 600 800 1000"),
# REFINE_STEP (50; 0 = no refinement), OUT (results file), EXTRA (more ingest_load.py args,
# e.g. "--processors none" for pure ingest), SNAPSHOT (1: copy src/earshot once at the start
# and run every server from that copy, so the whole series measures one code version even
# while src/ is being edited; 0: run the installed package as it is at each run),
# SERVER_SRC (a directory holding an earshot package snapshot to use instead).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DURATION=${DURATION:-20}
BASE=${BASE:-"10 100"}
SEARCH=${SEARCH:-"200 400 600 800 1000"}
REFINE_STEP=${REFINE_STEP:-50}
OUT=${OUT:-benchmarks/results/ingest-$(date +%Y%m%d).json}
EXTRA=${EXTRA:-}
SNAPSHOT=${SNAPSHOT:-1}

# Two sockets per stream on loopback (client + server side) plus archives on the server.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
echo "# ulimit -n: $(ulimit -n); cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

mkdir -p "$(dirname "$OUT")"
if [[ -e "$OUT" ]]; then  # keep an earlier run of the same day
  mv "$OUT" "${OUT%.json}.prev-$(date +%H%M%S).json"
fi
TMP=$(mktemp --suffix=.part "${OUT%.json}.XXXXXX")
SNAP=""
cleanup() { rm -f "$TMP"; [[ -n $SNAP ]] && rm -rf "$SNAP"; return 0; }
trap cleanup EXIT
rm -f "$TMP"
if [[ -n ${SERVER_SRC:-} ]]; then  # a snapshot made by the caller (several series, one code)
  EXTRA="--server-src $SERVER_SRC $EXTRA"
  echo "# server code: $SERVER_SRC" >&2
elif [[ $SNAPSHOT == 1 ]]; then
  SNAP=$(mktemp -d /tmp/earshot-src-XXXXXX)
  cp -r src/earshot "$SNAP/"
  EXTRA="--server-src $SNAP $EXTRA"
  echo "# server code: snapshot of src/earshot in $SNAP ($(git rev-parse --short HEAD 2>/dev/null)$(git status --porcelain -- src 2>/dev/null | grep -q . && echo +dirty))" >&2
fi

# run N → exit status 0 when all N streams were held and every archive was exact
run() {
  local n=$1
  echo "## N=$n, ${DURATION}s" >&2
  # shellcheck disable=SC2086
  if "$PY" benchmarks/ingest_load.py --streams "$n" --seconds "$DURATION" \
      --json-append "$TMP" $EXTRA; then
    cp "$TMP" "$OUT"
    sleep 2
    return 0
  fi
  cp "$TMP" "$OUT"
  sleep 2
  return 1
}

for n in $BASE; do
  run "$n" || true
done

held=0
fail=0
for n in $SEARCH; do
  if run "$n"; then
    held=$n
  else
    fail=$n
    break
  fi
done

if [[ $fail -gt 0 && $REFINE_STEP -gt 0 ]]; then
  lo=$held
  [[ $lo -eq 0 ]] && lo=$(echo $BASE | awk '{print $NF}')
  hi=$fail
  while (( hi - lo > REFINE_STEP )); do
    mid=$(( (lo + hi) / 2 / REFINE_STEP * REFINE_STEP ))
    (( mid <= lo )) && mid=$(( lo + REFINE_STEP ))
    (( mid >= hi )) && break
    if run "$mid"; then lo=$mid; else hi=$mid; fi
  done
  held=$lo
fi

echo >&2
echo "# highest N held (100% of streams >= 90% real time, no failures): $held" >&2
echo "# results: $OUT" >&2
"$PY" - "$OUT" <<'EOF'
import json, sys
sys.path.insert(0, "benchmarks")
from ingest_load import load_records, table
from pathlib import Path
recs = sorted(load_records(Path(sys.argv[1])), key=lambda r: r["streams"])
print(table(recs))
EOF
