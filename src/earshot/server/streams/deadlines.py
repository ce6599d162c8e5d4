"""One loop-wide schedule of per-stream deadlines (ack flushes, header syncs).

A heap of ``(when, seq, item)``: pushing is O(log n), and a tick pops only what is due, so
a gateway holding a thousand streams does not look at each of them twenty times a second.
Entries are never removed early: whoever pops one checks that it still applies (the
stream may have been flushed by size, or have ended). Time is passed in.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

T = TypeVar("T")


class Deadlines(Generic[T]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, when: float, item: T) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), item))

    def due(self, now: float) -> list[T]:
        """Every item whose deadline is at or before ``now``, earliest first (removed)."""
        heap, out = self._heap, []
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[2])
        return out
