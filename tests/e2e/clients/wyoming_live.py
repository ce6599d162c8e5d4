"""Run in the `wyoming` environment: the package's ``AsyncTcpClient``, as Home Assistant uses
it, against a real earshot ``--wyoming`` listener.

stdin: {"host", "port", "pcm": path of s16 16 kHz mono, "sentences": [[start_s, end_s]...],
        "concurrent": N}
stdout: {"describe": {...}, "requests": [...], "streaming": {...}, "concurrent": [...],
         "malformed": [...]}
"""

import asyncio
import json
import sys
import time
from pathlib import Path

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info

P = json.load(sys.stdin)
PCM = Path(P["pcm"]).read_bytes()
RATE, WIDTH, CHANNELS = 16000, 2, 1


def piece(start, end):
    return PCM[round(start * RATE) * 2:round(end * RATE) * 2]


async def request(audio, *, stream=False):
    """One request on a fresh connection: transcribe + audio; the events back."""
    out = {"chunks": [], "types": []}
    async with AsyncTcpClient(P["host"], P["port"]) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=RATE, width=WIDTH, channels=CHANNELS).event())
        for i in range(0, len(audio), 3200):  # 100 ms chunks, as fast as they go
            await client.write_event(AudioChunk(rate=RATE, width=WIDTH, channels=CHANNELS,
                                                audio=audio[i:i + 3200]).event())
        await client.write_event(AudioStop().event())
        while True:
            event = await asyncio.wait_for(client.read_event(), 60)
            if event is None:
                break
            out["types"].append(event.type)
            if TranscriptChunk.is_type(event.type):
                out["chunks"].append(TranscriptChunk.from_event(event).text)
            elif Transcript.is_type(event.type):
                out["text"] = Transcript.from_event(event).text
                if not stream:
                    break
            elif TranscriptStop.is_type(event.type) or Error.is_type(event.type):
                if Error.is_type(event.type):
                    out["error"] = Error.from_event(event).text
                break
            elif TranscriptStart.is_type(event.type):
                pass
    return out


async def main():
    out = {}
    async with AsyncTcpClient(P["host"], P["port"]) as client:
        t0 = time.monotonic()
        await client.write_event(Describe().event())
        event = await client.read_event()
        out["describe_ms"] = (time.monotonic() - t0) * 1000
        info = Info.from_event(event)
        [asr] = info.asr
        out["describe"] = {"name": asr.name, "streaming": asr.supports_transcript_streaming,
                           "models": [[m.name, m.languages] for m in asr.models]}
    sentences = P["sentences"]
    out["requests"] = [await request(piece(a - 0.3, b + 0.3)) for a, b in sentences[:3]]
    out["streaming"] = await request(piece(sentences[3][0] - 0.3, sentences[4][1] + 0.3),
                                     stream=True)
    n = P["concurrent"]
    out["concurrent"] = await asyncio.gather(*(
        request(piece(*[sentences[i % len(sentences)][0] - 0.3,
                        sentences[i % len(sentences)][1] + 0.3])) for i in range(n)))
    # a malformed header line: an error event, then the connection closes
    reader, writer = await asyncio.open_connection(P["host"], P["port"])
    writer.write(b"this is not json\n")
    await writer.drain()
    out["malformed"] = (await asyncio.wait_for(reader.read(), 10)).decode(errors="replace")
    writer.close()
    # a payload length beyond the limit
    reader, writer = await asyncio.open_connection(P["host"], P["port"])
    writer.write(b'{"type": "audio-chunk", "payload_length": 999999999}\n')
    await writer.drain()
    out["too_long"] = (await asyncio.wait_for(reader.read(), 10)).decode(errors="replace")
    writer.close()
    print(json.dumps(out))


asyncio.run(main())
