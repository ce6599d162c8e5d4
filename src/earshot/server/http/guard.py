"""Who may talk to the server: Origin and Host checks, per-address rate limits.

Pure decisions first (strings and times in, verdicts out; no sockets), then :class:`Guard`,
a small ASGI middleware that applies them to every HTTP request and WebSocket handshake.

* **Origin** (WebSocket handshakes; browsers send it, other clients do not): accepted when
  absent, equal to the server's own origin (the ``Host`` the request was sent to), a
  loopback origin (``http://localhost:*``, ``http://127.0.0.1:*``, ``http://[::1]:*``) or
  listed in ``--allowed-origins``; anything else is refused with HTTP 403. Without this,
  any web page the user visits could open ``ws://127.0.0.1:8000/ws/subscribe?stream=*``.
* **Host** (every request, only when the server listens on loopback): a DNS-rebinding page
  reaches 127.0.0.1 under its own name (``Host: evil.example:8000``, and its Origin then
  looks like the server's own). Only loopback names and the hosts of
  ``--allowed-origins`` are accepted; others get 403.
* **Rate limits** per client address (the real one behind a trusted proxy): a token bucket
  for new WebSocket connections and one for failed authentications (HTTP 401, close 4401
  or 4403). An address out of either gets HTTP 429 with a ``rate_limited`` error and a
  ``Retry-After``; an address out of failed-auth budget is refused everything but
  ``/healthz`` until it refills, so a token cannot be guessed faster than the refill rate.
* **REST limits**, apart from the WebSocket ones (so REST never takes a publisher's or a
  subscriber's place): a token bucket of HTTP requests per client address
  (``--rest-rate``/``--rest-burst``) and a cap on requests in flight at once over all
  addresses (``--max-rest-requests``; a download holds its place until its last byte).
  Past either: HTTP 429, ``rate_limited``, ``Retry-After``. ``/healthz`` is never limited.
  One address may hold at most ``--max-rest-per-client`` of those places at once (so 64
  slow readers from one address cannot take them all), and a response whose client stops
  reading for ``--rest-send-timeout`` seconds is abandoned (its connection closed).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from earshot.wire.codes import Close, Code

log = logging.getLogger("earshot.guard")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
#: close codes that mean "your credentials were wrong" (see earshot.wire.codes.FATAL_CLOSE)
AUTH_FAILURE_CLOSES = frozenset({Close.UNAUTHORIZED, Close.FORBIDDEN})
UNGUARDED_PATHS = frozenset({"/healthz"})
#: the page's own files (small, served at once): under the REST request rate, but not held
#: as requests in flight, so a browser fetching the page's modules in parallel (six
#: connections per host) never finds the page half-loaded by --max-rest-per-client
PAGE_PREFIX = "/web/"


def page_file(path: str) -> bool:
    """A file of the page (``/``, ``/web/...``), not an API call or a download."""
    return path == "/" or path.startswith(PAGE_PREFIX)


# -- Origin and Host ------------------------------------------------------------------------
def is_loopback_host(host: str) -> bool:
    """``localhost``, ``*.localhost`` (browsers pin it to loopback), 127.0.0.0/8, ::1."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_host(value: str, scheme: str = "http") -> tuple[str, int] | None:
    """``host[:port]`` (a Host header or an origin's netloc) → (hostname, port), or None."""
    try:
        parts = urlsplit("//" + value.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    return host.lower().rstrip("."), port if port is not None else DEFAULT_PORTS.get(scheme, 80)


def parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` → (scheme, hostname, port), or None when it is not one."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or parts.path not in ("", "/") or parts.query:
        return None
    hp = split_host(parts.netloc, scheme)
    return None if hp is None else (scheme, hp[0], hp[1])


def normalize_origin(origin: str) -> str:
    """The canonical spelling of an origin (lower case, default port dropped); ``*`` and
    ``null`` stay as they are; anything unparsable is returned stripped and lower-cased."""
    origin = origin.strip().rstrip("/")
    if origin in ("*", "null"):
        return origin
    parsed = parse_origin(origin)
    if parsed is None:
        return origin.lower()
    scheme, host, port = parsed
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}" + ("" if DEFAULT_PORTS[scheme] == port else f":{port}")


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """``allowed``: normalized origins let in besides the defaults (``*``: every origin).
    ``check_host``: refuse a ``Host`` that is neither loopback nor one of the allowed
    origins' hosts (on when the server listens on loopback: the DNS-rebinding guard)."""

    allowed: frozenset[str] = frozenset()
    check_host: bool = False

    @classmethod
    def build(cls, allowed: Iterable[str], *, bind_host: str) -> OriginPolicy:
        """From ``--allowed-origins`` entries (each may itself be comma-separated)."""
        items = {normalize_origin(o) for entry in allowed for o in entry.split(",") if o.strip()}
        return cls(frozenset(items), check_host=is_loopback_host(bind_host))

    @property
    def allowed_hosts(self) -> frozenset[str]:
        hosts = set()
        for o in self.allowed:
            parsed = parse_origin(o)
            if parsed is not None:
                hosts.add(parsed[1])
        return frozenset(hosts)

    def host_ok(self, host: str | None) -> bool:
        """Is a request sent to this ``Host`` header acceptable?"""
        if not self.check_host or host is None or "*" in self.allowed:
            return True
        hp = split_host(host)
        if hp is None:
            return False
        return is_loopback_host(hp[0]) or hp[0] in self.allowed_hosts

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        """May a WebSocket handshake with this ``Origin``, sent to this ``Host``, proceed?"""
        if origin is None:
            return True  # not a browser (or a browser's same-origin request without one)
        if "*" in self.allowed or normalize_origin(origin) in self.allowed:
            return True
        parsed = parse_origin(origin)
        if parsed is None:
            return False  # "null" (sandboxed frames, file:// pages) or garbage
        scheme, o_host, o_port = parsed
        if scheme in ("http", "https") and is_loopback_host(o_host):
            return True
        if host is not None:
            hp = split_host(host, scheme)
            if hp is not None and hp == (o_host, o_port):
                return True  # the server's own origin
        return False


# -- rate limits ----------------------------------------------------------------------------
@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, at most ``burst``; starts full. Time is passed in."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, float(burst), now)

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def take(self, now: float, n: float = 1.0) -> bool:
        """Spend ``n`` tokens if there are that many; True if spent."""
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def drain(self, now: float, n: float = 1.0) -> None:
        """Spend ``n`` tokens, down to zero at most (a failure is counted even when empty)."""
        self._refill(now)
        self.tokens = max(0.0, self.tokens - n)

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def retry_after(self, now: float, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are there."""
        self._refill(now)
        if self.tokens >= n or self.rate <= 0:
            return 0.0
        return (n - self.tokens) / self.rate


class KeyedBuckets:
    """One :class:`TokenBucket` per key (client address), least recently used dropped past
    ``max_keys`` so that memory stays bounded. ``rate <= 0`` turns the limit off."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 65536) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def bucket(self, key: str, now: float) -> TokenBucket:
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = TokenBucket.full(self.rate, self.burst, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return b

    def take(self, key: str, now: float) -> float:
        """Spend one token; 0.0 if it was there, else the seconds to wait for one."""
        if not self.enabled:
            return 0.0
        b = self.bucket(key, now)
        return 0.0 if b.take(now) else max(b.retry_after(now), 1e-3)

    def blocked_for(self, key: str, now: float) -> float:
        """Seconds until ``key`` has a token again (0.0 when it has one); spends nothing."""
        if not self.enabled or key not in self._buckets:
            return 0.0
        b = self.bucket(key, now)
        return 0.0 if b.available(now) >= 1 else max(b.retry_after(now), 1e-3)

    def drain(self, key: str, now: float) -> None:
        if self.enabled:
            self.bucket(key, now).drain(now)


# -- the verdict ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # HTTP status of the refusal
    code: str  # the earshot error code
    message: str
    retry_after: float | None = None
    limit: str = ""  # which limit refused it (REST: "rate" or "concurrency")

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message,
                               "detail": self.message}
        if self.retry_after is not None:
            out["retry_after"] = round(self.retry_after, 3)
        return out


class GuardCore:
    """The decisions of :class:`Guard`, free of I/O: call :meth:`admit` for each request
    and :meth:`auth_failed` when one was refused for its credentials."""

    def __init__(self, policy: OriginPolicy, *, conn_rate: float, conn_burst: float,
                 auth_fail_rate: float, auth_fail_burst: float, rest_rate: float = 0.0,
                 rest_burst: float = 1.0, max_rest_requests: int = 0,
                 max_rest_per_client: int = 0) -> None:
        self.policy = policy
        self.connections = KeyedBuckets(conn_rate, conn_burst)
        self.auth_failures = KeyedBuckets(auth_fail_rate, auth_fail_burst)
        self.rest = KeyedBuckets(rest_rate, rest_burst)
        self.max_rest_requests = max_rest_requests
        self.max_rest_per_client = max_rest_per_client
        self.rest_in_flight = 0
        self.rest_by_client: dict[str, int] = {}  # in flight, per address (none: absent)
        self.rest_refused = {"rate": 0, "concurrency": 0, "per_client": 0}

    def enter_rest(self, client: str, now: float, *, held: bool = True) -> Refusal | None:
        """An HTTP request admitted by :meth:`admit`: within its address's request rate and
        (``held``) the caps on requests in flight? None: a held request counts as in flight
        until :meth:`leave_rest`; one not held (the page's files, :func:`page_file`) only
        takes its place in the rate."""
        wait = self.rest.take(client, now)
        if wait:
            self.rest_refused["rate"] += 1
            return Refusal(429, Code.RATE_LIMITED,
                           f"too many requests from {client}; retry in {wait:.1f} s", wait,
                           "rate")
        if not held:
            return None
        mine = self.rest_by_client.get(client, 0)
        if self.max_rest_per_client and mine >= self.max_rest_per_client:
            self.rest_refused["per_client"] += 1
            return Refusal(429, Code.RATE_LIMITED,
                           f"{client} has {mine} requests in flight, the most one address "
                           "may have at once; retry in 1 s", 1.0, "per_client")
        if self.max_rest_requests and self.rest_in_flight >= self.max_rest_requests:
            self.rest_refused["concurrency"] += 1
            return Refusal(429, Code.RATE_LIMITED,
                           f"the server is serving its maximum of {self.max_rest_requests} "
                           "requests at once; retry in 1 s", 1.0, "concurrency")
        self.rest_in_flight += 1
        self.rest_by_client[client] = mine + 1
        return None

    def leave_rest(self, client: str = "") -> None:
        self.rest_in_flight = max(0, self.rest_in_flight - 1)
        left = self.rest_by_client.get(client, 0) - 1
        if left > 0:
            self.rest_by_client[client] = left
        else:
            self.rest_by_client.pop(client, None)

    def report(self) -> dict[str, Any]:
        """For /healthz: the REST limits and where they stand."""
        return {"in_flight": self.rest_in_flight, "max_requests": self.max_rest_requests,
                "max_per_client": self.max_rest_per_client,
                "rate": self.rest.rate, "burst": self.rest.burst,
                "refused": dict(self.rest_refused)}

    def admit(self, *, websocket: bool, path: str, client: str, host: str | None,
              origin: str | None, now: float) -> Refusal | None:
        if not self.policy.host_ok(host):
            return Refusal(403, Code.HOST_NOT_ALLOWED,
                           f"requests for host {host!r} are refused (DNS rebinding guard): "
                           "add its origin to --allowed-origins")
        if websocket and not self.policy.origin_ok(origin, host):
            return Refusal(403, Code.ORIGIN_NOT_ALLOWED,
                           f"WebSocket connections from origin {origin!r} are refused: "
                           "add it to --allowed-origins")
        if path in UNGUARDED_PATHS:
            return None
        wait = self.auth_failures.blocked_for(client, now)
        if wait:
            return Refusal(429, Code.RATE_LIMITED,
                           f"too many failed authentication attempts from {client}; "
                           f"retry in {wait:.1f} s", wait)
        if websocket:
            wait = self.connections.take(client, now)
            if wait:
                return Refusal(429, Code.RATE_LIMITED,
                               f"too many new connections from {client}; retry in {wait:.1f} s",
                               wait)
        return None

    def auth_failed(self, client: str, now: float) -> None:
        self.auth_failures.drain(client, now)


# -- the ASGI middleware --------------------------------------------------------------------
class SendTimeout(Exception):
    """A REST client read nothing for the send timeout."""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class Guard:
    """ASGI middleware applying a :class:`GuardCore` (build it with :meth:`from_settings`)."""

    def __init__(self, app: ASGIApp, core: GuardCore,
                 clock: Callable[[], float] = time.monotonic, metrics: Any = None,
                 send_timeout: float = 0.0) -> None:
        self.app = app
        self.core = core
        self.clock = clock
        self.metrics = metrics  # earshot.server.metrics.Metrics: refusals by code
        self.send_timeout = send_timeout  # REST: seconds a client may not read (0: none)

    @classmethod
    def from_settings(cls, app: ASGIApp, settings: Any, metrics: Any = None,
                      state: Any = None) -> Guard:
        """``state`` (the app's): gets ``.guard``, the core, for /healthz."""
        sec, adm = settings.security, settings.admission
        policy = OriginPolicy.build(sec.allowed_origins, bind_host=settings.server.host)
        core = GuardCore(policy, conn_rate=sec.conn_rate, conn_burst=sec.conn_burst,
                         auth_fail_rate=sec.auth_fail_rate, auth_fail_burst=sec.auth_fail_burst,
                         rest_rate=adm.rest_rate, rest_burst=adm.rest_burst,
                         max_rest_requests=adm.max_rest_requests,
                         max_rest_per_client=adm.max_rest_per_client)
        if state is not None:
            state.guard = core
        return cls(app, core, metrics=metrics, send_timeout=adm.rest_send_timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        addr = str(client[0]) if client else "unknown"
        path = scope.get("path", "")
        refusal = self.core.admit(
            websocket=kind == "websocket", path=path, client=addr,
            host=_header(scope, b"host"), origin=_header(scope, b"origin"), now=self.clock())
        rest = kind == "http" and path not in UNGUARDED_PATHS
        if refusal is None and rest:
            held = not page_file(path)
            refusal = self.core.enter_rest(addr, self.clock(), held=held)
            if refusal is not None and self.metrics is not None:
                self.metrics.rest_refused.labels(refusal.limit).inc()
            rest = held
        else:
            rest = False  # refused before it counted
        if refusal is not None:
            log.warning("refused %s %s from %s: %s", "WebSocket" if kind == "websocket" else
                        scope.get("method", "?"), path, addr, refusal.code)
            if self.metrics is not None:
                self.metrics.errors.labels(refusal.code).inc()
            await self._refuse(scope, send, refusal)
            return
        if rest:
            self._show_rest()
            try:
                await self._serve(scope, receive, self._timed(send), kind, addr, path)
            except SendTimeout:
                # returning with the response unfinished makes the server close the
                # connection (uvicorn logs that it did): the place is free again
                log.warning("abandoned %s %s to %s: it read nothing for %g s",
                            scope.get("method", "?"), path, addr, self.send_timeout)
                if self.metrics is not None:
                    self.metrics.rest_refused.labels("send_timeout").inc()
            finally:
                self.core.leave_rest(addr)
                self._show_rest()
            return
        await self._serve(scope, receive, send, kind, addr, path)

    def _timed(self, send: Send) -> Send:
        """``send`` that gives up (:class:`SendTimeout`) on a client not reading."""
        timeout = self.send_timeout
        if timeout <= 0:
            return send

        async def timed(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), timeout)
            except TimeoutError:
                raise SendTimeout from None

        return timed

    def _show_rest(self) -> None:
        if self.metrics is not None:
            self.metrics.rest_in_flight.set(self.core.rest_in_flight)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, kind: str, addr: str,
                     path: str) -> None:
        failed = False

        async def watch(message: Message) -> None:
            nonlocal failed
            t = message["type"]
            if not failed and (
                (t == "http.response.start" and message.get("status") == 401)
                or (t == "websocket.close" and message.get("code") in AUTH_FAILURE_CLOSES)
            ):
                failed = True
                self.core.auth_failed(addr, self.clock())
                # never the token: only who, where, and what was refused
                log.warning("failed authentication from %s on %s %s", addr,
                            "WebSocket" if kind == "websocket" else scope.get("method", "?"),
                            path)
            await send(message)

        await self.app(scope, receive, watch)

    async def _refuse(self, scope: Scope, send: Send, refusal: Refusal) -> None:
        body = json.dumps(refusal.body()).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        if refusal.retry_after is not None:
            headers.append((b"retry-after", str(max(1, math.ceil(refusal.retry_after))).encode()))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": refusal.status,
                        "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif "websocket.http.response" in (scope.get("extensions") or {}):
            await send({"type": "websocket.http.response.start", "status": refusal.status,
                        "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:  # a server without the extension: a close before accept is an HTTP 403
            await send({"type": "websocket.close", "code": Close.POLICY, "reason": refusal.code})
