"""Run in the `openai[realtime]` environment: the SDK's speech-to-text calls against a real
earshot server, as an app pointed at it with ``base_url`` makes them.

stdin: {"base_url", "api_key", "file", "speech", "mp3", "limit"}
stdout: {"json", "verbose", "srt", "vtt", "text", "stream", "models", "errors": [...]}
"""

import json
import sys
from pathlib import Path

import openai
from openai import OpenAI

P = json.load(sys.stdin)
client = OpenAI(api_key=P["api_key"], base_url=P["base_url"], max_retries=0, timeout=120)
wav = Path(P["file"]).read_bytes()
speech = Path(P["speech"]).read_bytes()
out = {}

t = client.audio.transcriptions.create(file=("reading.wav", wav), model="whisper-1")
out["json"] = {"text": t.text, "usage": t.usage.model_dump() if t.usage else None}
mp3 = client.audio.transcriptions.create(file=("reading.mp3", Path(P["mp3"]).read_bytes()),
                                         model="gpt-4o-transcribe", response_format="text")
out["mp3_text"] = mp3
v = client.audio.transcriptions.create(
    file=("speech.wav", speech), model="whisper-1", response_format="verbose_json",
    timestamp_granularities=["word", "segment"], language="en")
out["verbose"] = {"text": v.text, "duration": v.duration, "language": v.language,
                  "segments": [[s.id, s.start, s.end, s.text] for s in v.segments or []],
                  "words": [[w.word, w.start, w.end] for w in v.words or []]}
for fmt in ("srt", "vtt"):
    out[fmt] = client.audio.transcriptions.create(file=("speech.wav", speech), model="whisper-1",
                                                  response_format=fmt)
events = client.audio.transcriptions.create(file=("speech.wav", speech),
                                            model="gpt-4o-transcribe", stream=True)
out["stream"] = [[e.type, getattr(e, "delta", None), getattr(e, "text", None)] for e in events]
out["models"] = [m.id for m in client.models.list().data]

errors = []


def expect(fn):
    try:
        fn()
    except openai.APIStatusError as exc:
        errors.append({"status": exc.status_code, "code": exc.code, "param": exc.param,
                       "type": exc.type, "message": exc.message})
    else:
        errors.append({"status": 200})


bad = OpenAI(api_key="wrong", base_url=P["base_url"], max_retries=0)
expect(lambda: bad.audio.transcriptions.create(file=("r.wav", speech), model="whisper-1"))
expect(lambda: client.audio.transcriptions.create(file=("notes.txt", b"hello, not audio" * 8),
                                                  model="whisper-1"))
expect(lambda: client.audio.transcriptions.create(
    file=("big.wav", wav[:44] + b"\0" * (P["limit"] + 1)), model="whisper-1"))
expect(lambda: client.audio.transcriptions.create(file=("r.wav", speech), model="whisper-1",
                                                  response_format="docx"))
expect(lambda: client.audio.translations.create(file=("r.wav", speech), model="whisper-1"))
out["errors"] = errors
print(json.dumps(out))
