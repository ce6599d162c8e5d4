"""Server CPU of Deepgram-protocol streams against native ones, through a real server.

    nice -n 10 python benchmarks/bench_doors_cpu.py [--streams 50] [--seconds 20] [--rounds 2]

Each round starts ``earshot serve`` twice (the same options: ``--processor level``,
``--asr-engine none``, so the door's own path is what differs, not speech-to-text) and
sends ``--streams`` real-time 16 kHz s16 streams of the reading (20 ms a message) for
``--seconds``: with earshot's own protocol through the Python client (``native``: its
``Publisher``, start message, acks), with earshot's own ingest in compatibility mode and
the very messages a Deepgram client sends (``native-raw``: 20 ms binary frames, the format
in the URL), and as a Deepgram client does (``deepgram``:
``/v1/listen?encoding=linear16&sample_rate=16000``, binary audio messages, ``KeepAlive``,
``CloseStream``). Reported: the server process's CPU seconds per
second of the run, per stream, and the ratio deepgram/native. The rounds alternate (native,
deepgram, native, deepgram...) on a shared machine, and the best of each is kept.
Results are written to ``benchmarks/results/doors_cpu.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import soundfile as sf
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import ServerProcess  # noqa: E402

RATE = 16000
KINDS = ("native", "native-raw", "deepgram")
BLOCK = RATE // 50  # 20 ms


def audio(seconds: float) -> np.ndarray:
    x, _ = sf.read(ROOT / "tests" / "fixtures" / "reading_16k.wav", dtype="int16")
    n = int(seconds * RATE)
    return np.resize(x, n)


async def native(url: str, x: np.ndarray, i: int) -> None:
    from earshot.client import Publisher

    pub = Publisher(url, rate=RATE, format="s16", name=f"n{i}")
    await pub.start()
    t0 = time.monotonic()
    for k in range(len(x) // BLOCK):
        await pub.send(x[k * BLOCK:(k + 1) * BLOCK])
        await asyncio.sleep(max(0.0, t0 + (k + 1) / 50 - time.monotonic()))
    await pub.stop(timeout=60)


async def raw(base: str, x: np.ndarray, i: int) -> None:
    """earshot's own ingest in compatibility mode: the same messages as the Deepgram
    client's (20 ms binary frames), the format in the URL."""
    async with connect(f"{base}/ws?rate={RATE}&format=s16&name=r{i}") as ws:
        async def drain() -> None:
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain())
        t0 = time.monotonic()
        for k in range(len(x) // BLOCK):
            await ws.send(x[k * BLOCK:(k + 1) * BLOCK].tobytes())
            await asyncio.sleep(max(0.0, t0 + (k + 1) / 50 - time.monotonic()))
        await ws.send('{"type": "stop"}')
        await asyncio.wait_for(reader, 60)


async def deepgram(base: str, x: np.ndarray, i: int) -> None:
    url = f"{base}/v1/listen?encoding=linear16&sample_rate={RATE}&model=nova-3"
    async with connect(url) as ws:
        async def drain() -> None:
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain())
        t0 = time.monotonic()
        for k in range(len(x) // BLOCK):
            await ws.send(x[k * BLOCK:(k + 1) * BLOCK].tobytes())
            if k % 250 == 0:
                await ws.send('{"type": "KeepAlive"}')
            await asyncio.sleep(max(0.0, t0 + (k + 1) / 50 - time.monotonic()))
        await ws.send('{"type": "CloseStream"}')
        await asyncio.wait_for(reader, 60)


def run(tmp: Path, kind: str, streams: int, seconds: float, n: int) -> dict[str, Any]:
    server = ServerProcess(tmp / f"data-{kind}-{n}", "--processor", "level",
                           "--asr-engine", "none").start()
    x = audio(seconds)
    try:
        proc = psutil.Process(server.proc.pid)  # type: ignore[union-attr]

        async def load() -> tuple[float, float]:
            base = f"ws://127.0.0.1:{server.port}"
            if kind == "native":
                tasks = [native(server.url, x, i) for i in range(streams)]
            elif kind == "native-raw":
                tasks = [raw(base, x, i) for i in range(streams)]
            else:
                tasks = [deepgram(f"ws://127.0.0.1:{server.port}", x, i)
                         for i in range(streams)]
            cpu0, w0 = sum(proc.cpu_times()[:2]), time.monotonic()
            await asyncio.gather(*tasks)
            return sum(proc.cpu_times()[:2]) - cpu0, time.monotonic() - w0

        cpu, wall = asyncio.run(load())
    finally:
        server.stop()
    per_s = cpu / wall
    return {"kind": kind, "streams": streams, "seconds": seconds,
            "server_cpu_per_s": round(per_s, 4),
            "server_cpu_per_stream_pct": round(100 * per_s / streams, 3)}


def per_round(runs: list[dict[str, Any]]) -> list[float]:
    """deepgram / native of each round (the runs come in rounds of len(KINDS))."""
    out = []
    for i in range(0, len(runs), len(KINDS)):
        r = {x["kind"]: x["server_cpu_per_s"] for x in runs[i:i + len(KINDS)]}
        out.append(round(r["deepgram"] / r["native"], 3))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                    "doors_cpu.json")
    args = ap.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            for kind in KINDS:
                r = run(Path(tmp), kind, args.streams, args.seconds, n)
                print(json.dumps(r), flush=True)
                runs.append(r)
    best = {k: min(r["server_cpu_per_s"] for r in runs if r["kind"] == k) for k in KINDS}
    result = {
        "benchmark": "doors_cpu", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "options": ["--processor", "level", "--asr-engine", "none"],
        "streams": args.streams, "seconds": args.seconds, "runs": runs,
        "best_server_cpu_per_s": best,
        "best_per_stream_pct": {k: round(100 * v / args.streams, 3) for k, v in best.items()},
        "ratio_deepgram_to_native": round(best["deepgram"] / best["native"], 3),
        "ratio_deepgram_to_native_raw": round(best["deepgram"] / best["native-raw"], 3),
        # each round's own ratio (the machine's load changes between rounds)
        "ratio_per_round": per_round(runs),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("best_per_stream_pct", "ratio_deepgram_to_native",
                                              "ratio_deepgram_to_native_raw")}))


if __name__ == "__main__":
    main()
