"""Run in the `openai[realtime]` environment: the SDK as an app uses it, against earshot's
answers replayed.

REST: ``client.audio.transcriptions.create`` (every response format, stream=True),
``client.models.list``, errors and translations, through an ``httpx.MockTransport`` that
records each request and answers with the canned responses given (what earshot's core
rendered). Realtime: ``client.realtime.connect(extra_query={"intent": "transcription"})``
to a local WebSocket server that records the handshake and the client's events and sends
the server events given; and every server event validated strictly by the SDK's pydantic
models.

stdin: {"rest": [{"status", "content_type", "body"}...], "realtime": [event JSON...],
        "audio": base64 PCM16 24 kHz}
stdout: {"rest": [...], "requests": [...], "realtime": {...}, "strict": [...]}
"""

import asyncio
import base64
import json
import sys
import typing

import httpx2 as httpx
import openai
import websockets
from openai import OpenAI
from openai.types.realtime.realtime_server_event import RealtimeServerEvent

PAYLOAD = json.load(sys.stdin)


def rest():
    canned = list(PAYLOAD["rest"])
    requests = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        requests.append({"method": request.method, "path": request.url.path,
                         "query": str(request.url.query, "ascii"),
                         "authorization": request.headers.get("authorization"),
                         "content_type": request.headers.get("content-type"),
                         "body": base64.b64encode(body).decode()})
        answer = canned.pop(0)
        return httpx.Response(answer["status"], headers={"content-type": answer["content_type"]},
                              content=answer["body"].encode())

    client = OpenAI(api_key="earshot-token", base_url="http://earshot.local:8000/v1",
                    max_retries=0, http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    wav = base64.b64decode(PAYLOAD["wav"])
    out = []
    t = client.audio.transcriptions.create(file=("reading.wav", wav), model="whisper-1")
    out.append({"kind": type(t).__name__, "text": t.text,
                "usage": t.usage.model_dump() if t.usage else None})
    v = client.audio.transcriptions.create(
        file=("reading.wav", wav), model="whisper-1", response_format="verbose_json",
        timestamp_granularities=["word", "segment"], language="en")
    out.append({"kind": type(v).__name__, "text": v.text, "duration": v.duration,
                "language": v.language,
                "segments": [[s.id, s.start, s.end, s.text] for s in v.segments or []],
                "words": [[w.word, w.start, w.end] for w in v.words or []]})
    for fmt in ("srt", "vtt", "text"):
        r = client.audio.transcriptions.create(file=("reading.wav", wav), model="whisper-1",
                                               response_format=fmt)
        out.append({"kind": type(r).__name__, "value": r})
    events = client.audio.transcriptions.create(file=("reading.wav", wav),
                                                model="gpt-4o-transcribe", stream=True)
    out.append({"kind": "stream", "events": [[e.type, getattr(e, "delta", None),
                                              getattr(e, "text", None)] for e in events]})
    models = client.models.list()
    out.append({"kind": "models", "ids": [m.id for m in models.data]})
    for _call in ("401", "413", "415", "400"):
        try:
            client.audio.transcriptions.create(file=("x.bin", b"\0" * 10), model="whisper-1")
        except openai.APIStatusError as exc:
            out.append({"kind": type(exc).__name__, "status": exc.status_code,
                        "code": exc.code, "param": exc.param, "type": exc.type,
                        "message": exc.message})
    try:
        client.audio.translations.create(file=("reading.wav", wav), model="whisper-1")
    except openai.APIStatusError as exc:
        out.append({"kind": type(exc).__name__, "status": exc.status_code, "code": exc.code})
    return out, requests


async def realtime():
    server_events = list(PAYLOAD["realtime"])
    seen = {"path": None, "headers": {}, "client": []}

    async def handler(ws):
        req = ws.request
        seen["path"] = req.path
        seen["headers"] = {k.lower(): v for k, v in req.headers.raw_items()
                           if k.lower() in ("authorization", "openai-beta")}
        await ws.send(server_events[0])  # session.created, at once
        sent_rest = False
        async for message in ws:
            seen["client"].append(json.loads(message))
            if not sent_rest and seen["client"][-1]["type"] == "input_audio_buffer.commit":
                sent_rest = True
                for e in server_events[1:]:
                    await ws.send(e)

    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = openai.AsyncOpenAI(api_key="earshot-token",
                                    websocket_base_url=f"ws://127.0.0.1:{port}/v1")
        received = []
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.session.update(session={
                "type": "transcription",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                    "transcription": {"model": "gpt-4o-transcribe",
                                                      "language": "en"},
                                    "turn_detection": {"type": "server_vad"}}}})
            audio = base64.b64decode(PAYLOAD["audio"])
            for i in range(0, len(audio), 1920):  # 40 ms appends, as the SDK's examples
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(audio[i:i + 1920]).decode())
            await conn.input_audio_buffer.commit()
            async for event in conn:
                item = {"type": event.type, "class": type(event).__name__}
                for key in ("item_id", "audio_start_ms", "audio_end_ms", "delta", "transcript",
                            "previous_item_id"):
                    if hasattr(event, key):
                        item[key] = getattr(event, key)
                received.append(item)
                if len(received) == len(server_events):
                    break
    return {**seen, "received": received}


def strict_realtime():
    union = typing.get_args(RealtimeServerEvent)[0]
    by_type = {}
    for cls in typing.get_args(union):
        literal = cls.model_fields["type"].annotation
        by_type[typing.get_args(literal)[0]] = cls
    out = []
    for raw in PAYLOAD["realtime"] + PAYLOAD.get("realtime_more", []):
        obj = json.loads(raw)
        cls = by_type.get(obj["type"])
        if cls is None:
            out.append({"type": obj["type"], "model": None})
            continue
        cls.model_validate(obj)
        out.append({"type": obj["type"], "model": cls.__name__})
    return out


def main():
    rest_out, requests = rest()
    print(json.dumps({"rest": rest_out, "requests": requests,
                      "realtime": asyncio.run(realtime()), "strict": strict_realtime()}))


main()
