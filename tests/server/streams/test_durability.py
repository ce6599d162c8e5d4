"""Durability with --fsync (issue 19, item 11): the order of operations a power cut can
interrupt, recorded call by call (fsync, rename, unlink); SQLite's synchronous mode; and
start-up finding archives whose database rows were lost."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from earshot.server.testing import Gateway
from earshot.storage.metadata import SqliteStore, open_store
from earshot.wire.ingest import Limits, parse_start
from helpers import RecordingOwner

RATE = 16000


def start(**extra: Any) -> Any:
    return parse_start({"type": "start", "format": "s16", "rate": RATE, "processors": [],
                        **extra}, Limits())


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, str]]:
    """Every fsync (of a file or a directory), rename and unlink under tmp_path, in order,
    as (operation, path relative to tmp_path); directories end with '/'."""
    out: list[tuple[str, str]] = []

    def rel(p: Any) -> str | None:
        p = Path(p)
        if not p.is_relative_to(tmp_path):
            return None
        return str(p.relative_to(tmp_path)) + ("/" if p.is_dir() else "")

    real_fsync, real_replace, real_unlink = os.fsync, os.replace, Path.unlink

    def fsync(fd: int) -> None:
        name = rel(os.readlink(f"/proc/self/fd/{fd}"))
        if name is not None and not name.endswith((".db", ".db-wal", ".db-shm")):
            out.append(("fsync", name))
        real_fsync(fd)

    def replace(a: Any, b: Any) -> None:
        if rel(a) is not None:
            out.append(("rename", f"{rel(a)} -> {rel(b)}"))
        real_replace(a, b)

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if rel(self) is not None and self.exists():
            out.append(("unlink", str(rel(self))))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)
    return out


@pytest.mark.parametrize("fmt", ["flac", "ogg"])
async def test_the_power_cut_order_of_a_stream_s_life(
        tmp_path: Path, calls: list[tuple[str, str]], fmt: str) -> None:
    async with Gateway(tmp_path, fsync=True, archive_format=fmt) as gw:
        owner = RecordingOwner()
        live, _, _ = await gw.hub.open(start(), owner)
        sid = live.id
        opened = list(calls)
        # the new archive's directory entry is durable before the stream is told ready
        assert opened == [("fsync", f"streams/{sid}.wav"), ("fsync", "streams/")], opened
        gw.hub.add_audio(live, np.arange(3200, dtype="<i2").tobytes(), 3200)
        await gw.hub.flush(live)
        await gw.hub.detach(live, owner, stopped=True)
    final = calls[calls.index(("fsync", f"streams/{sid}.{fmt}.part")):]
    # converted file durable, renamed, the rename durable, and only then the WAV removed
    assert final[:5] == [
        ("fsync", f"streams/{sid}.{fmt}.part"),
        ("rename", f"streams/{sid}.{fmt}.part -> streams/{sid}.{fmt}"),
        ("fsync", "streams/"),
        ("unlink", f"streams/{sid}.wav"),
        ("fsync", "streams/"),
    ], final
    before = calls[:calls.index(final[0])]
    assert ("fsync", f"streams/{sid}.wav") in before[2:]  # its audio, before conversion
    assert sf.info(str(tmp_path / "streams" / f"{sid}.{fmt}")).frames >= 3200


async def test_without_fsync_nothing_is_fsynced(tmp_path: Path,
                                                 calls: list[tuple[str, str]]) -> None:
    async with Gateway(tmp_path, archive_format="flac") as gw:
        owner = RecordingOwner()
        live, _, _ = await gw.hub.open(start(), owner)
        gw.hub.add_audio(live, np.arange(1600, dtype="<i2").tobytes(), 1600)
        await gw.hub.detach(live, owner, stopped=True)
    assert [c for c in calls if c[0] == "fsync"] == []
    assert ("unlink", f"streams/{live.id}.wav") in calls


def test_sqlite_is_synchronous_full_with_fsync(tmp_path: Path) -> None:
    def mode(store: Any) -> int:
        db = sqlite3.connect(store.path)
        db.close()
        return int(store._query("PRAGMA synchronous")[0][0])

    assert mode(SqliteStore(tmp_path / "a.db")) == 1  # NORMAL
    assert mode(SqliteStore(tmp_path / "b.db", full_sync=True)) == 2  # FULL
    assert mode(open_store(tmp_path / "c.db", fsync=True)) == 2
    assert mode(open_store(str(tmp_path / "d.db"), fsync=True)) == 2


async def test_start_up_registers_archives_whose_rows_are_missing(tmp_path: Path) -> None:
    x = (np.arange(RATE) % 700 - 350).astype("<i2")
    async with Gateway(tmp_path, archive_format="flac") as gw:
        a, b = RecordingOwner(), RecordingOwner()
        done, _, _ = await gw.hub.open(start(name="done"), a)
        gw.hub.add_audio(done, x.tobytes(), len(x))
        await gw.hub.detach(done, a, stopped=True)
        held, _, _ = await gw.hub.open(start(name="held"), b)
        gw.hub.add_audio(held, x[:8000].tobytes(), 8000)
        await gw.hub.flush(held)
        # the power cut: the held stream's archive is open; both rows are lost
        gw.store.delete(done.id)
        gw.store.delete(held.id)
        held.archive.close()
        gw.hub.live.clear()
    for p in (tmp_path / "streams").iterdir():
        os.utime(p, (p.stat().st_atime - 60, p.stat().st_mtime - 60))
    async with Gateway(tmp_path) as after:
        assert sorted(await after.hub.recover()) == sorted([done.id, held.id])
        d, h = after.store.get(done.id), after.store.get(held.id)
        assert (d.state, d.frames, d.path, d.archive_format) == (
            "finished", len(x), f"streams/{done.id}.flac", "flac")
        assert (h.state, h.frames, h.path, h.rate, h.channels) == (
            "interrupted", 8000, f"streams/{held.id}.wav", RATE, 1)
        y, _ = sf.read(tmp_path / h.path, dtype="int16")
        assert np.array_equal(y, x[:8000])
        assert await after.hub.recover() == []  # registered once
