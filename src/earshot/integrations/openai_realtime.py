"""OpenAI's Realtime API, transcription sessions (``/v1/realtime?intent=transcription``),
sans I/O.

Client events: ``session.update`` in the GA shape (``{"type": "transcription", "audio":
{"input": {"format", "transcription", "turn_detection", "noise_reduction"}}}``) or the beta
``transcription_session.update`` (``input_audio_format``, ``input_audio_transcription``,
``turn_detection``); ``input_audio_buffer.append`` (base64 audio: ``audio/pcm`` 24 kHz
16-bit mono, ``audio/pcmu``, ``audio/pcma`` 8 kHz), ``.commit``, ``.clear``. Anything else
gets an ``error`` event; the session goes on.

Server events, from earshot's: ``session.created``/``session.updated`` (beta:
``transcription_session.*``) with the effective configuration;
``input_audio_buffer.speech_started``/``speech_stopped`` from the ``vad`` processor
(``audio_start_ms``/``audio_end_ms`` in stream time, which is the session's audio), each
utterance an *item*; ``input_audio_buffer.committed`` when it ends (or on ``commit``);
``conversation.item.input_audio_transcription.delta`` carrying only growth of the stable
text of the item (the deltas, joined, are the transcript) and ``.completed`` with the item's
finals; ``error``.

Turn detection: with ``server_vad`` (the default; ``semantic_vad`` is taken as it) earshot's
VAD makes the items; its settings (``threshold``, ``prefix_padding_ms``,
``silence_duration_ms``) apply if given before the first audio. With ``turn_detection:
null`` the client's ``commit`` ends an item (:class:`~earshot.integrations.common.Finalize`
cuts the utterance being spoken; the item completes at the ``finalized`` event). ``clear``
drops the uncommitted item's transcript (its audio stays in the archive, as all audio
does). Transcripts are matched to items by time: the ``asr`` processor's utterances and the
``vad`` processor's are the same model with the same settings, so they agree; a transcript
no item covers becomes an item of its own.
"""

from __future__ import annotations

import binascii
import itertools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from earshot.integrations.common import (
    Action,
    Audio,
    Close,
    DoorError,
    Event,
    Finalize,
    OpenStream,
    SegmentedGrowth,
    Send,
    dumps,
    is_stream_error,
    is_transcript,
)
from earshot.integrations.g711 import alaw_to_s16, mulaw_to_s16

MAX_APPEND_BYTES = 15 * 1024 * 1024  # OpenAI's limit for one append
MAX_TEXT_CHARS = 24 * 1024 * 1024
MIN_COMMIT_MS = 100
SESSION_SECONDS = 60 * 60  # a session's advertised lifetime (expires_at)
#: a transcript this far (s) from every item's span gets an item of its own
MATCH_TOLERANCE = 1.0
FORMATS = {"audio/pcm": 24000, "audio/pcmu": 8000, "audio/pcma": 8000}
BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")


def _random_ids() -> Callable[[str], str]:
    import secrets

    def make(prefix: str) -> str:
        return f"{prefix}_{secrets.token_hex(10)}"
    return make


def counting_ids() -> Callable[[str], str]:
    """Deterministic ids (``event_1``, ``item_2``...), for tests."""
    n = itertools.count(1)
    return lambda prefix: f"{prefix}_{next(n)}"


@dataclass(frozen=True, slots=True)
class RealtimeHandshake:
    token: str | None
    beta: bool
    subprotocol: str | None  # to echo (browsers offer "realtime")
    model: str | None
    error: DoorError | None = None


