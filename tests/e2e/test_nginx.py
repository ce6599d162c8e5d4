"""earshot behind a real nginx running deploy/nginx.conf (issue 12, must-show 4).

TLS ends at nginx; earshot listens on loopback with ``--forwarded-allow-ips 127.0.0.1``.
The page records through it in Chromium, a Python client resumes a real-time stream across
``nginx -s reload`` to an exact archive, and earshot logs the client's real address (the
client connects from 127.0.0.2; nginx from 127.0.0.1), honouring X-Forwarded-* only from
the trusted proxy.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from hardening_helpers import Nginx, client_context, make_ca, make_server_cert
from websockets.asyncio.client import connect

from earshot.client import Publisher
from helpers import FIXTURES, ROOT, ServerProcess, capture_correlation

sys.path.insert(0, str(Path(__file__).resolve().parent / "browser"))
from browserlib import chromium
from test_page import source_at


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium whose microphone plays tests/fixtures/speech_48k.wav."""
    yield from chromium(FIXTURES / "speech_48k.wav")

pytestmark = pytest.mark.slow
RATE = 16000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("nginx")
    ca, ca_cert, ca_key = make_ca(tmp, "proxy-ca")
    cert, key = make_server_cert(tmp, ca_cert, ca_key)
    srv = ServerProcess(tmp / "data", "--forwarded-allow-ips", "127.0.0.1",
                        "--log-level", "info", "--ack-interval", "0.05").start()
    (tmp / "ngx").mkdir()
    try:
        nginx = Nginx(tmp / "ngx", srv.port, cert, key).start()
    except BaseException:
        srv.stop()
        raise
    yield {"server": srv, "nginx": nginx, "ca": ca,
           "https": f"https://127.0.0.1:{nginx.https_port}",
           "wss": f"wss://127.0.0.1:{nginx.https_port}"}
    nginx.stop()
    srv.stop()


def test_page_records_through_nginx(stack: dict[str, Any], browser: Any) -> None:
    ctx = browser.new_context(ignore_https_errors=True)  # (the test CA is not Chromium's)
    try:
        page = ctx.new_page()
        page.on("console", lambda m: print(f"[console.{m.type}] {m.text}"))
        page.goto(stack["https"] + "/#record")
        page.wait_for_function("window.earshotApp && window.earshotApp.ready")
        page.click("#record")
        page.wait_for_function("window.earshotApp.recorder?.state === 'recording'")
        page.wait_for_function("document.querySelector('#speech').textContent === 'speech'",
                               timeout=15000)
        time.sleep(2.0)
        page.click("#record")
        page.wait_for_function("window.earshotApp.lastStopped !== null", timeout=30000)
        stopped = page.evaluate("({...window.earshotApp.lastStopped, "
                                "frames: window.earshotApp.recorder.frames, "
                                "rate: window.earshotApp.recorder.rate})")
    finally:
        ctx.close()
    srv: ServerProcess = stack["server"]
    rec = httpx.get(f"{srv.http}/api/streams/{stopped['stream']}").json()
    y, rate = sf.read(srv.data_dir / rec["path"], dtype="float32")
    assert rate == stopped["rate"] and len(y) == stopped["frames"] == stopped["offset"] > rate
    x = source_at(rate)
    corr = capture_correlation(y, x, rate)
    assert corr >= 0.99, corr
    # the page's WebSocket came through nginx as wss:// and was upgraded
    assert re.search(r'"GET /ws HTTP/1.1" 101', stack["nginx"].access_log)


