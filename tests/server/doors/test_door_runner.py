"""The doors' shared runner against a real hub in process (no sockets): a core's actions
open an ordinary stream, append its audio (exact in the archive), finalize and stop it;
the core gets ``ready``, ``finalized`` (said by the runner when no processor can) and
``stopped`` in order; sends and closes reach the transport in order; a principal without
the publish scope opens nothing; a connection that ends stops its stream."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from earshot.integrations.common import (
    Action,
    Audio,
    Close,
    Event,
    Finalize,
    OpenStream,
    Send,
    Stop,
)
from earshot.server.auth import OPEN, Principal, Scope
from earshot.server.doors.runner import DoorRunner
from earshot.server.testing import Gateway


class Core:
    """Records its events; answers ``stopped`` with a message and a close."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_event(self, e: Event) -> list[Action]:
        self.events.append(dict(e))
        if e.get("type") == "stopped":
            return [Send(f"bye {e['offset']}"), Close(1000, "done")]
        return []


class Transport:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, data: str | bytes) -> None:
        self.sent.append(data)

    async def close(self, code: int, reason: str) -> None:
        self.sent.append(("close", code, reason))


def pcm(n: int) -> bytes:
    return (np.arange(n) % 2000 - 1000).astype("<i2").tobytes()


async def test_open_audio_finalize_stop_as_a_native_stream(tmp_path: Path) -> None:
    async with Gateway(tmp_path, processors=("level",)) as gw:
        core, transport = Core(), Transport()
        runner = DoorRunner(gw.hub, OPEN, core.on_event, transport, name="door")
        await runner.perform([OpenStream("s16", 16000, 1, processors=(),
                                         client={"dialect": "test"}),
                              Audio(pcm(4000)), Audio(pcm(4000)[:7999])])  # a half frame: dropped
        await runner.perform([Finalize()])
        await runner.perform([Audio(pcm(8000)), Send("hello"), Stop()])
        await runner.settled()
        await runner.finish()
        kinds = [e["type"] for e in core.events]
        assert kinds[0] == "ready" and kinds[-1] == "stopped"
        assert "level" in kinds  # the server's default processors were added
        fin = next(e for e in core.events if e["type"] == "finalized")
        assert fin["segment"] is None and fin["t"] == (4000 + 3999) / 16000
        assert kinds.index("finalized") < kinds.index("stopped")
        stopped = core.events[-1]
        frames = 4000 + 3999 + 8000
        assert stopped["offset"] == frames and stopped["stream"] == runner.stream
        assert transport.sent == ["hello", f"bye {frames}", ("close", 1000, "done")]
        rec = gw.store.get(runner.stream or "")
        assert rec.state == "finished" and rec.name == "door"
        assert rec.client == {"dialect": "test"}
        y, _ = sf.read(tmp_path / rec.path, dtype="int16")
        want = np.frombuffer(pcm(4000) + pcm(4000)[:7998] + pcm(8000), "<i2")
        assert np.array_equal(y, want)


async def test_a_principal_without_publish_opens_nothing(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        core = Core()
        listener = Principal("reader", frozenset({Scope.LISTEN}))
        runner = DoorRunner(gw.hub, listener, core.on_event, name="door")
        await runner.perform([OpenStream("s16", 16000, 1), Audio(pcm(1600))])
        await runner.settled()
        await runner.finish()
        assert [e["type"] for e in core.events] == ["error"]
        assert core.events[0]["code"] == "forbidden"
        assert not gw.hub.live


async def test_a_refused_format_is_the_stream_error(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        core = Core()
        runner = DoorRunner(gw.hub, OPEN, core.on_event, name="door")
        await runner.perform([OpenStream("s16", 4000, 1)])
        await runner.settled()
        await runner.finish()
        assert [e["type"] for e in core.events] == ["error"]
        assert core.events[0]["code"] == "unsupported_rate"


async def test_the_connection_ending_stops_its_stream(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        core = Core()
        runner = DoorRunner(gw.hub, OPEN, core.on_event, name="door")
        await runner.perform([OpenStream("f32", 48000, 2), Audio(b"\0" * 8 * 4800)])
        sid = runner.stream
        assert sid is not None and gw.hub.is_live(sid)
        await runner.finish()
        await asyncio.sleep(0)
        rec = gw.store.get(sid)
        assert rec.state == "finished" and rec.frames == 4800 and not gw.hub.is_live(sid)
