""":class:`~earshot.storage.metadata.MetadataStore` on PostgreSQL (``pip install
'earshot[postgres]'``): psycopg 3 with a small thread-safe connection pool.

Any number of gateway and worker processes, on any number of machines, may share one
database: stream ids are unique by the primary key, segment numbers come from an atomic
``UPDATE … RETURNING`` counter (the row lock serialises concurrent callers), and event
claims from ``INSERT … ON CONFLICT DO NOTHING``. Each call takes a pooled connection in
autocommit mode and is one statement (or two for a page and its count), so nothing holds
a transaction open between calls. JSON (``client``, transcript ``words``) is jsonb.
"""

from __future__ import annotations

import builtins
import time
from typing import Any

from earshot.errors import (
    ConfigError,
    DuplicateStream,
    MissingDependency,
    StorageError,
    StreamNotFound,
)
from earshot.redact import redact_url as redact
from earshot.storage.metadata.migrate import migrate_postgres
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

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.types.json import Jsonb
    from psycopg_pool import ConnectionPool
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise MissingDependency(
        f"PostgreSQL metadata needs psycopg 3 and psycopg-pool ({exc.name} is missing): "
        "pip install 'earshot[postgres]'") from None

#: Seconds to wait for the server when connecting, and for a free pooled connection.
CONNECT_TIMEOUT = 10
POOL_TIMEOUT = 30.0

_SELECT = f"SELECT {','.join(COLUMNS)} FROM streams"


def describe(url: str) -> str:
    """``host:port/dbname`` of a libpq URL, for messages (no password)."""
    try:
        d = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return redact(url)
    host = d.get("host") or d.get("hostaddr") or "the local socket"
    return f"{host}:{d.get('port') or 5432}/{d.get('dbname') or d.get('user') or '?'}"


