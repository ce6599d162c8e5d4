"""Relay fan-out and listener delay.

    python benchmarks/bench_relay.py [--listeners 10 50 100 200] [--codec s16 opus]

For each N, one publisher streams 16 kHz speech in real time (20 ms frames) to a fresh
``earshot serve`` and N listeners subscribe to its audio on loopback. A listener is *held*
when it received every frame of the stream, in order, and its last frame arrived within
1 s of the publisher sending it. Also reported:

* bytes on the wire per second of audio for the listeners (payload only);
* listener playout delay through :class:`earshot.client.jitter.JitterBuffer` (p50/p99 of the
  buffered delay) with jitter injected on arrival: uniform 0-60 ms per packet plus a 300 ms
  stall every 3 s — what a phone on Wi-Fi sees;
* server CPU for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from websockets.asyncio.client import connect  # noqa: E402

from earshot.client import Publisher  # noqa: E402
from earshot.client.jitter import JitterBuffer  # noqa: E402
from helpers import FIXTURES, ServerProcess  # noqa: E402

RATE = 16000


async def listener(url: str, codec: str, out: dict) -> None:
    frames, nbytes, last_at, expected = 0, 0, 0.0, None
    in_order = True
    async with connect(url + f"?stream=*&audio={codec}", max_size=None) as ws:
        header = None
        async for raw in ws:
            if isinstance(raw, bytes):
                assert header is not None
                if expected is not None and header["offset"] != expected:
                    in_order = False
                expected = header["offset"] + header["frames"]
                frames += header["frames"]
                nbytes += len(raw)
                last_at = time.monotonic()
                header = None
                continue
            msg = json.loads(raw)
            if msg["type"] == "audio":
                header = msg
            elif msg["type"] == "stream_ended":
                break
    out.update(frames=frames, bytes=nbytes, last_at=last_at, in_order=in_order)


def playout_delays(seconds: float = 20.0, stalls: bool = True) -> tuple[float, float, float]:
    """Simulated playout through the jitter buffer with the injected jitter (deterministic)."""
    rng = random.Random(1)
    frame = RATE // 50
    jb = JitterBuffer(RATE, frame)
    arrivals = []
    for k in range(int(seconds * 50)):
        t = k * 0.02
        stall = 0.3 - (t % 3) if stalls and (t % 3) < 0.3 else 0.0  # held back, then a burst
        arrivals.append((t + 0.002 + rng.uniform(0, 0.06) + stall, k * frame))
    arrivals.sort()
    delays, i = [], 0
    for step in range(int(seconds * 50) + 100):
        now = step * 0.02
        while i < len(arrivals) and arrivals[i][0] <= now:
            jb.push(arrivals[i][1], frame, None, arrivals[i][0])
            i += 1
        if i == len(arrivals) and not jb.stats.buffered_packets:
            break  # the stream is over (popping on would only stretch an empty buffer)
        out = jb.pop(now)
        if out.kind != "waiting":
            delays.append(jb.stats.delay)
    d = np.array(delays)
    return float(np.percentile(d, 50)), float(np.percentile(d, 99)), jb.stats.concealed_ms


async def run(n: int, codec: str) -> dict:
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    x = np.tile(x, 2)[: rate * 10]
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", "--processor", "level").start()
        proc = psutil.Process(server.proc.pid)  # type: ignore[union-attr]
        try:
            sub = server.url.replace("/ws", "/ws/subscribe")
            outs = [dict() for _ in range(n)]
            tasks = [asyncio.create_task(listener(sub, codec, o)) for o in outs]
            await asyncio.sleep(1.0)
            cpu0 = sum(proc.cpu_times()[:2])
            pub = Publisher(server.url, rate=rate, format="s16")
            await pub.start()
            t0 = time.monotonic()
            block = rate // 50
            for i in range(0, len(x), block):
                await pub.send(x[i:i + block])
                await asyncio.sleep(max(0.0, t0 + (i + block) / rate - time.monotonic()))
            sent_end = time.monotonic()
            await pub.stop(timeout=60)
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
            cpu = (sum(proc.cpu_times()[:2]) - cpu0) / (time.monotonic() - t0) * 100
        finally:
            server.stop()
    held = sum(1 for o in outs if o["frames"] >= len(x) - rate // 10 and o["in_order"]
               and o["last_at"] - sent_end < 1.0)
    return {"codec": codec, "listeners": n, "held": held, "server_cpu_percent": cpu,
            "bytes_per_second": float(np.mean([o["bytes"] for o in outs])) / (len(x) / rate)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--listeners", type=int, nargs="+", default=[10, 50, 100, 200])
    ap.add_argument("--codec", nargs="+", default=["s16", "opus"])
    ap.add_argument("--json", help="append results here")
    args = ap.parse_args()
    for stalls in (False, True):
        p50, p99, concealed = playout_delays(stalls=stalls)
        what = "0-60 ms jitter" + (" + a 300 ms stall every 3 s" if stalls else "")
        print(f"listener delay through the jitter buffer ({what}): p50 {p50 * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms, concealed {concealed:.0f} ms in 20 s")
    print("| codec | listeners | held | server CPU % | bytes/s per listener |")
    print("|---|---:|---:|---:|---:|")
    rows = []
    for codec in args.codec:
        for n in args.listeners:
            r = asyncio.run(run(n, codec))
            rows.append(r)
            print(f"| {codec} | {n} | {r['held']}/{n} | {r['server_cpu_percent']:.1f} "
                  f"| {r['bytes_per_second']:.0f} |", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
            for stalls in (False, True):
                p50, p99, concealed = playout_delays(stalls=stalls)
                f.write(json.dumps({"stalls": stalls, "jitter_delay_p50_ms": p50 * 1000,
                                    "jitter_delay_p99_ms": p99 * 1000,
                                    "concealed_ms": concealed}) + "\n")


if __name__ == "__main__":
    main()
