"""The earshot command line, run as a user would: subprocesses against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from helpers import ServerProcess, free_port

pytestmark = pytest.mark.slow


def earshot(*args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "earshot.cli", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)  # type: ignore[call-overload]


def tone(path: Path, rate: int = 16000, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = (np.sin(2 * np.pi * 330 * t) * 12000).astype("<i2")
    sf.write(path, x, rate, subtype="PCM_16")
    return x


def test_unreachable_server_exit_code(tmp_path: Path) -> None:
    tone(tmp_path / "a.wav", seconds=0.1)
    out = earshot("send", str(tmp_path / "a.wav"), "--url", f"ws://127.0.0.1:{free_port()}/ws")
    assert out.returncode == 3 and "cannot reach" in out.stderr
    out = earshot("streams", "--url", f"ws://127.0.0.1:{free_port()}/ws")
    assert out.returncode == 3 and "cannot reach" in out.stderr


def test_bad_file_and_usage_errors(tmp_path: Path, shared_server: ServerProcess) -> None:
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    out = earshot("send", str(tmp_path / "junk.wav"), "--url", shared_server.url)
    assert out.returncode == 1 and "cannot read" in out.stderr and "Traceback" not in out.stderr
    out = earshot("serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert out.returncode == 2 and "without a token" in out.stderr


def test_serve_reports_the_default_speech_to_text_engine(shared_server: ServerProcess) -> None:
    log = " ".join(shared_server.log.read_text().split())
    assert "speech-to-text: en-us (pocketsphinx, cpu)" in log
    assert "far better accuracy" in log and "--asr-model small.en" in log


def test_stream_command_with_a_file_as_microphone(tmp_path: Path,
                                                  shared_server: ServerProcess) -> None:
    x = tone(tmp_path / "mic.wav", seconds=1.0)
    t0 = time.monotonic()
    out = earshot("stream", "--file", str(tmp_path / "mic.wav"), "--url", shared_server.url,
                  "--name", "mic-test", "-q")
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert elapsed >= 0.9  # paced like a live source, not sent at once
    sid = out.stdout.split()[1].rstrip(":")
    rec = httpx.get(f"{shared_server.http}/api/streams/{sid}").json()
    assert rec["name"] == "mic-test" and rec["frames"] == len(x)
    assert np.array_equal(sf.read(shared_server.data_dir / rec["path"], dtype="int16")[0], x)


def test_stream_without_sounddevice_says_how_to_install(shared_server: ServerProcess) -> None:
    out = earshot("stream", "--url", shared_server.url, env={**os.environ, "PYTHONPATH": ""},
                  timeout=30)
    if out.returncode == 0:  # pragma: no cover - a machine with a real microphone
        pytest.skip("sounddevice and a microphone are present")
    assert out.returncode == 2 and "earshot[mic]" in out.stderr


def test_tail_prints_live_events_and_streams_lists(tmp_path: Path,
                                                    shared_server: ServerProcess) -> None:
    tone(tmp_path / "t.wav", seconds=0.3)
    tail = subprocess.Popen([sys.executable, "-m", "earshot.cli", "tail", "*", "--url",
                             shared_server.url], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        sent = earshot("send", str(tmp_path / "t.wav"), "--url", shared_server.url, "-q")
        sid = sent.stdout.split()[1].rstrip(":")
        lines = []
        assert tail.stdout is not None
        while len(lines) < 2:
            lines.append(tail.stdout.readline())
    finally:
        tail.terminate()
        tail.wait(5)
    assert lines[0].startswith(sid) and "stream_started" in lines[0]
    assert lines[1].startswith(sid) and "stream_ended" in lines[1] and '"frames": 4800' in lines[1]
    listing = earshot("streams", "--url", shared_server.url)
    assert listing.returncode == 0 and sid in listing.stdout


def test_flac_archives_from_environment(server_factory: Callable[..., ServerProcess],
                                        tmp_path: Path) -> None:
    server = server_factory(env={"EARSHOT_ARCHIVE_FORMAT": "flac"})
    x = tone(tmp_path / "f.wav", rate=48000, seconds=0.5)
    out = earshot("send", str(tmp_path / "f.wav"), "--url", server.url, "-q")
    sid = out.stdout.split()[1].rstrip(":")
    r = httpx.get(f"{server.http}/api/streams/{sid}/audio")
    assert r.headers["content-type"] == "audio/flac"
    (tmp_path / "back.flac").write_bytes(r.content)
    assert np.array_equal(sf.read(tmp_path / "back.flac", dtype="int16")[0], x)
