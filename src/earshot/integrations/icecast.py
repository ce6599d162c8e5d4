"""Icecast source clients (ffmpeg ``icecast://``, BUTT, liquidsoap, ices), sans I/O.

A source connects and sends one HTTP request head, then the stream's bytes until it
closes — no ``Content-Length`` and no chunked encoding, which is why this is a small
listener of its own rather than a route behind uvicorn:

* ``PUT /MOUNT HTTP/1.1`` with ``Expect: 100-continue`` (Icecast 2.4+, ffmpeg's default):
  answered ``HTTP/1.1 100 Continue`` once accepted, then the body comes;
* ``SOURCE /MOUNT HTTP/1.0`` (``-legacy_icecast 1``, older libshout): answered
  ``HTTP/1.0 200 OK`` — but only if the client waits for it. ffmpeg's legacy mode sends
  its body at once and never reads a response; a response it leaves unread makes its
  ``close()`` a TCP reset, which can cost the receiver the stream's last bytes. So without
  ``Expect``, :class:`IcecastConnection` answers ``200 OK`` only when no body byte came
  within ``response_delay`` (0.25 s) of the acceptance (libshout waits for it; ffmpeg never
  gets one).

:func:`parse_head` checks the head: the method, the mount (the stream's name: one path
segment of letters, digits and ``_.~-``, at most 200 characters, so it is one MQTT topic
level too), ``?processors=a,b`` on
the mount, HTTP Basic credentials (user ``source``, the password is earshot's token; the
glue checks it), the ``Content-Type`` (``audio/mpeg``, ``audio/ogg``/``application/ogg``,
``audio/aac``, ``audio/flac`` and their common aliases; a ``PUT`` without one is refused, a
``SOURCE`` without one is MP3, as Icecast assumes), and keeps the ``ice-*`` headers
(``ice-name``, ``ice-description``...) for the stream's client info. Refusals are
:class:`~earshot.integrations.common.DoorError`\\ s carrying the status to answer with
(400, 405, 415, 431); :func:`response` writes any answer, ``401`` with
``WWW-Authenticate: Basic realm=...``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from earshot.integrations.common import Close, DoorError, Send

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
MAX_NAME_CHARS = 200
MAX_ICE_VALUE = 200
MAX_ICE_HEADERS = 20
HEAD_TIMEOUT = 10.0
RESPONSE_DELAY = 0.25
REALM = "earshot"
SOURCE_USER = "source"

#: Content-Type (without parameters) → PyAV demuxer
CONTENT_TYPES: dict[str, str] = {
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
    "audio/ogg": "ogg",
    "application/ogg": "ogg",
    "audio/aac": "aac",
    "audio/aacp": "aac",
    "audio/x-aac": "aac",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
}

REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 405: "Method Not Allowed", 408: "Request Timeout",
           409: "Conflict", 413: "Payload Too Large", 415: "Unsupported Media Type",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}

_NAME = re.compile(r"[\w.~-]+")  # one path segment: letters (any script), digits, _.~-
_PROCESSOR = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


@dataclass(frozen=True, slots=True)
class SourceRequest:
    """A source's request head, checked."""

    method: str  # "PUT" or "SOURCE"
    mount: str  # "/kitchen"
    name: str  # "kitchen": the stream's name
    content_type: str
    format: str  # PyAV demuxer for the body
    processors: tuple[str, ...] | None = None  # from ?processors=, None: the door's default
    user: str | None = None
    password: str | None = None
    expect_continue: bool = False
    content_length: int | None = None
    user_agent: str | None = None
    ice: Mapping[str, str] = field(default_factory=dict)  # "name", "description", ...

    @property
    def token(self) -> str | None:
        """The token presented: Basic auth's password for the user ``source``."""
        return self.password if self.user == SOURCE_USER else None

    def client_info(self) -> dict[str, Any]:
        """What the stream's ``client`` info records about this source."""
        info: dict[str, Any] = {"dialect": "icecast", "method": self.method,
                                "mount": self.mount, "content_type": self.content_type}
        if self.user_agent:
            info["user_agent"] = self.user_agent
        if self.ice:
            info["ice"] = dict(self.ice)
        return info


def _clean(value: str, limit: int = MAX_ICE_VALUE) -> str:
    return "".join(c for c in value if c.isprintable())[:limit].strip()


