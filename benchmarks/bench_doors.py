"""Per-message cost of the doors' cores, side by side with the native ingest core.

    python benchmarks/bench_doors.py [--iterations N] [--out benchmarks/results/doors.json]

Each row is the mean µs a core spends on one audio message of a real client's cadence
(best of 3 runs), and its ratio to the native ``IngestConnection.receive_bytes`` on the
same audio (20 ms of 16 kHz s16 in one binary message): what a door adds on the hot path
before the shared ingest path takes over. The event rows map one interim ``transcript``
event (what a stream gets ~2 per second while someone speaks) against the native cost of
serialising it (orjson, as the server does).
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from earshot.audio import StreamSpec
from earshot.integrations.deepgram import DeepgramLive, parse_listen_query
from earshot.integrations.openai_realtime import RealtimeSession, counting_ids
from earshot.integrations.wyoming import (
    AsrModelInfo,
    WyomingInfo,
    WyomingReader,
    WyomingSession,
    encode_event,
)
from earshot.wire.ingest import IngestConnection, Limits

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from door_events import interim


def bench(step: Callable[[int], object], iterations: int, repeats: int = 3) -> float:
    for i in range(min(500, iterations)):
        step(i)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(iterations):
            step(i)
        runs.append((time.perf_counter() - t0) / iterations * 1e6)
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    n = args.iterations
    rng = np.random.default_rng(0)
    pcm16k = (rng.standard_normal(320) * 3000).astype("<i2").tobytes()  # 20 ms, 16 kHz

    native = IngestConnection(Limits(), compat=StreamSpec("s16", 16000, 1))
    native.receive_bytes(pcm16k)
    native.accept("s1", "t", 0)
    rows: dict[str, float] = {}
    rows["native ingest, 20 ms s16 16 kHz"] = bench(lambda i: native.receive_bytes(pcm16k), n)

    dg = DeepgramLive(parse_listen_query([("encoding", "linear16"), ("sample_rate", "16000")]),
                      request_id="r", created="c", now=0.0)
    rows["deepgram linear16, 20 ms 16 kHz"] = bench(
        lambda i: dg.receive_bytes(pcm16k, i * 0.02), n)
    mulaw = bytes(rng.integers(0, 256, 160, dtype=np.uint8))  # 20 ms, 8 kHz
    dgm = DeepgramLive(parse_listen_query([("encoding", "mulaw"), ("sample_rate", "8000")]),
                       request_id="r", created="c", now=0.0)
    rows["deepgram mulaw, 20 ms 8 kHz"] = bench(lambda i: dgm.receive_bytes(mulaw, i * 0.02), n)

    rt = RealtimeSession(session_id="s", created=0, ids=counting_ids())
    pcm24k = (rng.standard_normal(960) * 3000).astype("<i2").tobytes()  # 40 ms, 24 kHz
    append = json.dumps({"type": "input_audio_buffer.append",
                         "audio": base64.b64encode(pcm24k).decode()})
    rows["openai realtime append, 40 ms 24 kHz"] = bench(lambda i: rt.receive_text(append), n)

    info = WyomingInfo(models=(AsrModelInfo("m", ("en",)),), version="0")
    wy = WyomingSession(info)
    reader = WyomingReader()
    fmt = {"rate": 16000, "width": 2, "channels": 1}
    wy.receive(reader.feed(encode_event("audio-start", fmt))[0])
    chunk = encode_event("audio-chunk", fmt, pcm16k)

    def wyoming(i: int) -> None:
        for e in reader.feed(chunk):
            wy.receive(e)

    rows["wyoming audio-chunk (framing + session), 20 ms"] = bench(wyoming, n)

    ev = interim(0, "the birch canoe slid on the smooth", "the birch canoe slid", 0.5, 2.0)
    ev_stream = {**ev, "segment": 0}
    rows["native event, orjson of an interim transcript"] = bench(
        lambda i: orjson.dumps(ev_stream), n)
    dge = DeepgramLive(parse_listen_query([("encoding", "linear16"), ("sample_rate", "16000"),
                                           ("interim_results", "true")]),
                       request_id="r", created="c", now=0.0)
    rows["deepgram Results from an interim"] = bench(lambda i: dge.on_event(ev), n)
    rte = RealtimeSession(session_id="s", created=0, ids=counting_ids())
    rte.receive_text(append)
    rows["openai delta from an interim"] = bench(lambda i: rte.on_event(ev), n)

    base_audio = rows["native ingest, 20 ms s16 16 kHz"]
    base_event = rows["native event, orjson of an interim transcript"]
    print(f"{'core':<52}{'µs':>8}{'x native':>10}")
    ratios = {}
    for name, us in rows.items():
        base = base_event if ("event" in name or "from an interim" in name) else base_audio
        ratios[name] = round(us / base, 1)
        print(f"{name:<52}{us:>8.2f}{ratios[name]:>10.1f}")
    if args.out:
        args.out.write_text(json.dumps({
            "tool": "benchmarks/bench_doors.py", "command": " ".join(sys.argv),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": platform.python_version(),
            "machine": platform.machine(), "iterations": n,
            "us_per_message": {k: round(v, 3) for k, v in rows.items()},
            "ratio_to_native": ratios}, indent=1) + "\n")


if __name__ == "__main__":
    main()
