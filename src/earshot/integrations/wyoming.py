"""Wyoming (Home Assistant's speech-to-text protocol), sans I/O: framing and one session.

Framing, as the ``wyoming`` package defines it (``wyoming/event.py``): each event is a
JSON header line ``{"type", "data"?, "data_length"?, "payload_length"?, "version"?}`` ended
by ``\\n``, then ``data_length`` bytes of a JSON object (merged over the header's ``data``),
then ``payload_length`` bytes of payload (audio). :class:`WyomingReader` turns bytes into
:class:`WyomingEvent`\\ s, holding partial events across reads, within limits (header line,
data and payload lengths): past one, or on a header that is not a JSON object with a
string ``type``, it raises :class:`~earshot.integrations.common.DoorError` — the framing is
lost, so the connection must end (after an ``error`` event). :func:`encode_event` writes an
event exactly as ``wyoming.event.write_event`` does.

:class:`WyomingSession` is one connection's speech-to-text server:

* ``describe`` → ``info`` with one ``asr`` program (:class:`WyomingInfo`);
* ``ping`` → ``pong``;
* ``transcribe`` (``language``, ``name``) then ``audio-start`` (``rate``, ``width``,
  ``channels``) → :class:`~earshot.integrations.common.OpenStream`; each ``audio-chunk``
  (which carries ``rate``/``width``/``channels`` too, checked against the start) →
  :class:`~earshot.integrations.common.Audio`; ``audio-stop`` →
  :class:`~earshot.integrations.common.Finalize` and
  :class:`~earshot.integrations.common.Stop` (the utterance is finalized at once, not when
  earshot's VAD would end it);
* earshot's ``transcript`` events → ``transcript-start`` once, then ``transcript-chunk``\\ s
  carrying only growth of the stable text (interims' ``stable``, then finals; chunks never
  retract, so joined they are the transcript); the stream's ``stopped`` → the last chunk,
  ``transcript`` (every final of the request, in order), ``transcript-stop``. Clients that
  do not stream ignore the chunk events, as the protocol says, and read ``transcript``;
* anything else is ignored, as the protocol requires. A connection may carry several
  requests, one after the other: each is its own earshot stream.

Audio widths 2 (int16, passed through) and 4 (int32, sent as float32) are taken.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from earshot.integrations.common import (
    MAX_CHANNELS,
    MAX_RATE,
    MIN_RATE,
    Action,
    Audio,
    Close,
    DoorError,
    Event,
    Finalize,
    OpenStream,
    SegmentedGrowth,
    Send,
    Stop,
    is_stream_error,
    is_transcript,
)

#: the protocol version written in every header (the ``wyoming`` release it matches)
PROTOCOL_VERSION = "1.10.2"

MAX_HEADER_BYTES = 64 * 1024
MAX_DATA_BYTES = 1024 * 1024
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
MAX_TYPE_CHARS = 100


@dataclass(slots=True)
class WyomingEvent:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    payload: bytes | None = None


def _length(header: Mapping[str, Any], key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DoorError("bad_header", f"{key} must be a non-negative integer, not {value!r}")
    if value > limit:
        kind = "payload_too_large" if key == "payload_length" else "data_too_large"
        raise DoorError(kind, f"{key} {value} is beyond the limit of {limit} bytes")
    return value


class WyomingReader:
    """Bytes in, events out (see the module docstring). Raises ``DoorError`` with code
    ``header_too_long``, ``bad_header``, ``bad_data``, ``data_too_large`` or
    ``payload_too_large``; after one, the reader is unusable."""

    def __init__(self, *, max_header: int = MAX_HEADER_BYTES, max_data: int = MAX_DATA_BYTES,
                 max_payload: int = MAX_PAYLOAD_BYTES) -> None:
        self.max_header = max_header
        self.max_data = max_data
        self.max_payload = max_payload
        self._buf = bytearray()
        self._header: dict[str, Any] | None = None  # parsed, waiting for data + payload
        self._need = 0
        self._data_length = 0
        self._failed = False

    @property
    def pending(self) -> int:
        """Bytes held of an event not yet complete."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[WyomingEvent]:
        if self._failed:
            raise DoorError("bad_header", "the connection's framing was already lost")
        self._buf += data
        out: list[WyomingEvent] = []
        try:
            while True:
                if self._header is None:
                    nl = self._buf.find(b"\n", 0, self.max_header + 1)
                    if nl < 0:
                        if len(self._buf) > self.max_header:
                            raise DoorError("header_too_long",
                                            f"header line longer than {self.max_header} bytes")
                        break
                    line = bytes(self._buf[:nl])
                    del self._buf[:nl + 1]
                    if not line.strip():
                        continue  # a blank line carries nothing
                    self._start(line)
                if len(self._buf) < self._need:
                    break
                out.append(self._finish())
        except DoorError:
            self._failed = True
            raise
        return out

    def _start(self, line: bytes) -> None:
        try:
            header = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            shown = line[:80].decode("utf-8", "replace")
            raise DoorError("bad_header", f"header line is not JSON: {shown!r}") from None
        if not isinstance(header, dict):
            raise DoorError("bad_header", "header line must be a JSON object")
        kind = header.get("type")
        if not isinstance(kind, str) or not kind or len(kind) > MAX_TYPE_CHARS:
            raise DoorError("bad_header", "header has no event type (a string)")
        if header.get("data") is not None and not isinstance(header["data"], dict):
            raise DoorError("bad_header", "header data must be a JSON object")
        self._data_length = _length(header, "data_length", self.max_data)
        payload_length = _length(header, "payload_length", self.max_payload)
        self._header = header
        self._need = self._data_length + payload_length

    def _finish(self) -> WyomingEvent:
        header, n, d = self._header, self._need, self._data_length
        assert header is not None
        body = bytes(self._buf[:n])
        del self._buf[:n]
        self._header, self._need, self._data_length = None, 0, 0
        data = dict(header.get("data") or {})
        if d:
            try:
                extra = json.loads(body[:d])
            except (ValueError, UnicodeDecodeError):
                raise DoorError("bad_data", "event data is not JSON") from None
            if not isinstance(extra, dict):
                raise DoorError("bad_data", "event data must be a JSON object")
            data.update(extra)
        payload = body[d:] if n > d else None
        return WyomingEvent(header["type"], data, payload)


