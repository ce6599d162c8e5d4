"""Calls with the page: mouth-to-ear latency between the page (headless Chromium) and a Python
participant, through one gateway on loopback, both directions at once.

The method of bench_calls.py, with the page on one end. Python → page: the Python
participant's microphone callback (``Call``'s ``mic``) sends a 10 ms 1 kHz burst every 0.5 s
into silence; the page's speaker callback (player-worklet.js's render callback, which plays
the mix out of its jitter buffer) finds each burst's onset. Page → Python: Chromium's fake
microphone plays a file of the same bursts; the page's microphone callback
(capture-worklet.js) finds each onset, and the Python participant's speaker callback
(``on_audio``) finds it again. The page's side is read with call.js's latency probe
(``new Call({probe: true})``: "probe" events, see call.js and probe.js).

Mouth time of an onset: the callback that got it, minus how long before the callback its
sample was captured; ear time: the callback that is handed it, plus how long after it the
sample plays. The sound devices' own buffers are not included (Chromium's headless output
and fake microphone have no device; its audio thread renders in chunks of a few 128-frame
quanta, and that much jitter is in the figures). Clocks: Python's ``time.time()`` and, in the
worklets, ``Date.now()``: both the system clock of this machine; ``Date.now()`` counts whole
milliseconds, so each page time is up to 1 ms early; the result's ``clock_check`` compares the
two clocks through ``page.evaluate`` round trips. The page asks for no echo cancellation, noise
suppression or gain control (call mode asks for them; a tone burst is not what they are for).

    python benchmarks/bench_calls_page.py                  # → benchmarks/results/calls-page.json
    python benchmarks/bench_calls_page.py --seconds 20

Needs Chromium (``/usr/bin/chromium``, Debian's) and Python playwright (the test extra),
as the browser tests do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e" / "browser"))

from browserlib import CHROMIUM, launch  # noqa: E402

from earshot.call import Call  # noqa: E402
from earshot.errors import ClientError  # noqa: E402
from helpers import ServerProcess  # noqa: E402

RATE = 48000
PERIOD = RATE // 2  # a burst every 0.5 s
BURST = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(480) / RATE)).astype(np.float32)
LEAD = 3.0  # seconds of silence at the start of the page's microphone file (while it joins)
ROOM = "bench-page"


def microphone_file(path: Path, seconds: float) -> None:
    """The page's fake microphone: ``LEAD`` s of silence, bursts for ``seconds``, 2 s more."""
    x = np.zeros(int((LEAD + seconds + 2) * RATE), np.float32)
    for start in range(int(LEAD * RATE), int((LEAD + seconds) * RATE), PERIOD):
        x[start:start + len(BURST)] = BURST
    sf.write(path, x, RATE, subtype="PCM_16")


def match(sent: list[float], heard: list[float], cut: float) -> dict[str, Any]:
    """Each onset heard against the burst sent just before it (seconds → ms figures); only
    bursts sent at least 0.5 s before ``cut`` (when the page's probes were read) count."""
    lat = []
    counted = [s for s in sent if s < cut - 0.5]
    for t in heard:
        before = [s for s in sent if s <= t]
        if before and before[-1] < cut - 0.5 and t - before[-1] < 0.45:
            lat.append((t - before[-1]) * 1000)
    a = np.array(lat)

    def r(v: float) -> float:
        return round(float(v), 1)

    return {"bursts_sent": len(counted), "bursts_heard": len(lat),
            "median_ms": r(np.median(a)) if len(a) else None,
            "p95_ms": r(np.percentile(a, 95)) if len(a) else None,
            "min_ms": r(a.min()) if len(a) else None,
            "max_ms": r(a.max()) if len(a) else None}


