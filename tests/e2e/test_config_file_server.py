"""`earshot serve --config FILE` / EARSHOT_CONFIG on a real server: the file's options, then
the environment's and the command line's over them; an unknown key stops the server at once.
(Parsing and precedence: tests/test_config_file.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from helpers import ServerProcess

pytestmark = pytest.mark.slow


def _serve(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "earshot.cli", "serve", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_serve_with_a_config_file_env_and_options(tmp_path: Path) -> None:
    conf = tmp_path / "earshot.toml"
    conf.write_text('processors = ["level", "vad"]\narchive_format = "flac"\n'
                    'port = 1\ndata_dir = "/nonexistent/never-used"\n')
    # the file alone: its processors and archive format (port and data_dir come from the
    # command line, which ServerProcess always passes)
    srv = ServerProcess(tmp_path / "a", "--config", str(conf)).start()
    try:
        h = httpx.get(srv.http + "/healthz").json()
        assert h["default_processors"] == ["level", "vad"]
        assert h["archive_format"] == "flac"
    finally:
        srv.stop()
    # EARSHOT_CONFIG, overridden by the environment and then by an option
    srv = ServerProcess(tmp_path / "b", "--archive-format", "wav",
                        env={"EARSHOT_CONFIG": str(conf), "EARSHOT_PROCESSORS": "level",
                             "EARSHOT_ARCHIVE_FORMAT": "ogg"}).start()
    try:
        h = httpx.get(srv.http + "/healthz").json()
        assert h["default_processors"] == ["level"]
        assert h["archive_format"] == "wav"
    finally:
        srv.stop()
    assert (tmp_path / "b" / "earshot.db").exists()
    # an unknown key stops the server at once, naming the key and the file
    bad = tmp_path / "bad.toml"
    bad.write_text("port = 8000\nmax_lagg = 3\n")
    r = _serve(["--config", str(bad)], {})
    assert r.returncode == 2
    assert f"{bad}: unknown key 'max_lagg'" in r.stderr
    assert "Traceback" not in r.stderr

