"""Schema migrations: numbered SQL files, applied once, in one transaction, recorded in
schema_migrations; files made before migrations existed upgrade in place; concurrent
start-ups are serialised."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest
from storage_helpers import record

import pg
from earshot.errors import ConfigError, StorageError
from earshot.storage.metadata import SqliteStore, migrate, open_store

# The schema earshot 0.1 created (before versioned migrations), verbatim: files in the
# field look like this and must open and upgrade.
LEGACY_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY, name TEXT, created REAL NOT NULL, format TEXT NOT NULL,
    archive_format TEXT NOT NULL, rate INTEGER NOT NULL, channels INTEGER NOT NULL,
    path TEXT NOT NULL, token_hash TEXT NOT NULL, frames INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL, ended REAL, client TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS streams_created ON streams (created DESC);
CREATE INDEX IF NOT EXISTS streams_state ON streams (state);
CREATE TABLE IF NOT EXISTS segments (
    stream TEXT NOT NULL REFERENCES streams(id) ON DELETE CASCADE, n INTEGER NOT NULL,
    start INTEGER NOT NULL, "end" INTEGER NOT NULL, rate INTEGER NOT NULL,
    path TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (stream, n)
);
CREATE TABLE IF NOT EXISTS transcripts (
    stream TEXT NOT NULL REFERENCES streams(id) ON DELETE CASCADE, segment INTEGER NOT NULL,
    start REAL NOT NULL, "end" REAL NOT NULL, text TEXT NOT NULL, words TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (stream, segment)
);
"""

SHIPPED = [(1, "initial"), (2, "cluster"), (3, "archive_parts")]


def versions(target: str) -> list[tuple[int, str]]:
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target) as conn:
            rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1")
            return [tuple(r) for r in rows]
    with sqlite3.connect(target) as db:
        return [tuple(r) for r in db.execute(
            "SELECT version, name FROM schema_migrations ORDER BY 1")]


def test_both_dialects_ship_the_same_versions() -> None:
    for dialect in ("sqlite", "postgres"):
        assert [(m.version, m.name) for m in migrate.load(dialect)] == SHIPPED


def test_a_pre_migration_sqlite_file_opens_and_upgrades(tmp_path: Path) -> None:
    path = tmp_path / "earshot.db"
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_SCHEMA)
        db.execute("INSERT INTO streams VALUES ('old', 'n', 1.5, 's16', 'wav', 16000, 1, "
                   "'streams/old.wav', 'h', 32000, 'finished', 3.5, ?)",
                   (json.dumps({"agent": "0.1"}),))
        for n in (0, 1, 4):
            db.execute("INSERT INTO segments VALUES ('old', ?, 0, 10, 16000, 'p', 2.0)", (n,))
        db.execute("INSERT INTO transcripts VALUES ('old', 0, 0.1, 0.9, 'hi', '[]', 2.0)")
    store = SqliteStore(path)
    assert store.migrated == [1, 2, 3]
    rec = store.get("old")
    assert (rec.frames, rec.state, rec.client) == (32000, "finished", {"agent": "0.1"})
    assert [s.n for s in store.segments("old")] == [0, 1, 4]
    assert store.transcripts("old")[0]["text"] == "hi"
    assert store.allocate_segment("old") == 5  # continues after the highest stored one
    assert store.claim_event("old", "vad:speech_end:1") is True
    store.create(record("new"))
    assert store.allocate_segment("new") == 0
    store.close()
    assert versions(str(path)) == SHIPPED
    again = SqliteStore(path)  # a second start applies nothing
    assert again.migrated == [] and again.allocate_segment("old") == 6
    again.close()


def test_migrations_are_recorded_once_and_reopening_is_a_no_op(store_target: str) -> None:
    first = open_store(store_target)
    assert first.migrated == [1, 2, 3]  # type: ignore[attr-defined]
    first.close()
    second = open_store(store_target)
    assert second.migrated == []  # type: ignore[attr-defined]
    second.close()
    assert versions(store_target) == SHIPPED


def test_a_failing_migration_leaves_nothing_behind(
        store_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """All pending migrations run in one transaction: a broken last one undoes the
    others as well, and the next start tries again from a clean slate."""
    real = migrate.load

    def with_broken(dialect: migrate.Dialect) -> list[migrate.Migration]:
        return [*real(dialect), migrate.Migration(
            len(real(dialect)) + 1, "broken",
            "CREATE TABLE half_done (x integer);\nSELECT no_such_column FROM streams;\n")]

    monkeypatch.setattr(migrate, "load", with_broken)
    with pytest.raises((StorageError, ConfigError)):
        open_store(store_target)
    monkeypatch.setattr(migrate, "load", real)
    if store_target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(store_target) as conn:
            tables = {r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    else:
        with sqlite3.connect(store_target) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master "
                                               "WHERE type = 'table'")}
    assert "half_done" not in tables and "streams" not in tables
    store = open_store(store_target)
    assert store.migrated == [1, 2, 3]  # type: ignore[attr-defined]
    store.close()


def test_a_newer_schema_is_refused(store_target: str) -> None:
    open_store(store_target).close()
    if store_target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(store_target) as conn:
            conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    else:
        with sqlite3.connect(store_target) as db:
            db.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    with pytest.raises((StorageError, ConfigError), match="version 99, newer"):
        open_store(store_target)


def race_open(target: str, n: int = 4) -> tuple[list[list[int]], list[BaseException]]:
    """``n`` threads open the store at the same moment; what each migrated, and errors."""
    barrier = threading.Barrier(n)
    applied: list[list[int]] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait(30)
            s = open_store(target)
            applied.append(s.migrated)  # type: ignore[attr-defined]
            s.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return applied, errors


def test_concurrent_start_ups_migrate_once(store_target: str) -> None:
    """Four gateways starting at the same moment on an empty database (the PostgreSQL
    advisory lock, SQLite's BEGIN IMMEDIATE): all open, the schema is made once."""
    applied, errors = race_open(store_target)
    assert errors == []
    assert sorted(applied) == [[], [], [], [1, 2, 3]]
    assert versions(store_target) == SHIPPED


def test_sqlite_files_made_by_racing_start_ups_all_open(tmp_path: Path) -> None:
    """Switching a fresh file to WAL takes an exclusive lock that SQLite refuses at once,
    without its busy handler: four racing openers failed about one round in ten before
    the switch was retried. Forty rounds, each on a new file."""
    for i in range(40):
        target = str(tmp_path / f"meta{i}.db")
        applied, errors = race_open(target)
        assert errors == [], f"round {i}"
        assert sorted(applied) == [[], [], [], [1, 2, 3]]
        with sqlite3.connect(target) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert versions(target) == SHIPPED


def test_postgres_columns_use_native_types(pg_url: str) -> None:
    import psycopg

    open_store(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        types = dict(conn.execute(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'public'").fetchall())
    assert types["streams.client"] == "jsonb" and types["transcripts.words"] == "jsonb"
    assert types["streams.frames"] == "bigint" and types["segments.start"] == "bigint"
    assert types["streams.created"] == "double precision"
    assert types["streams.next_segment"] == "integer"
    assert pg.PREFIX in pg_url
