"""The page on a full server: its recorder backs off on 1013 and gets in on its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from test_page import archive, stop_recording

from earshot.client import SyncPublisher

pytestmark = pytest.mark.slow


def test_page_waits_for_a_slot_with_max_streams(server_factory: Callable[..., Any],
                                                page_factory: Callable[[str], Any]) -> None:
    server = server_factory("--max-streams", "1")
    pub = SyncPublisher(server.url, rate=16000, format="s16")
    pub.send(np.zeros(1600, "<i2"))
    page = page_factory(server.http + "/#record")
    page.click("#record")
    # refused with server_full (1013): the page keeps trying instead of failing
    page.wait_for_function("document.body.innerText.includes('reconnecting')", timeout=20000)
    time.sleep(1.0)
    state = page.evaluate("window.earshotApp.recorder.state")
    assert state == "starting", state
    refused = httpx.get(server.http + "/metrics").text
    assert 'earshot_streams_refused_total{reason="full"}' in refused
    threading.Thread(target=pub.stop).start()  # the slot frees up
    page.wait_for_function("window.earshotApp.recorder.state === 'recording'", timeout=30000)
    time.sleep(1.0)
    stopped = stop_recording(page)
    y, rate, rec = archive(server, stopped["stream"])
    assert rec["state"] == "finished"
    # what was captured while waiting for the slot was kept and sent once admitted
    assert abs(len(y) - stopped["frames"]) <= int(rate * 0.02)
    assert len(y) >= rate * 1.5
