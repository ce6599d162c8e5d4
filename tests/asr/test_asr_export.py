"""Transcript export: JSON, SRT, WebVTT and plain text, parsed back with small parsers."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import numpy as np

from earshot.asr.engine import Word
from earshot.asr.export import FORMATS, to_json, to_srt, to_txt, to_vtt

FINALS: list[dict[str, Any]] = [
    {"segment": 0, "start": 0.5, "end": 2.25, "text": " Hello there.",
     "words": [{"w": "Hello", "start": 0.5, "end": 1.0, "p": 0.9},
               {"w": "there.", "start": 1.1, "end": 2.25, "p": 0.8}]},
    {"segment": 1, "start": 61.004, "end": 63.9995, "text": "Second final",
     "words": [{"w": "Second", "start": 61.004, "end": 62.0, "p": 0.7},
               {"w": "final", "start": 62.1, "end": 63.9995, "p": 0.6}]},
    {"segment": 2, "start": 3600.0, "end": 3723.456, "text": "after an hour", "words": []},
]

SRT_CUE = re.compile(
    r"(\d+)\n(\d{2,}):(\d{2}):(\d{2}),(\d{3}) --> (\d{2,}):(\d{2}):(\d{2}),(\d{3})\n(.+)\n\n"
)
VTT_CUE = re.compile(
    r"\n(\d{2,}):(\d{2}):(\d{2})\.(\d{3}) --> (\d{2,}):(\d{2}):(\d{2})\.(\d{3})\n(.+)\n"
)


def millis(h: str, m: str, s: str, ms: str) -> int:
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(ms)


def parse_srt(text: str) -> list[tuple[int, int, int, str]]:
    cues, pos = [], 0
    for m in SRT_CUE.finditer(text):
        assert m.start() == pos, f"junk before cue at {pos}: {text[pos:m.start()]!r}"
        pos = m.end()
        g = m.groups()
        cues.append((int(g[0]), millis(*g[1:5]), millis(*g[5:9]), g[9]))
    assert pos == len(text), f"junk after the last cue: {text[pos:]!r}"
    return cues


def parse_vtt(text: str) -> list[tuple[int, int, str]]:
    assert text.startswith("WEBVTT\n")
    cues, pos = [], len("WEBVTT\n")
    for m in VTT_CUE.finditer(text, pos):
        assert m.start() == pos, f"junk before cue at {pos}: {text[pos:m.start()]!r}"
        pos = m.end()
        g = m.groups()
        cues.append((millis(*g[0:4]), millis(*g[4:8]), html.unescape(g[8])))
    assert pos == len(text), f"junk after the last cue: {text[pos:]!r}"
    return cues


def expected(finals: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    return [(round(f["start"] * 1000), round(f["end"] * 1000), " ".join(f["text"].split()))
            for f in finals]


def test_srt_round_trip() -> None:
    cues = parse_srt(to_srt(FINALS))
    assert [c[0] for c in cues] == [1, 2, 3]
    assert [c[1:] for c in cues] == expected(FINALS)
    assert "01:00:00,000 --> 01:02:03,456" in to_srt(FINALS)


def test_vtt_round_trip() -> None:
    out = to_vtt(FINALS)
    assert out.startswith("WEBVTT\n\n00:00:00.500 --> 00:00:02.250\nHello there.\n")
    assert parse_vtt(out) == expected(FINALS)
    assert "01:00:00.000 --> 01:02:03.456" in out


def test_json_round_trip() -> None:
    back = json.loads(to_json(FINALS))
    assert back == FINALS


def test_json_accepts_word_objects_and_numpy_numbers() -> None:
    final = {"segment": np.int64(4), "start": np.float32(1.5), "end": np.float64(2.0),
             "text": "hi", "words": (Word("hi", 1.5, 2.0, 0.5),)}
    back = json.loads(to_json([final]))
    assert back == [{"segment": 4, "start": 1.5, "end": 2.0, "text": "hi",
                     "words": [{"w": "hi", "start": 1.5, "end": 2.0, "p": 0.5}]}]


def test_txt_one_line_per_final() -> None:
    assert to_txt(FINALS) == "Hello there.\nSecond final\nafter an hour\n"


def test_empty() -> None:
    assert to_srt([]) == ""
    assert to_vtt([]) == "WEBVTT\n"
    assert to_txt([]) == ""
    assert json.loads(to_json([])) == []
    assert parse_srt(to_srt([])) == [] and parse_vtt(to_vtt([])) == []


def test_newlines_and_arrows_are_sanitised() -> None:
    finals = [{"segment": 0, "start": 1.0, "end": 2.0,
               "text": "line one\n\nline two\r\n --> <i>a & b</i>", "words": []}]
    srt, vtt = to_srt(finals), to_vtt(finals)
    assert parse_srt(srt) == [(1, 1000, 2000, "line one line two -> <i>a & b</i>")]
    assert parse_vtt(vtt) == [(1000, 2000, "line one line two --> <i>a & b</i>")]
    cue_text = vtt.split("\n")[3]
    assert "-->" not in cue_text and "<" not in cue_text
    assert "\n\n\n" not in srt and "\n\n\n" not in vtt
    assert to_txt(finals) == "line one line two --> <i>a & b</i>\n"
    assert json.loads(to_json(finals))[0]["text"] == finals[0]["text"]  # JSON keeps it as is


def test_blank_finals_are_left_out_and_cues_renumbered() -> None:
    finals = [{"segment": 0, "start": 0.0, "end": 1.0, "text": " \n ", "words": []},
              {"segment": 1, "start": 1.0, "end": 2.0, "text": "kept", "words": []}]
    assert parse_srt(to_srt(finals)) == [(1, 1000, 2000, "kept")]
    assert parse_vtt(to_vtt(finals)) == [(1000, 2000, "kept")]
    assert to_txt(finals) == "kept\n"
    assert len(json.loads(to_json(finals))) == 2


def test_degenerate_times() -> None:
    finals = [{"segment": 0, "start": -0.2, "end": -0.1, "text": "negative", "words": []},
              {"segment": 1, "start": 5.0, "end": 5.0, "text": "instant", "words": []},
              {"segment": 2, "start": 400000.0, "end": 400001.5, "text": "late", "words": []}]
    cues = parse_srt(to_srt(finals))
    assert [c[1:3] for c in cues] == [(0, 1), (5000, 5001), (400_000_000, 400_001_500)]
    assert "111:06:40,000 --> 111:06:41,500" in to_srt(finals)
    for start, end, _ in parse_vtt(to_vtt(finals)):
        assert 0 <= start < end


def test_formats_table() -> None:
    assert set(FORMATS) == {"json", "srt", "vtt", "txt"}
    assert FORMATS["json"] == ("application/json", to_json)
    assert FORMATS["srt"] == ("application/x-subrip", to_srt)
    assert FORMATS["vtt"] == ("text/vtt", to_vtt)
    assert FORMATS["txt"] == ("text/plain", to_txt)
    for _, render in FORMATS.values():
        assert isinstance(render(FINALS), str)
        assert isinstance(render(iter(FINALS)), str)  # any iterable
