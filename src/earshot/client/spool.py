"""Store-and-forward on disk: captured audio kept until the server has acknowledged it.

This module is the spool's core: files only, no network (the delivery is in
:mod:`earshot.client.spooled`). A spool directory holds one *entry* per captured stream, delivered
in the order of their numbers::

    DIR/
      000001-3f9a2c1d/            an entry: one captured stream
        meta.json                 its index (below), replaced atomically
        lock                      flock()ed by the process capturing or delivering it
        000000000000.pcm          segments: raw wire bytes (interleaved little-endian
        000000160000.pcm          frames), each named by its first frame, one every
                                  ``segment_seconds`` of audio

``meta.json`` holds what cannot be read from the segments: the stream's format, rate,
channels, name and processors; once the server has answered, its ``stream_id`` and
``resume_token``; ``acked`` (frames acknowledged, written at most once a second, so it may
lag: the server's ``ready`` says what it really holds); ``closed`` (capture ended, ``stop``
is to be sent); and the audio dropped when the spool was full. How many frames were
captured is read from the segment files themselves, like the server's archive recovery:
a trailing partial frame (a write cut by ``kill -9``) was never sent and is cut off.

Durability (``fsync``):

* ``"interval"`` (default): segments are fsynced at most every ``fsync_interval`` seconds
  (1 s) and when a segment is finished; ``meta.json`` is always written with fsync and
  rename (and a directory fsync). ``kill -9`` of the client loses nothing that was
  captured (the data is in the OS); a power cut or reboot loses at most the last second.
* ``"always"``: every append is fsynced (safest, costs an fsync per block).
* ``"never"``: the OS decides (survives ``kill -9``, not a power cut).

When the spool is full (``max_bytes``, all entries together), ``when_full`` decides:

* ``"drop-oldest"`` (default): the oldest segment is deleted, its unacknowledged frames
  counted in ``dropped`` and reported (:class:`Dropped`). The server never zero-fills a
  stream, so audio after such a gap goes to a *new* stream (same name): the entry's
  current server stream is queued in ``finish`` (to be stopped as it is) and ``origin``
  moves to the first frame after the gap.
* ``"stop"``: :meth:`Spool.append` raises :class:`SpoolFull`, and capture stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from earshot.audio import BYTES_PER_SAMPLE
from earshot.errors import ClientError
from earshot.fsutil import fsync_dir

__all__ = ["Dropped", "Spool", "SpoolEntry", "SpoolError", "SpoolFull"]

WhenFull = Literal["drop-oldest", "stop"]
FsyncPolicy = Literal["interval", "always", "never"]
WHEN_FULL: tuple[str, ...] = ("drop-oldest", "stop")
FSYNC_POLICIES: tuple[str, ...] = ("interval", "always", "never")
META = "meta.json"
SEGMENT_SUFFIX = ".pcm"


class SpoolError(ClientError):
    """A spool that cannot be used (unreadable, bad settings)."""


class SpoolFull(SpoolError):
    """The spool is full and its policy is ``stop``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="spool_full")


@dataclass(frozen=True, slots=True)
class Dropped:
    """Frames ``[start, end)`` of an entry deleted unacknowledged to make room."""

    entry: str
    start: int
    end: int
    rate: int

    @property
    def frames(self) -> int:
        return self.end - self.start


