#!/usr/bin/env python3
"""What archives in object storage cost a gateway (issue 23), side by side in one run.

1. CPU per stream: N real-time streams (16 kHz s16 mono, 100 ms messages, no processors)
   for S seconds into one gateway without an archive store, then into one with
   ``--archive-store`` on moto_server (``--archive-part`` short, so parts close, upload and
   are verified during the run, ``--archive-keep-local 0`` so they are removed too); the
   gateway's CPU (psutil, user + system) over the run, per stream.
2. A small range read: ``Range: bytes=`` of 2000 bytes from a 10 s one-file archive,
   R times, read from the local disk (the gateway that recorded it, no store) and from the
   object store (another gateway, which never had the file): latency p50/p99 and the bytes
   fetched from the store per read.

    python benchmarks/bench_archive_store.py --streams 50 --seconds 20

Results go to benchmarks/results/archive-store.json; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from earshot.client import Publisher

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "archive-store.json"
RATE = 16000
BUCKET = "earshot-bench"
KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(0.1)


class Procs:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, cmd: list[str], name: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(p)
        return p

    def moto(self) -> str:
        port = free_port()
        exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        self.spawn([exe, "-H", "127.0.0.1", "-p", str(port)], "moto",
                   {k: v for k, v in os.environ.items() if not k.startswith("AWS_")})
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        import boto3

        while True:
            try:
                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                             aws_access_key_id="bench", aws_secret_access_key="bench"
                             ).create_bucket(Bucket=BUCKET)
                return endpoint
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def gateway(self, name: str, *args: str, env: dict[str, str] | None = None) -> tuple[
            str, subprocess.Popen[bytes]]:
        port = free_port()
        db = self.tmp / "meta.db"
        p = self.spawn([sys.executable, "-m", "earshot.cli", "serve", "--port", str(port),
                        "--data-dir", str(self.tmp / name), "--db", str(db),
                        "--log-level", "warning", *args], name,
                       {**os.environ, "EARSHOT_CONN_RATE": "0", **(env or {})})
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz")
        return url, p

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


async def one_stream(url: str, samples: np.ndarray, t0: float) -> str:
    pub = Publisher(url.replace("http", "ws") + "/ws", rate=RATE, format="s16", processors=[])
    await pub.start()
    block = RATE // 10
    for i in range(0, len(samples), block):
        await pub.send(samples[i:i + block])
        await asyncio.sleep(max(0.0, t0 + (i + block) / RATE - time.monotonic()))
    await pub.stop(timeout=60)
    assert pub.acked == len(samples)
    return str(pub.stream_id)


async def load(url: str, proc: subprocess.Popen[bytes], streams: int,
               seconds: float) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    audio = [rng.integers(-20000, 20000, int(seconds * RATE), np.int16) for _ in range(streams)]
    ps = psutil.Process(proc.pid)
    c0 = ps.cpu_times()
    w0 = time.monotonic()
    t0 = time.monotonic() + 0.5
    ids = await asyncio.gather(*(one_stream(url, a, t0 + i * 0.1 / streams)
                                 for i, a in enumerate(audio)))
    wall = time.monotonic() - w0
    c1 = ps.cpu_times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {"streams": streams, "seconds": seconds, "wall": round(wall, 2),
            "gateway_cpu_s": round(cpu, 3),
            "cpu_percent_per_stream": round(100 * cpu / wall / streams, 4), "ids": ids}


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    m = re.search(rf"^{name}(?:_total)? ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def range_latency(url: str, sid: str, reads: int) -> dict[str, Any]:
    times = []
    before = metric(url, "earshot_archive_store_read_bytes")
    with httpx.Client(timeout=30) as c:
        for i in range(reads):
            lo = 100_000 + (i * 7919) % 150_000
            t = time.perf_counter()
            r = c.get(f"{url}/api/streams/{sid}/audio",
                      headers={"Range": f"bytes={lo}-{lo + 1999}"})
            times.append(time.perf_counter() - t)
            assert r.status_code == 206 and len(r.content) == 2000
    fetched = metric(url, "earshot_archive_store_read_bytes") - before
    ms = np.array(times) * 1000
    return {"reads": reads, "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "store_bytes_per_read": round(fetched / reads, 1)}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--reads", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    procs = Procs(tmp)
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "at": time.time()}
    try:
        endpoint = procs.moto()
        store_env = {**KEYS, "AWS_ENDPOINT_URL": endpoint}
        plain, plain_p = procs.gateway("plain")
        out["without_store"] = await load(plain, plain_p, args.streams, args.seconds)
        stored, stored_p = procs.gateway(
            "stored", "--archive-store", f"s3://{BUCKET}/bench", "--archive-part", "5",
            "--archive-keep-local", "0", env=store_env)
        out["with_store"] = await load(stored, stored_p, args.streams, args.seconds)
        h = httpx.get(stored + "/healthz", timeout=10).json()["archive_store"]
        deadline = time.monotonic() + 120
        while h["backlog_files"] and time.monotonic() < deadline:
            time.sleep(0.5)
            h = httpx.get(stored + "/healthz", timeout=10).json()["archive_store"]
        out["with_store"]["uploaded_files"] = h["uploaded_files"]
        out["with_store"]["failures"] = h["failures"]
        for k in ("without_store", "with_store"):
            out[k].pop("ids")
        # a 10 s one-file archive recorded on `plain` (read from its disk) and on `writer`
        # (hourly parts), read from `stored`, which never had it (from the bucket)
        writer, _ = procs.gateway("writer", "--archive-store", f"s3://{BUCKET}/bench",
                                  env=store_env)
        one = np.random.default_rng(1).integers(-20000, 20000, 10 * RATE, np.int16)
        local_sid = await one_stream(plain, one, time.monotonic() - 100)
        remote_sid = await one_stream(writer, one, time.monotonic() - 100)
        while httpx.get(writer + "/healthz", timeout=10).json()["archive_store"][
                "backlog_files"]:
            time.sleep(0.2)
        out["range_local"] = range_latency(plain, local_sid, args.reads)
        out["range_object_store"] = range_latency(stored, remote_sid, args.reads)
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    a, b = out["without_store"], out["with_store"]
    print("| gateway | CPU % per stream | uploads |\n|---|---|---|")
    print(f"| no archive store | {a['cpu_percent_per_stream']} | — |")
    print(f"| --archive-store (moto), 5 s parts, keep-local 0 | "
          f"{b['cpu_percent_per_stream']} | {b['uploaded_files']} |")
    print("\n| 2000-byte Range read | p50 ms | p99 ms | store bytes per read |\n|---|---|---|---|")
    for k in ("range_local", "range_object_store"):
        r = out[k]
        print(f"| {k} | {r['p50_ms']} | {r['p99_ms']} | {r['store_bytes_per_read']} |")


if __name__ == "__main__":
    asyncio.run(main())
