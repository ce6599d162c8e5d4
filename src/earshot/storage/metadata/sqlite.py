""":class:`~earshot.storage.metadata.records.MetadataStore` on SQLite: the default store, a
file in the data directory (WAL mode, one connection per process behind a lock)."""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from earshot.errors import DuplicateStream, StorageError, StreamNotFound
from earshot.storage.metadata.migrate import migrate_sqlite
from earshot.storage.metadata.records import (
    COLUMNS,
    PART_COLUMNS,
    PartRecord,
    SegmentRecord,
    StreamRecord,
    StreamState,
    segment_conflict,
    transcript_values,
    update_fields,
)

#: Seconds a process waits for another's SQLite write lock before giving up.
BUSY_TIMEOUT = 30.0


def _wal_mode(db: sqlite3.Connection, deadline: float) -> None:
    """Switch ``db`` to WAL, waiting for other processes until ``deadline``.

    Making a fresh file WAL takes an exclusive lock, and SQLite answers ``SQLITE_BUSY``
    at once for it, without the busy handler: gateways starting together on an empty
    database saw "database is locked" about once in ten. So it is retried here.
    """
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


class SqliteStore:
    """:class:`MetadataStore` on one SQLite file (WAL mode, one connection per process).

    Several processes on one machine may share the file: writers wait up to
    :data:`BUSY_TIMEOUT` for each other's lock, and every read-modify-write is one
    statement. Not for a network file system: several machines need PostgreSQL.
    """

    def __init__(self, path: Path, *, full_sync: bool = False) -> None:
        """``full_sync`` (the server's ``--fsync``): ``synchronous=FULL``, every commit
        durable across a power cut (NORMAL, the default, may lose the last commits)."""
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT,
                                       check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from None
        try:
            self._db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
            _wal_mode(self._db, time.monotonic() + BUSY_TIMEOUT)
            self._db.execute(f"PRAGMA synchronous={'FULL' if full_sync else 'NORMAL'}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self.migrated = migrate_sqlite(self._db)
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from None
            raise

    def _row(self, row: tuple[Any, ...]) -> StreamRecord:
        d = dict(zip(COLUMNS, row, strict=True))
        d["client"] = json.loads(d["client"] or "{}")
        return StreamRecord(**d)

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite {self.path}: {exc}") from exc

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> builtins.list[tuple[Any, ...]]:
        with self._lock:
            return self._run(sql, args).fetchall()

    def _count(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        """Run a write; the number of rows it changed."""
        with self._lock:
            return self._run(sql, args).rowcount

    def create(self, rec: StreamRecord) -> None:
        values = [getattr(rec, c) for c in COLUMNS]
        values[-1] = json.dumps(rec.client)
        marks = ",".join("?" * len(COLUMNS))
        try:
            self._query(f"INSERT INTO streams ({','.join(COLUMNS)}) VALUES ({marks})",
                        tuple(values))
        except sqlite3.IntegrityError as exc:
            raise DuplicateStream(f"stream id {rec.id} exists already") from exc

    def get(self, stream_id: str) -> StreamRecord:
        rows = self._query(f"SELECT {','.join(COLUMNS)} FROM streams WHERE id=?", (stream_id,))
        if not rows:
            raise StreamNotFound(stream_id)
        return self._row(rows[0])

    def list(self, *, limit: int, offset: int) -> tuple[builtins.list[StreamRecord], int]:
        rows = self._query(
            f"SELECT {','.join(COLUMNS)} FROM streams ORDER BY created DESC, id DESC "
            "LIMIT ? OFFSET ?",
            (limit, offset),
        )
        total = self._query("SELECT COUNT(*) FROM streams")[0][0]
        return [self._row(r) for r in rows], total

    def update(self, stream_id: str, **fields: Any) -> None:
        sets, values = update_fields(fields, "?", json.dumps)
        self._query(f"UPDATE streams SET {sets} WHERE id=?", (*values, stream_id))

    def delete(self, stream_id: str) -> None:
        self._query("DELETE FROM streams WHERE id=?", (stream_id,))

    def with_state(self, state: StreamState) -> builtins.list[StreamRecord]:
        rows = self._query(f"SELECT {','.join(COLUMNS)} FROM streams WHERE state=?", (state,))
        return [self._row(r) for r in rows]

    def allocate_segment(self, stream_id: str) -> int:
        rows = self._query("UPDATE streams SET next_segment = next_segment + 1 WHERE id=? "
                           "RETURNING next_segment - 1", (stream_id,))
        if not rows:
            raise StreamNotFound(stream_id)
        return int(rows[0][0])

    def add_segment(self, seg: SegmentRecord) -> None:
        try:
            self._query(
                'INSERT INTO segments (stream, n, start, "end", rate, path, created) '
                "VALUES (?,?,?,?,?,?,?)",
                (seg.stream, seg.n, seg.start, seg.end, seg.rate, seg.path, seg.created),
            )
        except sqlite3.IntegrityError as exc:
            raise segment_conflict(self, seg) from exc

    def segments(self, stream_id: str) -> builtins.list[SegmentRecord]:
        rows = self._query(
            'SELECT stream, n, start, "end", rate, path, created FROM segments '
            "WHERE stream=? ORDER BY n", (stream_id,))
        return [SegmentRecord(*r) for r in rows]

    def claim_event(self, stream_id: str, key: str) -> bool:
        try:
            return self._count("INSERT OR IGNORE INTO claimed_events (stream, key, created) "
                               "VALUES (?,?,?)", (stream_id, key, time.time())) == 1
        except sqlite3.IntegrityError:  # the foreign key: OR IGNORE does not cover it
            raise StreamNotFound(stream_id) from None

    def add_transcript(self, stream_id: str, final: dict[str, Any]) -> None:
        """Store a final transcript (a later final of the same segment replaces it)."""
        seg, start, end, text, words = transcript_values(final)
        try:
            self._query(
                'INSERT OR REPLACE INTO transcripts (stream, segment, start, "end", text, '
                "words, created) VALUES (?,?,?,?,?,?,?)",
                (stream_id, seg, start, end, text, json.dumps(words), time.time()))
        except sqlite3.IntegrityError:
            raise StreamNotFound(stream_id) from None

    def transcripts(self, stream_id: str) -> builtins.list[dict[str, Any]]:
        rows = self._query(
            'SELECT segment, start, "end", text, words FROM transcripts WHERE stream=? '
            "ORDER BY start, segment", (stream_id,))
        return [{"segment": r[0], "start": r[1], "end": r[2], "text": r[3],
                 "words": json.loads(r[4])} for r in rows]

    def add_part(self, stream_id: str, n: int, start: int, gateway: str = "") -> bool:
        try:
            return self._count("INSERT OR IGNORE INTO archive_parts (stream, n, start, gateway) "
                               "VALUES (?,?,?,?)", (stream_id, n, start, gateway)) == 1
        except sqlite3.IntegrityError:
            raise StreamNotFound(stream_id) from None

    def part_uploaded(self, part: PartRecord) -> None:
        values = tuple(getattr(part, c) for c in PART_COLUMNS)
        try:
            self._query(
                f"INSERT INTO archive_parts ({','.join(PART_COLUMNS)}) VALUES "
                f"({','.join('?' * len(PART_COLUMNS))}) ON CONFLICT (stream, n) DO UPDATE SET "
                "name=excluded.name, size=excluded.size, frames=excluded.frames, "
                "sha256=excluded.sha256, etag=excluded.etag, uploaded=excluded.uploaded, "
                "gateway=excluded.gateway", values)
        except sqlite3.IntegrityError:
            raise StreamNotFound(part.stream) from None

    def parts(self, stream_id: str) -> builtins.list[PartRecord]:
        rows = self._query(f"SELECT {','.join(PART_COLUMNS)} FROM archive_parts WHERE stream=? "
                           "ORDER BY n", (stream_id,))
        return [PartRecord(*r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
