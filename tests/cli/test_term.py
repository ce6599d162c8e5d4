"""What the command line draws (earshot/cli): the level bar and the tail board as rich
renders them, and a console that does not wrap when its output is not a terminal."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text

from earshot.cli import TailBoard, level_bar
from earshot.cli.term import console


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
