"""Fixtures of the browser tests: one Chromium per module, pages of the earshot app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from browserlib import chromium

from helpers import FIXTURES


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium whose microphone plays tests/fixtures/speech_48k.wav."""
    yield from chromium(FIXTURES / "speech_48k.wav")


@pytest.fixture
def page_factory(browser: Any) -> Iterator[Callable[[str], Any]]:
    """Open the earshot page at a URL (in a fresh context) once the app is ready."""
    contexts = []

    def open_page(url: str) -> Any:
        ctx = browser.new_context()
        contexts.append(ctx)
        page = ctx.new_page()
        page.on("console", lambda m: print(f"[console.{m.type}] {m.text}"))
        page.on("pageerror", lambda e: print(f"[pageerror] {e}"))
        page.goto(url)
        page.wait_for_function("window.earshotApp && window.earshotApp.ready")
        return page

    yield open_page
    for ctx in contexts:
        ctx.close()
