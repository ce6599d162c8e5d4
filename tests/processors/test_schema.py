"""The schema of client choices (issue 19, item 3): types, ranges, server-only options,
duplicates merged, a cap per stream, and what the worst allowed choice costs."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from earshot.errors import ProtocolError
from earshot.processors.base import Chunk
from earshot.processors.builtin.level import Level
from earshot.processors.builtin.spectrogram import Spectrogram
from earshot.processors.registry import Registry
from earshot.processors.schema import LEVEL, SPECTROGRAM, Opt, check_processors
from earshot.wire.ingest import Limits, parse_start

REG = Registry()


def check(*procs: Any, limit: int = 8) -> tuple[Any, ...] | None:
    return REG.check_start(tuple(procs), limit)


def refused(*procs: Any, limit: int = 8) -> str:
    with pytest.raises(ProtocolError) as exc:
        check(*procs, limit=limit)
    assert exc.value.code == "bad_start"
    return exc.value.message


@pytest.mark.parametrize(("procs", "field", "why"), [
    ([{"name": "spectrogram", "options": {"mels": 3000, "win_ms": 4000}}],
     "processors[0].options.mels", "an integer from 1 to 256, got 3000"),
    (["level", {"name": "spectrogram", "options": {"win_ms": 4000}}],
     "processors[1].options.win_ms", "a number from 5 to 100, got 4000"),
    ([{"name": "level", "options": {"interval": 1 / 16000}}],
     "processors[0].options.interval", "a number from 0.01 to 10"),
    ([{"name": "level", "options": {"interval": float("nan")}}],
     "processors[0].options.interval", "got nan"),
    ([{"name": "level", "options": {"interval": "0.05"}}],
     "processors[0].options.interval", "got '0.05'"),
    ([{"name": "spectrogram", "options": {"mels": 64.5}}],
     "processors[0].options.mels", "an integer"),
    ([{"name": "vad", "options": {"threshold": True}}],
     "processors[0].options.threshold", "a number from 0 to 1"),
    ([{"name": "level", "options": {"bogus": 1}}],
     "processors[0].options.bogus", "is not an option a client may set for 'level'"),
])
def test_a_choice_out_of_its_range_is_refused_naming_the_field(
        procs: list[Any], field: str, why: str) -> None:
    message = refused(*procs)
    assert f"'{field}'" in message and why in message, message


def test_server_only_options_and_processors_without_a_schema() -> None:
    message = refused({"name": "vad", "options": {"unknown": 1}})
    assert "(it may set: min_silence_ms, min_speech_ms, neg_threshold, pad_ms" in message

    class Partly(Level):  # clip_level is the server's: its constructor takes it, clients not
        name = "partly"
        client_options = {"interval": LEVEL["interval"]}

    reg = Registry(["partly,clip_level=0.9"], extra={"partly": Partly})
    assert reg.check_start(({"name": "partly", "options": {"interval": 0.5}},), 8)
    with pytest.raises(ProtocolError, match=r"'processors\[0\]\.options\.clip_level' is not"):
        reg.check_start(({"name": "partly", "options": {"clip_level": 0.5}},), 8)

    class NoSchema(Level):
        name = "noschema"
        client_options = None

    reg = Registry(extra={"noschema": NoSchema})
    with pytest.raises(ProtocolError, match="takes no options from clients"):
        reg.check_start(({"name": "noschema", "options": {"interval": 0.5}},), 8)
    assert reg.check_start(("noschema",), 8) == ("noschema",)


def test_duplicates_are_merged_and_the_count_capped() -> None:
    out = check("level", {"name": "level", "options": {"interval": 0.1}}, "vad", "level",
                {"name": "level", "options": {"interval": 0.2, "clip_level": 0.9}})
    assert out == ({"name": "level", "options": {"interval": 0.2, "clip_level": 0.9}}, "vad")
    assert check(*(["level"] * 16)) == ("level",)  # the 16, duplicates included
    many = [f"p{i}" for i in range(9)]  # (not offered: warned about later, still counted)
    assert "at most 8 processors" in refused(*many)
    assert check(*many, limit=9) == tuple(many)


def test_values_are_normalized() -> None:
    assert check({"name": "level", "options": {"interval": 1}}) == (
        {"name": "level", "options": {"interval": 1.0}},)
    assert Opt(int, 1, 3).check("x", 2) == 2
    assert check_processors(None, {}, 1) is None


def test_client_info_is_at_most_4_kb() -> None:
    ok = parse_start({"type": "start", "client": {"ua": "x" * 4000}}, Limits())
    assert ok.client["ua"] == "x" * 4000
    with pytest.raises(ProtocolError, match=r"'client' must be at most 4096 bytes"):
        parse_start({"type": "start", "client": {"ua": "x" * (1 << 20)}}, Limits())


def feed(proc: Any, seconds: float, rate: int = 16000) -> int:
    """Events made from ``seconds`` of noise in 100 ms chunks."""
    rng = np.random.default_rng(1)
    n, events = int(rate * seconds), 0
    for off in range(0, n, rate // 10):
        x = (rng.standard_normal(rate // 10) * 0.1).astype(np.float32)
        events += len(proc.process(Chunk(x, off, rate)) or [])
    return events + len(proc.flush() or [])


def test_the_costliest_allowed_choices_stay_cheap() -> None:
    """The worst a client may ask: at most 100 level readings per second; a spectrogram of
    256 mels over 100 ms windows and the shortest hop in a few MiB (8 here) (the issue's
    {mels: 3000, win_ms: 4000} peaked at 3 GiB)."""
    assert LEVEL["interval"].lo == 0.01
    assert feed(Level(interval=LEVEL["interval"].lo), 2.0) <= 201
    worst = {k: (o.hi if k in ("mels", "win_ms") else o.lo) for k, o in SPECTROGRAM.items()
             if k in ("mels", "win_ms", "hop_ms", "max_frames")}
    tracemalloc.start()
    try:
        events = feed(Spectrogram(**worst), 2.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert events <= 2 * 1000 / SPECTROGRAM["hop_ms"].lo + 2  # a few hundred per second
    assert peak < 16 << 20, peak  # measured: 8.0 MiB
