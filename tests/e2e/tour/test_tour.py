"""The README's five-minute tour, run as written on the plain install (no test extra),
against a real server started from the repository root with the README's own processor."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from tour_helpers import TOKEN, Lines, PlainInstall

from helpers import FIXTURES, ServerProcess, free_port, require_tool

pytestmark = pytest.mark.slow
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SENT = re.compile(r"stream (\w+): sending (.+) \((\d+\.\d\d) s\)\n")


def noise(path: Path, seconds: float, rate: int = 16000) -> np.ndarray:
    """A file no 20 ms grid fits (its last frame is partial), every sample distinct-ish."""
    x = (np.random.default_rng(3).uniform(-0.5, 0.5, round(rate * seconds)) * 32767)
    sf.write(path, x.astype(np.int16), rate, subtype="PCM_16")
    return x.astype(np.int16)


def sent_id(line: str) -> str:
    m = SENT.fullmatch(line)
    assert m, f"not the line send prints at ready: {line!r}"
    return m.group(1)


def test_the_plain_install_is_plain(plain: PlainInstall) -> None:
    """What the other tests mean: the test extra's packages are not there."""
    for module in ("httpx", "pytest", "faster_whisper", "playwright"):
        probe = subprocess.run([plain.python, "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"{module} is importable on the plain install"
    probe = subprocess.run([plain.python, "-c", "import av"], capture_output=True)
    assert probe.returncode == 0, "PyAV (Opus, Ogg) is part of the server install"
    out = plain.run("--version")
    assert out.returncode == 0 and out.stdout.startswith("earshot ")


def test_send_streams_and_the_download(plain: PlainInstall, tour_server: ServerProcess,
                                       tour_env: dict[str, str], tmp_path: Path) -> None:
    x = noise(tmp_path / "take.wav", 1.01)
    out = plain.run("send", str(tmp_path / "take.wav"), env=tour_env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines(keepends=True)
    sid = sent_id(lines[0])
    assert lines[1:] == [f"audio: {tour_server.http}/api/streams/{sid}/audio\n",
                         f"stream {sid}: 16160 frames (1.01 s) archived\n"]  # no blank line
    assert out.stderr == ""  # no progress bar off a terminal

    listing = plain.run("streams", env=tour_env)  # no httpx on this install
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if sid in line)
    # one row, not wrapped at 80 columns: id, name, state, rate and created date together
    assert re.search(rf"{sid}\s*│ take\.wav\s*│ finished\s*│ 16000\s*│ 1\s*│ 1\.01 s\s*│ "
                     r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row), row
    page = json.loads(plain.run("streams", "--json", "--limit", "1", env=tour_env).stdout)
    assert page["streams"][0]["id"] == sid and page["streams"][0]["frames"] == len(x)

    no_token = {k: v for k, v in tour_env.items() if k != "EARSHOT_TOKEN"}
    refused = plain.run("streams", env=no_token)
    assert refused.returncode == 4 and "HTTP 401" in refused.stderr, refused.stderr
    gone = plain.run("streams", "--url", f"ws://127.0.0.1:{free_port()}/ws", env=tour_env)
    assert gone.returncode == 3 and "cannot reach" in gone.stderr
    assert "Traceback" not in refused.stderr + gone.stderr

    # curl -O -J names the download after the take, not take.wav-ID.wav
    (tmp_path / "dl").mkdir()
    subprocess.run([require_tool("curl"), "-sfOJ", "-H", f"Authorization: Bearer {TOKEN}",
                    lines[1].split()[1]], cwd=tmp_path / "dl", check=True, timeout=30)
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [f"take-{sid}.wav"]
    assert np.array_equal(sf.read(tmp_path / "dl" / f"take-{sid}.wav", dtype="int16")[0], x)


def test_send_errors_say_what_is_wrong(plain: PlainInstall, tour_env: dict[str, str],
                                       tmp_path: Path) -> None:
    out = plain.run("send", "/no/such.wav", env=tour_env)
    assert out.returncode == 1
    assert "cannot read /no/such.wav: the file does not exist" in out.stderr
    assert "System error" not in out.stderr and "Traceback" not in out.stderr
    noise(tmp_path / "o.wav", 0.1)
    opus = plain.run("send", str(tmp_path / "o.wav"), "--codec", "opus", env=tour_env)
    assert opus.returncode == 0 and "archived" in opus.stdout, opus.stderr  # PyAV is in


def test_listen_records_every_frame_of_a_live_send(plain: PlainInstall,
                                                   tour_server: ServerProcess,
                                                   tour_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    # 400.5 frames of 20 ms; long enough for listen to start on a loaded machine
    x = noise(tmp_path / "live.wav", 8.01)
    with Lines(plain.popen("send", str(tmp_path / "live.wav"), "--realtime",
                           env=tour_env)) as send:
        sid = sent_id(send.next(30))  # printed at ready, while the stream is live
        state = httpx.get(f"{tour_server.http}/api/streams/{sid}", headers=AUTH).json()
        assert state["state"] == "live" and state["frames"] < len(x)
        with Lines(plain.popen("tail", sid, env=tour_env)) as tail:  # until it finishes
            heard = plain.run("listen", sid, "--out", str(tmp_path / "heard.wav"),
                              env=tour_env)
            assert heard.returncode == 0, heard.stderr
            assert send.until(lambda line: "archived" in line) == \
                f"stream {sid}: {len(x)} frames (8.01 s) archived\n"
            ended = tail.until(lambda line: "stream_ended" in line)
            assert ended.startswith(f"{sid}     8.010s stream_ended   ")
            assert tail.proc.wait(30) == 0 and tail.next() == ""
    y = sf.read(tmp_path / "heard.wav", dtype="int16")[0]
    first = len(x) - len(y)
    assert 0 <= first < len(x) - 8000, "heard less than half a second"
    # every frame from the first one heard to the end, the last partial 10 ms included
    assert np.array_equal(y, x[first:])
    assert re.search(rf"recorded {len(y) / 16000:.2f} s of {sid} \(from {first / 16000:.2f} s "
                     r"into it\) to .*heard\.wav: concealed 0 ms", heard.stderr), heard.stderr


def test_listen_to_a_stream_that_is_not_live(plain: PlainInstall,
                                             tour_env: dict[str, str]) -> None:
    out = plain.run("listen", "nosuchstream", "--out", "/dev/null", env=tour_env)
    assert out.returncode == 4 and "no stream 'nosuchstream'" in out.stderr, out.stderr


def test_tail_of_unknown_and_finished_streams(plain: PlainInstall, tour_server: ServerProcess,
                                              tour_env: dict[str, str],
                                              tmp_path: Path) -> None:
    unknown = plain.run("tail", "nosuchstream", env=tour_env, timeout=30)
    assert unknown.returncode == 4, unknown.stderr
    assert "no stream 'nosuchstream'" in unknown.stderr and "earshot streams" in unknown.stderr

    truth = json.loads((FIXTURES / "speech_16k.json").read_text())["speech"]
    out = plain.run("send", str(FIXTURES / "speech_16k.wav"), "--processors", "vad",
                    env=tour_env)
    assert out.returncode == 0, out.stderr
    sid = sent_id(out.stdout.splitlines(keepends=True)[0])
    finished = plain.run("tail", sid, env=tour_env, timeout=30)
    assert finished.returncode == 0, finished.stderr
    assert f"stream {sid} is finished (9.50 s); its stored events:" in finished.stderr
    events = [json.loads(line.split(None, 3)[3]) for line in finished.stdout.splitlines()]
    assert [line.split()[:3] for line in finished.stdout.splitlines()] == [
        [sid, f"{e['end']:.3f}s", "segment"] for e in events]
    assert len(events) == len(truth)
    for event, phrase in zip(events, truth, strict=True):  # the VAD's segments, stored
        assert abs(event["start"] - phrase["start_s"]) < 0.25
        assert abs(event["end"] - phrase["end_s"]) < 0.25

    quiet = noise(tmp_path / "q.wav", 0.3)
    out = plain.run("send", str(tmp_path / "q.wav"), env=tour_env)
    sid = sent_id(out.stdout.splitlines(keepends=True)[0])
    nothing = plain.run("tail", sid, env=tour_env, timeout=30)
    assert nothing.returncode == 0 and nothing.stdout == ""
    assert f"stream {sid} is finished (0.30 s); nothing of its events is stored" in \
        nothing.stderr and len(quiet) == 4800


def test_melprint_loads_from_the_repository_root(plain: PlainInstall,
                                                 tour_server: ServerProcess,
                                                 tour_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    """The README's processor, as written: in the server (tour_server was started from the
    repository root with --processor examples.melprint:MelPrint) and in a worker."""
    assert "melprint" in httpx.get(f"{tour_server.http}/healthz").json()["processors"]
    noise(tmp_path / "m.wav", 1.0)
    with Lines(plain.popen("worker", "examples.melprint:MelPrint", "--name", "tour-worker",
                           env=tour_env, merge=True)) as worker, \
            Lines(plain.popen("tail", "*", env=tour_env, merge=True)) as tail:
        worker.until(lambda line: "attached to *" in line)
        tail.until(lambda line: line.startswith("watching *"))
        out = plain.run("send", str(tmp_path / "m.wav"), env=tour_env)
        sid = sent_id(out.stdout.splitlines(keepends=True)[0])
        local = tail.until(lambda line: line.startswith(sid) and " melprint " in line
                           and '"worker"' not in line)
        remote = tail.until(lambda line: line.startswith(sid) and " melprint " in line
                            and '"worker": "tour-worker"' in line)
    for line in (local, remote):  # a 24-band picture in the example's shades
        picture = json.loads(line.split(None, 3)[3])["picture"]
        assert re.fullmatch(r"[ .:\-=+*#%@]{24}", picture), line
    assert re.search(r"^\s*\d+\.\d\ds \|.{24}\|$", tour_server.log.read_text(), re.M)


@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "--port", "80000"], "argument --port: must be an integer from 1 to 65535, "
                                   "not 80000"),
    (["serve", "--port", "0"], "argument --port: must be an integer from 1 to 65535"),
    (["serve", "--ack-interval", "0"], "argument --ack-interval: must be a number from 0.005 "
                                       "to 5 seconds"),
    (["serve", "--max-lag", "-1"], "argument --max-lag: must be a number above 0 seconds"),
    (["serve", "--asr-workers", "0"], "argument --asr-workers: must be an integer of at least 1"),
    (["send", "x.wav", "--retries", "-1"], "argument --retries: must be an integer of at "
                                           "least 0"),
    (["send", "x.wav", "--bitrate", "100"], "argument --bitrate: must be an integer from 6000 "
                                            "to 510000 bit/s"),
    (["stream", "--channels", "9"], "argument --channels: must be an integer from 1 to 8"),
    (["streams", "--limit", "0"], "argument --limit: must be an integer from 1 to 500"),
    (["listen", "ID", "--seconds", "nan"], "argument --seconds: must be a number above 0"),
    (["tail", "*", "--url", "127.0.0.1:8000"], "is not a server URL"),
    (["worker", "level", "--retries", "x"], "argument --retries: must be an integer of at "
                                            "least 0, not 'x'"),
])
def test_option_ranges(plain: PlainInstall, argv: list[str], message: str) -> None:
    out = plain.run(*argv, timeout=30)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_serve_refuses_bad_settings_before_announcing(plain: PlainInstall,
                                                      tour_server: ServerProcess,
                                                      tmp_path: Path) -> None:
    env_port = plain.run("serve", "--data-dir", str(tmp_path / "d"), timeout=30,
                         env=plain.env(EARSHOT_PORT="80000"))
    assert env_port.returncode == 2
    assert "port must be an integer from 1 to 65535, not 80000" in env_port.stderr
    busy = plain.run("serve", "--port", str(tour_server.port), "--data-dir",
                     str(tmp_path / "d"), timeout=60)
    assert busy.returncode == 2, busy.stderr
    assert f"cannot listen on 127.0.0.1:{tour_server.port}: Address already in use" \
        in busy.stderr
    assert "earshot 0.1.0 on" not in busy.stderr and "startup complete" not in busy.stderr
    # and a real start's banner is not hard-wrapped in a log: the data path is on its line
    data = str(tour_server.data_dir.resolve())
    assert any(line.endswith(f"data in {data}") for line in
               tour_server.log.read_text().splitlines()), tour_server.log.read_text()[:600]


