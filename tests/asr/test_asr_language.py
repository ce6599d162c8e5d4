"""The spoken language: from ``start`` to the engine, or a clear refusal."""

from __future__ import annotations

import pytest

from earshot.asr.engine import language_problem, primary_language
from earshot.errors import ProtocolError
from earshot.wire.ingest import Limits, parse_start


def test_start_carries_a_language_tag() -> None:
    assert parse_start({"language": "en-US"}, Limits()).language == "en-US"
    assert parse_start({"language": "zh_Hant_TW"}, Limits()).language == "zh_Hant_TW"
    assert parse_start({}, Limits()).language is None
    for bad in ("", "e", "en US", "en-", "<script>", 5):
        with pytest.raises(ProtocolError) as info:
            parse_start({"language": bad}, Limits())
        assert info.value.code == "bad_start"


class Whisperish:
    name = "w"
    languages = ("en", "fr", "de")


class Anything:
    name = "any"
    languages = None


class Undeclared:
    name = "old"


def test_language_problem() -> None:
    assert primary_language("EN-gb") == "en"
    assert language_problem(Whisperish(), "fr-CA") is None
    problem = language_problem(Whisperish(), "ja-JP")
    assert problem is not None and "'ja-JP'" in problem and "transcribing as en" in problem
    assert language_problem(Anything(), "ja") is None
    problem = language_problem(Undeclared(), "fr")
    assert problem is not None and "does not take a language per stream" in problem
