"""A page written only against the Web Speech API, on another site, dictating through earshot.

The page (webspeech_page.html) is the usual webkitSpeechRecognition dictation code: Start
and Stop buttons, ``continuous``, ``interimResults``, ``onresult`` walking ``event.results``
from ``event.resultIndex`` and sorting them by ``isFinal``. Its only change is the import of
``SpeechRecognition`` from ``http://127.0.0.1:PORT/web/earshot.js``. It is served by its own
small HTTP server on another port (another origin), so the module, its imports and its
worklets load through CORS, and the stand-in must find the earshot server from the URL it was
loaded from. Chromium's fake microphone plays a Festival reading with known text.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from browserlib import launch, require_browser, shot

from helpers import FIXTURES, ServerProcess, free_port

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
READING = FIXTURES / "reading_16k.wav"  # Festival HTS voice, text in reading_16k.json


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def wer(ref: list[str], hyp: list[str]) -> float:
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)] / max(1, len(ref))


@pytest.fixture(scope="module")
def truth() -> list[str]:
    if not READING.exists():
        pytest.skip(f"no speech fixture {READING}")
    meta = json.loads(READING.with_suffix(".json").read_text())
    return [s["text"] for s in meta["speech"]]


@pytest.fixture(scope="module")
def speech_browser(tmp_path_factory: pytest.TempPathFactory, truth: list[str]) -> Iterator[Any]:
    import soxr

    x, rate = sf.read(READING, dtype="float32")
    mic = tmp_path_factory.mktemp("mic") / "reading_48k.wav"
    sf.write(mic, soxr.resample(x, rate, 48000).astype(np.float32), 48000, subtype="PCM_16")
    sync_playwright = require_browser()
    with sync_playwright() as p:
        b = launch(p, mic)
        yield b
        b.close()


@pytest.fixture(scope="module")
def asr_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # the default install: speech-to-text out of the box (pocketsphinx), no model options
    srv = ServerProcess(tmp_path_factory.mktemp("asr") / "data").start(timeout=60)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def other_site(tmp_path_factory: pytest.TempPathFactory, asr_server: ServerProcess
               ) -> Iterator[str]:
    """The dictation page on its own origin: http://127.0.0.1:OTHER_PORT/."""
    root = tmp_path_factory.mktemp("site")
    page = (HERE / "webspeech_page.html").read_text()
    (root / "index.html").write_text(page.replace("__EARSHOT_JS__",
                                                  f"{asr_server.http}/web/earshot.js"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    th = threading.Thread(target=httpd.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    th.join(5)


def open_site(browser: Any, url: str) -> Any:
    ctx = browser.new_context()
    page = ctx.new_page()
    page.on("console", lambda m: print(f"[console.{m.type}] {m.text}"))
    page.on("pageerror", lambda e: print(f"[pageerror] {e}"))
    page.goto(url)
    page.wait_for_function("window.pageReady === true", timeout=20000)
    return page


def kinds(log: list[dict]) -> list[str]:
    return [e["type"] for e in log]


def test_dictation_page_on_another_site_continuous(speech_browser: Any, other_site: str,
                                                   asr_server: ServerProcess,
                                                   truth: list[str]) -> None:
    page = open_site(speech_browser, other_site)
    assert page.evaluate("location.origin") != asr_server.http  # another origin indeed
    page.check("#continuous")
    page.click("#start")
    page.wait_for_function("document.querySelector('#final-text').textContent.length > 0 && "
                           "document.querySelector('#interim-text').textContent.length > 0",
                           timeout=60000)
    shot(page, "webspeech-other-origin-interim")  # an interim, in grey, as it is spoken
    page.wait_for_function("window.log.filter(e => e.type === 'result' && e.final).length >= 3",
                           timeout=90000)
    page.click("#stop")
    page.wait_for_function("window.log.some(e => e.type === 'end')", timeout=60000)
    log = page.evaluate("window.log")
    shot(page, "webspeech-other-origin-continuous")
    k = kinds(log)
    assert "error" not in k, log
    assert k[:2] == ["start", "audiostart"], k
    assert k.index("soundstart") < k.index("speechstart") < k.index("result"), k
    assert k[-1] == "end" and k.count("end") == 1 and "audioend" in k, k
    assert k.index("speechend") < k.index("soundend") < k.index("audioend"), k
    results = [e for e in log if e["type"] == "result"]
    finals = [e for e in results if e["final"]]
    interims = [e for e in results if not e["final"]]
    assert interims, "interim results"
    # results = every final so far, then the current interim; resultIndex = lowest changed
    for n, f in enumerate(finals):
        assert f["index"] == f["resultIndex"] == n, (n, f)
    for e in interims:
        earlier = sum(1 for f in finals if f["t"] < e["t"])
        assert e["index"] >= earlier and e["length"] == e["index"] + 1, e
    # interims precede their final (a busy scheduler may skip a short utterance's interims,
    # as finals come first: most, not all)
    preceded = [any(i["index"] == n and i["t"] < f["t"] for i in interims)
                for n, f in enumerate(finals)]
    assert preceded[0] and sum(preceded) * 2 >= len(finals), (preceded, log)
    # the utterances heard whole (before Stop) against the first sentences of the reading
    whole = words(" ".join(f["text"] for f in finals[:3]))
    score = wer(words(" ".join(truth[:3])), whole)
    print(f"continuous: {len(finals)} finals; the first three: {' '.join(whole)!r}, "
          f"WER {score:.3f}")
    assert score <= 0.3, (score, whole)
    hyp = words(" ".join(f["text"] for f in finals))
    shown = page.inner_text("#final-text")
    assert words(shown) == hyp  # the page shows the final text


def test_dictation_page_single_utterance_ends_after_the_first_final(
        speech_browser: Any, other_site: str, truth: list[str]) -> None:
    page = open_site(speech_browser, other_site)
    page.click("#start")  # continuous=false (the default)
    page.wait_for_function("window.log.some(e => e.type === 'end')", timeout=60000)
    log = page.evaluate("window.log")
    shot(page, "webspeech-other-origin-single")
    k = kinds(log)
    assert "error" not in k, log
    finals = [e for e in log if e["type"] == "result" and e["final"]]
    assert len(finals) == 1 and finals[0]["index"] == 0, log
    last_result = max(i for i, e in enumerate(log) if e["type"] == "result")
    assert log[last_result]["final"]  # nothing after the final
    assert k[-1] == "end" and k.count("end") == 1 and k.index("audioend") > last_result, k
    assert any(e["type"] == "result" and not e["final"] for e in log)  # interims first
    score = wer(words(truth[0]), words(finals[0]["text"]))
    print(f"single utterance: {finals[0]['text']!r}, WER {score:.3f}")
    assert score <= 0.5, finals[0]  # one short sentence: a word or two off at most
    assert words(page.inner_text("#final-text")) == words(finals[0]["text"])


RUN = """async ([url, options, action]) => {
    const { SpeechRecognition } = await import(url);
    const r = new SpeechRecognition(options.ctor || {});
    Object.assign(r, options.props || {});
    const log = [];
    const done = new Promise((resolve) => {
      for (const t of ["start", "audiostart", "soundstart", "speechstart", "result", "nomatch",
                       "speechend", "soundend", "audioend", "error", "end"])
        r.addEventListener(t, (e) => {
          log.push(t === "error" ? { type: t, error: e.error, message: e.message } : { type: t });
          if (t === "audiostart" && action === "abort") r.abort();
          if (t === "end") resolve();
        });
    });
    r.start();
    let again = null;
    try { r.start(); } catch (e) { again = e.name; }
    await done;
    return { log, again };
}"""


@pytest.mark.parametrize(("case", "expected"), [
    ("unreachable", "network"),
    ("no-such-microphone", "audio-capture"),
    ("wrong-token", "service-not-allowed"),
    ("abort", "aborted"),
    ("silence", "no-speech"),
    ("french", "language-not-supported"),  # pocketsphinx is English only
])
def test_errors_have_the_standard_codes(case: str, expected: str, speech_browser: Any,
                                        other_site: str, asr_server: ServerProcess,
                                        server_factory: Any) -> None:
    url = f"{asr_server.http}/web/earshot.js"
    options: dict[str, Any] = {}
    if case == "unreachable":
        options["ctor"] = {"server": f"ws://127.0.0.1:{free_port()}"}
    elif case == "no-such-microphone":
        options["ctor"] = {"deviceId": "no-such-device"}
    elif case == "wrong-token":
        url = f"{server_factory('--token', 'right').http}/web/earshot.js"
        options["ctor"] = {"token": "wrong"}
    elif case == "french":
        options["props"] = {"lang": "fr-FR"}
    elif case == "silence":  # the reading starts with 0.8 s of silence
        options["ctor"] = {"noSpeechTimeout": 300}
    page = open_site(speech_browser, other_site)
    out = page.evaluate(RUN, [url, options, "abort" if case == "abort" else None])
    log = out["log"]
    assert out["again"] == "InvalidStateError"  # start() twice
    errors = [e for e in log if e["type"] == "error"]
    assert [e["error"] for e in errors] == [expected], log
    assert errors[0]["message"], log
    k = kinds(log)
    assert k[-1] == "end" and k.count("end") == 1 and "result" not in k, k
    if "audiostart" in k:
        assert k.index("audiostart") < k.index("audioend") < k.index("end"), k


def test_microphone_permission_denied_is_not_allowed(speech_browser: Any,
                                                     asr_server: ServerProcess,
                                                     other_site: str) -> None:
    from browserlib import CHROMIUM

    # no --use-fake-ui-for-media-stream: headless Chromium refuses the permission prompt
    b = speech_browser.browser_type.launch(executable_path=CHROMIUM, headless=True, args=[
        "--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream"])
    try:
        page = open_site(b, other_site)
        out = page.evaluate(RUN, [f"{asr_server.http}/web/earshot.js", {}, None])
    finally:
        b.close()
    assert [e.get("error") for e in out["log"] if e["type"] == "error"] == ["not-allowed"], out
    assert "permission" in out["log"][0]["message"].lower()
    assert kinds(out["log"]) == ["error", "end"]


def test_an_utterance_without_words_is_nomatch(speech_browser: Any, other_site: str,
                                               asr_server: ServerProcess,
                                               server_factory: Any) -> None:
    deaf = server_factory("--asr-engine", "engines:Deaf", "--asr-model", "none",
                          env={"PYTHONPATH": f"{HERE}{os.pathsep}"
                                             f"{os.environ.get('PYTHONPATH', '')}"})
    page = open_site(speech_browser, other_site)
    out = page.evaluate(RUN, [f"{deaf.http}/web/earshot.js",
                              {"props": {"interimResults": True}}, None])
    k = kinds(out["log"])
    assert "error" not in k and "result" not in k, out["log"]
    assert k.count("nomatch") == 1 and k.index("speechstart") < k.index("nomatch"), k
    assert k[-2:] == ["audioend", "end"], k  # continuous=false: over after that utterance
