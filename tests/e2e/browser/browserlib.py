"""Headless Chromium for the browser tests: launch with a fake microphone, screenshots."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"


def require_browser() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("playwright is required under CI=true (./run test installs it)")
        pytest.skip("playwright not installed")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required under CI=true (./run test installs it)")
        pytest.skip("chromium not installed")
    return sync_playwright


def launch(playwright: Any, microphone: Path) -> Any:
    """Chromium whose fake microphone plays ``microphone`` once (from the start for every
    capture); with echo cancellation, noise suppression and AGC off the page gets it as is."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ])


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def chromium(microphone: Path) -> Iterator[Any]:
    """A Chromium whose fake microphone plays ``microphone``, for a fixture to yield."""
    sync_playwright = require_browser()
    with sync_playwright() as p:
        b = launch(p, microphone)
        yield b
        b.close()
