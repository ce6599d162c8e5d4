"""The asyncio layer around :class:`~earshot.client.protocol.PublisherProtocol`.

:func:`deliver` is all the I/O a publisher does, in the manner of python-websockets'
``asyncio/connection.py``: open a WebSocket, tell the core, write what
:meth:`~earshot.client.protocol.PublisherProtocol.next_message` gives, feed every text
message to :meth:`~earshot.client.protocol.PublisherProtocol.receive_text`, pass the events on,
honour the core's timer, and when the connection ends, sleep or stop as the core decides.
Every rule (what to send, when to give up, how long to back off) is the core's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from earshot.client.protocol import Decision, Done, Failed, PublisherProtocol, RetryIn
from earshot.client.transport import handshake_refusal, ws_options

__all__ = ["Endpoint", "deliver"]

log = logging.getLogger("earshot.client")
EventSink = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect: the ingest URL, the bearer token (sent as a header), a TLS
    context for ``wss://`` (default: the system's CAs) and the handshake timeout."""

    url: str
    token: str | None = None
    ssl: SSLContext | None = None
    open_timeout: float = 10.0


async def deliver(core: PublisherProtocol, endpoint: Endpoint, *, wake: asyncio.Event,
                  on_event: EventSink | None = None,
                  on_progress: Callable[[], None] | None = None) -> Done | Failed:
    """Run ``core`` over as many connections as it takes, until it is done or failed.

    ``wake`` is set by whoever gives the core audio (or stops it): the writer sends what the
    core has. ``on_event`` gets the core's events; ``on_progress`` is called after every
    server message (acks free room in the buffer)."""
    while True:
        decision = core.connecting()
        if decision is None:
            decision = await _connection(core, endpoint, wake, on_event, on_progress)
        _dispatch(core, on_event)
        if isinstance(decision, RetryIn):
            await asyncio.sleep(decision.delay)
            continue
        return decision


def _dispatch(core: PublisherProtocol, on_event: EventSink | None) -> None:
    events = core.events_received()
    if on_event is not None:
        for event in events:
            on_event(event)


async def _connection(core: PublisherProtocol, endpoint: Endpoint, wake: asyncio.Event,
                      on_event: EventSink | None,
                      on_progress: Callable[[], None] | None) -> Decision:
    url = endpoint.url
    headers = {"Authorization": f"Bearer {endpoint.token}"} if endpoint.token else None
    try:
        ws = await connect(url, additional_headers=headers, max_size=None, compression=None,
                           open_timeout=endpoint.open_timeout, ping_interval=10,
                           ping_timeout=10, close_timeout=2, **ws_options(url, endpoint.ssl))
    except InvalidURI as exc:
        return core.fail(None, f"bad server URL {url!r}: {exc}")
    except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
        return core.connection_failed(str(exc) or type(exc).__name__, handshake_refusal(exc))
    loop = asyncio.get_running_loop()
    try:
        core.connected(loop.time())
        writer = asyncio.create_task(_write(ws, core, wake), name="earshot-publisher-writer")
        try:
            await _read(ws, core, wake, on_event, on_progress)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await writer
    finally:
        await ws.close()
    return core.connection_lost(ws.close_code, ws.close_reason or "")


async def _read(ws: ClientConnection, core: PublisherProtocol, wake: asyncio.Event,
                on_event: EventSink | None, on_progress: Callable[[], None] | None) -> None:
    loop = asyncio.get_running_loop()
    while not core.close_expected():
        timer = core.get_timer()
        try:
            if timer is None:
                raw = await ws.recv()
            else:  # (cancelling recv() is safe: nothing is lost)
                raw = await asyncio.wait_for(ws.recv(), max(0.0, timer - loop.time()))
        except TimeoutError:
            core.handle_timer(loop.time())
            continue
        except ConnectionClosed:
            return
        if isinstance(raw, str):  # (the ingest socket sends no binary; ignored)
            state = core.state
            core.receive_text(raw, loop.time())
            _dispatch(core, on_event)
            if core.state is not state:
                wake.set()  # 'ready' lets audio flow (the writer sleeps through acks)
            if on_progress is not None:
                on_progress()


async def _write(ws: ClientConnection, core: PublisherProtocol, wake: asyncio.Event) -> None:
    try:
        while True:
            wake.clear()
            while (message := core.next_message()) is not None:
                await ws.send(message)
            if core.close_expected():  # decided while producing (a buffer that lost audio)
                await ws.close()
                return
            await wake.wait()
    except ConnectionClosed:
        return
    except Exception:
        log.exception("publisher writer failed")
        await ws.close(1011, "client error")
        raise
