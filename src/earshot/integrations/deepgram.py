"""Deepgram's live streaming API (``/v1/listen``), sans I/O.

What a Deepgram client (the ``deepgram-sdk``, pipecat, LiveKit agents) sends and expects,
mapped onto one earshot stream:

* the query (:func:`parse_listen_query`): ``encoding`` (``linear16``, ``linear32``,
  ``mulaw``, ``alaw``, ``opus`` raw packets; ``ogg-opus``, ``flac`` or none for containerised
  audio, decoded with :class:`~earshot.integrations.decode.StreamDecoder`), ``sample_rate``
  (required with a raw encoding), ``channels``, ``language``, ``interim_results``,
  ``vad_events``, ``endpointing`` (``false``, or milliseconds: from 100 ms on it is the VAD's
  minimum silence), ``utterance_end_ms``, ``punctuate``, ``smart_format``. Options earshot
  does not apply (``model``, ``diarize``, ``keyterm``...) are accepted and listed in
  :attr:`ListenOptions.ignored`; encodings it cannot decode (``amr-nb``, ``speex``...) and
  malformed values of the options it applies are refused (:func:`handshake_error`, 400);
* credentials (:func:`credentials`): ``Authorization: Token KEY`` (or ``Bearer``), or for
  browsers ``Sec-WebSocket-Protocol: token, KEY`` (``token`` is echoed back);
* binary messages: audio; text messages: ``{"type": "KeepAlive" | "Finalize" |
  "CloseStream"}`` (``Configure`` is answered ``ConfigureFailure``); an empty binary
  message is the legacy ``CloseStream``;
* server messages: ``Results`` (interims ``is_final: false`` when ``interim_results``,
  earshot's finals ``is_final: true`` with ``speech_final`` unless cut by ``Finalize``,
  which sets ``from_finalize``), ``SpeechStarted`` (``vad_events``), ``UtteranceEnd``
  (``utterance_end_ms``: once that much audio has passed after a final's last word with no
  new speech), and ``Metadata`` when the stream ends;
* idle: no audio and no text message for 10 s sends ``Metadata`` and closes with 1011 and
  the reason Deepgram's servers give (``NET-0001``).

Words: ``word`` is the lower-case word without surrounding punctuation,
``punctuated_word`` the engine's; ``transcript`` is the punctuated text with ``punctuate``
or ``smart_format``, else the plain words (as Deepgram's default). ``confidence`` is the
mean of the words' probabilities.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    Send,
    Stop,
    WireFormat,
    dumps,
    is_stream_error,
    is_transcript,
    words_of,
)
from earshot.integrations.g711 import alaw_to_s16, mulaw_to_s16

IDLE_TIMEOUT = 10.0
IDLE_CLOSE_CODE = 1011
IDLE_REASON = ("Deepgram did not receive audio data or a text message within the timeout "
               "window. See https://dpgr.am/net0001")
DATA_CLOSE_CODE = 1002
DATA_REASON = ("DATA-0000: The payload cannot be decoded as audio. It is either not audio "
               "data or is a codec unsupported by Deepgram.")
MAX_TEXT_CHARS = 64 * 1024

#: raw encodings: wire format of the stream, bytes a sample in the client's audio
RAW_ENCODINGS: dict[str, tuple[WireFormat, int]] = {
    "linear16": ("s16", 2), "linear32": ("f32", 4), "mulaw": ("s16", 1),
    "alaw": ("s16", 1), "opus": ("opus", 0)}
#: containerised encodings: the demuxer (None: probe, when no encoding is given)
CONTAINER_ENCODINGS: dict[str, str] = {"ogg-opus": "ogg", "flac": "flac"}
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
KNOWN_OPTIONS = frozenset({
    "encoding", "sample_rate", "channels", "language", "interim_results", "vad_events",
    "endpointing", "utterance_end_ms", "punctuate", "smart_format", "token"})
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*|multi")


@dataclass(frozen=True, slots=True)
class ListenOptions:
    encoding: str | None = None
    sample_rate: int | None = None
    channels: int = 1
    language: str | None = None  # None: the engine's (or detected)
    interim_results: bool = False
    vad_events: bool = False
    endpointing: bool = True
    endpointing_ms: int | None = None  # a VAD minimum silence asked for
    utterance_end_ms: int | None = None
    punctuate: bool = False
    smart_format: bool = False
    model: str | None = None
    #: options given that earshot accepts without applying
    ignored: tuple[str, ...] = ()

    @property
    def raw(self) -> bool:
        return self.encoding in RAW_ENCODINGS

    @property
    def container_format(self) -> str | None:
        return CONTAINER_ENCODINGS.get(self.encoding or "")

    @property
    def punctuated(self) -> bool:
        return self.punctuate or self.smart_format


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise DoorError("bad_option", f"{name}={value[:20]!r}: expected true or false")


def _int(name: str, value: str, lo: int, hi: int) -> int:
    v = value.strip()
    if not v.isdigit() or not lo <= int(v) <= hi:
        raise DoorError("bad_option", f"{name}={value[:20]!r}: expected a whole number "
                        f"from {lo} to {hi}")
    return int(v)


def parse_listen_query(query: Iterable[tuple[str, str]] | Mapping[str, str]) -> ListenOptions:
    """The ``/v1/listen`` query → :class:`ListenOptions`, or a ``DoorError`` (400)."""
    items = list(query.items()) if isinstance(query, Mapping) else list(query)
    q: dict[str, str] = {}
    ignored: list[str] = []
    for key, value in items:
        if key in KNOWN_OPTIONS:
            q[key] = value
        elif key not in ignored:
            ignored.append(key)
    model = next((v for k, v in items if k == "model"), None)
    encoding = q.get("encoding", "").strip().lower() or None
    if encoding is not None and encoding not in RAW_ENCODINGS \
            and encoding not in CONTAINER_ENCODINGS:
        raise DoorError("unsupported_encoding",
                        f"encoding={encoding[:30]!r} is not supported by earshot; use one of "
                        + ", ".join([*RAW_ENCODINGS, *CONTAINER_ENCODINGS])
                        + ", or none for containerised audio (WAV, Ogg, WebM, MP3...)")
    sample_rate = None
    if "sample_rate" in q:
        sample_rate = _int("sample_rate", q["sample_rate"], MIN_RATE, MAX_RATE)
    if encoding in RAW_ENCODINGS and sample_rate is None:
        raise DoorError("missing_sample_rate",
                        f"encoding={encoding} is raw audio: sample_rate is required too")
    if encoding == "opus" and sample_rate not in OPUS_RATES:
        raise DoorError("bad_option", f"sample_rate={sample_rate} is not an Opus rate; use "
                        + ", ".join(map(str, OPUS_RATES)))
    channels = _int("channels", q["channels"], 1, MAX_CHANNELS) if "channels" in q else 1
    if encoding == "opus" and channels > 2:
        raise DoorError("bad_option", "raw Opus carries 1 or 2 channels")
    if encoding not in RAW_ENCODINGS:
        sample_rate = None  # the container says (Deepgram ignores them there too)
        channels = 1
    language = q.get("language", "").strip() or None
    if language is not None and not _LANGUAGE.fullmatch(language):
        raise DoorError("bad_option", f"language={language[:30]!r} is not a language tag")
    if language == "multi":
        language = None
    endpointing, endpointing_ms = True, None
    if "endpointing" in q:
        v = q["endpointing"].strip().lower()
        if v in ("false", "true"):
            endpointing = v == "true"
        else:
            ms = _int("endpointing", v, 0, 60000)
            endpointing_ms = ms if ms >= 100 else None  # Deepgram's 10 ms: earshot's own
    ue = None
    if "utterance_end_ms" in q:
        ue = _int("utterance_end_ms", q["utterance_end_ms"], 0, 60000)
    return ListenOptions(
        encoding=encoding, sample_rate=sample_rate, channels=channels, language=language,
        interim_results=_bool("interim_results", q["interim_results"])
        if "interim_results" in q else False,
        vad_events=_bool("vad_events", q["vad_events"]) if "vad_events" in q else False,
        endpointing=endpointing, endpointing_ms=endpointing_ms, utterance_end_ms=ue,
        punctuate=_bool("punctuate", q["punctuate"]) if "punctuate" in q else False,
        smart_format=_bool("smart_format", q["smart_format"]) if "smart_format" in q
        else False,
        model=model, ignored=tuple(k for k in ignored if k != "model"))


def credentials(headers: Mapping[str, str], subprotocols: Sequence[str] = (),
                query: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """(token presented, subprotocol to echo) from ``Authorization: Token|Bearer KEY``,
    ``Sec-WebSocket-Protocol: token, KEY`` (browsers), or ``?token=KEY``."""
    for key, value in headers.items():
        if key.lower() == "authorization":
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() in ("token", "bearer") and token.strip():
                return token.strip(), None
    protos = [p.strip() for p in subprotocols if p.strip()]
    if len(protos) >= 2 and protos[0].lower() in ("token", "bearer"):
        return protos[1], protos[0]
    if query and query.get("token"):
        return query["token"], None
    return None, None


def handshake_error(status: int, message: str, *,
                    request_id: str) -> tuple[int, dict[str, str], bytes]:
    """An HTTP refusal of the WebSocket handshake as Deepgram answers one: (status,
    headers, JSON body ``{"err_code", "err_msg", "request_id"}``)."""
    code = "INVALID_AUTH" if status == 401 else "Bad Request"
    if status == 401 and not message:
        message = "Invalid credentials."
    body = json.dumps({"err_code": code, "err_msg": message, "request_id": request_id})
    headers = {"content-type": "application/json", "dg-error": message,
               "dg-request-id": request_id}
    return status, headers, body.encode()


# --- results ------------------------------------------------------------------------------

_EDGE_PUNCT = re.compile(r"^[^\w']+|[^\w']+$")


def plain_word(w: str) -> str:
    """``"Hello,"`` → ``"hello"``: lower case, no punctuation at either end."""
    return _EDGE_PUNCT.sub("", w).lower()


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str = "earshot"
    version: str = ""
    arch: str = "earshot"

    @property
    def uuid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"earshot:{self.arch}:{self.name}"))

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "arch": self.arch}


class Decoder(Protocol):
    """What a containerised session needs of a decoder (see ``StreamDecoder``)."""

    rate: int | None
    channels: int | None
    error: DoorError | None

    def feed(self, data: bytes) -> list[np.ndarray]: ...

    def take(self) -> list[np.ndarray]: ...

    def close(self, timeout: float | None = ...) -> list[np.ndarray]: ...


@dataclass
class _Utterance:
    last_word_end: float | None = None  # of the latest final with words, not yet ended
    speech_after: bool = False


class DeepgramLive:
    """One ``/v1/listen`` connection (see the module docstring). Time ``now`` is a monotonic
    clock in seconds; ``created`` the wall-clock start as ISO 8601 (for ``Metadata``);
    ``decoder`` makes a decoder for containerised audio (given the demuxer, or None to
    probe)."""

    def __init__(self, options: ListenOptions, *, request_id: str, created: str,
                 now: float, model: ModelInfo | None = None, name: str | None = None,
                 client: Mapping[str, Any] | None = None,
                 decoder: Callable[[str | None], Decoder] | None = None,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.options = options
        self.request_id = request_id
        self.created = created
        self.model = model or ModelInfo()
        self._meta = {"request_id": request_id, "model_info": self.model.as_dict(),
                      "model_uuid": self.model.uuid}
        self.name = name
        self.client = dict(client or {})
        self.idle_timeout = idle_timeout
        self.state = "open"  # open | closing (CloseStream, waiting for stopped) | closed
        self.opened = False
        self.rate: int | None = options.sample_rate
        self.channels = options.channels
        self.frames = 0  # audio received, in frames (per channel) at self.rate
        self.stream: str | None = None
        self._last_activity = now
        self._carry = b""
        self._sha = hashlib.sha256()
        self._ue = _Utterance()
        self._last_speech = float("-inf")  # the latest speech start seen
        self._starts: list[float] = []  # speech starts seen (recent ones), stream time
        self._told_after_close = False
        self._decoder: Decoder | None = None
        if not options.raw:
            if decoder is None:
                raise DoorError("unsupported_encoding",
                                "containerised audio needs a decoder (PyAV)", status=400)
            self._decoder = decoder(options.container_format)

    # --- what the stream runs -----------------------------------------------------------

    def processors(self) -> tuple[str | Mapping[str, Any], ...]:
        asr: str | Mapping[str, Any] = "asr"
        vad: str | Mapping[str, Any] = "vad"
        if self.options.endpointing_ms is not None:
            opts = {"min_silence_ms": self.options.endpointing_ms}
            asr = {"name": "asr", "options": opts}
            vad = {"name": "vad", "options": opts}
        return (vad, asr) if self.options.vad_events else (asr,)

    def _open(self, fmt: WireFormat, rate: int, channels: int) -> list[Action]:
        self.opened = True
        self.rate, self.channels = rate, channels
        o = self.options
        client: dict[str, Any] = {"dialect": "deepgram", "request_id": self.request_id,
                                  "encoding": o.encoding or "container", **self.client}
        if o.model:
            client["model"] = o.model
        return [OpenStream(fmt, rate, channels, name=self.name, processors=self.processors(),
                           language=o.language, client=client)]

    # --- client → server ----------------------------------------------------------------

    @property
    def next_deadline(self) -> float | None:
        return self._last_activity + self.idle_timeout if self.state == "open" else None

    def receive_bytes(self, data: bytes, now: float) -> list[Action]:
        if self.state != "open":
            if self._told_after_close or self.state == "closed":
                return []
            self._told_after_close = True
            return [self._error("StreamClosed", "audio after CloseStream is not taken")]
        self._last_activity = now
        if not data:  # the legacy end of stream
            return self._close_stream()
        self._sha.update(data)
        try:
            out = self._audio(data)
        except DoorError as exc:
            return self._data_error(exc)
        return out + self._utterance_end()

    def _audio(self, data: bytes) -> list[Action]:
        o = self.options
        if self._decoder is not None:
            return self._blocks(self._decoder.feed(data))
        assert o.encoding is not None and o.sample_rate is not None
        fmt, width = RAW_ENCODINGS[o.encoding]
        out: list[Action] = [] if self.opened else self._open(fmt, o.sample_rate, o.channels)
        if fmt == "opus":
            from earshot.codec.opus import packet_samples
            from earshot.errors import EarshotError

            try:
                self.frames += packet_samples(data, o.sample_rate)
            except EarshotError as exc:
                raise DoorError("bad_audio", f"not an Opus packet: {exc}") from None
            return [*out, Audio(bytes(data))]
        frame = width * o.channels
        if not self._carry and len(data) % frame == 0:  # the common case: whole frames
            whole, chunk = len(data), data
        else:
            buf = self._carry + data
            whole = len(buf) - len(buf) % frame
            self._carry = buf[whole:]
            chunk = buf[:whole]
        if not whole:
            return out
        self.frames += whole // frame
        if o.encoding == "mulaw":
            chunk = mulaw_to_s16(chunk).tobytes()
        elif o.encoding == "alaw":
            chunk = alaw_to_s16(chunk).tobytes()
        return [*out, Audio(chunk)]

    def _blocks(self, blocks: list[np.ndarray]) -> list[Action]:
        dec = self._decoder
        assert dec is not None
        if dec.error is not None:
            raise dec.error
        out: list[Action] = []
        for b in blocks:
            if not self.opened:
                assert dec.rate is not None and dec.channels is not None
                out += self._open("f32", dec.rate, dec.channels)
            self.frames += len(b)
            out.append(Audio(np.ascontiguousarray(b, dtype="<f4").tobytes()))
        return out

    def poll(self, now: float) -> list[Action]:
        """Containerised audio decoded since the last call (the decoder's ``notify``)."""
        if self._decoder is None or self.state == "closed":
            return []
        try:
            return self._blocks(self._decoder.take()) + self._utterance_end()
        except DoorError as exc:
            return self._data_error(exc)

    def receive_text(self, text: str, now: float) -> list[Action]:
        if self.state == "closed":
            return []
        self._last_activity = now
        if len(text) > MAX_TEXT_CHARS:
            return [self._error("SchemaError", f"text message over {MAX_TEXT_CHARS} characters")]
        try:
            msg = json.loads(text)
        except ValueError:
            msg = None
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "KeepAlive":
            return []
        if kind == "Finalize":
            return [Finalize()] if self.opened and self.state == "open" else (
                self._finalized(None) if self.state == "open" else [])
        if kind == "CloseStream":
            return self._close_stream() if self.state == "open" else []
        if kind == "Configure":
            assert isinstance(msg, dict)
            code = ("CONFIGURE_KEYTERMS_NOT_SUPPORTED" if msg.get("keyterms") is not None
                    else "CONFIGURE_INTERNAL_ERROR")
            return [Send(dumps({
                "type": "ConfigureFailure", "request_id": self.request_id, "code": code,
                "description": "earshot does not change a stream's settings mid-stream"}))]
        return [self._error("SchemaError", "expected a JSON message with type KeepAlive, "
                            "Finalize or CloseStream", message=text[:200])]

    def _close_stream(self) -> list[Action]:
        out: list[Action] = []
        if self._decoder is not None:
            try:
                out += self._blocks(self._decoder.close())
            except DoorError as exc:
                return self._data_error(exc)
        if not self.opened:  # nothing was sent: no stream to end
            self.state = "closed"
            return [*out, self._metadata(), Close(1000)]
        self.state = "closing"
        return [*out, Stop()]

    def tick(self, now: float) -> list[Action]:
        if self.state != "open" or now - self._last_activity < self.idle_timeout:
            return []
        self.state = "closed"
        out: list[Action] = [Stop()] if self.opened else []
        return [*out, self._metadata(), Close(IDLE_CLOSE_CODE, IDLE_REASON)]

    def _data_error(self, exc: DoorError) -> list[Action]:
        self.state = "closed"
        out: list[Action] = [Stop()] if self.opened else []
        return [*out, self._error("DataError", exc.message), self._metadata(),
                Close(DATA_CLOSE_CODE, DATA_REASON)]

    def _error(self, variant: str, description: str, *, message: str | None = None) -> Send:
        err: dict[str, Any] = {"type": "Error", "variant": variant, "description": description}
        if message is not None:
            err["message"] = message
        return Send(dumps(err))

    # --- earshot → client ---------------------------------------------------------------

    def on_event(self, event: Event) -> list[Action]:
        if self.state == "closed":
            return []
        kind = event.get("type")
        if kind == "ready" and event.get("stream"):
            self.stream = str(event["stream"])
            return []
        if kind == "speech_start":
            t = float(event.get("t", 0.0))
            self._speech_at(t)
            if not self.options.vad_events:
                return []
            return [Send(dumps({"type": "SpeechStarted", "channel": [0, 1],
                                     "timestamp": round(t, 3)}))]
        if is_transcript(event):
            return self._results(event)
        if kind == "finalized" and event.get("segment") is None:
            return self._finalized(event.get("t"))
        if kind == "stopped":
            self.state = "closed"
            out = self._utterance_end(force=True)
            return [*out, self._metadata(), Close(1000)]
        if is_stream_error(event):
            self.state = "closed"
            return [self._error("ServerError", str(event.get("message") or "the stream "
                                                   "failed")),
                    self._metadata(), Close(1011, str(event.get("code") or "internal")[:120])]
        return []

    def _speech_at(self, t: float) -> None:
        self._last_speech = max(self._last_speech, t)
        if not self._starts or t > self._starts[-1]:
            self._starts.append(t)
            del self._starts[:-64]
        ue = self._ue
        if ue.last_word_end is not None and t > ue.last_word_end:
            ue.speech_after = True

    def _results(self, event: Event) -> list[Action]:
        final = bool(event.get("final"))
        start = float(event.get("start", event.get("t", 0.0)))
        if not final:
            self._speech_at(start)
            if not self.options.interim_results:
                return []
        end = float(event.get("end", start))
        finalize = final and bool(event.get("finalize"))
        words = [w for w in event.get("words") or [] if isinstance(w, Mapping)]
        out: list[Action] = [Send(dumps(self.results(
            text=str(event.get("text") or ""), words=words, start=start,
            duration=max(end - start, 0.0), is_final=final,
            speech_final=final and not finalize and self.options.endpointing,
            from_finalize=finalize)))]
        if final and words:
            ends = [float(w.get("end", 0.0)) for w in words if str(w.get("w", "")).strip()]
            if ends:  # speech heard after the last word (its start came first) counts too
                last = max(ends)
                self._ue = _Utterance(last, speech_after=self._last_speech > last)
                gap = self.options.utterance_end_ms
                after = [t for t in self._starts if t > last]
                if gap is not None and after and after[0] - last >= gap / 1000:
                    # a final decoded late: the next speech began after the gap had
                    # passed in the audio, so the utterance did end (said now, late)
                    self._ue = _Utterance()
                    out.append(Send(dumps({"type": "UtteranceEnd", "channel": [0, 1],
                                           "last_word_end": round(last, 3)})))
                    return out
        return out + self._utterance_end()

    def results(self, *, text: str, words: list[Mapping[str, Any]], start: float,
                duration: float, is_final: bool, speech_final: bool,
                from_finalize: bool) -> dict[str, Any]:
        """One ``Results`` message."""
        dg_words: list[dict[str, Any]] = []
        probs: list[float] = []
        for w in words:
            raw = str(w.get("w", "")).strip()
            plain = plain_word(raw)
            if not plain:
                continue
            probs.append(round(float(w.get("p", 0.0)), 4))
            dg_words.append({"word": plain, "start": round(float(w.get("start", start)), 3),
                             "end": round(float(w.get("end", start)), 3),
                             "confidence": probs[-1], "punctuated_word": raw})
        tokens = words_of(text)
        transcript = " ".join(tokens) if self.options.punctuated else " ".join(
            p for p in (plain_word(t) for t in tokens) if p)
        confidence = sum(probs) / len(probs) if probs else 0.0
        return {
            "type": "Results", "channel_index": [0, 1], "duration": round(duration, 3),
            "start": round(start, 3), "is_final": is_final, "speech_final": speech_final,
            "channel": {"alternatives": [{"transcript": transcript,
                                          "confidence": round(confidence, 4),
                                          "words": dg_words}]},
            "metadata": self._meta,
            "from_finalize": from_finalize,
        }

    def _finalized(self, t: Any) -> list[Action]:
        """A ``Finalize`` with nothing being said: an empty final ``from_finalize``."""
        at = float(t) if isinstance(t, int | float) else self.seconds
        return [Send(dumps(self.results(text="", words=[], start=at, duration=0.0,
                                             is_final=True, speech_final=False,
                                             from_finalize=True)))]

    @property
    def seconds(self) -> float:
        """Audio received so far, in seconds."""
        return self.frames / self.rate if self.rate else 0.0

    def _utterance_end(self, force: bool = False) -> list[Action]:
        ue, gap = self._ue, self.options.utterance_end_ms
        if gap is None or ue.last_word_end is None:
            return []
        if ue.speech_after and not force:
            self._ue = _Utterance()
            return []
        if not force and self.seconds - ue.last_word_end < gap / 1000:
            return []
        self._ue = _Utterance()
        return [Send(dumps({"type": "UtteranceEnd", "channel": [0, 1],
                                 "last_word_end": round(ue.last_word_end, 3)}))]

    def _metadata(self) -> Send:
        meta: dict[str, Any] = {
            "type": "Metadata", "transaction_key": "deprecated",
            "request_id": self.request_id, "sha256": self._sha.hexdigest(),
            "created": self.created, "duration": round(self.seconds, 6),
            "channels": self.channels}
        if self.frames:
            meta["models"] = [self.model.uuid]
            meta["model_info"] = {self.model.uuid: self.model.as_dict()}
        if self.stream:
            meta["earshot_stream"] = self.stream
        return Send(dumps(meta))


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the glue needs to accept or refuse a ``/v1/listen`` handshake."""

    options: ListenOptions | None
    token: str | None
    subprotocol: str | None
    error: DoorError | None = None
    ignored: tuple[str, ...] = field(default_factory=tuple)


def handshake(query: Iterable[tuple[str, str]], headers: Mapping[str, str],
              subprotocols: Sequence[str] = ()) -> Handshake:
    """Parse a handshake's query and credentials in one go (no I/O): the glue checks the
    token, then refuses with :func:`handshake_error` or accepts with ``subprotocol``."""
    items = list(query)
    token, proto = credentials(headers, subprotocols, dict(items))
    try:
        options = parse_listen_query(items)
    except DoorError as exc:
        return Handshake(None, token, proto, exc)
    return Handshake(options, token, proto, None, options.ignored)
