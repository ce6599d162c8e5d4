"""The cluster end to end: real redis-server, gateways and workers as separate processes.

Issue 9's must-shows: two gateways and three workers on twenty real-time streams; a
worker killed (-9) and its streams taken over; a gateway killed and its clients resumed on
the other; replay; Redis killed and restarted; the README's plain redis-py consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from earshot.client import Reconnect
from helpers import FIXTURES, ROOT, CutProxy, ServerProcess, of, stream_file
from redis_helpers import RedisServer, wait_balanced

pytestmark = pytest.mark.slow
TRUTH = json.loads((FIXTURES / "speech_16k.json").read_text())["speech"]
SPEECH, RATE = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")


def archive(gw: ServerProcess, sid: str) -> np.ndarray:
    rec = httpx.get(f"{gw.http}/api/streams/{sid}", timeout=10).json()
    return sf.read(gw.data_dir / rec["path"], dtype="int16")[0]


def check_phrases(events: list[dict], *, tolerance: float = 0.15) -> None:
    """Exactly one speech_start, speech_end and segment per phrase of the fixture."""
    starts, ends = of(events, "speech_start"), of(events, "speech_end")
    segs = sorted(of(events, "segment"), key=lambda s: s["start_frame"])  # cut in parallel
    assert len(ends) == len(segs) == len(TRUTH), [(e["type"], e.get("t")) for e in events
                                                   if e["type"] != "level"]
    assert len(starts) == len(TRUTH)
    for end, seg, truth in zip(ends, segs, TRUTH, strict=True):
        assert abs(end["start"] - truth["start_s"]) <= tolerance, (end, truth)
        assert abs(end["end"] - truth["end_s"]) <= tolerance, (end, truth)
        assert seg["start_frame"] == round(end["start"] * RATE)
    assert len({s["segment"] for s in segs}) == len(segs)


def check_levels(events: list[dict], *, after: float = 0.0) -> list[float]:
    ts = [e["t"] for e in of(events, "level") if e["t"] >= after]
    assert ts == sorted(ts) and len(set(ts)) == len(ts), "levels repeated or out of order"
    return ts


async def subscribe_all(url: str, out: list[dict], ready: asyncio.Event) -> None:
    async with connect(url.replace("/ws", "/ws/subscribe?stream=*")) as ws:
        async for msg in ws:
            e = json.loads(msg)
            if e.get("type") == "subscribed":
                ready.set()
            out.append(e)


async def test_two_gateways_three_workers_twenty_streams(
        tmp_path: Path, redis_server: RedisServer, workers: Any) -> None:
    data = tmp_path / "data"
    bus = redis_server.url
    a = ServerProcess(data, "--bus", bus).start()
    b = ServerProcess(data, "--bus", bus).start()
    try:
        workers(bus, "vad", name="vad-1")
        workers(bus, "vad", name="vad-2")
        workers(bus, "level", name="level-1")
        r = redis_server.client()
        await asyncio.to_thread(wait_balanced, r, "vad", 2)
        await asyncio.to_thread(wait_balanced, r, "level", 1)
        seen_on_b: list[dict] = []
        ready = asyncio.Event()
        sub = asyncio.create_task(subscribe_all(b.url, seen_on_b, ready))
        await asyncio.wait_for(ready.wait(), 10)
        gws = [a if i % 2 == 0 else b for i in range(20)]
        results = await asyncio.gather(*(
            stream_file(gw.url, SPEECH, RATE, processors=["vad", "level"], realtime=True,
                        block_s=0.1, name=f"s{i}") for i, gw in enumerate(gws)))
        await asyncio.sleep(1.0)
        sub.cancel()
        vad_workers: set[str] = set()
        for gw, (pub, events, _) in zip(gws, results, strict=True):
            assert np.array_equal(archive(gw, pub.stream_id), SPEECH)
            check_phrases(events)
            assert len(check_levels(events)) >= 0.9 * len(SPEECH) / RATE / 0.05
            by = {e["worker"] for e in events if e["type"] in ("speech_start", "speech_end")}
            assert len(by) == 1, f"stream {pub.stream_id} processed by {by}"
            vad_workers |= by
        assert vad_workers == {"vad-1", "vad-2"}  # the streams were shared
        # a '*' subscriber on B saw the events of the streams held by A
        for gw, (pub, _, _) in zip(gws, results, strict=True):
            if gw is a:
                mine = [e for e in seen_on_b if e.get("stream") == pub.stream_id]
                assert len(of(mine, "speech_end")) == len(of(mine, "segment")) == len(TRUTH)
                assert of(mine, "level")
    finally:
        a.stop()
        b.stop()


async def test_a_killed_worker_s_streams_are_taken_over(
        tmp_path: Path, redis_server: RedisServer, workers: Any) -> None:
    bus = redis_server.url
    gw = ServerProcess(tmp_path / "data", "--bus", bus).start()
    try:
        started = {name: workers(bus, "vad", name=name, lease_ttl=3.0)
                   for name in ("vad-1", "vad-2")}
        r = redis_server.client()
        before = await asyncio.to_thread(wait_balanced, r, "vad", 2)
        streams = [asyncio.create_task(stream_file(
            gw.url, SPEECH, RATE, processors=["vad"], realtime=True, block_s=0.1))
            for _ in range(10)]
        await asyncio.sleep(2.0)  # inside the first phrase (0.80 - 3.39 s)
        # the worker to kill: the one holding the partitions of most of the live streams
        # (a fixed one may hold none of them when the leases sit unevenly: 10 streams on
        # 16 partitions)
        live = [s["id"] for s in httpx.get(f"{gw.http}/api/streams", timeout=10).json()[
            "streams"] if s["state"] == "live"]
        assert len(live) == 10, live
        on = Counter(before[zlib.crc32(sid.encode()) % 16] for sid in live)
        doomed_name = max(started, key=lambda name: on[name])
        survivor = next(name for name in started if name != doomed_name)
        started[doomed_name].kill9()
        killed = time.monotonic()
        holders = await asyncio.to_thread(wait_balanced, r, "vad", 1, timeout=10)
        took = time.monotonic() - killed
        print(f"takeover: every partition held by {set(holders.values())} {took:.2f} s "
              f"after the kill of {doomed_name} ({on[doomed_name]} of the streams)")
        assert took < 5.0
        results = await asyncio.gather(*streams)
        taken = 0
        for pub, events, _ in results:
            assert np.array_equal(archive(gw, pub.stream_id), SPEECH)
            check_phrases(events)  # nothing lost, nothing duplicated
            by = [e["worker"] for e in events if e["type"] in ("speech_start", "speech_end")]
            if before[zlib.crc32(pub.stream_id.encode()) % 16] == doomed_name:
                taken += 1
                assert by[-1] == survivor and set(by[1:]) <= {survivor}, by
            else:
                assert set(by) == {survivor}, by
        assert taken == on[doomed_name] >= 5, (taken, on)
        assert int(r.hget("earshot:stats", "takeovers:vad") or 0) >= 1
        deadline = time.monotonic() + 10  # the gateway refreshes what it shows every 1.25 s
        while True:
            metrics = httpx.get(f"{gw.http}/metrics").text
            takeovers = re.search(r'earshot_bus_takeovers_total\{processor="vad"\} (\S+)',
                                  metrics)
            if (takeovers and float(takeovers.group(1)) >= 1) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert "earshot_bus_up 1.0" in metrics
        assert takeovers and float(takeovers.group(1)) >= 1, metrics
    finally:
        gw.stop()


async def test_a_killed_gateway_s_clients_resume_on_the_other(
        tmp_path: Path, redis_server: RedisServer, workers: Any) -> None:
    data = tmp_path / "data"
    bus = redis_server.url
    a = ServerProcess(data, "--bus", bus).start()
    b = ServerProcess(data, "--bus", bus).start()
    workers(bus, "vad", "level", name="w")
    await asyncio.to_thread(wait_balanced, redis_server.client(), "level", 1)
    try:
        async with CutProxy(a.port, b.port) as lb:  # a balancer that fails over to B
            streams = [asyncio.create_task(stream_file(
                lb.url, SPEECH, RATE, processors=["vad", "level"], realtime=True,
                block_s=0.1, reconnect=Reconnect(initial=0.2, maximum=1.0)))
                for _ in range(4)]
            await asyncio.sleep(4.0)
            a.kill9()
            results = await asyncio.gather(*streams)
        for pub, events, _ in results:
            assert pub.reconnects >= 1
            assert np.array_equal(archive(b, pub.stream_id), SPEECH)
            late = check_levels(events, after=6.0)
            assert late, "no level events after the resume on B"
            assert of(events, "speech_end")[-1]["end"] == pytest.approx(TRUTH[-1]["end_s"],
                                                                         abs=0.15)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # the phrase cut by the crash: job fallback
                segs = httpx.get(f"{b.http}/api/streams/{pub.stream_id}/segments").json()
                if len(segs["segments"]) >= len(TRUTH) - 1:
                    break
                await asyncio.sleep(0.2)
            assert len(segs["segments"]) >= len(TRUTH) - 1
    finally:
        a.stop()
        b.stop()


async def test_replay_finds_the_live_segments(
        tmp_path: Path, redis_server: RedisServer, workers: Any) -> None:
    bus = redis_server.url
    gw = ServerProcess(tmp_path / "data", "--bus", bus).start()
    try:
        workers(bus, "vad", name="w")
        await asyncio.to_thread(wait_balanced, redis_server.client(), "vad", 1)
        # (sent faster than real time: the worker's segments are stored all the same)
        pub, events, _ = await stream_file(gw.url, SPEECH, RATE, processors=["vad"],
                                           realtime=False, block_s=0.1)
        check_phrases(events)
        live = httpx.get(f"{gw.http}/api/streams/{pub.stream_id}/segments").json()["segments"]
        out = subprocess.run(
            [sys.executable, "-m", "earshot.cli", "replay", pub.stream_id, "--processor", "vad",
             "--url", gw.url, "--json"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        replayed = result["segments"]
        assert [(s["start_frame"], s["end_frame"], s["segment"]) for s in replayed] == \
            [(s["start_frame"], s["end_frame"], s["segment"]) for s in live]
        assert all(e.get("replay") for e in result["events"])
        after = httpx.get(f"{gw.http}/api/streams/{pub.stream_id}/segments").json()
        assert len(after["segments"]) == len(live)  # nothing stored twice
        bad = httpx.post(f"{gw.http}/api/streams/{pub.stream_id}/replay?processor=nope")
        assert bad.status_code == 400 and "nope" in bad.json()["detail"]
    finally:
        gw.stop()


async def test_redis_down_never_stops_capture(
        tmp_path: Path, redis_server: RedisServer, workers: Any) -> None:
    bus = redis_server.url
    gw = ServerProcess(tmp_path / "data", "--bus", bus).start()
    try:
        workers(bus, "level", name="w")
        await asyncio.to_thread(wait_balanced, redis_server.client(), "level", 1)
        twice = np.concatenate([SPEECH, SPEECH])  # 19 s
        streams = [asyncio.create_task(stream_file(
            gw.url, twice, RATE, processors=["level"], realtime=True, block_s=0.1))
            for _ in range(2)]
        await asyncio.sleep(2.5)
        redis_server.kill9()
        t_kill = time.monotonic()
        states = []
        while time.monotonic() < t_kill + 2.0:
            states.append(await asyncio.to_thread(
                lambda: httpx.get(f"{gw.http}/healthz").json()))
            await asyncio.sleep(0.1)
        redis_server.start()  # the same port, empty: groups, leases and log start again
        back = time.monotonic() - t_kill + 2.5  # stream time when Redis was back
        results = await asyncio.gather(*streams)
        assert any(s["status"] == "degraded" and s["bus"]["state"] == "degraded"
                   for s in states), states[-1]
        for pub, events, _ in results:
            assert np.array_equal(archive(gw, pub.stream_id), twice)
            late = check_levels(events, after=back + 2.0)
            assert len(late) >= 0.5 * (len(twice) / RATE - back - 2.0) / 0.05, \
                f"processing did not resume after {back:.1f} s: {len(late)} levels"
        deadline = time.monotonic() + 10
        while httpx.get(f"{gw.http}/healthz").json()["status"] != "ok":
            assert time.monotonic() < deadline, "the bus never came back"
            await asyncio.sleep(0.2)
        assert httpx.get(f"{gw.http}/healthz").json()["bus"]["outages"] >= 1
    finally:
        gw.stop()


def readme_consumer() -> str:
    text = (ROOT / "docs" / "scale-out.md").read_text()
    m = re.search(r"<!-- redis-consumer -->\s*```python\n(.*?)```", text, re.S)
    assert m, "the docs' redis-py consumer example (docs/scale-out.md) is missing"
    return m.group(1)


async def test_the_readme_redis_consumer_reads_the_archived_samples(
        tmp_path: Path, redis_server: RedisServer) -> None:
    gw = ServerProcess(tmp_path / "data", "--bus", redis_server.url).start()
    try:
        pub, _, _ = await stream_file(gw.url, SPEECH, RATE, processors=[], realtime=False)
        await asyncio.sleep(0.5)  # the outbox drains
        scope: dict[str, Any] = {"BUS": redis_server.url, "STREAM_ID": pub.stream_id}
        with contextlib.redirect_stdout(None):
            exec(readme_consumer(), scope)
        assert np.array_equal(scope["audio"], SPEECH)
        assert scope["rate"] == RATE
    finally:
        gw.stop()


async def test_processes_two_gateways_on_one_port(tmp_path: Path,
                                                  redis_server: RedisServer) -> None:
    gw = ServerProcess(tmp_path / "data", "--bus", redis_server.url, "--processes", "2")
    gw.start(timeout=60)
    try:
        names = set()
        for _ in range(40):
            with httpx.Client() as c:  # a new connection each time
                names.add(c.get(f"{gw.http}/healthz").json()["bus"]["gateway"])
            if len(names) == 2:
                break
        assert len(names) == 2, names
        async with CutProxy(gw.port) as proxy:  # resumes land on either process
            streams = [asyncio.create_task(stream_file(
                proxy.url, SPEECH, RATE, processors=[], realtime=True, block_s=0.1,
                reconnect=Reconnect(initial=0.1, maximum=0.5))) for _ in range(6)]
            for _ in range(3):
                await asyncio.sleep(2.0)
                proxy.cut()
            results = await asyncio.gather(*streams)
        for pub, _, _ in results:
            assert pub.reconnects >= 3
            assert np.array_equal(archive(gw, pub.stream_id), SPEECH)
    finally:
        gw.stop()


async def test_speech_to_text_in_a_worker(tmp_path: Path, redis_server: RedisServer,
                                         workers: Any) -> None:
    """`earshot worker --bus URL vad asr`: the default engine in a worker process; finals
    reach the sender and are stored once."""
    from earshot.asr.wer import wer

    reading = json.loads((FIXTURES / "reading_16k.json").read_text())
    x, rate = sf.read(FIXTURES / "reading_16k.wav", dtype="int16")
    bus = redis_server.url
    gw = ServerProcess(tmp_path / "data", "--bus", bus, "--drain-timeout", "30").start()
    try:
        workers(bus, "vad", "asr", name="stt")
        await asyncio.to_thread(wait_balanced, redis_server.client(), "asr", 1)
        pub, events, _ = await stream_file(gw.url, x, rate, processors=["vad", "asr"],
                                           realtime=False, block_s=0.1)
        finals = [e for e in of(events, "transcript") if e["final"]]
        assert len(finals) == len(reading["speech"]), [e.get("text") for e in finals]
        assert {e["worker"] for e in finals} == {"stt"}
        heard = " ".join(e["text"] for e in finals)
        score = wer(reading["text"], heard)
        print(f"WER through a worker: {score:.3f}")
        assert score <= 0.15, heard
        stored = httpx.get(f"{gw.http}/api/streams/{pub.stream_id}/transcript").json()
        items = stored["transcripts"] if isinstance(stored, dict) else stored
        assert [t["text"] for t in items] == [e["text"] for e in finals]  # once each
    finally:
        gw.stop()
