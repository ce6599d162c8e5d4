"""The page's rough edges from the first-ten-minutes tour (issue 14), in Chromium."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from browserlib import shot

from helpers import ServerProcess

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"
LEVEL_EMPTY = """() => {
    const c = document.querySelector('#level');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let colored = 0;
    for (let i = 0; i < d.length; i += 4)
      if (!(d[i] === 229 && d[i+1] === 231 && d[i+2] === 235)) colored++;
    return colored; }"""


def test_recordings_view_says_401_in_plain_words(server_factory: Callable[..., Any],
                                                 page_factory: Callable[[str], Any]) -> None:
    server = server_factory("--token", TOKEN)
    page = page_factory(server.http + "/#recordings")
    alert = page.locator("#recordings li.error")
    alert.wait_for()
    text = alert.inner_text()
    assert "401" in text and "needs a token" in text and "Options" in text, text
    assert page.is_disabled("#prev-page") and page.is_disabled("#next-page")
    assert page.inner_text("#page-info") == ""
    shot(page, "recordings-401")
    # a wrong token is named as such
    page.evaluate("document.querySelector('#token').value = 'wrong'")
    page.evaluate("location.hash = '#record'")
    page.evaluate("location.hash = '#recordings'")
    page.wait_for_function("document.querySelector('#recordings li.error')?.textContent"
                           ".includes('refused this token')")
    # with the right token the same view lists the server's recordings
    page.evaluate(f"document.querySelector('#token').value = {TOKEN!r}")
    page.evaluate("location.hash = '#record'")
    page.evaluate("location.hash = '#recordings'")
    page.wait_for_function("document.querySelector('#recordings').textContent"
                           ".includes('No recordings yet')")
    assert page.locator("#recordings li.error").count() == 0


def test_record_button_keeps_its_size_and_the_meter_falls_after_stop(
        shared_server: ServerProcess, page_factory: Callable[[str], Any]) -> None:
    page = page_factory(shared_server.http + "/#record")
    before = page.locator("#record").bounding_box()
    below = page.locator(".meter-row").bounding_box()
    page.click("#record")
    page.wait_for_function("window.earshotApp.recorder?.state === 'recording'")
    page.wait_for_function("document.querySelector('#record').textContent.includes('Stop')")
    page.wait_for_function(f"({LEVEL_EMPTY})() > 100", timeout=10000)  # the meter moves
    during = page.locator("#record").bounding_box()
    below_during = page.locator(".meter-row").bounding_box()
    shot(page, "record-button-recording")
    assert during == before, (before, during)
    assert below_during["y"] == below["y"]  # nothing below jumps
    time.sleep(1.0)
    page.click("#record")
    page.wait_for_function("window.earshotApp.recorder.state === 'stopped'", timeout=30000)
    page.wait_for_function("document.querySelector('#record').textContent.includes('Record')")
    assert page.locator("#record").bounding_box() == before
    assert page.evaluate(LEVEL_EMPTY) == 0  # not frozen at its last value
    assert page.inner_text("#level-db") == "\u2212∞ dB"
    shot(page, "record-button-stopped")


def test_dashboard_without_streams_and_header_when_the_server_is_down(
        server_factory: Callable[..., Any], page_factory: Callable[[str], Any]) -> None:
    server = server_factory()
    page = page_factory(server.http + "/#dashboard")
    page.wait_for_function("document.querySelector('#server-status').textContent"
                           ".startsWith('server ')")
    assert page.is_hidden("#dashboard")  # no headers over an empty table
    assert page.is_visible("#dashboard-empty")
    assert "No live streams" in page.inner_text("#dashboard-empty")
    shot(page, "dashboard-empty")
    server.kill9()
    page.wait_for_function("document.querySelector('#server-status').textContent"
                           ".includes('unreachable')", timeout=20000)
    status = page.inner_text("#server-status")
    assert "server unreachable" in status and "0." not in status, status
    shot(page, "header-server-down")
    server.start()
    page.wait_for_function("document.querySelector('#server-status').textContent"
                           ".startsWith('server ')", timeout=20000)
