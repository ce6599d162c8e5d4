"""How often a gateway writes and acknowledges each stream's audio: a core (load in,
interval out).

Every ack batch costs the event loop the same fixed work whatever its length (one
``os.write``, one conversion, the ``level`` readings, one message back), so the loop's
cost per stream falls as batches grow. While the loop has headroom, batches are
``ack_interval`` long (0.1 s: acks and ``level`` events ten times a second). As the loop
gets busy they stretch linearly towards ``ack_interval_max``, so a loaded gateway holds more
streams, and keeps their acks timely, instead of falling behind all of them at once; when
the load goes, they shrink back. The loop's busy time is the admission guard's smoothed
measure (:meth:`earshot.server.streams.admission.Headroom.busy`: CPU of the loop thread plus its
wait for a CPU, in cores), so the change follows load over about two seconds, and the
interval moves in steps of ``step`` with a dead band of one step, so it does not flutter.

The feedback is stable: a longer interval lowers the load, which asks for a shorter one,
and the two settle between the bounds (the loop's per-message work does not shrink).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: loop busy time (cores) below which batches are ``ack_interval`` long
LOW = 0.5
#: busy time at and above which they are ``ack_interval_max`` long
HIGH = 0.9


@dataclass
class AckCadence:
    base: float  # --ack-interval: the interval with headroom
    most: float  # --ack-interval-max: the longest under load (== base: fixed)
    low: float = LOW
    high: float = HIGH
    step: float = 0.01
    current: float = field(init=False)

    def __post_init__(self) -> None:
        if self.most < self.base:
            raise ValueError(f"ack_interval_max {self.most:g} is below ack_interval "
                             f"{self.base:g}")
        self.current = self.base

    @property
    def adaptive(self) -> bool:
        return self.most > self.base

    def target(self, busy: float) -> float:
        """The interval for a loop this busy (cores), on the ``step`` grid."""
        if not self.adaptive or busy <= self.low:
            return self.base
        frac = min(1.0, (busy - self.low) / (self.high - self.low))
        value = self.base + frac * (self.most - self.base)
        snapped = round(value / self.step) * self.step
        return min(self.most, max(self.base, snapped))

    def update(self, busy: float) -> float | None:
        """Feed the loop's smoothed busy time; the new interval when it changes (by more
        than one step, or back to ``base``), else None."""
        want = self.target(busy)
        if want == self.current:
            return None
        if want != self.base and abs(want - self.current) <= self.step * 1.001:
            return None  # the dead band
        self.current = want
        return want
