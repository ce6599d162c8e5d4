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

``--max-streams auto`` replaces the fixed count by the measured headroom (:class:`Headroom`).
A newcomer is admitted only while all of these hold:

- the smoothed event-loop lag is under a tenth of ``max_loop_lag`` (50 ms by default) and the
  smoothed ack latency under a tenth of ``max_ack_latency`` (100 ms): signs of a loop that
  still waits for work, long before a held stream falls behind;
- the predicted busy time of the event-loop thread stays at most ``max_cpu`` (cores, 0.8
  by default): the thread's smoothed CPU plus its smoothed time spent waiting for a CPU
  (runnable, not running: Linux ``/proc/thread-self/schedstat``; 0 elsewhere), plus one
  stream's share for the newcomer and for every stream admitted (or kept for a resume)
  within the last ``settle`` seconds, whose cost the smoothed figures do not show yet. One
  stream's share is the busy time divided by the streams held long enough to be measured
  (a conservative estimate: it includes the idle cost), or ``prior`` before any is.

One event loop runs on one core, so the loop thread's CPU (``time.thread_time`` read on the
loop) is what saturates first; on a machine shared with other work the thread also waits
for a CPU, and that wait counts as busy, so the door closes earlier there. The whole
process's CPU (``time.process_time``) is reported alongside. Refused newcomers get
``server_full`` (1013) like past a fixed count.

Subscribers (``/ws/subscribe``) have a count of their own (:class:`Slots`,
``--max-subscribers``), apart from publishers: neither ever takes the other's slots.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

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
class Rate:
    """The rate of a cumulative counter (CPU seconds), smoothed; time passed in."""

    window: float
    mean: Smoothed = field(init=False)
    prev: tuple[float, float] | None = None  # (counter, time)

    def __post_init__(self) -> None:
        self.mean = Smoothed(self.window)

    def add(self, counter: float, now: float) -> None:
        if self.prev is not None and now > self.prev[1]:
            self.mean.add(max(0.0, (counter - self.prev[0]) / (now - self.prev[1])), now)
        self.prev = (counter, now)

    def current(self, now: float) -> float:
        return self.mean.current(now)


HEADROOM_FRACTION = 0.1  # auto: lag and ack latency kept under this share of their limits


@dataclass
class Headroom:
    """``--max-streams auto``: may one more stream come in? (the rule in the module doc)"""

    max_cpu: float = 0.8  # cores of the event-loop thread
    window: float = 2.0
    settle: float = 0.0  # seconds until a new stream's cost shows in the smoothed CPU
    #                      (0: three windows, when the mean has taken 95 % of a step)
    prior: float = 0.01  # cores per stream assumed before any stream is measured
    loop_cpu: Rate = field(init=False)
    loop_wait: Rate = field(init=False)
    process_cpu: Rate = field(init=False)
    admitted: deque[float] = field(default_factory=deque)  # when newcomers got in

    def __post_init__(self) -> None:
        self.settle = self.settle or 3.0 * self.window
        self.loop_cpu = Rate(self.window)
        self.loop_wait = Rate(self.window)
        self.process_cpu = Rate(self.window)

    def observe_cpu(self, loop_seconds: float, process_seconds: float, now: float,
                    wait_seconds: float | None = None) -> None:
        self.loop_cpu.add(loop_seconds, now)
        self.process_cpu.add(process_seconds, now)
        if wait_seconds is not None:
            self.loop_wait.add(wait_seconds, now)

    def busy(self, now: float) -> float:
        """The loop thread's time running or waiting to run, per second (cores)."""
        return self.loop_cpu.current(now) + self.loop_wait.current(now)

    def recent(self, now: float, held: int) -> int:
        """Streams admitted within ``settle`` seconds (and still counted as held)."""
        while self.admitted and self.admitted[0] <= now - self.settle:
            self.admitted.popleft()
        return min(len(self.admitted), held)

    def per_stream(self, now: float, held: int) -> float:
        measured = held - self.recent(now, held)
        if measured <= 0:
            return self.prior
        return self.busy(now) / measured

    def predicted(self, now: float, held: int, reserved: int = 0) -> float:
        """Loop busy time with one more stream (and the unmeasured and reserved ones) in."""
        pending = 1 + self.recent(now, held) + reserved
        return self.busy(now) + self.per_stream(now, held) * pending

    def full(self, now: float, held: int, reserved: int = 0) -> bool:
        return self.predicted(now, held, reserved) > self.max_cpu

    def admit(self, now: float) -> None:
        self.admitted.append(now)

    def report(self, now: float, held: int) -> dict[str, Any]:
        return {"loop_cpu": round(self.loop_cpu.current(now), 4),
                "loop_wait": round(self.loop_wait.current(now), 4),
                "process_cpu": round(self.process_cpu.current(now), 4),
                "per_stream_cpu": round(self.per_stream(now, held), 5),
                "max_cpu": self.max_cpu}


