"""Live speech-to-text: accuracy, latency and capacity through the real server.

    python benchmarks/bench_asr.py                        # the default engine (pocketsphinx)
    python benchmarks/bench_asr.py --streams 1 2 3 4 6
    python benchmarks/bench_asr.py --engine faster-whisper --model tests/fixtures/tiny-whisper \\
        --batch 8 --streams 1 4 8 12       # and --batch 1 for the same without batching

Each run starts a fresh ``earshot serve`` (with ``--asr-engine ENGINE`` and its options) and,
for each N, N publishers stream the real-words fixture (tests/fixtures/reading_16k.wav:
nine sentences, 28.4 s, Festival's HTS voice) in real time with ``["vad", "asr"]``, their
starts spread over one second. Per final:

* end of speech → final: arrival time minus the true end of the sentence (includes the
  VAD's 300 ms minimum silence, the endpointing delay);
* queue wait and decode time as the server reports them.

N is **sustained** when every final of every stream arrives and the end of speech → final
latency is at most 1.5 s at p95. The word error rate of the finals (streaming, N = 1) is
printed beside the same engine's on the whole file offline (pocketsphinx only: the tiny
Whisper model in the tests is random, its words are noise; it measures timing only).
The machine's load average is printed before and after: numbers from a shared machine are
only comparable within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from earshot.asr.wer import wer  # noqa: E402
from earshot.client import Publisher  # noqa: E402
from helpers import FIXTURES, ServerProcess  # noqa: E402

READING = json.loads((FIXTURES / "reading_16k.json").read_text())
TRUTH = READING["speech"]
SUSTAINED_P95 = 1.5


async def one_stream(url: str, x: np.ndarray, rate: int, delay: float) -> list[dict]:
    await asyncio.sleep(delay)
    finals: list[dict] = []
    pub = Publisher(url, rate=rate, format="s16", processors=["vad", "asr"], language="en")
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
    await pub.stop(timeout=300)
    await task
    return finals


async def run_n(server: ServerProcess, n: int) -> dict:
    x, rate = sf.read(FIXTURES / "reading_16k.wav", dtype="int16")
    results = await asyncio.gather(*(one_stream(server.url, x, rate, i / max(1, n))
                                     for i in range(n)))
    latency, queue, decode, batch, missing = [], [], [], [], 0
    for finals in results:
        by_seg = {f["segment"]: f for f in finals}
        for k, truth in enumerate(TRUTH):
            f = by_seg.get(k)
            if f is None:
                missing += 1
                continue
            latency.append(f["arrived"] - truth["end_s"])
            queue.append(f["queue"])
            decode.append(f["decode"])
            batch.append(f.get("batch", 1))
    lat = np.array(latency or [np.inf])
    row = {"streams": n, "finals_missing": missing,
           "latency_p50_s": float(np.percentile(lat, 50)),
           "latency_p95_s": float(np.percentile(lat, 95)),
           "latency_p99_s": float(np.percentile(lat, 99)),
           "queue_p50_s": float(np.percentile(queue or [0], 50)),
           "decode_p50_s": float(np.percentile(decode or [0], 50)),
           "batch_mean": float(np.mean(batch or [1])),
           "wer": wer(READING["text"], [f["text"] for f in sorted(
               results[0], key=lambda f: f["segment"])])}
    row["sustained"] = missing == 0 and row["latency_p95_s"] <= SUSTAINED_P95
    return row


def offline_wer(engine: str, model: str | None) -> float | None:
    if engine != "pocketsphinx":
        return None
    from earshot.asr.engine import EngineConfig, load_engine

    x, _ = sf.read(FIXTURES / "reading_16k.wav", dtype="float32")
    e = load_engine(EngineConfig(model=model or "en-us"), engine)
    try:
        return wer(READING["text"], e.transcribe(x, final=True).text)
    finally:
        e.close()  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="pocketsphinx")
    ap.add_argument("--model", help="--asr-model (pocketsphinx: en-us)")
    ap.add_argument("--batch", type=int, help="--asr-batch (faster-whisper: 8 on, 1 off)")
    ap.add_argument("--workers", type=int, help="--asr-workers")
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--json", help="append the rows here")
    args = ap.parse_args()
    opts = ["--asr-engine", args.engine]
    if args.model:
        opts += ["--asr-model", args.model]
    if args.batch is not None:
        opts += ["--asr-batch", str(args.batch)]
    if args.workers is not None:
        opts += ["--asr-workers", str(args.workers)]
    if args.engine == "faster-whisper":
        opts += ["--asr-language", "en"]
    label = " ".join(opts)
    print(f"# {label}; load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    off = offline_wer(args.engine, args.model)
    rows = []
    print("| streams | sustained | end of speech → final p50 / p95 / p99 s | queue p50 s "
          "| decode p50 s | mean batch | WER (stream 1) |")
    print("|---:|:---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", "--drain-timeout", "120", *opts).start(
            timeout=120)
        try:
            for n in args.streams:
                r = asyncio.run(run_n(server, n))
                r["options"] = label
                rows.append(r)
                print(f"| {n} | {'yes' if r['sustained'] else 'no'} "
                      f"| {r['latency_p50_s']:.2f} / {r['latency_p95_s']:.2f} / "
                      f"{r['latency_p99_s']:.2f} | {r['queue_p50_s']:.2f} "
                      f"| {r['decode_p50_s']:.2f} | {r['batch_mean']:.2f} "
                      f"| {r['wer']:.3f} |", flush=True)
        finally:
            server.stop()
    if off is not None:
        print(f"WER offline (whole file, one utterance): {off:.3f}; streaming (N=1): "
              f"{rows[0]['wer']:.3f}" if rows else "")
    sustained = [r["streams"] for r in rows if r["sustained"]]
    print(f"highest sustained N: {max(sustained) if sustained else 'none'}; load average "
          f"after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps({**r, "wer_offline": off}) + "\n")


if __name__ == "__main__":
    main()
