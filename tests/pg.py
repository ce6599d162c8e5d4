"""PostgreSQL for the tests: a database of each test run's own, and fresh ones on demand.

The server is ``EARSHOT_TEST_PG`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
trust auth). A session creates ``earshot_test_<random>`` and more databases named after it
(``…_1``, ``…_2``) through :func:`fresh_database` / the ``pg_url`` fixture, and drops them
all at the end. Under ``CI=true`` an unreachable server (or psycopg missing) fails the
PostgreSQL tests; elsewhere they skip, saying why.

Other tests use it like this::

    def test_two_gateways(pg_url: str) -> None:      # a fresh, empty database
        ServerProcess(data_dir, "--db", pg_url) ...

    from pg import fresh_database                      # or from code, one per call
    url = fresh_database()
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
from collections.abc import Iterator

import pytest

ADMIN_URL = os.environ.get("EARSHOT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PREFIX = f"earshot_test_{secrets.token_hex(4)}"

_made: list[str] = []
_problem: str | None = None
_checked = False


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _admin():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)


def available() -> str | None:
    """None when the server can be used, else why not (checked once per session)."""
    global _problem, _checked
    if not _checked:
        _checked = True
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError as exc:
            _problem = f"psycopg/psycopg-pool not installed ({exc.name}): pip install -e '.[test]'"
        else:
            try:
                with _admin() as conn:
                    conn.execute("SELECT 1")
            except Exception as exc:
                _problem = f"PostgreSQL at {ADMIN_URL} unreachable: {' '.join(str(exc).split())}"
    return _problem


def require() -> None:
    """Skip (or under CI=true fail) the calling test when PostgreSQL cannot be used."""
    problem = available()
    if problem is not None:
        if _in_ci():
            pytest.fail(f"CI=true and {problem}", pytrace=False)
        pytest.skip(problem)


def url_of(dbname: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def fresh_database() -> str:
    """Create an empty database of this session's and return its URL (dropped at the end)."""
    require()
    name = PREFIX if not _made else f"{PREFIX}_{len(_made)}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    if not _made:
        atexit.register(drop_all)  # also when used without the session fixture
    _made.append(name)
    return url_of(name)


def drop_all() -> None:
    if not _made:
        return
    with _admin() as conn:
        for name in reversed(_made):
            with contextlib.suppress(Exception):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _made.clear()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The session's own database ``earshot_test_<random>`` (shared by the tests using it);
    every database the session made is dropped at the end."""
    url = fresh_database()
    try:
        yield url
    finally:
        drop_all()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A fresh, empty database for one test (multi-gateway tests, migrations)."""
    return fresh_database()
