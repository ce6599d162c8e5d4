"""OpenAI's Realtime API, transcription sessions, on earshot's main port:
``ws://HOST/v1/realtime?intent=transcription``. The glue of
:mod:`earshot.integrations.openai_realtime`: the key from ``Authorization: Bearer`` (or the
browser subprotocol ``openai-insecure-api-key.KEY``), a refused handshake answered in
OpenAI's error shape, then text events to the session and its events back; the stream
ends with the connection."""

from __future__ import annotations

import json
import secrets
import time

from fastapi import APIRouter
from starlette.websockets import WebSocket

from earshot.integrations import openai_realtime as core
from earshot.integrations.common import Action, DoorError
from earshot.integrations.openai_rest import error_body, unauthorized
from earshot.server.auth import AuthError, Scope, authenticate
from earshot.server.doors.runner import DoorRunner
from earshot.server.doors.ws import WsTransport, refuse, serve, subprotocols
from earshot.server.streams.hub import Hub

router = APIRouter()


async def _refuse(ws: WebSocket, exc: DoorError) -> None:
    await refuse(ws, exc.status, {"content-type": "application/json"},
                 json.dumps(error_body(exc)).encode())


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket) -> None:
    hub: Hub = ws.app.state.hub
    hs = core.handshake(dict(ws.query_params), dict(ws.headers), subprotocols(ws))
    try:
        principal = authenticate(hub.settings.security, hs.token)
        principal.require(Scope.PUBLISH)
    except AuthError as exc:
        await _refuse(ws, unauthorized(hs.token is not None) if exc.status == 401 else
                      DoorError("forbidden", exc.message, status=403))
        return
    if hs.error is not None:
        await _refuse(ws, hs.error)
        return
    asr = ws.app.state.capabilities.get("asr", {})
    session = core.RealtimeSession(
        session_id=f"sess_{secrets.token_hex(10)}", created=int(time.time()),
        model=hs.model or str(asr.get("model") or "earshot"), beta=hs.beta,
        name="openai-realtime")
    await ws.accept(subprotocol=hs.subprotocol)
    runner = DoorRunner(hub, principal, session.on_event, WsTransport(ws),
                        name="openai-realtime")
    await runner.perform(session.open())

    def on_bytes(data: bytes, now: float) -> list[Action]:
        return session.receive_bytes(data)

    def on_text(text: str, now: float) -> list[Action]:
        return session.receive_text(text)

    await serve(ws, runner, on_bytes=on_bytes, on_text=on_text)
