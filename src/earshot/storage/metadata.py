"""Stream metadata behind a small interface, with a SQLite implementation.

Another database can be added by implementing :class:`MetadataStore`. Calls are short and
synchronous (SQLite in WAL mode, one connection): the server makes them only at stream
start, stop, periodic progress updates and REST requests — never per audio message.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from earshot.errors import StreamNotFound

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
    def create(self, rec: StreamRecord) -> None: ...
    def get(self, stream_id: str) -> StreamRecord: ...
    def list(self, *, limit: int, offset: int) -> tuple[list[StreamRecord], int]: ...
    def update(self, stream_id: str, **fields: Any) -> None: ...
    def delete(self, stream_id: str) -> None: ...
    def with_state(self, state: StreamState) -> list[StreamRecord]: ...
    def add_segment(self, seg: SegmentRecord) -> None: ...
    def segments(self, stream_id: str) -> list[SegmentRecord]: ...
    def next_segment(self, stream_id: str) -> int: ...
    def add_transcript(self, stream_id: str, final: dict[str, Any]) -> None: ...
    def transcripts(self, stream_id: str) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


_COLUMNS = (
    "id", "name", "created", "format", "archive_format", "rate", "channels", "path",
    "token_hash", "frames", "state", "ended", "client",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY,
    name TEXT,
    created REAL NOT NULL,
    format TEXT NOT NULL,
    archive_format TEXT NOT NULL,
    rate INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    path TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    frames INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    ended REAL,
    client TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS streams_created ON streams (created DESC);
CREATE INDEX IF NOT EXISTS streams_state ON streams (state);
CREATE TABLE IF NOT EXISTS segments (
    stream TEXT NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
    n INTEGER NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    rate INTEGER NOT NULL,
    path TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (stream, n)
);
CREATE TABLE IF NOT EXISTS transcripts (
    stream TEXT NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
    segment INTEGER NOT NULL,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    text TEXT NOT NULL,
    words TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (stream, segment)
);
"""


class SqliteStore:
    """:class:`MetadataStore` on one SQLite file."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def _row(self, row: tuple[Any, ...]) -> StreamRecord:
        d = dict(zip(_COLUMNS, row, strict=True))
        d["client"] = json.loads(d["client"] or "{}")
        return StreamRecord(**d)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def create(self, rec: StreamRecord) -> None:
        values = [getattr(rec, c) for c in _COLUMNS]
        values[-1] = json.dumps(rec.client)
        marks = ",".join("?" * len(_COLUMNS))
        self._query(f"INSERT INTO streams ({','.join(_COLUMNS)}) VALUES ({marks})", tuple(values))

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
        unknown = set(fields) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown stream fields: {sorted(unknown)}")
        if "client" in fields:
            fields["client"] = json.dumps(fields["client"])
        sets = ",".join(f"{k}=?" for k in fields)
        self._query(f"UPDATE streams SET {sets} WHERE id=?", (*fields.values(), stream_id))

    def delete(self, stream_id: str) -> None:
        self._query("DELETE FROM streams WHERE id=?", (stream_id,))

    def with_state(self, state: StreamState) -> list[StreamRecord]:
        rows = self._query(f"SELECT {','.join(_COLUMNS)} FROM streams WHERE state=?", (state,))
        return [self._row(r) for r in rows]

    def add_segment(self, seg: SegmentRecord) -> None:
        self._query(
            'INSERT INTO segments (stream, n, start, "end", rate, path, created) '
            "VALUES (?,?,?,?,?,?,?)",
            (seg.stream, seg.n, seg.start, seg.end, seg.rate, seg.path, seg.created),
        )

    def segments(self, stream_id: str) -> list[SegmentRecord]:
        rows = self._query(
            'SELECT stream, n, start, "end", rate, path, created FROM segments '
            "WHERE stream=? ORDER BY n", (stream_id,))
        return [SegmentRecord(*r) for r in rows]

    def next_segment(self, stream_id: str) -> int:
        row = self._query("SELECT MAX(n) FROM segments WHERE stream=?", (stream_id,))[0][0]
        return 0 if row is None else int(row) + 1

    def add_transcript(self, stream_id: str, final: dict[str, Any]) -> None:
        """Store a final transcript (a later final of the same segment replaces it)."""
        self._query(
            'INSERT OR REPLACE INTO transcripts (stream, segment, start, "end", text, words, '
            "created) VALUES (?,?,?,?,?,?,?)",
            (stream_id, int(final["segment"]), float(final["start"]), float(final["end"]),
             str(final["text"]), json.dumps(final.get("words", [])), time.time()))

    def transcripts(self, stream_id: str) -> list[dict[str, Any]]:
        rows = self._query(
            'SELECT segment, start, "end", text, words FROM transcripts WHERE stream=? '
            "ORDER BY start, segment", (stream_id,))
        return [{"segment": r[0], "start": r[1], "end": r[2], "text": r[3],
                 "words": json.loads(r[4])} for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
