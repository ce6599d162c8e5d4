"""A request-head deadline for uvicorn's HTTP protocol (uvicorn has none of its own).

A client that opens a connection — over TLS, once the handshake is done — and then sends
its request head slowly, or never, is closed after ``--header-timeout`` seconds, so
half-open sockets cannot pile up (slowloris). The deadline covers the first request
head only; between requests uvicorn's keep-alive timeout applies, and a connection
upgraded to a WebSocket is the WebSocket protocol's from then on.

``earshot serve`` passes :func:`protocol` as uvicorn's ``http`` class. The seconds are
read from ``EARSHOT_HEADER_TIMEOUT`` (the option's own variable; ``earshot serve`` sets it
from the settings before uvicorn starts, so every gateway process reads the same value).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

ENV = "EARSHOT_HEADER_TIMEOUT"
DEFAULT = 10.0


def seconds() -> float:
    try:
        value = float(os.environ.get(ENV, DEFAULT))
    except ValueError:
        return DEFAULT
    return value if value > 0 else DEFAULT


class HeadDeadline:
    """The mixin: a timer from ``connection_made`` until the first request head is in."""

    _head_timer: asyncio.TimerHandle | None = None
    transport: Any
    cycle: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._head_timer = asyncio.get_running_loop().call_later(seconds(), self._head_late)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._head_timer is not None and self.cycle is not None:
            self._head_timer.cancel()  # a request head came in whole
            self._head_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _head_late(self) -> None:
        self._head_timer = None
        transport = self.transport
        if self.cycle is None and transport.get_protocol() is self and not transport.is_closing():
            transport.close()  # no request head in time (an upgraded socket is not ours)


def protocol() -> type:
    """uvicorn's HTTP protocol (httptools when installed, as uvicorn's ``auto``, else h11)
    with the deadline."""
    return HeadDeadlineHttpTools if HTTPTOOLS else HeadDeadlineH11


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    HTTPTOOLS = True
except ImportError:  # (no httptools: h11 only)
    HTTPTOOLS = False
    HttpToolsProtocol = H11Protocol  # type: ignore[misc, assignment]


class HeadDeadlineH11(HeadDeadline, H11Protocol):
    pass


class HeadDeadlineHttpTools(HeadDeadline, HttpToolsProtocol):
    pass
