"""Cost of the voice-cleanup filters per 20 ms frame (earshot.dsp.cleanup).

    python benchmarks/bench_cleanup.py [--frames 1500] [--repeats 5]

Each filter alone (and agc+denoise chained) on one mono stream at 16 and 48 kHz, fed
20 ms frames of speech-like noise; the time of every call is measured and the median (and
90th percentile) of all calls is reported in µs, with the share of one core that one
stream takes (median / 20 ms). Results go to benchmarks/results/cleanup.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from earshot.dsp.cleanup import FilterChain, parse_filters

SPECS = ["gain:db=6", "agc", "denoise", "agc,denoise"]
OUT = Path(__file__).parent / "results" / "cleanup.json"


def measure(spec: str, rate: int, frames: int, repeats: int) -> dict[str, float | int | str]:
    rng = np.random.default_rng(0)
    n = rate // 50
    x = (0.05 * rng.standard_normal((frames, n))).astype(np.float32)
    times: list[float] = []
    latency = 0
    for _ in range(repeats):
        chain = FilterChain(parse_filters(spec.split(",")), rate)
        latency = chain.latency
        for i in range(min(50, frames)):  # warm-up (the resamplers' first blocks)
            chain.process(x[i])
        for i in range(frames):
            t0 = time.perf_counter()
            chain.process(x[i])
            times.append(time.perf_counter() - t0)
    us = np.array(times) * 1e6
    med = float(np.median(us))
    return {"filters": spec, "rate": rate, "frames": len(times),
            "median_us": round(med, 1), "p90_us": round(float(np.percentile(us, 90)), 1),
            "core_share_pct": round(med / 20000 * 100, 2),
            "latency_frames": latency, "latency_ms": round(latency / rate * 1000, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = []
    print(f"{'filters':<14}{'rate':>7}{'median µs':>11}{'p90 µs':>9}{'% core':>8}{'latency':>10}")
    for rate in (16000, 48000):
        for spec in SPECS:
            r = measure(spec, rate, args.frames, args.repeats)
            rows.append(r)
            print(f"{spec:<14}{rate:>7}{r['median_us']:>11}{r['p90_us']:>9}"
                  f"{r['core_share_pct']:>8}{r['latency_ms']:>8} ms")
    OUT.write_text(json.dumps({
        "command": "python benchmarks/bench_cleanup.py "
                   f"--frames {args.frames} --repeats {args.repeats}",
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
                   f"{platform.python_version()}, shared with other jobs (nice -n 10)",
        "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
