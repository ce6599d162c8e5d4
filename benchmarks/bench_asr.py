"""Live speech-to-text latency and capacity through the real server.

    python benchmarks/bench_asr.py [--model tests/fixtures/tiny-whisper] [--streams 1 2 4 8]

For each N, N publishers stream the speech fixture (three phrases, 9.5 s) in real time with
``processors: ["asr"]`` against a fresh ``earshot serve --asr-model MODEL``. Per final:

* end of speech → final: arrival time minus the true end of the phrase (includes the VAD's
  300 ms minimum silence, which is the endpointing delay);
* pipeline overhead: that latency minus the minimum silence, the decode time and the queue
  wait — what earshot adds beyond endpointing and the model;
* real-time factor: decode time / utterance duration.

N is "sustained" when every final of every stream arrives and the p99 end-of-speech → final
latency stays under 2 s. A real model is used when --model names one that is present.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from earshot.client import Publisher  # noqa: E402
from helpers import FIXTURES, ServerProcess  # noqa: E402

TRUTH = json.loads((FIXTURES / "speech_16k.json").read_text())["speech"]
MIN_SILENCE = 0.3


async def one_stream(url: str, x: np.ndarray, rate: int) -> list[dict]:
    finals: list[dict] = []
    pub = Publisher(url, rate=rate, format="s16", processors=["asr"])
    await pub.start()
    t0 = time.monotonic()

    async def collect() -> None:
        async for e in pub.events():
            if e.get("type") == "transcript" and e.get("final"):
                e["arrived"] = time.monotonic() - t0
                finals.append(e)

    task = asyncio.create_task(collect())
    block = rate // 50
    for i in range(0, len(x), block):
        await pub.send(x[i:i + block])
        await asyncio.sleep(max(0.0, t0 + (i + block) / rate - time.monotonic()))
    await pub.stop(timeout=120)
    await task
    return finals


async def run(model: str, n: int) -> dict:
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", "--asr-model", model,
                               "--asr-language", "en").start()
        try:
            results = await asyncio.gather(*(one_stream(server.url, x, rate)
                                             for _ in range(n)))
        finally:
            server.stop()
    latency, overhead, rtf, missing = [], [], [], 0
    for finals in results:
        by_seg = {f["segment"]: f for f in finals}
        for k, truth in enumerate(TRUTH):
            f = by_seg.get(k)
            if f is None:
                missing += 1
                continue
            lat = f["arrived"] - truth["end_s"]
            latency.append(lat)
            overhead.append(lat - MIN_SILENCE - f["decode"] - f["queue"])
            rtf.append(f["decode"] / max(1e-6, f["end"] - f["start"]))
    row = {"model": model, "streams": n, "finals_missing": missing,
           "latency_p50_ms": 1000 * float(np.percentile(latency, 50)),
           "latency_p99_ms": 1000 * float(np.percentile(latency, 99)),
           "overhead_p50_ms": 1000 * float(np.percentile(overhead, 50)),
           "overhead_p99_ms": 1000 * float(np.percentile(overhead, 99)),
           "rtf_p50": float(np.percentile(rtf, 50))}
    row["sustained"] = missing == 0 and row["latency_p99_ms"] < 2000
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=str(FIXTURES / "tiny-whisper"))
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--json", help="append results here")
    args = ap.parse_args()
    if not Path(args.model).exists() and "/" in args.model:
        print(f"model {args.model} not present: skipped")
        return
    rows = []
    print("| model | streams | sustained | end of speech → final p50 / p99 ms "
          "| overhead beyond VAD silence + model p50 / p99 ms | RTF p50 |")
    print("|---|---:|:---:|---:|---:|---:|")
    for n in args.streams:
        r = asyncio.run(run(args.model, n))
        rows.append(r)
        print(f"| {Path(r['model']).name} | {n} | {'yes' if r['sustained'] else 'no'} "
              f"| {r['latency_p50_ms']:.0f} / {r['latency_p99_ms']:.0f} "
              f"| {r['overhead_p50_ms']:.0f} / {r['overhead_p99_ms']:.0f} "
              f"| {r['rtf_p50']:.3f} |", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
