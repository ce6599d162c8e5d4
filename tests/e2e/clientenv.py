"""Third-party clients, each in a virtual environment of its own, as a user's app has them.

``client_env("openai")`` gives a :class:`ClientEnv` whose interpreter has exactly the pinned
release of that client (and not earshot), built on first use into a cache directory keyed
by the pins and the Python version, and reused by later runs:
``$EARSHOT_CLIENTENV_CACHE`` or ``~/.cache/earshot/clientenv``. It is built with ``uv`` when
there is one, else ``venv`` and ``pip``, into a temporary directory renamed into place when
complete (an interrupted build is never reused), under a lock (parallel test runs build
it once).

Where it cannot be built (no network, say) a test skips, except under ``CI=true``, where
the build must succeed and its failure fails the test.

:meth:`ClientEnv.run` runs a script from ``tests/e2e/clients/`` (or text) with that
interpreter: JSON in on stdin, the last line of stdout parsed as JSON out.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: the current releases, pinned; bump deliberately (and read their changelogs)
PINS: dict[str, tuple[str, ...]] = {
    "openai": ("openai[realtime]==3.63.0",),
    "deepgram": ("deepgram-sdk==7.17.0",),
    "wyoming": ("wyoming==1.10.2",),
}
CLIENTS_DIR = Path(__file__).parent / "clients"
BUILD_TIMEOUT = 600


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def cache_root() -> Path:
    root = os.environ.get("EARSHOT_CLIENTENV_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "earshot" / "clientenv"


def env_key(name: str, pins: tuple[str, ...]) -> str:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    digest = hashlib.sha256(json.dumps([name, list(pins), version]).encode()).hexdigest()
    return f"{name}-py{version}-{digest[:12]}"


@dataclass(frozen=True)
class ClientEnv:
    name: str
    pins: tuple[str, ...]
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def run(self, script: str | Path, payload: Any = None, *, args: tuple[str, ...] = (),
            timeout: float = 120) -> Any:
        """Run ``script`` (a file in ``tests/e2e/clients/``, a path, or Python source
        text) with ``payload`` as JSON on stdin; the last stdout line, as JSON."""
        if isinstance(script, Path):
            cmd = [str(self.python), str(script), *args]
        elif script.endswith(".py") and "\n" not in script:
            cmd = [str(self.python), str(CLIENTS_DIR / script), *args]
        else:
            cmd = [str(self.python), "-c", script, *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        proc = subprocess.run(cmd, input=json.dumps(payload), capture_output=True, text=True,
                              timeout=timeout, env=env)
        if proc.returncode != 0:
            raise AssertionError(f"{self.name} client script failed ({proc.returncode}):\n"
                                 f"{proc.stderr[-4000:]}")
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        if not lines:
            raise AssertionError(f"{self.name} client script printed nothing:\n"
                                 f"{proc.stderr[-2000:]}")
        return json.loads(lines[-1])


def _build(target: Path, pins: tuple[str, ...]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        uv = shutil.which("uv")
        if uv and subprocess.run([uv, "--version"], capture_output=True).returncode == 0:
            subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(tmp)],
                           check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
            subprocess.run([uv, "pip", "install", "--quiet", "--python",
                            str(tmp / "bin" / "python"), *pins],
                           check=True, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        else:
            subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True,
                           capture_output=True, text=True, timeout=BUILD_TIMEOUT)
            subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "--quiet",
                            *pins], check=True, capture_output=True, text=True,
                           timeout=BUILD_TIMEOUT)
        (tmp / "earshot-pins.json").write_text(json.dumps(list(pins)))
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def client_env(name: str) -> ClientEnv:
    """The client's environment, built if not cached (see the module docstring)."""
    pins = PINS[name]
    root = cache_root()
    target = root / env_key(name, pins)
    env = ClientEnv(name, pins, target)
    if (target / "earshot-pins.json").exists():
        return env
    root.mkdir(parents=True, exist_ok=True)
    try:
        with open(root / f".{target.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (target / "earshot-pins.json").exists():
                if target.exists():  # a directory without its marker: not ours to trust
                    shutil.rmtree(target)
                _build(target, pins)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        problem = f"cannot build the {name} client environment ({' '.join(pins)}): " \
                  f"{str(detail)[-1500:]}"
        if in_ci():
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)
    return env
