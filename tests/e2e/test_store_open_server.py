"""``earshot serve --db`` with a PostgreSQL nobody listens at: one line and exit code 2, before
the server listens (the other bad values, in-process: tests/storage/test_store_open.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import free_port

pytestmark = pytest.mark.slow


def test_serve_refuses_a_bad_db_before_listening(tmp_path: Path) -> None:
    """One line and exit code 2."""
    port = free_port()
    r = subprocess.run(
        [sys.executable, "-m", "earshot.cli", "serve", "--port", str(free_port()),
         "--data-dir", str(tmp_path / "d"), "--db", f"postgresql://127.0.0.1:{port}/earshot"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"earshot: cannot connect to PostgreSQL at 127.0.0.1:{port}/"
                               "earshot: "), r.stderr
    assert "Traceback" not in r.stderr
