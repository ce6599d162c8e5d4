"""Final transcripts as JSON, SubRip (SRT), WebVTT and plain text — pure functions.

A *final* is a mapping with ``segment`` (utterance number), ``start`` and ``end`` (seconds
from the start of the stream), ``text`` and ``words`` (``[{"w", "start", "end", "p"}, ...]``),
as stored by the metadata store. Finals are rendered in the order given.

Subtitle text is sanitised: all whitespace (newlines included) collapses to single spaces, so
a cue never contains a blank line (which would end it early); finals with no text are left
out; ``-->`` becomes ``->`` in SRT and ``& < >`` are escaped in WebVTT (so ``-->`` becomes
``--&gt;``). Cue times are clamped to ≥ 0 and every cue lasts at least 1 ms.
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


def _cues(finals: Iterable[Final], sep: str) -> list[tuple[str, str]]:
    """(``start --> end``, flattened text) for every final that has text."""
    cues = []
    for f in finals:
        text = _flat(f.get("text", ""))
        if not text:
            continue
        start = _millis(f.get("start", 0.0))
        end = max(_millis(f.get("end", 0.0)), start + 1)
        cues.append((f"{_clock(start, sep)} --> {_clock(end, sep)}", text))
    return cues


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "item"):  # numpy scalar
        return obj.item()
    if hasattr(obj, "tolist"):  # numpy array
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def to_json(finals: Iterable[Final]) -> str:
    """A JSON array of ``{"segment", "start", "end", "text", "words"}``, one final a line."""
    lines = [
        json.dumps(
            {
                "segment": f.get("segment"),
                "start": float(f["start"]),
                "end": float(f["end"]),
                "text": str(f["text"]),
                "words": list(f.get("words") or []),
            },
            ensure_ascii=False,
            default=_jsonable,
        )
        for f in finals
    ]
    return "[\n  " + ",\n  ".join(lines) + "\n]\n" if lines else "[]\n"


def to_srt(finals: Iterable[Final]) -> str:
    """SubRip: numbered cues ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, each ended by a blank line."""
    return "".join(
        f"{i}\n{times}\n{text.replace('-->', '->')}\n\n"
        for i, (times, text) in enumerate(_cues(finals, ","), start=1)
    )


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(finals: Iterable[Final]) -> str:
    """WebVTT: the ``WEBVTT`` header, then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm``."""
    cues = "".join(f"\n{times}\n{_vtt_escape(text)}\n" for times, text in _cues(finals, "."))
    return "WEBVTT\n" + cues


def to_txt(finals: Iterable[Final]) -> str:
    """Plain text: one line per final (finals without text are left out)."""
    return "".join(f"{text}\n" for text in (_flat(f.get("text", "")) for f in finals) if text)


Renderer = Callable[[Iterable[Final]], str]

FORMATS: dict[str, tuple[str, Renderer]] = {
    "json": ("application/json", to_json),
    "srt": ("application/x-subrip", to_srt),
    "vtt": ("text/vtt", to_vtt),
    "txt": ("text/plain", to_txt),
}
