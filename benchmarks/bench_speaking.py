"""How many people can talk to one box: N real-time speaking streams with ``["vad", "asr"]``.

    python benchmarks/bench_speaking.py                       # default engine, N = 2, 4, 6 ...
    python benchmarks/bench_speaking.py --streams 8 12 16 --seconds 60
    python benchmarks/bench_speaking.py --engine faster-whisper \\
        --model tests/fixtures/tiny-whisper --batch 8         # and --batch 1: no batching
    python benchmarks/bench_speaking.py --json benchmarks/results/speaking.json

Each N starts a fresh ``earshot serve`` (``--asr-engine ENGINE`` and the options given;
``--asr-workers`` unset: one decoder per core) and N publishers. Every stream plays a
conversation of its own: the 14 utterances of the two speech fixtures (five LibriVox clips
of a human reading, tests/fixtures/librivox_16k.wav, and nine Festival sentences,
tests/fixtures/reading_16k.wav) in an order shuffled per stream, with pauses of 2 to 5 s
between them (about half the time talking, as one side of a conversation), sent in real
time in 20 ms blocks; starts are spread over the first second. Per N:

* end of speech → final, p50 / p95 / max: the final's arrival minus the true end of its
  utterance (includes the VAD's 300 ms of silence before it ends an utterance);
* finals missing (an utterance with no final), interims delivered and skipped, ``lag``
  events (the asr processor's: decodes waiting, interims skipped) and ``dropped`` events
  (a processor fell more than --max-lag behind and skipped audio);
* speculative second passes (two-pass finals): how many finals used one, how many were
  thrown away because speech resumed, and their decoding seconds;
* the server's CPU (user + system, all its processes: decoder children included) per
  second, per stream, and the N that would fill every core at that cost (``ceiling_n``: what
  an otherwise idle machine could hold at best), and the machine's load average.

N is **held** when every utterance gets its final, nothing is dropped and the final p95 is
at most 1.5 s. Without ``--streams`` N grows by 2 until two in a row fail. Numbers from a
shared machine are only comparable within one run (the load average is recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from earshot.client import Publisher  # noqa: E402
from helpers import FIXTURES, ServerProcess  # noqa: E402

RATE = 16000
HELD_P95 = 1.5  # seconds, end of speech → final
PAD = 0.15  # seconds of each utterance's own background kept around it


def utterances() -> list[np.ndarray]:
    """The fixtures' utterances, each with PAD seconds around its speech."""
    out = []
    for name in ("librivox_16k", "reading_16k"):
        meta = json.loads((FIXTURES / f"{name}.json").read_text())
        x, rate = sf.read(FIXTURES / f"{name}.wav", dtype="int16")
        assert rate == RATE
        pad = int(PAD * RATE)
        for s in meta["speech"]:
            out.append(x[max(0, s["start"] - pad): s["end"] + pad])
    return out


def conversation(k: int, seconds: float, pool: list[np.ndarray]) -> tuple[
        np.ndarray, list[float]]:
    """Stream ``k``'s audio (about ``seconds`` long) and the end of each utterance in it."""
    rng = random.Random(k)
    parts: list[np.ndarray] = []
    ends: list[float] = []
    pos = 0
    order: list[int] = []
    while pos < seconds * RATE:
        if not order:
            order = list(range(len(pool)))
            rng.shuffle(order)
        gap = np.zeros(int(rng.uniform(2.0, 5.0) * RATE), np.int16)
        utt = pool[order.pop()]
        parts += [gap, utt]
        pos += gap.size + utt.size
        ends.append((pos - int(PAD * RATE)) / RATE)
    parts.append(np.zeros(2 * RATE, np.int16))  # the last utterance ends before the stream
    return np.concatenate(parts), ends