def _mount(target: str) -> tuple[str, str, tuple[str, ...] | None]:
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        raise DoorError("bad_mount", "the mount must be a path such as /kitchen")
    path = unquote(parts.path)
    if not path.startswith("/") or path == "/":
        raise DoorError("bad_mount", "the mount must be a path such as /kitchen")
    name = path[1:]
    if len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name) or name in (".", ".."):
        raise DoorError("bad_mount", f"mount {path[:80]!r} is not a valid name: one path "
                        f"segment of letters, digits and _.~-, at most {MAX_NAME_CHARS}")
    processors: list[str] | None = None
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key != "processors":
            continue
        processors = processors or []
        for p in value.split(","):
            p = p.strip()
            if not p:
                continue
            if not _PROCESSOR.fullmatch(p):
                raise DoorError("bad_processors", f"processor {p[:40]!r} is not a name")
            processors.append(p)
    return path, name, tuple(processors) if processors is not None else None


def _basic(value: str | None) -> tuple[str | None, str | None]:
    if not value:
        return None, None
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise DoorError("bad_auth", "the Authorization header is not valid Basic auth",
                        status=401) from None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else (user, None)


def parse_head(head: bytes) -> SourceRequest:
    """A source request's head (up to and without the blank line) → :class:`SourceRequest`,
    or a :class:`DoorError` whose ``status`` is the answer (400, 405, 415)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes any byte; kept for clarity
        raise DoorError("bad_request", "unreadable request head") from None
    lines = text.replace("\r\n", "\n").split("\n")
    request_line, header_lines = lines[0], [line for line in lines[1:] if line]
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise DoorError("bad_request", "the request line must be 'METHOD /MOUNT HTTP/1.x'")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise DoorError("bad_request", f"protocol {version[:20]!r} is not HTTP/1.0 or 1.1")
    if method not in ("PUT", "SOURCE"):
        raise DoorError("method_not_allowed",
                        f"{method[:20]} is not a source request: send PUT or SOURCE",
                        status=405)
    if len(header_lines) > MAX_HEADERS:
        raise DoorError("bad_request", f"more than {MAX_HEADERS} header lines", status=431)
    headers: dict[str, str] = {}
    for line in header_lines:
        key, sep, value = line.partition(":")
        if not sep or not key.strip() or key != key.strip():
            raise DoorError("bad_request", f"malformed header line {line[:60]!r}")
        headers[key.lower()] = value.strip()
    mount, name, processors = _mount(target)
    if "transfer-encoding" in headers:
        raise DoorError("bad_request", "a source's body is sent raw, without "
                        "Transfer-Encoding (as Icecast sources do)")
    content_length: int | None = None
    if "content-length" in headers:
        raw = headers["content-length"]
        if not raw.isdigit():
            raise DoorError("bad_request", f"Content-Length {raw[:20]!r} is not a number")
        content_length = int(raw)
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if not content_type:
        if method == "PUT":
            raise DoorError("no_content_type", "a PUT source must say its Content-Type: "
                            + ", ".join(sorted(CONTENT_TYPES)))
        content_type = "audio/mpeg"  # what Icecast assumes of a SOURCE without one
    fmt = CONTENT_TYPES.get(content_type)
    if fmt is None:
        raise DoorError("unsupported_content_type",
                        f"Content-Type {content_type[:60]!r} is not supported; send one of "
                        + ", ".join(sorted(CONTENT_TYPES)), status=415)
    user, password = _basic(headers.get("authorization"))
    ice: dict[str, str] = {}
    for key, value in headers.items():
        if key.startswith("ice-") and len(ice) < MAX_ICE_HEADERS:
            ice[key[4:]] = _clean(value)
    agent = headers.get("user-agent")
    return SourceRequest(
        method=method, mount=mount, name=name, content_type=content_type, format=fmt,
        processors=processors, user=user, password=password,
        expect_continue=headers.get("expect", "").lower() == "100-continue",
        content_length=content_length, user_agent=_clean(agent) if agent else None, ice=ice)


def response(status: int, message: str = "", *, realm: str | None = None,
             headers: Mapping[str, str] | None = None) -> bytes:
    """An HTTP answer to a source: a status line, a few headers and ``message`` as text.
    With ``realm`` (for 401), ``WWW-Authenticate: Basic realm="REALM"``."""
    if status == 100:
        return b"HTTP/1.1 100 Continue\r\n\r\n"
    version = "HTTP/1.0"
    body = (message + "\n").encode("utf-8") if message else b""
    lines = [f"{version} {status} {REASONS.get(status, 'Error')}", "Server: earshot"]
    if realm is not None:
        lines.append(f'WWW-Authenticate: Basic realm="{realm}"')
    if status == 405:
        lines.append("Allow: PUT, SOURCE")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if status != 200:
        lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}",
                  "Connection: close"]
    else:
        body = b""
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- one connection -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceRequested:
    """The head is in and well formed: the glue checks the token (``request.token``) and
    that the mount is free, then calls :meth:`IcecastConnection.accept` or ``refuse``."""

    request: SourceRequest


@dataclass(frozen=True, slots=True)
class Body:
    """Bytes of the stream, exactly as sent (to a :class:`~earshot.integrations.decode.
    StreamDecoder` with ``request.format``)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class BodyEnd:
    """A body with a ``Content-Length`` is complete (otherwise the end is the close)."""


