"""Allowed ranges of numeric options, checked the same way on the command line and in
:class:`earshot.config.Settings` (so ``--port 80000`` and ``EARSHOT_PORT=80000`` fail alike),
and the one parser of sizes (``64M``, ``1G``), :func:`parse_size`.

A :class:`Range` is also an argparse ``type``::

    parser.add_argument("--port", type=PORT)               # 1..65535
    parser.add_argument("--gain", type=Range(float, 0, 4))  # a float in [0, 4]

so a bad value is refused by argparse with the reason (``argument --port: must be an integer
from 1 to 65535, not 80000``), exit code 2, before anything starts. :func:`server_url` does
the same for ``--url``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Range:
    """Numbers of ``kind`` (int or float) between ``lo`` and ``hi`` (either may be None).

    ``lo_open``: ``lo`` itself is excluded ("above 0"). ``unit`` is only for messages.
    Floats must be finite.
    """

    kind: type = int
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    unit: str = ""

    def describe(self, noun: str | None = None) -> str:
        """``a number from 0.005 to 5 seconds`` (``noun`` replaces "an integer")."""
        noun = noun or ("an integer" if self.kind is int else "a number")
        unit = f" {self.unit}" if self.unit else ""
        lo, hi = _fmt(self.lo), _fmt(self.hi)
        if self.lo is not None and self.hi is not None and not self.lo_open:
            return f"{noun} from {lo} to {hi}{unit}"
        if self.lo is not None and self.hi is not None:
            return f"{noun} above {lo} and at most {hi}{unit}"
        if self.lo is not None:
            return f"{noun} {'above' if self.lo_open else 'of at least'} {lo}{unit}"
        if self.hi is not None:
            return f"{noun} of at most {hi}{unit}"
        return noun + unit

    def short(self) -> str:
        """The range in a few characters, for ``--help``: ``0.005-5 seconds``, ``at least 1``."""
        unit = f" {self.unit}" if self.unit else ""
        lo, hi = _fmt(self.lo), _fmt(self.hi)
        if self.lo is not None and self.hi is not None:
            return (f"above {lo}, at most {hi}{unit}" if self.lo_open
                    else f"{lo}\u2013{hi}{unit}")
        if self.lo is not None:
            return f"{'above' if self.lo_open else 'at least'} {lo}{unit}"
        if self.hi is not None:
            return f"at most {hi}{unit}"
        return ("an integer" if self.kind is int else "a number") + unit

    def problem(self, value: object) -> str | None:
        """Why ``value`` is out of range ("must be ..., not ..."), or None when it is fine."""
        number = value if isinstance(value, int | float) and not isinstance(value, bool) \
            else None
        ok = number is not None
        if number is not None and self.kind is int:
            ok = isinstance(number, int) or float(number).is_integer()
        if ok and number is not None:
            x = float(number)
            ok = math.isfinite(x) and (
                self.lo is None or (x > self.lo if self.lo_open else x >= self.lo)) and (
                self.hi is None or x <= self.hi)
        return None if ok else f"must be {self.describe()}, not {value!r}"

    def parse(self, text: str) -> int | float:
        """``text`` as a number in range; ValueError with the reason otherwise."""
        try:
            value: int | float = self.kind(text.strip())
        except ValueError:
            raise ValueError(f"must be {self.describe()}, not {text!r}") from None
        problem = self.problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    def __call__(self, text: str) -> int | float:  # argparse type
        try:
            return self.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


PORT = Range(int, 1, 65535)
POSITIVE_INT = Range(int, 1)
COUNT = Range(int, 0)  # retries, threads: 0 allowed
SECONDS = Range(float, 0, lo_open=True, unit="seconds")  # a duration that must pass
SECONDS_OR_ZERO = Range(float, 0, unit="seconds")
SAMPLE_RATE = Range(int, 8000, 192000, unit="Hz")  # what the server accepts
CHANNELS = Range(int, 1, 8)
OPUS_BITRATE = Range(int, 6000, 510000, unit="bit/s")  # libopus' range


SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``64M``, ``1.5G``, ``512k``, ``512KiB`` or plain bytes (binary units); ValueError
    with the reason otherwise (negative, not finite, not a size)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = SIZE_UNITS.get(t[-1:], 1)
    if scale != 1:
        t = t[:-1]
    try:
        n = float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not a size such as 64M, 1G or 1048576") from None
    if not n >= 0 or n == float("inf"):
        raise ValueError(f"{text!r} is not a size of at least 0")
    return int(n * scale)


def size_arg(text: str) -> int:
    """argparse type for sizes (:func:`parse_size`)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def format_size(n: int) -> str:
    """``67108864`` → ``64M`` (bytes that are no whole K, M, G or T stay bytes)."""
    for suffix, scale in reversed(SIZE_UNITS.items()):
        if n and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def server_url(text: str) -> str:
    """argparse type for ``--url``: ws://, wss://, http:// or https:// with a host."""
    parts = urlsplit(text.strip())
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad or out-of-range port
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} has a bad port: {exc}") from None
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a server URL: give ws://HOST:PORT/ws (or http://HOST:PORT)")
    return text.strip()
