"""Admission control: whether a gateway takes on a NEW publisher (a core, time passed in).

Two limits, either of which refuses a new stream with ``server_full`` (close 1013, try
again later):

- ``max_streams``: streams held here, plus streams held when the server last stopped for a
  planned restart and not yet resumed (their slots are kept for ``resume_grace`` seconds,
  so after a restart resumes are admitted first);
- CPU headroom: event-loop lag (measured by :func:`probe_loop_lag`) and ack latency, each
  smoothed (an exponentially weighted mean over about ``window`` seconds, so one GC pause
  or one slow write does not refuse anybody) and compared with its threshold.

Resumes of streams held here are never refused, and nothing held is ever degraded: the
guard only decides at the door.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

OK, FULL, OVERLOADED, DRAINING = "ok", "full", "overloaded", "draining"
STATES = (OK, FULL, OVERLOADED, DRAINING)


@dataclass
class Smoothed:
    """An exponentially weighted mean of samples over about ``window`` seconds."""

    window: float
    value: float = 0.0
    last: float | None = None

    def add(self, sample: float, now: float) -> float:
        if self.last is None:
            self.value = sample
        else:
            dt = max(0.0, now - self.last)
            alpha = 1.0 - math.exp(-dt / self.window) if self.window > 0 else 1.0
            self.value += alpha * (sample - self.value)
        self.last = now
        return self.value

    def current(self, now: float) -> float:
        """The mean, decayed towards 0 when no sample came for a while (an idle server)."""
        if self.last is None:
            return 0.0
        idle = now - self.last
        if idle <= self.window:
            return self.value
        return self.value * math.exp(-(idle - self.window) / self.window)


@dataclass
class Admission:
    """The door of one gateway. ``0`` disables a limit."""

    max_streams: int = 0
    max_loop_lag: float = 0.0  # seconds
    max_ack_latency: float = 0.0  # seconds
    window: float = 2.0
    resume_grace: float = 30.0
    lag: Smoothed = field(init=False)
    ack: Smoothed = field(init=False)
    reserved: dict[str, float] = field(default_factory=dict)  # stream id → expiry
    draining: bool = False

    def __post_init__(self) -> None:
        self.lag = Smoothed(self.window)
        self.ack = Smoothed(self.window)

    # -- inputs ---------------------------------------------------------------------------
    def observe_loop_lag(self, lag: float, now: float) -> None:
        self.lag.add(max(0.0, lag), now)

    def observe_ack_latency(self, latency: float, now: float) -> None:
        self.ack.add(max(0.0, latency), now)

    def reserve(self, stream_ids: Iterable[str], now: float,
                grace: float | None = None) -> None:
        """Keep slots for streams held at the last planned shutdown, until they resume
        (or ``grace`` seconds, by default ``resume_grace``, have passed)."""
        until = now + (self.resume_grace if grace is None else grace)
        for sid in stream_ids:
            self.reserved[sid] = until

    def resumed(self, stream_id: str) -> None:
        self.reserved.pop(stream_id, None)

    # -- decisions ------------------------------------------------------------------------
    def _reserved(self, now: float, held: Iterable[str]) -> int:
        for sid, until in list(self.reserved.items()):
            if until <= now:
                del self.reserved[sid]
        held = set(held)
        return sum(1 for sid in self.reserved if sid not in held)

    def state(self, held: Iterable[str], now: float) -> str:
        """``ok``, ``full`` (max streams), ``overloaded`` (CPU headroom) or ``draining``."""
        if self.draining:
            return DRAINING
        held = list(held)
        if self.max_streams and len(held) + self._reserved(now, held) >= self.max_streams:
            return FULL
        if self.max_loop_lag and self.lag.current(now) > self.max_loop_lag:
            return OVERLOADED
        if self.max_ack_latency and self.ack.current(now) > self.max_ack_latency:
            return OVERLOADED
        return OK

    def refusal(self, held: Iterable[str], now: float) -> str | None:
        """Why a NEW publisher is refused now (a message for the client), or None."""
        held = list(held)
        state = self.state(held, now)
        if state == OK:
            return None
        if state == DRAINING:
            return "the server is shutting down; try again shortly"
        if state == FULL:
            reserved = self._reserved(now, held)
            kept = f" (+{reserved} kept for streams resuming after a restart)" if reserved else ""
            return (f"the server holds its maximum of {self.max_streams} streams{kept}; "
                    "try again later")
        return (f"the server is overloaded (event-loop lag {self.lag.current(now) * 1000:.0f} ms,"
                f" ack latency {self.ack.current(now) * 1000:.0f} ms); try again later")


async def probe_loop_lag(report: Callable[[float, float], None], period: float = 0.1,
                         clock: Callable[[], float] = time.monotonic) -> None:
    """Forever: sleep ``period``, report how much later than asked the loop woke us."""
    while True:
        asked = clock()
        await asyncio.sleep(period)
        now = clock()
        report(max(0.0, now - asked - period), now)