def encode_event(type: str, data: Mapping[str, Any] | None = None,
                 payload: bytes | None = None) -> bytes:
    """One event's bytes, as ``wyoming.event.write_event`` writes them."""
    header: dict[str, Any] = {"type": type, "version": PROTOCOL_VERSION}
    data_bytes = b""
    if data:
        data_bytes = json.dumps(dict(data), ensure_ascii=False).encode("utf-8")
        header["data_length"] = len(data_bytes)
    if payload:
        header["payload_length"] = len(payload)
    line = json.dumps(header, ensure_ascii=False).encode("utf-8")
    return b"".join((line, b"\n", data_bytes, payload or b""))


# --- describe -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AsrModelInfo:
    """One speech-to-text model as ``info`` lists it."""

    name: str
    languages: tuple[str, ...]
    description: str | None = None
    version: str | None = None
    attribution_name: str = "earshot"
    attribution_url: str = "https://github.com/earshot-audio/earshot"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name,
                "attribution": {"name": self.attribution_name, "url": self.attribution_url},
                "installed": True, "description": self.description, "version": self.version,
                "languages": list(self.languages)}


@dataclass(frozen=True, slots=True)
class WyomingInfo:
    """What ``describe`` answers: one ``asr`` program with its models."""

    models: tuple[AsrModelInfo, ...]
    version: str
    name: str = "earshot"
    description: str = "earshot: real-time speech-to-text with a lossless archive"
    attribution_name: str = "earshot"
    attribution_url: str = "https://github.com/earshot-audio/earshot"

    def data(self) -> dict[str, Any]:
        program = {
            "name": self.name,
            "attribution": {"name": self.attribution_name, "url": self.attribution_url},
            "installed": True,
            "description": self.description,
            "version": self.version,
            "models": [m.to_dict() for m in self.models],
            "supports_transcript_streaming": True,
            # the end of a command is the client's audio-stop (Home Assistant's own VAD)
            "requires_external_vad": True,
            "prefers_auto_gain_enabled": True,
            "prefers_noise_reduction_enabled": True,
        }
        return {"asr": [program], "tts": [], "handle": [], "intent": [], "wake": [],
                "mic": [], "snd": []}


