#!/usr/bin/env python3
"""What earshot's Python client (``earshot.client.Publisher``) costs per stream, sending to
``earshot serve`` (archive + acks + ``level``, events batched with acks) against sending to
a bare ``websockets`` server that discards audio (benchmarks/bare_servers.py).

N publishers in this one process send real-time 48 kHz mono f32 in 20 ms messages (one
pacing task for all) for S seconds; the process's CPU time over the steady part is divided
by N. Kinds alternate within each round; the median of the rounds is reported.

    python benchmarks/bench_client.py --streams 50 --seconds 15 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from earshot.client import Publisher

HERE = Path(__file__).resolve().parent
RATE, FRAME = 48000, 960


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(kind: str, port: int, data: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EARSHOT_CONN_RATE": "0", "EARSHOT_MAX_LOOP_LAG": "0",
           "EARSHOT_MAX_ACK_LATENCY": "0"}
    if kind == "bare":
        cmd = [sys.executable, str(HERE / "bare_servers.py"), "websockets", "--port", str(port)]
    else:
        cmd = [sys.executable, "-m", "earshot.cli", "serve", "--port", str(port),
               "--data-dir", str(data), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


async def drive(url: str, streams: int, seconds: float) -> dict[str, Any]:
    frame = (np.random.default_rng(1).standard_normal(FRAME) * 0.1).astype(np.float32)
    pubs = [Publisher(url, rate=RATE, format="f32", name=f"c{i}") for i in range(streams)]
    await asyncio.gather(*(p.start() for p in pubs))
    events = [0]

    async def drain(p: Publisher) -> None:
        async for _ in p.events():
            events[0] += 1

    readers = [asyncio.create_task(drain(p)) for p in pubs]
    due = round(seconds * RATE / FRAME)
    t0 = time.monotonic()
    cpu0 = w0 = None
    for k in range(due):
        if k == due // 5:  # steady from here (one fifth in)
            cpu0, w0 = time.process_time(), time.monotonic()
        for p in pubs:
            await p.send(frame)
        delay = t0 + (k + 1) * FRAME / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    cpu1, w1 = time.process_time(), time.monotonic()
    await asyncio.gather(*(p.stop() for p in pubs))
    for r in readers:
        r.cancel()
    assert cpu0 is not None and w0 is not None
    late = max(0.0, time.monotonic() - (t0 + seconds))
    return {"client_cpu_pct_per_stream": round((cpu1 - cpu0) / (w1 - w0) * 100 / streams, 4),
            "events_per_stream_s": round(events[0] / streams / seconds, 2),
            "late_s": round(late, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "client.json"))
    args = ap.parse_args()
    runs: list[dict[str, Any]] = []
    for i in range(args.repeats):
        for kind in ("bare", "earshot"):
            port = free_port()
            with tempfile.TemporaryDirectory() as tmp:
                proc = start_server(kind, port, Path(tmp) / "data")
                try:
                    r = asyncio.run(drive(f"ws://127.0.0.1:{port}/ws", args.streams,
                                          args.seconds))
                finally:
                    proc.terminate()
                    proc.wait(30)
            r.update(kind=kind, round=i + 1, streams=args.streams)
            print(json.dumps(r), flush=True)
            runs.append(r)
    med = {k: statistics.median(r["client_cpu_pct_per_stream"] for r in runs if r["kind"] == k)
           for k in ("bare", "earshot")}
    summary = {"summary": True, "streams": args.streams, "seconds": args.seconds,
               "client_cpu_pct_per_stream": med,
               "ratio": round(med["earshot"] / med["bare"], 2) if med["bare"] else None,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "loadavg": [round(x, 2) for x in os.getloadavg()]}
    print(json.dumps(summary))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([*runs, summary], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
