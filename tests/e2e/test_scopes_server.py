"""Scoped tokens, forged events and silent connections, probed from another process
against a real ``earshot serve --token …`` (issue 19: items 1 and 5, the scope matrix)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from earshot.config import Settings
from earshot.server.auth import mint, secret_of
from helpers import ServerProcess

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "admin-secret-for-the-scope-matrix"
SECRET = secret_of(Settings.of(token=ADMIN_TOKEN).security)
RATE = 16000
#: what each scope may do (docs/security.md, "Scopes"); the admin token and an admin-scoped
#: token may do everything, the rest nothing beyond their row
ALLOWED: dict[str, set[str]] = {
    "ws start": {"publish"},
    "ws subscribe": {"listen", "worker"},
    "ws event": {"worker"},
    "GET /api/streams": {"listen"},
    "GET /api/streams/ID": {"listen"},
    "GET /api/streams/ID/audio": {"listen"},
    "GET /api/streams/ID/peaks": {"listen"},
    "GET /api/streams/ID/segments": {"listen"},
    "GET /api/streams/ID/segments/0/audio": {"listen"},
    "GET /api/streams/ID/transcript": {"listen"},
    "GET /api/sources/NAME/audio": {"listen"},
    "POST /api/streams/ID/links": {"listen"},
    "POST /api/streams/ID/replay": set(),
    "DELETE /api/streams/ID": set(),
    "GET /metrics": set(),
    "POST /api/tokens": set(),
}


def token_for(scope: str) -> str | None:
    assert SECRET is not None
    if scope == "root":
        return ADMIN_TOKEN
    if scope == "none":
        return None
    if scope == "expired":
        return mint(SECRET, ["admin"], ttl=5, now=time.time() - 60)
    if scope == "tampered":  # a listener's token that says it is admin
        head, body, sig = mint(SECRET, ["listen"], ttl=60).split(".")
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        claims["scope"] = ["admin"]
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        return f"{head}.{body}.{sig}"
    if scope == "foreign":
        other = secret_of(Settings.of(token="another server").security)
        return mint(other, ["admin"], ttl=60)  # type: ignore[arg-type]
    return mint(SECRET, [scope], ttl=60)


def headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("scopes") / "data", "--token", ADMIN_TOKEN,
                        "--auth-fail-rate", "0", "--auth-timeout", "1",
                        "--max-preauth", "200", "--max-preauth-per-address", "100").start()
    yield srv
    srv.stop()


def pcm(seconds: float, seed: int = 0) -> bytes:
    x = np.random.default_rng(seed).standard_normal(int(RATE * seconds)) * 3000
    return x.astype("<i2").tobytes()


async def expect(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            raw = await ws.recv()
            if isinstance(raw, str) and json.loads(raw).get("type") == kind:
                return json.loads(raw)  # type: ignore[no-any-return]


async def finished_stream(srv: ServerProcess, name: str) -> str:
    """A finished stream of 1 s with one speech segment, [0.25, 0.5) s, posted by a worker
    (a worker token) handed its audio."""
    async with connect(srv.url, additional_headers=headers(ADMIN_TOKEN)) as ws:
        await ws.send(json.dumps({"type": "start", "format": "s16", "rate": RATE, "name": name,
                                  "processors": []}))
        sid = (await expect(ws, "ready"))["stream"]
        url = f"ws://127.0.0.1:{srv.port}/ws/subscribe?stream={sid}&audio=f32"
        async with connect(url, additional_headers=headers(token_for("worker"))) as worker:
            await expect(worker, "subscribed")
            await ws.send(pcm(1.0))
            await expect(worker, "audio")
            await worker.send(json.dumps({"type": "event", "stream": sid, "events": [
                {"type": "speech_end", "processor": "vad", "start": 0.25, "end": 0.5}]}))
            seg = await expect(worker, "segment")
            assert (seg["start_frame"], seg["end_frame"]) == (4000, 8000)
        await ws.send(json.dumps({"type": "stop"}))
        await expect(ws, "stopped")
    return str(sid)


@contextlib.asynccontextmanager
async def live_stream(srv: ServerProcess, name: str) -> AsyncIterator[tuple[str, list[dict]]]:
    """A stream held live, fed 0.1 s of audio every 0.1 s; its publisher's messages."""
    got: list[dict] = []
    async with connect(srv.url, additional_headers=headers(ADMIN_TOKEN)) as ws:
        await ws.send(json.dumps({"type": "start", "format": "s16", "rate": RATE, "name": name,
                                  "processors": []}))
        sid = str((await expect(ws, "ready"))["stream"])

        async def feed() -> None:
            while True:
                await ws.send(pcm(0.1))
                await asyncio.sleep(0.1)

        async def read() -> None:
            async for raw in ws:
                if isinstance(raw, str):
                    got.append(json.loads(raw))

        tasks = [asyncio.create_task(feed()), asyncio.create_task(read())]
        try:
            yield sid, got
        finally:
            for t in tasks:
                t.cancel()


