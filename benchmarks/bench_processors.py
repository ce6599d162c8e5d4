"""Cost of the built-in processors *including the runner*: the per-rate resampler, the
batching, the executor hop and event publishing — what a stream actually pays.

    python benchmarks/bench_processors.py [--seconds 60] [--rate 48000] [--batch 0.1]

Audio is fed the way the server feeds it (one batch per ack interval, default 100 ms) and
the CPU time of the whole process is divided by the audio's duration. Reported per 20 ms
of audio (level, spectrogram) and per 32 ms (the VAD's 512-sample window at 16 kHz).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import numpy as np

from earshot.processors import Processor, StreamInfo
from earshot.processors.builtin.level import Level
from earshot.processors.builtin.spectrogram import Spectrogram
from earshot.processors.builtin.vad import Vad
from earshot.processors.runner import StreamPipeline


def speechlike(rate: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(rate * seconds)) / rate
    envelope = (np.sin(2 * np.pi * 0.5 * t) > 0).astype(np.float32)  # 1 s on, 1 s off
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * envelope + 0.01 * rng.standard_normal(t.size)
    return x.astype(np.float32)[:, None]


async def cost(make: list[type[Processor]], rate: int, seconds: float, batch: float) -> float:
    """CPU seconds per second of audio."""
    x = speechlike(rate, seconds)
    events = 0

    def publish(evs: list) -> None:
        nonlocal events
        events += len(evs)

    pipe = StreamPipeline(StreamInfo("bench", rate, 1), [m() for m in make], publish,
                          max_lag=1e9, lag_report=float("inf"))
    step = int(rate * batch)
    c0 = time.process_time()
    for i in range(0, len(x), step):
        pipe.feed(x[i:i + step], i)
        await pipe.idle()
    await pipe.close(timeout=None)
    return (time.process_time() - c0) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=int, default=48000)
    ap.add_argument("--batch", type=float, default=0.1, help="seconds of audio per feed")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    rows = []
    for label, procs, per_ms in (
        ("level", [Level], 20),
        ("spectrogram", [Spectrogram], 20),
        ("vad", [Vad], 32),
        ("level+vad", [Level, Vad], 32),
    ):
        runs = [asyncio.run(cost(procs, args.rate, args.seconds, args.batch)) for _ in range(3)]
        per_s = float(np.median(runs))
        rows.append({"processors": label, "rate": args.rate, "us_per_chunk": per_s * per_ms * 1e3,
                     "chunk_ms": per_ms, "cpu_percent_per_stream": per_s * 100,
                     "streams_per_core": 1 / per_s})
        r = rows[-1]
        print(f"{label:<12} {r['us_per_chunk']:8.1f} µs per {per_ms} ms   "
              f"{r['cpu_percent_per_stream']:6.3f} % of a core per stream   "
              f"≈ {r['streams_per_core']:6.0f} streams per core", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
