"""The page in real headless Chromium, with a fake microphone playing the speech fixture."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from browserlib import shot

from helpers import FIXTURES, ServerProcess, capture_correlation

pytestmark = pytest.mark.slow


def stop_recording(page: Any) -> dict:
    """Press Stop; return the server's 'stopped' with the page's captured frames and rate."""
    page.click("#record")
    page.wait_for_function("window.earshotApp.lastStopped !== null", timeout=30000)
    return page.evaluate("({...window.earshotApp.lastStopped, "
                         "frames: window.earshotApp.recorder.frames, "
                         "rate: window.earshotApp.recorder.rate})")


def source_at(rate: int) -> np.ndarray:
    """The fake microphone's file at the page's AudioContext rate (44.1 kHz in headless
    Chromium: the page records at the context's native rate, the browser resamples)."""
    import soxr

    x, xr = sf.read(FIXTURES / "speech_48k.wav", dtype="float32")
    return x if xr == rate else soxr.resample(x, xr, rate).astype(np.float32)


def archive(server: ServerProcess, stream: str) -> tuple[np.ndarray, int, dict]:
    rec = httpx.get(f"{server.http}/api/streams/{stream}").json()
    y, rate = sf.read(server.data_dir / rec["path"], dtype="float32")
    return y, rate, rec


def test_record_live_views_and_library(shared_server: ServerProcess,
                                       page_factory: Callable[[str], Any]) -> None:
    page = page_factory(shared_server.http + "/#record")
    labels = page.eval_on_selector_all("#device option", "os => os.map(o => o.textContent)")
    assert labels and all(labels)
    page.click("#record")
    page.wait_for_function("window.earshotApp.recorder?.state === 'recording'")
    # live views move while the speech plays
    page.wait_for_function("document.querySelector('#speech').textContent === 'speech'",
                           timeout=30000)  # generous: the machine may be busy
    labels = page.eval_on_selector_all("#device option", "os => os.map(o => o.textContent)")
    assert any("fake" in s.lower() or "default" in s.lower() for s in labels), labels
    level_px = page.evaluate("""() => {
        const c = document.querySelector('#level');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let colored = 0;
        for (let i = 0; i < d.length; i += 4)
          if (!(d[i] === 229 && d[i+1] === 231 && d[i+2] === 235)) colored++;
        return colored; }""")
    spec_px = page.evaluate("""() => {
        const c = document.querySelector('#spectrogram');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lit = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] + d[i+1] + d[i+2] > 60) lit++;
        return lit; }""")
    assert level_px > 100 and spec_px > 500
    shot(page, "record-view")
    time.sleep(2.0)
    stopped = stop_recording(page)
    y, rate, rec = archive(shared_server, stopped["stream"])
    assert rate == stopped["rate"] and len(y) == stopped["frames"] == stopped["offset"]
    assert rec["format"] == "s16" and rec["channels"] == 1
    x = source_at(rate)
    corr = capture_correlation(y, x, rate)
    assert corr >= 0.99, corr

    # the take in the library: player with the right duration, waveform, delete
    page.goto(shared_server.http + "/#recordings")
    item = page.locator(f"li.recording[data-stream='{stopped['stream']}']")
    item.wait_for()
    duration = page.evaluate(f"""async () => {{
        const a = document.querySelector("li[data-stream='{stopped['stream']}'] audio");
        if (!(a.duration > 0)) await new Promise(r => a.addEventListener('loadedmetadata', r,
                                                                          {{once: true}}));
        return a.duration; }}""")
    assert abs(duration - len(y) / rate) < 0.05
    page.wait_for_function(f"""() => {{
        const c = document.querySelector("li[data-stream='{stopped['stream']}'] canvas");
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4) if (d[i+3] > 0) return true;
        return false; }}""")
    shot(page, "recordings-view")
    path = shared_server.data_dir / rec["path"]
    assert path.exists()
    page.on("dialog", lambda d: d.accept())
    item.locator("button.delete").click()
    item.wait_for(state="detached")
    assert httpx.get(f"{shared_server.http}/api/streams/{stopped['stream']}").status_code == 404
    assert not path.exists()


def test_server_restart_mid_recording_leaves_no_gap(server_factory: Callable[..., Any],
                                                    page_factory: Callable[[str], Any]) -> None:
    server = server_factory()
    page = page_factory(server.http + "/#record")
    page.click("#record")
    page.wait_for_function("window.earshotApp.recorder?.state === 'recording'")
    time.sleep(1.5)
    server.kill9()
    time.sleep(1.0)  # the page keeps capturing into its buffer meanwhile
    server.start()
    page.wait_for_function("window.earshotApp.recorder.reconnects >= 1", timeout=20000)
    time.sleep(1.0)
    stopped = stop_recording(page)
    y, rate, rec = archive(server, stopped["stream"])
    frame = int(rate * 0.02)
    assert abs(len(y) - stopped["frames"]) <= frame  # the archive holds what was captured
    assert rec["state"] == "finished"
    x = source_at(rate)
    corr = capture_correlation(y, x, rate)
    assert corr >= 0.99  # no hole: the audio still lines up with the source as one piece


def test_dashboard_shows_two_live_streams(shared_server: ServerProcess,
                                          page_factory: Callable[[str], Any]) -> None:
    import threading

    from earshot.client import SyncPublisher

    dash = page_factory(shared_server.http + "/#dashboard")
    rec_page = page_factory(shared_server.http + "/#record")
    rec_page.click("#record")
    rec_page.wait_for_function("window.earshotApp.recorder?.state === 'recording'")
    stop = threading.Event()

    def python_client() -> None:
        t = np.arange(1600) / 16000
        tone = (np.sin(2 * np.pi * 330 * t) * 12000).astype("<i2")
        with SyncPublisher(shared_server.url, rate=16000, format="s16", name="python") as pub:
            while not stop.is_set():
                pub.send(tone)
                time.sleep(0.1)

    th = threading.Thread(target=python_client)
    th.start()
    try:
        dash.wait_for_function("""() => {
            const rows = [...document.querySelectorAll('#dashboard tbody tr')];
            return rows.length >= 2 && rows.every(r => +r.dataset.rms > -100); }""",
                               timeout=15000)
        names = dash.eval_on_selector_all("#dashboard tbody tr .name",
                                          "els => els.map(e => e.textContent)")
        assert "python" in names
        levels = dash.eval_on_selector_all("#dashboard tbody tr",
                                           "rs => rs.map(r => +r.dataset.rms)")
        assert all(v > -100 for v in levels), levels
        shot(dash, "dashboard-view")
    finally:
        stop.set()
        th.join(10)
        stop_recording(rec_page)


def _shim_events(server: ServerProcess, browser: Any) -> list:
    """Run the shipped example page (web/speech.html) and return the events it logged."""
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(server.http + "/web/speech.html?autostart=1&interim=1")
    page.wait_for_function("window.done === true", timeout=90000)  # decodes on a busy machine
    log = page.evaluate("window.log")
    shot(page, "speech-example")
    ctx.close()
    return log


def test_speech_recognition_shim_says_when_the_server_has_no_speech_to_text(
        server_factory: Callable[..., Any], browser: Any) -> None:
    log = _shim_events(server_factory("--asr-engine", "none"), browser)
    kinds = [e["type"] for e in log]
    errors = [e for e in log if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["error"] == "service-not-allowed", log
    assert "speech-to-text" in errors[0]["message"]
    assert kinds[-1] == "end" and "result" not in kinds, kinds


def test_speech_recognition_shim_results_with_a_model(server_factory: Callable[..., Any],
                                                      browser: Any) -> None:
    server = server_factory("--asr-model", str(FIXTURES / "tiny-whisper"), "--asr-language", "en")
    log = _shim_events(server, browser)
    kinds = [e["type"] for e in log]
    assert kinds[0] == "start" and kinds[-1] == "end" and "error" not in kinds, kinds
    results = [e for e in log if e["type"] == "result"]
    assert results and results[-1]["final"] is True and results[-1]["index"] == 0
    assert any(not r["final"] for r in results)  # interim results came first
    assert kinds.index("speechstart") < kinds.index("result")


def test_page_sends_opus_when_supported_and_listen_plays(shared_server: ServerProcess,
                                                         page_factory: Callable[[str], Any]
                                                         ) -> None:
    page = page_factory(shared_server.http + "/#record")
    supported = page.evaluate("""async () => {
        const m = await import('/web/earshot.js');
        const ctx = new AudioContext(); const rate = ctx.sampleRate; await ctx.close();
        return m.opusSupported(rate); }""")
    assert page.eval_on_selector("#codec", "s => s.value") == "pcm"  # lossless by default
    page.click("summary")  # Options
    page.select_option("#codec", "auto")  # Opus where WebCodecs can
    page.click("#record")
    page.wait_for_function("window.earshotApp.recorder?.state === 'recording'")
    wire = page.evaluate("window.earshotApp.recorder.wire")
    assert wire == ("opus" if supported else "s16")
    sid = page.evaluate("window.earshotApp.recorder.stream")
    # someone listens on the dashboard while the take goes on
    dash = page_factory(shared_server.http + "/#dashboard")
    dash.click(f"tr[data-stream='{sid}'] button.listen")
    dash.wait_for_function("window.earshotApp.listener && "
                           "window.earshotApp.listener.stats.played > 8000", timeout=15000)
    played = dash.evaluate("window.earshotApp.listener.stats")
    assert played["received"] >= played["played"] > 8000
    # the jitter buffer of earshot listen: playing, with a bounded delay
    assert played["started"] and 0.0 < played["delay"] <= 1.0, played
    time.sleep(1.0)
    stopped = stop_recording(page)
    # every sample reached the listener, the last partial frame included
    dash.wait_for_function(f"window.earshotApp.listener.end >= {stopped['offset']}",
                           timeout=10000)
    end = dash.evaluate("window.earshotApp.listener.end")
    if wire == "opus":  # the relay decodes whole packets: the last one's padding comes too
        assert stopped["offset"] <= end < stopped["offset"] + 960
    else:
        assert end == stopped["offset"]
    y, rate, rec = archive(shared_server, sid)
    assert rec["format"] == wire
    assert len(y) == stopped["offset"]
    captured = page.evaluate("window.earshotApp.recorder.seconds")
    assert abs(len(y) / rate - captured) < 0.05  # the take is as long as what was captured
    if wire == "opus":
        assert rate == 48000  # Opus runs at 48 kHz whatever the capture rate
    corr = capture_correlation(y, source_at(rate), rate)
    assert corr >= 0.9