async def ws_outcome(url: str, token: str | None, first: dict | None = None) -> int | str:
    """'ok', or the close code a WebSocket was refused with."""
    try:
        async with connect(url, additional_headers=headers(token)) as ws:
            if first is not None:
                await ws.send(json.dumps(first))
            async with asyncio.timeout(5):
                raw = await ws.recv()
            msg = json.loads(raw)
            if msg["type"] in ("ready", "subscribed"):
                return "ok"
            await ws.recv()  # the close follows the error
    except ConnectionClosed as exc:
        assert exc.rcvd is not None
        return exc.rcvd.code
    raise AssertionError(f"neither accepted nor closed: {msg}")


async def event_outcome(srv: ServerProcess, sid: str, token: str | None) -> int | str:
    """Post an event for a live stream from a subscriber handed its audio: 'ok' when the
    event comes back through the bus, else the error code or close code."""
    url = f"ws://127.0.0.1:{srv.port}/ws/subscribe?stream={sid}&audio=f32"
    try:
        async with connect(url, additional_headers=headers(token)) as ws:
            await expect(ws, "audio")  # handed
            await ws.send(json.dumps({"type": "event", "stream": sid, "events": [
                {"type": "probe", "processor": "vad", "t": 0.1}]}))
            async with asyncio.timeout(5):
                while True:
                    raw = await ws.recv()
                    if isinstance(raw, str):
                        msg = json.loads(raw)
                        if msg["type"] == "probe":
                            return "ok"
                        if msg["type"] == "error":
                            return str(msg["code"])
    except ConnectionClosed as exc:
        assert exc.rcvd is not None
        return exc.rcvd.code


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def http_outcome(srv: ServerProcess, action: str, sid: str, name: str,
                 token: str | None) -> int:
    method, path = action.split(" ", 1)
    path = path.replace("ID", sid).replace("NAME", name)
    params: dict[str, Any] = {}
    body = None
    if "sources" in path:
        now = time.time()
        params = {"from": _iso(now - 600), "to": _iso(now + 60)}
    if path.endswith("/replay"):
        params = {"processor": "level"}
    if path == "/api/tokens":
        body = {"scope": ["listen"], "ttl": 60}
    if method == "DELETE":
        path = path.replace(sid, "zzzzzz99")  # (nothing to delete: 404 when allowed)
    r = httpx.request(method, srv.http + path, params=params, json=body,
                      headers=headers(token), timeout=30)
    return r.status_code


async def test_each_scope_may_do_what_the_table_says_and_nothing_else(
        server: ServerProcess) -> None:
    sid = await finished_stream(server, "kitchen-a")
    scopes = ["publish", "listen", "worker", "admin", "root"]
    bad = ["none", "expired", "tampered", "foreign"]
    seen: dict[tuple[str, str], Any] = {}
    async with live_stream(server, "kitchen-live") as (live_id, _):
        for who in scopes + bad:
            token = token_for(who)
            seen["ws start", who] = await ws_outcome(
                server.url, token, {"type": "start", "format": "s16", "rate": RATE,
                                    "processors": [], "name": "kitchen-x"})
            seen["ws subscribe", who] = await ws_outcome(
                f"ws://127.0.0.1:{server.port}/ws/subscribe?stream=*", token)
            seen["ws event", who] = await event_outcome(server, live_id, token)
            for action in ALLOWED:
                if not action.startswith("ws "):
                    seen[action, who] = http_outcome(server, action, sid, "kitchen-a", token)
    wrong = []
    for (action, who), got in seen.items():
        if who in ("admin", "root") or who in ALLOWED[action]:
            ok = got == "ok" or (isinstance(got, int) and got < 300) or (
                action.startswith("DELETE") and got == 404)
        elif who in bad:  # no valid credentials: unauthorized everywhere
            ok = got in (401, 4401)
        else:  # valid credentials beyond their scope: forbidden
            ok = got in (403, 4403, "forbidden")
        if not ok:
            wrong.append((action, who, got))
    assert wrong == [], wrong
    # a grant limited to names hears and lists only those
    kitchen = mint(SECRET, ["listen"], ttl=60, names="kitchen-*")  # type: ignore[arg-type]
    garage = await finished_stream(server, "garage-b")
    listed = httpx.get(server.http + "/api/streams", headers=headers(kitchen)).json()
    names = {s["name"] for s in listed["streams"]}
    assert "kitchen-a" in names and "garage-b" not in names
    assert httpx.get(f"{server.http}/api/streams/{garage}/audio",
                     headers=headers(kitchen)).status_code == 403
    assert httpx.get(f"{server.http}/api/streams/{sid}/audio",
                     headers=headers(kitchen)).status_code == 200
    assert await ws_outcome(f"ws://127.0.0.1:{server.port}/ws/subscribe?stream={garage}",
                            kitchen) == 4403