IcecastAction = SourceRequested | Body | BodyEnd | Send | Close


class IcecastConnection:
    """One source connection, sans I/O: bytes and time in, actions out."""

    def __init__(self, now: float, *, max_head: int = MAX_HEAD_BYTES,
                 head_timeout: float = HEAD_TIMEOUT,
                 response_delay: float = RESPONSE_DELAY) -> None:
        self.state = "head"  # head | deciding | streaming | closed
        self.max_head = max_head
        self.request: SourceRequest | None = None
        self.response_delay = response_delay
        self._buf = bytearray()
        self._deadline: float | None = now + head_timeout  # of the head, then of the 200
        self._remaining: int | None = None
        self.received = 0  # body bytes passed on

    @property
    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do (None: nothing scheduled)."""
        return self._deadline

    def receive(self, data: bytes, now: float) -> list[IcecastAction]:
        if self.state == "closed" or not data:
            return []
        if self.state == "head":
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            sep = 4
            if end < 0:
                end, sep = self._buf.find(b"\n\n"), 2
            if end < 0:
                if len(self._buf) > self.max_head:
                    return self.refuse(DoorError("head_too_large", "request head larger than "
                                                 f"{self.max_head} bytes", status=431))
                return []
            head = bytes(self._buf[:end])
            del self._buf[:end + sep]
            try:
                self.request = parse_head(head)
            except DoorError as exc:
                return self.refuse(exc)
            self.state = "deciding"
            self._deadline = None
            return [SourceRequested(self.request)]
        if self.state == "deciding":
            self._buf += data
            if len(self._buf) > self.max_head * 64:
                return self.refuse(DoorError("not_accepted", "body sent before acceptance",
                                             status=400))
            return []
        # streaming
        self._deadline = None  # the client sends without waiting: no 200 for it
        return self._body(data)

    def _body(self, data: bytes) -> list[IcecastAction]:
        if self._remaining is not None:
            data = data[:self._remaining]
            self._remaining -= len(data)
        self.received += len(data)
        out: list[IcecastAction] = [Body(bytes(data))] if data else []
        if self._remaining == 0:
            self.state = "closed"
            out.append(BodyEnd())
        return out

    def accept(self, now: float) -> list[IcecastAction]:
        """The source may stream: answer it (see the module docstring) and pass on any
        body that came with the head."""
        assert self.state == "deciding" and self.request is not None
        self.state = "streaming"
        self._remaining = self.request.content_length
        early, self._buf = bytes(self._buf), bytearray()
        out: list[IcecastAction] = []
        if self.request.expect_continue:
            out.append(Send(response(100)))
        elif not early:
            self._deadline = now + self.response_delay
        if early or self._remaining == 0:
            out += self._body(early)
        return out

    def refuse(self, exc: DoorError) -> list[IcecastAction]:
        """Answer with ``exc.status`` (401 gets ``WWW-Authenticate``) and close."""
        self.state = "closed"
        self._deadline = None
        realm = REALM if exc.status == 401 else None
        return [Send(response(exc.status, exc.message, realm=realm)), Close()]

    def tick(self, now: float) -> list[IcecastAction]:
        if self._deadline is None or now < self._deadline:
            return []
        if self.state == "head":
            return self.refuse(DoorError("head_timeout", "the request head did not come in "
                                         "time", status=408))
        self._deadline = None
        if self.state == "streaming" and self.received == 0:
            return [Send(response(200))]  # the client waits for its answer to send
        return []
