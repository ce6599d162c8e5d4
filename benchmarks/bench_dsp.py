"""Per-chunk cost of the DSP cores: python benchmarks/bench_dsp.py [--iterations N]."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from earshot.dsp import LevelMeter, LogMelSpectrogram, StreamingVad


def bench(step: Callable[[int], object], iterations: int, repeats: int = 3) -> tuple[float, float]:
    """Return (best, median) mean microseconds per call of ``step(i)`` over ``repeats`` runs."""
    for i in range(min(200, iterations)):  # warm-up
        step(i)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(iterations):
            step(i)
        runs.append((time.perf_counter() - t0) / iterations * 1e6)
    return min(runs), float(np.median(runs))


def chunks(rate: int, frames: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(frames * count) * 0.1).astype(np.float32)
    return list(x.reshape(count, frames))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=3000)
    n = parser.parse_args().iterations

    print(f"{'core':<40}{'best µs':>10}{'median µs':>12}")
    for rate in (48000, 16000):
        data = chunks(rate, rate // 50, n)  # 20 ms chunks
        meter = LevelMeter(rate)
        best, med = bench(lambda i, m=meter, d=data: m.feed(d[i]), n)
        print(f"{f'LevelMeter {rate} Hz, per 20 ms chunk':<40}{best:>10.1f}{med:>12.1f}")
        mel = LogMelSpectrogram(rate)
        best, med = bench(lambda i, m=mel, d=data: m.feed(d[i]), n)
        print(f"{f'LogMelSpectrogram {rate} Hz, per 20 ms':<40}{best:>10.1f}{med:>12.1f}")

    windows = chunks(16000, 512, n)
    vad = StreamingVad()
    best, med = bench(lambda i: vad.feed(windows[i], vad.position or 0), n)
    print(f"{'StreamingVad 16 kHz, per 512-sample win':<40}{best:>10.1f}{med:>12.1f}")
    vad_model = vad.model
    best, med = bench(lambda i: vad_model(windows[i]), n)
    print(f"{'  of which SileroModel call':<40}{best:>10.1f}{med:>12.1f}")


if __name__ == "__main__":
    main()