def handshake(query: Mapping[str, str], headers: Mapping[str, str],
              subprotocols: Sequence[str] = ()) -> RealtimeHandshake:
    """``?intent=transcription`` (and ``model=``, which some clients add), the key from
    ``Authorization: Bearer`` or the browser subprotocol ``openai-insecure-api-key.KEY``,
    and whether the client speaks the beta (``OpenAI-Beta: realtime=v1``)."""
    h = {k.lower(): v for k, v in headers.items()}
    token = None
    auth = h.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        token = auth[7:].strip()
    protos = [p.strip() for p in subprotocols]
    for p in protos:
        if token is None and p.startswith("openai-insecure-api-key."):
            token = p[len("openai-insecure-api-key."):] or None
    beta = "realtime=v1" in h.get("openai-beta", "") or "openai-beta.realtime-v1" in protos
    echo = "realtime" if "realtime" in protos else None
    model = query.get("model") or None
    error = None
    if query.get("intent") != "transcription":
        error = DoorError("unsupported_intent", "earshot offers Realtime transcription "
                          "sessions only: connect with ?intent=transcription", status=400,
                          param="intent")
    return RealtimeHandshake(token, beta, echo, model, error)


@dataclass
class _Item:
    id: str
    start: float
    end: float | None = None
    vad: bool = False  # made by a speech_start
    manual: bool = False  # ends by commit (Finalize), completes at ``finalized``
    committed: bool = False
    completed: bool = False
    discarded: bool = False
    finalized: bool = False
    segments: set[int] = field(default_factory=set)
    finals: set[int] = field(default_factory=set)
    growth: SegmentedGrowth = field(default_factory=SegmentedGrowth)

    def distance(self, t: float) -> float:
        if t < self.start:
            return self.start - t
        if self.end is not None and t > self.end:
            return t - self.end
        return 0.0


@dataclass
class _Config:
    format: str = "audio/pcm"
    model: str = "earshot"
    language: str | None = None
    prompt: str | None = None
    turn_detection: bool = True
    threshold: float = 0.5
    prefix_padding_ms: int = 30
    silence_duration_ms: int = 300
    include: list[str] = field(default_factory=list)


