"""Fixtures of the cluster tests: a redis-server of their own, worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from redis_helpers import RedisServer, WorkerProcess


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(bus: str, *kinds: str, name: str, lease_ttl: float = 3.0) -> WorkerProcess:
        w = WorkerProcess(bus, list(kinds), tmp_path / f"worker-{name}.log", name, lease_ttl)
        started.append(w.start())
        return w

    yield start
    for w in started:
        w.stop()
