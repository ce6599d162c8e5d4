"""What the WebSocket doors (Deepgram, OpenAI Realtime) share: the transport, refusing a
handshake with an HTTP answer, and the receive loop with a core's deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from earshot.integrations.common import Action
from earshot.server.doors.runner import DoorRunner
from earshot.server.ingest.lane import lane_of

log = logging.getLogger("earshot.doors")


class WsTransport:
    """A door's messages on a WebSocket: ``str`` as text, ``bytes`` as binary."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            await self.ws.send_text(data)
        else:
            await self.ws.send_bytes(data)

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason[:120])


async def refuse(ws: WebSocket, status: int, headers: dict[str, str], body: bytes) -> None:
    """Refuse a handshake with an HTTP answer (the client sees the status and the body)."""
    await ws.send_denial_response(Response(body, status_code=status, headers=headers))


def subprotocols(ws: WebSocket) -> list[str]:
    return [str(p) for p in ws.scope.get("subprotocols", [])]


class LaneSink:
    """Binary messages on uvicorn's direct lane (:mod:`earshot.server.ingest.lane`): the
    core takes each inside ``data_received``; plain audio goes to the hub at once
    (:meth:`DoorRunner.perform_now`), anything else is carried out by a task, in order
    (later messages queue behind it on the receive loop)."""

    def __init__(self, runner: DoorRunner,
                 on_bytes: Callable[[bytes, float], list[Action]]) -> None:
        self.runner = runner
        self.on_bytes_core = on_bytes
        self.busy = True  # the receive loop is handling a message (set by serve)
        self._tasks: set[asyncio.Task[None]] = set()

    def on_bytes(self, data: bytes) -> bool:
        runner = self.runner
        if runner.closed or self._tasks:
            return False
        actions = self.on_bytes_core(data, time.monotonic())
        if not actions or runner.perform_now(actions):
            return True
        task = asyncio.get_running_loop().create_task(runner.perform(actions))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True


async def serve(ws: WebSocket, runner: DoorRunner, *,
                on_bytes: Callable[[bytes, float], list[Action]],
                on_text: Callable[[str, float], list[Action]],
                deadline: Callable[[], float | None] | None = None,
                on_deadline: Callable[[float], list[Action]] | None = None,
                wake: asyncio.Event | None = None,
                on_wake: Callable[[float], list[Action]] | None = None) -> None:
    """Feed a connection's messages to a core until either side closes; the core's
    deadline (``deadline``/``on_deadline``, monotonic seconds) and a wake-up from another
    thread (``wake``/``on_wake``, a decoder's) are served on the side. Then the runner
    finishes (a stream still open is stopped)."""
    side: asyncio.Task[None] | None = None

    async def timers() -> None:
        while not runner.closed:
            due = deadline() if deadline is not None else None
            wait = 1.0 if due is None else max(0.0, due - time.monotonic())
            woke = False
            if wake is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(wait, 1.0))
                    woke = True
            else:
                await asyncio.sleep(min(wait, 1.0))
            now = time.monotonic()
            if woke and wake is not None and on_wake is not None:
                wake.clear()
                await runner.perform(on_wake(now))
            due = deadline() if deadline is not None else None
            if due is not None and now >= due and on_deadline is not None:
                await runner.perform(on_deadline(now))

    if deadline is not None or wake is not None:
        side = asyncio.create_task(timers(), name="earshot-door-timers")
    lane = lane_of(ws.scope)
    sink = LaneSink(runner, on_bytes) if lane is not None else None
    if lane is not None and sink is not None:
        lane.attach(sink)
    try:
        while not runner.closed:
            if sink is not None:
                sink.busy = False
            msg = await ws.receive()
            if sink is not None:
                sink.busy = True
            if msg["type"] == "websocket.disconnect":
                break
            now = time.monotonic()
            data = msg.get("bytes")
            if data is not None:
                await runner.perform(on_bytes(data, now))
            else:
                await runner.perform(on_text(msg.get("text") or "", now))
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away (or we closed)
    except Exception:
        log.exception("door connection failed")
    finally:
        if lane is not None:
            lane.detach()
        if sink is not None:
            for task in list(sink._tasks):
                with contextlib.suppress(Exception):
                    await task
        if side is not None:
            side.cancel()
        await runner.finish()
