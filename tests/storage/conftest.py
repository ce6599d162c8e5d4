"""Both metadata stores behind one fixture: every contract test runs on SQLite and on
PostgreSQL (a fresh database per test, from tests/pg.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import pg
from earshot.storage.metadata import MetadataStore, open_store


@pytest.fixture(params=["sqlite", "postgres"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What ``--db`` would be given: an SQLite file path or a fresh PostgreSQL URL."""
    if request.param == "postgres":
        request.getfixturevalue("pg_database")  # the session's databases, dropped at the end
        return pg.fresh_database()
    return str(tmp_path / "meta.db")


@pytest.fixture
def store(store_target: str) -> Iterator[MetadataStore]:
    s = open_store(store_target)
    yield s
    s.close()

