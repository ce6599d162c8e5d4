#!/usr/bin/env python3
"""What the publisher's sans-I/O core costs: this tree's ``earshot.client.Publisher`` against
the one of a baseline git revision (default ``house``, before the core), side by side.

Both clients run :func:`bench_client.drive` (N real-time 48 kHz mono f32 publishers, 20 ms
messages, CPU per stream over the steady part) in their own process, against one
``earshot serve`` of this tree; the variants alternate within each round (which goes first
alternates too) and the median of the rounds is reported, with the ratio this tree /
baseline.

    python benchmarks/bench_client_core.py --baseline house --streams 50 --seconds 12 \
        --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_client import free_port, start_server  # noqa: E402

PROBE = """
import asyncio, json, sys
import earshot
from bench_client import drive
r = asyncio.run(drive(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
r["earshot"] = earshot.__file__
print(json.dumps(r))
"""


def baseline_src(rev: str, into: Path) -> Path:
    """The ``src/`` tree of ``rev`` (git archive), unpacked under ``into``."""
    blob = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, capture_output=True,
                          check=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run_client(src: Path, url: str, streams: int, seconds: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{HERE}"}
    out = subprocess.run([sys.executable, "-c", PROBE, url, str(streams), str(seconds)],
                         env=env, capture_output=True, text=True, timeout=seconds * 4 + 120,
                         check=True, cwd=tempfile.gettempdir())
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["earshot"].startswith(str(src)), result["earshot"]
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="house")
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "client-core.json"))
    args = ap.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"baseline": baseline_src(args.baseline, Path(tmp) / "base"),
                    "core": ROOT / "src"}
        port = free_port()
        server = start_server("earshot", port, Path(tmp) / "data")
        try:
            for i in range(args.repeats):
                order = list(variants.items())
                for kind, src in order[::-1] if i % 2 else order:  # either goes first
                    r = run_client(src, f"ws://127.0.0.1:{port}/ws", args.streams,
                                   args.seconds)
                    r.pop("earshot")
                    r.update(kind=kind, round=i + 1, streams=args.streams)
                    print(json.dumps(r), flush=True)
                    runs.append(r)
        finally:
            server.terminate()
            server.wait(30)
    med = {k: round(statistics.median(r["client_cpu_pct_per_stream"] for r in runs
                                      if r["kind"] == k), 5) for k in ("baseline", "core")}
    summary = {"summary": True, "baseline": args.baseline, "streams": args.streams,
               "seconds": args.seconds, "client_cpu_pct_per_stream": med,
               "ratio": round(med["core"] / med["baseline"], 3) if med["baseline"] else None,
               "command": "python benchmarks/bench_client_core.py " + " ".join(sys.argv[1:]),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "loadavg": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(summary))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([*runs, summary], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
