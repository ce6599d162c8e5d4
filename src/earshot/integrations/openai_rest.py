"""OpenAI's speech-to-text REST API (``/v1/audio/transcriptions``, ``/v1/models``), pure.

The glue reads the multipart form, checks the token (``Authorization: Bearer``, the SDK's
``api_key``) and the upload's size, decodes the file into an earshot stream, and renders
the stream's finals with these functions:

* :func:`parse_transcription_form` — the form fields as the ``openai`` SDK sends them
  (``model``, ``language``, ``prompt``, ``response_format``, ``temperature``,
  ``timestamp_granularities[]`` — or unbracketed —, ``stream``; others ignored) →
  :class:`TranscriptionRequest`, or a :class:`~earshot.integrations.common.DoorError`
  with the status and ``param`` OpenAI would give;
* :func:`check_upload` — the first bytes and the size of ``file``: audio (sniffed from its
  bytes: WAV, MP3, Ogg, FLAC, WebM, MP4/M4A, AIFF, AAC) or 415; past the limit, 413;
* :func:`render` — the finals as ``json``, ``text``, ``srt``, ``vtt`` (earshot's subtitle
  writers) or ``verbose_json`` (``segments``; ``words`` with ``timestamp_granularities``
  ``word``);
* :class:`TranscriptStream` — ``stream=true``: Server-Sent Events
  ``transcript.text.delta`` per final, then ``transcript.text.done`` (the deltas, joined,
  are the done text);
* :func:`error_body` / :func:`error_response` — OpenAI's error shape
  ``{"error": {"message", "type", "param", "code"}}``; :func:`unauthorized`,
  :func:`translation_unsupported` (501), :func:`models_body` for ``GET /v1/models``.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from earshot.asr.export import to_srt, to_vtt
from earshot.integrations.common import DoorError, Event, words_of

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")
MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # OpenAI's limit
MAX_PROMPT_CHARS = 10_000
#: model names OpenAI clients use; any of them means earshot's configured engine
OPENAI_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe",
                 "gpt-transcribe", "gpt-live-transcribe")
SUPPORTED_FILES = "flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav, webm"
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")

#: ISO 639-1 → the language names Whisper's verbose_json gives
LANGUAGE_NAMES = {
    "en": "english", "de": "german", "fr": "french", "es": "spanish", "it": "italian",
    "pt": "portuguese", "nl": "dutch", "sv": "swedish", "da": "danish", "no": "norwegian",
    "fi": "finnish", "pl": "polish", "cs": "czech", "ru": "russian", "uk": "ukrainian",
    "tr": "turkish", "el": "greek", "hu": "hungarian", "ro": "romanian", "ja": "japanese",
    "zh": "chinese", "ko": "korean", "ar": "arabic", "he": "hebrew", "hi": "hindi",
    "id": "indonesian", "vi": "vietnamese", "th": "thai", "ca": "catalan", "ms": "malay"}


def error_body(exc: DoorError) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI answers."""
    kind = "server_error" if exc.status >= 500 and exc.status != 501 else \
        "invalid_request_error"
    return {"error": {"message": exc.message, "type": kind, "param": exc.param,
                      "code": exc.code}}