# --- one connection -----------------------------------------------------------------------


def _format(data: Mapping[str, Any], what: str) -> tuple[int, int, int]:
    values = []
    for key in ("rate", "width", "channels"):
        v = data.get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise DoorError("bad_audio_format", f"{what} needs an integer {key!r}, not {v!r}")
        values.append(v)
    rate, width, channels = values
    if not MIN_RATE <= rate <= MAX_RATE:
        raise DoorError("bad_audio_format",
                        f"rate {rate} is outside {MIN_RATE}-{MAX_RATE} Hz")
    if width not in (2, 4):
        raise DoorError("bad_audio_format", f"width {width} is not supported: send 2 (16-bit) "
                        "or 4 (32-bit) bytes a sample")
    if not 1 <= channels <= MAX_CHANNELS:
        raise DoorError("bad_audio_format", f"channels {channels} is outside 1-{MAX_CHANNELS}")
    return rate, width, channels


def _text_field(data: Mapping[str, Any], key: str, limit: int = 100) -> str | None:
    v = data.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > limit or not v.isprintable():
        raise DoorError("bad_request", f"{key!r} must be a short printable string")
    return v or None


class WyomingSession:
    """One Wyoming connection (see the module docstring). ``name`` is the streams' name,
    ``client`` extra client info (the peer's address, say); ``processors`` what each
    request's stream runs (the glue adds its defaults)."""

    def __init__(self, info: WyomingInfo, *, name: str | None = None,
                 client: Mapping[str, Any] | None = None,
                 processors: Iterable[str | Mapping[str, Any]] = ("vad", "asr")) -> None:
        self.info = info
        self.name = name
        self.client = dict(client or {})
        self.processors = tuple(processors)
        self.state = "idle"  # idle | requested | streaming | stopping
        self.language: str | None = None
        self.model: str | None = None
        self.format: tuple[int, int, int] | None = None
        self._carry = b""
        self._growth = SegmentedGrowth(first=0)
        self._started = False  # transcript-start sent
        self._final_language: str | None = None
        self.requests = 0
        #: bytes of trailing partial frames discarded at ``audio-stop`` (for the glue's log)
        self.partial_bytes = 0

    # client → server -----------------------------------------------------------------

    def receive(self, event: WyomingEvent) -> list[Action]:
        if self.state == "closed":
            return []
        try:
            return self._receive(event)
        except DoorError as exc:
            return self.fail(exc)

    def fail(self, exc: DoorError) -> list[Action]:
        """Answer a broken request (or lost framing) with an ``error`` event and a close;
        a stream already open is stopped."""
        out: list[Action] = [Send(encode_event("error", {"text": exc.message,
                                                         "code": exc.code}))]
        if self.state == "streaming":
            out.append(Stop())
        self.state = "closed"
        out.append(Close())
        return out

    def _receive(self, event: WyomingEvent) -> list[Action]:
        kind, data = event.type, event.data
        if kind == "describe":
            return [Send(encode_event("info", self.info.data()))]
        if kind == "ping":
            return [Send(encode_event("pong", {"text": data.get("text")}))]
        if kind == "transcribe":
            if self.state in ("streaming", "stopping"):
                raise DoorError("busy", "transcribe while a request is still going")
            self.language = _text_field(data, "language")
            self.model = _text_field(data, "name")
            self.state = "requested"
            return []
        if kind == "audio-start":
            if self.state in ("streaming", "stopping"):
                raise DoorError("busy", "audio-start while a request is still going")
            return self._open(_format(data, "audio-start"))
        if kind == "audio-chunk":
            fmt = _format(data, "audio-chunk")
            out: list[Action] = []
            if self.state in ("idle", "requested"):
                out = self._open(fmt)
            elif self.state == "stopping":
                raise DoorError("after_stop", "audio-chunk after audio-stop")
            elif fmt != self.format:
                raise DoorError("bad_audio_format",
                                f"audio-chunk format {fmt} differs from audio-start's "
                                f"{self.format} (rate, width, channels)")
            return out + self._audio(event.payload or b"")
        if kind == "audio-stop":
            if self.state == "streaming":
                self.state = "stopping"
                # audio that ended inside a frame: the part cannot be a sample; counted for
                # the glue's log (the native protocol warns with ``partial_frame``)
                self.partial_bytes += len(self._carry)
                self._carry = b""
                return [Finalize(), Stop()]
            if self.state == "requested":  # no audio at all: nothing was said
                return self._answer()
            return []
        return []  # unknown events are ignored, as the protocol requires

    def _open(self, fmt: tuple[int, int, int]) -> list[Action]:
        rate, width, channels = fmt
        self.format = fmt
        self.state = "streaming"
        self.requests += 1
        self._carry = b""
        self._growth = SegmentedGrowth(first=0)
        self._started = False
        self._final_language = None
        client = {"dialect": "wyoming", **self.client}
        if self.model:
            client["model"] = self.model
        return [OpenStream("s16" if width == 2 else "f32", rate, channels, name=self.name,
                           processors=self.processors, language=self.language,
                           client=client)]

    def _audio(self, payload: bytes) -> list[Action]:
        assert self.format is not None
        _, width, channels = self.format
        frame = width * channels
        data = self._carry + payload
        whole = len(data) - len(data) % frame
        self._carry = data[whole:]
        if not whole:
            return []
        if width == 2:
            return [Audio(data[:whole])]
        x = np.frombuffer(data[:whole], dtype="<i4").astype(np.float32) / np.float32(2**31)
        return [Audio(x.astype("<f4").tobytes())]

    # earshot → client ----------------------------------------------------------------

    def on_event(self, event: Event) -> list[Action]:
        if self.state not in ("streaming", "stopping"):
            return []
        if is_transcript(event) or (event.get("type") == "error" and "segment" in event):
            if event.get("final") and event.get("language"):
                self._final_language = str(event["language"])
            return self._chunk(self._growth.update(event))
        if event.get("type") == "stopped":
            return self._chunk(self._growth.finish()) + self._answer()
        if is_stream_error(event):
            exc = DoorError(str(event.get("code") or "internal"),
                            str(event.get("message") or "the stream failed"))
            out = [Send(encode_event("error", {"text": exc.message, "code": exc.code}))]
            self.state = "closed"
            return [*out, Close()]
        return []

    def _begin(self) -> list[Action]:
        if self._started:
            return []
        self._started = True
        language = self.language or self._final_language
        return [Send(encode_event("transcript-start",
                                  {"language": language} if language else None))]

    def _chunk(self, text: str) -> list[Action]:
        if not text:
            return []
        return [*self._begin(), Send(encode_event("transcript-chunk", {"text": text}))]

    def _answer(self) -> list[Action]:
        g = self._growth
        text = g.final_text() if g.diverged else g.text
        data: dict[str, Any] = {"text": text}
        language = self.language or self._final_language
        if language:
            data["language"] = language
        out = [*self._begin(), Send(encode_event("transcript", data)),
               Send(encode_event("transcript-stop"))]
        self.state = "idle"
        self.language = self.model = None
        self.format = None
        return out
