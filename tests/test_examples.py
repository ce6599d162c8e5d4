"""The README's example processor works as documented."""

from __future__ import annotations

import sys

import soundfile as sf

from earshot.testing import run_processor
from helpers import FIXTURES, ROOT

sys.path.insert(0, str(ROOT))

from examples.melprint import SHADES, MelPrint


def test_melprint_draws_speech_darker_than_silence(capsys: object) -> None:
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="float32")
    events = run_processor(MelPrint(), x[: rate * 2], rate)
    assert len(events) == 20 and all(e["type"] == "melprint" for e in events)
    assert all(len(e["picture"]) == 24 for e in events)
    darkness = [sum(SHADES.index(c) for c in e["picture"]) for e in events]
    assert max(darkness[:7]) == 0  # 0.8 s of digital silence first
    assert min(darkness[9:]) > 24  # then speech