class RealtimeSession:
    """One transcription session (see the module docstring). ``created`` is the session's
    start in Unix seconds (for ``expires_at``); ``model`` what the query or the engine
    names; ``ids`` makes event and item ids."""

    def __init__(self, *, session_id: str, created: int, model: str = "earshot",
                 beta: bool = False, name: str | None = None,
                 client: Mapping[str, Any] | None = None,
                 ids: Callable[[str], str] | None = None,
                 max_append_bytes: int = MAX_APPEND_BYTES) -> None:
        self.session_id = session_id
        self.created = created
        self.beta = beta
        self.name = name
        self.client = dict(client or {})
        self.max_append_bytes = max_append_bytes
        self._ids = ids or _random_ids()
        self.config = _Config(model=model)
        self.opened = False
        self.closed = False
        self.frames = 0  # appended, at the format's rate
        self._carry = b""
        self._items: list[_Item] = []
        self._open_vad: _Item | None = None  # speech going on
        self._current: _Item | None = None  # manual mode: audio since the last commit
        self._last_committed: str | None = None
        self._boundary = 0.0  # stream time of the last commit or clear
        self._pending: list[_Item | None] = []  # Finalize requests awaiting ``finalized``
        self._seg_item: dict[int, _Item | None] = {}

    # --- the session object -------------------------------------------------------------

    @property
    def rate(self) -> int:
        return FORMATS[self.config.format]

    @property
    def seconds(self) -> float:
        return self.frames / self.rate

    def _turn(self) -> dict[str, Any] | None:
        c = self.config
        if not c.turn_detection:
            return None
        return {"type": "server_vad", "threshold": c.threshold,
                "prefix_padding_ms": c.prefix_padding_ms,
                "silence_duration_ms": c.silence_duration_ms}

    def session(self) -> dict[str, Any]:
        """The session as ``session.created``/``updated`` carry it (GA shape)."""
        c = self.config
        fmt: dict[str, Any] = {"type": c.format}
        if c.format == "audio/pcm":
            fmt["rate"] = 24000
        return {
            "type": "transcription", "id": self.session_id,
            "object": "realtime.transcription_session",
            "expires_at": self.created + SESSION_SECONDS,
            "audio": {"input": {
                "format": fmt,
                "transcription": {"model": c.model, "language": c.language,
                                  "prompt": c.prompt or ""},
                "noise_reduction": None,
                "turn_detection": self._turn()}},
            "include": list(c.include)}

    def beta_session(self) -> dict[str, Any]:
        """The session in the beta shape (``transcription_session.*``)."""
        c = self.config
        return {
            "id": self.session_id, "object": "realtime.transcription_session",
            "expires_at": self.created + SESSION_SECONDS,
            "input_audio_format": {v: k for k, v in BETA_FORMATS.items()}[c.format],
            "input_audio_transcription": {"model": c.model, "language": c.language,
                                          "prompt": c.prompt or ""},
            "turn_detection": self._turn(), "input_audio_noise_reduction": None,
            "include": list(c.include), "modalities": ["text"]}

    def open(self) -> list[Action]:
        """The first event of the connection."""
        if self.beta:
            return [self._send("transcription_session.created", session=self.beta_session())]
        return [self._send("session.created", session=self.session())]

    def _send(self, type: str, **fields: Any) -> Send:
        return Send(dumps({"type": type, "event_id": self._ids("event"), **fields}))

    def _error(self, exc: DoorError, client_event: str | None = None) -> Send:
        return self._send("error", error={"type": "invalid_request_error", "code": exc.code,
                                          "message": exc.message, "param": exc.param,
                                          "event_id": client_event})

    # --- client events ------------------------------------------------------------------

    def receive_text(self, text: str) -> list[Action]:
        if self.closed:
            return []
        if len(text) > MAX_TEXT_CHARS:
            return [self._error(DoorError("message_too_large", "event larger than "
                                          f"{MAX_TEXT_CHARS} characters"))]
        try:
            msg = json.loads(text)
        except ValueError:
            msg = None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            return [self._error(DoorError("invalid_json", "expected a JSON object with a "
                                          "string 'type'", param="type"))]
        event_id = msg.get("event_id") if isinstance(msg.get("event_id"), str) else None
        try:
            return self._receive(msg)
        except DoorError as exc:
            return [self._error(exc, event_id)]

    def receive_bytes(self, data: bytes) -> list[Action]:
        return [self._error(DoorError("invalid_event", "audio goes in "
                                      "input_audio_buffer.append events (base64), not binary "
                                      "messages"))]

    def _receive(self, msg: dict[str, Any]) -> list[Action]:
        kind = msg["type"]
        if kind == "session.update":
            session = msg.get("session")
            if not isinstance(session, dict):
                raise DoorError("invalid_value", "session must be an object", param="session")
            self._update_ga(session)
            return [self._send("session.updated", session=self.session())]
        if kind == "transcription_session.update":
            session = msg.get("session")
            if not isinstance(session, dict):
                raise DoorError("invalid_value", "session must be an object", param="session")
            self._update_beta(session)
            return [self._send("transcription_session.updated", session=self.beta_session())]
        if kind == "input_audio_buffer.append":
            return self._append(msg.get("audio"))
        if kind == "input_audio_buffer.commit":
            return self._commit()
        if kind == "input_audio_buffer.clear":
            return self._clear()
        raise DoorError("invalid_value", f"event type '{kind[:60]}' is not taken by a "
                        "transcription session: send session.update, input_audio_buffer."
                        "append, .commit or .clear", param="type")

    # session.update ---------------------------------------------------------------------

    def _update_ga(self, s: Mapping[str, Any]) -> None:
        if s.get("type", "transcription") != "transcription":
            raise DoorError("invalid_value", "earshot offers transcription sessions only: "
                            "session.type must be 'transcription'", param="session.type")
        new = _Config(**vars(self.config))
        audio = s.get("audio")
        inp = audio.get("input") if isinstance(audio, Mapping) else None
        if audio is not None and not isinstance(inp, Mapping | None):
            raise DoorError("invalid_value", "audio.input must be an object",
                            param="session.audio.input")
        if isinstance(inp, Mapping):
            if "format" in inp:
                new.format = self._ga_format(inp["format"])
            if "transcription" in inp:
                self._transcription(new, inp["transcription"], "session.audio.input")
            if "turn_detection" in inp:
                self._turn_detection(new, inp["turn_detection"], "session.audio.input")
        if "include" in s:
            new.include = self._include(s["include"])
        self._apply(new)

    def _ga_format(self, f: Any) -> str:
        p = "session.audio.input.format"
        if not isinstance(f, Mapping) or f.get("type") not in FORMATS:
            raise DoorError("invalid_value", "format.type must be audio/pcm, audio/pcmu or "
                            "audio/pcma", param=p + ".type")
        if f["type"] == "audio/pcm" and f.get("rate", 24000) != 24000:
            raise DoorError("invalid_value", "audio/pcm is 24000 Hz only", param=p + ".rate")
        return str(f["type"])

    def _update_beta(self, s: Mapping[str, Any]) -> None:
        new = _Config(**vars(self.config))
        if "input_audio_format" in s:
            fmt = s["input_audio_format"]
            if fmt not in BETA_FORMATS:
                raise DoorError("invalid_value", "input_audio_format must be pcm16, g711_ulaw "
                                "or g711_alaw", param="session.input_audio_format")
            new.format = BETA_FORMATS[fmt]
        if "input_audio_transcription" in s:
            self._transcription(new, s["input_audio_transcription"], "session")
        if "turn_detection" in s:
            self._turn_detection(new, s["turn_detection"], "session")
        if "include" in s:
            new.include = self._include(s["include"])
        self._apply(new)

    def _transcription(self, new: _Config, t: Any, where: str) -> None:
        p = f"{where}.transcription" if where != "session" else \
            "session.input_audio_transcription"
        if t is None:
            return  # transcription off is not a thing here: earshot always transcribes
        if not isinstance(t, Mapping):
            raise DoorError("invalid_value", "transcription must be an object", param=p)
        if t.get("model") is not None:
            if not isinstance(t["model"], str) or not 0 < len(t["model"]) <= 200:
                raise DoorError("invalid_value", "model must be a name", param=p + ".model")
            new.model = t["model"]
        if "language" in t:
            lang = t["language"]
            if lang in (None, ""):
                new.language = None
            elif not isinstance(lang, str) or not _LANGUAGE.fullmatch(lang):
                raise DoorError("invalid_value", "language must be an ISO-639-1 code such as "
                                "'en'", param=p + ".language")
            else:
                new.language = lang
        if "prompt" in t:
            prompt = t["prompt"]
            if prompt is not None and (not isinstance(prompt, str) or len(prompt) > 10_000):
                raise DoorError("invalid_value", "prompt must be text", param=p + ".prompt")
            new.prompt = prompt or None

    def _turn_detection(self, new: _Config, td: Any, where: str) -> None:
        p = f"{where}.turn_detection"
        if td is None:
            new.turn_detection = False
            return
        if not isinstance(td, Mapping) or td.get("type", "server_vad") not in (
                "server_vad", "semantic_vad"):
            raise DoorError("invalid_value", "turn_detection must be null or of type "
                            "server_vad or semantic_vad", param=p)
        new.turn_detection = True
        for key, lo, hi in (("threshold", 0.0, 1.0), ("prefix_padding_ms", 0, 2000),
                            ("silence_duration_ms", 50, 10_000)):
            v = td.get(key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi \
                    or (key != "threshold" and not float(v).is_integer()):
                raise DoorError("invalid_value", f"{key} must be from {lo} to {hi}",
                                param=f"{p}.{key}")
            if not self.opened:  # the stream's VAD is made with the stream
                setattr(new, key, float(v) if key == "threshold" else int(v))

    @staticmethod
    def _include(v: Any) -> list[str]:
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise DoorError("invalid_value", "include must be a list of strings",
                            param="session.include")
        return [x for x in v if x == "item.input_audio_transcription.logprobs"][:1]

    def _apply(self, new: _Config) -> None:
        if self.opened and new.format != self.config.format:
            raise DoorError("invalid_value", "the audio format cannot change after audio was "
                            "appended", param="session.audio.input.format")
        if self.opened:  # language and prompt are the stream's, from its start
            new.language, new.prompt = self.config.language, self.config.prompt
        self.config = new

    # audio ------------------------------------------------------------------------------

    def processors(self) -> tuple[str | Mapping[str, Any], ...]:
        c = self.config
        opts = {"threshold": c.threshold, "min_silence_ms": c.silence_duration_ms,
                "pad_ms": c.prefix_padding_ms}
        return ({"name": "vad", "options": opts}, {"name": "asr", "options": opts})

    def _append(self, audio: Any) -> list[Action]:
        if not isinstance(audio, str):
            raise DoorError("invalid_value", "audio must be base64 text", param="audio")
        if len(audio) > (self.max_append_bytes + 2) // 3 * 4 + 4:
            raise DoorError("invalid_value", f"more than {self.max_append_bytes} bytes of "
                            "audio in one append", param="audio")
        try:  # strict: only the alphabet, right padding (and 3x faster than b64decode's)
            data = binascii.a2b_base64(audio, strict_mode=True)
        except (binascii.Error, ValueError):
            raise DoorError("invalid_value", "audio is not valid base64",
                            param="audio") from None
        out: list[Action] = []
        if not self.opened:
            self.opened = True
            c = self.config
            client = {"dialect": "openai-realtime", "session": self.session_id,
                      "model": c.model, **self.client}
            out.append(OpenStream("s16", self.rate, 1, name=self.name,
                                  processors=self.processors(), language=c.language,
                                  client=client, prompt=c.prompt))
        if not data:
            return out
        if not self.config.turn_detection and self._current is None:
            self._current = self._new_item(self.seconds, manual=True)
        fmt = self.config.format
        if fmt == "audio/pcm":
            buf = self._carry + data
            whole = len(buf) - len(buf) % 2
            self._carry, pcm = buf[whole:], buf[:whole]
        else:
            decode = mulaw_to_s16 if fmt == "audio/pcmu" else alaw_to_s16
            pcm = decode(data).tobytes()
        self.frames += len(pcm) // 2
        if pcm:
            out.append(Audio(pcm))
        return out

    def _new_item(self, start: float, *, vad: bool = False, manual: bool = False) -> _Item:
        item = _Item(self._ids("item"), start, vad=vad, manual=manual)
        self._items.append(item)
        return item

    def _commit(self) -> list[Action]:
        manual = not self.config.turn_detection
        item = self._current if manual else self._open_vad
        start = item.start if item is not None else self._boundary
        since_ms = (self.seconds - start) * 1000
        if since_ms < MIN_COMMIT_MS and not (item is not None and item.vad):
            raise DoorError("input_audio_buffer_commit_empty", "Error committing input audio "
                            f"buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms of "
                            f"audio, but buffer only has {max(since_ms, 0.0):.2f}ms of audio.")
        if item is None:  # audio with no speech in it: an item all the same
            item = self._new_item(start)
        item.manual = True
        item.end = self.seconds
        self._current = None
        if item is self._open_vad:
            self._open_vad = None
        self._boundary = self.seconds
        self._pending.append(item)
        return [Finalize(), *self._committed(item)]

    def _committed(self, item: _Item) -> list[Action]:
        if item.committed:
            return []
        item.committed = True
        prev, self._last_committed = self._last_committed, item.id
        return [self._send("input_audio_buffer.committed", item_id=item.id,
                           previous_item_id=prev)]

    def _clear(self) -> list[Action]:
        item = self._current if not self.config.turn_detection else self._open_vad
        out: list[Action] = []
        if item is not None:
            item.discarded = True
            item.end = self.seconds
            self._current = None
            self._open_vad = None
            self._pending.append(None)
            out.append(Finalize())
        self._boundary = self.seconds
        return [*out, self._send("input_audio_buffer.cleared")]

    # --- earshot's events ---------------------------------------------------------------

    def on_event(self, event: Event) -> list[Action]:
        if self.closed:
            return []
        kind = event.get("type")
        if kind == "speech_start":
            return self._speech_start(float(event.get("t", 0.0)))
        if kind == "speech_end":
            return self._speech_end(float(event.get("end", event.get("t", 0.0))))
        if is_transcript(event):
            return self._transcript(event)
        if kind == "finalized":
            return self._finalized()
        if kind == "stopped":
            return self._flush()
        if is_stream_error(event):
            self.closed = True
            exc = DoorError(str(event.get("code") or "internal"),
                            str(event.get("message") or "the stream failed"))
            return [self._send("error", error={"type": "server_error", "code": exc.code,
                                               "message": exc.message, "param": None,
                                               "event_id": None}), Close(1011, exc.code[:120])]
        return []

    def _speech_start(self, t: float) -> list[Action]:
        if not self.config.turn_detection or self._open_vad is not None:
            return []
        item = self._new_item(t, vad=True)
        self._open_vad = item
        return [self._send("input_audio_buffer.speech_started",
                           audio_start_ms=round(t * 1000), item_id=item.id)]

    def _speech_end(self, t: float) -> list[Action]:
        item = self._open_vad
        if item is None:
            return []
        self._open_vad = None
        item.end = t
        self._boundary = max(self._boundary, t)
        out: list[Action] = [self._send("input_audio_buffer.speech_stopped",
                                        audio_end_ms=round(t * 1000), item_id=item.id)]
        out += self._committed(item)
        return out + self._complete_ready()

    def _item_for(self, segment: int, start: float) -> _Item | None:
        if segment in self._seg_item:
            return self._seg_item[segment]
        live = [i for i in self._items if not i.completed and not i.finalized]
        best = min(live, key=lambda i: (i.distance(start), -i.start), default=None)
        if best is None or best.distance(start) > MATCH_TOLERANCE:
            best = self._new_item(start)
        found = None if best.discarded else best  # said in a cleared item: dropped with it
        self._seg_item[segment] = found
        if found is not None:
            found.segments.add(segment)
        return found

    def _transcript(self, event: Event) -> list[Action]:
        seg = event.get("segment")
        if not isinstance(seg, int):
            return []
        item = self._item_for(seg, float(event.get("start", event.get("t", 0.0))))
        if item is None or item.completed:
            return []
        out: list[Action] = []
        delta = item.growth.update(event)
        if delta:
            out.append(self._send("conversation.item.input_audio_transcription.delta",
                                  item_id=item.id, content_index=0, delta=delta))
        if event.get("final"):
            item.finals.add(seg)
            if not item.vad and not item.manual:  # an item of its own: ends with its final
                item.end = float(event.get("end", item.start))
                out += self._committed(item)
        return out + self._complete_ready()

    def _finalized(self) -> list[Action]:
        if not self._pending:
            return []
        item = self._pending.pop(0)
        if item is None:
            return []
        item.finalized = True
        return self._complete_ready()

    def _ready(self, item: _Item) -> bool:
        if item.completed or item.discarded or not item.committed:
            return False
        if item.manual:
            return item.finalized
        return bool(item.segments) and item.segments <= item.finals

    def _complete_ready(self) -> list[Action]:
        out: list[Action] = []
        done_until = max((i.start for i in self._items if self._ready(i)), default=None)
        for item in self._items:
            if self._ready(item) or (
                    done_until is not None and item.committed and not item.completed
                    and not item.discarded and not item.segments and not item.manual
                    and item.start < done_until):
                out += self._completed(item)
        return out

    def _completed(self, item: _Item) -> list[Action]:
        item.completed = True
        g = item.growth
        out: list[Action] = []
        rest = g.finish()
        if rest:
            out.append(self._send("conversation.item.input_audio_transcription.delta",
                                  item_id=item.id, content_index=0, delta=rest))
        text = g.final_text() if g.diverged else g.text
        seconds = max((item.end if item.end is not None else self.seconds) - item.start, 0.0)
        out.append(self._send("conversation.item.input_audio_transcription.completed",
                              item_id=item.id, content_index=0, transcript=text,
                              usage={"type": "duration",
                                     "seconds": math.ceil(seconds * 1000) / 1000}))
        return out

    def _flush(self) -> list[Action]:
        """The stream ended: every item still open is committed and completed."""
        out: list[Action] = []
        for item in self._items:
            if item.completed or item.discarded:
                continue
            if item.end is None:
                item.end = self.seconds
            out += self._committed(item)
            out += self._completed(item)
        self.closed = True
        return out
