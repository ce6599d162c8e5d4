"""Origin, Host and rate-limit checks on a real ``earshot serve`` (issue 12, must-show 7)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from hardening_helpers import error_body, handshake
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from helpers import ServerProcess, free_port

pytestmark = pytest.mark.slow

EVIL = "https://evil.example"


async def ingest_ready(srv: ServerProcess, origin: str | None) -> dict:
    async with connect(srv.url, origin=origin) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"type": "start", "format": "s16", "rate": 16000}))
        ready = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "stop"}))
        return ready


async def subscribed(srv: ServerProcess, origin: str | None) -> dict:
    url = f"ws://127.0.0.1:{srv.port}/ws/subscribe?stream=*&audio=s16"
    async with connect(url, origin=origin) as ws:  # type: ignore[arg-type]
        return json.loads(await ws.recv())


async def test_cross_site_websockets_refused(shared_server: ServerProcess) -> None:
    srv = shared_server
    for path in ("/ws", "/ws/subscribe?stream=*&audio=s16"):
        status, headers, body = handshake(srv.port, path, origin=EVIL)
        assert status == 403, (path, status)
        err = error_body(body)
        assert err["code"] == "origin_not_allowed" and EVIL in err["message"]
        assert "--allowed-origins" in err["message"]
        assert headers["content-type"] == "application/json"
    for origin in (EVIL, "null", "http://127.0.0.1.evil.example:1"):
        with pytest.raises(InvalidStatus) as exc:
            await ingest_ready(srv, origin)
        assert exc.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as exc:
            await subscribed(srv, origin)
        assert exc.value.response.status_code == 403

    other = free_port()
    for origin in (None, srv.http, f"http://127.0.0.1:{other}", f"http://localhost:{other}"):
        ready = await ingest_ready(srv, origin)
        assert ready["type"] == "ready" and ready["offset"] == 0, origin
        sub = await subscribed(srv, origin)
        assert sub["type"] == "subscribed" and sub["audio"] == "s16", origin
    # plain HTTP keeps working for the page (Origin is checked on WebSocket handshakes)
    r = httpx.get(srv.http + "/api/streams", headers={"Origin": EVIL})
    assert r.status_code == 200
    metrics = httpx.get(srv.http + "/metrics").text  # refusals are counted by code
    counted = [ln for ln in metrics.splitlines()
               if ln.startswith('earshot_errors_total{code="origin_not_allowed"}')]
    assert counted and float(counted[0].split()[-1]) >= 8, counted


async def test_allowed_origins_lets_that_one_in(server_factory: Callable[..., ServerProcess]
                                                ) -> None:
    srv = server_factory("--allowed-origins", EVIL)
    assert (await ingest_ready(srv, EVIL))["type"] == "ready"
    assert (await subscribed(srv, EVIL))["type"] == "subscribed"
    assert handshake(srv.port, "/ws", origin="https://other.example")[0] == 403
    # and from the environment (';' or ',' separated)
    env = server_factory(data_dir=srv.data_dir.parent / "d2",
                         env={"EARSHOT_ALLOWED_ORIGINS": "https://a.example,https://b.example"})
    assert handshake(env.port, "/ws", origin="https://b.example")[0] == 101
    assert handshake(env.port, "/ws", origin=EVIL)[0] == 403


def test_dns_rebinding_refused(shared_server: ServerProcess) -> None:
    srv = shared_server
    rebound = f"evil.example:{srv.port}"
    r = httpx.get(srv.http + "/api/streams", headers={"Host": rebound})
    assert r.status_code == 403 and r.json()["code"] == "host_not_allowed"
    # the rebinding page's Origin matches its Host: refused by the Host check all the same
    status, _, body = handshake(srv.port, "/ws/subscribe?stream=*", host=rebound,
                                origin=f"http://{rebound}")
    assert status == 403 and error_body(body)["code"] == "host_not_allowed"
    for host in (f"localhost:{srv.port}", f"127.0.0.1:{srv.port}", f"[::1]:{srv.port}"):
        assert httpx.get(srv.http + "/api/streams", headers={"Host": host}).status_code == 200
        assert handshake(srv.port, "/ws", host=host)[0] == 101


async def test_connection_rate_limit(server_factory: Callable[..., ServerProcess]) -> None:
    srv = server_factory("--conn-rate", "0.02", "--conn-burst", "3")  # (refill: 50 s)
    codes = [handshake(srv.port, "/ws")[0] for _ in range(3)]
    assert codes == [101, 101, 101]
    status, headers, body = handshake(srv.port, "/ws")
    assert status == 429
    err = error_body(body)
    assert err["code"] == "rate_limited" and "too many new connections" in err["message"]
    assert 0 < err["retry_after"] <= 50.0
    assert int(headers["retry-after"]) == max(1, -(-err["retry_after"] // 1))
    # another client address has its own budget; HTTP is not counted
    assert handshake(srv.port, "/ws", source="127.0.0.2")[0] == 101
    assert httpx.get(srv.http + "/api/streams").status_code == 200
    # the Python client reports it as such (and does not hammer the server)
    from earshot.client import Publisher, Reconnect
    from earshot.errors import ClientError

    pub = Publisher(srv.url, rate=16000, format="s16",
                    reconnect=Reconnect(initial=0.01, first_attempts=0))
    with pytest.raises(ClientError) as exc:
        await pub.start()
    assert exc.value.code == "rate_limited", exc.value
    assert "too many new connections" in str(exc.value)


def test_failed_auth_rate_limited_and_logged_without_token(
        server_factory: Callable[..., ServerProcess]) -> None:
    token, guesses = "s3cret-token-T", [f"guess-{i}-xyzzy" for i in range(4)]
    srv = server_factory("--token", token, "--auth-fail-burst", "3", "--auth-fail-rate", "0.01")
    for g in guesses[:2]:
        assert httpx.get(srv.http + f"/api/streams?token={g}").status_code == 401
    status, _, _ = handshake(srv.port, f"/ws/subscribe?token={guesses[2]}")
    assert status == 101  # subscribe refuses after accept: error + close 4401 (counted)
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the 4401 close is counted when it is sent
        r = httpx.get(srv.http + f"/api/streams?token={guesses[3]}")
        if r.status_code == 429:
            break
        time.sleep(0.1)
    assert r.status_code == 429 and r.json()["code"] == "rate_limited"
    assert "failed authentication" in r.json()["message"] and "retry-after" in r.headers
    # now even the right token is refused from this address (no guessing through) ...
    right = {"Authorization": f"Bearer {token}"}
    assert httpx.get(srv.http + "/api/streams", headers=right).status_code == 429
    assert handshake(srv.port, "/ws", extra=right)[0] == 429
    assert httpx.get(srv.http + "/healthz").status_code == 200
    # ... but not from another address
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    assert other.get(srv.http + "/api/streams", headers=right).status_code == 200
    srv.stop()
    log = srv.log.read_text()
    assert log.count("failed authentication from 127.0.0.1") >= 3, log
    for secret in (token, *guesses):
        assert secret not in log
