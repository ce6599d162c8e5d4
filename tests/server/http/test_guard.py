"""The pure decisions of earshot.server.http.guard: Origin, Host, token buckets."""

from __future__ import annotations

import pytest

from earshot.server.http.guard import (
    GuardCore,
    KeyedBuckets,
    OriginPolicy,
    TokenBucket,
    is_loopback_host,
    normalize_origin,
)


def loopback(*allowed: str) -> OriginPolicy:
    return OriginPolicy.build(allowed, bind_host="127.0.0.1")


@pytest.mark.parametrize("origin", [
    None, "http://127.0.0.1:8000", "http://127.0.0.1:9999", "http://localhost:3000",
    "http://localhost", "https://localhost:8443", "http://[::1]:8000", "http://127.0.0.2:80",
    "http://app.localhost:5173",
])
def test_default_origins_accepted(origin: str | None) -> None:
    assert loopback().origin_ok(origin, "127.0.0.1:8000")


@pytest.mark.parametrize("origin", [
    "https://evil.example", "http://evil.example:8000", "null", "file://", "garbage",
    "http://127.0.0.1.evil.example", "ftp://127.0.0.1", "http://localhost.evil.example",
    "http://[::ffff:8.8.8.8]",
])
def test_foreign_origins_refused(origin: str) -> None:
    assert not loopback().origin_ok(origin, "127.0.0.1:8000")


def test_own_origin_by_host_header() -> None:
    public = OriginPolicy.build((), bind_host="0.0.0.0")
    assert public.origin_ok("https://audio.example.com", "audio.example.com")
    assert public.origin_ok("https://audio.example.com:443", "audio.example.com")
    assert public.origin_ok("http://audio.example.com:8000", "AUDIO.example.com:8000")
    assert not public.origin_ok("http://audio.example.com:8001", "audio.example.com:8000")
    assert not public.origin_ok("https://audio.example.com", "audio.example.com:8000")
    assert not public.origin_ok("https://other.example.com", "audio.example.com")


def test_allowed_origins_listed_and_star() -> None:
    p = loopback("https://evil.example,https://App.Example.com:443/", "http://x.test:81")
    assert p.origin_ok("https://evil.example", "127.0.0.1:8000")
    assert p.origin_ok("https://app.example.com", "127.0.0.1:8000")
    assert p.origin_ok("http://x.test:81", "127.0.0.1:8000")
    assert not p.origin_ok("http://x.test:82", "127.0.0.1:8000")
    assert not p.origin_ok("https://evil.example.org", "127.0.0.1:8000")
    assert loopback("*").origin_ok("https://anything.example", "127.0.0.1:8000")
    assert loopback("null").origin_ok("null", "127.0.0.1:8000")
    assert normalize_origin("HTTPS://A.example:443/") == "https://a.example"


def test_dns_rebinding_host_check() -> None:
    p = loopback("https://audio.example.com")
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost", None,
                 "audio.example.com", "audio.example.com:8000"):
        assert p.host_ok(host), host
    for host in ("evil.example:8000", "evil.example", "127.0.0.1.nip.io:8000", "", "[bad"):
        assert not p.host_ok(host), host
    # a rebinding page's origin equals its Host: the origin check alone would let it in
    core = GuardCore(p, conn_rate=0, conn_burst=1, auth_fail_rate=0, auth_fail_burst=1)
    r = core.admit(websocket=True, path="/ws", client="127.0.0.1", host="evil.example:8000",
                   origin="http://evil.example:8000", now=0.0)
    assert r is not None and r.status == 403 and r.code == "host_not_allowed"
    # not bound to loopback: no Host check (the token guards a public server)
    assert OriginPolicy.build((), bind_host="0.0.0.0").host_ok("evil.example")


def test_loopback_names() -> None:
    assert all(map(is_loopback_host, ["localhost", "LOCALHOST.", "a.localhost", "127.9.9.9",
                                      "::1", "[::1]"]))
    assert not any(map(is_loopback_host, ["localhost.evil", "10.0.0.1", "0.0.0.0", "::",
                                          "evil.example", ""]))


def test_token_bucket_refill_and_cap() -> None:
    b = TokenBucket.full(rate=2.0, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.retry_after(0.0) == pytest.approx(0.5)
    assert b.take(0.5) and not b.take(0.5)
    assert b.available(100.0) == 3  # capped at the burst
    b.drain(100.0, 10)
    assert b.available(100.0) == 0
    assert b.available(99.0) == 0  # time going backwards never adds tokens


def test_keyed_buckets_are_per_address_and_bounded() -> None:
    kb = KeyedBuckets(rate=1.0, burst=2, max_keys=100)
    assert kb.take("a", 0) == 0 and kb.take("a", 0) == 0
    assert kb.take("a", 0) == pytest.approx(1.0)
    assert kb.take("b", 0) == 0  # another address has its own budget
    for i in range(1000):
        kb.take(f"x{i}", 1.0)
    assert len(kb) == 100
    off = KeyedBuckets(rate=0, burst=1)
    assert all(off.take("a", 0) == 0 for _ in range(10)) and len(off) == 0


def test_core_rate_limits() -> None:
    core = GuardCore(loopback(), conn_rate=1.0, conn_burst=2, auth_fail_rate=0.5,
                     auth_fail_burst=2)

    def ws(client: str = "1.2.3.4", now: float = 0.0, path: str = "/ws") -> object:
        return core.admit(websocket=True, path=path, client=client, host="127.0.0.1:8000",
                          origin=None, now=now)

    assert ws() is None and ws() is None
    r = ws()
    assert r is not None and r.status == 429 and r.code == "rate_limited"
    assert r.retry_after == pytest.approx(1.0) and "retry in 1.0 s" in r.message
    assert ws(client="5.6.7.8") is None
    assert ws(now=1.0) is None
    # HTTP requests do not spend connection tokens
    assert all(core.admit(websocket=False, path="/api/streams", client="1.2.3.4",
                          host=None, origin=None, now=1.0) is None for _ in range(10))
    # failed authentications: after the burst, everything but /healthz is refused
    core.auth_failed("9.9.9.9", 0.0)
    assert core.admit(websocket=False, path="/api/streams", client="9.9.9.9", host=None,
                      origin=None, now=0.0) is None
    core.auth_failed("9.9.9.9", 0.0)
    r = core.admit(websocket=False, path="/api/streams", client="9.9.9.9", host=None,
                   origin=None, now=0.0)
    assert r is not None and r.code == "rate_limited" and r.retry_after == pytest.approx(2.0)
    assert "failed authentication" in r.message
    assert core.admit(websocket=False, path="/healthz", client="9.9.9.9", host=None,
                      origin=None, now=0.0) is None
    assert core.admit(websocket=False, path="/api/streams", client="9.9.9.9", host=None,
                      origin=None, now=2.0) is None