def _write_json_atomic(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    data = json.dumps(obj, indent=1).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class SpoolEntry:
    """One captured stream in the spool: its segments and its index."""

    def __init__(self, path: Path, meta: dict[str, Any], *, segment_frames: int,
                 fsync: FsyncPolicy, fsync_interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.meta = meta
        self.segment_frames = segment_frames
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.clock = clock
        self.frame_bytes = BYTES_PER_SAMPLE[meta["format"]] * int(meta["channels"])
        self._lock_fd: int | None = None
        self._fd: int | None = None  # the segment being appended to
        self._fd_start = -1
        self._unsynced = False
        self._synced_at = clock()
        self._meta_saved_at = clock()
        self._read_fds: dict[int, int] = {}
        self.segments: list[list[int]] = []  # [first frame, frames] in order
        self.written = 0
        self._scan()

    def _scan(self) -> None:
        """Frames on disk, from the segment files (a torn last frame is cut off)."""
        path, meta = self.path, self.meta
        self.segments = []
        for f in sorted(path.glob("*" + SEGMENT_SUFFIX)):
            start = int(f.stem)
            size = f.stat().st_size
            whole = size - size % self.frame_bytes
            if whole != size:  # a write cut short: that frame was never sent
                os.truncate(f, whole)
            self.segments.append([start, whole // self.frame_bytes])
        self.written = (self.segments[-1][0] + self.segments[-1][1] if self.segments
                        else int(meta.get("origin", 0)))
        self.written = max(self.written, int(meta.get("acked", 0)))

    # -- the index ---------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.path.name

    @property
    def number(self) -> int:
        return int(self.path.name.split("-", 1)[0])

    @property
    def rate(self) -> int:
        return int(self.meta["rate"])

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def format(self) -> str:
        return str(self.meta["format"])

    @property
    def name(self) -> str | None:
        return self.meta.get("name")

    @property
    def processors(self) -> list[Any] | None:
        return self.meta.get("processors")

    @property
    def stream_id(self) -> str | None:
        return self.meta.get("stream_id")

    @property
    def resume_token(self) -> str | None:
        return self.meta.get("resume_token")

    @property
    def origin(self) -> int:
        """Entry frame at which the current server stream begins (moves after a gap)."""
        return int(self.meta.get("origin", 0))

    @property
    def acked(self) -> int:
        """Entry frames acknowledged by the server (or dropped)."""
        return int(self.meta.get("acked", 0))

    @property
    def closed(self) -> bool:
        return bool(self.meta.get("closed"))

    @property
    def finish(self) -> list[list[Any]]:
        """Earlier server streams of this entry still to be stopped:
        ``[[id, token, origin], ...]`` (``origin``: the entry frame each one began at)."""
        return list(self.meta.get("finish", []))

    @property
    def dropped(self) -> int:
        return int(self.meta.get("dropped", 0))

    @property
    def pending(self) -> int:
        """Frames captured but not yet acknowledged."""
        return max(0, self.written - self.acked)

    @property
    def bytes_on_disk(self) -> int:
        return sum(n for _, n in self.segments) * self.frame_bytes

    @property
    def delivered(self) -> bool:
        """Nothing left to do: capture ended, every frame acknowledged, stream stopped."""
        return (self.closed and self.pending == 0 and not self.finish
                and (self.stream_id is None or bool(self.meta.get("stopped"))))

    def save(self) -> None:
        _write_json_atomic(self.path / META, self.meta)
        self._meta_saved_at = self.clock()

    def set_stream(self, stream_id: str, resume_token: str, origin: int | None = None) -> bool:
        """The server created (or resumed) this entry's stream for the audio from entry
        frame ``origin`` on: remember it first. If audio was dropped since (``origin`` is
        no longer current), the stream is queued to be stopped instead; returns False."""
        if origin is not None and origin != self.origin:
            if stream_id not in {f[0] for f in self.finish}:
                self.meta["finish"] = [*self.finish, [stream_id, resume_token, origin]]
                self.save()
            return False
        if (stream_id, resume_token) != (self.stream_id, self.resume_token):
            self.meta.update(stream_id=stream_id, resume_token=resume_token, stopped=False)
            self.save()
        return True

    def close_capture(self) -> None:
        if not self.closed:
            self.sync()
            self.meta["closed"] = True
            self.save()

    def mark_stopped(self, frames: int) -> None:
        """The server confirmed ``stopped`` with ``frames`` frames of the current stream."""
        self.meta["stopped"] = True
        self.ack(self.origin + frames, force=True)

    def finished(self, stream_id: str, frames: int | None = None) -> None:
        """An earlier server stream (queued in ``finish``) is stopped, holding ``frames``.

        If it holds audio beyond the gap (sent before those frames were dropped from disk),
        the next stream begins after it, so no frame is delivered twice."""
        for sid, _tok, origin in self.finish:
            if sid == stream_id and frames is not None and self.stream_id is None:
                end = min(self.written, int(origin) + frames)
                if end > self.origin:
                    self.meta["origin"] = end
                    self.meta["acked"] = max(self.acked, end)
        self.meta["finish"] = [f for f in self.finish if f[0] != stream_id]
        self.save()

    def ack(self, frame: int, *, force: bool = False) -> None:
        """Entry frames below ``frame`` are acknowledged: delete the segments they fill."""
        frame = min(frame, self.written)
        if frame > self.acked:
            self.meta["acked"] = frame
        while self.segments and self.segments[0][0] + self.segments[0][1] <= self.acked \
                and (len(self.segments) > 1 or self.closed or self._fd is None):
            self._remove_segment(self.segments.pop(0)[0])
        if force or self.clock() - self._meta_saved_at >= 1.0:
            self.save()

    # -- segments ----------------------------------------------------------------------------
    def _seg_path(self, start: int) -> Path:
        return self.path / f"{start:012d}{SEGMENT_SUFFIX}"

    def _remove_segment(self, start: int) -> None:
        fd = self._read_fds.pop(start, None)
        if fd is not None:
            os.close(fd)
        if start == self._fd_start and self._fd is not None:
            os.close(self._fd)
            self._fd, self._fd_start = None, -1
        self._seg_path(start).unlink(missing_ok=True)

    def append(self, data: bytes) -> None:
        """Append whole frames (wire bytes); rolls to a new segment every
        ``segment_frames``. Call through :meth:`Spool.append`, which makes room first."""
        if self.closed:
            raise SpoolError(f"spool entry {self.id} is closed")
        fb = self.frame_bytes
        if len(data) % fb:
            raise SpoolError(f"{len(data)} bytes is not whole {fb}-byte frames")
        view = memoryview(data)
        while view:
            if not self.segments or self.segments[-1][1] >= self.segment_frames \
                    or self._fd_start != self.segments[-1][0]:
                self._open_for_append()
            seg = self.segments[-1]
            n = min(len(view) // fb, self.segment_frames - seg[1])
            chunk = view[: n * fb]
            assert self._fd is not None
            while chunk:
                k = os.write(self._fd, chunk)
                chunk = chunk[k:]
            seg[1] += n
            self.written += n
            view = view[n * fb:]
            self._unsynced = True
        if self.fsync == "always" or (
                self.fsync == "interval" and self.clock() - self._synced_at >= self.fsync_interval):
            self.sync()

    def _open_for_append(self) -> None:
        full = self.segments and self.segments[-1][1] >= self.segment_frames
        if self._fd is not None:
            if full:
                self.sync()  # a finished segment is made durable before the next begins
            os.close(self._fd)
            self._fd = None
        created = not self.segments or full
        if created:
            self.segments.append([self.written, 0])
        start = self.segments[-1][0]
        self._fd = os.open(self._seg_path(start), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._fd_start = start
        if created and self.fsync != "never":
            fsync_dir(self.path)  # the new file's name survives a power cut

    def sync(self) -> None:
        if self._fd is not None and self._unsynced and self.fsync != "never":
            os.fsync(self._fd)
        self._unsynced = False
        self._synced_at = self.clock()

    def read(self, frame: int, max_frames: int) -> bytes:
        """Up to ``max_frames`` frames from entry frame ``frame`` on (within one segment);
        empty if ``frame`` is not on disk."""
        for start, n in self.segments:
            if start <= frame < start + n:
                fd = self._read_fds.get(start)
                if fd is None:
                    fd = self._read_fds[start] = os.open(self._seg_path(start), os.O_RDONLY)
                k = min(max_frames, start + n - frame)
                return os.pread(fd, k * self.frame_bytes, (frame - start) * self.frame_bytes)
        return b""

    def drop_oldest_possible(self) -> bool:
        """True if a segment other than the one being written is on disk."""
        return bool(self.segments) and not (len(self.segments) == 1 and self._fd is not None
                                            and not self.closed)

    def drop_oldest(self) -> Dropped | None:
        """Delete the oldest segment (not the one being written); report lost frames."""
        if not self.drop_oldest_possible():
            return None
        start, n = self.segments.pop(0)
        self._remove_segment(start)
        end = start + n
        lost_from = max(start, self.acked)
        if end <= lost_from:
            self.save()
            return None
        if self.stream_id is not None:
            self.meta["finish"] = [*self.finish,
                                   [self.stream_id, self.resume_token, self.origin]]
        self.meta.update(stream_id=None, resume_token=None, stopped=False, origin=end,
                         acked=end, dropped=self.dropped + end - lost_from,
                         gaps=[*self.meta.get("gaps", []), [lost_from, end]])
        self.save()
        return Dropped(self.id, lost_from, end, self.rate)

    # -- locking -----------------------------------------------------------------------------
    def try_lock(self) -> bool:
        """Take this entry for this process (capture or delivery); False if another has it."""
        if self._lock_fd is not None:
            return True
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        self.refresh()  # another process may have changed it until now
        return True

    def refresh(self) -> None:
        """Re-read the index and the segments (for an entry this process does not hold)."""
        if self._fd is not None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.meta = json.loads((self.path / META).read_text())
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()
        with contextlib.suppress(OSError):
            self._scan()

    def locked_elsewhere(self) -> bool:
        if self._lock_fd is not None:
            return False
        if self.try_lock():
            self.unlock()
            return False
        return True

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close_files(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd, self._fd_start = None, -1
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()

    def remove(self) -> None:
        """The entry is delivered: delete it (its lock goes with it)."""
        self.close_files()
        gone = self.path.with_name("." + self.path.name + ".delivered")
        os.replace(self.path, gone)
        self.unlock()
        shutil.rmtree(gone, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        held = self._lock_fd is not None or self.locked_elsewhere()  # by a live process
        state = ("delivered" if self.delivered else
                 "capturing" if not self.closed and held else
                 "delivering" if held else
                 "ended" if self.closed else "interrupted")
        return {
            "entry": self.id, "name": self.name, "format": self.format, "rate": self.rate,
            "channels": self.channels, "created": self.meta.get("created"),
            "captured_frames": self.written, "pending_frames": self.pending,
            "pending_seconds": round(self.pending / self.rate, 3),
            "bytes": self.bytes_on_disk, "stream": self.stream_id,
            "dropped_frames": self.dropped, "gaps": self.meta.get("gaps", []),
            "state": state,
        }


class Spool:
    """A spool directory: entries in order, a size limit shared by all of them."""

    def __init__(self, path: str | Path, *, max_bytes: int = 1 << 30,
                 when_full: WhenFull = "drop-oldest", segment_seconds: float = 10.0,
                 fsync: FsyncPolicy = "interval", fsync_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if when_full not in WHEN_FULL:
            raise SpoolError(f"when_full must be one of {WHEN_FULL}, not {when_full!r}")
        if fsync not in FSYNC_POLICIES:
            raise SpoolError(f"fsync must be one of {FSYNC_POLICIES}, not {fsync!r}")
        if segment_seconds <= 0:
            raise SpoolError("segment_seconds must be positive")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.when_full: WhenFull = when_full
        self.segment_seconds = segment_seconds
        self.fsync: FsyncPolicy = fsync
        self.fsync_interval = fsync_interval
        self.clock = clock
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {self.path}: {exc}") from None
        self._open: dict[str, SpoolEntry] = {}
        self.dropped: list[Dropped] = []
        self._used: int | None = None  # bytes on disk, counted at most once a second
        self._used_at = 0.0

    def _load(self, p: Path) -> SpoolEntry | None:
        try:
            meta = json.loads((p / META).read_text())
        except (OSError, ValueError):
            return None  # an entry whose creation was cut short holds no audio
        rate = float(meta["rate"])
        return SpoolEntry(p, meta, segment_frames=max(1, int(rate * self.segment_seconds)),
                          fsync=self.fsync, fsync_interval=self.fsync_interval,
                          clock=self.clock)

    def entries(self) -> list[SpoolEntry]:
        """Every entry, oldest first (already open ones are reused)."""
        out = []
        for p in sorted(self.path.iterdir()):
            if not p.is_dir() or p.name.startswith(".") or "-" not in p.name:
                continue
            entry = self._open.get(p.name)
            if entry is not None and entry._lock_fd is None:
                entry.refresh()
            if entry is None:
                entry = self._load(p)
                if entry is None:
                    continue
                self._open[p.name] = entry
            out.append(entry)
        for p in self.path.glob(".*.delivered"):  # a removal cut short
            shutil.rmtree(p, ignore_errors=True)
        return out

    def create(self, *, format: str, rate: int, channels: int, name: str | None = None,
               processors: list[Any] | None = None) -> SpoolEntry:
        """A new entry (numbered after every existing one), locked by this process."""
        if format not in BYTES_PER_SAMPLE:
            raise SpoolError(f"the spool keeps PCM (s16 or f32), not {format!r}")
        numbers = [e.number for e in self.entries()]
        number = max(numbers, default=0) + 1
        path = self.path / f"{number:06d}-{secrets.token_hex(4)}"
        path.mkdir()
        meta = {"format": format, "rate": rate, "channels": channels, "name": name,
                "processors": processors, "created": time.time(), "origin": 0, "acked": 0,
                "closed": False, "stream_id": None, "resume_token": None, "finish": [],
                "dropped": 0, "gaps": []}
        _write_json_atomic(path / META, meta)
        entry = self._load(path)
        assert entry is not None
        if not entry.try_lock():  # pragma: no cover - a fresh directory
            raise SpoolError(f"cannot lock new spool entry {path}")
        self._open[path.name] = entry
        return entry

    @property
    def bytes_used(self) -> int:
        return sum(e.bytes_on_disk for e in self.entries())

    def append(self, entry: SpoolEntry, data: bytes) -> list[Dropped]:
        """Append to ``entry``, first making room under ``max_bytes`` by the policy.

        Returns what was dropped for it (also kept in :attr:`dropped`); raises
        :class:`SpoolFull` under ``when_full="stop"``."""
        dropped: list[Dropped] = []
        now = self.clock()
        if self._used is None or now - self._used_at >= 1.0:  # re-count what others changed
            self._used, self._used_at = self.bytes_used, now
        used = self._used
        if used + len(data) > self.max_bytes:  # acks may have freed space since the count
            self._used, self._used_at = self.bytes_used, now
            used = self._used
        while used + len(data) > self.max_bytes:
            if self.when_full == "stop":
                raise SpoolFull(
                    f"spool {self.path} is full ({used} of {self.max_bytes} bytes); "
                    "capture stopped (--when-full drop-oldest keeps the newest audio instead)")
            victim = next((e for e in self.entries() if e.drop_oldest_possible()), None)
            if victim is None:
                raise SpoolFull(f"spool {self.path} is full ({used} of {self.max_bytes} "
                                "bytes) and only the segment being written is left: "
                                "raise --spool-size")
            before = victim.bytes_on_disk
            d = victim.drop_oldest()
            used -= before - victim.bytes_on_disk
            if d is not None:
                dropped.append(d)
        entry.append(data)
        self._used = used + len(data)
        self.dropped += dropped
        return dropped

    def status(self) -> dict[str, Any]:
        entries = [e.status() for e in self.entries()]
        return {"spool": str(self.path), "max_bytes": self.max_bytes,
                "when_full": self.when_full, "bytes": sum(e["bytes"] for e in entries),
                "pending_seconds": round(sum(e["pending_seconds"] for e in entries), 3),
                "entries": entries}

    def close(self) -> None:
        for e in self._open.values():
            with contextlib.suppress(OSError):
                e.close_files()
            e.unlock()
        self._open.clear()

