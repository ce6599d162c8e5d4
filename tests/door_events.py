"""earshot event sequences, shaped as the ingest client gets them, for the doors' tests."""

from __future__ import annotations

from typing import Any

STREAM = "mwr3x0a1b2c3d4e5"


def speech_start(t: float) -> dict[str, Any]:
    return {"type": "speech_start", "stream": STREAM, "t": t, "processor": "vad"}


def speech_end(start: float, end: float) -> dict[str, Any]:
    return {"type": "speech_end", "stream": STREAM, "t": end, "processor": "vad",
            "start": start, "end": end, "duration": round(end - start, 6)}


def words(text: str, start: float, end: float, p: float = 0.9) -> list[dict[str, Any]]:
    ws = text.split()
    step = (end - start) / max(len(ws), 1)
    return [{"w": w, "start": round(start + i * step, 3), "end": round(start + (i + 1) * step, 3),
             "p": p} for i, w in enumerate(ws)]


def interim(segment: int, text: str, stable: str, start: float, end: float) -> dict[str, Any]:
    return {"type": "transcript", "stream": STREAM, "t": start, "processor": "asr",
            "final": False, "text": text, "stable": stable, "start": start, "end": end,
            "segment": segment, "words": words(text, start, end), "queue": 0.0,
            "decode": 0.01}


def final(segment: int, text: str, start: float, end: float, *, finalize: bool = False,
          language: str | None = "en", p: float = 0.9) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": "transcript", "stream": STREAM, "t": start,
                          "processor": "asr", "final": True, "text": text, "stable": text,
                          "start": start, "end": end, "segment": segment,
                          "words": words(text, start, end, p), "queue": 0.0, "decode": 0.05}
    if language:
        ev["language"] = language
    if finalize:
        ev["finalize"] = True
    return ev


def finalized(t: float, segment: int | None) -> dict[str, Any]:
    return {"type": "finalized", "stream": STREAM, "t": t, "segment": segment}


def stopped(frames: int, rate: int) -> dict[str, Any]:
    return {"type": "stopped", "stream": STREAM, "offset": frames, "duration": frames / rate}


def ready() -> dict[str, Any]:
    return {"type": "ready", "stream": STREAM, "offset": 0}


def two_sentences() -> list[dict[str, Any]]:
    """Two utterances with interims, stable prefixes growing, finals with words."""
    return [
        ready(),
        speech_start(0.5),
        interim(0, "the birch", "", 0.5, 1.0),
        interim(0, "the birch canoe", "the birch", 0.5, 1.5),
        interim(0, "the birch canoe slid on", "the birch canoe", 0.5, 2.0),
        speech_end(0.5, 2.4),
        final(0, "the birch canoe slid on the smooth planks", 0.5, 2.4),
        speech_start(3.0),
        interim(1, "glue the", "", 3.0, 3.5),
        interim(1, "glue the sheet to", "glue the", 3.0, 4.0),
        speech_end(3.0, 4.6),
        final(1, "glue the sheet to the dark blue background", 3.0, 4.6),
    ]
