"""What a call's pure cores cost: python benchmarks/bench_mixer.py [--seconds 30].

In process, no sockets, CPU time (``time.process_time``), best of 3 runs:

* the room mixer (:class:`earshot.rooms.mixer.Mixer`) for rooms of 2, 4 and 8 seats at
  48 kHz: every seat pushes one 20 ms frame per tick, the room ticks every 20 ms; the cost
  per tick and per seat-tick, side by side with the baseline it should be judged against:
  one Opus encode and one Opus decode of a 20 ms frame at 48 kHz (PyAV's libopus, what the
  server does per participant per tick for the uplink and for the mix-minus); the ratio
  mixing / (encode + decode) per seat;
* the speaking side's :class:`earshot.rooms.echo.VoiceProcessor` (AEC3 + AGC2 + NS) per
  20 ms at 16 and 48 kHz, as a fraction of real time;
* Opus's algorithmic delay (``pre_skip``) per ``application`` at 48 kHz, the figure the
  latency budget needs;
* how long a seat's frame waits in the mixer (simulated time, 60 s per case, arrival
  phases 1, 6, 11, 16 and 19 ms before a tick, jitter drawn uniformly, in order as over
  one connection), against the baseline of the same :class:`earshot.client.jitter.JitterBuffer`
  fed on arrival and popped every tick (what the mixer did before it stamped frames with
  their tick): median and p95 wait, frames concealed.

Results: benchmarks/results/mixer.json (with the command that produced them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
RATE = 48000
T = 960


def voices(n: int, frames: int) -> list[np.ndarray]:
    x, rate = sf.read(FIXTURES / "reading_16k.wav", dtype="float32")
    x = soxr.resample(x, rate, RATE).astype(np.float32) * 0.5
    out = []
    for i in range(n):
        y = np.roll(x, i * 37_123)
        out.append(np.resize(y, frames))
    return out


def best(fn: Any, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times)


def bench_mixer(seats: int, ticks: int) -> dict[str, float]:
    from earshot.rooms.mixer import Mixer

    sig = voices(seats, ticks * T)

    def run() -> None:
        m = Mixer(origin=0.0, max_seats=seats)
        for i in range(seats):
            m.add_seat(f"p{i}", RATE)
        for k in range(ticks):
            now = k * 0.02
            for i in range(seats):
                m.push(f"p{i}", k * T, sig[i][k * T:(k + 1) * T], now + 0.001)
            m.tick(now + 0.002)

    cpu = best(run)
    return {"seats": seats, "ticks": ticks, "us_per_tick": cpu / ticks * 1e6,
            "us_per_seat_tick": cpu / ticks / seats * 1e6,
            "cores_per_room": cpu / (ticks * 0.02)}


def bench_opus(ticks: int) -> dict[str, float]:
    from earshot.codec.opus import OpusDecoder, OpusEncoder

    x = voices(1, ticks * T)[0].reshape(-1, 1)
    packets: list[bytes] = []

    def enc() -> None:
        e = OpusEncoder(RATE, 1, application="voip")
        packets.clear()
        for k in range(ticks):
            packets.extend(e.encode(x[k * T:(k + 1) * T]))

    def dec() -> None:
        d = OpusDecoder(RATE, 1)
        for p in packets:
            d.decode(p)

    e, d = best(enc), best(dec)
    delays = {}
    for app in ("voip", "audio", "lowdelay"):
        pre = OpusEncoder(RATE, 1, application=app).pre_skip  # type: ignore[arg-type]
        delays[app] = {"pre_skip": pre, "ms": pre * 1000 / RATE}
    return {"encode_us_per_frame": e / ticks * 1e6, "decode_us_per_frame": d / len(packets)
            * 1e6, "lookahead": delays}


def bench_echo(seconds: float) -> list[dict[str, float]]:
    from earshot.rooms.echo import VoiceProcessor

    out = []
    for rate in (16000, 48000):
        f = rate // 100
        n = int(seconds * rate) // (2 * f) * (2 * f)
        x = soxr.resample(voices(1, int(seconds * RATE) + RATE)[0], RATE, rate)
        near, far = x[:n].astype(np.float32), np.roll(x, 9000)[:n].astype(np.float32)

        def run(near: np.ndarray = near, far: np.ndarray = far, rate: int = rate,
                f: int = f) -> None:
            vp = VoiceProcessor(rate)
            for i in range(0, len(near), 2 * f):  # 20 ms callbacks
                vp.process_reverse(far[i:i + 2 * f])
                vp.process(near[i:i + 2 * f])

        cpu = best(run)
        out.append({"rate": rate, "us_per_20ms": cpu / (n / (2 * f)) * 1e6,
                    "fraction_of_real_time": cpu / (n / rate)})
    return out


def _arrivals(phase: float, jitter: Any, n: int) -> np.ndarray:
    t = (np.arange(n) + 1) * 0.02 + phase + jitter
    return np.maximum.accumulate(t)  # in order: one connection


def bench_wait(seconds: float = 60.0) -> list[dict[str, Any]]:
    from earshot.client.jitter import JitterBuffer
    from earshot.rooms.mixer import Mixer

    n = int(seconds / 0.02)
    x = voices(1, n * T)[0]
    cases = {"none": lambda r: np.zeros(n), "0-2 ms": lambda r: r.uniform(0, 0.002, n),
             "0-5 ms": lambda r: r.uniform(0, 0.005, n),
             "0-10 ms": lambda r: r.uniform(0, 0.010, n),
             "0-30 ms": lambda r: r.uniform(0, 0.030, n)}
    out = []
    for name, draw in cases.items():
        rng = np.random.default_rng(7)
        rows: dict[str, list[tuple[float, float, int]]] = {"mixer": [], "baseline": []}
        for phase in (0.001, 0.006, 0.011, 0.016, 0.019):
            arr = _arrivals(phase, draw(rng), n)
            ticks = np.arange(n + 10) * 0.02
            for kind in rows:
                waits: list[float] = []
                if kind == "mixer":
                    m = Mixer(origin=0.0)
                    m.add_seat("a", RATE)
                    m.add_seat("b", RATE)
                    i = 0
                    for tk in ticks:
                        while i < n and arr[i] <= tk:
                            m.push("a", i * T, x[i * T:(i + 1) * T], float(arr[i]))
                            i += 1
                        for t in m.tick(float(tk)):
                            p = t.positions["a"]
                            if p is not None and t.t > 5:
                                waits.append(t.t - arr[p // T])
                    concealed = m.stats("a").jitter.concealed_frames
                else:
                    jb = JitterBuffer(RATE, T, min_delay=0.0, max_delay=0.2,
                                      initial_delay=0.04)
                    i = 0
                    for tk in ticks:
                        while i < n and arr[i] <= tk:
                            jb.push(i * T, T, None, float(arr[i]))
                            i += 1
                        play = jb.pop(float(tk))
                        if play.media_offset is not None and play.kind == "audio" and tk > 5:
                            waits.append(tk - arr[play.media_offset // T])
                    concealed = jb.stats.concealed_frames
                w = np.array(waits) * 1000
                rows[kind].append((float(np.median(w)), float(np.percentile(w, 95)),
                                   concealed))
        for kind, r in rows.items():
            out.append({"jitter": name, "path": kind,
                        "wait_p50_ms": float(np.mean([a for a, _, _ in r])),
                        "wait_p95_ms": float(np.mean([b for _, b, _ in r])),
                        "concealed_frames": int(sum(c for _, _, c in r)),
                        "frames": 5 * n})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mixer.json")
    args = ap.parse_args()
    ticks = int(args.seconds / 0.02)
    opus = bench_opus(ticks)
    rooms = [bench_mixer(n, ticks) for n in (2, 4, 8)]
    per_frame = opus["encode_us_per_frame"] + opus["decode_us_per_frame"]
    for r in rooms:
        r["ratio_to_opus_encode_plus_decode"] = r["us_per_seat_tick"] / per_frame
        # the server's work per participant per tick: its uplink decoded, its share of the
        # mix, its mix-minus encoded
        r["server_cores_per_participant"] = (r["us_per_seat_tick"] + per_frame) / 20_000
    result = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "python": sys.version.split()[0],
        "opus": opus,
        "mixer": rooms,
        "voice_processor": bench_echo(min(args.seconds, 10.0)),
        "mixer_wait": bench_wait(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
