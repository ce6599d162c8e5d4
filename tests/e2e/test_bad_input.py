"""Every bad input gets its documented error; a concurrent stream is untouched by all of it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from earshot.client import Publisher
from helpers import ServerProcess

pytestmark = pytest.mark.slow


async def exchange(url: str, messages: list[str | bytes], *,
                   settle: float = 0.3) -> tuple[list[dict], int | None]:
    """Send messages, gather the server's JSON answers until it closes or goes quiet."""
    got: list[dict] = []
    async with connect(url, max_size=None) as ws:
        try:
            for m in messages:
                await ws.send(m)
        except ConnectionClosed:
            pass  # the server may close early; what it sent before is still readable
        try:
            while True:
                raw = await asyncio.wait_for(ws.recv(), settle)
                got.append(json.loads(raw))
        except (TimeoutError, ConnectionClosed):
            pass
        await asyncio.sleep(0.05)
        return got, ws.close_code


def start(**kw: object) -> str:
    return json.dumps({"type": "start", "format": "s16", "rate": 16000, "channels": 1, **kw})


def codes(events: list[dict]) -> list[str]:
    return [e["code"] for e in events if e["type"] in {"error", "warning"}]


CASES: list[tuple[str, list[str | bytes], list[str], int | None]] = [
    ("invalid json", ["{nope", start()], ["invalid_json"], None),
    ("unknown type", ['{"type":"shout"}', start()], ["unknown_type"], None),
    ("binary before start", ['{"type":"hello"}', b"\0\0"], ["unknown_type", "not_started"], 4400),
    ("binary after failed start", [start(rate=5), b"\0\0"], ["unsupported_rate", "not_started"],
     4400),
    ("unsupported format", [start(format="mp3")], ["unsupported_format"], None),
    ("unsupported channels", [start(channels=64)], ["unsupported_channels"], None),
    ("bad field type", [start(rate="fast")], ["bad_start"], None),
    # found by the stateful fuzz (tests/wire/test_fuzz_ingest.py): isdigit() but not int()-able
    ("superscript digit", [start(rate="\u00b2")], ["bad_start"], None),
    ("5000-digit string", [start(offset="9" * 5000)], ["bad_start"], None),
    ("resume unknown", [start(resume="nosuchstream1", resume_token="x")], ["unknown_stream"],
     4404),
    ("too large", [start(), b"\0" * ((1 << 20) + 2)], ["message_too_large"], 1009),
    # beyond the transport's own frame limit (16 MiB) only the close code can tell
    ("beyond transport limit", [start(), b"\0" * (17 << 20)], [], 1009),
    ("stop before start", ['{"type":"stop"}'], ["not_started"], None),
    ("double start", [start(), start()], ["already_started"], None),
]


async def test_bad_inputs_get_their_errors_and_never_harm_another_stream(
        shared_server: ServerProcess) -> None:
    rng = np.random.default_rng(7)
    good = (rng.standard_normal(16000 * 3) * 3000).astype("<i2")

    async def good_stream() -> str:
        async with Publisher(shared_server.url, rate=16000, format="s16") as pub:
            for i in range(0, len(good), 320):
                await pub.send(good[i:i + 320])
                await asyncio.sleep(0.002)
        return pub.stream_id  # type: ignore[return-value]

    task = asyncio.create_task(good_stream())
    for label, messages, want, close in CASES:
        events, code = await exchange(shared_server.url, messages)
        assert codes(events) == want, label
        for e in events:
            if e["type"] == "error":
                assert e["message"] and "Traceback" not in e["message"], label
        if close is not None:
            assert code == close, label
    sid = await task
    rec = httpx.get(f"{shared_server.http}/api/streams/{sid}").json()
    y = sf.read(shared_server.data_dir / rec["path"], dtype="int16")[0]
    assert np.array_equal(y, good)
    metrics = httpx.get(f"{shared_server.http}/metrics").text
    assert 'earshot_errors_total{code="invalid_json"}' in metrics