def in_thread(coro: Any) -> Any:
    """Run a coroutine on its own loop in a thread: the module's sync Playwright (the page
    test) holds this thread's event loop."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_client_resumes_across_nginx_reload(stack: dict[str, Any]) -> None:
    in_thread(resume_across_reload(stack))


async def resume_across_reload(stack: dict[str, Any]) -> None:
    nginx: Nginx = stack["nginx"]
    x = (np.random.default_rng(3).standard_normal(RATE * 5) * 3000).astype(np.int16)
    pub = Publisher(stack["wss"] + "/ws", rate=RATE, format="s16", name="via-nginx",
                    ssl=client_context(stack["ca"]))
    await pub.start()
    block = RATE // 50  # real time: 20 ms blocks
    reloaded = False
    t0 = time.monotonic()
    for i in range(0, len(x), block):
        await pub.send(x[i : i + block])
        if not reloaded and i >= RATE * 1.5:
            await asyncio.to_thread(nginx.reload)  # old worker drops us after 2 s
            reloaded = True
        await asyncio.sleep(max(0.0, t0 + (i + block) / RATE - time.monotonic()))
    deadline = time.monotonic() + 30
    while pub.reconnects == 0 and time.monotonic() < deadline:  # (if the stream ran out)
        await asyncio.sleep(0.1)
    frames = await pub.stop()
    assert frames == len(x) and pub.reconnects >= 1
    srv: ServerProcess = stack["server"]
    rec = httpx.get(f"{srv.http}/api/streams/{pub.stream_id}").json()
    y, _ = sf.read(srv.data_dir / rec["path"], dtype="int16")
    assert np.array_equal(y, x)  # exact across the reload


def test_server_logs_the_real_client_address(stack: dict[str, Any]) -> None:
    in_thread(real_address(stack))


async def real_address(stack: dict[str, Any]) -> None:
    srv: ServerProcess = stack["server"]
    ctx = client_context(stack["ca"])
    # from 127.0.0.2 through nginx, with a forged X-Forwarded-For nginx must replace
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2", verify=ctx)) as c:
        r = c.get(stack["https"] + "/api/streams?limit=1&probe=viaproxy",
                  headers={"X-Forwarded-For": "6.6.6.6"})
        assert r.status_code == 200
        nxt = r.json()["next"]
    assert nxt is None or nxt.startswith(stack["https"] + "/")  # X-Forwarded-Proto honoured
    async with connect(stack["wss"] + "/ws/subscribe?stream=*&audio=s16&probe=wsviaproxy",
                       ssl=ctx, local_addr=("127.0.0.2", 0)) as ws:
        assert json.loads(await ws.recv())["type"] == "subscribed"
        # a stream published through nginx, heard by this subscriber through nginx
        x = np.arange(-800, 800, dtype=np.int16) * 7
        async with Publisher(stack["wss"] + "/ws", rate=RATE, format="s16", ssl=ctx) as pub:
            await pub.send(x)
        heard, header = b"", None
        while True:
            raw = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(raw, bytes):
                assert header is not None and header["stream"] == pub.stream_id
                heard += raw
                continue
            msg = json.loads(raw)
            if msg.get("stream") != pub.stream_id:
                continue
            if msg["type"] == "audio":
                header = msg
            elif msg["type"] == "stream_ended":
                break
        assert np.array_equal(np.frombuffer(heard, "<i2"), x)
    # straight to earshot from 127.0.0.3: not a trusted proxy, its header is ignored
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3")) as c:
        r = c.get(srv.http + "/api/streams?probe=direct", headers={"X-Forwarded-For": "7.7.7.7"})
        assert r.status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = srv.log.read_text()
        if "probe=direct" in log:
            break
        time.sleep(0.1)
    lines = {k: [ln for ln in log.splitlines() if f"probe={k}" in ln]
             for k in ("viaproxy", "wsviaproxy", "direct")}
    assert lines["viaproxy"] and all("127.0.0.2:" in ln for ln in lines["viaproxy"]), lines
    assert lines["wsviaproxy"] and all("127.0.0.2:" in ln for ln in lines["wsviaproxy"])
    assert lines["direct"] and all("127.0.0.3:" in ln for ln in lines["direct"])
    assert "6.6.6.6" not in log and "7.7.7.7" not in log
    ngx = stack["nginx"].access_log  # the proxy's own log: 127.0.0.2, and no query strings
    assert "127.0.0.2 - " in ngx and "GET /api/streams HTTP/1.1" in ngx and "probe=" not in ngx


def test_committed_config_is_valid_nginx(stack: dict[str, Any]) -> None:
    import subprocess

    nginx: Nginx = stack["nginx"]
    out = subprocess.run(nginx._cmd("-t"), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert (ROOT / "deploy" / "nginx.conf").exists() and isinstance(nginx.dir, Path)
