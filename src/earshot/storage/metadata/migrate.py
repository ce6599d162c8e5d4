"""Versioned schema migrations for the metadata stores: numbered SQL files, one per dialect.

``migrations/<dialect>/NNNN_name.sql`` (package data) are applied in order, each once,
inside one transaction, and recorded in a ``schema_migrations`` table (version, name,
applied). Both dialects carry the same version numbers, so a version means the same
tables in SQLite and PostgreSQL. Start-up by several processes at once is safe: SQLite
serialises them with ``BEGIN IMMEDIATE`` (the write lock, waited for with the busy
timeout), PostgreSQL with a transaction-scoped advisory lock; whoever comes second finds
the work done. A database whose schema is newer than this earshot is refused.
"""

from __future__ import annotations

import re
import sqlite3
import time
import zlib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from earshot.errors import StorageError

Dialect = Literal["sqlite", "postgres"]

#: ``pg_advisory_xact_lock`` key that serialises migrations (per database).
ADVISORY_LOCK = zlib.crc32(b"earshot.schema_migrations")

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_TABLE = {
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
              "name TEXT NOT NULL, applied REAL NOT NULL)",
    "postgres": "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, applied double precision NOT NULL)",
}


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load(dialect: Dialect) -> list[Migration]:
    """The shipped migrations of one dialect, in order (numbered 1, 2, … without gaps)."""
    folder = resources.files("earshot.storage").joinpath("migrations", dialect)
    out = []
    for entry in folder.iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append(Migration(int(m[1]), m[2], entry.read_text("utf-8")))
    out.sort(key=lambda m: m.version)
    if [m.version for m in out] != list(range(1, len(out) + 1)):
        raise StorageError(f"{dialect} migrations are not numbered 1..n: "
                           f"{[m.version for m in out]}")
    return out


def latest(dialect: Dialect) -> int:
    return len(load(dialect))


def _pending(dialect: Dialect, done: set[int]) -> list[Migration]:
    shipped = load(dialect)
    if done and max(done) > len(shipped):
        raise StorageError(
            f"the database schema is at version {max(done)}, newer than this earshot "
            f"knows ({len(shipped)}): upgrade earshot")
    return [m for m in shipped if m.version not in done]


def statements(sql: str) -> list[str]:
    """Split a script into complete SQLite statements (comments and blanks dropped)."""
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        if not buf and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        raise StorageError(f"incomplete SQL statement in a migration: {buf.strip()[:80]!r}")
    return out


def migrate_sqlite(db: sqlite3.Connection) -> list[int]:
    """Bring an SQLite database (autocommit connection) up to date; the versions applied.

    ``executescript`` would commit on its own, so each statement is run separately
    inside the one ``BEGIN IMMEDIATE`` transaction (SQLite DDL is transactional).
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(_TABLE["sqlite"])
        done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
        todo = _pending("sqlite", done)
        for m in todo:
            for stmt in statements(m.sql):
                db.execute(stmt)
            db.execute("INSERT INTO schema_migrations (version, name, applied) VALUES (?,?,?)",
                       (m.version, m.name, time.time()))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return [m.version for m in todo]


def migrate_postgres(conn: Any) -> list[int]:
    """Bring a PostgreSQL database up to date (a psycopg connection); the versions applied.

    One transaction holds ``pg_advisory_xact_lock`` from before ``schema_migrations`` is
    even created until the commit, so concurrent starters run one after the other.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
        conn.execute(_TABLE["postgres"])
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        todo = _pending("postgres", done)
        for m in todo:
            conn.execute(m.sql)  # a whole script: no parameters, so the simple protocol
            conn.execute("INSERT INTO schema_migrations (version, name, applied) "
                         "VALUES (%s, %s, %s)", (m.version, m.name, time.time()))
    return [m.version for m in todo]

