"""The page's Call view in real headless Chromium (its fake microphone plays the speech
fixture) and a Python participant in one room: each hears the other; the view lists both
with a level meter and a speaking indicator; mute reaches the other side."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr
from browserlib import shot

from earshot.call import Call
from helpers import FIXTURES, HEARD_CORRELATION, ServerProcess, best_alignment, block_correlation

pytestmark = pytest.mark.slow
HEAR = 48000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "data").start()
    yield srv
    srv.stop()


def _aligned(heard: np.ndarray, x: np.ndarray) -> np.ndarray:
    lag, _ = best_alignment(heard, x)
    return heard[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, np.float32), heard])


def test_page_and_python_hear_each_other(server: ServerProcess,
                                         page_factory: Callable[[str], Any]) -> None:
    page = page_factory(server.http + "/#call")
    page.wait_for_function("window.earshotCall && window.earshotCall.ready")
    voice, rate = sf.read(FIXTURES / "reading_16k.wav", dtype="float32")
    voice = voice[int(0.3 * rate):int(5.3 * rate)]
    result: dict[str, Any] = {}
    joined = threading.Event()
    done = threading.Event()

    def python_participant() -> None:
        pos = 0

        def mic(n: int) -> np.ndarray | None:
            nonlocal pos
            if not joined.is_set():  # silent until the page is in the room
                return np.zeros(n, np.float32)
            chunk = voice[pos:pos + n]
            pos += len(chunk)
            return chunk if len(chunk) else np.zeros(n, np.float32)

        async def run() -> None:
            events: list[dict] = []
            async with Call(server.url, "mixed", "py", rate=rate, mic=mic, record=True,
                            on_event=events.append) as call:
                while not done.is_set():
                    await asyncio.sleep(0.05)
                result["heard"] = call.heard()
                result["events"] = events

        asyncio.run(run())

    th = threading.Thread(target=python_participant)
    th.start()
    try:
        page.fill("#call-room", "mixed")
        page.fill("#call-name", "web")
        page.click("#call-join")
        page.wait_for_function("window.earshotCall.call?.state === 'joined'", timeout=20000)
        joined.set()
        page.wait_for_function("""() => {
            const li = document.querySelectorAll('#call-people li');
            return li.length === 2; }""", timeout=10000)
        # the Python participant speaks: its row lights up, its meter moves
        page.wait_for_function("""() => {
            const li = document.querySelector('#call-people li[data-participant="py"]');
            return li && li.dataset.speaking === 'true' && +li.dataset.level > -50; }""",
                               timeout=20000)
        shot(page, "call-view")
        time.sleep(5.5)
        page.click("#call-mute")
        time.sleep(0.5)
        page.click("#call-mute")
        page.click("#call-join")  # leave
        page.wait_for_function("window.earshotCall.left?.state === 'left'", timeout=20000)
        web_heard = np.array(page.evaluate(
            "Array.from(window.earshotCall.left.heardPcm())"), np.float32) / 32768
        flags = page.evaluate("window.earshotCall.left.constraints")
    finally:
        done.set()
        th.join(30)
    assert flags == {"echoCancellation": True, "noiseSuppression": True,
                     "autoGainControl": True}
    # the page heard the Python participant
    v48 = soxr.resample(voice, rate, HEAR)
    corr_web = block_correlation(_aligned(web_heard, v48), v48, HEAR)
    # the Python participant heard the page's microphone: what the browser sent after its
    # echo cancellation, noise suppression and gain control, i.e. the page's archive
    streams = httpx.get(server.http + "/api/streams").json()["streams"]
    web = next(x for x in streams if x["name"] == "mixed/web")
    sent, sent_rate = sf.read(server.data_dir / web["path"], dtype="float32")
    assert sent_rate == HEAR and web["state"] == "finished"
    corr_py = block_correlation(_aligned(result["heard"], sent), sent, HEAR)
    kinds = [(e["type"], e.get("participant")) for e in result["events"]]
    assert ("joined", "web") in kinds and ("muted", "web") in kinds
    assert kinds.index(("muted", "web")) < kinds.index(("unmuted", "web")) \
        < kinds.index(("left", "web"))
    assert corr_web >= HEARD_CORRELATION, corr_web
    assert corr_py >= HEARD_CORRELATION, corr_py
