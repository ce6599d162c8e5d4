"""Run in the `deepgram-sdk` environment: the SDK's live client against a real earshot
server, pointed at it with a ``DeepgramClientEnvironment`` as an app would be.

stdin: {"url": "ws://127.0.0.1:PORT", "http", "api_key", "pcm": path of s16 16 kHz mono,
        "mode": "reading" | "finalize" | "refused", "finalize_at": seconds, "speed": x}
stdout: {"messages": [every server message, parsed by the SDK, as dicts], "sent_s": seconds
         of audio sent, "close": [code, reason] | null, "errors": [...]}
"""

import asyncio
import json
import sys
import time
from pathlib import Path

from deepgram import AsyncDeepgramClient
from deepgram.environment import DeepgramClientEnvironment

P = json.load(sys.stdin)


def client(key):
    env = DeepgramClientEnvironment(base=P["http"], production=P["url"], agent=P["url"],
                                    agent_rest=P["http"])
    return AsyncDeepgramClient(api_key=key, environment=env)


async def stream(conn, pcm, messages, *, finalize_at=None, speed=1.0):
    async def receive():
        async for message in conn:
            messages.append(json.loads(message.model_dump_json(exclude_none=True)))

    task = asyncio.create_task(receive())
    block = 1280  # 40 ms at 16 kHz s16
    t0 = time.monotonic()
    sent = 0
    finalized = False
    for i in range(0, len(pcm), block):
        if finalize_at is not None and not finalized and sent / 32000 >= finalize_at:
            await conn.send_finalize()
            finalized = True
        await conn.send_media(pcm[i:i + block])
        sent += len(pcm[i:i + block])
        ahead = t0 + sent / 32000 / speed - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
    await conn.send_keep_alive()
    await conn.send_close_stream()
    await asyncio.wait_for(task, 60)
    return sent / 32000


async def main():
    pcm = Path(P["pcm"]).read_bytes()
    out = {"messages": [], "errors": []}
    opts = dict(model="nova-3", encoding="linear16", sample_rate=16000, channels=1,
                language="en-US")
    if P["mode"] == "reading":
        async with client(P["api_key"]).listen.v1.connect(
                **opts, interim_results="true", vad_events="true", utterance_end_ms=1000,
                punctuate="true", smart_format="true") as conn:
            out["sent_s"] = await stream(conn, pcm, out["messages"], speed=P.get("speed", 1.0))
    elif P["mode"] == "finalize":
        async with client(P["api_key"]).listen.v1.connect(**opts, interim_results="true") \
                as conn:
            out["sent_s"] = await stream(conn, pcm, out["messages"],
                                         finalize_at=P["finalize_at"], speed=P["speed"])
    else:  # refused handshakes: a wrong key, an encoding earshot cannot take
        for key, extra in (("wrong-key", {}), (P["api_key"], {"encoding": "foo"})):
            try:
                args = {**opts, **extra}
                async with client(key).listen.v1.connect(**args) as conn:
                    await conn.send_close_stream()
                out["errors"].append({"refused": False})
            except Exception as exc:  # the SDK raises on a refused handshake
                out["errors"].append({"refused": True, "kind": type(exc).__name__,
                                      "text": str(exc)[:500]})
    print(json.dumps(out))


asyncio.run(main())
