"""The one runner every door shares: carry out a core's actions against the hub, and feed
the core its stream's events.

A door's core (:mod:`earshot.integrations`) is sans I/O: it returns
:class:`~earshot.integrations.common.Action`\\ s and takes events. :class:`DoorRunner` is the
I/O half every door has in common, and the :class:`~earshot.server.streams.live.Owner` of
the stream it opens, exactly as a native ingest connection is:

* :class:`OpenStream` → :meth:`Hub.open <earshot.server.streams.hub.Hub.open>` with a
  ``start`` built from it (the principal's ``publish`` scope checked for the name; the
  server's default processors added to the dialect's; admission, archive, metadata as for
  any stream), then a ``ready`` event; a refusal becomes the stream's ``error`` event;
* :class:`Audio` → :meth:`Hub.add_audio` (and a flush when one is due);
* :class:`Finalize` → :meth:`Hub.finalize`, and the ``finalized`` event when no processor
  will say it;
* :class:`Stop` → flush, :meth:`Hub.detach` (``stopped``), then a ``stopped`` event;
* :class:`Send` / :class:`Close` → the transport, in order, by one writer task.

Events (the hub's ``post``, and the ones the runner makes) go through one queue to the
core's ``on_event``, in order; the actions that returns are carried out in turn. A
stream still open when the connection ends is stopped (a door's client cannot resume).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from earshot.errors import EarshotError, ProtocolError, StorageError, StorageFull
from earshot.integrations.common import (
    Action,
    Audio,
    Close,
    Event,
    Finalize,
    OpenStream,
    Send,
    Stop,
)
from earshot.server.auth import AuthError, Principal, Scope
from earshot.server.streams.hub import Hub, LiveStream
from earshot.wire.codes import Code
from earshot.wire.ingest import Limits, Start, validate_spec

log = logging.getLogger("earshot.doors")
_ACTIONS = "\0actions"  # in the event queue: a core's actions still to carry out
#: how long a Stop waits for the answers of the Finalizes before it (their finals)
FINALIZE_WAIT = 120.0


class Transport(Protocol):
    """Where a door's messages go: a WebSocket, a TCP connection, an HTTP response."""

    async def send(self, data: str | bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass
class _Out:
    data: str | bytes | None = None  # None: close
    code: int = 1000
    reason: str = ""


def processor_name(spec: str | Mapping[str, Any]) -> str:
    if isinstance(spec, str):
        return spec.split(",", 1)[0]
    return str(spec.get("name", ""))


class DoorRunner:
    """One door connection's stream(s) (see the module docstring). ``on_event`` is the
    core's; ``transport`` may be None (a door that answers over HTTP collects its events
    instead of sending)."""

    def __init__(self, hub: Hub, principal: Principal, on_event: Callable[[Event], list[Action]],
                 transport: Transport | None = None, *, name: str | None = None,
                 processors: tuple[str | Mapping[str, Any], ...] | None = None) -> None:
        self.hub = hub
        self.principal = principal
        self.on_event = on_event
        self.transport = transport
        self.name = name  # the default stream name of the door
        #: processors added to the dialect's (None: the server's defaults)
        self.extra = processors
        self.live: LiveStream | None = None
        self.stream: str | None = None  # the latest stream opened
        self.closed = False  # Close carried out (or the client went away)
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._out: asyncio.Queue[_Out] = asyncio.Queue()
        self._pump = asyncio.create_task(self._pump_events(), name="earshot-door-events")
        self._writer = asyncio.create_task(self._write(), name="earshot-door-writer") \
            if transport is not None else None
        self._lock = asyncio.Lock()  # actions are carried out one batch at a time
        self.idle = asyncio.Event()  # every queued event handled
        self.idle.set()
        self._finalizing = 0  # Finalizes a processor will answer, not answered yet
        self._finalized = asyncio.Event()
        self._finalized.set()

    # -- the Owner interface (called by the hub) ----------------------------------------
    def post(self, message: dict[str, Any]) -> None:
        if message.get("type") == "finalized" and self._finalizing:
            self._finalizing -= 1
            if not self._finalizing:
                self._finalized.set()
        if self._events.empty() and not self._lock.locked():
            # nothing before it: the core takes it now (most events need nothing, or only
            # messages sent; no task switch per level reading)
            try:
                actions = self.on_event(message)
            except Exception:
                log.exception("door: an event could not be handled")
                return
            if all(type(a) is Send for a in actions):
                for a in actions:
                    assert isinstance(a, Send)
                    self._send(a.data)
                return
            message = {"type": _ACTIONS, "actions": actions}
        self.idle.clear()
        self._events.put_nowait(message)

    def ack(self, offset: int) -> None:
        """Doors have no acknowledgements (their clients cannot resume)."""

    async def kick(self, code: str, message: str) -> None:
        self.post({"type": "error", "code": code, "message": message})

    # -- actions -------------------------------------------------------------------------
    async def perform(self, actions: list[Action]) -> None:
        """Carry out a core's actions, in order."""
        if not actions:
            return
        async with self._lock:
            for action in actions:
                await self._one(action)

    def perform_now(self, actions: list[Action]) -> bool:
        """The audio hot path (a direct WebSocket lane, inside ``data_received``): carry
        out ``actions`` at once when they are only PCM audio for the open stream, nothing
        is in progress and the server writes without ``--fsync``. False: nothing was done
        (:meth:`perform` them)."""
        live = self.live
        if (self._lock.locked() or live is None or live.owner is not self
                or self.hub.settings.archive.fsync or live.spec.format == "opus"):
            return False
        if not all(type(a) is Audio for a in actions):
            return False
        hub, frame = self.hub, live.spec.frame_bytes
        for a in actions:
            assert isinstance(a, Audio)
            if hub.add_audio(live, a.data, len(a.data) // frame):
                hub.flush_now(live)
        return True

    async def _one(self, action: Action) -> None:
        if isinstance(action, Audio):
            live = self.live
            if live is None or live.owner is not self:
                return
            spec = live.spec
            data = action.data
            if spec.format == "opus":
                from earshot.codec.opus import packet_samples

                frames = packet_samples(data, spec.rate)
            else:
                frames, extra = divmod(len(data), spec.frame_bytes)
                if extra:  # a core's bug: whole frames only (the archive takes no less)
                    log.warning("door: %d bytes of a partial frame dropped", extra)
                    data = data[:len(data) - extra]
            try:
                due = self.hub.add_audio(live, data, frames)
            except ProtocolError as exc:
                self.post({"type": "error", "code": exc.code, "message": exc.message})
                return
            if due:
                await self.hub.flush(live)
        elif isinstance(action, Send):
            self._send(action.data)
        elif isinstance(action, OpenStream):
            await self._open(action)
        elif isinstance(action, Finalize):
            live = self.live
            answered = False
            if live is not None and live.owner is self:
                self._finalizing += 1  # (before: the answer may come at once)
                self._finalized.clear()
                answered = await self.hub.finalize(live)
                if not answered:
                    self._finalizing -= 1
                    if not self._finalizing:
                        self._finalized.set()
            if not answered:
                self.post({"type": "finalized", "segment": None,
                           "t": live.t if live is not None else 0.0})
        elif isinstance(action, Stop):
            await self._stop()
        elif isinstance(action, Close):
            self._close(action.code, action.reason)

    def _send(self, data: str | bytes) -> None:
        if self.transport is not None and not self.closed:
            self._out.put_nowait(_Out(data))

    def _close(self, code: int, reason: str) -> None:
        if self.transport is not None and not self.closed:
            self._out.put_nowait(_Out(None, code, reason))
        self.closed = True

    def _processors(self, wanted: tuple[str | Mapping[str, Any], ...]) -> tuple[Any, ...]:
        extra = self.extra if self.extra is not None else tuple(
            s.ref for s in self.hub.registry.defaults)
        names = {processor_name(p) for p in wanted}
        return (*wanted, *(p for p in extra if processor_name(p) not in names))

    async def _open(self, a: OpenStream) -> None:
        if self.live is not None:  # one stream at a time: the previous one ends here
            await self._stop(quiet=True)
        name = a.name or self.name
        try:
            self.principal.require(Scope.PUBLISH, name=name)
            s = self.hub.settings.ingest
            spec = validate_spec(a.format, a.rate, a.channels,
                                 Limits(max_message_bytes=s.max_message_bytes))
            start = Start(spec=spec, name=name, processors=self._processors(a.processors),
                          compat=True, client=dict(a.client), language=a.language)
            live, _token, warnings = await self.hub.open(start, self)
        except (AuthError, ProtocolError) as exc:
            self.post({"type": "error", "code": exc.code, "message": exc.message})
            return
        except StorageFull as exc:
            self.post({"type": "error", "code": Code.STORAGE_FULL, "message": str(exc)})
            return
        except (StorageError, OSError, EarshotError) as exc:
            log.exception("door: cannot open a stream")
            self.post({"type": "error", "code": Code.INTERNAL,
                       "message": f"cannot open the stream: {exc}"})
            return
        self.live, self.stream = live, live.id
        self.post({"type": "ready", "stream": live.id, "processors": list(live.processors)})
        for w in warnings:
            self.post(dict(w))

    async def _stop(self, *, quiet: bool = False) -> None:
        live, self.live = self.live, None
        if live is None:
            if not quiet:
                self.post({"type": "stopped", "stream": self.stream, "offset": 0,
                           "duration": 0.0})
            return
        await self.hub.flush(live)
        if self._finalizing:  # their finals first, however long decoding takes (a stop's
            # own drain is bounded by --drain-timeout, which a backlog could outlast)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finalized.wait(), FINALIZE_WAIT)
        frames = await self.hub.detach(live, self, stopped=True)
        if not quiet:
            self.post({"type": "stopped", "stream": live.id, "offset": frames,
                       "duration": frames / live.rec.rate})

    # -- events and output ----------------------------------------------------------------
    async def _pump_events(self) -> None:
        q = self._events
        while True:
            e = await q.get()
            if e is None:
                return
            try:
                if e.get("type") == _ACTIONS:
                    await self.perform(e["actions"])
                else:
                    await self.perform(self.on_event(e))
            except Exception:
                log.exception("door: an event could not be handled")
            if q.empty():
                self.idle.set()

    async def _write(self) -> None:
        assert self.transport is not None
        while True:
            out = await self._out.get()
            try:
                if out.data is None:
                    await self.transport.close(out.code, out.reason)
                    return
                await self.transport.send(out.data)
            except Exception:  # the client is gone
                log.debug("door: send failed", exc_info=True)
                self.closed = True
                return

    async def settled(self) -> None:
        """Wait until every event posted so far has been handed to the core."""
        await self.idle.wait()

    async def finish(self) -> None:
        """The connection ended: a stream still open stops (its archive is finished), the
        last messages are written (a few seconds at most), the tasks end."""
        live, self.live = self.live, None
        if live is not None and live.owner is self:
            with contextlib.suppress(Exception):
                await self.hub.flush(live)
            await self.hub.detach(live, self, stopped=True)
        self._events.put_nowait(None)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._pump), 5.0)
        self._pump.cancel()
        if self._writer is not None:
            if not self._writer.done():
                self._out.put_nowait(_Out(None, 1000, ""))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._writer), 5.0)
            self._writer.cancel()
