"""The ingest wire protocol, sans I/O: messages in, outputs out. No sockets, no asyncio.

:class:`IngestConnection` is the server side of one ingest WebSocket. The I/O layer feeds it
every text and binary message and carries out what it returns:

* :class:`Send` — send this JSON object to the client;
* :class:`StartRequested` — the client asked to start (or resume) a stream; the I/O layer
  looks the stream up, checks auth, then calls :meth:`IngestConnection.accept` or
  :meth:`IngestConnection.refuse`;
* :class:`AudioIn` — whole sample frames of audio, in wire format, to append to the stream;
* :class:`StopRequested` — the client ended the stream cleanly;
* :class:`Close` — close the socket with this code and reason.

Byte counts that are not a whole number of frames are *carried*: the remainder waits for
the next binary message (WebSocket message boundaries carry no meaning for raw PCM). A
remainder still pending at ``stop`` is discarded and reported in a ``warning``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from earshot.audio import ARCHIVE_FORMATS, WIRE_FORMATS, StreamSpec
from earshot.errors import ProtocolError
from earshot.wire.codes import BUSY, FATAL_CLOSE, RETRYABLE, Code
from earshot.wire.codes import Close as CloseCode

# Every error and close code, and what a client should do after each: earshot.wire.codes
# (BUSY, FATAL_CLOSE and RETRYABLE are re-exported here for the protocol's users).
__all__ = [
    "BUSY",
    "FATAL_CLOSE",
    "RETRYABLE",
    "AudioIn",
    "Close",
    "CloseCode",
    "Code",
    "IngestConnection",
    "Limits",
    "Output",
    "Ping",
    "Send",
    "Start",
    "StartRequested",
    "Stop",
    "StopRequested",
    "error_message",
    "parse_message",
    "parse_start",
    "processors_from_query",
    "spec_from_query",
    "validate_spec",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """What the server accepts. Sizes in bytes, rates in Hz."""

    max_message_bytes: int = 1 << 20
    min_rate: int = 8000
    max_rate: int = 192_000
    max_channels: int = 8
    max_name_chars: int = 200
    max_processors: int = 16  # listed in one start (the server merges and caps them)
    max_client_bytes: int = 4096  # the ``client`` object, as compact JSON


@dataclass(frozen=True, slots=True)
class Start:
    """A parsed ``start`` message (or the implied start of a compatibility-mode client)."""

    spec: StreamSpec
    name: str | None = None
    processors: tuple[Any, ...] | None = None
    resume: str | None = None
    resume_token: str | None = None
    token: str | None = None
    offset: int | None = None
    compat: bool = False
    client: Mapping[str, Any] = field(default_factory=dict)
    pre_skip: int = 0  # opus: the encoder's lookahead, in samples at the stream rate
    archive: str | None = None  # archive format for this stream (default: the server's)
    language: str | None = None  # spoken language (BCP 47, e.g. "en-US"), for speech-to-text
    batch: bool = False  # events ride along with the ack they precede (one message)
    filters: tuple[Any, ...] | None = None  # voice cleanup (dsp/cleanup.py); None: the server's


@dataclass(frozen=True, slots=True)
class Stop:
    """A parsed ``stop`` message; ``length`` (optional) is the true length in frames, so the
    server can trim an encoder's end padding (at most 200 ms)."""

    length: int | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """A parsed ``ping`` message; answered with ``pong`` carrying the same ``id``."""

    id: Any = None


Message = Start | Stop | Ping


@dataclass(frozen=True, slots=True)
class Send:
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StartRequested:
    start: Start


@dataclass(frozen=True, slots=True)
class AudioIn:
    data: bytes
    frames: int


@dataclass(frozen=True, slots=True)
class StopRequested:
    length: int | None = None


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Output = Send | StartRequested | AudioIn | StopRequested | Close


def error_message(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, **extra}


OPUS_LOOKAHEAD_48K = 312  # libopus's lookahead (6.5 ms) at 48 kHz, as Ogg Opus readers assume


def default_pre_skip(rate: int) -> int:
    """The ``pre_skip`` of an Opus ``start`` that gives none: libopus's standard lookahead
    (312 samples at 48 kHz, what ``OPUS_GET_LOOKAHEAD`` returns for ``voip`` and ``audio``)
    scaled to the stream's rate: 104 at 16 kHz, 52 at 8 kHz."""
    return OPUS_LOOKAHEAD_48K * rate // 48000


def _int_field(obj: Mapping[str, Any], key: str, default: int | None = None) -> int | None:
    value = obj.get(key)
    if value is None:  # missing or explicit null: the default
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        # (str.isdigit() is also true for '²' and int() refuses over 4300 digits: found by
        # the stateful fuzz, tests/wire/test_fuzz_ingest.py)
        if isinstance(value, str) and value.strip().isdecimal() and len(value) <= 30:
            return int(value)
        raise ProtocolError(Code.BAD_START, f"'{key}' must be an integer, got {value!r}")
    return value


