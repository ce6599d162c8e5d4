"""Test doubles shared by the speech-to-text scheduler tests, and the asr processor run
over the committed Festival reading."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import soundfile as sf

from earshot.asr.scheduler import AsrScheduler, JobResult
from earshot.processors.builtin.asr import Asr
from earshot.testing import run_processor

FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: the Festival fixture's utterances (start_s, end_s, text)
TRUTH = json.loads((FIXTURES / "speech_16k.json").read_text())["speech"]


def run_asr(engine: Any, chunk_seconds: float = 0.05, *, workers: int | None = None,
            **options: Any) -> tuple[list[dict[str, Any]], AsrScheduler]:
    """The ``asr`` processor (``options``) over ``speech_16k.wav`` in chunks, through the
    real runner, on a scheduler of its own around ``engine`` (closed when done): its events,
    and the scheduler (for its stats)."""
    scheduler = AsrScheduler(engine) if workers is None else AsrScheduler(engine,
                                                                          workers=workers)
    cls = type("Asr", (Asr,), {"scheduler": scheduler})
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    try:
        return run_processor(cls(**options), x, rate, chunk_seconds=chunk_seconds), scheduler
    finally:
        scheduler.close()


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
