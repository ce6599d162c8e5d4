"""Fixtures for the README tour on the plain install (see tour_helpers)."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator

import pytest
from tour_helpers import TOKEN, PlainInstall, build, venv_path

from helpers import ROOT, ServerProcess


@pytest.fixture(scope="session")
def plain() -> PlainInstall:
    """The plain install, built once per pyproject.toml (reused across runs)."""
    venv = venv_path()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:  # one builder at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        t0 = time.monotonic()
        build(venv)
        if time.monotonic() - t0 > 1:
            print(f"built the plain install in {venv} in {time.monotonic() - t0:.0f} s")
    return PlainInstall(venv)


@pytest.fixture(scope="session")
def tour_server(plain: PlainInstall,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``earshot serve --processor examples.melprint:MelPrint`` from the repository root, on
    the plain install, with a token (the tour's commands get it from EARSHOT_TOKEN)."""
    srv = ServerProcess(tmp_path_factory.mktemp("tour") / "data",
                        "--processor", "examples.melprint:MelPrint", "--processor", "level",
                        "--token", TOKEN)
    srv.command = [plain.earshot]
    srv.cwd = ROOT
    srv.env = plain.env()
    srv.start(timeout=60)
    yield srv
    srv.stop()


@pytest.fixture
def tour_env(plain: PlainInstall, tour_server: ServerProcess) -> dict[str, str]:
    """What a user of the tour server would export."""
    return plain.env(EARSHOT_URL=tour_server.url, EARSHOT_TOKEN=TOKEN)