def test_docs_need_no_other_host(tour_server: ServerProcess) -> None:
    base = tour_server.http
    for page, assets in [("/docs", ["swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"]),
                         ("/redoc", ["redoc.standalone.js", "favicon.png"])]:
        r = httpx.get(base + page)
        assert "default-src 'self'" in r.headers["content-security-policy"]
        html = r.text
        assert not re.search(r"(src|href)=\"https?://", html), f"{page} loads from elsewhere"
        for name in assets:
            assert f'"/docs-assets/{name}"' in html
            r = httpx.get(f"{base}/docs-assets/{name}")
            assert r.status_code == 200 and len(r.content) > 4000, name
    _docs_in_chromium(base)


def _docs_in_chromium(base: str) -> None:
    """The pages render in a browser, and nothing they ask for leaves this server: a
    request to another host either is refused by the page's Content-Security-Policy in the
    browser itself (ReDoc's bundle asks for Redocly's logo) or would reach the gate below,
    which records and aborts it."""
    import os

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("playwright is required under CI=true (./run test installs it)")
        pytest.skip("playwright not installed")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("chromium not installed")
    went_out: list[str] = []
    tried: dict[str, str | None] = {}  # another host's URL -> why it failed (None: it did not)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update"])
        try:
            ctx = browser.new_context()

            def gate(route: Any) -> None:
                if route.request.url.startswith(base + "/"):
                    route.continue_()
                else:
                    went_out.append(route.request.url)
                    route.abort()

            def local(url: str) -> bool:
                return url.startswith((base + "/", f"blob:{base}/", "data:"))

            ctx.route("**/*", gate)
            page = ctx.new_page()
            page.on("request", lambda r: None if local(r.url) else tried.setdefault(r.url))
            page.on("requestfailed", lambda r: None if local(r.url) else tried.__setitem__(
                r.url, r.failure))
            page.goto(base + "/docs")
            page.wait_for_selector(".swagger-ui .info .title:has-text('earshot')", timeout=30000)
            page.wait_for_selector("[data-path='/api/streams/{stream_id}/audio']",
                                   timeout=30000)
            page.goto(base + "/redoc")
            page.wait_for_selector("h1:has-text('earshot')", timeout=30000)
            page.wait_for_selector("h2:has-text(\"One stream's metadata\")", timeout=30000)
            page.wait_for_load_state("networkidle")
        finally:
            browser.close()
    assert went_out == []
    assert all(why == "csp" for why in tried.values()), tried
