"""Subscribers' and REST's own limits, and ``--max-streams auto`` (headroom): the pure cores
(time and measurements passed in), the settings, and the Guard middleware on a real ASGI
call chain (no server)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from earshot.config import Settings, env_overrides, parse_config_file
from earshot.errors import ConfigError
from earshot.server.http.guard import Guard, GuardCore, OriginPolicy
from earshot.server.streams.admission import Admission, Headroom, Rate, Slots, thread_wait


# -- subscribers ----------------------------------------------------------------------------
def test_subscriber_slots_are_counted_apart_from_publishers() -> None:
    a = Admission(max_streams=1, max_subscribers=2)
    assert a.subscriber_refusal() is None and a.subscriber_refusal() is None
    why = a.subscriber_refusal()
    assert why is not None and "maximum of 2 subscribers" in why
    assert a.subscribers.held == 2 and a.subscribers.refused == 1
    assert a.refusal([], 0.0) is None  # a publisher still gets its slot
    assert a.state(["p1"], 0.0) == "full"  # ... and publishers fill up on their own
    a.subscribers.release()
    assert a.subscriber_refusal() is None  # a place freed is a place taken again
    report = a.report(["p1"], 0.0)
    assert (report["subscribers"], report["max_subscribers"], report["held"]) == (2, 2, 1)


def test_no_subscriber_limit_by_default_and_release_never_goes_negative() -> None:
    s = Slots()
    assert all(s.take() for _ in range(10_000))
    for _ in range(10_001):
        s.release()
    assert s.held == 0


# -- REST -----------------------------------------------------------------------------------
def core(**kw: Any) -> GuardCore:
    opts = {"conn_rate": 0.0, "conn_burst": 1, "auth_fail_rate": 0.0, "auth_fail_burst": 1,
            **kw}
    return GuardCore(OriginPolicy(), **opts)


def test_rest_rate_per_address_with_retry_after() -> None:
    g = core(rest_rate=2.0, rest_burst=3)
    for _ in range(3):
        assert g.enter_rest("10.0.0.1", 0.0) is None
        g.leave_rest()
    r = g.enter_rest("10.0.0.1", 0.0)
    assert r is not None and (r.status, r.code, r.limit) == (429, "rate_limited", "rate")
    assert r.retry_after == pytest.approx(0.5)
    body = r.body()
    assert body["type"] == "error" and body["code"] == "rate_limited"
    assert body["retry_after"] == 0.5 and "10.0.0.1" in body["message"]
    assert g.enter_rest("10.0.0.2", 0.0) is None  # another address has its own bucket
    g.leave_rest()
    assert g.enter_rest("10.0.0.1", 0.5) is None  # refilled: one more after 1/rate s
    g.leave_rest()
    assert g.rest_refused == {"rate": 1, "concurrency": 0, "per_client": 0}


def test_rest_concurrency_cap_over_all_addresses() -> None:
    g = core(max_rest_requests=2)
    assert g.enter_rest("a", 0.0) is None and g.enter_rest("b", 0.0) is None
    r = g.enter_rest("c", 0.0)
    assert r is not None and r.limit == "concurrency" and r.retry_after == 1.0
    assert "maximum of 2 requests" in r.message
    assert g.rest_in_flight == 2  # the refused one never counted
    g.leave_rest()
    assert g.enter_rest("c", 0.0) is None
    assert g.report() == {"in_flight": 2, "max_requests": 2, "max_per_client": 0,
                          "rate": 0.0, "burst": 1.0,
                          "refused": {"rate": 0, "concurrency": 1, "per_client": 0}}


def test_rest_limits_do_not_touch_websocket_budgets() -> None:
    g = core(conn_rate=1.0, conn_burst=1, rest_rate=1.0, rest_burst=1)
    assert g.enter_rest("a", 0.0) is None
    assert g.enter_rest("a", 0.0) is not None  # REST budget spent ...
    assert g.admit(websocket=True, path="/ws", client="a", host=None, origin=None,
                   now=0.0) is None  # ... a publisher from the same address still connects


class SlowApp:
    """An ASGI app whose responses wait for ``release``: requests stay in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.served = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] != "/healthz":
            await self.release.wait()
        self.served += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def call(guard: Guard, path: str, client: str = "127.0.0.1") -> tuple[int, dict, Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "GET", "client": (client, 5000),
             "headers": [(b"host", b"127.0.0.1:8000")]}
    await guard(scope, receive, send)
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], headers, json.loads(body) if body else None


