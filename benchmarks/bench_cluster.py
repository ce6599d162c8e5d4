#!/usr/bin/env python3
"""Scale-out costs, side by side in one run: the in-process bus against Redis Streams.

1. ``latency``: N real-time streams (16 kHz s16 mono, 100 ms messages) with ``level``;
   from the moment the audio of a level frame was sent to its ``level`` event at the
   sender (p50/p99), on one gateway with the in-process bus, then on a gateway with
   ``--bus redis://`` and a ``level`` worker; CPU per stream of the gateway, the worker and
   redis-server (psutil, over the steady window); Redis memory per stream-minute
   (``used_memory`` growth over the run, at the default 60 s retention).
2. ``capacity``: the highest N of the list held (archive + acks + level, every archive
   exact; ``benchmarks/ingest_load.py``, 48 kHz f32, 20 ms frames) by one process (in-process
   bus) and by ``--processes 2`` on Redis with a ``level`` worker.

    python benchmarks/bench_cluster.py latency --streams 100 --seconds 20
    python benchmarks/bench_cluster.py capacity --streams 200,400,600 --seconds 15

Results are appended to benchmarks/results/cluster.jsonl; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "cluster.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Cluster:
    """redis-server (when asked), one gateway, workers; all stopped on exit."""

    def __init__(self, tmp: Path, *, redis: bool, processes: int = 1,
                 workers: tuple[str, ...] = ()) -> None:
        self.tmp, self.use_redis, self.processes, self.kinds = tmp, redis, processes, workers
        self.procs: list[subprocess.Popen[bytes]] = []
        self.port = free_port()
        self.redis_port = free_port()
        self.redis_pid = self.gateway_pid = self.worker_pid = 0

    @property
    def bus(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def _spawn(self, cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "EARSHOT_CONN_RATE": "0"}  # one load client, many streams
        p = subprocess.Popen(cmd, stdout=open(self.tmp / log, "ab"),  # noqa: SIM115
                             stderr=subprocess.STDOUT, env=env)
        self.procs.append(p)
        return p

    def __enter__(self) -> Cluster:
        py = [sys.executable, "-m", "earshot.cli"]
        serve = [*py, "serve", "--port", str(self.port), "--data-dir", str(self.tmp / "data"),
                 "--log-level", "warning"]
        if self.use_redis:
            r = self._spawn([shutil.which("redis-server") or "redis-server", "--port",
                             str(self.redis_port), "--save", "", "--appendonly", "no",
                             "--bind", "127.0.0.1"], "redis.log")
            self.redis_pid = r.pid
            time.sleep(0.5)
            serve += ["--bus", self.bus, "--processes", str(self.processes)]
        self.gateway_pid = self._spawn(serve, "gateway.log").pid
        wait_http(f"http://127.0.0.1:{self.port}/healthz")
        if self.kinds:
            self.worker_pid = self._spawn([*py, "worker", *self.kinds, "--bus", self.bus],
                                          "worker.log").pid
            time.sleep(3.0)  # leases taken
        return self

    def __exit__(self, *_: object) -> None:
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()

    def redis_memory(self) -> int:
        import redis

        return int(redis.Redis(port=self.redis_port).info("memory")["used_memory"])


def cpu_seconds(pid: int) -> float:
    if not pid:
        return 0.0
    p = psutil.Process(pid)
    total = sum(p.cpu_times()[:2])
    for c in p.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(c.cpu_times()[:2])
    return total


async def run_streams(url: str, n: int, seconds: float) -> tuple[list[float], float]:
    """n real-time streams with level; latencies (s) of every level event, window (s)."""
    from earshot.client import Publisher

    rate, block = 16000, 1600
    t = np.arange(int(rate * seconds)) / rate
    x = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    lat: list[float] = []

    async def one(i: int) -> None:
        await asyncio.sleep(i * 0.01)
        pub = Publisher(url, rate=rate, format="s16", processors=["level"])
        await pub.start()
        t0 = time.monotonic()

        async def collect() -> None:
            async for e in pub.events():
                if e.get("type") == "level":  # its audio ended in message k, sent at k/10 s
                    k = math.ceil((e["t"] + 0.05) * rate / block - 1e-6) - 1
                    lat.append(time.monotonic() - (t0 + k * block / rate))

        task = asyncio.create_task(collect())
        for k in range(0, len(x), block):
            await pub.send(x[k:k + block])
            await asyncio.sleep(max(0.0, t0 + (k + block) / rate - time.monotonic()))
        await pub.stop(timeout=60)
        await task

    await asyncio.gather(*(one(i) for i in range(n)))
    return lat, seconds


def _child(url: str, n: int, seconds: float) -> list[float]:
    return asyncio.run(run_streams(url, n, seconds))[0]


def spread(url: str, n: int, seconds: float, procs: int) -> list[float]:
    """The streams over ``procs`` client processes, so the client is not what is measured."""
    import multiprocessing as mp

    counts = [n // procs + (i < n % procs) for i in range(procs)]
    with mp.get_context("spawn").Pool(procs) as pool:
        parts = pool.starmap(_child, [(url, k, seconds) for k in counts if k])
    return [x for part in parts for x in part]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def latency(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for mode in ("memory", "redis"):
        with tempfile.TemporaryDirectory() as d, Cluster(
                Path(d), redis=mode == "redis",
                workers=("level",) if mode == "redis" else ()) as c:
            mem0 = c.redis_memory() if mode == "redis" else 0
            cpu0 = {k: cpu_seconds(p) for k, p in (("gateway", c.gateway_pid),
                                                   ("worker", c.worker_pid),
                                                   ("redis", c.redis_pid))}
            t0 = time.monotonic()
            lat = spread(f"ws://127.0.0.1:{c.port}/ws", args.streams, args.seconds,
                         args.client_procs)
            wall = time.monotonic() - t0
            cpu = {k: (cpu_seconds(p) - cpu0[k]) / wall * 100 / args.streams
                   for k, p in (("gateway", c.gateway_pid), ("worker", c.worker_pid),
                                ("redis", c.redis_pid))}
            mem = c.redis_memory() - mem0 if mode == "redis" else 0
            row = {"bench": "latency", "mode": mode, "streams": args.streams,
                   "seconds": args.seconds, "events": len(lat),
                   "p50_ms": round(pct(lat, 50) * 1000, 1),
                   "p99_ms": round(pct(lat, 99) * 1000, 1),
                   "cpu_pct_per_stream": {k: round(v, 3) for k, v in cpu.items()},
                   "redis_mb_per_stream_minute": round(
                       mem / 1e6 / args.streams / (args.seconds / 60), 2) if mem else None,
                   "load": os.getloadavg()[0], "when": time.strftime("%Y-%m-%d %H:%M")}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def capacity(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for label, kw in (("1 process, in-process bus", {"redis": False}),
                      ("--processes 2, Redis bus + level worker",
                       {"redis": True, "processes": 2, "workers": ("level",)})):
        best = 0
        for n in [int(v) for v in args.streams.split(",")]:
            with tempfile.TemporaryDirectory() as d, Cluster(Path(d), **kw) as c:
                rec = Path(d) / "run.json"
                subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ingest_load.py"),
                                "--streams", str(n), "--seconds", str(args.seconds),
                                "--url", f"ws://127.0.0.1:{c.port}/ws", "--server-pid",
                                str(c.gateway_pid), "--data-dir", str(Path(d) / "data"),
                                "--processors", "level", "--json", str(rec)],
                               check=False, capture_output=True, timeout=600)
                r = json.loads(rec.read_text()) if rec.exists() else {}
            held = r.get("held") == n and r.get("archives_exact")
            row = {"bench": "capacity", "config": label, "streams": n, "held": r.get("held"),
                   "archives_exact": r.get("archives_exact"),
                   "gateway_cpu_pct_per_stream": r.get("server_cpu_pct_per_stream"),
                   "ack_p99_ms": r.get("ack_p99_ms"), "load": os.getloadavg()[0],
                   "when": time.strftime("%Y-%m-%d %H:%M")}
            print(json.dumps(row), flush=True)
            out.append(row)
            if not held:
                break
            best = n
        out.append({"bench": "capacity-best", "config": label, "held": best})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["latency", "capacity"])
    ap.add_argument("--streams", default="100")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--client-procs", type=int, default=4, help="load client processes")
    args = ap.parse_args()
    if args.what == "latency":
        args.streams = int(args.streams)
        rows = latency(args)
    else:
        rows = capacity(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
