"""The ingest WebSocket: a thin asyncio layer around :class:`earshot.wire.ingest.IngestConnection`.

Two lanes. Under ``earshot serve`` the connection offers the direct lane of
:mod:`earshot.server.ingest.lane`: audio messages of a streaming connection are handled inside
the socket's ``data_received`` (one protocol check, one append, and once per ack interval a
write and the ack), and messages to the client are written to the transport at once. Any
other message (start, stop, ping, a partial frame, an Opus packet) and every message on a
server without the lane goes through the ASGI ``receive()`` loop below, in order.

With ``"batch": true`` in ``start`` (or ``?batch=1`` in compatibility mode) the events
posted just before an ack (the level readings of the batch it acknowledges, warnings) ride
along in it, ``{"type": "ack", "offset": N, "events": [...]}``: one message back per ack
interval instead of three. The Python client and the page ask for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from earshot.errors import ProtocolError, StorageError, StorageFull, StreamNotFound
from earshot.server.auth import (
    AuthError,
    Pending,
    Principal,
    Scope,
    authenticate,
    presented_token,
)
from earshot.server.ingest.lane import DirectLane, lane_of
from earshot.server.streams.hub import Hub, LiveStream
from earshot.wire.codes import Close as CloseCode
from earshot.wire.codes import Code, metric_code
from earshot.wire.ingest import (
    AudioIn,
    Close,
    IngestConnection,
    Limits,
    Output,
    Send,
    StartRequested,
    StopRequested,
    error_message,
    processors_from_query,
    spec_from_query,
)

log = logging.getLogger("earshot.ingest")
OUTBOX_LIMIT = 10_000  # messages queued for a client that does not read


class IngestSession:
    """One ingest connection: feeds messages to the protocol core and carries out its outputs."""

    def __init__(self, ws: WebSocket, hub: Hub, pending: Pending | None = None) -> None:
        self.ws = ws
        self.pending = pending  # the pre-auth caps (None: none)
        self._pending_at: str | None = None  # the address counted there, until the start
        self._expiry: asyncio.Future[None] | None = None
        self.hub = hub
        settings = hub.settings
        self.settings = settings
        self.metrics = hub.metrics
        self.live: LiveStream | None = None
        self._closed = False
        self.busy = True  # handling a message of the receive loop (the lane queues behind it)
        self._lane: DirectLane | None = None
        self._batch = False  # events ride along with the next ack
        self._held: list[str] = []  # serialized events waiting for the ack (batch mode)
        self._held_flush = False  # a call_soon to send them if no ack comes this turn
        self._flushing = False  # inside the lane's flush: its ack follows, no call_soon
        self._outbox: deque[str | bytes] = deque()
        self._outbox_wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        query = dict(ws.query_params)
        compat = None
        compat_processors = None
        self._compat_error: ProtocolError | None = None
        self._compat_batch = False
        self._compat_acks = False
        self._acks = True  # a compatibility client gets none unless it asks (?acks=1)
        limits = Limits(max_message_bytes=settings.ingest.max_message_bytes)
        if settings.ingest.compat:
            try:
                compat = spec_from_query(query, limits)
                compat_processors = processors_from_query(query, limits)
            except ProtocolError as exc:
                self._compat_error = exc
            self._compat_batch = query.get("batch", "").lower() in ("1", "true", "yes")
            self._compat_acks = query.get("acks", "").lower() in ("1", "true", "yes")
        self.conn = IngestConnection(limits, compat, compat_processors)
        token = presented_token(ws.headers, query)
        self._presented = token
        self._auth_error: AuthError | None = None
        self.principal: Principal | None = None  # None: credentials expected in start
        try:
            if token is not None or not settings.security.token:
                self.principal = authenticate(settings.security, token)
        except AuthError as exc:
            self._auth_error = exc
        self._deadline: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        ws = self.ws
        await ws.accept()
        self._writer = asyncio.create_task(self._write_loop())
        if self._auth_error is not None:
            await self._emit(self.conn.fail(self._auth_error.code, self._auth_error.message))
            return
        if self.pending is not None and self.principal is None:  # credentials due in start
            address = ws.client.host if ws.client is not None else "?"
            refused = self.pending.enter(address)
            if refused is not None:
                self.metrics.errors.labels(Code.RATE_LIMITED).inc()
                self.post(error_message(Code.RATE_LIMITED, refused))
                await self._close(CloseCode.TRY_AGAIN_LATER, "too many unauthenticated")
                return
            self._pending_at = address
        timeout = self.settings.security.auth_timeout  # a start within it, or close 4401
        self._deadline = asyncio.get_running_loop().call_later(timeout, self._auth_expired)
        conn = self.conn
        if not self.settings.archive.fsync and self.direct_lane:  # (--fsync: flushes await)
            self._lane = lane_of(ws.scope)
            if self._lane is not None:
                self._lane.attach(self)
        try:
            while not self._closed:
                self.busy = False
                msg = await ws.receive()
                self.busy = True
                if msg["type"] == "websocket.disconnect":
                    break
                data = msg.get("bytes")
                if data is not None:
                    if self._compat_error is not None and self.live is None:
                        exc = self._compat_error
                        await self._emit(conn.fail(exc.code, exc.message))
                        break
                    live = self.live
                    if live is not None and live.owner is not self:
                        break  # superseded by a resume: nothing more of ours goes in
                    outs = conn.receive_bytes(data)
                    # Hot path: the common case is exactly one AudioIn.
                    if len(outs) == 1 and type(outs[0]) is AudioIn and live is not None:
                        out = outs[0]
                        try:
                            due = self.add_audio(live, out.data, out.frames)
                        except ProtocolError as exc:  # an Opus packet libopus rejects
                            await self._emit(conn.fail(exc.code, exc.message))
                            break
                        if due:
                            await self.hub.flush(live)
                        continue
                else:
                    outs = self.receive_text(msg.get("text") or "")
                await self._emit(outs)
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("ingest connection failed")
            self.metrics.errors.labels("internal").inc()
            if not self._closed:
                await self._emit(conn.fail(Code.INTERNAL, "internal server error; resume to go on"))
        finally:
            self._authenticated()
            if self._lane is not None:
                self._lane.detach()
            conn.closed()
            self._closed = True
            if self.live is not None:
                await self.hub.detach(self.live, self, stopped=False)
            if self._writer is not None:
                self._writer.cancel()

    # -- what an adapter on this session (server/rooms: a call) may change ---------------
    direct_lane = True  # audio on the direct lane skips add_audio: an adapter turns it off

    def add_audio(self, live: LiveStream, data: bytes, frames: int) -> bool:
        """One audio message into the stream (True: a flush is due)."""
        return self.hub.add_audio(live, data, frames)

    def receive_text(self, text: str) -> list[Output]:
        """One text message from the client, through the protocol core."""
        return self.conn.receive_text(text)

    # -- the direct lane (server/wsdirect.py): called inside data_received --------------
    def on_bytes(self, data: bytes) -> bool:
        """An audio message on the hot path; False hands it to the receive loop."""
        live = self.live
        if live is None or live.owner is not self or self._closed:
            return False
        frames = self.conn.audio_frames(data)
        if not frames:
            return False
        hub = self.hub
        if hub.add_audio(live, data, frames):  # (PCM: never raises)
            lane = self._lane
            if lane is not None:  # what the flush sends back goes out in one write
                lane.cork()
            self._flushing = True
            try:
                hub.flush_now(live)
            finally:
                self._flushing = False
                if self._held:  # nothing new was acknowledged: the events go alone
                    self._send_held()
                if lane is not None:
                    lane.uncork()
        return True

    async def _emit(self, outs: list[Output]) -> None:
        for out in outs:
            if isinstance(out, AudioIn):
                live = self.live
                assert live is not None
                if live.owner is not self:
                    continue  # superseded
                try:
                    due = self.add_audio(live, out.data, out.frames)
                except ProtocolError as exc:
                    await self._emit(self.conn.fail(exc.code, exc.message))
                    return
                if due:
                    await self.hub.flush(live)
            elif isinstance(out, Send):
                self.post(out.message)
            elif isinstance(out, StartRequested):
                await self._emit(await self._start(out))
            elif isinstance(out, StopRequested):
                await self._stop(out.length)
            elif isinstance(out, Close):
                await self._close(out.code, out.reason)

    def _authenticated(self) -> None:
        """Started (or gone): no deadline any more, and out of the pre-auth count."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._pending_at is not None and self.pending is not None:
            self.pending.leave(self._pending_at)
            self._pending_at = None

    def _auth_expired(self) -> None:
        """No stream started by ``--auth-timeout``: close 4401 (the connection held a slot)."""
        self._deadline = None
        if self.live is not None or self._closed:
            return
        if self.busy:  # a message (a start, perhaps) is being handled: look again shortly
            self._deadline = asyncio.get_running_loop().call_later(0.1, self._auth_expired)
            return
        self._expiry = asyncio.ensure_future(self._emit(self.conn.fail(
            Code.UNAUTHORIZED, "no start with valid credentials within "
            f"{self.settings.security.auth_timeout:g} s of connecting")))
        self._expiry.add_done_callback(_quietly)

    async def _start(self, req: StartRequested) -> list[Output]:
        start = req.start
        principal = self.principal
        try:
            if principal is None:
                if start.token is None:
                    raise AuthError(Code.UNAUTHORIZED, "this server needs a token: ?token=, "
                                    "'Authorization: Bearer', or 'token' in start")
                principal = authenticate(self.settings.security, start.token)
            principal.require(Scope.PUBLISH, name=self._name_of(start))
        except AuthError as exc:
            return self.conn.refuse(exc.code, exc.message)
        try:
            live, token, warnings = await self.hub.open(start, self)
        except ProtocolError as exc:
            return self.conn.refuse(exc.code, exc.message, **exc.extra)
        except StorageFull as exc:
            return self.conn.refuse(Code.STORAGE_FULL, str(exc))
        except (StorageError, OSError) as exc:
            log.exception("cannot open stream")
            return self.conn.refuse(Code.INTERNAL, f"cannot open the stream's archive: {exc}")
        except Exception:  # the hub rolled the stream back: nothing of it is held
            log.exception("cannot open stream")
            self.metrics.errors.labels("internal").inc()
            return self.conn.refuse(Code.INTERNAL, "the stream could not be opened; "
                                    "nothing of it is kept")
        self.live = live
        self._authenticated()
        self._batch = start.batch or (start.compat and self._compat_batch)
        if start.compat:  # it cannot resume (its stream ends with its socket): an ack's
            self._acks = self._batch or self._compat_acks  # offset is of no use to it
        return [*self.conn.accept(live.id, token, live.offset, processors=live.processors),
                *(Send(w) for w in warnings)]

    def _name_of(self, start: Any) -> str | None:
        """The name of the stream a start opens (a resume: the stored stream's name)."""
        if start.resume is None:
            return start.name  # type: ignore[no-any-return]
        try:
            return self.hub.store.get(start.resume).name
        except StreamNotFound:  # the hub refuses it with its own code
            return start.name  # type: ignore[no-any-return]

    async def _stop(self, length: int | None = None) -> None:
        live = self.live
        assert live is not None
        if not await self.hub.flush(live):
            return  # storage_full: closed, and the stream left resumable (never finished
            #         without its tail)
        frames = await self.hub.detach(live, self, stopped=True, length=length)
        if not live.compat and live.rec.state != "finished":  # its last write failed
            self.live = None
            await self._emit(self.conn.fail(
                Code.STORAGE_FULL, f"the server's disk is full: the end of stream {live.id} "
                f"is not written ({frames} frames are); resume later to finish it"))
            return
        self.live = None
        self.post({
            "type": "stopped", "stream": live.id, "offset": frames,
            "duration": frames / live.spec.rate,
        })
        await self._close(1000, "stopped")

    # -- Owner interface (used by the hub) ---------------------------------------------
    def post(self, message: dict[str, Any]) -> None:
        """Queue a message for the client; one writer task sends them in order."""
        if self._closed:
            return
        kind = message.get("type")
        if kind == "error":
            self.metrics.errors.labels(metric_code(message.get("code"))).inc()
        elif kind == "warning":
            self.metrics.warnings.labels(metric_code(message.get("code"))).inc()
        try:
            text = orjson.dumps(message).decode()  # NaN/Inf become null: always valid JSON
        except TypeError:  # e.g. numpy scalars in a user processor's event
            text = json.dumps(message, separators=(",", ":"), default=_plain)
        if self._batch:
            self._held.append(text)
            if not self._flushing and not self._held_flush:  # no ack may follow: send
                self._held_flush = True
                asyncio.get_running_loop().call_soon(self._send_held)
            return
        self.post_text(text)

    def ack(self, offset: int) -> None:
        if not self._acks:
            if self._held:
                self._send_held()
            return
        if self._held:
            events, self._held = ",".join(self._held), []
            self.post_text(f'{{"type":"ack","offset":{offset},"events":[{events}]}}')
        else:
            self.post_text(f'{{"type":"ack","offset":{offset}}}')

    def _send_held(self) -> None:
        self._held_flush = False
        held, self._held = self._held, []
        for text in held:
            self.post_text(text)

    def post_text(self, text: str) -> None:
        if self._closed:
            return
        out = self._outbox
        if not out:
            lane = self._lane
            if lane is not None and lane.send_text(text):
                return  # written to the transport now
        if len(out) >= OUTBOX_LIMIT:
            out.popleft()
            self.metrics.outbox_dropped.inc()
        out.append(text)
        self._outbox_wake.set()

    def post_bytes(self, data: bytes) -> None:
        """Queue a binary message for the client (a call's mix), in order with the rest."""
        if self._closed:
            return
        out = self._outbox
        if len(out) >= OUTBOX_LIMIT:
            out.popleft()
            self.metrics.outbox_dropped.inc()
        out.append(data)
        self._outbox_wake.set()

    async def _write_loop(self) -> None:
        out, wake = self._outbox, self._outbox_wake
        try:
            while True:
                while out:
                    item = out.popleft()
                    if isinstance(item, str):
                        await self.ws.send_text(item)
                    else:
                        await self.ws.send_bytes(item)
                wake.clear()
                await wake.wait()
        except Exception:  # the client is gone; the receive loop notices
            log.debug("writer stopped", exc_info=True)

    async def _drain_outbox(self, timeout: float = 5.0) -> None:
        self._send_held()
        async def drained() -> None:
            while self._outbox and self._writer is not None and not self._writer.done():
                await asyncio.sleep(0.005)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained(), timeout)

    async def kick(self, code: str, message: str) -> None:
        await self._emit(self.conn.fail(code, message))

    async def _close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        await self._drain_outbox()
        self._closed = True
        try:
            await self.ws.close(code, reason)
        except Exception:  # already gone
            log.debug("close after disconnect", exc_info=True)


def _quietly(done: asyncio.Future[None]) -> None:
    """A background close's outcome, retrieved (a client gone meanwhile is no news)."""
    if not done.cancelled() and done.exception() is not None:
        log.debug("closing at the auth deadline failed", exc_info=done.exception())


def _plain(value: Any) -> Any:
    """What ``json`` makes of values orjson refuses (numpy scalars and arrays, sets…)."""
    for attr in ("item", "tolist"):
        fn = getattr(value, attr, None)
        if callable(fn):
            with contextlib.suppress(Exception):
                return fn()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


async def refuse_unauthorized(ws: WebSocket, code: str = Code.UNAUTHORIZED,
                             message: str = "missing or wrong token") -> None:
    """For endpoints that need credentials up front (subscribe): ``unauthorized`` (close
    4401) or ``forbidden`` (close 4403)."""
    await ws.accept()
    await ws.send_text(json.dumps(error_message(code, message)))
    if code == Code.FORBIDDEN:
        await ws.close(CloseCode.FORBIDDEN, "forbidden")
    else:
        await ws.close(CloseCode.UNAUTHORIZED, "unauthorized")