async def one_stream(url: str, x: np.ndarray, ends: list[float], delay: float) -> dict[
        str, Any]:
    await asyncio.sleep(delay)
    got: dict[str, Any] = {"finals": [], "interims": 0, "lag": [], "dropped": 0,
                           "errors": []}
    pub = Publisher(url, rate=RATE, format="s16", processors=["vad", "asr"], language="en")
    await pub.start()
    t0 = time.monotonic()

    async def collect() -> None:
        async for e in pub.events():
            kind = e.get("type")
            if kind == "transcript":
                if e.get("final"):
                    got["finals"].append({**e, "arrived": time.monotonic() - t0})
                else:
                    got["interims"] += 1
            elif kind == "lag" and e.get("processor") == "asr":
                got["lag"].append(e)
            elif kind == "dropped":
                got["dropped"] += 1
            elif kind in ("error", "warning"):
                got["errors"].append(e)

    task = asyncio.create_task(collect())
    block = RATE // 50
    for i in range(0, len(x), block):
        await pub.send(x[i:i + block])
        await asyncio.sleep(max(0.0, t0 + (i + block) / RATE - time.monotonic()))
    await pub.stop(timeout=300)
    await task
    got["ends"] = ends
    return got


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its descendants (decoder children), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (OSError, IndexError, ValueError):
            continue
        todo += [int(c) for c in children]
    return total


def score(results: list[dict[str, Any]]) -> dict[str, Any]:
    latency: list[float] = []
    missing = 0
    for r in results:
        finals = r["finals"]
        for end in r["ends"]:  # the final whose end is nearest this utterance's true end
            near = [f for f in finals if abs(f["end"] - end) <= 1.0]
            if not near:
                missing += 1
                continue
            f = min(near, key=lambda f: abs(f["end"] - end))
            latency.append(f["arrived"] - end)
    unmatched = sum(1 for r in results for f in r["finals"]
                    if not any(abs(f["end"] - end) <= 1.0 for end in r["ends"]))
    lat = np.array(latency or [np.inf])
    lags = [e for r in results for e in r["lag"]]
    passes = [f["second_pass"] for r in results for f in r["finals"]
              if "speculative" in f.get("second_pass", {})]
    return {
        "utterances": sum(len(r["ends"]) for r in results), "finals_missing": missing,
        "finals_unmatched": unmatched,  # e.g. an utterance the VAD split in two
        "final_p50_s": round(float(np.percentile(lat, 50)), 3),
        "final_p95_s": round(float(np.percentile(lat, 95)), 3),
        "final_max_s": round(float(lat.max()), 3),
        "second_pass_p50_s": round(float(np.median(
            [f["second_pass"]["decode"] for r in results for f in r["finals"]
             if "second_pass" in f] or [0.0])), 3),
        # speculative second passes (decoded while the VAD waited): finals that used one,
        # finals that could have, decodes thrown away (speech resumed) and their seconds
        "speculative_hits": sum(1 for p in passes if p["speculative"]),
        "speculative_finals": len(passes),
        "speculative_misses": sum(int(p["misses"]) for p in passes),
        "speculative_wasted_s": round(sum(float(p["wasted"]) for p in passes), 3),
        "queue_p95_s": round(float(np.percentile(
            [f["queue"] for r in results for f in r["finals"]] or [0.0], 95)), 3),
        "interims": sum(r["interims"] for r in results),
        "interims_skipped": sum(int(e.get("interims_skipped", 0)) for e in lags),
        "lag_events": len(lags), "dropped_events": sum(r["dropped"] for r in results),
        "errors": sum(len(r["errors"]) for r in results),
        "error_samples": [{k: e.get(k) for k in ("type", "code", "message")}
                          for r in results for e in r["errors"]][:5],
    }