def error_response(exc: DoorError) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of an error answer."""
    return exc.status, {"content-type": "application/json"}, json.dumps(
        error_body(exc)).encode()


def unauthorized(presented: bool) -> DoorError:
    """401 for a missing or a wrong key, worded as OpenAI words them."""
    if not presented:
        return DoorError("missing_api_key", "You didn't provide an API key. You need to "
                         "provide your API key in an Authorization header using Bearer auth "
                         "(i.e. Authorization: Bearer YOUR_KEY).", status=401)
    return DoorError("invalid_api_key", "Incorrect API key provided: use this earshot "
                     "server's token.", status=401)


def translation_unsupported(engine: str) -> DoorError:
    return DoorError("not_implemented", f"earshot does not translate: its speech-to-text "
                     f"engine ({engine}) transcribes in the spoken language. Use "
                     "/v1/audio/transcriptions.", status=501)


def too_large(limit: int, size: int | None = None) -> DoorError:
    read = f" ({size} bytes read)" if size is not None else ""
    return DoorError("file_too_large", f"Maximum content size limit ({limit}) exceeded{read}.",
                     status=413, param="file")


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    model: str
    response_format: str = "json"
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    timestamp_granularities: tuple[str, ...] = ()
    stream: bool = False


def _bad(param: str, message: str, code: str = "invalid_value") -> DoorError:
    return DoorError(code, message, status=400, param=param)


def parse_transcription_form(fields: Iterable[tuple[str, str]], *,
                             has_file: bool = True) -> TranscriptionRequest:
    """The form's text fields (name, value), repeated names in order, → the request."""
    single: dict[str, str] = {}
    granularities: list[str] = []
    for name, value in fields:
        if name in ("timestamp_granularities[]", "timestamp_granularities"):
            granularities += [g.strip() for g in value.split(",") if g.strip()]
        else:
            single[name] = value
    if not has_file:
        raise _bad("file", "you must provide a file", "missing_required_parameter")
    model = single.get("model", "").strip()
    if not model:
        raise _bad("model", "you must provide a model parameter", "missing_required_parameter")
    if len(model) > 200:
        raise _bad("model", "model name is too long")
    fmt = single.get("response_format", "json").strip() or "json"
    if fmt not in RESPONSE_FORMATS:
        supported = ", ".join(f"'{f}'" for f in RESPONSE_FORMATS)
        raise _bad("response_format", f"Invalid value: '{fmt[:40]}'. Supported values are: "
                   f"{supported}.")
    for g in granularities:
        if g not in GRANULARITIES:
            raise _bad("timestamp_granularities", f"Invalid value: '{g[:40]}'. Supported "
                       "values are: 'word' and 'segment'.")
    language = single.get("language", "").strip() or None
    if language is not None and not _LANGUAGE.fullmatch(language):
        raise _bad("language", f"Invalid language '{language[:40]}'. Language parameter must "
                   "be specified in ISO-639-1 format.")
    prompt = single.get("prompt") or None
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise _bad("prompt", f"prompt longer than {MAX_PROMPT_CHARS} characters")
    temperature = 0.0
    if single.get("temperature", "").strip():
        try:
            temperature = float(single["temperature"])
        except ValueError:
            temperature = math.nan
        if not 0.0 <= temperature <= 1.0:
            raise _bad("temperature", "temperature must be a number from 0 to 1")
    raw_stream = single.get("stream", "false").strip().lower()
    if raw_stream not in ("true", "false", "1", "0", ""):
        raise _bad("stream", f"Invalid value: '{raw_stream[:20]}'. Expected a boolean.")
    return TranscriptionRequest(
        model=model, response_format=fmt, language=language, prompt=prompt,
        temperature=temperature, timestamp_granularities=tuple(dict.fromkeys(granularities)),
        stream=raw_stream in ("true", "1"))


def sniff_audio(head: bytes) -> str | None:
    """What container the first bytes of a file open (None: not audio earshot reads)."""
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:3] == b"ID3":
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF:
        if head[1] & 0xF6 == 0xF0:  # ADTS: sync, layer 00
            return "aac"
        if head[1] & 0xE0 == 0xE0 and head[1] & 0x06:  # MPEG audio frame sync, a layer
            return "mp3"
    return None


def check_upload(head: bytes, size: int, *, limit: int = MAX_UPLOAD_BYTES) -> str:
    """The container of an upload (from its first bytes), or 413 / 415."""
    if size > limit:
        raise too_large(limit, size)
    kind = sniff_audio(head)
    if kind is None:
        raise DoorError("unsupported_file_format", "Invalid file format. Supported formats: "
                        f"{SUPPORTED_FILES}.", status=415, param="file")
    return kind


def resolve_model(requested: str, offered: Sequence[str], default: str) -> str:
    """The engine model a request's ``model`` selects: one offered by name, else the
    default (OpenAI's names, and any other, mean earshot's configured engine)."""
    return requested if requested in offered else default


def models_body(models: Sequence[str], created: int, *,
                aliases: Sequence[str] = OPENAI_MODELS) -> dict[str, Any]:
    """``GET /v1/models``: the engine's models, then the OpenAI names that reach it."""
    ids = list(dict.fromkeys([*models, *aliases]))
    return {"object": "list", "data": [{"id": m, "object": "model", "created": created,
                                        "owned_by": "earshot"} for m in ids]}


