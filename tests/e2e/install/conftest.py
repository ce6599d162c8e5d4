"""Fixtures of the edge tests: a venv with the client-only install of earshot."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT


def installed_venv(env_var: str, default: Path, spec: str) -> Path:
    """A venv holding ``pip install SPEC`` and nothing else of ours: its dependencies
    installed once per version of pyproject.toml (in ``default``; ``env_var`` moves it),
    earshot itself reinstalled from this tree, not editable, once per test run."""
    stamp_key = hashlib.sha1((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    venv = Path(os.environ.get(env_var, default))
    py = venv / "bin" / "python"
    stamp = venv / f".deps-{stamp_key}"

    def pip(*args: str) -> None:
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", *args],
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr

    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                       timeout=120)
        pip("setuptools>=77", "wheel")  # to build earshot below without build isolation
        pip(spec)  # resolves the dependencies of that install
        stamp.touch()
    pip("--no-deps", "--force-reinstall", "--no-build-isolation", str(ROOT))
    return venv


@pytest.fixture(scope="session")
def client_venv() -> Path:
    """A venv holding ``pip install earshot`` (no extras): the client-only install
    (``.venv-client``; EARSHOT_CLIENT_VENV moves it)."""
    return installed_venv("EARSHOT_CLIENT_VENV", ROOT / ".venv-client", str(ROOT))


@pytest.fixture(scope="session")
def serve_venv() -> Path:
    """A venv holding exactly what ``./run serve`` installs: ``pip install '.[server]'``,
    no other extra (no redis, psycopg, faster-whisper, boto3, webrtc-noise-gain,
    pywebrtc-audio) (``.venv-serve``; EARSHOT_SERVE_VENV moves it)."""
    return installed_venv("EARSHOT_SERVE_VENV", ROOT / ".venv-serve", f"{ROOT}[server]")
