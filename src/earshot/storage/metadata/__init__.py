"""Stream metadata behind a small interface: SQLite (the default) and PostgreSQL.

Another database can be added by implementing :class:`MetadataStore`. Calls are short and
synchronous: the server makes them only at stream start, stop, periodic progress updates,
segments, final transcripts and REST requests — never per audio message. The schema is
versioned (:mod:`earshot.storage.metadata.migrate`); :func:`open_store` picks the store a ``--db``
value names. PostgreSQL is in :mod:`earshot.storage.metadata.postgres` (the ``postgres`` extra).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from earshot.errors import ConfigError, DuplicateStream, StorageError, StreamNotFound
from earshot.storage.metadata.migrate import migrate_sqlite

StreamState = Literal["live", "interrupted", "finished"]


@dataclass(slots=True)
class StreamRecord:
    id: str
    name: str | None
    created: float
    format: str  # wire sample format: s16 | f32
    archive_format: str
    rate: int
    channels: int
    path: str  # archive file, relative to the data directory
    token_hash: str
    frames: int = 0
    state: StreamState = "live"
    ended: float | None = None
    client: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.frames / self.rate

    def public(self) -> dict[str, Any]:
        """The record as served over REST (no secrets)."""
        d = asdict(self)
        d.pop("token_hash")
        d["duration"] = round(self.duration, 6)
        return d


@dataclass(slots=True)
class SegmentRecord:
    stream: str
    n: int
    start: int  # frames, at the stream's rate
    end: int
    rate: int
    path: str  # relative to the data directory
    created: float

    def public(self) -> dict[str, Any]:
        return {
            "segment": self.n, "start": self.start / self.rate, "end": self.end / self.rate,
            "duration": (self.end - self.start) / self.rate, "start_frame": self.start,
            "end_frame": self.end, "url": f"/api/streams/{self.stream}/segments/{self.n}/audio",
        }


class MetadataStore(Protocol):
    """Stream metadata, segments, transcripts and event claims of a server or a cluster.

    Every method is short, synchronous and thread-safe (REST handlers call from a thread
    pool). Several processes, even on several machines (PostgreSQL), may share one store:
    whatever must be unique across them is made so by the database, never by process
    memory. Database failures raise :class:`~earshot.errors.StorageError`.
    """

    def create(self, rec: StreamRecord) -> None:
        """Insert a new stream. Raises :class:`~earshot.errors.DuplicateStream` if the id
        is taken (by any process): the caller retries with a new id."""
        ...

    def get(self, stream_id: str) -> StreamRecord:
        """One stream; :class:`~earshot.errors.StreamNotFound` if there is none."""
        ...

    def list(self, *, limit: int, offset: int) -> tuple[list[StreamRecord], int]:
        """A page of streams, newest first, and the total count."""
        ...

    def update(self, stream_id: str, **fields: Any) -> None:
        """Set fields of a stream (:class:`StreamRecord` names; ValueError for others)."""
        ...

    def delete(self, stream_id: str) -> None:
        """Remove a stream with its segments, transcripts and claimed events."""
        ...

    def with_state(self, state: StreamState) -> list[StreamRecord]: ...

    def allocate_segment(self, stream_id: str) -> int:
        """The next segment number of a stream, 0, 1, 2, …: an atomic counter in the
        database, so no two calls (in any processes) get the same number. Numbers are
        never handed out twice, even if the segment is then not stored (a gap).
        :class:`~earshot.errors.StreamNotFound` for an unknown stream."""
        ...

    def next_segment(self, stream_id: str) -> int:
        """Deprecated alias of :meth:`allocate_segment` (it allocates)."""
        ...

    def add_segment(self, seg: SegmentRecord) -> None:
        """Store a segment under a number from :meth:`allocate_segment`; StorageError if
        that number is stored already, StreamNotFound for an unknown stream."""
        ...

    def segments(self, stream_id: str) -> list[SegmentRecord]:
        """The segments of a stream in number order."""
        ...

    def claim_event(self, stream_id: str, key: str) -> bool:
        """Record an event identity, e.g. ``"vad:speech_end:123456"`` (processor, type,
        stream offset); True only for the first claim of that key by any process, False
        for every later one. This is how a cluster emits each segment, ``speech_end`` or
        final transcript once after a worker takeover replays audio. Claims are deleted
        with the stream. StreamNotFound for an unknown stream."""
        ...

    def add_transcript(self, stream_id: str, final: dict[str, Any]) -> None:
        """Store a final transcript, idempotent by (stream, segment): a later final of
        the same segment replaces it."""
        ...

    def transcripts(self, stream_id: str) -> list[dict[str, Any]]:
        """Stored finals in time order: segment, start, end, text, words."""
        ...

    def close(self) -> None: ...


_COLUMNS = (
    "id", "name", "created", "format", "archive_format", "rate", "channels", "path",
    "token_hash", "frames", "state", "ended", "client",
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

    def __init__(self, path: Path) -> None:
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
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self.migrated = migrate_sqlite(self._db)
        except BaseException as exc:
            self._db.close()
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from None
            raise

    def _row(self, row: tuple[Any, ...]) -> StreamRecord:
        d = dict(zip(_COLUMNS, row, strict=True))
        d["client"] = json.loads(d["client"] or "{}")
        return StreamRecord(**d)

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite {self.path}: {exc}") from exc

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._run(sql, args).fetchall()

    def _count(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        """Run a write; the number of rows it changed."""
        with self._lock:
            return self._run(sql, args).rowcount

    def create(self, rec: StreamRecord) -> None:
        values = [getattr(rec, c) for c in _COLUMNS]
        values[-1] = json.dumps(rec.client)
        marks = ",".join("?" * len(_COLUMNS))
        try:
            self._query(f"INSERT INTO streams ({','.join(_COLUMNS)}) VALUES ({marks})",
                        tuple(values))
        except sqlite3.IntegrityError as exc:
            raise DuplicateStream(f"stream id {rec.id} exists already") from exc

    def get(self, stream_id: str) -> StreamRecord:
        rows = self._query(f"SELECT {','.join(_COLUMNS)} FROM streams WHERE id=?", (stream_id,))
        if not rows:
            raise StreamNotFound(stream_id)
        return self._row(rows[0])

    def list(self, *, limit: int, offset: int) -> tuple[list[StreamRecord], int]:
        rows = self._query(
            f"SELECT {','.join(_COLUMNS)} FROM streams ORDER BY created DESC, id DESC "
            "LIMIT ? OFFSET ?",
            (limit, offset),
        )
        total = self._query("SELECT COUNT(*) FROM streams")[0][0]
        return [self._row(r) for r in rows], total

    def update(self, stream_id: str, **fields: Any) -> None:
        sets, values = _update_fields(fields, "?", json.dumps)
        self._query(f"UPDATE streams SET {sets} WHERE id=?", (*values, stream_id))

    def delete(self, stream_id: str) -> None:
        self._query("DELETE FROM streams WHERE id=?", (stream_id,))

    def with_state(self, state: StreamState) -> list[StreamRecord]:
        rows = self._query(f"SELECT {','.join(_COLUMNS)} FROM streams WHERE state=?", (state,))
        return [self._row(r) for r in rows]

    def allocate_segment(self, stream_id: str) -> int:
        rows = self._query("UPDATE streams SET next_segment = next_segment + 1 WHERE id=? "
                           "RETURNING next_segment - 1", (stream_id,))
        if not rows:
            raise StreamNotFound(stream_id)
        return int(rows[0][0])

    next_segment = allocate_segment

    def add_segment(self, seg: SegmentRecord) -> None:
        try:
            self._query(
                'INSERT INTO segments (stream, n, start, "end", rate, path, created) '
                "VALUES (?,?,?,?,?,?,?)",
                (seg.stream, seg.n, seg.start, seg.end, seg.rate, seg.path, seg.created),
            )
        except sqlite3.IntegrityError as exc:
            raise _segment_conflict(self, seg) from exc

    def segments(self, stream_id: str) -> list[SegmentRecord]:
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
        seg, start, end, text, words = _transcript_values(final)
        try:
            self._query(
                'INSERT OR REPLACE INTO transcripts (stream, segment, start, "end", text, '
                "words, created) VALUES (?,?,?,?,?,?,?)",
                (stream_id, seg, start, end, text, json.dumps(words), time.time()))
        except sqlite3.IntegrityError:
            raise StreamNotFound(stream_id) from None

    def transcripts(self, stream_id: str) -> list[dict[str, Any]]:
        rows = self._query(
            'SELECT segment, start, "end", text, words FROM transcripts WHERE stream=? '
            "ORDER BY start, segment", (stream_id,))
        return [{"segment": r[0], "start": r[1], "end": r[2], "text": r[3],
                 "words": json.loads(r[4])} for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# -- shared by the stores ------------------------------------------------------------------
def _update_fields(fields: dict[str, Any], mark: str,
                   encode: Callable[[Any], Any]) -> tuple[str, list[Any]]:
    """``col=mark,…`` and the values of an update (names checked, ``client`` encoded)."""
    unknown = set(fields) - set(_COLUMNS)
    if unknown:
        raise ValueError(f"unknown stream fields: {sorted(unknown)}")
    if not fields:
        raise ValueError("no stream fields to update")
    values = [encode(v) if k == "client" else v for k, v in fields.items()]
    return ",".join(f"{k}={mark}" for k in fields), values


def _transcript_values(final: dict[str, Any]) -> tuple[int, float, float, str, Any]:
    return (int(final["segment"]), float(final["start"]), float(final["end"]),
            str(final["text"]), final.get("words", []))


def _segment_conflict(store: MetadataStore, seg: SegmentRecord) -> StorageError:
    try:
        store.get(seg.stream)
    except StreamNotFound as exc:
        return exc
    return StorageError(f"stream {seg.stream}: segment {seg.n} is stored already")


def open_store(target: str | Path) -> MetadataStore:
    """The metadata store a ``--db`` value names.

    ``postgresql://…`` (or ``postgres://…``, any libpq URL) opens a :class:`PostgresStore`
    (``pip install 'earshot[postgres]'``); ``sqlite:///relative/path``,
    ``sqlite:////absolute/path`` or a plain file path an :class:`SqliteStore`. Schema
    migrations run on opening. Raises :class:`~earshot.errors.ConfigError` for a URL of
    another kind, a server that cannot be reached or a file that cannot be opened, and
    :class:`~earshot.errors.MissingDependency` without the PostgreSQL extra.
    """
    if isinstance(target, Path):
        return _open_sqlite(target)
    text = target.strip()
    scheme, sep, rest = text.partition("://")
    if not text:
        raise ConfigError("empty database URL: use postgresql://…, sqlite:///path or a path")
    if not sep:
        return _open_sqlite(Path(text))
    scheme = scheme.lower()
    if scheme in ("postgresql", "postgres"):
        from earshot.storage.metadata.postgres import PostgresStore

        return PostgresStore(text)
    if scheme == "sqlite":
        if not rest.startswith("/") or not rest[1:]:
            raise ConfigError(f"bad SQLite URL {text!r}: use sqlite:///relative/path or "
                              "sqlite:////absolute/path")
        return _open_sqlite(Path(rest[1:]))
    raise ConfigError(f"unsupported database URL {redact(text)!r}: use "
                      "postgresql://user@host:port/dbname, sqlite:///path or a file path")


def _open_sqlite(path: Path) -> SqliteStore:
    try:
        return SqliteStore(path)
    except StorageError as exc:
        raise ConfigError(str(exc)) from None


def redact(url: str) -> str:
    """A URL with its password (if any) replaced by ``***``, for messages and logs."""
    return re.sub(r"(://[^:/@?#]*:)[^@/?#]*@", r"\1***@", url)