async def test_signed_links_open_one_download_for_a_short_while(server: ServerProcess) -> None:
    sid = await finished_stream(server, "kitchen-signed")
    listen = token_for("listen")
    links = httpx.post(f"{server.http}/api/streams/{sid}/links", headers=headers(listen)).json()
    assert links["audio"].startswith(f"/api/streams/{sid}/audio?sig=")
    assert listen not in links["audio"] and ADMIN_TOKEN not in links["audio"]
    assert 0 < links["expires"] - time.time() <= 301
    r = httpx.get(server.http + links["audio"])  # no other credentials
    assert r.status_code == 200 and r.content[:4] == b"RIFF" and len(r.content) > RATE * 2
    assert httpx.get(server.http + links["transcript"]).status_code == 200
    sig = links["audio"].split("sig=")[1]
    for other in (f"/api/streams/{sid}/peaks", "/api/streams", "/metrics"):
        assert httpx.get(f"{server.http}{other}?sig={sig}").status_code in (401, 403), other
    assert httpx.get(f"{server.http}/api/streams",
                     headers=headers(sig)).status_code == 403  # nor as a bearer token
    assert httpx.get(f"{server.http}/api/streams/{sid}/audio?sig=x.y.z").status_code == 401


async def test_forged_events_are_refused(server: ServerProcess) -> None:
    """Item 1: a subscriber (even with the admin token) posting speech_end, a final
    transcript and error events with invented codes for a stream it was not handed, and a
    worker handed it posting spans beyond the audio and invented codes."""
    sub_url = f"ws://127.0.0.1:{server.port}/ws/subscribe"
    async with live_stream(server, "victim") as (sid, publisher_got):
        forged = [{"type": "speech_end", "start": 0, "end": 1e9}] * 20 + [
            {"type": "transcript", "final": True, "segment": 0, "start": 0, "end": 1,
             "text": "forged words"}] + [
            {"type": "error", "code": f"invented_{i}", "message": "forged"} for i in range(50)]
        for token in (ADMIN_TOKEN, token_for("listen"), token_for("worker")):
            async with connect(f"{sub_url}?stream=*", additional_headers=headers(token)) as ws:
                await expect(ws, "subscribed")
                await ws.send(json.dumps({"type": "event", "stream": sid, "events": forged}))
                err = await expect(ws, "error")
                assert err["code"] == "forbidden", err
        async with connect(f"{sub_url}?stream={sid}&audio=f32",
                           additional_headers=headers(token_for("worker"))) as ws:
            await expect(ws, "audio")
            for events, what in (([{"type": "speech_end", "start": 0, "end": 1e9}] * 20,
                                  "of audio received"),
                                 ([{"type": "error", "code": "invented_1"}], "invented_1")):
                await ws.send(json.dumps({"type": "event", "stream": sid, "events": events}))
                err = await expect(ws, "error")
                assert err["code"] == "bad_event" and what in err["message"], err
        await asyncio.sleep(0.3)
        assert not [m for m in publisher_got if m.get("type") == "error"]
    await asyncio.sleep(0.3)
    auth = headers(ADMIN_TOKEN)
    assert httpx.get(f"{server.http}/api/streams/{sid}/segments",
                     headers=auth).json()["segments"] == []
    assert "forged" not in httpx.get(f"{server.http}/api/streams/{sid}/transcript",
                                     headers=auth).text
    metrics = httpx.get(server.http + "/metrics", headers=auth).text
    assert "invented_" not in metrics
    assert not list(Path(server.data_dir, "streams").glob(f"{sid}.segments/*.wav"))


async def test_silent_connections_are_closed_at_the_deadline(server: ServerProcess) -> None:
    """Item 5: 300 connections that never send a start; none is held past --auth-timeout
    (1 s here): past --max-preauth-per-address (100) refused at once, the rest closed 4401."""
    url = server.url
    conns = await asyncio.gather(*(connect(url, open_timeout=20) for _ in range(300)),
                                 return_exceptions=True)
    opened = [c for c in conns if isinstance(c, ClientConnection)]
    began = time.monotonic()
    codes: list[int | None] = []

    async def close_code(ws: ClientConnection) -> int | None:
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(10):
                async for _ in ws:
                    pass
        return ws.close_code

    codes = list(await asyncio.gather(*(close_code(c) for c in opened)))
    waited = time.monotonic() - began
    refused = len(conns) - len(opened)
    assert codes.count(4401) == 100, sorted(set(map(str, codes)))
    assert codes.count(1013) + refused == 200
    assert waited < 10  # every one was closed by the server (none reached our timeout)
    health = httpx.get(server.http + "/healthz").json()
    assert health["status"] in ("ok", "degraded")


