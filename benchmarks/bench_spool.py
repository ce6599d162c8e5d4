"""Store-and-forward spool: capture cost, disk per hour of audio, delivery throughput.

    python benchmarks/bench_spool.py [--minutes 10] [--deliver-minutes 5]

* **Capture**: ``Spool.append`` of 20 ms blocks, per fsync policy, against the in-memory
  buffer a plain ``Publisher`` keeps (``bytearray +=``), run side by side on the same
  blocks. Reported as CPU µs per 20 ms block, the ratio to the baseline, and how many times
  faster than real time a capture could go.
* **Disk**: bytes the spool occupies (allocated blocks, ``st_blocks``) per hour of audio.
* **Delivery**: ``earshot spool --flush`` of ``--deliver-minutes`` of audio to a real
  server on loopback, against ``earshot send`` of the same audio as a file (the baseline),
  as seconds of audio delivered per second.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from earshot.client.spool import Spool  # noqa: E402


def blocks(rate: int, fmt: str, seconds: float) -> list[bytes]:
    n = rate // 50
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.3, 0.3, n * 50).astype(np.float32)  # one second, reused
    one = [(x[i:i + n] * 32767).astype("<i2").tobytes() if fmt == "s16"
           else x[i:i + n].tobytes() for i in range(0, len(x), n)]
    return one * int(seconds)


def capture(rate: int, fmt: str, seconds: float, policy: str | None) -> dict:
    data = blocks(rate, fmt, seconds)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        if policy is None:  # the baseline: the in-memory buffer of a Publisher
            buf = bytearray()
            c0, w0 = time.process_time(), time.perf_counter()
            for b in data:
                buf += b
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            disk = 0
        else:
            sp = Spool(d, max_bytes=1 << 40, fsync=policy)  # type: ignore[arg-type]
            e = sp.create(format=fmt, rate=rate, channels=1)
            c0, w0 = time.process_time(), time.perf_counter()
            for b in data:
                sp.append(e, b)
            e.sync()
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            disk = sum(p.stat().st_blocks * 512 for p in Path(d).rglob("*") if p.is_file())
            sp.close()
    return {"rate": rate, "format": fmt, "policy": policy or "memory (baseline)",
            "seconds": seconds, "cpu_us_per_block": cpu / len(data) * 1e6,
            "x_realtime": seconds / wall, "disk_bytes_per_hour": disk / seconds * 3600}


def deliver(minutes: float) -> dict:
    import soundfile as sf

    from helpers import ServerProcess, free_port
    rate = 16000
    seconds = minutes * 60
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        dd = Path(d)
        x = (np.random.default_rng(1).uniform(-0.3, 0.3, int(seconds * rate)) * 32767)
        sf.write(dd / "a.wav", x.astype(np.int16), rate, subtype="PCM_16")
        sp = Spool(dd / "spool", max_bytes=1 << 40)
        e = sp.create(format="s16", rate=rate, channels=1)
        pcm = x.astype("<i2").tobytes()
        step = rate // 50 * 2
        for i in range(0, len(pcm), step):
            sp.append(e, pcm[i:i + step])
        e.close_capture()
        sp.close()
        srv = ServerProcess(dd / "data", port=free_port()).start()
        try:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "earshot.cli", "spool", str(dd / "spool"),
                                "--flush", "--url", srv.url], capture_output=True, text=True)
            spool_wall = time.perf_counter() - t0
            assert r.returncode == 0, r.stderr
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "earshot.cli", "send", str(dd / "a.wav"),
                                "-q", "--url", srv.url], capture_output=True, text=True)
            send_wall = time.perf_counter() - t0
            assert r.returncode == 0, r.stderr
        finally:
            srv.stop()
    return {"audio_seconds": seconds, "rate": rate, "format": "s16",
            "flush_x_realtime": seconds / spool_wall, "send_x_realtime": seconds / send_wall,
            "flush_wall_s": spool_wall, "send_wall_s": send_wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10, help="audio per capture run")
    ap.add_argument("--deliver-minutes", type=float, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/spool.json")
    args = ap.parse_args()
    rows = []
    for rate, fmt in ((16000, "s16"), (48000, "f32")):
        for policy in (None, "never", "interval", "always"):
            seconds = args.minutes * 60 if policy != "always" else min(60.0, args.minutes * 60)
            runs = [capture(rate, fmt, seconds, policy) for _ in range(3)]
            best = sorted(runs, key=lambda r: r["cpu_us_per_block"])[1]  # the median
            rows.append(best)
            print(json.dumps(best), flush=True)
    base = {(r["rate"], r["format"]): r["cpu_us_per_block"] for r in rows
            if r["policy"].startswith("memory")}
    for r in rows:
        r["ratio_to_memory"] = r["cpu_us_per_block"] / base[(r["rate"], r["format"])]
    d = deliver(args.deliver_minutes)
    d["ratio_flush_to_send"] = d["flush_x_realtime"] / d["send_x_realtime"]
    print(json.dumps(d), flush=True)
    args.out.write_text(json.dumps({"capture": rows, "delivery": d}, indent=1))


if __name__ == "__main__":
    main()
