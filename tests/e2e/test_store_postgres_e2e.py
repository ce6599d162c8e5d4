"""A real `earshot serve --db postgresql://…` takes a stream with VAD: the stream, its
segments and their numbers are in PostgreSQL (read back with psycopg, not earshot), and
nothing went to an SQLite file in the data directory."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from earshot.client import Publisher
from helpers import FIXTURES, ServerProcess

pytestmark = pytest.mark.slow
TRUTH = json.loads((FIXTURES / "speech_16k.json").read_text())["speech"]


async def publish(url: str, x: np.ndarray) -> tuple[Publisher, list[dict]]:
    events: list[dict] = []
    pub = Publisher(url, rate=16000, format="s16", processors=["vad"], name="pg e2e")

    async def collect() -> None:
        async for e in pub.events():
            events.append(e)

    await pub.start()
    task = asyncio.create_task(collect())
    for i in range(0, len(x), 320):
        await pub.send(x[i:i + 320])
    await pub.stop(timeout=60)
    await task
    return pub, events


def row(conn: Any, sql: str, *args: object) -> tuple:
    r = conn.execute(sql, args).fetchone()
    assert r is not None, sql
    return tuple(r)


async def test_serve_keeps_streams_and_segments_in_postgres(
        server_factory: Callable[..., ServerProcess], pg_url: str) -> None:
    import psycopg  # after pg_url: skipped (or failed under CI) without PostgreSQL

    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    server = server_factory("--db", pg_url)
    pub, events = await publish(server.url, x)
    sid = pub.stream_id
    segs = [e for e in events if e["type"] == "segment"]
    assert [s["segment"] for s in segs] == [0, 1, 2]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        deadline = time.monotonic() + 30
        while row(conn, "SELECT state FROM streams WHERE id=%s", sid)[0] != "finished":
            assert time.monotonic() < deadline, "stream never finished in PostgreSQL"
            await asyncio.sleep(0.1)
        name, frames, srate, channels, client, next_segment = row(
            conn, "SELECT name, frames, rate, channels, client, next_segment FROM streams "
                  "WHERE id=%s", sid)
        assert (name, frames, srate, channels, next_segment) == ("pg e2e", len(x), rate, 1, 3)
        assert isinstance(client, dict) and client  # jsonb, decoded by psycopg
        stored = conn.execute('SELECT n, start, "end", rate, path FROM segments '
                              "WHERE stream=%s ORDER BY n", (sid,)).fetchall()
        assert row(conn, "SELECT count(*) FROM streams")[0] == 1
    assert [r[0] for r in stored] == [0, 1, 2]
    for (n, start, end, srate, path), ev, truth in zip(stored, segs, TRUTH, strict=True):
        assert (start, end, srate) == (ev["start_frame"], ev["end_frame"], rate)
        assert abs(start - truth["start"]) <= 0.1 * rate and abs(end - truth["end"]) <= 0.1 * rate
        y, _ = sf.read(server.data_dir / path, dtype="int16")  # the cut file is exact
        assert path == f"streams/{sid}.segments/{n:04d}.wav"
        assert np.array_equal(y, x[start:end])
    assert not (server.data_dir / "earshot.db").exists()
    # REST reads the same rows, and so does a restarted server on the same database
    server.stop()
    server.start()
    listed = httpx.get(f"{server.http}/api/streams/{sid}/segments").json()["segments"]
    assert [(s["segment"], s["start_frame"], s["end_frame"]) for s in listed] == [
        (r[0], r[1], r[2]) for r in stored]
    assert httpx.get(f"{server.http}/api/streams/{sid}").json()["duration"] == round(
        len(x) / rate, 6)
