"""Opus from encoders that know nothing of earshot: a ``start`` without ``pre_skip`` gets the
standard libopus lookahead (312 samples at 48 kHz, scaled to the stream's rate); wire/ingest.py.
(Real encoders into a real server: tests/e2e/test_opus_any_encoder.py.)"""

from __future__ import annotations

import pytest

from earshot.wire.ingest import Limits, default_pre_skip, parse_start


@pytest.mark.parametrize(("rate", "expected"), [(48000, 312), (24000, 156), (16000, 104),
                                                (12000, 78), (8000, 52)])
def test_a_start_without_pre_skip_gets_the_libopus_lookahead(rate: int, expected: int) -> None:
    assert default_pre_skip(rate) == expected
    start = parse_start({"type": "start", "format": "opus", "rate": rate}, Limits())
    assert start.pre_skip == expected
    # an explicit value (even 0) is kept, and PCM streams have none
    assert parse_start({"type": "start", "format": "opus", "rate": rate, "pre_skip": 0},
                       Limits()).pre_skip == 0
    assert parse_start({"type": "start", "format": "s16", "rate": rate}, Limits()).pre_skip == 0
