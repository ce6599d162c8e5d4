"""Nothing acknowledged is lost: kill -9 of the server, and network cuts, mid-stream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from earshot.client import Publisher, Reconnect, Resume
from helpers import CutProxy, ServerProcess, ffprobe_duration, soxi_frames

pytestmark = pytest.mark.slow

FAST_RETRY = Reconnect(initial=0.1, maximum=0.5, attempts=100)


def source(frames: int, channels: int = 1, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((frames, channels)) * 4000).astype("<i2")
    return x[:, 0] if channels == 1 else x


async def paced_send(pub: Publisher, x: np.ndarray, block: int, pause: float,
                     at: dict[int, Callable[[], object]]) -> None:
    """Send x in blocks, sleeping between them; call at[i]() before block i."""
    for n, i in enumerate(range(0, len(x), block)):
        if n in at:
            result = at[n]()
            if asyncio.iscoroutine(result):
                await result
        await pub.send(x[i:i + block])
        await asyncio.sleep(pause)


def archive(server: ServerProcess, stream: str) -> tuple[Path, dict]:
    rec = httpx.get(f"{server.http}/api/streams/{stream}").json()
    return server.data_dir / rec["path"], rec


async def test_kill9_mid_stream_then_resume_keeps_every_sample(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    x = source(48000 * 3, channels=2)

    async def kill_and_restart() -> None:
        await asyncio.sleep(0.15)  # let some acks arrive
        acked_before = pub.acked
        assert acked_before > 0
        server.kill9()
        await asyncio.sleep(0.3)  # the client keeps sending into its buffer meanwhile
        await asyncio.to_thread(server.start)
        kills.append(acked_before)

    kills: list[int] = []
    async with Publisher(server.url, rate=48000, channels=2, format="s16",
                         reconnect=FAST_RETRY) as pub:
        events = asyncio.create_task(_collect(pub))
        await paced_send(pub, x, 960, 0.002, {40: kill_and_restart})
    evs = await events
    assert kills and pub.reconnects >= 1
    readies = [e for e in evs if e["type"] == "ready"]
    assert len(readies) == 2 and readies[1]["stream"] == readies[0]["stream"]
    assert readies[1]["offset"] >= kills[0]  # the server kept everything it acknowledged
    assert any(e["type"] == "reconnecting" for e in evs)

    path, rec = archive(server, pub.stream_id)
    assert rec["state"] == "finished" and rec["frames"] == len(x)
    y, rate = sf.read(path, dtype="int16")
    assert rate == 48000 and np.array_equal(y, x)  # nothing lost, nothing duplicated
    assert abs(ffprobe_duration(path) - 3.0) < 1e-3
    assert soxi_frames(path) == len(x)


async def test_archive_left_by_kill9_is_repaired_on_restart(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory()
    x = source(16000)
    pub = await Publisher(server.url, rate=16000, format="s16").start()
    await pub.send(x)
    await pub.wait_acked(timeout=10)
    server.kill9()
    await pub.close()
    await asyncio.to_thread(server.start)
    path, rec = archive(server, pub.stream_id)
    assert rec["state"] == "interrupted" and rec["frames"] == len(x)
    y, _ = sf.read(path, dtype="int16")  # header sizes were repaired
    assert np.array_equal(y, x)
    # and it stays resumable: continue from where it was, then finish cleanly
    assert pub.stream_id is not None and pub.resume_token is not None
    pub2 = Publisher(server.url, rate=16000, format="s16",
                     resume=Resume(pub.stream_id, pub.resume_token, offset=len(x)))
    await pub2.start()
    await pub2.send(x)
    assert await pub2.stop() == 2 * len(x)
    y, _ = sf.read(archive(server, pub.stream_id)[0], dtype="int16")
    assert np.array_equal(y, np.concatenate([x, x]))


async def test_network_cut_resumes_without_loss_or_duplicates(
        shared_server: ServerProcess) -> None:
    x = source(16000 * 4, seed=9)
    async with CutProxy(shared_server.port) as proxy:
        async def cut_once_resumed(resumes: int) -> None:
            while pub.reconnects < resumes or pub.acked <= acked_at_cut[-1]:
                await asyncio.sleep(0.01)
            acked_at_cut.append(pub.acked)
            proxy.cut()

        acked_at_cut = [0]
        async with Publisher(proxy.url, rate=16000, format="s16", reconnect=FAST_RETRY) as pub:
            await paced_send(pub, x, 320, 0.001, {
                30: lambda: cut_once_resumed(0),
                90: lambda: cut_once_resumed(1),
                150: lambda: cut_once_resumed(2),
            })
        assert pub.reconnects == 3 and proxy.connections == 4
    path, rec = archive(shared_server, pub.stream_id)
    assert rec["frames"] == len(x)
    assert np.array_equal(sf.read(path, dtype="int16")[0], x)


async def test_resume_supersedes_a_half_dead_connection(shared_server: ServerProcess) -> None:
    """A resume that arrives before the server noticed the old socket died takes over."""
    x = source(8000)
    first = await Publisher(shared_server.url, rate=8000, format="s16").start()
    await first.send(x[:4000])
    await first.wait_acked(timeout=10)
    # a second connection resumes the same stream while the first one is still open
    assert first.stream_id is not None and first.resume_token is not None
    second = Publisher(shared_server.url, rate=8000, format="s16",
                       resume=Resume(first.stream_id, first.resume_token, offset=4000))
    await second.start()
    await second.send(x[4000:])
    assert await second.stop() == 8000
    with pytest.raises(Exception, match="superseded"):
        await first.send(x[:10])
        await first.stop(timeout=5)
    y = sf.read(archive(shared_server, first.stream_id)[0], dtype="int16")[0]
    assert np.array_equal(y, x)


async def _collect(pub: Publisher) -> list[dict]:
    return [e async for e in pub.events()]


async def test_resume_when_the_server_holds_more_than_was_acknowledged(
        shared_server: ServerProcess) -> None:
    """The ack for the last frames was lost with the connection: the client still holds
    them, the server already has them. Nothing may be written twice or skipped."""
    x = source(8000, seed=11)
    first = await Publisher(shared_server.url, rate=8000, format="s16").start()
    await first.send(x[:6000])
    await first.wait_acked(timeout=10)
    await first.close()
    assert first.stream_id is not None and first.resume_token is not None
    late = Publisher(shared_server.url, rate=8000, format="s16",  # it believes only 4000
                     resume=Resume(first.stream_id, first.resume_token, offset=4000))  # acked
    await late.send(x[4000:6000])  # queued before it connects
    await late.start()
    assert late.acked == 6000  # trimmed to what the server holds
    await late.send(x[6000:])
    assert await late.stop() == 8000
    y = sf.read(archive(shared_server, first.stream_id)[0], dtype="int16")[0]
    assert np.array_equal(y, x)
