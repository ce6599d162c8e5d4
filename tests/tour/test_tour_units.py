"""The pieces behind the tour fixes, without processes: option ranges, the level bar as
text, the port check, the end of a listened stream."""

from __future__ import annotations

import argparse
import asyncio
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from rich.console import Console
from rich.text import Text

from earshot.cli import TailBoard, build_parser, level_bar
from earshot.cli.term import console
from earshot.client.jitter import JitterBuffer
from earshot.client.listen import Listener
from earshot.config import Settings, env_overrides
from earshot.errors import ConfigError
from earshot.ranges import PORT, SECONDS, Range, server_url
from earshot.server.netcheck import check_bindable


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


def render(renderable: object) -> str:
    c = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    c.print(renderable)
    return c.export_text()


def test_the_level_bar_survives_rich_at_every_level() -> None:
    for db in (-120.0, -61.0, -30.0, -3.0, 0.0):
        bar = level_bar(db, 1.5, 30)
        assert render(Text(bar)).strip() == bar.strip()  # what `earshot stream` shows
    board = TailBoard()
    board.update({"type": "level", "stream": "s1", "rms": -12.0, "t": 2.0})
    board.update({"type": "speech_start", "stream": "s1", "t": 2.0})
    shown = render(board)
    assert "[" + "#" * 24 + "......]" in shown and "-12.0 dBFS" in shown and "speech" in shown


def test_console_does_not_wrap_off_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    path = "/very/long/" + "directory/" * 20 + "file.wav"
    with open(tmp_path / "out.txt", "w") as f:
        console(file=f).print(f"data in {path}")
    assert (tmp_path / "out.txt").read_text() == f"data in {path}\n"


def test_port_check_names_a_busy_port_and_an_unknown_host() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: "
                                              "Address already in use"):
            check_bindable("127.0.0.1", port)
    check_bindable("127.0.0.1", port)  # free again
    with pytest.raises(ConfigError, match="unknown host"):
        check_bindable("no-such-host.invalid", port)


def test_drain_plays_out_everything_buffered_in_order() -> None:
    jb = JitterBuffer(16000, 320)
    for k in (0, 1, 2, 4):
        jb.push(k * 320, 320, k, 0.0)
    outs = jb.drain()
    assert [(o.kind, o.media_offset, o.payload) for o in outs] == [
        ("audio", 0, 0), ("audio", 320, 1), ("audio", 640, 2), ("concealed", 960, None),
        ("audio", 1280, 4)]
    assert (jb.stats.played_frames, jb.stats.lost_frames, jb.stats.buffered_packets) == (4, 1, 0)
    assert jb.drain() == []


def _feed(listener: Listener, x: np.ndarray, batch: int) -> None:
    for off in range(0, len(x), batch):
        part = x[off:off + batch]
        listener._audio({"type": "audio", "offset": 1000 + off, "frames": len(part),
                         "rate": 16000, "channels": 1, "format": "s16"},
                        part.astype("<i2").tobytes(), 0.0)
    listener._finish()


@pytest.mark.parametrize("record", [True, False])
def test_listener_writes_the_last_partial_frame(tmp_path: Path, record: bool) -> None:
    """Recording writes every frame; playing through the jitter buffer plays out what is
    buffered at the end; both end with the stream's last partial 20 ms frame."""
    x = (np.random.default_rng(7).uniform(-0.5, 0.5, 16000 + 100) * 32767).astype(np.int16)
    out = tmp_path / "heard.wav"
    listener = Listener("ws://127.0.0.1:1/ws", "s", out=out, record=record)
    _feed(listener, x, 1600)  # 100 ms batches, as the relay sends them
    if not record:
        asyncio.run(listener._playout())
    listener._close_sinks()
    y = sf.read(out, dtype="int16")[0]
    assert len(y) == len(x) and np.array_equal(y, x)
    s = listener.stats.summary()
    assert s["recorded"] is record and s["first_offset"] == 1000
    assert math.isclose(s["seconds"], len(x) / 16000) and s["concealed_ms"] == 0


def test_recording_fills_what_the_relay_dropped(tmp_path: Path) -> None:
    x = np.arange(1, 3201, dtype=np.int16)
    listener = Listener("ws://127.0.0.1:1/ws", "s", out=tmp_path / "r.wav")
    hdr = {"type": "audio", "rate": 16000, "channels": 1, "format": "s16"}
    listener._audio({**hdr, "offset": 0, "frames": 1600}, x[:1600].tobytes(), 0.0)
    listener._audio({**hdr, "offset": 1920, "frames": 1280}, x[1920:].tobytes(), 0.1)
    listener._finish()
    listener._close_sinks()
    y = sf.read(tmp_path / "r.wav", dtype="int16")[0]
    assert np.array_equal(y[:1600], x[:1600]) and not y[1600:1920].any()
    assert np.array_equal(y[1920:], x[1920:]) and listener.stats.concealed_ms == 20


def test_recording_stops_at_seconds(tmp_path: Path) -> None:
    x = np.arange(1, 3201, dtype=np.int16)
    listener = Listener("ws://127.0.0.1:1/ws", "s", out=tmp_path / "r.wav", seconds=0.05)
    listener._audio({"type": "audio", "offset": 0, "frames": 3200, "rate": 16000,
                     "channels": 1, "format": "s16"}, x.tobytes(), 0.0)
    listener._close_sinks()
    assert listener._ended.is_set()
    assert np.array_equal(sf.read(tmp_path / "r.wav", dtype="int16")[0], x[:800])
