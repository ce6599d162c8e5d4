"""Calls end to end: mouth-to-ear latency through one gateway, and 4-person rooms per box.

Latency: participant A's microphone callback (``Call.tick``'s ``mic``) sends a 10 ms burst
every 0.5 s into silence; participant B's speaker callback (``on_audio``) finds each burst's
onset. Mouth time of a sample: the callback that delivered it, minus how far from the end of
its 20 ms frame it lies (it was captured that long before); ear time: the callback that is
handed it, plus its place in the frame (it plays that much later). Device buffers are not
included (there are none), the 20 ms framing on both sides is. A and B run in one process
(own event loop, own clocks), the gateway in another (``earshot serve``, loopback).

Two gateways (``--two-gateways``): a redis-server and two ``earshot serve --bus redis://…``
sharing a data directory; the room is held by gateway 1 (its first participant joins
there). Measured the same way, three times: both participants on gateway 1 (the baseline,
with the Redis bus), the mouth on gateway 2 (its audio reaches the mix through the relay),
the ear on gateway 2 (its mix comes back through the relay). Results go to
``calls-two-gateways.json``; the capacity runs are skipped.

Capacity: N rooms of 4 bot participants each (a bot process per room), each sending
16-bit PCM at 48 kHz in real time; for each N: the gateway's CPU (its process's, per
participant), the mixer's counters per seat (concealed, stale: audio that came too late for
the live mix), the loop lag, and whether every archive holds exactly what its bot sent.

    python benchmarks/bench_calls.py                       # → benchmarks/results/calls.json
    python benchmarks/bench_calls.py --rooms 1 4 8 --seconds 10
    python benchmarks/bench_calls.py --two-gateways --latency-seconds 20
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
from typing import Any

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from earshot.call import Call  # noqa: E402
from earshot.errors import ClientError  # noqa: E402
from helpers import ServerProcess  # noqa: E402

RATE = 48000
FRAME = 960


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def latency(url: str, seconds: float, *, ear_url: str | None = None,
                  room: str = "bench-latency") -> dict[str, Any]:
    """The ear joins first (through ``ear_url``, else ``url``), then the mouth (``url``)."""
    burst = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(480) / RATE)).astype(np.float32)
    period = RATE // 2  # a burst every 0.5 s
    sent: list[float] = []  # mouth times of the bursts' first samples
    heard: list[float] = []
    pos = 0

    def mic(n: int) -> np.ndarray:
        nonlocal pos
        now = time.monotonic()
        x = np.zeros(n, np.float32)
        for i in range(n):
            if (pos + i) % period == 0 and pos + i > RATE:  # after the first second
                k = min(len(burst), n - i)
                x[i:i + k] = burst[:k]
                sent.append(now - (n - i) / RATE)
        pos += n
        return x

    quiet = [True]

    def speaker(frame: np.ndarray) -> None:
        now = time.monotonic()
        loud = np.flatnonzero(np.abs(frame) > 0.1)
        if len(loud) and quiet[0]:
            heard.append(now + loud[0] / RATE)
            quiet[0] = False
        elif not len(loud) and np.max(np.abs(frame)) < 0.01:
            quiet[0] = True

    async with Call(ear_url or url, room, "ear", rate=RATE, on_audio=speaker) as ear, \
            Call(url, room, "mouth", rate=RATE, mic=mic):
        await asyncio.sleep(seconds)
        stats = ear.jb.stats
    lat = []
    for t in heard:  # each onset against the burst sent just before it
        before = [s for s in sent if s <= t]
        if before and t - before[-1] < 0.45:
            lat.append((t - before[-1]) * 1000)
    a = np.array(lat)
    return {"bursts_sent": len(sent), "bursts_heard": len(lat),
            "median_ms": round(float(np.median(a)), 1) if len(a) else None,
            "p95_ms": round(float(np.percentile(a, 95)), 1) if len(a) else None,
            "min_ms": round(float(a.min()), 1) if len(a) else None,
            "max_ms": round(float(a.max()), 1) if len(a) else None,
            "hearing_jitter_buffer": {"target_delay_ms": round(stats.target_delay * 1000, 1),
                                      "concealed_ms": stats.concealed_ms,
                                      "accelerated_frames": stats.accelerated_frames}}


def voice(room: int, p: int, seconds: float) -> np.ndarray:
    """Bot ``p`` of room ``room``'s voice: noise, exactly representable in 16 bits."""
    rng = np.random.default_rng(1000 * room + p)
    x = (0.1 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)
    return (np.round(x * 32768) / 32768).astype(np.float32)


async def bot_room(url: str, room: int, seconds: float) -> None:
    """One room's 4 bots, in this process (``--bot-room``): join, say "joined", talk for
    ``seconds``, leave, print their streams as JSON."""
    calls = []
    for p in range(4):
        x = voice(room, p, seconds)
        pos = [0]

        def mic(n: int, x: np.ndarray = x, pos: list[int] = pos) -> np.ndarray | None:
            chunk = x[pos[0]:pos[0] + n]
            pos[0] += len(chunk)
            return chunk if len(chunk) else None

        calls.append(Call(url, f"room{room}", f"p{p}", rate=RATE, mic=mic, processors=()))
    for c in calls:
        await c.join()
    print("joined", flush=True)
    await asyncio.sleep(seconds + 0.5)
    for c in calls:
        await c.leave()
    print(json.dumps({f"p{i}": c.stream for i, c in enumerate(calls)}), flush=True)


