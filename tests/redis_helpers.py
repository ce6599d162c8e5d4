"""Real redis-server and ``earshot worker --bus`` processes on free loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import Child, free_port


class RedisServer(Child):
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            if os.environ.get("CI"):
                pytest.fail("redis-server is not installed (apt-get install redis-server)")
            pytest.skip("redis-server is not installed")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=open(self.dir / f"redis-{self.port}.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT)
        import redis

        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(port=self.port)


class WorkerProcess(Child):
    """``earshot worker --bus URL KIND...`` in a subprocess."""

    def __init__(self, bus: str, kinds: list[str], log: Path, name: str,
                 lease_ttl: float = 3.0) -> None:
        self.cmd = [sys.executable, "-m", "earshot.cli", "worker", *kinds, "--bus", bus,
                    "--name", name, "--lease-ttl", str(lease_ttl)]
        self.log = log
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.proc = subprocess.Popen(self.cmd, stdout=open(self.log, "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT)
        return self



def wait_balanced(r, kind: str, workers: int, partitions: int = 16,  # type: ignore[no-untyped-def]
                  timeout: float = 30.0) -> dict[int, str]:
    """Wait until ``workers`` workers of ``kind`` hold every partition between them."""
    deadline = time.monotonic() + timeout
    holders: dict[int, str] = {}
    while time.monotonic() < deadline:
        raw = r.mget([f"earshot:lease:{kind}:{p}" for p in range(partitions)])
        holders = {p: h.decode() for p, h in enumerate(raw) if h}
        if len(holders) == partitions and len(set(holders.values())) == workers:
            return holders
        time.sleep(0.1)
    raise AssertionError(f"{kind} leases not balanced over {workers} workers: {holders}")