async def test_partial_frames_are_carried_then_reported_at_stop(
        shared_server: ServerProcess) -> None:
    x = np.arange(1000, dtype="<i2").tobytes()
    pieces = [x[:3], x[3:500], x[500:1001], x[1001:1999], x[1999:] + b"\x07"]
    events, code = await exchange(shared_server.url, [start(), *pieces, '{"type":"stop"}'])
    stopped = events[-1]
    assert stopped["type"] == "stopped" and stopped["offset"] == 1000 and code == 1000
    assert codes(events) == ["partial_frame"]
    rec = httpx.get(f"{shared_server.http}/api/streams/{stopped['stream']}").json()
    y = sf.read(shared_server.data_dir / rec["path"], dtype="int16")[0]
    assert np.array_equal(y, np.arange(1000))


async def test_wrong_resume_token_and_finished_stream(shared_server: ServerProcess) -> None:
    events, _ = await exchange(shared_server.url, [start(), b"\0\0" * 100, '{"type":"stop"}'])
    sid = events[0]["stream"]
    events, code = await exchange(shared_server.url, [start(resume=sid, resume_token="wrong")])
    assert codes(events) == ["bad_resume_token"] and code == 4403
    ready = (await exchange(shared_server.url, [start()]))[0][0]
    events, code = await exchange(shared_server.url, [
        start(resume=ready["stream"], resume_token=ready["resume_token"], rate=8000)])
    assert codes(events) == ["resume_mismatch"] and code == 4400


async def test_names_cannot_escape_the_data_directory(shared_server: ServerProcess) -> None:
    evil = "../../../../tmp/earshot-escape"
    events, _ = await exchange(shared_server.url,
                               [start(name=evil), b"\0\0" * 10, '{"type":"stop"}'])
    rec = httpx.get(f"{shared_server.http}/api/streams/{events[0]['stream']}").json()
    assert rec["name"] == evil
    path = (shared_server.data_dir / rec["path"]).resolve()
    assert path.is_relative_to(shared_server.data_dir.resolve())
    assert not Path("/tmp/earshot-escape").exists()
    r = httpx.get(f"{shared_server.http}/api/streams/{rec['id']}/audio")
    assert ".." not in r.headers["content-disposition"]


async def test_auth(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--token", "s3cret")
    base = server.http
    # WebSocket: none, wrong (query), wrong (in start) are refused with 4401
    events, code = await exchange(server.url, [start()])
    assert codes(events) == ["unauthorized"] and code == 4401
    events, code = await exchange(server.url + "?token=nope", [start()])
    assert codes(events) == ["unauthorized"] and code == 4401
    events, code = await exchange(server.url, [start(token="nope")])
    assert codes(events) == ["unauthorized"] and code == 4401
    events, code = await exchange(server.url + "?rate=8000", [b"\0\0\0\0"])  # compat mode
    assert codes(events) == ["unauthorized"] and code == 4401
    # right token: in the query, in start, and as a bearer header
    for url, msg in ((server.url + "?token=s3cret", start()),
                     (server.url, start(token="s3cret"))):
        events, _ = await exchange(url, [msg])
        assert events[0]["type"] == "ready"
    async with Publisher(server.url, rate=8000, format="s16", token="s3cret") as pub:
        await pub.send(np.zeros(800, "<i2"))
    # REST
    assert httpx.get(f"{base}/api/streams").status_code == 401
    assert httpx.get(f"{base}/api/streams", headers={"Authorization": "Bearer x"}).status_code \
        == 401
    r = httpx.get(f"{base}/api/streams", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200 and r.json()["total"] == 3
    assert httpx.get(f"{base}/api/streams/{pub.stream_id}/audio?token=s3cret").status_code == 200
    assert httpx.get(f"{base}/metrics").status_code == 401
    assert httpx.get(f"{base}/healthz").json()["auth"] is True
    # the command line says so, with exit code 4 (refused)
    wav = server.data_dir.parent / "auth.wav"
    sf.write(wav, np.zeros(800, "<i2"), 8000, subtype="PCM_16")
    cli = [sys.executable, "-m", "earshot.cli", "send", str(wav), "--url", server.url, "-q"]
    out = subprocess.run([*cli, "--token", "nope"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 4 and "unauthorized" in out.stderr
    out = subprocess.run([*cli, "--token", "s3cret"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # subscribe needs it too
    events, code = await exchange(server.url.replace("/ws", "/ws/subscribe"), [])
    assert codes(events) == ["unauthorized"] and code == 4401
