from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import ServerProcess
from pg import pg_database, pg_url  # noqa: F401  (PostgreSQL fixtures, tests/pg.py)


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