class PythonSide:
    """The Python participant, in a thread of its own (own event loop): bursts from its
    microphone callback once ``go`` is set, onsets found in its speaker callback."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent: list[float] = []
        self.heard: list[float] = []
        self.go = threading.Event()
        self.joined = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.jb: dict[str, Any] = {}
        self.pos = 0
        self.start: int | None = None
        self.quiet = True
        self.thread = threading.Thread(target=self._run, daemon=True)

    def mic(self, n: int) -> np.ndarray:
        now = time.time()
        x = np.zeros(n, np.float32)
        if self.go.is_set() and self.start is None:
            self.start = self.pos + RATE  # one second after the page is in
        for i in range(n):
            p = self.pos + i
            if self.start is not None and p >= self.start and (p - self.start) % PERIOD == 0:
                k = min(len(BURST), n - i)
                x[i:i + k] = BURST[:k]
                self.sent.append(now - (n - i) / RATE)
        self.pos += n
        return x

    def speaker(self, frame: np.ndarray) -> None:
        now = time.time()
        loud = np.flatnonzero(np.abs(frame) > 0.1)
        if len(loud) and self.quiet:
            self.heard.append(now + loud[0] / RATE)
            self.quiet = False
        elif not len(loud) and np.max(np.abs(frame)) < 0.01:
            self.quiet = True

    def _run(self) -> None:
        async def run() -> None:
            async with Call(self.url, ROOM, "py", rate=RATE, mic=self.mic,
                            on_audio=self.speaker) as call:
                self.joined.set()
                while not self.done.is_set():
                    await asyncio.sleep(0.05)
                s = call.jb.stats
                self.jb = {"target_delay_ms": round(s.target_delay * 1000, 1),
                           "concealed_ms": s.concealed_ms,
                           "accelerated_frames": s.accelerated_frames}

        try:
            asyncio.run(run())
        except BaseException as exc:  # reported by the main thread
            self.error = exc
            self.joined.set()


JOIN_JS = """async ({ room }) => {
  const { Call } = await import("/web/call.js");
  const call = new Call({ room, name: "web", probe: true, keepHeard: false,
                          echoCancellation: false, noiseSuppression: false,
                          autoGainControl: false });
  window.benchCall = call;
  window.benchProbes = [];
  call.addEventListener("probe", (e) => window.benchProbes.push(e.detail));
  await call.join();
  return { mix: call.mix, baseLatencyMs: call.context.baseLatency * 1000,
           outputLatencyMs: call.context.outputLatency * 1000 };
}"""


def clock_check(page: Any, n: int = 20) -> dict[str, float]:
    """``Date.now()`` in the page against ``time.time()`` around each call: the offset
    (page - Python, at the midpoint) and the round trip bounding it."""
    offsets, trips = [], []
    for _ in range(n):
        t0 = time.time()
        d = page.evaluate("Date.now()") / 1000
        t1 = time.time()
        offsets.append((d - (t0 + t1) / 2) * 1000)
        trips.append((t1 - t0) * 1000)
    best = int(np.argmin(trips))
    return {"offset_ms_at_best_round_trip": round(offsets[best], 2),
            "best_round_trip_ms": round(trips[best], 2),
            "offset_ms_median": round(float(np.median(offsets)), 2)}


def chromium_version() -> str:
    try:
        return subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except OSError:
        return "unknown"


def measure(url: str, http: str, seconds: float, mic_file: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    py = PythonSide(url)
    py.thread.start()
    if not py.joined.wait(30) or py.error is not None:
        raise ClientError(f"the Python participant did not join: {py.error!r}")
    with sync_playwright() as p:
        browser = launch(p, mic_file)
        try:
            page = browser.new_context().new_page()
            page.on("pageerror", lambda e: print(f"[pageerror] {e}", file=sys.stderr))
            page.goto(http + "/")
            page.wait_for_function("window.earshotApp && window.earshotApp.ready")
            audio = page.evaluate(JOIN_JS, {"room": ROOM})
            py.go.set()
            time.sleep(seconds + 1.5)
            cut = time.time()
            probes = page.evaluate("window.benchProbes")
            stats = page.evaluate("window.benchCall.playerStats")
            clocks = clock_check(page)
            page.evaluate("window.benchCall.leave()")
        finally:
            browser.close()
    py.done.set()
    py.thread.join(30)
    if py.error is not None:
        raise ClientError(f"the Python participant failed: {py.error!r}")
    page_mic = [d["time"] / 1000 for d in probes if d["side"] == "mic"]
    page_ear = [d["time"] / 1000 for d in probes if d["side"] == "speaker"]
    return {
        "python_to_page": {**match(py.sent, page_ear, cut),
                           "page_jitter_buffer": stats and {
                               "target_delay_ms": round(stats["targetDelay"] * 1000, 1),
                               "delay_ms": round(stats["delay"] * 1000, 1),
                               "concealed_ms": stats["concealedMs"],
                               "accelerated_frames": stats["acceleratedFrames"],
                               "late": stats["late"]}},
        "page_to_python": {**match(page_mic, py.heard, cut), "python_jitter_buffer": py.jb},
        "page_audio": audio, "clock_check": clocks,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=25.0, help="seconds of bursts")
    ap.add_argument("--out", type=Path,
                    default=ROOT / "benchmarks" / "results" / "calls-page.json")
    args = ap.parse_args()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        mic_file = Path(tmp) / "bursts.wav"
        microphone_file(mic_file, args.seconds)
        srv = ServerProcess(Path(tmp) / "data").start()
        try:
            lat = measure(srv.url, srv.http, args.seconds, mic_file)
        finally:
            srv.stop()
    result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              "python": sys.version.split()[0], "browser": chromium_version(),
              "cpus": os.cpu_count(), "load_average_at_start": load0,
              "load_average_at_end": os.getloadavg(),
              "opus_frame_ms": 20, "mouth_to_ear_one_gateway": lat}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
