"""Where a live stream's archive comes from and where it goes: created, reopened for a
resume (here, or continued in a new part when the archive store holds the later ones),
finished (finalized to its format, or left resumable) and deleted with its files.

The hub owns the registry and the life cycle; this owns the files and their records in
the metadata store. With ``--archive-store`` (:class:`~earshot.server.streams.objects.ArchiveStore`,
set by the app) closed parts are handed to it as they rotate, and a finished archive once
it is closed.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from earshot.audio import ARCHIVE_FORMATS, ArchiveFormat, StreamSpec
from earshot.cluster.bus.base import Bus
from earshot.config import Settings
from earshot.errors import ProtocolError, StorageError
from earshot.server.streams.space import Space, is_no_space
from earshot.storage.archive import Archive, finalize
from earshot.storage.metadata import MetadataStore, StreamRecord
from earshot.wire.codes import Code

if TYPE_CHECKING:
    from earshot.server.streams.objects import ArchiveStore

log = logging.getLogger("earshot.hub")


def archive_format(value: str) -> ArchiveFormat:
    """``value`` (a setting, a start's choice or a stored record) as an archive format;
    :class:`StorageError` for one this version does not know."""
    for fmt in ARCHIVE_FORMATS:
        if value == fmt:
            return fmt
    raise StorageError(f"unknown archive format {value!r} (known: {', '.join(ARCHIVE_FORMATS)})")


class Archives:
    """The archives of the streams this gateway holds (see the module doc)."""

    def __init__(self, settings: Settings, store: MetadataStore, bus: Bus,
                 space: Space, spawn: Callable[[Any], None]) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.space = space
        self.spawn = spawn  # background work the hub's shutdown waits for
        self.data_dir = settings.server.data_dir
        self.streams_dir = self.data_dir / "streams"
        self.streams_dir.mkdir(parents=True, exist_ok=True)
        self.objects: ArchiveStore | None = None  # --archive-store (set by the app)

    def path_of(self, rec: StreamRecord) -> Path:
        return self.data_dir / rec.path

    # -- open ----------------------------------------------------------------------------
    def create(self, rel: str, spec: StreamSpec, fmt: ArchiveFormat) -> Archive:
        """A new archive at ``rel`` (under the data directory); a full disk is the client's
        ``storage_full``, and no zero-byte file is left behind."""
        path = self.data_dir / rel
        try:
            archive = Archive.create(path, spec.pcm, fmt, part_seconds=self.settings.archive.part,
                                     fsync=self.settings.archive.fsync)
        except OSError as exc:
            path.unlink(missing_ok=True)
            if is_no_space(exc):
                self.space.write_failed(f"creating {rel}")
                raise ProtocolError(Code.STORAGE_FULL, "the server's disk is full; "
                                    "try again later") from None
            raise
        self._watch(archive)
        return archive

    def register(self, rec: StreamRecord, archive: Archive) -> None:
        """Store the record of a new stream; its archive is removed when that fails."""
        try:
            self.store.create(rec)
        except StorageError as exc:
            archive.close()
            archive.path.unlink(missing_ok=True)
            if is_no_space(exc):
                self.space.write_failed("the metadata database")
                raise ProtocolError(Code.STORAGE_FULL, "the server's disk is full; "
                                    "try again later") from None
            raise

    async def reopen(self, rec: StreamRecord, spec: StreamSpec) -> Archive:
        """The archive a resume continues: here as it was, or, with an archive store, a
        new part on this gateway when later parts are elsewhere (server/streams/objects.py;
        docs/deploy.md: a gateway that died)."""
        path, fmt = self.path_of(rec), archive_format(rec.archive_format)
        seconds = self.settings.archive.part
        objects = self.objects
        if objects is None:
            archive = Archive.reopen(path, spec.pcm, fmt, part_seconds=seconds)
            self._watch(archive)
            return archive
        rows = await asyncio.to_thread(self.store.parts, rec.id)
        local = objects.local_files(rec.id)
        last_known = max((r.n for r in rows), default=0)
        if local and max(local) >= last_known:
            if 0 in local:
                archive = Archive.reopen(path, spec.pcm, fmt, part_seconds=seconds)
            else:
                archive = Archive.reopen_last(path, spec.pcm, fmt, part_seconds=seconds)
        else:
            tail = await self.bus.log_tail(rec.id)
            offset = tail if tail is not None else rec.frames
            starts = await asyncio.to_thread(objects.continue_here, rec, offset)
            archive = Archive.continue_at(path, spec.pcm, fmt, starts, part_seconds=seconds)
            log.warning("stream %s: its archive is elsewhere; continued here in part %d from "
                        "frame %d (%s)", rec.id, len(starts) - 1, offset,
                        "the shared log's end" if tail is not None else "the stored offset")
        self._watch(archive)
        return archive

    def _watch(self, archive: Archive) -> None:
        if self.objects is not None:
            archive.on_rotate = self._part_closed

    def _part_closed(self, archive: Archive, n: int) -> None:
        if self.objects is not None:
            try:
                self.objects.part_closed(archive, n)
            except Exception:  # never in the way of ingest
                log.exception("archive store: after closing part %d of %s", n, archive.base)

    # -- close ---------------------------------------------------------------------------
    def remove_new(self, rec: StreamRecord) -> None:
        """Forget a stream whose open failed half-way (nothing of it was acknowledged)."""
        self.store.delete(rec.id)
        for p in self.streams_dir.glob(f"{rec.id}.*"):
            p.unlink(missing_ok=True)

    async def finish(self, rec: StreamRecord, archive: Archive, *, finished: bool) -> None:
        """Close a detached stream's archive and record how it ended: ``finished`` (its
        archive finalized to its format) or ``interrupted`` (resumable; also when the disk
        is too full to finalize it)."""
        archive.sync(self.settings.archive.fsync)
        archive.close()
        rec.frames = archive.frames
        fields: dict[str, Any] = {"frames": rec.frames}
        if finished and self.objects is not None and archive.continued:
            rec.state, rec.ended = "finished", time.time()  # (the parts stay as written)
            fields.update(state="finished", ended=rec.ended)
        else:
            final: Path | None = None
            if finished:
                try:
                    final = await asyncio.to_thread(
                        finalize, archive.path, archive_format(rec.archive_format),
                        self.settings.archive.fsync)
                except OSError as exc:  # e.g. FLAC on a full disk: the WAV is kept whole
                    if not is_no_space(exc):
                        raise
                    self.space.write_failed(f"finalizing {rec.id}")
            if final is not None:
                rec.path = str(final.relative_to(self.data_dir))
                rec.state, rec.ended = "finished", time.time()
                fields.update(state="finished", ended=rec.ended, path=rec.path)
            else:
                rec.state = "interrupted"
                fields.update(state="interrupted")
        try:
            self.store.update(rec.id, **fields)
        except StorageError as exc:  # e.g. SQLite on a full disk: repaired at start
            if not is_no_space(exc):
                raise
            self.space.write_failed("the metadata database")

    def closed(self, rec: StreamRecord) -> None:
        """The stream is off the live map: its archive may go to the archive store."""
        if self.objects is not None:
            self.objects.archive_closed(rec)

    def delete(self, rec: StreamRecord) -> None:
        """Delete a (not live) stream's record, files and segments, and its objects."""
        seg_dir = self.streams_dir / f"{rec.id}.segments"
        if seg_dir.is_dir():
            shutil.rmtree(seg_dir)
        for p in self.streams_dir.glob(f"{rec.id}.*"):
            p.unlink(missing_ok=True)
        rows = self.store.parts(rec.id) if self.objects is not None else []
        self.store.delete(rec.id)
        if self.objects is not None and rows:
            self.spawn(self.objects.delete_stream(rows))
