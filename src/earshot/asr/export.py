"""Final transcripts as JSON, SubRip (SRT), WebVTT and plain text — pure functions.

A *final* is a mapping with ``segment`` (utterance number), ``start`` and ``end`` (seconds
from the start of the stream), ``text`` and ``words`` (``[{"w", "start", "end", "p"}, ...]``),
as stored by the metadata store. Finals are rendered in the order given.

Subtitle text is sanitised: all whitespace (newlines included) collapses to single spaces, so
a cue never contains a blank line (which would end it early); finals with no text are left
out; ``-->`` becomes ``->`` in SRT and ``& < >`` are escaped in WebVTT (so ``-->`` becomes
``--&gt;``). Cue times are clamped to ≥ 0 and every cue lasts at least 1 ms.

A final may name its ``speaker`` (a call's transcript by speaker, earshot.rooms.recording):
JSON then has a ``"speaker"`` field, SRT and text lines read ``Speaker: text``, and WebVTT
cues carry a voice span, ``<v Speaker>text``. Finals without one render as before.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Final = Mapping[str, Any]


def _seconds(value: Any) -> float:
    x = float(value)
    return x if math.isfinite(x) and x > 0 else 0.0


def _millis(value: Any) -> int:
    return round(_seconds(value) * 1000)


def _clock(ms: int, sep: str) -> str:
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _flat(text: Any) -> str:
    return " ".join(str(text).split())


def _speaker(f: Final) -> str:
    """The final's speaker, flattened (``""`` when it has none)."""
    who = f.get("speaker")
    return _flat(who) if who is not None else ""


def _cues(finals: Iterable[Final], sep: str) -> list[tuple[str, str, str]]:
    """(``start --> end``, flattened text, speaker) for every final that has text."""
    cues = []
    for f in finals:
        text = _flat(f.get("text", ""))
        if not text:
            continue
        start = _millis(f.get("start", 0.0))
        end = max(_millis(f.get("end", 0.0)), start + 1)
        cues.append((f"{_clock(start, sep)} --> {_clock(end, sep)}", text, _speaker(f)))
    return cues


def _said(text: str, speaker: str) -> str:
    return f"{speaker}: {text}" if speaker else text


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "item"):  # numpy scalar
        return obj.item()
    if hasattr(obj, "tolist"):  # numpy array
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _record(f: Final) -> dict[str, Any]:
    d = {
        "segment": f.get("segment"),
        "start": float(f["start"]),
        "end": float(f["end"]),
        "text": str(f["text"]),
        "words": list(f.get("words") or []),
    }
    if f.get("speaker") is not None:
        d["speaker"] = str(f["speaker"])
    return d


def to_json(finals: Iterable[Final]) -> str:
    """A JSON array of ``{"segment", "start", "end", "text", "words"}`` (and ``"speaker"``
    for a final that names one), one final a line."""
    lines = [json.dumps(_record(f), ensure_ascii=False, default=_jsonable) for f in finals]
    return "[\n  " + ",\n  ".join(lines) + "\n]\n" if lines else "[]\n"


def to_srt(finals: Iterable[Final]) -> str:
    """SubRip: numbered cues ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, each ended by a blank line."""
    return "".join(
        f"{i}\n{times}\n{_said(text, who).replace('-->', '->')}\n\n"
        for i, (times, text, who) in enumerate(_cues(finals, ","), start=1)
    )


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(finals: Iterable[Final]) -> str:
    """WebVTT: the ``WEBVTT`` header, then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm``."""
    cues = "".join(
        f"\n{times}\n{_voice(who)}{_vtt_escape(text)}\n"
        for times, text, who in _cues(finals, ".")
    )
    return "WEBVTT\n" + cues


def _voice(speaker: str) -> str:
    return f"<v {_vtt_escape(speaker)}>" if speaker else ""


def to_txt(finals: Iterable[Final]) -> str:
    """Plain text: one line per final (finals without text are left out)."""
    return "".join(f"{_said(text, _speaker(f))}\n" for f in finals
                   if (text := _flat(f.get("text", ""))))


Renderer = Callable[[Iterable[Final]], str]

FORMATS: dict[str, tuple[str, Renderer]] = {
    "json": ("application/json", to_json),
    "srt": ("application/x-subrip", to_srt),
    "vtt": ("text/vtt", to_vtt),
    "txt": ("text/plain", to_txt),
}
