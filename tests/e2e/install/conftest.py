"""Fixtures of the edge tests: a venv with the client-only install of earshot."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT


@pytest.fixture(scope="session")
def client_venv() -> Path:
    """A venv holding ``pip install earshot`` (no extras) and nothing else of ours.

    Its dependencies are installed once per version of pyproject.toml (the venv lives in
    ``.venv-client``, like ./run's ``.venv``; EARSHOT_CLIENT_VENV moves it); earshot itself
    is reinstalled from this tree, not editable, once per test run."""
    stamp_key = hashlib.sha1((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    venv = Path(os.environ.get("EARSHOT_CLIENT_VENV", ROOT / ".venv-client"))
    py = venv / "bin" / "python"
    stamp = venv / f".deps-{stamp_key}"

    def pip(*args: str) -> None:
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", *args],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr

    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                       timeout=120)
        pip("setuptools>=77", "wheel")  # to build earshot below without build isolation
        pip(str(ROOT))  # resolves the client's dependencies (the base install)
        stamp.touch()
    pip("--no-deps", "--force-reinstall", "--no-build-isolation", str(ROOT))
    return venv


@pytest.fixture(scope="session")
def serve_venv() -> Path:
    """A venv holding exactly what ``./run serve`` installs: ``pip install '.[server]'``,
    no other extra (no redis, psycopg, faster-whisper, boto3, webrtc-noise-gain,
    pywebrtc-audio, sounddevice).

    Like :func:`client_venv`: dependencies installed once per version of pyproject.toml
    (in ``.venv-serve``; EARSHOT_SERVE_VENV moves it), earshot itself reinstalled from this
    tree, not editable, once per test run."""
    stamp_key = hashlib.sha1((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    venv = Path(os.environ.get("EARSHOT_SERVE_VENV", ROOT / ".venv-serve"))
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
        pip(f"{ROOT}[server]")  # what ./run serve installs, and nothing more
        stamp.touch()
    pip("--no-deps", "--force-reinstall", "--no-build-isolation", str(ROOT))
    return venv
