"""Subscribers and REST have limits of their own, on a real server; publishers never lose
their slots to them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import websockets
from test_admission_server import metric, raw_start, source

from earshot.client import Publisher
from helpers import ServerProcess

pytestmark = pytest.mark.slow
RATE = 16000


async def subscribe(server: ServerProcess) -> tuple[Any, dict[str, Any]]:
    ws = await websockets.connect(f"ws://127.0.0.1:{server.port}/ws/subscribe?stream=*")
    return ws, json.loads(await ws.recv())


async def until(cond: Callable[[], bool], what: str, timeout: float = 10,
                every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(every)


def healthz(server: ServerProcess) -> dict[str, Any]:
    return httpx.get(server.http + "/healthz").json()  # type: ignore[no-any-return]


async def test_max_subscribers_apart_from_publishers(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--max-streams", "1", "--max-subscribers", "2")
    a, first = await subscribe(server)
    b, _ = await subscribe(server)
    assert first["type"] == "subscribed"
    c, refused = await subscribe(server)
    assert refused["type"] == "error" and refused["code"] == "server_full", refused
    assert "maximum of 2 subscribers" in refused["message"]
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(c.recv(), 10)
    assert c.close_code == 1013
    # the publisher's only slot is still there, and its events reach the subscribers
    pub = Publisher(server.url, rate=RATE, format="s16", name="pub")
    await pub.start()
    started = json.loads(await asyncio.wait_for(a.recv(), 10))
    assert started["type"] == "stream_started" and started["stream"] == pub.stream_id
    msg, code = await raw_start(server.url)  # ... and it is the only one: a second waits
    assert msg["code"] == "server_full" and code == 1013
    adm = healthz(server)["admission"]
    assert (adm["subscribers"], adm["max_subscribers"], adm["held"]) == (2, 2, 1)
    text = httpx.get(server.http + "/metrics").text
    assert metric(text, "earshot_subscribers_active") == 2
    assert metric(text, "earshot_max_subscribers") == 2
    assert metric(text, "earshot_subscribers_refused_total") == 1
    # a subscriber that leaves frees its place
    await b.close()
    await until(lambda: healthz(server)["admission"]["subscribers"] == 1, "b's place freed")
    d, again = await subscribe(server)
    assert again["type"] == "subscribed"
    assert [s["stream"] for s in again["live"]] == [pub.stream_id]
    x = source(0, 0.5)
    await pub.send(x)
    assert await pub.stop() == len(x)
    for ws in (a, d):
        await ws.close()
    await until(lambda: healthz(server)["admission"]["subscribers"] == 0, "all places freed")
    assert "Traceback" not in server.log.read_text()


async def test_rest_rate_limit_never_touches_publishers(
        server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory("--rest-rate", "0.5", "--rest-burst", "3")
    pub = Publisher(server.url, rate=RATE, format="s16", name="pub")
    await pub.start()
    x = source(1, 1.0)
    await pub.send(x[:8000])
    async with httpx.AsyncClient(base_url=server.http) as http:
        codes = [(await http.get("/api/streams")).status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        r = await http.get("/api/streams")
        assert r.status_code == 429, r.text
        assert r.headers["content-type"] == "application/json"
        assert int(r.headers["retry-after"]) >= 1
        body = r.json()
        assert body["type"] == "error" and body["code"] == "rate_limited"
        assert 0 < body["retry_after"] <= 2.0
        assert (await http.get("/healthz")).status_code == 200  # never limited
        # a publisher (and a subscriber) from the same address go on regardless
        await pub.send(x[8000:])
        await pub.wait_acked(timeout=10)
        assert pub.acked == len(x)
        ws, sub = await subscribe(server)
        assert sub["type"] == "subscribed"
        await ws.close()
        rest = (await http.get("/healthz")).json()["rest"]
        assert rest["refused"]["rate"] == 1 and rest["rate"] == 0.5 and rest["burst"] == 3
        assert rest["max_requests"] == 64
        await asyncio.sleep(body["retry_after"] + 0.1)  # refilled
        assert (await http.get("/api/streams")).status_code == 200
        await asyncio.sleep(2.1)
        text = (await http.get("/metrics")).text
    assert metric(text, 'earshot_rest_refused_total{limit="rate"}') == 1
    assert metric(text, 'earshot_errors_total{code="rate_limited"}') == 1
    assert await pub.stop() == len(x)
    assert "Traceback" not in server.log.read_text()


async def test_max_streams_auto_refuses_a_newcomer_without_headroom(
        server_factory: Callable[..., ServerProcess]) -> None:
    """Before any stream is measured, each costs the prior 0.01 cores: with --max-cpu 0.3
    an idle loop (busy under 0.15 cores, even on a loaded machine) takes some of forty
    newcomers at once, never more than thirty."""
    # the lag and ack rules (a tenth of these) out of the way of a busy test machine
    server = server_factory("--max-streams", "auto", "--max-cpu", "0.3",
                            "--max-loop-lag", "5", "--max-ack-latency", "10")

    def busy() -> float:
        head = healthz(server)["admission"]["headroom"]
        return float(head["loop_cpu"] + head["loop_wait"])

    await until(lambda: busy() < 0.15, "an idle event loop", timeout=40, every=0.5)
    adm = healthz(server)["admission"]
    assert adm["max_streams"] == "auto" and adm["headroom"]["max_cpu"] == 0.3
    assert adm["state"] == "ok"
    # forty newcomers at once (well within the 6 s before a stream's cost is measured)
    conns = [await websockets.connect(server.url) for _ in range(40)]
    # (forty handshakes are work too: let the loop settle before the starts)
    await until(lambda: busy() < 0.15, "an idle event loop", timeout=40, every=0.5)
    answers = []
    for ws in conns:
        await ws.send(json.dumps({"type": "start", "format": "s16", "rate": RATE}))
    for ws in conns:
        answers.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    admitted = [ws for ws, m in zip(conns, answers, strict=True) if m["type"] == "ready"]
    refused = [m for m in answers if m["type"] != "ready"]
    assert 1 <= len(admitted) <= 30, answers
    assert len(admitted) + len(refused) == 40
    for m in refused:
        assert m["code"] == "server_full" and "no headroom" in m["message"], m
    assert f"{len(admitted)} held" in refused[0]["message"]
    # (the state may be "ok" again by now: the smoothed busy time moves on)
    text = httpx.get(server.http + "/metrics").text
    assert metric(text, "earshot_max_streams") == -1
    assert metric(text, 'earshot_streams_refused_total{reason="full"}') == len(refused)
    # (the CPU gauge needs two of the probe's 0.1 s samples: a fast run gets here sooner)
    await until(lambda: metric(httpx.get(server.http + "/metrics").text,
                               "earshot_loop_cpu_cores") > 0, "the loop's CPU measured",
                timeout=10, every=0.1)
    for ws in conns:
        if ws not in admitted:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1013
    for i, ws in enumerate(admitted):  # the held ones are served to the end
        x = source(10 + i, 0.3)
        await ws.send(x.tobytes())
        await ws.send(json.dumps({"type": "stop"}))
        while (m := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "stopped":
            pass
        assert m["offset"] == len(x)
        await ws.close()
    # with the streams gone, the door opens again
    await until(lambda: healthz(server)["admission"]["state"] == "ok", "the door to open")
    msg, _ = await raw_start(server.url)
    assert msg["type"] == "ready"
