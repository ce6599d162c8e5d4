"""Deepgram's live streaming API on earshot's main port: ``ws://HOST/v1/listen``. The glue
of :mod:`earshot.integrations.deepgram`: the handshake (query, ``Authorization: Token``, or
the browser's ``Sec-WebSocket-Protocol: token, KEY``, echoed) refused with Deepgram's HTTP
answer or accepted; binary messages are audio, text messages control; the idle deadline;
containerised audio decoded by :class:`~earshot.integrations.decode.StreamDecoder`, whose
thread wakes the connection when blocks are ready."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

from fastapi import APIRouter
from starlette.websockets import WebSocket

from earshot.integrations import deepgram as core
from earshot.integrations.decode import StreamDecoder
from earshot.server.auth import AuthError, Scope, authenticate
from earshot.server.doors.runner import DoorRunner
from earshot.server.doors.ws import WsTransport, refuse, serve, subprotocols
from earshot.server.streams.hub import Hub

router = APIRouter()


def model_info(ws: WebSocket) -> core.ModelInfo:
    asr = ws.app.state.capabilities.get("asr", {})
    return core.ModelInfo(name=str(asr.get("model") or "earshot"),
                          arch=str(asr.get("engine") or "earshot"))


@router.websocket("/v1/listen")
async def listen(ws: WebSocket) -> None:
    hub: Hub = ws.app.state.hub
    request_id = str(uuid.uuid4())
    hs = core.handshake(ws.query_params.multi_items(), dict(ws.headers), subprotocols(ws))
    try:
        principal = authenticate(hub.settings.security, hs.token)
        principal.require(Scope.PUBLISH)
    except AuthError as exc:
        await refuse(ws, *core.handshake_error(
            exc.status, "Invalid credentials." if exc.status == 401 else exc.message,
            request_id=request_id))
        return
    if hs.error is not None or hs.options is None:
        message = hs.error.message if hs.error is not None else "bad request"
        await refuse(ws, *core.handshake_error(400, message, request_id=request_id))
        return
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    decoders: list[StreamDecoder] = []

    def notify() -> None:  # on the decoder's thread
        loop.call_soon_threadsafe(wake.set)

    def decoder(fmt: str | None) -> StreamDecoder:
        d = StreamDecoder(fmt, notify=notify)
        decoders.append(d)
        return d

    client = {"request_id": request_id}
    if hs.ignored:
        client["ignored"] = ",".join(hs.ignored)[:300]
    created = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    session = core.DeepgramLive(
        hs.options, request_id=request_id, created=created, now=time.monotonic(),
        model=model_info(ws), name="deepgram", client=client,
        decoder=decoder if not hs.options.raw else None)
    await ws.accept(subprotocol=hs.subprotocol,
                    headers=[(b"dg-request-id", request_id.encode())])
    runner = DoorRunner(hub, principal, session.on_event, WsTransport(ws), name="deepgram")
    try:
        await serve(ws, runner, on_bytes=session.receive_bytes, on_text=session.receive_text,
                    deadline=lambda: session.next_deadline, on_deadline=session.tick,
                    wake=wake, on_wake=session.poll)
    finally:
        for d in decoders:
            d.abort()
