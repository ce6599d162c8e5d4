"""``/ws/subscribe``: live events (and optionally audio) of one stream or all, and the way
remote workers send their processors' events back.

Past ``--max-subscribers`` live subscribers, a newcomer gets ``{"type":"error",
"code":Code.SERVER_FULL}`` and close 1013 (try again later); publishers' slots are counted
apart, so subscribers never take them.

Server → subscriber:

* ``{"type":"subscribed","stream":S,"audio":F|null,"live":[{stream info}...]}`` first;
* every event of the stream(s), as JSON;
* with ``audio=s16|f32``: for each archived batch a JSON header
  ``{"type":"audio","stream":ID,"offset":N,"frames":M,"rate":R,"channels":C,"format":F}``
  immediately followed by one binary message with those samples, interleaved little-endian.

Subscriber → server (remote workers): ``{"type":"event","stream":ID,"events":[{...}, ...],
"worker":"name"}``; the server fans these out like events of local processors. Only from a
connection with the ``worker`` scope (for the stream's name and, when the grant names
them, the events' processor kinds), only for streams this connection was handed (whose
audio it received), ``error`` events only with known codes, and ``speech_end`` spans
within the audio received so far, after the previous one (:meth:`Hub.from_worker`).

A grant limited to stream names (``names``) hears only those streams: the events and
audio of others are left out of a ``stream=*`` subscription.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from earshot.audio import f32_to_s16
from earshot.cluster.bus import ALL, AudioItem
from earshot.errors import StreamNotFound
from earshot.server.auth import OPEN, AuthError, Principal, Scope
from earshot.server.streams.hub import Hub
from earshot.wire.codes import Close, Code
from earshot.wire.ingest import error_message

log = logging.getLogger("earshot.subscribe")
RESERVED = frozenset({"ready", "ack", "stopped", "audio", "subscribed", "stream_started",
                      "stream_ended", "segment", "pong"})
MAX_EVENTS_PER_MESSAGE = 1000
CODES = frozenset(str(c) for c in Code)


async def subscribe(ws: WebSocket, hub: Hub, principal: Principal = OPEN) -> None:
    stream = ws.query_params.get("stream", ALL)
    audio = ws.query_params.get("audio")
    await ws.accept()
    if stream != ALL and not (principal.allows(Scope.LISTEN, name=name_of(hub, stream))
                              or principal.allows(Scope.WORKER, name=name_of(hub, stream))):
        await ws.send_text(json.dumps(error_message(
            Code.FORBIDDEN, f"this token does not grant listening to stream {stream!r}")))
        await ws.close(Close.FORBIDDEN, "forbidden")
        return
    if audio not in (None, "s16", "f32", "opus"):
        await ws.send_text(json.dumps(error_message(
            Code.UNSUPPORTED_FORMAT, f"audio={audio!r}: use audio=s16, f32 or opus")))
        await ws.close(Close.BAD_REQUEST, "unsupported audio format")
        return
    if audio == "opus":  # refused here, never inside the publisher's path (issue 19)
        from earshot.codec.opus import encoder_missing

        missing = encoder_missing()
        if missing is not None:
            hub.metrics.errors.labels(Code.UNSUPPORTED_FORMAT).inc()
            await ws.send_text(json.dumps(error_message(
                Code.UNSUPPORTED_FORMAT, f"audio=opus is not available on this server: "
                f"{missing}; use audio=s16 or f32")))
            await ws.close(Close.BAD_REQUEST, "unsupported audio format")
            return
    slots = hub.admission  # --max-subscribers, apart from publishers' slots
    refused = slots.subscriber_refusal()
    if refused is not None:
        hub.metrics.subscribers_refused.inc()
        hub.metrics.errors.labels("server_full").inc()
        await ws.send_text(json.dumps(error_message(Code.SERVER_FULL, refused)))
        await ws.close(Close.TRY_AGAIN_LATER, "server full")
        return
    hub.metrics.subscribers.set(slots.subscribers.held)
    try:
        await _serve(ws, hub, stream, audio, principal)
    finally:
        slots.subscribers.release()
        hub.metrics.subscribers.set(slots.subscribers.held)


def name_of(hub: Hub, sid: str) -> str | None:
    """The name of stream ``sid`` (live or stored); None when it has none or is unknown."""
    live = hub.live.get(sid)
    if live is not None:
        return live.rec.name
    try:
        return hub.store.get(sid).name
    except StreamNotFound:
        return None


class Hearing:
    """Which streams a subscriber may hear (a name-limited grant: the matching ones, looked
    up once per stream) and which it was handed (their audio sent to it: a worker may post
    events for those only)."""

    def __init__(self, hub: Hub, principal: Principal) -> None:
        self.hub, self.principal = hub, principal
        self.everything = Scope.ADMIN in principal.scopes or principal.names is None
        self.known: dict[str, bool] = {}
        self.handed: dict[str, int] = {}  # stream → the end (in frames) of its audio sent

    def hand(self, item: AudioItem) -> None:
        if item.samples is not None:
            end = item.offset + len(item.samples)
        else:
            end = max((off + n for off, n, _ in item.packets), default=item.offset)
        if end > self.handed.get(item.stream, 0):
            self.handed[item.stream] = end

    def may_hear(self, sid: str) -> bool:
        if self.everything:
            return True
        ok = self.known.get(sid)
        if ok is None:
            name = name_of(self.hub, sid)
            p = self.principal
            ok = self.known[sid] = (p.allows(Scope.LISTEN, name=name)
                                    or p.allows(Scope.WORKER, name=name))
        return ok


async def _serve(ws: WebSocket, hub: Hub, stream: str, audio: str | None,
                 principal: Principal = OPEN) -> None:
    bus = hub.bus
    sub = bus.subscribe(stream, audio=audio)
    hearing = Hearing(hub, principal)
    live = [i for i in hub.live_info(stream) if hearing.may_hear(str(i.get("stream")))]
    await ws.send_text(json.dumps({"type": "subscribed", "stream": stream, "audio": audio,
                                   "live": live}))

    async def pump() -> None:
        async for item in sub:
            if isinstance(item, AudioItem):
                if not hearing.may_hear(item.stream):
                    continue
                hearing.hand(item)
                for header, payload in audio_messages(item, audio or "f32"):
                    await ws.send_text(header)
                    await ws.send_bytes(payload)
            else:
                sid = item.get("stream")  # (a notice to this subscriber has none)
                if sid is not None and not hearing.may_hear(str(sid)):
                    continue
                await ws.send_text(json.dumps(item, separators=(",", ":")))

    task = asyncio.create_task(pump())
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            if msg.get("text") is not None:
                reply = handle_worker_message(hub, msg["text"], principal, hearing.handed)
                if reply is not None:
                    await ws.send_text(json.dumps(reply))
            elif msg.get("bytes") is not None:
                await ws.send_text(json.dumps(error_message(
                    Code.UNEXPECTED_BINARY, "subscribers send only JSON text messages")))
    except WebSocketDisconnect:
        pass
    finally:
        bus.unsubscribe(sub)
        task.cancel()


def audio_messages(item: AudioItem, fmt: str) -> list[tuple[str, bytes]]:
    """(JSON header, binary payload) pairs: one per PCM batch, one per Opus packet."""
    if item.samples is None:
        return [(json.dumps({"type": "audio", "stream": item.stream, "offset": off,
                             "frames": n, "rate": item.rate, "channels": item.channels,
                             "format": "opus", "pre_skip": item.pre_skip},
                            separators=(",", ":")), packet)
                for off, n, packet in item.packets]
    frames, channels = item.samples.shape
    header = json.dumps({"type": "audio", "stream": item.stream, "offset": item.offset,
                         "frames": frames, "rate": item.rate, "channels": channels,
                         "format": fmt}, separators=(",", ":"))
    if fmt == "s16":
        return [(header, f32_to_s16(item.samples).samples.tobytes())]
    return [(header, item.samples.astype("<f4", copy=False).tobytes())]


def handle_worker_message(hub: Hub, text: str, principal: Principal = OPEN,
                          handed: Mapping[str, int] | None = None) -> dict[str, Any] | None:
    """Check events sent back by a remote worker and fan them out; None when fine, else
    the error to answer (nothing of a refused message is delivered). ``handed``: the
    streams whose audio this connection received, with the frames it received of each
    (None: any, for tests of the rules)."""
    if len(text) > hub.settings.ingest.max_message_bytes:
        return error_message(Code.MESSAGE_TOO_LARGE, "event message too large")
    try:
        msg = json.loads(text)
    except RecursionError:
        return error_message(Code.INVALID_JSON, "not valid JSON: nested too deeply")
    except ValueError as exc:
        return error_message(Code.INVALID_JSON, f"not valid JSON: {exc}")
    if not isinstance(msg, dict) or msg.get("type") != "event":
        return error_message(Code.UNKNOWN_TYPE, "subscribers may only send {'type': 'event', ...}")
    if not principal.scopes & {Scope.WORKER, Scope.ADMIN}:
        return error_message(Code.FORBIDDEN, "posting events needs a token with the worker "
                                             "scope (earshot token create --scope worker)")
    events = msg.get("events")
    if not isinstance(events, list) or len(events) > MAX_EVENTS_PER_MESSAGE:
        return error_message(Code.BAD_EVENT, f"'events' must be a list of at most "
                                          f"{MAX_EVENTS_PER_MESSAGE} objects")
    sid = str(msg.get("stream"))
    if handed is not None and sid not in handed:
        return error_message(Code.FORBIDDEN, f"stream {sid!r} was not handed to this "
                                             "connection: a worker posts events only for "
                                             "streams whose audio it receives")
    name = name_of(hub, sid)
    for e in events:
        if not isinstance(e, dict) or not isinstance(e.get("type"), str):
            return error_message(Code.BAD_EVENT, "each event is an object with a string 'type'")
        if e["type"] in RESERVED:
            return error_message(Code.BAD_EVENT, f"event type {e['type']!r} is reserved")
        processor = e.get("processor")
        if principal.processors is not None and not isinstance(processor, str):
            return error_message(Code.FORBIDDEN, "this token grants events of named "
                                                 "processors only: each event needs its "
                                                 "'processor'")
        try:
            principal.require(Scope.WORKER, name=name,
                              processor=processor if isinstance(processor, str) else None)
        except AuthError as exc:
            return error_message(exc.code, exc.message)
        if e["type"] == "error" and e.get("code") not in CODES:
            return error_message(Code.BAD_EVENT, f"error code {e.get('code')!r} is not one of "
                                                 "earshot's codes")
    worker = msg.get("worker")
    if isinstance(worker, str):
        for e in events:
            e["worker"] = worker[:100]
    problem = hub.from_worker(sid, events, handed.get(sid, 0) if handed is not None else 0)
    if problem is not None:
        return error_message(problem[0], problem[1])
    return None
