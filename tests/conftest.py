from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import ServerProcess
from pg import pg_database, pg_url  # noqa: F401  (PostgreSQL fixtures, tests/pg.py)

E2E = Path(__file__).parent / "e2e"


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for tests that only need a running server (fast)."""
    srv = ServerProcess(tmp_path_factory.mktemp("shared") / "data").start()
    yield srv
    srv.stop()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers of one's own (kill -9, restarts, options); all stopped at the end."""
    started: list[ServerProcess] = []

    def start(*args: str, data_dir: Path | None = None, port: int | None = None,
              env: dict[str, str] | None = None) -> ServerProcess:
        srv = ServerProcess(data_dir or tmp_path / "data", *args, port=port, env=env)
        started.append(srv)
        return srv.start()

    yield start
    for s in started:
        s.stop()


@pytest.hookimpl(tryfirst=True)  # before -m selects: `-m "not slow"` leaves these out
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e/ (real processes: servers, workers, browsers, installs) is
    ``slow``, marked in its file or not; the rest of tests/ mirrors src/earshot/ and runs
    without starting any."""
    for item in items:
        if item.path.is_relative_to(E2E) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
