"""Option ranges (earshot/ranges.py): the checks themselves, the command line's parser and the
settings from the environment, which say the same thing about the same values."""

from __future__ import annotations

import argparse

import pytest

from earshot.cli import build_parser
from earshot.config import Settings, env_overrides
from earshot.errors import ConfigError
from earshot.ranges import PORT, SECONDS, Range, server_url


def test_ranges_accept_the_edges_and_say_why_not() -> None:
    assert PORT("1") == 1 and PORT(" 65535 ") == 65535
    for bad, why in [("0", "not 0"), ("80000", "not 80000"), ("8e3", "not '8e3'"),
                     ("http", "not 'http'")]:
        with pytest.raises(argparse.ArgumentTypeError,
                           match=f"must be an integer from 1 to 65535, {why}"):
            PORT(bad)
    assert SECONDS("0.5") == 0.5
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be a number above 0 seconds"):
            SECONDS(bad)
    assert Range(float, 0.005, 5).problem(5.0) is None
    assert Range(float, 0.005, 5).problem(5.01) == "must be a number from 0.005 to 5, not 5.01"
    assert Range(int, 1).problem(True) is not None  # a bool is not a count
    assert Range(int, hi=3).describe() == "an integer of at most 3"


def test_parser_refuses_out_of_range_options(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for argv, message in [
        (["serve", "--port", "80000"], "argument --port: must be an integer from 1 to 65535"),
        (["serve", "--max-lag", "0"], "argument --max-lag: must be a number above 0"),
        (["send", "x.wav", "--retries", "-1"], "argument --retries: must be an integer of "
                                               "at least 0"),
        (["streams", "--limit", "501"], "argument --limit: must be an integer from 1 to 500"),
        (["tail", "x", "--url", "localhost:8000"], "is not a server URL"),
        (["tail", "x", "--url", "ws://h:99999/ws"], "has a bad port"),
    ]:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err, argv
    assert server_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"


def test_settings_check_the_same_ranges_from_the_environment() -> None:
    with pytest.raises(ConfigError, match="port must be an integer from 1 to 65535, not 80000"):
        Settings.of(**env_overrides({"EARSHOT_PORT": "80000"}))
    with pytest.raises(ConfigError, match="asr workers must be an integer of at least 1"):
        Settings.of(asr_workers=0)
    with pytest.raises(ConfigError, match="drain timeout must be a number of at least 0"):
        Settings.of(drain_timeout=-1.0)
    with pytest.raises(ConfigError, match="log level 'loud' is not one of"):
        Settings.of(log_level="loud")
    Settings.of(port=65535, drain_timeout=0.0, asr_threads=0)  # the edges are fine