def test_the_command_line_mints_and_every_client_takes_a_scoped_token(
        server: ServerProcess, tmp_path: Path) -> None:
    """``earshot token create`` (the secret from EARSHOT_TOKEN, as serve reads it) prints
    the token alone; ``send``, ``streams``, ``tail`` and ``worker`` take it as --token."""
    import os
    import subprocess
    import sys

    import soundfile as sf

    from helpers import ROOT

    def earshot(*args: str, env: dict[str, str] | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "earshot.cli", *args], text=True,
                              capture_output=True, timeout=timeout,
                              env={**os.environ, **(env or {})})

    def create(*args: str) -> str:
        r = earshot("token", "create", *args, env={"EARSHOT_TOKEN": ADMIN_TOKEN})
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("\n") == 1 and r.stdout.count(".") == 2  # the token alone
        return r.stdout.strip()

    publish = create("--scope", "publish", "--names", "cli-*", "--ttl", "120")
    listen = create("--scope", "listen")
    worker = create("--scope", "worker", "--processors", "heard")  # (the kind's name)
    f = tmp_path / "x.wav"
    sf.write(f, np.frombuffer(pcm(0.5), "<i2"), RATE, subtype="PCM_16")
    sent = earshot("send", str(f), "--url", server.url, "--token", publish, "--name", "cli-a",
                   "-q")
    assert sent.returncode == 0, sent.stderr
    refused = earshot("send", str(f), "--url", server.url, "--token", publish, "--name",
                      "other", "-q", "--retries", "0")
    assert refused.returncode == 4 and "forbidden" in refused.stdout + refused.stderr
    listed = earshot("streams", "--url", server.url, "--token", listen, "--json")
    assert listed.returncode == 0, listed.stderr
    assert "cli-a" in {s["name"] for s in json.loads(listed.stdout)["streams"]}
    denied = earshot("streams", "--url", server.url, "--token", publish, "--json")
    assert denied.returncode == 4, denied.stdout + denied.stderr
    no_secret = earshot("token", "create", "--scope", "listen",
                        env={"EARSHOT_TOKEN": "", "EARSHOT_TOKEN_SECRET": ""})
    assert no_secret.returncode == 2 and no_secret.stdout == ""
    assert "--token-secret" in no_secret.stderr
    # a worker with its scoped token: its events reach the sender of a live stream
    proc = subprocess.Popen(
        [sys.executable, "-m", "earshot.cli", "worker", "testprocs:Heard", "--url",
         server.url, "--token", worker, "--name", "w-scoped"],
        env={**os.environ, "PYTHONPATH": str(ROOT / "tests")}, stderr=subprocess.DEVNULL)
    try:
        async def run() -> list[dict]:
            await asyncio.sleep(2.0)  # (the worker attaches)
            async with live_stream(server, "cli-live") as (_, got):
                async with asyncio.timeout(20):
                    while not any(m.get("type") == "heard" for m in got):
                        await asyncio.sleep(0.05)
                return got

        got = asyncio.run(run())
        heard = [m for m in got if m.get("type") == "heard"]
        assert heard[0]["worker"] == "w-scoped" and heard[0]["processor"] == "heard"
        tail = earshot("tail", "*", "--url", server.url, "--token", publish, timeout=20)
        assert tail.returncode == 4 and "needs the listen or worker scope" in tail.stderr
    finally:
        proc.terminate()
        proc.wait(10)


async def test_a_names_grant_hears_only_its_streams(server: ServerProcess) -> None:
    kitchen = mint(SECRET, ["listen"], ttl=60, names="kitchen-*")  # type: ignore[arg-type]
    url = f"ws://127.0.0.1:{server.port}/ws/subscribe?stream=*&audio=s16"
    async with (live_stream(server, "garage-live") as (garage_id, _),
                live_stream(server, "kitchen-live2") as (kitchen_id, _),
                connect(url, additional_headers=headers(kitchen)) as ws):
        subscribed = await expect(ws, "subscribed")
        assert [i["stream"] for i in subscribed["live"]] == [kitchen_id]
        heard: set[str] = set()
        async with asyncio.timeout(10):
            while True:
                raw = await ws.recv()
                if isinstance(raw, str):
                    msg = json.loads(raw)
                    if "stream" in msg:
                        heard.add(msg["stream"])
                    if msg.get("type") == "audio" and msg["offset"] >= RATE:
                        break  # a second of the kitchen's audio
        assert heard == {kitchen_id}, (heard, garage_id)
