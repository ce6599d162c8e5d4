"""The upload queue's core: which closed file to upload next, when to retry, the backlog.

Pure (no I/O, no clock): the driver passes the time in (``now``, seconds on any monotonic
clock) and does the uploads. Adding is O(1) and never blocks or refuses: the files wait on
the local disk, which is the write buffer (``--min-free-space`` keeps it from filling), so
with the store unreachable for an hour the backlog grows and nothing is dropped; it drains
when the store is back.

A failed upload is retried after an exponential backoff with jitter (``base`` * ``factor``
^ (attempts - 1), capped at ``cap``, times a factor in [1 - jitter, 1]), for ever; only a
permanent failure (the local file is gone, e.g. the stream was deleted) drops a job, and
that is counted and reported.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class UploadJob:
    """One closed file to put in the store: ``name`` is its path relative to the data
    directory (``streams/ID.part0001.wav``), which is also its key under the store's prefix;
    ``path`` the local file; ``size`` its bytes when closed; ``tag`` what the caller wants
    back when it is done (e.g. the stream id and part number to record)."""

    name: str
    path: str
    size: int
    tag: Any = None


@dataclass
class _Entry:
    job: UploadJob
    added: float  # when first queued
    due: float  # not before
    attempts: int = 0  # failed so far
    last_error: str | None = None
    seq: int = 0  # (order among equal due times: first come, first served)


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.2  # a delay is scaled by a random factor in [1 - jitter, 1]

    def delay(self, attempts: int, draw: float) -> float:
        """Seconds before retry number ``attempts`` (1 = the first retry); ``draw`` in [0, 1)."""
        if attempts < 1:
            return 0.0
        raw = min(self.cap, self.base * self.factor ** min(attempts - 1, 64))
        return raw * (1.0 - self.jitter * draw)


@dataclass
class _Totals:
    uploaded: int = 0
    uploaded_bytes: int = 0
    failures: int = 0  # failed attempts (each retry counts)
    dropped: int = 0  # permanent failures
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None


@dataclass
class UploadQueue:
    """Jobs waiting, in flight, and retrying. One job per name (adding a name already queued
    replaces its job and keeps its place)."""

    concurrency: int = 2
    backoff: Backoff = field(default_factory=Backoff)
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("upload concurrency must be at least 1")
        self._waiting: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []  # (due, seq, name); stale rows skipped
        self._flying: dict[str, _Entry] = {}
        self._again: dict[str, UploadJob] = {}  # re-added while in flight: upload again after
        self._seq = 0
        self.totals = _Totals()

    # -- the caller's side -------------------------------------------------------------------
    def add(self, job: UploadJob, now: float) -> None:
        """Queue a closed file for upload (never blocks, never refuses)."""
        if job.size < 0:
            raise ValueError(f"{job.name}: size {job.size} < 0")
        if job.name in self._flying:  # changed while being uploaded: once more, afterwards
            self._again[job.name] = job
            return
        old = self._waiting.get(job.name)
        if old is not None:
            old.job = job
            return
        self._seq += 1
        entry = _Entry(job, added=now, due=now, seq=self._seq)
        self._waiting[job.name] = entry
        heapq.heappush(self._heap, (entry.due, entry.seq, job.name))

    def discard(self, name: str) -> bool:
        """Forget a waiting job (its file was deleted on purpose); in-flight ones finish."""
        self._again.pop(name, None)
        return self._waiting.pop(name, None) is not None

    # -- the driver's side -------------------------------------------------------------------
    def take(self, now: float) -> UploadJob | None:
        """The next job due now, marked in flight; None when none is due or all slots are busy."""
        if len(self._flying) >= self.concurrency:
            return None
        while self._heap:
            due, seq, name = self._heap[0]
            entry = self._waiting.get(name)
            if entry is None or entry.seq != seq or entry.due != due:
                heapq.heappop(self._heap)  # stale
                continue
            if due > now:
                return None
            heapq.heappop(self._heap)
            del self._waiting[name]
            self._flying[name] = entry
            return entry.job
        return None

    def next_due(self, now: float) -> float | None:
        """Seconds until a waiting job is due (0: now), or None when nothing waits (or every
        slot is busy: the driver waits for an upload to end instead)."""
        if len(self._flying) >= self.concurrency:
            return None
        while self._heap:
            due, seq, name = self._heap[0]
            entry = self._waiting.get(name)
            if entry is None or entry.seq != seq or entry.due != due:
                heapq.heappop(self._heap)
                continue
            return max(0.0, due - now)
        return None

    def succeeded(self, name: str, now: float) -> None:
        entry = self._flying.pop(name)
        self.totals.uploaded += 1
        self.totals.uploaded_bytes += entry.job.size
        self.totals.last_success_at = now
        self._requeue_if_changed(name, now)

    def failed(self, name: str, now: float, error: str, *, permanent: bool = False) -> float:
        """An attempt failed: retry later (returns the delay), or drop it if ``permanent``."""
        entry = self._flying.pop(name)
        self.totals.failures += 1
        self.totals.last_error = f"{name}: {error}"
        self.totals.last_error_at = now
        if permanent:
            self.totals.dropped += 1
            self._requeue_if_changed(name, now)
            return 0.0
        again = self._again.pop(name, None)
        if again is not None:
            entry.job = again
        entry.attempts += 1
        entry.last_error = error
        delay = self.backoff.delay(entry.attempts, self.rng.random())
        entry.due = now + delay
        self._seq += 1
        entry.seq = self._seq
        self._waiting[name] = entry
        heapq.heappush(self._heap, (entry.due, entry.seq, name))
        return delay

    def retry_now(self, now: float) -> int:
        """The store works again (a probe succeeded): every job waiting out a backoff is due
        now, so the backlog drains at once instead of after the longest backoff. Returns
        how many were brought forward."""
        moved = 0
        for name, entry in self._waiting.items():
            if entry.attempts > 0 and entry.due > now:
                entry.due = now
                self._seq += 1
                entry.seq = self._seq
                heapq.heappush(self._heap, (entry.due, entry.seq, name))
                moved += 1
        return moved

    def _requeue_if_changed(self, name: str, now: float) -> None:
        again = self._again.pop(name, None)
        if again is not None:
            self.add(again, now)

    # -- what /healthz and /metrics show -------------------------------------------------------
    def __len__(self) -> int:
        return len(self._waiting) + len(self._flying)

    def backlog_bytes(self) -> int:
        return (sum(e.job.size for e in self._waiting.values())
                + sum(e.job.size for e in self._flying.values()))

    def report(self, now: float) -> dict[str, Any]:
        entries = [*self._waiting.values(), *self._flying.values()]
        oldest = min((e.added for e in entries), default=None)
        retrying = [e for e in self._waiting.values() if e.attempts > 0]
        t = self.totals
        return {
            "backlog_files": len(entries),
            "backlog_bytes": self.backlog_bytes(),
            "in_flight": len(self._flying),
            "retrying": len(retrying),
            "oldest_seconds": round(now - oldest, 3) if oldest is not None else 0.0,
            "max_attempts": max((e.attempts for e in entries), default=0),
            "uploaded_files": t.uploaded,
            "uploaded_bytes": t.uploaded_bytes,
            "failures": t.failures,
            "dropped": t.dropped,
            "last_error": t.last_error,
            "last_error_age": (round(now - t.last_error_at, 3)
                               if t.last_error_at is not None else None),
        }
