"""The client-only install (`pip install earshot`, no extras), in a venv that has only it,
against a real server started from the full venv."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from helpers import FIXTURES, ServerProcess

pytestmark = pytest.mark.slow

SERVER_ONLY = ("fastapi", "starlette", "uvicorn", "onnxruntime", "prometheus_client")


def run(venv: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True,
                          text=True, timeout=timeout, cwd=venv)  # not the source tree


def test_the_client_install_has_no_server_stack(client_venv: Path) -> None:
    probe = ("import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m)"
             f" is not None for m in {SERVER_ONLY!r}}}))")
    r = run(client_venv, "python", "-c", probe)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == dict.fromkeys(SERVER_ONLY, False)
    r = run(client_venv, "python", "-c",
            "import earshot, earshot.client, earshot.client.spooled, earshot.client.listen,"
            " earshot.client.sources;"
            " print(earshot.__file__)")
    assert r.returncode == 0, r.stderr
    assert str(client_venv) in r.stdout  # the installed copy, not this source tree
    r = run(client_venv, "earshot", "serve")
    assert r.returncode == 2
    assert "pip install 'earshot[server]'" in r.stderr and "Traceback" not in r.stderr


def test_send_stream_spool_and_streams_from_the_client_install(
        client_venv: Path, shared_server: ServerProcess, tmp_path: Path) -> None:
    f = tmp_path / "take.wav"
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    x = x[: rate * 2]
    sf.write(f, x, rate, subtype="PCM_16")
    r = run(client_venv, "earshot", "send", str(f), "--url", shared_server.url, "-q",
            "--name", "from-the-pi")
    assert r.returncode == 0, r.stderr
    sid = r.stdout.split("stream ")[1].split(":")[0]
    rec = httpx.get(f"{shared_server.http}/api/streams/{sid}").json()
    assert np.array_equal(sf.read(shared_server.data_dir / rec["path"], dtype="int16")[0], x)
    # live capture path: resampled with soxr, through a spool on disk
    r = run(client_venv, "earshot", "stream", "--file", str(f), "--rate", "8000",
            "--spool", str(tmp_path / "spool"), "--url", shared_server.url, "-q",
            "--name", "spooled-8k")
    assert r.returncode == 0, r.stderr
    sid8 = r.stdout.split("stream ")[1].split(":")[0]
    rec8 = httpx.get(f"{shared_server.http}/api/streams/{sid8}").json()
    assert (rec8["rate"], rec8["frames"]) == (8000, len(x) // 2)
    r = run(client_venv, "earshot", "spool", str(tmp_path / "spool"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["entries"] == []
    r = run(client_venv, "earshot", "streams", "--url", shared_server.url, "--json",
            "--limit", "200")
    assert r.returncode == 0, r.stderr
    listed = {s["id"]: s["name"] for s in json.loads(r.stdout)["streams"]}
    assert listed[sid] == "from-the-pi" and listed[sid8] == "spooled-8k"
