"""What every door asks of the ingest layer, and what it gets back.

Actions (door → ingest layer)
-----------------------------
A door's core returns a list of these; the I/O glue carries them out in order:

* :class:`OpenStream` — open one ordinary earshot stream (through the same path as a native
  ``start``: credentials, admission, archive, processors). Its audio comes as :class:`Audio`
  in ``format`` at ``rate``, with ``channels`` interleaved.
* :class:`Audio` — append these bytes: whole frames of PCM in the stream's wire format
  (``s16`` or ``f32``, little-endian, interleaved), or exactly one Opus packet (``opus``).
* :class:`Finalize` — end the utterance being spoken *now* (as if the VAD had just seen its
  end): its final transcript is decoded at once. See the ``finalized`` event below.
* :class:`Stop` — end the stream as a native ``stop`` does (processors flush, the last finals
  come, then ``stopped``).
* :class:`Send` — send this to the client (a text or binary WebSocket message, or bytes on a
  TCP connection).
* :class:`Close` — close the connection (WebSocket close ``code`` and ``reason``; a TCP door
  ignores both).

Events (ingest layer → door)
----------------------------
Every event the native ingest client would get for its stream, as a mapping, passed to the
core's ``on_event``: ``ready`` (``stream``), processor events
(``{"type", "stream", "t", "processor", ...}``: ``speech_start``, ``speech_end``,
``transcript`` with ``final``/``text``/``stable``/``start``/``end``/``segment``/``words``),
``warning``, ``error`` (``code``, ``message``; without ``processor`` it is the stream's) and
``stopped`` (``offset``, ``duration``). Two more the glue must produce for :class:`Finalize`:

* the final transcript a :class:`Finalize` cut carries ``"finalize": true``;
* after each :class:`Finalize`, exactly one ``{"type": "finalized", "t": T, "segment": N}``
  comes, after that final (``segment`` null when nothing was being said).

Every processor event of a stream reaches the door before its ``stopped``.

Per door, the glue
------------------
* Wyoming (TCP, ``--wyoming``): check the peer against ``--wyoming-allow``; bytes →
  ``WyomingReader.feed`` → each event → ``WyomingSession.receive``; a ``DoorError`` from the
  reader → ``session.fail(exc)``; stream events → ``on_event``.
* Icecast (TCP, ``--icecast``): ``IcecastConnection(now)``; bytes → ``receive(data, now)``;
  on ``SourceRequested`` check ``request.token`` and that the mount is free, then
  ``accept(now)`` or ``refuse(DoorError(..., status=401|403))``; ``Body`` →
  ``StreamDecoder(request.format)``; its first block opens the stream (``f32`` at the
  decoder's rate and channels, ``name=request.name``, ``request.processors`` or the door's,
  ``client=request.client_info()``); ``tick(now)`` at ``next_deadline``; the client's close
  → ``decoder.close()``, the last blocks, then stop.
* Deepgram (``/v1/listen``): ``deepgram.handshake(query, headers, subprotocols)``; refuse
  with ``handshake_error`` or accept echoing ``subprotocol``; ``DeepgramLive(options, ...,
  decoder=StreamDecoder)``; binary → ``receive_bytes``, text → ``receive_text``,
  ``tick(now)`` at ``next_deadline``, the decoder's ``notify`` → ``poll(now)``.
* OpenAI REST: ``parse_transcription_form``, ``check_upload``, decode the file into a stream
  (as fast as it decodes), collect its finals, ``render`` (or ``TranscriptStream``).
* OpenAI Realtime: ``openai_realtime.handshake``; ``RealtimeSession(...)``; ``open()``
  first, then text → ``receive_text``, binary → ``receive_bytes``, events → ``on_event``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

try:  # the server's JSON writer (the ``server`` extra); the standard library's otherwise
    import orjson

    def dumps(obj: Any) -> str:
        """A JSON text message (orjson when installed, as the server's hot path uses)."""
        return orjson.dumps(obj).decode()
except ImportError:  # pragma: no cover - a client-only install
    def dumps(obj: Any) -> str:
        """A JSON text message (orjson when installed, as the server's hot path uses)."""
        return json.dumps(obj, ensure_ascii=False)

WireFormat = Literal["s16", "f32", "opus"]

#: earshot's accepted ranges for a stream (see the ingest protocol's ``unsupported_*`` errors)
MIN_RATE, MAX_RATE = 8000, 192000
MAX_CHANNELS = 8

Event = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Open an earshot stream for this session (see the module docstring)."""

    format: WireFormat
    rate: int
    channels: int
    #: the stream's name (None: the glue's default for the door)
    name: str | None = None
    #: processors the dialect needs (specs as in ``start``); the glue adds the door's defaults
    processors: tuple[str | Mapping[str, Any], ...] = ()
    #: BCP 47 / ISO 639-1 tag of the spoken language, for speech-to-text
    language: str | None = None
    #: what the stream's ``client`` info records (the dialect, the client's own words)
    client: Mapping[str, Any] = field(default_factory=dict)
    #: text to guide an engine that takes one (OpenAI's ``prompt``)
    prompt: str | None = None


@dataclass(frozen=True, slots=True)
class Audio:
    """Append audio to the stream opened by :class:`OpenStream`."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Finalize:
    """End the current utterance now; its final (``"finalize": true``) then ``finalized``."""


@dataclass(frozen=True, slots=True)
class Stop:
    """End the stream (processors flush, then ``stopped``)."""


@dataclass(frozen=True, slots=True)
class Send:
    """Send this to the client: ``str`` as a text message, ``bytes`` as binary."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection; ``code``/``reason`` are a WebSocket close's."""

    code: int = 1000
    reason: str = ""


Action = OpenStream | Audio | Finalize | Stop | Send | Close


class DoorError(Exception):
    """A client broke a door's protocol; ``code`` is machine-readable, the message is for
    the client. ``status`` is the HTTP status where the door answers over HTTP."""

    def __init__(self, code: str, message: str, *, status: int = 400,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.param = param


def is_transcript(event: Event) -> bool:
    return event.get("type") == "transcript"


def is_stream_error(event: Event) -> bool:
    """An ``error`` of the stream itself (not a processor's, which leaves the stream going)."""
    return event.get("type") == "error" and not event.get("processor")


def words_of(text: Any) -> list[str]:
    """Whitespace-separated words (newlines and runs of spaces collapse)."""
    return str(text or "").split()


class SegmentedGrowth:
    """The text said so far across a stream's utterances, growing only by what is promised.

    Utterances (``segment`` numbers, consecutive from ``first``) are taken in order: the
    promised text is every final of the utterances before the first one still going, then
    that one's ``stable`` prefix.
    :meth:`update` takes a ``transcript`` event and returns what was added to the promise
    (with its leading space), so the pieces, joined, are always the promise so far; nothing
    promised is ever taken back. A later utterance waits for the ones before it.

    A final that does not keep its utterance's stable prefix (the ``asr`` processor never
    does that) cannot be joined on: :attr:`diverged` is set, and nothing more is added.
    """

    def __init__(self, first: int | None = None) -> None:
        #: the first utterance of the text (None: the first one seen)
        self.first = first
        self._finals: dict[int, list[str]] = {}
        self._stable: dict[int, list[str]] = {}
        self._closed: set[int] = set()  # segments with a final or an error
        self.promised: list[str] = []
        self.diverged = False

    def update(self, event: Event) -> str:
        """Feed a ``transcript`` (or a processor ``error`` with a ``segment``); the growth."""
        seg = event.get("segment")
        if not isinstance(seg, int) or seg in self._closed:
            return ""
        if self.first is None:
            self.first = seg
        if seg < self.first:
            return ""
        if event.get("type") == "error":
            self._finals[seg] = []
            self._closed.add(seg)
        elif event.get("final"):
            self._finals[seg] = words_of(event.get("text"))
            self._closed.add(seg)
        else:
            self._stable[seg] = words_of(event.get("stable"))
        return self._grow(self._target(upto_open=True))

    def finish(self) -> str:
        """The stream ended: every final is in; utterances still open keep what they
        promised. Returns the last growth."""
        return self._grow(self._target(upto_open=False))

    def _segments(self) -> list[int]:
        return sorted(set(self._finals) | set(self._stable))

    def _target(self, *, upto_open: bool) -> list[str]:
        words: list[str] = []
        if not upto_open:  # the end: everything known, in order
            for seg in self._segments():
                words += self._finals.get(seg, self._stable.get(seg, []))
            return words
        if self.first is None:
            return words
        n = self.first
        while n in self._finals:  # consecutive finals
            words += self._finals[n]
            n += 1
        return words + self._stable.get(n, [])

    def _grow(self, target: list[str]) -> str:
        if self.diverged:
            return ""
        n = len(self.promised)
        if target[:n] != self.promised:
            self.diverged = True
            return ""
        new = target[n:]
        if not new:
            return ""
        self.promised = target
        return (" " if n else "") + " ".join(new)

    @property
    def text(self) -> str:
        """The promise so far."""
        return " ".join(self.promised)

    def final_text(self) -> str:
        """Every final's words in utterance order (what the utterances finally said)."""
        return " ".join(w for seg in sorted(self._finals) for w in self._finals[seg])


def final_words(finals: Iterable[Event]) -> list[dict[str, Any]]:
    """The words of these finals, in order (``{"w", "start", "end", "p"}``)."""
    out: list[dict[str, Any]] = []
    for f in finals:
        for w in f.get("words") or []:
            if isinstance(w, Mapping) and str(w.get("w", "")).strip():
                out.append(dict(w))
    return out