async def test_guard_middleware_caps_requests_in_flight_and_frees_the_places() -> None:
    app = SlowApp()
    g = core(max_rest_requests=2)
    guard = Guard(app, g)
    held = [asyncio.create_task(call(guard, "/api/streams")) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert g.rest_in_flight == 2
    status, headers, body = await call(guard, "/api/streams/x")
    assert status == 429 and headers["retry-after"] == "1"
    assert headers["content-type"] == "application/json"
    assert body["code"] == "rate_limited" and body["type"] == "error"
    status, _, _ = await call(guard, "/healthz")  # never limited
    assert status == 200
    app.release.set()
    assert [r[0] for r in await asyncio.gather(*held)] == [200, 200]
    assert g.rest_in_flight == 0
    assert (await call(guard, "/api/streams"))[0] == 200


async def test_guard_middleware_rate_limits_rest_per_address() -> None:
    app = SlowApp()
    app.release.set()
    now = [0.0]
    guard = Guard(app, core(rest_rate=1.0, rest_burst=2), clock=lambda: now[0])
    assert [(await call(guard, "/api/streams"))[0] for _ in range(2)] == [200, 200]
    status, headers, body = await call(guard, "/api/streams")
    assert status == 429 and headers["retry-after"] == "1" and body["retry_after"] == 1.0
    assert (await call(guard, "/api/streams", client="127.0.0.2"))[0] == 200
    now[0] = 1.0
    assert (await call(guard, "/api/streams"))[0] == 200
    assert app.served == 4


# -- --max-streams auto ---------------------------------------------------------------------
def feed(h: Headroom | Admission, cores: float, t0: float, t1: float,
         start: float = 0.0) -> float:
    """CPU at ``cores`` from t0 to t1 (0.1 s steps); returns the counter at t1."""
    t, c = t0, start
    while t < t1 - 1e-9:
        t = round(t + 0.1, 6)
        c += cores * 0.1
        h.observe_cpu(c, c * 1.5, t)
    return c


def test_rate_of_a_cumulative_counter() -> None:
    r = Rate(window=1.0)
    assert r.current(0.0) == 0.0
    c = 0.0
    for i in range(1, 51):
        c += 0.03
        r.add(c, i * 0.1)
    assert r.current(5.0) == pytest.approx(0.3, rel=1e-6)


def test_headroom_admits_while_the_predicted_loop_cpu_stays_under_the_limit() -> None:
    h = Headroom(max_cpu=0.5, window=1.0, settle=2.0, prior=0.01)
    assert not h.full(0.0, held=0)  # idle, nothing measured: the prior
    assert h.predicted(0.0, held=0) == pytest.approx(0.01)
    # 20 streams held for a while, the loop at 0.4 cores: 0.02 per stream
    c = feed(h, 0.4, 0.0, 10.0)
    assert h.per_stream(10.0, 20) == pytest.approx(0.02, rel=1e-3)
    assert h.predicted(10.0, 20) == pytest.approx(0.42, rel=1e-3)
    assert not h.full(10.0, 20)
    # five newcomers within `settle`: their cost is not measured yet, it is predicted
    for k in range(5):
        h.admit(10.0 + 0.01 * k)
    # 25 held, 5 of them unmeasured: 0.4 + 0.02 * (1 + 5) = 0.52 > 0.5
    assert h.recent(10.1, 25) == 5
    assert h.full(10.1, 25)
    # once they settled and the loop shows their cost, the rule measures again
    feed(h, 0.5, 10.0, 20.0, c)
    assert h.recent(20.0, 25) == 0
    assert h.per_stream(20.0, 25) == pytest.approx(0.02, rel=1e-3)
    assert h.full(20.0, 25)  # 0.5 + 0.02 > 0.5
    assert h.report(20.0, 25)["loop_cpu"] == pytest.approx(0.5, rel=1e-3)
    assert h.report(20.0, 25)["process_cpu"] == pytest.approx(0.75, rel=1e-3)


def test_auto_admission_refuses_a_newcomer_before_the_limit_is_reached() -> None:
    a = Admission(auto=True, max_cpu=0.3, max_loop_lag=0.5, max_ack_latency=1.0, window=1.0)
    held: list[str] = []
    t = c = 0.0
    while t < 60.0:  # a newcomer every 0.5 s; each costs the loop 0.025 cores
        if a.refusal(held, t) is None:
            held.append(f"s{len(held)}")
        for _ in range(5):
            t = round(t + 0.1, 6)
            c += (0.005 + 0.025 * len(held)) * 0.1
            a.observe_cpu(c, c, t)
    admitted = len(held)
    # 0.3 cores at 0.025 per stream (plus the idle 0.005): at most 11 fit
    assert 8 <= admitted <= 11, admitted
    assert a.state(held, t) == "full"
    why = a.refusal(held, t)
    assert why is not None and "no headroom" in why and f"{len(held)} held" in why
    # a resume is never refused by this guard (hub._admit does not ask it), and a slot
    # kept for a resuming stream counts against newcomers
    a2 = Admission(auto=True, max_cpu=0.3)
    a2.reserve([f"r{i}" for i in range(40)], now=0.0)
    assert a2.state([], 0.0) == "full"  # 40 reserved x the prior 0.01 > 0.3


def test_auto_admission_tightens_the_lag_and_ack_thresholds() -> None:
    a = Admission(auto=True, max_cpu=4.0, max_loop_lag=0.5, max_ack_latency=1.0)
    a.observe_loop_lag(0.04, 0.0)
    assert a.state([], 0.0) == "ok"
    fixed = Admission(max_streams=10, max_loop_lag=0.5)
    for k in range(1, 40):  # 0.2 s: fine for a fixed count (0.5), not for headroom (0.05)
        a.observe_loop_lag(0.2, k * 0.1)
        fixed.observe_loop_lag(0.2, k * 0.1)
    assert a.state([], 4.0) == "overloaded" and fixed.state([], 4.0) == "ok"
    b = Admission(auto=True, max_cpu=4.0, max_ack_latency=1.0)
    for k in range(40):
        b.observe_ack_latency(0.3, k * 0.1)
    assert b.state([], 4.0) == "overloaded"


# -- settings -------------------------------------------------------------------------------
def test_max_streams_auto_from_every_layer() -> None:
    def max_streams(**flat: Any) -> int | str:
        return Settings.of(**flat).admission.max_streams

    assert max_streams(max_streams="auto") == "auto"
    assert max_streams(max_streams="AUTO ") == "auto"
    assert max_streams(max_streams="12") == 12
    assert max_streams(**env_overrides({"EARSHOT_MAX_STREAMS": "auto"})) == "auto"
    assert max_streams(**env_overrides({"EARSHOT_MAX_STREAMS": "7"})) == 7
    assert max_streams(**parse_config_file('max_streams = "auto"')) == "auto"
    assert max_streams(**parse_config_file("max_streams = 5")) == 5
    assert max_streams(**parse_config_file('[admission]\nmax_streams = "auto"')) == "auto"
    for bad in ("lots", "-1"):
        with pytest.raises(ConfigError, match="max streams"):
            Settings.of(max_streams=bad)
    with pytest.raises(ConfigError, match="max_streams"):
        parse_config_file("max_streams = true")
    a = Admission.from_settings(Settings.of(max_streams="auto", max_cpu=0.5, max_subscribers=3))
    assert (a.auto, a.max_streams, a.headroom.max_cpu, a.subscribers.limit) == (True, 0, 0.5, 3)
    assert a.report([], 0.0)["max_streams"] == "auto"


def test_limit_settings_are_checked() -> None:
    s = Settings.of(**env_overrides({"EARSHOT_MAX_SUBSCRIBERS": "4", "EARSHOT_REST_RATE": "2.5",
                                     "EARSHOT_REST_BURST": "9",
                                     "EARSHOT_MAX_REST_REQUESTS": "3"})).admission
    assert (s.max_subscribers, s.rest_rate, s.rest_burst, s.max_rest_requests) == (4, 2.5, 9, 3)
    for kw in ({"max_subscribers": -1}, {"rest_rate": -1.0}, {"rest_burst": 0},
               {"max_rest_requests": -2}, {"max_cpu": 0.0}):
        with pytest.raises(ConfigError):
            Settings.of(**kw)


def test_waiting_for_a_cpu_counts_as_busy(tmp_path: Any) -> None:
    """On a shared machine the loop thread also waits to run: that wait closes the door
    as surely as its own CPU (both measured, both smoothed)."""
    alone, shared = Headroom(max_cpu=0.6, window=1.0), Headroom(max_cpu=0.6, window=1.0)
    c = w = 0.0
    for k in range(1, 101):  # 10 s: the loop runs 0.3 cores; shared, it waits 0.3 more
        c += 0.03
        w += 0.03
        alone.observe_cpu(c, c, k * 0.1, 0.0)
        shared.observe_cpu(c, c, k * 0.1, w)
    assert alone.busy(10.0) == pytest.approx(0.3, rel=1e-3)
    assert shared.busy(10.0) == pytest.approx(0.6, rel=1e-3)
    assert not alone.full(10.0, held=20)  # 0.3 + 0.015
    assert shared.full(10.0, held=20)  # 0.6 + 0.03
    assert shared.report(10.0, 20)["loop_wait"] == pytest.approx(0.3, rel=1e-3)
    stat = tmp_path / "schedstat"
    stat.write_text("123456789 2500000000 77\n")
    assert thread_wait(str(stat)) == 2.5
    assert thread_wait(str(tmp_path / "absent")) is None
    stat.write_text("garbage\n")
    assert thread_wait(str(stat)) is None
