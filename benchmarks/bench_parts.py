"""An archive rotated into parts (``--archive-part``): what rotation costs on the write path,
and how fast a stream in parts reads back as one WAV.

    python benchmarks/bench_parts.py [--minutes 10]

* **Write**: ``Archive.append`` of 100 ms batches (one ack's worth, as the stream writer
  sends them) of 48 kHz mono PCM16, with one file (``0``), hourly parts (never rotating in
  the run), and parts of 60 s and 1 s, as CPU+I/O µs per batch (wall time; the data land in
  the page cache), and the cost of one rotation (close, create, sidecar) measured alone.
* **Read**: the whole archive streamed as the REST download does (``parts.iter_frames``,
  64 KiB chunks), one file against 60 s and 1 s parts, in MB/s (warm page cache).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from earshot.audio import StreamSpec
from earshot.storage import parts as P
from earshot.storage.archive import Archive

RATE = 48000


def write(d: Path, part_s: float, batch: bytes, batches: int) -> tuple[float, Path]:
    a = Archive.create(d / "s.wav", StreamSpec("s16", RATE, 1), "wav", part_seconds=part_s)
    t = time.perf_counter()
    for _ in range(batches):
        a.append(batch)
    dt = time.perf_counter() - t
    a.close()
    return dt / batches * 1e6, d / "s.wav"


def read(base: Path) -> float:
    parts = P.load(base)
    total = P.total_frames(parts)
    t = time.perf_counter()
    n = sum(len(c) for c in P.iter_frames(parts, 0, total))
    return n / (time.perf_counter() - t) / 1e6


def rotation_us(d: Path, reps: int = 200) -> float:
    a = Archive.create(d / "r.wav", StreamSpec("s16", RATE, 1), "wav", part_seconds=0.001)
    one = bytes(2 * 48)  # one part's worth (48 frames)
    a.append(one)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a.append(one)  # rotates, then writes 48 frames
        times.append(time.perf_counter() - t)
    a.close()
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "parts.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    batch = (rng.uniform(-0.3, 0.3, RATE // 10) * 32767).astype("<i2").tobytes()
    batches = int(args.minutes * 600)
    out: dict = {"minutes": args.minutes, "rate": RATE, "batch_ms": 100, "write": {},
                 "read_mb_s": {}}
    for part_s in (0.0, 3600.0, 60.0, 1.0):
        with tempfile.TemporaryDirectory() as tmp:
            us, base = write(Path(tmp), part_s, batch, batches)
            out["write"][str(part_s)] = {"us_per_batch": round(us, 1),
                                         "parts": len(P.load(base))}
            if part_s in (0.0, 60.0, 1.0):
                read(base)  # warm
                out["read_mb_s"][str(part_s)] = round(max(read(base) for _ in range(3)), 0)
    with tempfile.TemporaryDirectory() as tmp:
        out["rotation_us"] = round(rotation_us(Path(tmp)), 1)
    print(json.dumps(out, indent=1))
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