@dataclass
class Slots:
    """A count of connections held at once (subscribers); ``limit`` 0: no limit."""

    limit: int = 0
    held: int = 0
    refused: int = 0

    def take(self) -> bool:
        if self.limit and self.held >= self.limit:
            self.refused += 1
            return False
        self.held += 1
        return True

    def release(self) -> None:
        self.held = max(0, self.held - 1)


@dataclass
class Admission:
    """The door of one gateway. ``0`` disables a limit; ``auto``: the headroom rule."""

    max_streams: int = 0
    auto: bool = False
    max_cpu: float = 0.8
    max_subscribers: int = 0
    max_loop_lag: float = 0.0  # seconds
    max_ack_latency: float = 0.0  # seconds
    window: float = 2.0
    resume_grace: float = 30.0
    lag: Smoothed = field(init=False)
    ack: Smoothed = field(init=False)
    reserved: dict[str, float] = field(default_factory=dict)  # stream id → expiry
    draining: bool = False

    headroom: Headroom = field(init=False)
    subscribers: Slots = field(init=False)

    def __post_init__(self) -> None:
        self.lag = Smoothed(self.window)
        self.ack = Smoothed(self.window)
        self.headroom = Headroom(self.max_cpu, self.window)
        self.subscribers = Slots(self.max_subscribers)

    @classmethod
    def from_settings(cls, settings: Any) -> Admission:
        adm = settings.admission  # earshot.config.AdmissionSettings
        auto = adm.max_streams == "auto"
        return cls(max_streams=0 if auto else adm.max_streams, auto=auto,
                   max_loop_lag=adm.max_loop_lag, max_ack_latency=adm.max_ack_latency,
                   max_cpu=adm.max_cpu, max_subscribers=adm.max_subscribers)

    # -- inputs ---------------------------------------------------------------------------
    def observe_loop_lag(self, lag: float, now: float) -> None:
        self.lag.add(max(0.0, lag), now)

    def observe_ack_latency(self, latency: float, now: float) -> None:
        self.ack.add(max(0.0, latency), now)

    def observe_cpu(self, loop_seconds: float, process_seconds: float, now: float,
                    wait_seconds: float | None = None) -> None:
        """Cumulative CPU seconds of the loop thread and of the process, and the seconds the
        loop thread waited for a CPU (the probe's)."""
        self.headroom.observe_cpu(loop_seconds, process_seconds, now, wait_seconds)

    def loop_busy(self, now: float) -> float:
        """The event-loop thread's smoothed time running or waiting to run (cores)."""
        return self.headroom.busy(now)

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
        f = HEADROOM_FRACTION if self.auto else 1.0
        if self.max_loop_lag and self.lag.current(now) > self.max_loop_lag * f:
            return OVERLOADED
        if self.max_ack_latency and self.ack.current(now) > self.max_ack_latency * f:
            return OVERLOADED
        if self.auto and self.headroom.full(now, len(held), self._reserved(now, held)):
            return FULL
        return OK

    def refusal(self, held: Iterable[str], now: float) -> str | None:
        """Why a NEW publisher is refused now (a message for the client), or None; ask once
        per newcomer (under ``auto``, an admitted one counts as not yet measured)."""
        held = list(held)
        state = self.state(held, now)
        if state == OK:
            if self.auto:
                self.headroom.admit(now)
            return None
        if state == DRAINING:
            return "the server is shutting down; try again shortly"
        if state == FULL and self.auto:
            cpu = self.headroom.predicted(now, len(held), self._reserved(now, held))
            return (f"the server has no headroom for another stream (predicted event-loop "
                    f"busy {cpu:.2f} > {self.max_cpu:g} cores with {len(held)} held); "
                    "try again later")
        if state == FULL:
            reserved = self._reserved(now, held)
            kept = f" (+{reserved} kept for streams resuming after a restart)" if reserved else ""
            return (f"the server holds its maximum of {self.max_streams} streams{kept}; "
                    "try again later")
        return (f"the server is overloaded (event-loop lag {self.lag.current(now) * 1000:.0f} ms,"
                f" ack latency {self.ack.current(now) * 1000:.0f} ms); try again later")


    def subscriber_refusal(self) -> str | None:
        """Take a subscriber slot; why not (a message), or None when taken."""
        if self.subscribers.take():
            return None
        return (f"the server holds its maximum of {self.max_subscribers} subscribers; "
                "try again later")

    def report(self, held: Iterable[str], now: float) -> dict[str, Any]:
        """For /healthz: whether new publishers and subscribers get in now, and why not."""
        held = list(held)
        out: dict[str, Any] = {
            "state": self.state(held, now), "held": len(held),
            "max_streams": "auto" if self.auto else self.max_streams,
            "loop_lag": round(self.lag.current(now), 4),
            "ack_latency": round(self.ack.current(now), 4),
            "subscribers": self.subscribers.held, "max_subscribers": self.max_subscribers}
        if self.auto:
            out["headroom"] = self.headroom.report(now, len(held))
        return out

    def show(self, metrics: Any, held: Iterable[str], now: float) -> None:
        """The gauges of :mod:`earshot.server.metrics` this guard feeds."""
        held = list(held)
        state = self.state(held, now)
        for s in STATES:
            metrics.admission_state.labels(s).set(1 if s == state else 0)
        metrics.loop_lag.set(self.lag.current(now))
        metrics.ack_latency_recent.set(self.ack.current(now))
        metrics.max_streams.set(-1 if self.auto else self.max_streams)
        metrics.loop_cpu.set(self.headroom.loop_cpu.current(now))
        metrics.loop_wait.set(self.headroom.loop_wait.current(now))
        metrics.process_cpu.set(self.headroom.process_cpu.current(now))
        metrics.subscribers.set(self.subscribers.held)
        metrics.max_subscribers.set(self.max_subscribers)


def thread_wait(path: str = "/proc/thread-self/schedstat") -> float | None:
    """Seconds this thread has spent runnable but waiting for a CPU (Linux), or None."""
    try:
        with open(path, "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


async def probe_loop_lag(report: Callable[[float, float], None], period: float = 0.1,
                         clock: Callable[[], float] = time.monotonic,
                         cpu: Callable[..., None] | None = None,
                         idle: Callable[[], bool] | None = None,
                         idle_period: float = 1.0) -> None:
    """Forever: sleep ``period``, report how much later than asked the loop woke us; with
    ``cpu``, also the CPU seconds used so far by this (the loop's) thread and the process,
    and the seconds the thread waited for a CPU (None where that is not known). While
    ``idle()`` (no stream held), sleep ``idle_period`` instead: the smoothed measures take
    samples at any spacing, and an idle server wakes less often."""
    while True:
        asked = clock()
        wait = idle_period if idle is not None and idle() else period
        await asyncio.sleep(wait)
        now = clock()
        if cpu is not None:
            cpu(time.thread_time(), time.process_time(), now, thread_wait())
        report(max(0.0, now - asked - wait), now)