class PostgresStore:
    """Metadata in a PostgreSQL database; migrations are applied on opening.

    ``min_size``/``max_size`` bound the pool per process: calls are short, so a few
    connections serve a gateway's event loop and its REST thread pool. ``check``: test
    each connection with an empty query as it leaves the pool (one more round trip), so
    that connections a server restart broke are replaced instead of failing a call.
    """

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 4,
                 check: bool = True) -> None:
        self.url = url
        self.where = describe(url)
        try:
            conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise ConfigError(f"bad PostgreSQL URL {redact(url)!r}: {exc}") from None
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
                self.migrated = migrate_postgres(conn)
        except psycopg.OperationalError as exc:
            reason = " ".join(str(exc).split())
            raise ConfigError(f"cannot connect to PostgreSQL at {self.where}: {reason}") from None
        except psycopg.Error as exc:
            raise StorageError(f"PostgreSQL {self.where}: migrating the schema failed: "
                               f"{exc}") from None
        self._pool = ConnectionPool(
            url, min_size=min_size, max_size=max_size, open=True, timeout=POOL_TIMEOUT,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT},
            check=ConnectionPool.check_connection if check else None,
            name=f"earshot-{self.where}")

    # -- plumbing --------------------------------------------------------------------------
    def _exec(self, sql: str, args: tuple[Any, ...] = (), *, fetch: bool = True
              ) -> tuple[builtins.list[tuple[Any, ...]], int]:
        """Run one statement on a pooled connection: its rows (if any) and rowcount.

        Integrity errors are raised as psycopg's own (callers map them); everything else
        as :class:`StorageError`.
        """
        try:
            with self._pool.connection() as conn:
                cur = conn.execute(sql, args)
                rows = cur.fetchall() if fetch and cur.description is not None else []
                return rows, cur.rowcount
        except pg_errors.IntegrityError:
            raise
        except (psycopg.Error, OSError) as exc:
            raise StorageError(f"PostgreSQL {self.where}: {exc}") from exc
        except Exception as exc:  # psycopg_pool.PoolTimeout and friends
            if type(exc).__module__.startswith("psycopg"):
                raise StorageError(f"PostgreSQL {self.where}: {exc}") from exc
            raise

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> builtins.list[tuple[Any, ...]]:
        return self._exec(sql, args)[0]

    @staticmethod
    def _row(row: tuple[Any, ...]) -> StreamRecord:
        d = dict(zip(COLUMNS, row, strict=True))
        d["client"] = d["client"] or {}
        return StreamRecord(**d)

    # -- streams ---------------------------------------------------------------------------
    def create(self, rec: StreamRecord) -> None:
        values = [getattr(rec, c) for c in COLUMNS]
        values[-1] = Jsonb(rec.client)
        marks = ",".join(["%s"] * len(COLUMNS))
        try:
            self._exec(f"INSERT INTO streams ({','.join(COLUMNS)}) VALUES ({marks})",
                       tuple(values))
        except pg_errors.UniqueViolation as exc:
            raise DuplicateStream(f"stream id {rec.id} exists already") from exc
        except pg_errors.IntegrityError as exc:
            raise StorageError(f"stream {rec.id}: {exc}") from exc

    def get(self, stream_id: str) -> StreamRecord:
        rows = self._rows(f"{_SELECT} WHERE id=%s", (stream_id,))
        if not rows:
            raise StreamNotFound(stream_id)
        return self._row(rows[0])

    def list(self, *, limit: int, offset: int) -> tuple[builtins.list[StreamRecord], int]:
        rows = self._rows(f"{_SELECT} ORDER BY created DESC, id DESC LIMIT %s OFFSET %s",
                          (limit, offset))
        total = self._rows("SELECT count(*) FROM streams")[0][0]
        return [self._row(r) for r in rows], int(total)

    def update(self, stream_id: str, **fields: Any) -> None:
        sets, values = update_fields(fields, "%s", Jsonb)
        try:
            self._exec(f"UPDATE streams SET {sets} WHERE id=%s", (*values, stream_id))
        except pg_errors.IntegrityError as exc:
            raise StorageError(f"stream {stream_id}: {exc}") from exc

    def delete(self, stream_id: str) -> None:
        self._exec("DELETE FROM streams WHERE id=%s", (stream_id,))

    def with_state(self, state: StreamState) -> builtins.list[StreamRecord]:
        return [self._row(r) for r in self._rows(f"{_SELECT} WHERE state=%s", (state,))]

    # -- segments, events, transcripts ------------------------------------------------------
    def allocate_segment(self, stream_id: str) -> int:
        rows = self._rows("UPDATE streams SET next_segment = next_segment + 1 WHERE id=%s "
                          "RETURNING next_segment - 1", (stream_id,))
        if not rows:
            raise StreamNotFound(stream_id)
        return int(rows[0][0])

    def add_segment(self, seg: SegmentRecord) -> None:
        try:
            self._exec(
                'INSERT INTO segments (stream, n, start, "end", rate, path, created) '
                "VALUES (%s,%s,%s,%s,%s,%s,%s)",
                (seg.stream, seg.n, seg.start, seg.end, seg.rate, seg.path, seg.created))
        except pg_errors.IntegrityError as exc:
            raise segment_conflict(self, seg) from exc

    def segments(self, stream_id: str) -> builtins.list[SegmentRecord]:
        rows = self._rows('SELECT stream, n, start, "end", rate, path, created FROM segments '
                          "WHERE stream=%s ORDER BY n", (stream_id,))
        return [SegmentRecord(*r) for r in rows]

    def claim_event(self, stream_id: str, key: str) -> bool:
        try:
            _, count = self._exec(
                "INSERT INTO claimed_events (stream, key, created) VALUES (%s,%s,%s) "
                "ON CONFLICT DO NOTHING", (stream_id, key, time.time()), fetch=False)
        except pg_errors.ForeignKeyViolation:
            raise StreamNotFound(stream_id) from None
        return count == 1

    def add_transcript(self, stream_id: str, final: dict[str, Any]) -> None:
        """Store a final transcript (a later final of the same segment replaces it)."""
        seg, start, end, text, words = transcript_values(final)
        try:
            self._exec(
                'INSERT INTO transcripts (stream, segment, start, "end", text, words, created) '
                "VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (stream, segment) DO UPDATE SET "
                'start=excluded.start, "end"=excluded."end", text=excluded.text, '
                "words=excluded.words, created=excluded.created",
                (stream_id, seg, start, end, text, Jsonb(words), time.time()), fetch=False)
        except pg_errors.ForeignKeyViolation:
            raise StreamNotFound(stream_id) from None

    def transcripts(self, stream_id: str) -> builtins.list[dict[str, Any]]:
        rows = self._rows('SELECT segment, start, "end", text, words FROM transcripts '
                          "WHERE stream=%s ORDER BY start, segment", (stream_id,))
        return [{"segment": r[0], "start": r[1], "end": r[2], "text": r[3], "words": r[4]}
                for r in rows]

    def add_part(self, stream_id: str, n: int, start: int, gateway: str = "") -> bool:
        try:
            _, count = self._exec(
                "INSERT INTO archive_parts (stream, n, start, gateway) VALUES (%s,%s,%s,%s) "
                "ON CONFLICT DO NOTHING", (stream_id, n, start, gateway), fetch=False)
        except pg_errors.ForeignKeyViolation:
            raise StreamNotFound(stream_id) from None
        return count == 1

    def part_uploaded(self, part: PartRecord) -> None:
        values = tuple(getattr(part, c) for c in PART_COLUMNS)
        try:
            self._exec(
                f"INSERT INTO archive_parts ({','.join(PART_COLUMNS)}) VALUES "
                f"({','.join(['%s'] * len(PART_COLUMNS))}) ON CONFLICT (stream, n) DO UPDATE "
                "SET name=excluded.name, size=excluded.size, frames=excluded.frames, "
                "sha256=excluded.sha256, etag=excluded.etag, uploaded=excluded.uploaded, "
                "gateway=excluded.gateway", values, fetch=False)
        except pg_errors.ForeignKeyViolation:
            raise StreamNotFound(part.stream) from None

    def parts(self, stream_id: str) -> builtins.list[PartRecord]:
        rows = self._rows(f"SELECT {','.join(PART_COLUMNS)} FROM archive_parts "
                          "WHERE stream=%s ORDER BY n", (stream_id,))
        return [PartRecord(*r) for r in rows]

    def close(self) -> None:
        self._pool.close()
