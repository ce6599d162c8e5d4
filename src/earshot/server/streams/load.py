"""How loaded a gateway is, and what follows from it: who gets in, and how long batches are.

One owner for the three measures the hub acts on, each a core of its own with time passed
in: :class:`~earshot.server.streams.admission.Admission` (publisher slots, CPU headroom,
loop lag, ack latency, the drain), :class:`~earshot.server.streams.space.Space` (the data
directory's free space) and :class:`~earshot.server.streams.cadence.AckCadence` (batches
stretch under load). The hub feeds it the hot path's tallies once a tick and asks it
whether a start may go ahead; ``/healthz`` and ``/metrics`` read its reports.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

from earshot.config import Settings
from earshot.errors import ProtocolError
from earshot.server.metrics import Metrics
from earshot.server.streams.admission import Admission
from earshot.server.streams.batch import Tally
from earshot.server.streams.cadence import AckCadence
from earshot.server.streams.space import Space, free_bytes
from earshot.wire.codes import Code

log = logging.getLogger("earshot.hub")


class Load:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.metrics = metrics
        self.data_dir: Path = settings.server.data_dir
        self.admission = Admission.from_settings(settings)
        ingest = settings.ingest
        self.cadence = AckCadence(ingest.ack_interval, ingest.ack_interval_ceiling)
        metrics.ack_interval.set(self.cadence.current)
        self.space = Space(settings.admission.min_free_space, str(self.data_dir))

    # -- admission --------------------------------------------------------------------------
    def refusal(self, *, resume: bool, held: Collection[str], now: float) -> ProtocolError | None:
        """Why a start (``resume``: of a stream that exists) must be refused now, or None:
        a full disk, a drain, ``--max-streams`` or the CPU-headroom guard. A resume gets
        in unless the disk is full or the server is shutting down."""
        a = self.admission
        full = self.space.refusal(resume=resume)
        if full is not None and not a.draining:
            self.metrics.streams_refused.labels("storage").inc()
            return ProtocolError(Code.STORAGE_FULL, full)
        if resume:
            if a.draining:
                return ProtocolError(Code.SHUTTING_DOWN,
                                     "the server is shutting down; resume later")
            return None
        why = a.refusal(held, now)
        if why is None:
            return None
        self.metrics.streams_refused.labels(a.state(held, now)).inc()
        return ProtocolError(Code.SHUTTING_DOWN if a.draining else Code.SERVER_FULL, why)

    def observe_loop_lag(self, lag: float, held: Collection[str], now: float) -> None:
        """The loop-lag probe's report (every 0.1 s, once a second while idle); also
        refreshes the gauges."""
        self.admission.observe_loop_lag(lag, now)
        self.show(held, now)

    def show(self, held: Collection[str], now: float) -> None:
        self.admission.show(self.metrics, held, now)

    def report(self, held: Collection[str], now: float) -> dict[str, Any]:
        """For /healthz: whether new publishers get in now, and why not."""
        return self.admission.report(held, now)

    # -- the disk ---------------------------------------------------------------------------
    def check_space(self, now: float) -> str:
        """Measure the data directory's free space (at most once a second); its state."""
        space = self.space
        if space.due(now):
            with contextlib.suppress(OSError):
                space.update(free_bytes(self.data_dir), now)
        m = self.metrics
        m.storage_free.set(space.free or 0)
        for st in ("ok", "low", "full"):
            m.storage_state.labels(st).set(1 if st == space.state else 0)
        return space.state

    # -- once a tick ------------------------------------------------------------------------
    def count(self, tally: Tally, now: float) -> None:
        """Add the hot path's counts to the metrics (a lock each: once a tick, not per
        batch), and the tick's mean ack latency to the admission guard's smoothing."""
        m = self.metrics
        if tally.frames:
            m.frames_in.inc(tally.frames)
            m.bytes_in.inc(tally.bytes)
        if tally.acks:
            m.acks.inc(tally.acks)
            self.admission.observe_ack_latency(tally.latency / tally.acks, now)

    def cadence_update(self, now: float) -> float | None:
        """The ack interval every stream should use from now on, when it changes (said at
        INFO when batches start or stop stretching, at DEBUG in between)."""
        busy = self.admission.loop_busy(now)
        before = self.cadence.current
        interval = self.cadence.update(busy)
        if interval is None:
            return None
        self.metrics.ack_interval.set(interval)
        base = self.cadence.base
        level = logging.INFO if (before == base) != (interval == base) else logging.DEBUG
        log.log(level, "ack interval %.2f s (the event loop is %.2f cores busy)", interval,
                busy)
        return interval

    def ingest_report(self) -> dict[str, Any]:
        """For /healthz: the current ack interval and its bounds."""
        c = self.cadence
        return {"ack_interval": round(c.current, 4), "ack_interval_min": c.base,
                "ack_interval_max": c.most}
