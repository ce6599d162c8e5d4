#!/usr/bin/env python3
"""VAD cost per stream, batched across streams vs one stream at a time (no server).

N streams of the speech fixture (16 kHz, each starting at a different point) are fed in
``--chunk-ms`` chunks, as the runner hands them to the VAD after resampling. One round is one
chunk of every stream:

* ``alone``: each stream's StreamingVad.feed in turn (one ONNX call per 32 ms window, the
  unbatched path, as on main);
* ``batched``: one VadBatcher.run_jobs of all N jobs (one ONNX call per window step for all).

Reports process CPU time per window and % of one core per real-time stream, median of
``--repeat``.

    python benchmarks/bench_vad_batch.py --streams 1 10 100 250 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from earshot.dsp.vad import StreamingVad
from earshot.processors.builtin.vad_batch import VadBatcher, VadJob

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "speech_16k.wav"


def run(n: int, seconds: float, chunk: int, batched: bool) -> tuple[float, int]:
    x, rate = sf.read(FIXTURE, dtype="float32")
    x = np.tile(x, int(np.ceil((seconds * rate + n * 997) / x.size)) + 1)
    vads = [StreamingVad() for _ in range(n)]
    b = VadBatcher()
    total = int(seconds * rate) // chunk * chunk
    t0 = time.process_time()
    for pos in range(0, total, chunk):
        if batched:
            jobs = [VadJob(v, x[k * 997 + pos : k * 997 + pos + chunk], pos)
                    for k, v in enumerate(vads)]
            for r in b.run_jobs(jobs):
                assert not isinstance(r, Exception), r
        else:
            for k, v in enumerate(vads):
                v.feed(x[k * 997 + pos : k * 997 + pos + chunk], pos)
    cpu = time.process_time() - t0
    return cpu, n * (total // 512)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 10, 100, 250])
    ap.add_argument("--seconds", type=float, default=5.0, help="audio per stream")
    ap.add_argument("--chunk-ms", type=float, default=100.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    chunk = int(16000 * args.chunk_ms / 1000)
    rows = []
    print("| streams | path | µs per window | % of a core per stream |")
    print("|---:|---|---:|---:|")
    for n in args.streams:
        secs = max(1.0, args.seconds * 10 / max(n, 10))  # bounded run time at large N
        for mode in ("alone", "batched"):
            per = []
            for _ in range(args.repeat):
                cpu, windows = run(n, secs, chunk, mode == "batched")
                per.append(cpu / windows)
            us = statistics.median(per) * 1e6
            pct = us * 1e-6 * 16000 / 512 * 100
            rows.append({"streams": n, "path": mode, "us_per_window": round(us, 1),
                         "core_pct_per_stream": round(pct, 3), "seconds": secs,
                         "chunk_ms": args.chunk_ms})
            print(f"| {n} | {mode} | {us:.1f} | {pct:.3f} % |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