def run_n(n: int, seconds: float, opts: list[str], pool: list[np.ndarray]) -> dict[str, Any]:
    convs = [conversation(k, seconds, pool) for k in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", "--drain-timeout", "120", *opts).start(
            timeout=120)
        try:
            import httpx

            health = httpx.get(f"{server.http}/healthz").json()["asr"]
            assert server.proc is not None
            pid = server.proc.pid

            async def warm() -> None:  # the decoders start before the clock does
                await one_stream(server.url, np.zeros(RATE, np.int16), [], 0.0)

            asyncio.run(warm())
            cpu0, t0, load0 = cpu_seconds(pid), time.monotonic(), os.getloadavg()[0]

            async def all_streams() -> list[dict[str, Any]]:
                return await asyncio.gather(*(one_stream(server.url, x, ends, k / max(1, n))
                                              for k, (x, ends) in enumerate(convs)))

            results = asyncio.run(all_streams())
            wall = time.monotonic() - t0
            cpu = cpu_seconds(pid) - cpu0
        finally:
            server.stop()
    talk = sum(len(ends) for _, ends in convs)  # utterances in all
    total = sum(x.size for x, _ in convs) / RATE
    speech = talk * (sum(u.size for u in pool) / len(pool) / RATE - 2 * PAD)
    row = {"streams": n, **score(results), "server_cpu_cores": round(cpu / wall, 3),
           "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2),
           "workers": health.get("workers"), "batch": health.get("batch"),
           "two_pass": health.get("two_pass"), "engine": health.get("engine"),
           "seconds": round(wall, 1), "talk_fraction": round(speech / total, 2)}
    # the CPU one speaking stream costs the server (VAD and both passes included), and the
    # N that would fill every core with it: the ceiling on an otherwise idle machine
    row["cpu_per_stream"] = round(row["server_cpu_cores"] / n, 4)
    row["ceiling_n"] = int((os.cpu_count() or 1) / max(row["cpu_per_stream"], 1e-6))
    row["held"] = (row["finals_missing"] == 0 and row["dropped_events"] == 0
                   and row["final_p95_s"] <= HELD_P95)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", default="pocketsphinx")
    ap.add_argument("--model", help="--asr-model (faster-whisper: e.g. tests/fixtures/"
                                    "tiny-whisper, random weights: timing only)")
    ap.add_argument("--batch", type=int, help="--asr-batch (faster-whisper: 8 on, 1 off)")
    ap.add_argument("--workers", help="--asr-workers (unset: auto, one per core)")
    ap.add_argument("--final", choices=("whole", "incremental"), help="--asr-final")
    ap.add_argument("--streams", type=int, nargs="+",
                    help="the N to try (unset: 2, 4, 6, ... until two in a row fail)")
    ap.add_argument("--seconds", type=float, default=45.0, help="each stream's length")
    ap.add_argument("--json", help="write the results here (a JSON document)")
    args = ap.parse_args()
    opts = ["--asr-engine", args.engine]
    for flag, value in (("--asr-model", args.model), ("--asr-batch", args.batch),
                        ("--asr-workers", args.workers), ("--asr-final", args.final)):
        if value is not None:
            opts += [flag, str(value)]
    if args.engine == "faster-whisper":
        opts += ["--asr-language", "en"]
    label = " ".join(opts)
    pool = utterances()
    print(f"# earshot serve {label}; {len(pool)} utterances, {args.seconds:g} s a stream; "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}", flush=True)
    print("| N | held | final p50 / p95 / max s | missing | interims (skipped) | lag | dropped "
          "| server CPU cores (per stream) | load |")
    print("|---:|:---:|---:|---:|---:|---:|---:|---:|---:|")
    rows: list[dict[str, Any]] = []
    ns = list(args.streams or [])
    n, fails = 2, 0
    while True:
        if args.streams:
            if not ns:
                break
            n = ns.pop(0)
        r = run_n(n, args.seconds, opts, pool)
        rows.append(r)
        print(f"| {n} | {'yes' if r['held'] else 'no'} | {r['final_p50_s']:.2f} / "
              f"{r['final_p95_s']:.2f} / {r['final_max_s']:.2f} | {r['finals_missing']} "
              f"| {r['interims']} ({r['interims_skipped']}) | {r['lag_events']} "
              f"| {r['dropped_events']} | {r['server_cpu_cores']:.2f} "
              f"({r['cpu_per_stream']:.3f}) | {r['load_after']:.1f} |",
              flush=True)
        if r["speculative_finals"]:
            print(f"|   | speculative second pass used by {r['speculative_hits']} of "
                  f"{r['speculative_finals']} finals; {r['speculative_misses']} thrown away "
                  f"({r['speculative_wasted_s']:.2f} s of decoding) | | | | | | | |",
                  flush=True)
        if not args.streams:
            fails = 0 if r["held"] else fails + 1
            if fails >= 2:
                break
            n += 2
    held = [r["streams"] for r in rows if r["held"]]
    best = max(held) if held else 0
    print(f"highest N held (final p95 ≤ {HELD_P95} s, no final missing, nothing dropped): "
          f"{best or 'none'}")
    if args.json:
        doc = {"benchmark": "bench_speaking", "command": " ".join(sys.argv),
               "server_options": label, "cores": os.cpu_count(), "held_p95_s": HELD_P95,
               "seconds_per_stream": args.seconds, "highest_held": best, "rows": rows,
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
