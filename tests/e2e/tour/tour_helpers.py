"""Helpers for the README tour on the plain install: a venv with ``pip install -e '.[server]'``
(what ``./run serve`` builds) and no other extra.

That is what ``./run serve`` builds, so these tests see what a newcomer sees: nothing from
the test extra (httpx, pytest, PyAV, faster-whisper, playwright) is importable there. The
venv is built once and reused while pyproject.toml is unchanged (the key is its hash and the
checkout's path, as ./run keys its own), outside the repository:
``$EARSHOT_TOUR_VENV``, else ``~/.cache/earshot/tour-venv-<key>``. pip's cache makes a
rebuild take about a minute.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import ROOT

TOKEN = "tour-secret"


@dataclass(frozen=True)
class PlainInstall:
    venv: Path

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    @property
    def earshot(self) -> str:
        """The console script, as a user runs it (its own directory is on sys.path, not the
        current one: what ``python -m earshot.cli`` would hide)."""
        return str(self.venv / "bin" / "earshot")

    def env(self, **extra: str) -> dict[str, str]:
        """A user's environment: this venv's bin first on PATH, no test venv, no PYTHONPATH."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "COLUMNS")}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.venv)
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 60, cwd: Path | None = None,
            env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
        """``earshot ARGS`` from this install, its output captured (not a terminal)."""
        return subprocess.run([self.earshot, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=cwd or ROOT, env=env or self.env(),
                              stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]

    def popen(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
              merge: bool = False) -> subprocess.Popen[str]:
        """``earshot ARGS`` running; ``merge``: its stderr comes with its stdout."""
        return subprocess.Popen([self.earshot, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if merge else subprocess.DEVNULL,
                                text=True, cwd=cwd or ROOT, env=env or self.env(),
                                stdin=subprocess.DEVNULL)


def venv_path() -> Path:
    given = os.environ.get("EARSHOT_TOUR_VENV")
    if given:
        return Path(given)
    key = hashlib.sha1((ROOT / "pyproject.toml").read_bytes() + str(ROOT).encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "earshot" / f"tour-venv-{key.hexdigest()[:12]}"


def build(venv: Path) -> None:
    """Make ``venv`` the plain install unless it already is (a stamp says so)."""
    stamp = venv / ".earshot-plain-installed"
    if stamp.exists():
        return
    shutil.rmtree(venv, ignore_errors=True)  # a half-built one from an interrupted run
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # the plain install, exactly as ./run serve does it: the server extra, nothing else
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--disable-pip-version-check", "-e", f"{ROOT}[server]"],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        pytest.fail(f"pip install -e '.[server]' failed:\n{out.stdout[-3000:]}\n"
                    f"{out.stderr[-3000:]}")
    stamp.touch()


class Lines:
    """A running process whose stdout lines are read by a thread, so a test can wait for
    the next one with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        import queue
        import threading

        self.proc = proc
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self._q.put(line)
            self._q.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def next(self, timeout: float = 30) -> str:
        """The next line ("" at the end of the output); fails after ``timeout`` seconds."""
        import queue

        try:
            line = self._q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout} s; so far: {self.seen}") from None
        if line is None:
            self._q.put(None)
            return ""
        self.seen.append(line)
        return line

    def until(self, predicate: Callable[[str], bool], timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(0.1, deadline - time.monotonic()))
            if not line:
                raise AssertionError(f"output ended; it was: {self.seen}")
            if predicate(line):
                return line

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *_: object) -> None:
        stop(self.proc)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
