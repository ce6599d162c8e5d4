"""Run in the `openai[realtime]` environment: a Realtime transcription session with the
SDK (``client.realtime.connect(extra_query={"intent": "transcription"})``) against a real
earshot server, sending PCM16 24 kHz in 40 ms appends as the SDK's examples do.

stdin: {"base_url": "http://127.0.0.1:PORT/v1", "ws_url": "ws://127.0.0.1:PORT/v1",
        "api_key", "pcm": path (s16 24 kHz mono), "speed", "manual": bool,
        "expect": completed transcripts to wait for}
stdout: {"events": [{"type", ...}], "errors": [...]}
"""

import asyncio
import base64
import json
import sys
import time
from pathlib import Path

import openai

P = json.load(sys.stdin)
KEEP = ("item_id", "audio_start_ms", "audio_end_ms", "delta", "transcript", "previous_item_id")


async def session(pcm, *, manual):
    client = openai.AsyncOpenAI(api_key=P["api_key"], base_url=P["base_url"],
                                websocket_base_url=P["ws_url"])
    events = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(session={
            "type": "transcription",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "transcription": {"model": "gpt-4o-transcribe",
                                                  "language": "en"},
                                "turn_detection": None if manual else {"type": "server_vad"}}}})

        async def receive():
            async for event in conn:
                item = {"type": event.type, "t": time.monotonic()}
                for key in KEEP:
                    if hasattr(event, key):
                        item[key] = getattr(event, key)
                if event.type == "error":
                    item["error"] = event.error.model_dump()
                events.append(item)
                done = [e for e in events if e["type"].endswith("transcription.completed")]
                if len(done) >= P["expect"]:
                    return

        task = asyncio.create_task(receive())
        block = 1920  # 40 ms at 24 kHz s16
        t0 = time.monotonic()
        for i in range(0, len(pcm), block):
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + block]).decode())
            ahead = t0 + (i + block) / 48000 / P["speed"] - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        if manual:
            await conn.input_audio_buffer.commit()
        await asyncio.wait_for(task, 60)
    return events


async def main():
    pcm = Path(P["pcm"]).read_bytes()
    out = {"events": await session(pcm, manual=P.get("manual", False)), "errors": []}
    bad = openai.AsyncOpenAI(api_key="wrong", base_url=P["base_url"],
                             websocket_base_url=P["ws_url"])
    try:
        async with bad.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            await conn.session.update(session={"type": "transcription"})
        out["errors"].append({"refused": False})
    except Exception as exc:
        out["errors"].append({"refused": True, "kind": type(exc).__name__,
                              "text": str(exc)[:300]})
    print(json.dumps(out))


asyncio.run(main())
