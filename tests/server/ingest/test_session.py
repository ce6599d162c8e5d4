"""The ingest session and the hub behind it, in process: no sockets, a fake clock.

Each test runs a real :class:`IngestSession` on a :class:`MemoryWebSocket` against a real
hub, SQLite store and archive (``earshot.server.testing.Gateway``); milliseconds each.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import soundfile as sf

from earshot.server.testing import Gateway

RATE = 16000


def pcm(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, n).astype("<i2")


def start(**extra: object) -> dict[str, object]:
    return {"type": "start", "format": "s16", "rate": RATE, "channels": 1, **extra}


async def test_start_audio_ack_stop(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        c = await gw.connect()
        await c.send_json(start(name="take", processors=[]))
        ready = await c.expect("ready")
        assert ready["offset"] == 0 and ready["rate"] == RATE and ready["processors"] == []
        x = pcm(RATE)
        for i in range(0, RATE, 320):
            c.send_audio(x[i:i + 320].tobytes())
        assert c.lane is not None and c.lane.sink is c.session  # on the direct lane
        acks = [(await c.expect("ack"))["offset"] for _ in range(4)]
        # the first batch is 0.1 s (--ack-interval); nobody receives this stream live (no
        # processors, no listeners), so the next ones are the longest the cadence allows
        # (--ack-interval-max, 0.25 s: 4000 frames, in whole 320-frame messages)
        assert acks == [1600, 5760, 9920, 14080]
        await c.send_json({"type": "stop"})
        stopped = await c.expect("stopped")
        assert stopped["offset"] == RATE and stopped["duration"] == 1.0
        assert await c.closed() == (1000, "stopped")
        rec = gw.store.get(ready["stream"])
        assert (rec.state, rec.frames, rec.name) == ("finished", RATE, "take")
        got, _ = sf.read(tmp_path / rec.path, dtype="int16")
        assert np.array_equal(got, x)


async def test_batch_mode_events_ride_in_the_ack(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        c = await gw.connect()
        await c.send_json(start(processors=["level"], batch=True))
        await c.expect("ready")
        x = pcm(3200, seed=1)
        for i in range(0, 3200, 320):
            c.send_audio(x[i:i + 320].tobytes())
        ack = await c.expect("ack", where=lambda m: bool(m.get("events")))
        assert {e["type"] for e in ack["events"]} == {"level"}
        assert all(e["stream"] == ack["events"][0]["stream"] for e in ack["events"])
        assert not [m for m in c.messages() if m["type"] == "level"]  # never alone


async def test_a_trickling_client_is_acknowledged_by_the_ticker(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        c = await gw.connect()
        await c.send_json(start(processors=[]))
        await c.expect("ready")
        c.send_audio(pcm(160).tobytes())  # 10 ms, then nothing
        await gw.hub.tick()
        assert not [m for m in c.messages() if m["type"] == "ack"]
        gw.clock.advance(0.1)
        await gw.hub.tick()
        assert (await c.expect("ack"))["offset"] == 160


async def test_a_drop_leaves_the_stream_resumable_and_resume_goes_on(tmp_path: Path) -> None:
    async with Gateway(tmp_path, ack_interval_max=0.1) as gw:  # acks every 0.1 s
        a = await gw.connect()
        await a.send_json(start(processors=[]))
        ready = await a.expect("ready")
        x = pcm(6400, seed=2)
        for i in range(0, 3200, 320):
            a.send_audio(x[i:i + 320].tobytes())
        await a.expect("ack", where=lambda m: m["offset"] == 3200)
        await a.disconnect()
        rec = gw.store.get(ready["stream"])
        assert (rec.state, rec.frames) == ("interrupted", 3200)
        assert not gw.hub.is_live(rec.id)

        b = await gw.connect()
        await b.send_json(start(processors=[], resume=rec.id,
                                resume_token=ready["resume_token"]))
        again = await b.expect("ready")
        assert (again["stream"], again["offset"]) == (rec.id, 3200)
        for i in range(3200, 6400, 320):
            b.send_audio(x[i:i + 320].tobytes())
        await b.send_json({"type": "stop"})
        assert (await b.expect("stopped"))["offset"] == 6400
        got, _ = sf.read(tmp_path / gw.store.get(rec.id).path, dtype="int16")
        assert np.array_equal(got, x)


async def test_a_wrong_resume_token_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        a = await gw.connect()
        await a.send_json(start(processors=[]))
        ready = await a.expect("ready")
        await a.disconnect()
        b = await gw.connect()
        await b.send_json(start(resume=ready["stream"], resume_token="nope"))
        err = await b.expect("error")
        assert err["code"] == "bad_resume_token"
        assert await b.closed() == (4403, "wrong resume_token for this stream")
        assert gw.store.get(ready["stream"]).state == "interrupted"


async def test_a_second_connection_resuming_supersedes_the_first(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        a = await gw.connect()
        await a.send_json(start(processors=[]))
        ready = await a.expect("ready")
        a.send_audio(pcm(1600).tobytes())
        b = await gw.connect()  # a's network is dead but it has not noticed
        await b.send_json(start(processors=[], resume=ready["stream"],
                                resume_token=ready["resume_token"]))
        assert (await b.expect("ready"))["offset"] == 1600
        assert (await a.expect("error"))["code"] == "superseded"
        assert (await a.closed())[0] == 4409


async def test_a_token_server_refuses_a_start_without_it(tmp_path: Path) -> None:
    async with Gateway(tmp_path, token="s3cret") as gw:
        c = await gw.connect()
        await c.send_json(start())
        assert (await c.expect("error"))["code"] == "unauthorized"
        assert (await c.closed())[0] == 4401
        ok = await gw.connect(headers={"Authorization": "Bearer s3cret"})
        await ok.send_json(start(processors=[]))
        await ok.expect("ready")


async def test_compatibility_mode_needs_no_start(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        c = await gw.connect({"rate": "16000", "format": "f32"})
        x = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
        c.send_audio(x.tobytes())  # no start: the first binary message opens the stream
        ready = await c.expect("ready")
        assert (ready["format"], ready["rate"]) == ("f32", RATE)
        await c.disconnect()
        rec = gw.store.get(ready["stream"])
        assert (rec.state, rec.frames) == ("finished", 1600)  # compat: a drop ends it


async def test_a_compatibility_client_is_sent_what_it_can_use(tmp_path: Path) -> None:
    """The classic snippet (no start, never reads) is sent ``ready`` and nothing more: no
    acks (its stream cannot be resumed: an offset is of no use to it) and no ``level``
    readings (the server's default: made only for whoever watches, and the sender has its
    own audio). What it names in the URL it gets: ``?processors=level``, ``?acks=1``."""
    x = np.linspace(-0.5, 0.5, 8000, dtype=np.float32)
    async with Gateway(tmp_path, processors=("level",)) as gw:
        query = {"rate": "16000", "format": "f32"}
        plain = await gw.connect(query)
        named = await gw.connect({**query, "processors": "level"})
        asks = await gw.connect({**query, "acks": "1"})
        for c in (plain, named, asks):
            for i in range(0, 8000, 320):
                c.send_audio(x[i:i + 320].tobytes())
        await named.expect("level")
        await asks.expect("ack")
        await asyncio.sleep(0.05)
        assert [m["type"] for m in plain.messages()] == ["ready"]
        assert plain.messages()[0]["processors"] == ["level"]  # it runs, for observers
        readings = [m for m in named.messages() if m["type"] == "level"]
        assert [m["t"] for m in readings] == [round(0.05 * i, 6) for i in range(10)]
        assert "ack" not in [m["type"] for m in named.messages()]
        # nobody receives this stream live: after the first, its batches are the longest
        # the cadence allows (0.25 s)
        assert [m["offset"] for m in asks.messages() if m["type"] == "ack"] == [1600, 5760]
        assert "level" not in [m["type"] for m in asks.messages()]
        # nothing was measured for the two that did not name it ...
        pipeline = gw.hub.live[plain.messages()[0]["stream"]].pipeline
        assert pipeline is not None and pipeline.runners[0][1].stats.processed == 0
        assert pipeline.runners[0][1].stats.skipped == 5760  # (the rest is still pending)
        # ... until someone watches: readings go to the subscriber, on the stream's grid,
        # from the first batch written after it came (pending since 5760 frames, 0.36 s)
        sub = gw.hub.bus.subscribe(plain.messages()[0]["stream"])
        for i in range(0, 8000, 320):
            plain.send_audio(x[i:i + 320].tobytes())
        got = []
        while len(got) < 10:
            e = await asyncio.wait_for(sub.get(), 2)
            if isinstance(e, dict) and e.get("type") == "level":
                got.append(e)
        assert [e["t"] for e in got] == [round(0.4 + 0.05 * i, 6) for i in range(10)]
        assert got[3]["rms"] == readings[1]["rms"]  # the same audio, the same reading
        assert [m["type"] for m in plain.messages()] == ["ready"]  # still nothing to it
        gw.hub.bus.unsubscribe(sub)


async def test_what_one_flush_sends_back_goes_out_in_one_write(tmp_path: Path) -> None:
    async with Gateway(tmp_path, processors=("level",)) as gw:
        c = await gw.connect()
        await c.send_json(start(processors=["level"]))
        await c.expect("ready")
        lane = c.lane
        assert lane is not None
        x = pcm(RATE, seed=4)
        before = (lane.messages, lane.writes)
        for i in range(0, RATE, 320):
            c.send_audio(x[i:i + 320].tobytes())
        messages, writes = lane.messages - before[0], lane.writes - before[1]
        assert writes == 10  # one per 0.1 s batch ...
        assert messages >= 30  # ... holding its ack and its two level readings


async def test_a_full_disk_refuses_new_streams_but_not_resumes(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        a = await gw.connect()
        await a.send_json(start(processors=[]))
        ready = await a.expect("ready")
        await a.disconnect()
        gw.hub.space.write_failed("a test")
        b = await gw.connect()
        await b.send_json(start(processors=[]))
        assert (await b.expect("error"))["code"] == "storage_full"
        c = await gw.connect()
        await c.send_json(start(processors=[], resume=ready["stream"],
                                resume_token=ready["resume_token"]))
        assert (await c.expect("error"))["code"] == "storage_full"  # full, not just low
        gw.hub.space.update(1 << 40, gw.clock())
        d = await gw.connect()
        await d.send_json(start(processors=[], resume=ready["stream"],
                                resume_token=ready["resume_token"]))
        await d.expect("ready")
