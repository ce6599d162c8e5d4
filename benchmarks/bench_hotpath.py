#!/usr/bin/env python3
"""earshot's ingest against a bare ``websockets`` server that discards audio, side by side.

Each round runs, one after another on the same machine and load generator
(benchmarks/ingest_load.py, N real-time 48 kHz mono f32 streams in 20 ms messages):

* ``bare``: benchmarks/bare_servers.py ``websockets`` (the cost floor);
* ``level``: ``earshot serve`` with its defaults (archive + acks + ``level``), the load
  client asking for batched events like earshot's own clients;
* ``none``: the same with ``"processors": []`` (archive + acks only);
* ``level-named``: the sender names ``level`` (``"processors": ["level"]``): every reading
  made and sent to it (``level`` as a default is made only for subscribers: none here);
* optionally ``starlette`` (``--with-starlette``): uvicorn + a Starlette discard endpoint;
* optionally (``--compat``) ``bare-compat`` and ``compat``: the classic browser snippet's
  connection (no ``start``, ``?rate=&format=f32``, never reads) against the bare server and
  against ``earshot serve`` with its defaults; ``compat`` is compared with ``bare-compat``,
  as is ``compat-level``, the snippet that names ``?processors=level`` and reads them.

Rounds repeat (``--repeats``, median reported) and kinds are interleaved within a round, in
an order that rotates from round to round, so a change in the machine's load hits every
kind alike; the ratios are what count.
Then (``--capacity``) the highest N held with archive + acks + ``level``, every archive
exact, trying the given N in order and stopping at the first that is not held.

    python benchmarks/bench_hotpath.py --streams 100 --repeats 3 --capacity 500 900 1000
    python benchmarks/bench_hotpath.py --table benchmarks/results/hotpath.json

Results: one JSON record per run into ``--out`` (default benchmarks/results/hotpath.json)
plus a summary record; ``--table`` prints the README's table from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KINDS: dict[str, list[str]] = {
    "bare": ["--server-kind", "bare-websockets"],
    "starlette": ["--server-kind", "bare-starlette"],
    "level": [],
    "none": ["--processors", "none"],
    # the sender names level: every reading made and sent to it, in the acks
    "level-named": ["--processors", "level"],
    # the classic browser snippet: no start, ?rate=&format=f32, never reads (--compat)
    "bare-compat": ["--server-kind", "bare-websockets", "--compat"],
    "compat": ["--compat"],
    # a snippet that reads level readings names them in its URL
    "compat-level": ["--compat", "--query", "processors=level"],
}
BASELINE = {"compat": "bare-compat", "bare-compat": "bare-compat",
            "compat-level": "bare-compat"}


def run_one(kind: str, streams: int, seconds: float, extra: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, str(HERE / "ingest_load.py"), "--streams", str(streams),
           "--seconds", str(seconds), "--json", str(out), *KINDS[kind], *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = (proc.stdout.strip().splitlines() or ["?"])[-1]
    print(f"  {kind:9s} N={streams:<5d} {line}", flush=True)
    try:
        rec = json.loads(out.read_text())
    except (OSError, ValueError):
        rec = {"streams": streams, "held": 0, "error": proc.stderr[-2000:]}
    out.unlink(missing_ok=True)
    rec["kind"] = kind
    return rec


def per_stream(rec: dict[str, Any], key: str) -> float | None:
    v = rec.get(key)
    return float(v) if isinstance(v, int | float) else None


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 4) if vals else None


def summarize(runs: list[dict[str, Any]], kinds: list[str], streams: int) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": True, "streams": streams,
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "kinds": {}}
    for k in kinds:
        rs = [r for r in runs if r["kind"] == k and r["streams"] == streams]
        out["kinds"][k] = {
            "runs": len(rs),
            "held_all": all(r.get("held") == r.get("streams") for r in rs),
            "archives_exact": all(r.get("archives_exact", True) for r in rs
                                  if k not in ("bare", "starlette", "bare-compat")),
            "server_cpu_pct_per_stream": median([per_stream(r, "server_cpu_pct_per_stream")
                                                 for r in rs]),
            "client_cpu_pct_per_stream": median([per_stream(r, "client_cpu_pct_per_stream")
                                                 for r in rs]),
            "ack_p50_ms": median([per_stream(r, "ack_p50_ms") for r in rs]),
            "ack_p99_ms": median([per_stream(r, "ack_p99_ms") for r in rs]),
            "rss_mb": median([per_stream(r, "server_rss_mb") for r in rs]),
            "messages_back_per_stream_s": rs[-1].get("server_messages_per_stream_s") if rs
            else None,
        }
    for k, v in out["kinds"].items():
        base = out["kinds"].get(BASELINE.get(k, "bare"), {})
        for key, name in (("server_cpu_pct_per_stream", "server_ratio"),
                          ("client_cpu_pct_per_stream", "client_ratio")):
            b, x = base.get(key), v.get(key)
            v[name] = round(x / b, 2) if b and x else None
        v["server_ratio_per_round"] = paired_ratio(runs, k, BASELINE.get(k, "bare"), streams)
    return out


def paired_ratio(runs: list[dict[str, Any]], kind: str, base: str,
                 streams: int) -> float | None:
    """The median over rounds of this kind's server CPU over its baseline's in the same
    round (the rounds are in order, one run of each kind per round): drift between rounds
    cancels, where the ratio of the two medians keeps it."""
    mine = [per_stream(r, "server_cpu_pct_per_stream") for r in runs
            if r["kind"] == kind and r["streams"] == streams]
    theirs = [per_stream(r, "server_cpu_pct_per_stream") for r in runs
              if r["kind"] == base and r["streams"] == streams]
    ratios = [m / b for m, b in zip(mine, theirs, strict=False) if m and b]
    return round(statistics.median(ratios), 2) if ratios else None


def table(records: list[dict[str, Any]]) -> str:
    rows = ["| server | N | held | server CPU/stream | x bare | client CPU/stream | x bare "
            "| ack p50 / p99 | RSS |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(x: Any, spec: str, unit: str = "") -> str:
        return "-" if x is None else f"{x:{spec}}{unit}"

    for s in (r for r in records if r.get("summary")):
        for k, v in s["kinds"].items():
            rows.append(
                f"| {k} | {s['streams']} | {'all' if v['held_all'] else 'no'} "
                f"| {f(v['server_cpu_pct_per_stream'], '.3f', ' %')} "
                f"| {f(v['server_ratio'], '.2f')} "
                f"| {f(v['client_cpu_pct_per_stream'], '.3f', ' %')} "
                f"| {f(v['client_ratio'], '.2f')} "
                f"| {f(v['ack_p50_ms'], '.1f')} / {f(v['ack_p99_ms'], '.1f')} ms "
                f"| {f(v['rss_mb'], '.0f', ' MB')} |")
    for r in (r for r in records if r.get("capacity")):
        rows.append(f"| {r['kind']} (capacity) | {r['streams']} | "
                    f"{r['held']}/{r['streams']}{' exact' if r.get('archives_exact') else ''} "
                    f"| {f(r.get('server_cpu_pct_per_stream'), '.3f', ' %')} | | "
                    f"{f(r.get('client_cpu_pct_per_stream'), '.3f', ' %')} | "
                    f"| {f(r.get('ack_p50_ms'), '.1f')} / {f(r.get('ack_p99_ms'), '.1f')} ms "
                    f"| {f(r.get('server_rss_mb'), '.0f', ' MB')} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--with-starlette", action="store_true")
    ap.add_argument("--compat", action="store_true",
                    help="also the classic snippet's connection (bare-compat, compat)")
    ap.add_argument("--capacity", type=int, nargs="*", default=[],
                    help="N to try with archive + acks + level, in order (stops at the "
                    "first not held)")
    ap.add_argument("--capacity-seconds", type=float, default=20.0)
    ap.add_argument("--out", default=str(HERE / "results" / "hotpath.json"))
    ap.add_argument("--table", metavar="JSON", help="print the table of a results file")
    ap.add_argument("extra", nargs="*", help="more ingest_load.py arguments (after --)")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return 0
    kinds = ["bare", *(["starlette"] if args.with_starlette else []), "level", "none",
             "level-named", *(["bare-compat", "compat", "compat-level"] if args.compat else [])]
    records: list[dict[str, Any]] = []
    for i in range(args.repeats):
        print(f"round {i + 1}/{args.repeats}", flush=True)
        # the order rotates each round: no kind always runs first, or right after another
        for k in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:
            records.append(run_one(k, args.streams, args.seconds, args.extra))
    summary = summarize(records, kinds, args.streams)
    records.append(summary)
    for n in args.capacity:
        rec = run_one("level", n, args.capacity_seconds, args.extra)
        rec["capacity"] = True
        records.append(rec)
        if rec.get("held") != n or not rec.get("archives_exact"):
            break
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2) + "\n")
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
