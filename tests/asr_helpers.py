"""Test doubles shared by the speech-to-text scheduler tests."""

from __future__ import annotations

import threading

from earshot.asr.scheduler import JobResult


class Results:
    """Collects a scheduler's delivered results; :meth:`wait` for the first ``n``."""

    def __init__(self) -> None:
        self.items: list[JobResult] = []
        self.cond = threading.Condition()

    def __call__(self, result: JobResult) -> None:
        with self.cond:
            self.items.append(result)
            self.cond.notify_all()

    def wait(self, n: int, timeout: float = 20.0) -> list[JobResult]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= n, timeout), self.items
            return list(self.items)
