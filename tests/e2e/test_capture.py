"""Edge capture end to end: `earshot stream --file --rate --channels` resamples and downmixes
into a real server, within a few LSB of soxr's one-shot result. (The conditioner itself:
tests/client/test_sources.py.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr

from helpers import ServerProcess

pytestmark = pytest.mark.slow


def tone(freq: float, rate: int, n: int, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def test_earshot_stream_rate_and_channels(tmp_path: Path, shared_server: ServerProcess) -> None:
    f = tmp_path / "st.wav"
    rng = np.random.default_rng(3)
    n = 48000 * 2
    x = np.stack([tone(700, 48000, n, 0.3) + rng.normal(0, 0.02, n).astype(np.float32),
                  tone(1300, 48000, n, 0.3)], axis=1)
    sf.write(f, x, 48000, subtype="FLOAT")
    r = subprocess.run([sys.executable, "-m", "earshot.cli", "stream", "--file", str(f),
                        "--rate", "16000", "--channels", "1", "--url", shared_server.url,
                        "-q", "--name", "resampled"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    sid = r.stdout.split("stream ")[1].split(":")[0]
    rec = httpx.get(f"{shared_server.http}/api/streams/{sid}").json()
    assert (rec["rate"], rec["channels"], rec["frames"]) == (16000, 1, 32000)
    y = sf.read(shared_server.data_dir / rec["path"], dtype="float32")[0]
    expected = soxr.resample(x.mean(axis=1), 48000, 16000, quality="HQ")
    assert len(y) == len(expected)
    # the archive is PCM16: within a few LSB of soxr's one-shot result (streaming differs
    # from one-shot only in rounding)
    assert np.max(np.abs(y[100:-100] - expected[100:-100])) < 4 / 32768