async def rooms_run(srv: ServerProcess, rooms: int, seconds: float) -> dict[str, Any]:
    """``rooms`` rooms of 4 bots, one bot process per room (the load generator must not be
    what falls behind)."""
    import subprocess

    assert srv.proc is not None
    procs = [subprocess.Popen([sys.executable, __file__, "--bot-room", str(r), "--url",
                               srv.url, "--seconds", str(seconds)], stdout=subprocess.PIPE,
                              text=True) for r in range(rooms)]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "joined":
                raise ClientError(f"a bot room did not join: {line!r}")
        window = max(1.0, seconds - 1.0)
        cpu0, t0 = cpu_seconds(srv.proc.pid), time.monotonic()
        await asyncio.sleep(window)
        cpu1, t1 = cpu_seconds(srv.proc.pid), time.monotonic()
        seats = []
        async with httpx.AsyncClient(timeout=60) as http:
            for r in range(rooms):
                state = (await http.get(f"{srv.http}/api/rooms/room{r}")).json()
                seats += [p["mix"] for p in state["participants"] if "mix" in p]
                if not state["participants"]:
                    print("empty room", r, state, file=sys.stderr)
            health = (await http.get(srv.http + "/healthz")).json()
        streams: dict[str, str] = {}
        for r, p in enumerate(procs):
            out, _ = p.communicate(timeout=120)
            for name, sid in json.loads(out.strip().splitlines()[-1]).items():
                streams[f"{r}/{name}"] = sid
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    exact = 0
    for key, sid in streams.items():
        room, name = key.split("/")
        rec = httpx.get(f"{srv.http}/api/streams/{sid}", timeout=60).json()
        y, _ = sf.read(srv.data_dir / rec["path"], dtype="float32")
        x = voice(int(room), int(name[1:]), seconds)
        exact += int(len(y) == len(x) and np.array_equal(y, x))
    cores = (cpu1 - cpu0) / (t1 - t0)
    n = rooms * 4
    return {"rooms": rooms, "participants": n, "server_cores": round(cores, 3),
            "server_cores_per_participant": round(cores / n, 4),
            "rooms_per_core_estimate": round(1 / (4 * cores / n), 1) if cores else None,
            "mixer_concealed_ms_max": max((s["concealed_ms"] for s in seats), default=None),
            "mixer_stale_frames_total": sum(s["stale"] for s in seats),
            "loop_lag": health.get("admission", {}).get("loop_lag"),
            "archives_exact": f"{exact}/{n}"}


def _about() -> dict[str, Any]:
    return {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg()[0]}


async def two_gateways(args: argparse.Namespace) -> dict[str, Any]:
    """Mouth-to-ear with the room held on gateway 1, each participant on either gateway."""
    from redis_helpers import RedisServer

    about = _about()
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        gws = []
        try:
            for _ in range(2):
                gws.append(ServerProcess(Path(tmp) / "data", "--bus", redis.url,
                                         "--max-loop-lag", "0").start())
            gw1, gw2 = gws
            runs = {"both_on_gateway_1": (gw1.url, gw1.url),
                    "mouth_on_gateway_2": (gw2.url, gw1.url),
                    "ear_on_gateway_2": (gw1.url, gw2.url)}
            out = {}
            for i, (label, (mouth, ear)) in enumerate(runs.items()):
                # the ear joins first, on gateway 1 except in the last run: there the room
                # must still be held by gateway 1, so a participant of gateway 1 holds it
                if label == "ear_on_gateway_2":
                    async with Call(gw1.url, f"bench-latency-{i}", "holder", rate=RATE,
                                    processors=()):
                        out[label] = await latency(mouth, args.latency_seconds, ear_url=ear,
                                                   room=f"bench-latency-{i}")
                else:
                    out[label] = await latency(mouth, args.latency_seconds, ear_url=ear,
                                               room=f"bench-latency-{i}")
                print(label, json.dumps(out[label]), file=sys.stderr)
        finally:
            for g in gws:
                g.stop()
            redis.stop()
    return {**about, "room_held_by": "gateway 1", "mouth_to_ear_two_gateways": out}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if args.two_gateways:
        return await two_gateways(args)
    with tempfile.TemporaryDirectory() as tmp:
        # admission by loop lag off: this measures where the mix stops keeping up
        srv = ServerProcess(Path(tmp) / "data", "--max-loop-lag", "0").start()
        try:
            lat = await latency(srv.url, args.latency_seconds)
            capacity = []
            for n in args.rooms:
                try:
                    capacity.append(await rooms_run(srv, n, args.seconds))
                except ClientError as exc:
                    capacity.append({"rooms": n, "refused": str(exc)})
                    break
        finally:
            srv.stop()
    return {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg()[0],
            "mouth_to_ear_one_gateway": lat, "capacity_4_person_rooms": capacity}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rooms", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--two-gateways", action="store_true",
                    help="mouth-to-ear through two gateways on a Redis bus (needs "
                    "redis-server); results in calls-two-gateways.json")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--bot-room", type=int, help=argparse.SUPPRESS)  # a bot process
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bot_room is not None:
        asyncio.run(bot_room(args.url, args.bot_room, args.seconds))
        return
    if args.out is None:
        name = "calls-two-gateways.json" if args.two_gateways else "calls.json"
        args.out = ROOT / "benchmarks" / "results" / name
    result = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