def _str_field(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ProtocolError(Code.BAD_START, f"'{key}' must be a string, got {type(value).__name__}")


def validate_spec(fmt: Any, rate: Any, channels: Any, limits: Limits) -> StreamSpec:
    """Check a format/rate/channels triple against the limits; raise ProtocolError if not."""
    if fmt not in WIRE_FORMATS:
        raise ProtocolError(
            Code.UNSUPPORTED_FORMAT,
            f"format {fmt!r} is not supported; use one of {', '.join(WIRE_FORMATS)}",
        )
    if fmt == "opus":
        from earshot.codec.opus import OPUS_RATES

        if rate not in OPUS_RATES:
            raise ProtocolError(Code.UNSUPPORTED_RATE, f"opus runs at {OPUS_RATES} Hz, not {rate}")
        if channels not in (1, 2):
            raise ProtocolError(Code.UNSUPPORTED_CHANNELS, "opus streams are mono or stereo")
    if not limits.min_rate <= rate <= limits.max_rate:
        raise ProtocolError(
            Code.UNSUPPORTED_RATE,
            f"rate {rate} Hz is outside {limits.min_rate}..{limits.max_rate} Hz",
        )
    if not 1 <= channels <= limits.max_channels:
        raise ProtocolError(
            Code.UNSUPPORTED_CHANNELS, f"channels {channels} is outside 1..{limits.max_channels}"
        )
    return StreamSpec(fmt, rate, channels)


def parse_start(obj: Mapping[str, Any], limits: Limits) -> Start:
    """Validate the fields of a ``start`` object."""
    rate = _int_field(obj, "rate", 48000) or 0
    channels = _int_field(obj, "channels", 1) or 0
    spec = validate_spec(obj.get("format") or "f32", rate, channels, limits)
    name = _str_field(obj, "name")
    if name is not None and (len(name) > limits.max_name_chars or not name.isprintable()):
        raise ProtocolError(
            Code.BAD_START, f"'name' must be printable and at most {limits.max_name_chars} chars"
        )
    processors = obj.get("processors")
    if processors is not None:
        if not isinstance(processors, list) or len(processors) > limits.max_processors:
            raise ProtocolError(
                Code.BAD_START, f"'processors' must be a list of at most {limits.max_processors}"
            )
        for i, p in enumerate(processors):
            if not isinstance(p, str | dict):
                raise ProtocolError(Code.BAD_START, "each processor is a name or an object")
            if isinstance(p, dict):
                if not isinstance(p.get("name"), str):
                    raise ProtocolError(Code.BAD_START,
                                        f"'processors[{i}].name' must be a string")
                if not isinstance(p.get("options") or {}, dict):
                    raise ProtocolError(Code.BAD_START,
                                        f"'processors[{i}].options' must be an object")
        processors = tuple(processors)
    offset = _int_field(obj, "offset")
    if offset is not None and offset < 0:
        raise ProtocolError(Code.BAD_START, "'offset' must be >= 0")
    client = obj.get("client") or {}
    if not isinstance(client, dict):
        raise ProtocolError(Code.BAD_START, "'client' must be an object")
    if client:
        try:
            size = len(json.dumps(client, separators=(",", ":"), allow_nan=False).encode())
        except (ValueError, RecursionError):
            raise ProtocolError(Code.BAD_START, "'client' must be plain JSON") from None
        if size > limits.max_client_bytes:
            raise ProtocolError(Code.BAD_START, f"'client' must be at most "
                                f"{limits.max_client_bytes} bytes of JSON, got {size}")
    pre_skip = _int_field(obj, "pre_skip")
    if pre_skip is None:  # an encoder that knows nothing of earshot (opuslib, PyAV, WebCodecs)
        pre_skip = default_pre_skip(spec.rate) if spec.format == "opus" else 0
    if not 0 <= pre_skip <= spec.rate:
        raise ProtocolError(Code.BAD_START, "'pre_skip' must be between 0 and one second")
    archive = _str_field(obj, "archive")
    if archive is not None and archive not in ARCHIVE_FORMATS:
        raise ProtocolError(Code.BAD_START, f"'archive' must be one of {ARCHIVE_FORMATS}")
    language = _str_field(obj, "language")
    if language is not None and not re.fullmatch(r"[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*",
                                                 language):
        raise ProtocolError(Code.BAD_START, "'language' must be a language tag such as 'en-US'")
    batch = obj.get("batch", False)
    if not isinstance(batch, bool):
        raise ProtocolError(Code.BAD_START, "'batch' must be true or false")
    from earshot.dsp.cleanup import start_filters

    filters = start_filters(obj.get("filters"))  # a bad spec: ProtocolError bad_start
    return Start(
        spec=spec,
        name=name,
        processors=processors,
        resume=_str_field(obj, "resume"),
        resume_token=_str_field(obj, "resume_token"),
        token=_str_field(obj, "token"),
        offset=offset,
        client=client,
        pre_skip=pre_skip,
        archive=archive,
        language=language,
        batch=batch,
        filters=filters,
    )


def parse_message(text: str, limits: Limits) -> Message:
    """Parse one client text message. Raises :class:`ProtocolError` with a stable code."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(Code.INVALID_JSON, f"text message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(Code.INVALID_JSON, "text message must be a JSON object")
    kind = obj.get("type")
    if kind == "start":
        return parse_start(obj, limits)
    if kind == "stop":
        length = obj.get("length")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)
                                   or length < 0):
            raise ProtocolError(Code.BAD_STOP, "'length' must be a non-negative integer")
        return Stop(length)
    if kind == "ping":
        return Ping(obj.get("id"))
    raise ProtocolError(Code.UNKNOWN_TYPE, f"unknown message type {kind!r}")


def spec_from_query(params: Mapping[str, str], limits: Limits) -> StreamSpec:
    """The stream spec of a compatibility-mode client, from the URL query."""
    try:
        rate = int(params.get("rate", "48000"))
        channels = int(params.get("channels", "1"))
    except ValueError:
        raise ProtocolError(Code.BAD_START,
                            "query 'rate' and 'channels' must be integers") from None
    return validate_spec(params.get("format", "f32"), rate, channels, limits)


def processors_from_query(params: Mapping[str, str], limits: Limits) -> tuple[str, ...] | None:
    """A compatibility-mode client's processors, named in the URL (``?processors=vad,asr``;
    empty: none); None when it names none (the server's defaults run)."""
    text = params.get("processors")
    if text is None:
        return None
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if len(names) > limits.max_processors or any(
            len(n) > limits.max_name_chars or not n.isprintable() for n in names):
        raise ProtocolError(Code.BAD_START, "query 'processors' must name at most "
                            f"{limits.max_processors} processors, separated by commas")
    return names


class State(Enum):
    AWAITING_START = "awaiting_start"
    STARTING = "starting"
    STREAMING = "streaming"
    STOPPING = "stopping"
    CLOSED = "closed"


class IngestConnection:
    """Server side of one ingest connection, as a pure state machine."""

    def __init__(self, limits: Limits, compat: StreamSpec | None = None,
                 compat_processors: tuple[str, ...] | None = None) -> None:
        self.limits = limits
        self.state = State.AWAITING_START
        self.compat = compat
        self.compat_processors = compat_processors
        self.start: Start | None = None
        self.spec: StreamSpec | None = None
        self.offset = 0  # frames of this stream received (held + delivered as AudioIn)
        self._texts_seen = 0
        self._remainder = b""
        self._skip_bytes = 0
        self._pending_binary: bytes | None = None
        self._frame_bytes = 0

    # -- inputs ---------------------------------------------------------------------------
    def receive_text(self, text: str) -> list[Output]:
        if self.state is State.CLOSED:
            return []
        if len(text) > self.limits.max_message_bytes:
            return self._fatal("message_too_large", self._too_large(len(text)))
        self._texts_seen += 1
        try:
            msg = parse_message(text, self.limits)
        except ProtocolError as exc:
            return [Send(error_message(exc.code, exc.message))]
        if isinstance(msg, Ping):
            return [Send({"type": "pong", "id": msg.id})]
        if isinstance(msg, Start):
            if self.state is not State.AWAITING_START:
                return [Send(error_message(Code.ALREADY_STARTED,
                                           "this connection already started"))]
            self.state = State.STARTING
            self.start = msg
            return [StartRequested(msg)]
        # Stop
        if self.state is State.STREAMING:
            self.state = State.STOPPING
            out: list[Output] = []
            if self._remainder:
                out.append(Send(self._partial_warning()))
                self._remainder = b""
            out.append(StopRequested(msg.length))
            return out
        return [Send(error_message(Code.NOT_STARTED, "'stop' before a successful 'start'"))]

    def receive_bytes(self, data: bytes) -> list[Output]:
        state = self.state
        if state is State.STREAMING:
            if len(data) > self.limits.max_message_bytes:
                return self._fatal("message_too_large", self._too_large(len(data)))
            return self._audio(data)
        if state is State.CLOSED:
            return []
        if len(data) > self.limits.max_message_bytes:
            return self._fatal("message_too_large", self._too_large(len(data)))
        if state is State.AWAITING_START and self._texts_seen == 0 and self.compat is not None:
            # Compatibility mode: raw audio with no start, spec from the URL query.
            self.state = State.STARTING
            pre_skip = default_pre_skip(self.compat.rate) if self.compat.format == "opus" else 0
            self.start = Start(spec=self.compat, compat=True, pre_skip=pre_skip,
                               processors=self.compat_processors)
            self._pending_binary = data
            return [StartRequested(self.start)]
        if state is State.STOPPING:
            return [Send(error_message(Code.AFTER_STOP, f"{len(data)} bytes after 'stop' ignored"))]
        return self._fatal(
            "not_started", "binary audio before a successful 'start'; send 'start' first"
        )

    def audio_frames(self, data: bytes) -> int:
        """The hot path of :meth:`receive_bytes`: for a PCM message that needs nothing else
        (streaming, within the size limit, whole frames, nothing to skip or carry over),
        count its frames and return how many; 0 when :meth:`receive_bytes` must decide."""
        fb = self._frame_bytes
        if self.state is not State.STREAMING or not fb or self._skip_bytes or self._remainder:
            return 0
        n = len(data)
        if n > self.limits.max_message_bytes or n % fb:
            return 0
        frames = n // fb
        self.offset += frames
        return frames

    # -- decisions of the I/O layer -------------------------------------------------------
    def accept(self, stream: str, resume_token: str, held: int,
               **extra: Any) -> list[Output]:
        """The stream exists (created or resumed) and holds ``held`` frames.

        ``extra`` fields (e.g. the processors that will run) are added to ``ready``."""
        assert self.state is State.STARTING and self.start is not None
        start = self.start
        spec = start.spec
        if start.offset is not None and start.offset > held:
            return self._fatal(
                "gap",
                f"the server holds {held} frames but the client would continue at "
                f"{start.offset}: frames {held}..{start.offset} are missing",
            )
        self.spec = spec
        self._frame_bytes = spec.frame_bytes
        self.offset = held
        if start.offset is not None:  # (opus: the decoder drops the overlap instead)
            self._skip_bytes = (held - start.offset) * spec.frame_bytes
        self.state = State.STREAMING
        out: list[Output] = [
            Send(
                {
                    "type": "ready",
                    "stream": stream,
                    "resume_token": resume_token,
                    "offset": held,
                    "format": spec.format,
                    "rate": spec.rate,
                    "channels": spec.channels,
                    **extra,
                }
            )
        ]
        if self._pending_binary is not None:
            data, self._pending_binary = self._pending_binary, None
            out.extend(self._audio(data))
        return out

    def refuse(self, code: str, message: str, **extra: Any) -> list[Output]:
        """The start was refused. Fatal codes close; others let the client try again.
        ``extra``: more fields of the error (``frames`` of a finished stream)."""
        assert self.state is State.STARTING
        self.start = None
        self._pending_binary = None
        if code in FATAL_CLOSE:
            return self._fatal(code, message, **extra)
        self.state = State.AWAITING_START
        return [Send(error_message(code, message, **extra))]

    def fail(self, code: str, message: str) -> list[Output]:
        """End the connection from the server side (e.g. superseded by a resume)."""
        return self._fatal(code, message)

    def closed(self) -> None:
        self.state = State.CLOSED

    # -- helpers --------------------------------------------------------------------------
    def _audio(self, data: bytes) -> list[Output]:
        if self._frame_bytes == 0:  # opus: one whole packet per message
            from earshot.codec.opus import packet_samples

            try:
                assert self.spec is not None  # audio is accepted only once started
                frames = packet_samples(data, self.spec.rate)
            except ProtocolError as exc:
                return self._fatal(exc.code, exc.message)
            self.offset += frames
            return [AudioIn(bytes(data), frames)]
        if self._skip_bytes:
            skip = min(self._skip_bytes, len(data))
            self._skip_bytes -= skip
            data = data[skip:]
        if self._remainder:
            data = self._remainder + data
            self._remainder = b""
        fb = self._frame_bytes
        frames, extra = divmod(len(data), fb)
        if extra:
            self._remainder = data[len(data) - extra :]
            data = data[: len(data) - extra]
        if not frames:
            return []
        self.offset += frames
        return [AudioIn(data, frames)]

    def _partial_warning(self) -> dict[str, Any]:
        return {
            "type": "warning",
            "code": Code.PARTIAL_FRAME,
            "message": f"{len(self._remainder)} trailing bytes were less than one frame "
            f"({self._frame_bytes} bytes) and were discarded",
        }

    def _too_large(self, size: int) -> str:
        return f"message of {size} bytes exceeds the limit of {self.limits.max_message_bytes}"

    def _fatal(self, code: str, message: str, **extra: Any) -> list[Output]:
        self.state = State.CLOSED
        return [
            Send(error_message(code, message, **extra)),
            Close(FATAL_CLOSE.get(code, CloseCode.BAD_REQUEST), message[:120]),
        ]
