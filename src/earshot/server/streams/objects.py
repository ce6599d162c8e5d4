"""Archives in object storage (``--archive-store s3://BUCKET/PREFIX``): the glue between a
gateway and :mod:`earshot.storage.objects`.

The data directory is the write buffer. A part is uploaded as soon as it is closed (a
rotation), every part of an archive when its stream detaches (stopped, dropped or drained),
and, at start-up, every closed file not yet in the store (a gateway that died uploads its
live part when it is back). Each upload is verified (size, MD5-based ETag, SHA-256 in the
object's metadata: storage/objects/s3.py), recorded in the metadata store
(``archive_parts``: the part's number, start, size, frames), and the local file is removed
``--archive-keep-local`` seconds later, unless it changed since (a stream resumed here).

Reads (:meth:`ArchiveStore.parts`) combine what is local with what the metadata store
knows, so any gateway serves any archive: a part on the local disk is read from it, any
other from the object store by ranged GETs (storage/objects/remote.py).

A stream resumed on a gateway without its archive (its gateway died, or drained and the
client came back elsewhere) continues in a new part (:meth:`continue_here`) numbered after
every part the metadata store knows, from the offset the shared log says was written; the
parts before stay where they were until their gateway uploads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from earshot.config import Settings
from earshot.errors import StorageError, StreamNotFound
from earshot.storage import parts as P
from earshot.storage.archive import Archive
from earshot.storage.metadata import MetadataStore, PartRecord, StreamRecord
from earshot.storage.objects import (
    S3Config,
    S3ObjectStore,
    Uploader,
    UploadJob,
    UploadQueue,
    UploadResult,
)
from earshot.storage.objects.remote import ReadCounter, RemoteFile

log = logging.getLogger("earshot.objects")
PROBE_EVERY = 2.0  # seconds between checks of a store that fails

_FILE = re.compile(r"^(?P<id>[^.]+)(?:\.part(?P<n>\d{4,}))?\.(?P<ext>wav|flac|ogg)$")


@dataclass(frozen=True)
class Tag:
    """What an upload job carries back: whose part it is."""

    stream: str
    n: int
    start: int
    mtime_ns: int


def store_from_settings(settings: Settings) -> S3ObjectStore:
    """The S3 store ``--archive-store`` names (ConfigError / MissingDependency at once)."""
    a = settings.archive
    assert a.store is not None
    return S3ObjectStore(S3Config.from_env(
        a.store, endpoint_url=a.store_endpoint, region=a.store_region,
        access_key_id=a.store_access_key_id, secret_access_key=a.store_secret_access_key))


class ArchiveStore:
    """One gateway's side of the object store: uploads, removals, remote reads."""

    def __init__(self, settings: Settings, store: MetadataStore, s3: S3ObjectStore, *,
                 writing: Callable[[str], Archive | None] = lambda sid: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.data_dir = settings.server.data_dir
        self.streams_dir = self.data_dir / "streams"
        self.meta = store
        self.s3 = s3
        self.keep_local = settings.archive.keep_local
        self.writing = writing  # the live archive of a stream held here, if any
        self.clock = clock
        self.gateway = f"{socket.gethostname()}:{os.getpid()}"
        self.reads = ReadCounter()
        self.uploader = Uploader(s3, UploadQueue(), on_uploaded=self._uploaded, clock=clock)
        self.removed_files = 0
        self._removals: list[tuple[float, str, int, int]] = []  # (due, path, size, mtime)
        self._sweeper: asyncio.Task[None] | None = None
        self._checking: asyncio.Task[bool] | None = None

    # -- life --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the store (in the background, so a store that does not answer never holds
        the start: a clear error in the log and /healthz if it fails, ``state`` "unknown"
        until it is done; ingest goes on), queue every closed file not yet uploaded, start
        removing uploaded ones."""
        await self.uploader.start(check=False)
        self._checking = asyncio.create_task(self.uploader.check(), name="earshot-store-check")
        try:
            queued = await asyncio.to_thread(self._scan)
        except Exception:
            log.exception("archive store: scanning %s for files to upload", self.streams_dir)
            queued = []
        for job in queued:
            self.uploader.submit(job)
        if queued:
            log.info("archive store: %d closed file(s) queued for upload", len(queued))
        self._sweeper = asyncio.create_task(self._sweep(), name="earshot-archive-sweep")

    async def close(self, timeout: float = 5.0) -> None:
        if self._checking is not None and not self._checking.done():
            self._checking.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.uploader.close(timeout)

    # -- what goes up ------------------------------------------------------------------------
    def local_files(self, sid: str) -> dict[int, Path]:
        """The part files of a stream on this disk, by part number (finished forms first)."""
        found: dict[int, Path] = {}
        for p in self.streams_dir.glob(f"{sid}.*"):
            m = _FILE.match(p.name)
            if m is None or m["id"] != sid:
                continue
            n = int(m["n"] or 0)
            if n not in found or found[n].suffix == ".wav":
                found[n] = p
        return found

    def _starts(self, sid: str, base: Path) -> dict[int, int]:
        starts: dict[int, int] = {0: 0}
        with contextlib.suppress(StorageError):
            meta = P.read_sidecar(base)
            if meta is not None:
                starts.update(enumerate(int(s) for s in meta["starts"]))
        return starts

    def _job(self, sid: str, n: int, start: int, path: Path) -> UploadJob | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return UploadJob(str(path.relative_to(self.data_dir)), str(path), st.st_size,
                         Tag(sid, n, start, st.st_mtime_ns))

    def _scan(self) -> list[UploadJob]:
        """Closed local files whose upload is not recorded (or recorded at another size)."""
        ids = {m["id"] for p in self.streams_dir.glob("*.*")
               if (m := _FILE.match(p.name)) is not None}
        jobs = []
        for sid in sorted(ids):
            try:
                rec = self.meta.get(sid)
            except StreamNotFound:
                continue  # a file of no stream (deleted): not ours to upload
            done = {r.n: r for r in self.meta.parts(sid)}
            base = self.data_dir / rec.path
            starts = self._starts(sid, base)
            for n, path in sorted(self.local_files(sid).items()):
                if path.suffix == ".wav":  # a crash may have left its sizes stale
                    from earshot.storage.wav import repair

                    with contextlib.suppress(OSError, StorageError):
                        repair(path)
                row = done.get(n)
                job = self._job(sid, n, starts.get(n, row.start if row else 0), path)
                if job is None:
                    continue
                if row is not None and row.uploaded is not None and row.size == job.size \
                        and row.name == job.name:
                    self._schedule_removal(path, job.size, job.tag.mtime_ns,
                                           float(row.uploaded))
                    continue
                jobs.append(job)
        return jobs

    def part_closed(self, archive: Archive, n: int) -> None:
        """A rotation closed part ``n`` (on the event loop): claim the new part in the
        metadata store, upload the closed one."""
        sid = archive.base.name.split(".", 1)[0]
        new_n, new_start = len(archive.starts) - 1, archive.starts[-1]
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, self._claim_quietly, sid, new_n, new_start)
        job = self._job(sid, n, archive.starts[n], P.part_path(archive.base, n))
        if job is not None:
            self.uploader.submit(job)

    def _claim_quietly(self, sid: str, n: int, start: int) -> None:
        try:
            self.meta.add_part(sid, n, start, self.gateway)
        except Exception:
            log.exception("archive store: recording part %d of %s", n, sid)

    def archive_closed(self, rec: StreamRecord) -> None:
        """A stream detached (its archive closed, finalized if it finished): upload every
        part of it on this disk."""
        base = self.data_dir / rec.path
        starts = self._starts(rec.id, base)
        for n, path in sorted(self.local_files(rec.id).items()):
            job = self._job(rec.id, n, starts.get(n, 0), path)
            if job is not None:
                self.uploader.submit(job)

    async def _uploaded(self, job: UploadJob, result: UploadResult) -> None:
        tag: Tag = job.tag
        path = Path(job.path)

        def record() -> None:
            try:
                frames = P.file_frames(path)
            except (OSError, StorageError):
                frames = None
            self.meta.part_uploaded(PartRecord(
                tag.stream, tag.n, tag.start, self.gateway, job.name, result.size, frames,
                result.sha256, result.etag, time.time()))

        try:
            await asyncio.to_thread(record)
        except StreamNotFound:  # deleted meanwhile: the object goes too
            await asyncio.to_thread(self._delete_objects, [job.name])
            return
        self._schedule_removal(path, result.size, tag.mtime_ns, time.time())

    # -- local removal -----------------------------------------------------------------------
    def _schedule_removal(self, path: Path, size: int, mtime_ns: int, uploaded: float) -> None:
        due = self.clock() + max(0.0, uploaded + self.keep_local - time.time())
        heapq.heappush(self._removals, (due, str(path), size, mtime_ns))

    def sweep(self) -> int:
        """Remove the local files whose keep-local time is up and that did not change
        since their upload (never the part a live stream here is writing)."""
        removed = 0
        now = self.clock()
        while self._removals and self._removals[0][0] <= now:
            _, name, size, mtime_ns = heapq.heappop(self._removals)
            path = Path(name)
            m = _FILE.match(path.name)
            live = self.writing(m["id"]) if m is not None else None
            if live is not None and live.part.path == path:
                continue  # being written again (resumed here): uploaded again when closed
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                continue  # changed since: its new version is queued
            path.unlink(missing_ok=True)
            removed += 1
        self.removed_files += removed
        return removed

    async def _sweep(self) -> None:
        next_probe = self.clock() + PROBE_EVERY
        while True:
            await asyncio.sleep(min(1.0, max(0.05, self.keep_local / 4)))
            try:
                self.sweep()
            except Exception:
                log.exception("archive store: removing uploaded files")
            if self.clock() >= next_probe:
                next_probe = self.clock() + PROBE_EVERY
                await self.probe()

    async def probe(self) -> bool:
        """While the store fails (or uploads wait out a backoff): check it again; once it
        works, every waiting upload goes at once (the backlog drains without waiting for
        the longest backoff)."""
        u = self.uploader
        if u.state == "ok" and not u.queue.report(self.clock())["retrying"]:
            return True
        if not await u.check():
            return False
        moved = u.retry_now()
        if moved:
            log.info("archive store: works again; %d upload(s) retried now", moved)
        return True

    # -- continuing a stream whose archive is elsewhere ---------------------------------------
    def continue_here(self, rec: StreamRecord, offset: int) -> list[int]:
        """Claim the next part of ``rec``'s archive for this gateway, starting at ``offset``;
        the starts of every part up to it (for :meth:`Archive.continue_at`)."""
        known = {r.n: r.start for r in self.meta.parts(rec.id)}
        n = max(known, default=0) + 1
        while not self.meta.add_part(rec.id, n, offset, self.gateway):
            known = {r.n: r.start for r in self.meta.parts(rec.id)}
            n = max(known) + 1
        starts = [0] * (n + 1)
        for i in range(1, n):  # (a number never claimed: an empty part at the next start)
            starts[i] = known.get(i, starts[i - 1])
        starts[n] = offset
        return starts

    # -- reading -----------------------------------------------------------------------------
    def parts(self, rec: StreamRecord) -> list[P.Part]:
        """The parts of ``rec``'s archive, local or in the object store (blocking: call it
        in a thread). FileNotFoundError when part 0 is nowhere."""
        rows = self.meta.parts(rec.id)
        remote = {r.name.rsplit("/", 1)[-1]: RemoteFile(self.s3, r.name, int(r.size),
                                                         self.reads)
                  for r in rows if r.name is not None and r.size is not None}
        return P.load_known(self.data_dir / rec.path, {r.n: r.start for r in rows}, remote,
                            rate=rec.rate)

    def _delete_objects(self, names: list[str]) -> None:
        for name in names:
            try:
                self.s3.delete(name)
            except Exception as exc:
                log.warning("archive store: deleting %s: %s", name, exc)

    def single_remote(self, rec: StreamRecord) -> RemoteFile | None:
        """The archive's one file when it has one part only and that is in the object store
        and not on this disk (served as it is: a Range is one ranged GET)."""
        rows = self.meta.parts(rec.id)
        if len(rows) != 1 or rows[0].n != 0 or rows[0].name is None or rows[0].size is None:
            return None
        if self.local_files(rec.id) or P.is_rotated(self.data_dir / rec.path):
            return None
        return RemoteFile(self.s3, rows[0].name, int(rows[0].size), self.reads)

    async def delete_stream(self, rows: list[PartRecord]) -> None:
        names = [r.name for r in rows if r.name]
        for name in names:
            self.uploader.queue.discard(name)
        await asyncio.to_thread(self._delete_objects, names)

    # -- what /healthz and /metrics show -------------------------------------------------------
    def report(self) -> dict[str, Any]:
        out = self.uploader.report()
        out.update(keep_local=self.keep_local, removed_files=self.removed_files,
                   pending_removals=len(self._removals), read_requests=self.reads.requests,
                   read_bytes=self.reads.bytes)
        return out

    def collector(self) -> ArchiveStoreCollector:
        return ArchiveStoreCollector(self)


class ArchiveStoreCollector:
    """The archive store as Prometheus sees it (no store call at scrape time)."""

    def __init__(self, objects: ArchiveStore) -> None:
        self.objects = objects

    def describe(self) -> list[object]:
        return []

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        r = self.objects.report()
        yield GaugeMetricFamily("earshot_archive_store_up",
                                "1 while the object store works (start-up check and uploads)",
                                value=int(r["state"] == "ok"))
        yield GaugeMetricFamily("earshot_archive_store_backlog_files",
                                "Closed files waiting for upload (or being uploaded)",
                                value=r["backlog_files"])
        yield GaugeMetricFamily("earshot_archive_store_backlog_bytes",
                                "Bytes of the files waiting for upload",
                                value=r["backlog_bytes"])
        yield GaugeMetricFamily("earshot_archive_store_oldest_seconds",
                                "Age of the oldest file waiting for upload",
                                value=r["oldest_seconds"])
        yield CounterMetricFamily("earshot_archive_store_uploaded_files",
                                  "Files uploaded and verified", value=r["uploaded_files"])
        yield CounterMetricFamily("earshot_archive_store_uploaded_bytes",
                                  "Bytes uploaded and verified", value=r["uploaded_bytes"])
        yield CounterMetricFamily("earshot_archive_store_upload_failures",
                                  "Upload attempts that failed (each is retried)",
                                  value=r["failures"])
        yield CounterMetricFamily("earshot_archive_store_read_requests",
                                  "Ranged GETs made to serve archives not on local disk",
                                  value=r["read_requests"])
        yield CounterMetricFamily("earshot_archive_store_read_bytes",
                                  "Bytes fetched from the object store to serve archives",
                                  value=r["read_bytes"])
