"""open_store and --db: which store a value names, and clear errors for the wrong ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from storage_helpers import record

from earshot.config import Settings, env_overrides
from earshot.errors import ConfigError, MissingDependency
from earshot.storage.metadata import SqliteStore, open_store, redact
from helpers import free_port


@pytest.mark.parametrize("form", ["path", "Path", "relative-url", "absolute-url"])
def test_sqlite_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    target: str | Path = {
        "path": str(tmp_path / "sub" / "m.db"), "Path": tmp_path / "sub" / "m.db",
        "relative-url": "sqlite:///sub/m.db", "absolute-url": f"sqlite:///{tmp_path}/sub/m.db",
    }[form]
    store = open_store(target)
    assert isinstance(store, SqliteStore) and store.path.resolve() == tmp_path / "sub" / "m.db"
    store.create(record("x"))
    store.close()
    assert (tmp_path / "sub" / "m.db").stat().st_size > 0


@pytest.mark.parametrize("url", ["postgresql", "postgres"])
def test_postgres_urls(pg_url: str, url: str) -> None:
    from earshot.storage.metadata.postgres import PostgresStore

    store = open_store(pg_url.replace("postgresql://", f"{url}://", 1))
    assert isinstance(store, PostgresStore)
    store.create(record("x"))
    assert store.get("x").client == {"agent": "t"}
    store.close()


def test_bad_values_say_what_is_wrong(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    cases = {
        "mysql://db/earshot": "unsupported database URL 'mysql://db/earshot'",
        "sqlite://": "bad SQLite URL",
        "   ": "empty database URL",
        f"postgresql://earshot:hunter2@127.0.0.1:{port}/earshot":
            f"cannot connect to PostgreSQL at 127.0.0.1:{port}/earshot",
        "postgresql://127.0.0.1/earshot?sslmode=bogus&colour=red": "bad PostgreSQL URL",
        str(tmp_path / "missing-dir" / "m.db"): "cannot open SQLite database",
    }
    for value, message in cases.items():
        with pytest.raises(ConfigError) as info:
            open_store(value)
        assert message in str(info.value), (value, str(info.value))
        assert "hunter2" not in str(info.value)
    assert redact("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_a_missing_database_is_named(pg_database: str) -> None:
    with pytest.raises(ConfigError, match=r'cannot connect to PostgreSQL at .*/no_such_db.*'
                                          r'database "no_such_db" does not exist'):
        open_store(pg_database.rsplit("/", 1)[0] + "/no_such_db")


def test_without_the_extra_it_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now fails
    monkeypatch.delitem(sys.modules, "earshot.storage.metadata.postgres", raising=False)
    with pytest.raises(MissingDependency, match=r"pip install 'earshot\[postgres\]'"):
        open_store("postgresql://127.0.0.1/earshot")


def test_settings_db_from_the_environment() -> None:
    assert Settings().server.db is None
    s = Settings.of(**env_overrides({"EARSHOT_DB": "postgresql://earshot@db/earshot"}))
    assert s.server.db == "postgresql://earshot@db/earshot"
