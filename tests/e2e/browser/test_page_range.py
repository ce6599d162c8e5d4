"""The page's Recordings view downloads a chosen range of a recording (issue 13, item 4):
typed in seconds or dragged on the waveform, in real headless Chromium; the WAV is checked
sample by sample against the archive."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from browserlib import shot

from helpers import FIXTURES, ServerProcess


def send(server: ServerProcess, x: np.ndarray, rate: int, tmp: Path, *args: str) -> str:
    """``earshot send`` of these samples (a real client, in its own process): the stream."""
    f = tmp / "take.wav"
    sf.write(f, x, rate, subtype="PCM_16")
    r = subprocess.run([sys.executable, "-m", "earshot.cli", "send", str(f), "--url",
                        server.url, "-q", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return str(re.search(r"stream (\w+)", r.stdout + r.stderr).group(1))  # type: ignore[union-attr]

pytestmark = pytest.mark.slow


def download(page: Any, item: Any) -> tuple[np.ndarray, int, str]:
    with page.expect_download() as d:
        item.locator(".download-range").click()
    got = d.value
    y, rate = sf.read(got.path(), dtype="int16")
    return y, rate, got.suggested_filename


def test_a_range_typed_or_dragged_downloads_exactly_that_slice(
        tmp_path: Path, server_factory: Callable[..., ServerProcess],
        page_factory: Callable[[str], Any]) -> None:
    server = server_factory()
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    sid = send(server, x, rate, tmp_path, "--name", "range test")
    rec = httpx.get(f"{server.http}/api/streams/{sid}").json()
    archived = sf.read(server.data_dir / rec["path"], dtype="int16")[0]
    assert np.array_equal(archived, x)

    page = page_factory(server.http + "/#recordings")
    item = page.locator(f"li.recording[data-stream='{sid}']")
    item.wait_for()
    assert item.locator(".range-end").input_value() == f"{len(x) / rate:.3f}"

    # typed: 1.25 s to 3.5 s
    item.locator(".range-start").fill("1.25")
    item.locator(".range-end").fill("3.5")
    assert item.locator(".range-info").text_content() == "2.250 s"
    y, yr, name = download(page, item)
    a, b = round(1.25 * rate), round(3.5 * rate)
    assert yr == rate and name.endswith(f"-{a}-{b}.wav")
    assert np.array_equal(y, archived[a:b])

    # dragged across the waveform, from a quarter to about two thirds of it
    box = item.locator(".waveform").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2, steps=5)
    page.mouse.move(box["x"] + box["width"] * 0.66, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    s0 = float(item.locator(".range-start").input_value())
    s1 = float(item.locator(".range-end").input_value())
    duration = len(x) / rate
    assert s0 == pytest.approx(0.25 * duration, abs=0.05)
    assert s1 == pytest.approx(0.66 * duration, abs=0.05)
    shot(page, "recordings-range")
    y, _, name = download(page, item)
    a, b = round(s0 * rate), round(s1 * rate)
    assert name.endswith(f"-{a}-{b}.wav") and np.array_equal(y, archived[a:b])

    # a start after the end: no link, and the page says why
    item.locator(".range-start").fill("5")
    item.locator(".range-end").fill("2")
    link = item.locator(".download-range")
    assert link.get_attribute("href") is None and link.get_attribute("aria-disabled") == "true"
    assert "start before the end" in (item.locator(".range-info").text_content() or "")


def test_the_links_carry_a_short_lived_signature_never_the_token(
        tmp_path: Path, server_factory: Callable[..., ServerProcess],
        page_factory: Callable[[str], Any]) -> None:
    server = server_factory("--token", "tok-123")
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    sid = send(server, x[:rate], rate, tmp_path, "--token", "tok-123")
    page = page_factory(server.http + "/#record")
    page.evaluate("document.querySelector('#token').value = 'tok-123'")
    page.evaluate("location.hash = '#recordings'")
    item = page.locator(f"li.recording[data-stream='{sid}']")
    item.wait_for()
    item.locator(".range-start").fill("0.5")
    y, _, _ = download(page, item)
    assert np.array_equal(y, x[8000:rate])
    links = [item.locator("audio").get_attribute("src"),
             item.locator(".download").get_attribute("href"),
             item.locator(".download-range").get_attribute("href")]
    for url in links:  # (issue 19: never the long-lived token in src/href)
        assert url is not None and "sig=" in url and "tok-123" not in url, url
    assert httpx.get(server.http + str(links[0])).content[:4] == b"RIFF"
