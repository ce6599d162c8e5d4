"""Run in the `wyoming` client environment: read earshot's frames with the package's own
readers and typed events, and write a client's request with its writers.

stdin: {"server": base64 bytes earshot wrote}; stdout: JSON of what the package read, and
{"client_sync"/"client_async": base64 bytes the package wrote}.
"""

import asyncio
import base64
import io
import json
import sys

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import async_read_event, async_write_event, read_event, write_event
from wyoming.info import Describe, Info
from wyoming.ping import Pong


def typed(event):
    for cls in (Info, TranscriptStart, TranscriptChunk, Transcript, TranscriptStop, Pong, Error):
        if cls.is_type(event.type):
            obj = cls.from_event(event)
            if isinstance(obj, Info):
                [asr] = obj.asr
                return {"type": event.type, "name": asr.name, "version": asr.version,
                        "streaming": asr.supports_transcript_streaming,
                        "models": [{"name": m.name, "languages": m.languages,
                                    "installed": m.installed} for m in asr.models],
                        "attribution": asr.attribution.name}
            return {"type": event.type, **{k: v for k, v in vars(obj).items()
                                            if v is not None}}
    return {"type": event.type, "unknown": True}


async def read_async(data):
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    out = []
    while (event := await async_read_event(reader)) is not None:
        out.append(typed(event))
    return out


class Sink:
    def __init__(self):
        self.buf = io.BytesIO()

    def write(self, data):
        self.buf.write(data)

    def writelines(self, lines):
        for line in lines:
            self.buf.write(line)

    async def drain(self):
        pass

    def flush(self):
        pass


def client_events():
    pcm = bytes(range(256)) * 10
    return [Describe().event(), Transcribe(name="earshot", language="en").event(),
            AudioStart(rate=16000, width=2, channels=1).event(),
            AudioChunk(rate=16000, width=2, channels=1, audio=pcm[:1000]).event(),
            AudioChunk(rate=16000, width=2, channels=1, audio=pcm[1000:]).event(),
            AudioStop().event()]


async def write_async():
    sink = Sink()
    for e in client_events():
        await async_write_event(e, sink)
    return sink.buf.getvalue()


def main():
    payload = json.load(sys.stdin)
    data = base64.b64decode(payload["server"])
    stream = io.BytesIO(data)
    sync = []
    while (event := read_event(stream)) is not None:
        sync.append(typed(event))
    out = {"sync": sync, "async": asyncio.run(read_async(data))}
    sink = io.BytesIO()
    for e in client_events():
        write_event(e, sink)
    out["client_sync"] = base64.b64encode(sink.getvalue()).decode()
    out["client_async"] = base64.b64encode(asyncio.run(write_async())).decode()
    print(json.dumps(out))


main()
