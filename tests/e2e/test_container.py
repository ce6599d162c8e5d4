"""earshot's container image, built from this repository's Containerfile and run by podman.

The image is built on a Debian bookworm base made by debootstrap (tests/e2e/
container_helpers.py says how and why). One container, configured by a mounted TOML file
and EARSHOT_* variables, with its /data volume bind-mounted from the test's directory:

* it is healthy (its own HEALTHCHECK, and /healthz from the host), runs as the image's
  non-root user under tini, and has no build-only tools;
* `earshot send` from the host makes an archive in /data equal to the file sent;
* `podman stop` during a real-time stream is the planned stop: the container exits within
  its drain bound (not killed), the stream is left `interrupted` with exactly what was
  acknowledged, and after `podman start` the same client resumes it to an exact archive.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from container_helpers import IMAGE_UID, SANDBOX_FLAGS, BuiltImage, podman

from earshot.client import Publisher, Reconnect
from helpers import FIXTURES, free_port

pytestmark = pytest.mark.slow

RATE = 16000
BLOCK = RATE // 10
TOKEN = "container-test-token"
DRAIN_TIMEOUT = 5.0  # the TOML file's; the whole stop is bounded by it + 5 s (README)


def wait_healthy(url: str, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(url + "/healthz", timeout=2)
            if r.status_code == 200:
                return dict(r.json())
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the container never answered /healthz"
        time.sleep(0.2)


def db_row(data: Path, stream_id: str) -> tuple[str, int]:
    with sqlite3.connect(data / "earshot.db") as db:
        row = db.execute("SELECT state, frames FROM streams WHERE id = ?", (stream_id,)).fetchone()
    assert row is not None, stream_id
    return str(row[0]), int(row[1])


def record(http: str, stream_id: str) -> dict[str, Any]:
    r = httpx.get(f"{http}/api/streams/{stream_id}",
                  headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_the_image_serves_archives_and_stops_resumably(
        earshot_image: BuiltImage, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, IMAGE_UID, IMAGE_UID)  # the image's user owns its volume
    config = tmp_path / "earshot.toml"
    config.write_text(f'token = "{TOKEN}"\ndrain_timeout = {DRAIN_TIMEOUT}\n'
                      'processors = ["level"]\n')
    port = free_port()
    http, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws"
    name = f"earshot-test-{os.getpid()}-{port}"
    podman("run", "-d", "--name", name, *SANDBOX_FLAGS, "-v", f"{data}:/data",
           "-v", f"{config}:/etc/earshot/earshot.toml:ro",
           "-e", "EARSHOT_CONFIG=/etc/earshot/earshot.toml", "-e", f"EARSHOT_PORT={port}",
           earshot_image.tag)
    try:
        await _exercise(name, data, http, ws)
    finally:
        logs = podman("logs", name, check=False)
        (tmp_path / "container.log").write_text(logs.stdout + logs.stderr)
        podman("rm", "-f", "-t", "0", name, check=False)


async def _exercise(name: str, data: Path, http: str, ws: str) -> None:
    health = await asyncio.to_thread(wait_healthy, http)
    assert health["status"] == "ok" and health["default_processors"] == ["level"]
    # the image's own HEALTHCHECK (a Python one-liner on /healthz, no curl in the image)
    assert podman("healthcheck", "run", name, check=False).returncode == 0
    # the token from the TOML file is in force
    assert httpx.get(http + "/api/streams", timeout=5).status_code == 401
    # PID 1 is tini (it hands SIGTERM on); earshot runs as the image's user
    assert podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")[0] \
        == "/usr/bin/tini"
    assert podman("exec", name, "id", "-u").stdout.strip() == str(IMAGE_UID)
    # no build-only tools in the final image
    probe = podman("exec", name, "sh", "-c",
                   "command -v gcc; python3 -c 'import ensurepip' 2>/dev/null && echo ensurepip;"
                   " command -v apt-get >/dev/null && echo apt; true").stdout.split()
    assert "ensurepip" not in probe and not any("gcc" in p for p in probe), probe

    # earshot send from the host (this checkout's earshot), an exact archive in /data
    sent = subprocess.run(
        [sys.executable, "-m", "earshot.cli", "send", str(FIXTURES / "speech_16k.wav"),
         "--url", ws, "--token", TOKEN, "-q"], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0, sent.stderr
    streams = httpx.get(http + "/api/streams", headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=10).json()["streams"]
    assert len(streams) == 1 and streams[0]["state"] == "finished"
    want, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    got, got_rate = sf.read(data / streams[0]["path"], dtype="int16")
    assert got_rate == rate and np.array_equal(got, want)

    # podman stop during a real-time stream: the planned stop
    x = (np.random.default_rng(23).standard_normal(RATE * 6) * 3000).astype("<i2")
    pub = Publisher(ws, rate=RATE, format="s16", name="live", token=TOKEN,
                    reconnect=Reconnect(maximum=1.0, attempts=200))
    acked_at_shutdown: list[int] = []
    readies: list[dict[str, Any]] = []

    async def watch() -> None:
        async for e in pub.events():
            if e["type"] == "ready":
                readies.append(e)
            elif e["type"] == "error" and e.get("code") == "shutting_down":
                acked_at_shutdown.append(pub.acked)

    watcher = asyncio.create_task(watch())
    await pub.start()

    async def send_realtime() -> None:  # keeps capturing while the server is away
        t0 = time.monotonic()
        for n, i in enumerate(range(0, len(x), BLOCK)):
            await pub.send(x[i:i + BLOCK])
            await asyncio.sleep(max(0.0, t0 + (n + 1) * 0.1 - time.monotonic()))

    sender = asyncio.create_task(send_realtime())
    await asyncio.sleep(1.5)
    t0 = time.monotonic()
    await asyncio.to_thread(podman, "stop", "-t", "60", name)
    stop_seconds = time.monotonic() - t0
    state = json.loads(podman("inspect", name, "--format", "{{json .State}}").stdout)
    # exited on its own within the bound (tini maps earshot's SIGTERM exit to 0), not killed
    assert state["ExitCode"] == 0 and not state.get("OOMKilled"), state
    assert stop_seconds < DRAIN_TIMEOUT + 5, stop_seconds
    assert len(acked_at_shutdown) == 1 and acked_at_shutdown[0] > 0
    stream_id = pub.stream_id
    assert stream_id is not None
    # resumable: interrupted, holding exactly what was acknowledged
    assert db_row(data, stream_id) == ("interrupted", acked_at_shutdown[0])
    held, _ = sf.read(data / "streams" / f"{stream_id}.wav", dtype="int16")
    assert np.array_equal(held, x[:acked_at_shutdown[0]])

    podman("start", name)
    await asyncio.to_thread(wait_healthy, http)
    await sender
    assert await pub.stop() == len(x)
    watcher.cancel()
    assert [r["stream"] for r in readies] == [stream_id, stream_id]  # resumed, not restarted
    rec = record(http, stream_id)
    assert rec["state"] == "finished" and rec["frames"] == len(x)
    got, _ = sf.read(data / rec["path"], dtype="int16")
    assert np.array_equal(got, x)  # nothing lost or duplicated across the stop
    print(f"\npodman stop took {stop_seconds:.2f} s")
