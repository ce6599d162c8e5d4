"""The publisher's core against the real server in process: the ingest session, hub, archive
and SQLite store of ``earshot.server.testing.Gateway``, no sockets, a fake clock. The
messages the core produces go to the session as a WebSocket would carry them; the archive
the hub writes is read back and compared sample by sample."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import soundfile as sf

from earshot.client.protocol import Decision, Done, PublisherProtocol, RetryIn, State
from earshot.server.testing import Gateway, SessionClient

RATE = 16000


class Wire:
    """One connection between a core and an in-process ingest session."""

    def __init__(self, gw: Gateway, core: PublisherProtocol, client: SessionClient) -> None:
        self.gw, self.core, self.client = gw, core, client
        self.read = 0
        self.binary: list[bytes] = []

    @classmethod
    async def open(cls, gw: Gateway, core: PublisherProtocol) -> Wire:
        assert core.connecting() is None
        wire = cls(gw, core, await gw.connect())
        core.connected(gw.clock())
        await wire.exchange()
        return wire

    async def exchange(self, rounds: int = 20) -> None:
        """Carry messages both ways until a few rounds pass with nothing new."""
        quiet = 0
        while quiet < 3 and rounds:
            rounds -= 1
            moved = False
            for m in self.core.data_to_send():
                if isinstance(m, str):
                    self.client.ws.client_text(m)
                else:
                    self.binary.append(m)
                    self.client.send_audio(m)
                moved = True
            for _ in range(3):
                await asyncio.sleep(0)
            sent = self.client.ws.sent
            while self.read < len(sent):
                self.core.receive_text(sent[self.read], self.gw.clock())
                self.read += 1
                moved = True
            quiet = 0 if moved else quiet + 1
            await asyncio.sleep(0.002)

    async def closed(self) -> Decision:
        """The session closed its socket: the core hears the close frame."""
        code, reason = await self.client.closed()
        return self.core.connection_lost(code, reason)

    async def drop(self) -> Decision:
        await self.client.disconnect()
        return self.core.connection_lost(1006, "")


def pcm(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, n).astype("<i2")


async def test_a_stream_through_the_real_hub_with_a_drop_and_a_resume(tmp_path: Path) -> None:
    x = pcm(2 * RATE, seed=5)
    core = PublisherProtocol(rate=RATE, format="s16", processors=[], name="gw",
                             max_message_frames=320, rng=random.Random(1))
    async with Gateway(tmp_path, ack_interval_max=0.1) as gw:  # acks every 0.1 s
        wire = await Wire.open(gw, core)
        assert core.state is State.STREAMING
        core.send(x[:RATE])
        await wire.exchange()
        assert core.acked == RATE and core.unacked == 0  # the hub acked every 100 ms
        core.send(x[RATE:RATE + 4000])  # sent, then the network goes
        await wire.exchange()
        decision = await wire.drop()
        assert isinstance(decision, RetryIn)
        rec = gw.store.get(core.stream_id or "")
        assert rec.state == "interrupted"
        held = rec.frames  # the hub writes what it received before the drop
        assert core.acked < held == RATE + 4000  # more than it had acknowledged

        core.send(x[RATE + 4000:])
        again = await Wire.open(gw, core)
        ready = next(e for e in core.events_received()[::-1] if e["type"] == "ready")
        assert ready["offset"] == held and ready["stream"] == rec.id
        assert b"".join(again.binary) == x[held:].tobytes()  # exactly what it lacked
        core.stop()
        await again.exchange()
        assert await again.closed() == Done(len(x), rec.id)
        rec = gw.store.get(rec.id)
        assert (rec.state, rec.frames, rec.name) == ("finished", len(x), "gw")
        got, rate = sf.read(tmp_path / rec.path, dtype="int16")
        assert rate == RATE and np.array_equal(got, x)
