#!/usr/bin/env bash
# Profile the ingest server under load with py-spy.
#
#   benchmarks/profile_ingest.sh            # N=100 streams, two 15 s py-spy windows
#   N=200 WINDOW=15 benchmarks/profile_ingest.sh
#   OUTN=100-noproc EXTRA="--processors none" benchmarks/profile_ingest.sh
#   SERVER_SRC=/tmp/snapshot benchmarks/profile_ingest.sh   # dir holding an earshot package
#
# Starts `earshot serve` (free port, temp data dir), drives it with
# benchmarks/ingest_load.py --url ... --server-pid ..., and while the load is steady:
#   1. py-spy record -o benchmarks/results/profile-$OUTN.svg       (flame graph)
#   2. py-spy record --format raw -o .../profile-$OUTN.raw.txt     (collapsed stacks)
#   3. (NATIVE=1) the same with --native: .../profile-$OUTN.native.raw.txt (biased, below)
# then prints benchmarks/pyspy_summary.py of the raw profile. Needs ptrace (root or
# CAP_SYS_PTRACE). Samples are taken with --nonblocking (see below); the load run's own
# numbers are still slightly pessimistic (py-spy reads the server's memory 200x/s), so
# use run_ingest.sh for capacity numbers.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
N=${N:-100}
WINDOW=${WINDOW:-15}
NATIVE=${NATIVE:-0}
EXTRA=${EXTRA:-}   # more ingest_load.py args, e.g. "--processors none"
OUTN=${OUTN:-$N}   # name of the output files: profile-$OUTN.*
RATE=${SAMPLE_RATE:-200}
RES=benchmarks/results
mkdir -p "$RES"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DATA=$(mktemp -d /tmp/earshot-profile-XXXXXX)
EARSHOT=$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")/earshot
[[ -x $EARSHOT ]] || EARSHOT=earshot

if [[ -n ${SERVER_SRC:-} ]]; then  # a given snapshot (e.g. the one run_ingest.sh used)
  export PYTHONPATH="$SERVER_SRC${PYTHONPATH:+:$PYTHONPATH}"
  SRC_ARG=(--server-src "$SERVER_SRC")
elif [[ ${SNAPSHOT:-1} == 1 ]]; then  # profile one fixed copy of the code (src/ may change)
  cp -r src/earshot "$DATA/"
  export PYTHONPATH="$DATA${PYTHONPATH:+:$PYTHONPATH}"
  SRC_ARG=(--server-src "$DATA")
else
  SRC_ARG=()
fi
"$EARSHOT" serve --port "$PORT" --data-dir "$DATA/data" --log-level warning >"$DATA/server.log" 2>&1 &
SERVER=$!
cleanup() {
  kill -INT "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/healthz', timeout=1)" \
    >/dev/null 2>&1 && break
  sleep 0.1
done

LOAD_S=$(( (NATIVE == 1 ? 3 : 2) * WINDOW + 12 ))
echo "# server pid $SERVER port $PORT; $N streams for ${LOAD_S}s" >&2
"$PY" benchmarks/ingest_load.py --streams "$N" --seconds "$LOAD_S" \
  --url "ws://127.0.0.1:$PORT/ws" --server-pid "$SERVER" --data-dir "$DATA/data" \
  --json "$RES/profile-$OUTN.load.json" "${SRC_ARG[@]}" $EXTRA &
LOAD=$!

sleep 4   # all streams started (stagger ~1 s) and steady
# --nonblocking matters: by default py-spy stops the process (ptrace) for each sample, and
# the stops land on syscall boundaries, so frames that make syscalls (getpid in asyncio's
# get_running_loop on 3.11, os.write, transport.write, epoll) get hugely over-counted.
# A toy loop spending 0.7% of its time in getpid() showed 57% there in blocking mode and
# 1.4% with --nonblocking.
py-spy record --pid "$SERVER" --duration "$WINDOW" --rate "$RATE" --nonblocking \
  -o "$RES/profile-$OUTN.svg" >/dev/null
py-spy record --pid "$SERVER" --duration "$WINDOW" --rate "$RATE" --nonblocking --format raw \
  -o "$RES/profile-$OUTN.raw.txt" >/dev/null
if [[ ${NATIVE:-0} == 1 ]]; then  # C frames (needs blocking mode: syscall-biased, see above)
  py-spy record --pid "$SERVER" --duration "$WINDOW" --rate "$RATE" --format raw --native \
    -o "$RES/profile-$OUTN.native.raw.txt" >/dev/null || true
fi
py-spy dump --pid "$SERVER" >"$RES/profile-$OUTN.dump.txt" 2>&1 || true
wait "$LOAD" || true

"$PY" benchmarks/pyspy_summary.py "$RES/profile-$OUTN.raw.txt" --top 15 \
  --json "$RES/profile-$OUTN.summary.json" | tee "$RES/profile-$OUTN.summary.md"
if [[ -s $RES/profile-$OUTN.native.raw.txt ]]; then
  echo; echo "## with --native"
  "$PY" benchmarks/pyspy_summary.py "$RES/profile-$OUTN.native.raw.txt" --top 25 \
    | tee "$RES/profile-$OUTN.native.summary.md"
fi