# --- rendering ----------------------------------------------------------------------------


def _texts(finals: Iterable[Event]) -> list[str]:
    return [t for t in (" ".join(words_of(f.get("text"))) for f in finals) if t]


def full_text(finals: Iterable[Event]) -> str:
    return " ".join(_texts(finals))


def _usage(duration: float) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(max(duration, 0.0))}


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return round(len(data) / len(zlib.compress(data)), 4) if data else 0.0


def _avg_logprob(words: Sequence[Mapping[str, Any]]) -> float:
    ps = [float(w.get("p", 0.0)) for w in words]
    return round(sum(math.log(max(p, 1e-6)) for p in ps) / len(ps), 4) if ps else 0.0


def verbose(finals: Sequence[Event], *, duration: float, language: str | None,
            granularities: Sequence[str] = (), temperature: float = 0.0) -> dict[str, Any]:
    """The ``verbose_json`` body."""
    finals = [f for f in finals if words_of(f.get("text"))]
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": LANGUAGE_NAMES.get((language or "").split("-")[0].lower(),
                                       language or "unknown"),
        "duration": round(duration, 3), "text": full_text(finals)}
    if "segment" in granularities or not granularities:
        body["segments"] = [
            {"id": i, "seek": round(float(f.get("start", 0.0)) * 100),
             "start": round(float(f.get("start", 0.0)), 3),
             "end": round(float(f.get("end", 0.0)), 3),
             "text": " ".join(words_of(f.get("text"))), "tokens": [],
             "temperature": temperature, "avg_logprob": _avg_logprob(f.get("words") or []),
             "compression_ratio": _compression_ratio(str(f.get("text", ""))),
             "no_speech_prob": 0.0}
            for i, f in enumerate(finals)]
    if "word" in granularities:
        body["words"] = [{"word": str(w["w"]).strip(), "start": round(float(w["start"]), 3),
                          "end": round(float(w["end"]), 3)}
                         for f in finals for w in f.get("words") or []
                         if str(w.get("w", "")).strip()]
    body["usage"] = _usage(duration)
    return body


def render(request: TranscriptionRequest, finals: Sequence[Event], *, duration: float,
           language: str | None = None) -> tuple[str, str]:
    """(content type, body) of a finished transcription in ``request.response_format``;
    the language reported is ``language``, else the request's, else the engine's."""
    fmt = request.response_format
    language = language or request.language or next(
        (str(f["language"]) for f in finals if f.get("language")), None)
    if fmt == "text":
        return "text/plain; charset=utf-8", full_text(finals) + "\n"
    if fmt == "srt":
        return "text/plain; charset=utf-8", to_srt(finals)
    if fmt == "vtt":
        return "text/plain; charset=utf-8", to_vtt(finals)
    if fmt == "verbose_json":
        body = verbose(finals, duration=duration, language=language,
                       granularities=request.timestamp_granularities,
                       temperature=request.temperature)
    else:
        body = {"text": full_text(finals), "usage": _usage(duration)}
    return "application/json", json.dumps(body, ensure_ascii=False)


def sse(event: Mapping[str, Any]) -> bytes:
    """One Server-Sent Event carrying ``event`` as JSON."""
    return f"data: {json.dumps(dict(event), ensure_ascii=False)}\n\n".encode()


class TranscriptStream:
    """``stream=true``: a ``transcript.text.delta`` per final with text, then ``done``.
    The deltas joined are the done text."""

    content_type = "text/event-stream; charset=utf-8"

    def __init__(self) -> None:
        self.texts: list[str] = []

    def on_final(self, final: Event) -> bytes:
        text = " ".join(words_of(final.get("text")))
        if not text:
            return b""
        delta = (" " if self.texts else "") + text
        self.texts.append(text)
        return sse({"type": "transcript.text.delta", "delta": delta})

    def done(self) -> bytes:
        return sse({"type": "transcript.text.done", "text": " ".join(self.texts)})

    def error(self, exc: DoorError) -> bytes:
        """A failure after the stream began (the status line is long gone)."""
        return sse(error_body(exc))
