"""The gateway's own CPU per ack batch, without sockets: the direct lane's hot path
(``IngestSession.on_bytes`` → ``Hub.add_audio`` → ``Hub.flush_now``: archive write, acks,
processors, events) driven in-process for N streams, against a floor that only appends the
frames and writes them (what any archiving server must do).

The socket side (uvloop, ``recv``/``send``) is not here: it is measured end to end by
``bench_hotpath.py``. What is here is repeatable (thread CPU time, interleaved rounds,
median), so a change to the Python around each batch shows as a ratio even on a busy box.

    python benchmarks/bench_batch_path.py                     # none, defaults, level; 48 kHz f32
    python benchmarks/bench_batch_path.py --rounds 7 --streams 100 --seconds 10 --profile level
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from earshot.server.testing import Gateway


async def run_config(processors: list[str] | None, streams: int, seconds: float, rate: int,
                     fmt: str, frame_ms: int, profile: cProfile.Profile | None) -> dict:
    async with Gateway() as gw:  # earshot.server.testing: no sockets, a fake clock
        clients = []
        for _ in range(streams):
            c = await gw.connect()
            start = {"type": "start", "format": fmt, "rate": rate, "channels": 1,
                     "batch": True}
            if processors is not None:  # None: the server's defaults (level, on demand)
                start["processors"] = processors
            await c.send_json(start)
            await c.expect("ready")
            clients.append(c)
        lanes = [c.lane for c in clients]
        n = rate * frame_ms // 1000
        rng = np.random.default_rng(1)
        x = (rng.uniform(-0.3, 0.3, n * 50)).astype(np.float32)
        frames = [(x[i * n:(i + 1) * n] if fmt == "f32" else
                   (x[i * n:(i + 1) * n] * 32767).astype("<i2")).tobytes() for i in range(50)]
        messages = int(seconds * 1000 / frame_ms)
        before = sum(lane.messages for lane in lanes)  # type: ignore[union-attr]
        if profile is not None:
            profile.enable()
        t0 = time.thread_time()
        for i in range(messages):
            data_i = frames[i % 50]
            for lane in lanes:
                lane.offer(data_i)  # type: ignore[union-attr]  # what data_received does
            if i % 5 == 4:
                await asyncio.sleep(0)  # let the loop run what processors scheduled
        cpu = time.thread_time() - t0
        if profile is not None:
            profile.disable()
        sent = sum(lane.messages for lane in lanes) - before  # type: ignore[union-attr]
        for c in clients:
            await c.send_json({"type": "stop"})
        for c in clients:
            await c.closed(10)
        interval = gw.settings.ingest.ack_interval
    total = streams * messages
    batches = total * frame_ms / 1000 / interval
    return {"processors": ["defaults"] if processors is None else processors or ["none"],
            "cpu_s": cpu,
            "us_per_message": cpu / total * 1e6, "us_per_batch": cpu / batches * 1e6,
            "core_percent_per_stream": cpu / (streams * seconds) * 100,
            "messages_back_per_stream_s": sent / (streams * seconds)}


def floor(streams: int, seconds: float, rate: int, fmt: str, frame_ms: int) -> dict:
    """Append each message to a batch (a list, joined when written: the cheapest way
    found); every 100 ms write it to a file (f32 → s16 as the archive does): the least any
    archiving server does."""
    from earshot.audio import f32_to_s16

    d = tempfile.mkdtemp(prefix="earshot-floor-")
    fds = [os.open(f"{d}/{i}.raw", os.O_WRONLY | os.O_CREAT) for i in range(streams)]
    pend: list[list[bytes]] = [[] for _ in range(streams)]
    n = rate * frame_ms // 1000
    msg = np.zeros(n, np.float32 if fmt == "f32" else np.int16).tobytes()
    messages = int(seconds * 1000 / frame_ms)
    per_batch = int(100 / frame_ms)
    t0 = time.thread_time()
    for i in range(messages):
        for j in range(streams):
            pend[j].append(msg)
            if i % per_batch == per_batch - 1:
                b = b"".join(pend[j])
                pend[j] = []
                if fmt == "f32":
                    os.write(fds[j], f32_to_s16(np.frombuffer(b, np.float32)).samples)
                else:
                    os.write(fds[j], b)
    cpu = time.thread_time() - t0
    for fd in fds:
        os.close(fd)
    total = streams * messages
    return {"processors": ["floor"], "cpu_s": cpu, "us_per_message": cpu / total * 1e6,
            "us_per_batch": cpu / (total / per_batch) * 1e6,
            "core_percent_per_stream": cpu / (streams * seconds) * 100,
            "messages_back_per_stream_s": 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=5.0, help="of audio per stream")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rate", type=int, default=48000)
    ap.add_argument("--format", default="f32", choices=["f32", "s16"])
    ap.add_argument("--frame-ms", type=int, default=20)
    ap.add_argument("--configs", nargs="+", default=["floor", "none", "defaults", "level"],
                    help="floor, none, defaults (no 'processors' in start: the server's, "
                    "level on demand with nobody watching), or processor names (a,b)")
    ap.add_argument("--profile", help="cProfile this config (one round) and print the top")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    if a.profile:
        prof = cProfile.Profile()
        procs = [] if a.profile == "none" else a.profile.split(",")
        asyncio.run(run_config(procs, a.streams, a.seconds, a.rate, a.format, a.frame_ms, prof))
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return
    results: dict[str, list[dict]] = {c: [] for c in a.configs}
    for r in range(a.rounds):
        for c in a.configs:  # interleaved, so drift hits every config alike
            if c == "floor":
                res = floor(a.streams, a.seconds, a.rate, a.format, a.frame_ms)
            else:
                procs = None if c == "defaults" else [] if c == "none" else c.split(",")
                res = asyncio.run(run_config(procs, a.streams, a.seconds, a.rate, a.format,
                                             a.frame_ms, None))
            results[c].append(res)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    base = statistics.median(x["us_per_batch"] for x in results[a.configs[0]])
    print(f"{a.streams} streams x {a.seconds:g} s, {a.rate} Hz {a.format}, "
          f"{a.frame_ms} ms messages, median of {a.rounds}")
    print(f"| config | µs per 100 ms batch | µs per message | % core per stream | "
          f"x {a.configs[0]} | messages back per stream·s |")
    print("|---|---:|---:|---:|---:|---:|")
    summary = {}
    for c, rs in results.items():
        med = {k: statistics.median(x[k] for x in rs) for k in
               ("us_per_batch", "us_per_message", "core_percent_per_stream",
                "messages_back_per_stream_s")}
        summary[c] = med
        print(f"| {c} | {med['us_per_batch']:.1f} | {med['us_per_message']:.2f} | "
              f"{med['core_percent_per_stream']:.4f} | {med['us_per_batch'] / base:.2f} | "
              f"{med['messages_back_per_stream_s']:.1f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "summary": summary,
                                            "rounds": results}, indent=1))


if __name__ == "__main__":
    main()
