"""The hub's life cycle and its bus callbacks, driven in process (no sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from earshot.errors import ProtocolError, StorageError
from earshot.server.testing import Gateway
from earshot.wire.ingest import Limits, parse_start
from helpers import RecordingOwner

RATE = 16000


def start(**extra: Any) -> Any:
    return parse_start({"type": "start", "format": "s16", "rate": RATE, "processors": [],
                        **extra}, Limits())


def audio(n: int) -> bytes:
    return np.arange(n, dtype="<i2").tobytes()


async def test_an_idle_ticker_sleeps_until_a_stream_comes(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        hub, owner = gw.hub, RecordingOwner()
        loop = asyncio.get_running_loop()
        ticks: list[float] = []
        real = hub.tick

        async def tick() -> None:
            ticks.append(loop.time())
            await real()

        hub.tick = tick  # type: ignore[method-assign]
        ticker = asyncio.create_task(hub.run_ticker())
        await asyncio.sleep(0.3)
        assert hub.idle and ticks == []  # nothing is live: the next tick is 1 s away
        opened = loop.time()
        live, _token, _ = await hub.open(start(), owner)
        await asyncio.sleep(0.5)
        assert not hub.idle
        assert ticks[0] - opened < 0.1  # woken by the stream, not by the second
        assert len(ticks) >= 4  # then every 50 ms
        await hub.detach(live, owner, stopped=True)
        await asyncio.sleep(0.1)
        n = len(ticks)
        await asyncio.sleep(0.4)
        assert hub.idle and len(ticks) <= n + 1  # idle again
        ticker.cancel()


async def test_open_feed_detach_stopped_finishes(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        hub, owner = gw.hub, RecordingOwner()
        live, _token, warnings = await hub.open(start(name="a"), owner)
        assert warnings == [] and hub.is_live(live.id) and hub.owner_of(live.id) is owner
        assert hub.add_audio(live, audio(1600), 1600)  # 0.1 s: a flush is due
        await hub.flush(live)
        assert owner.acks == [1600]
        assert await hub.detach(live, owner, stopped=True) == 1600
        rec = gw.store.get(live.id)
        assert (rec.state, rec.frames) == ("finished", 1600)
        assert not hub.is_live(live.id)
        assert hub.metrics.streams_active._value.get() == 0


async def test_a_detach_by_a_superseded_owner_changes_nothing(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        hub, a, b = gw.hub, RecordingOwner(), RecordingOwner()
        live, token, _ = await hub.open(start(), a)
        await hub.detach(live, a, stopped=False)
        again, _, _ = await hub.open(start(resume=live.id, resume_token=token), b)
        assert await hub.detach(again, a, stopped=True) == 0  # a is not the owner
        assert hub.is_live(live.id)


async def test_stream_events_reach_subscribers_in_order(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        sub = gw.bus.subscribe("*")
        live, _, _ = await gw.hub.open(start(name="n"), RecordingOwner())
        started = await sub.get()
        assert started == {"type": "stream_started", "stream": live.id, "t": 0.0,
                           "name": "n", "rate": RATE, "channels": 1, "format": "s16",
                           "offset": 0, "resumed": False}
        owner = gw.hub.owner_of(live.id)
        assert owner is not None
        gw.hub.add_audio(live, audio(800), 800)
        await gw.hub.detach(live, owner, stopped=True)
        ended = await sub.get()
        assert ended == {"type": "stream_ended", "stream": live.id, "t": 0.05,
                         "state": "finished", "frames": 800}


async def test_bus_events_go_to_the_sender_and_finals_are_stored(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        owner = RecordingOwner()
        live, _, _ = await gw.hub.open(start(), owner)
        final = {"type": "transcript", "final": True, "text": "hello", "start": 0.0,
                 "end": 0.5, "segment": 0, "stream": live.id}
        gw.hub.on_bus_events(live.id, [{"type": "stream_started"}, final,
                                       {"type": "processed", "processor": "asr"}])
        assert owner.posted == [final]  # gateway events are not echoed; 'processed' is noted
        assert live.done == {"asr"}
        assert gw.store.transcripts(live.id)[0]["text"] == "hello"


async def test_a_release_from_another_gateway_kicks_and_leaves_it_resumable(
        tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        owner = RecordingOwner()
        live, _, _ = await gw.hub.open(start(), owner)
        gw.hub.add_audio(live, audio(320), 320)
        await gw.hub.on_bus_release(live.id)
        assert owner.kicked[0][0] == "superseded"
        rec = gw.store.get(live.id)
        assert (rec.state, rec.frames) == ("interrupted", 320)  # pending audio written


async def test_drain_tells_every_publisher_and_keeps_streams_resumable(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        owners = [RecordingOwner(), RecordingOwner()]
        lives = [(await gw.hub.open(start(), o))[0] for o in owners]
        for live in lives:
            gw.hub.add_audio(live, audio(480), 480)

        async def detach_when_kicked(live: Any, owner: RecordingOwner) -> None:
            while not owner.kicked:
                await asyncio.sleep(0.001)
            await gw.hub.detach(live, owner, stopped=False)

        tasks = [asyncio.create_task(detach_when_kicked(lv, o))
                 for lv, o in zip(lives, owners, strict=True)]
        held = await gw.hub.drain(timeout=2.0)
        await asyncio.gather(*tasks)
        assert sorted(held) == sorted(lv.id for lv in lives)
        for o in owners:
            assert o.acks == [480] and o.kicked[0][0] == "shutting_down"
        with pytest.raises(ProtocolError) as refused:
            await gw.hub.open(start(), RecordingOwner())
        assert refused.value.code == "shutting_down"
        assert {gw.store.get(lv.id).state for lv in lives} == {"interrupted"}


async def test_delete_refuses_a_live_stream(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        owner = RecordingOwner()
        live, _, _ = await gw.hub.open(start(), owner)
        with pytest.raises(StorageError, match="live"):
            gw.hub.delete(live.id)
        await gw.hub.detach(live, owner, stopped=True)
        gw.hub.delete(live.id)
        assert not list((tmp_path / "streams").glob(f"{live.id}*"))


async def test_recover_repairs_an_archive_a_crash_left_open(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        owner = RecordingOwner()
        live, _, _ = await gw.hub.open(start(), owner)
        gw.hub.add_audio(live, audio(1600), 1600)
        await gw.hub.flush(live)  # written, acknowledged; the header not synced yet
        # the process dies here: its row still says 'live'; a new one starts on the dir
        async with Gateway(tmp_path) as after:
            assert await after.hub.recover() == [live.id]
            rec = after.store.get(live.id)
            assert (rec.state, rec.frames) == ("interrupted", 1600)
