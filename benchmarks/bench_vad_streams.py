#!/usr/bin/env python3
"""level + vad on N concurrent real-time streams through the real pipeline, no sockets.

N :class:`StreamPipeline` s (48 kHz mono f32 in, ``level`` + ``vad``) are fed 100 ms
batches in real time, the way the hub feeds them after each archive flush: stream k's batch
r is due at ``t0 + r * 0.1 + phase_k`` (phases spread over the 100 ms), so the VAD work of
the streams arrives spread out as on a server, not all at once. Measured: process CPU and the
event-loop thread's CPU per stream (% of one core), and how far the VAD fell behind (its
runner's lag, max over streams when the feeding ends; the CPU includes catching up).
Whatever ``earshot`` is importable is measured, so two code versions compare with
``PYTHONPATH``::

    PYTHONPATH=/tmp/main-snapshot python benchmarks/bench_vad_streams.py --streams 100 250
    python benchmarks/bench_vad_streams.py --streams 100 250 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf

import earshot
from earshot.processors import StreamInfo
from earshot.processors.builtin.level import Level
from earshot.processors.builtin.vad import Vad
from earshot.processors.runner import StreamPipeline

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "speech_48k.wav"
BATCH = 0.1


async def run(n: int, seconds: float, busy: float = 0.0) -> dict:
    x, rate = sf.read(FIXTURE, dtype="float32", always_2d=True)
    x = np.concatenate([x] * (int(seconds * rate) // x.shape[0] + 2))
    step = int(rate * BATCH)
    events = [0]

    def publish(evs: list) -> None:
        events[0] += len(evs)

    pipes = [StreamPipeline(StreamInfo(f"s{k}", rate, 1), [Level(), Vad()], publish,
                            max_lag=1e9, lag_report=float("inf")) for k in range(n)]
    stop = False

    async def burn() -> None:  # the rest of a busy server's loop: pure Python, holding the GIL
        while not stop:
            end = time.perf_counter() + busy * 0.01
            while time.perf_counter() < end:
                pass
            await asyncio.sleep((1 - busy) * 0.01)

    burner = asyncio.create_task(burn()) if busy > 0 else None
    rounds = int(seconds / BATCH)
    slots = 20
    loop = asyncio.get_running_loop()
    c0, l0, t0 = time.process_time(), time.thread_time(), loop.time() + 0.05
    late = 0.0
    for r in range(rounds):
        for s in range(slots):
            due = t0 + r * BATCH + s * BATCH / slots
            await asyncio.sleep(max(0.0, due - loop.time()))
            late = max(late, loop.time() - due)
            for k in range(s, n, slots):
                off = (k * 4_801) % (x.shape[0] - rounds * step - 1)
                pipes[k].feed(x[off + r * step : off + (r + 1) * step], r * step)
    wall = loop.time() - t0
    lag = max(p.runners[1][1].lag for p in pipes)
    await asyncio.gather(*(p.idle() for p in pipes))  # the CPU of the whole work, backlog too
    drain = loop.time() - t0 - wall
    c1, l1 = time.process_time(), time.thread_time()
    stop = True
    if burner is not None:
        await burner
    for p in pipes:
        await p.close(None)
    audio = rounds * BATCH
    return {"streams": n, "seconds": audio, "wall_s": round(wall, 2),
            "cpu_pct_per_stream": round((c1 - c0) / audio / n * 100, 4),
            "loop_cpu_pct_per_stream": round((l1 - l0) / audio / n * 100, 4),
            "cpu_pct": round((c1 - c0) / audio * 100, 1),
            "vad_lag_s_at_end": round(lag, 3), "drain_s": round(drain, 2),
            "feed_late_max_s": round(late, 3),
            "events": events[0], "earshot": str(Path(earshot.__file__).parent)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[100, 250])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--label", default="")
    ap.add_argument("--busy", type=float, default=0.0,
                    help="keep the loop this busy (0..1) with other pure-Python work")
    ap.add_argument("--json-append", help="append the records to this JSON list file")
    args = ap.parse_args()
    for n in args.streams:
        rec = asyncio.run(run(n, args.seconds, args.busy))
        rec["busy"] = args.busy
        rec["label"] = args.label
        print(json.dumps(rec), flush=True)
        if args.json_append:
            p = Path(args.json_append)
            recs = json.loads(p.read_text()) if p.exists() else []
            p.write_text(json.dumps([*recs, rec], indent=1) + "\n")


if __name__ == "__main__":
    main()
