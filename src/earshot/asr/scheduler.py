"""One speech-to-text model shared by every stream: worker threads, fair, finals first.

* Finals are decoded before any interim, in the order they were asked for.
* Interims are taken round-robin across streams, so one talkative stream cannot starve the
  others, and each stream has at most one waiting interim: a newer one replaces it, and one
  whose utterance already has its final is skipped, not decoded (it would arrive stale).
* The engine's native code releases the GIL, so workers run beside the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from earshot.asr.policy import DecodeRequest

if TYPE_CHECKING:
    from earshot.asr.engine import Engine, Transcription

log = logging.getLogger("earshot.asr")


@dataclass(frozen=True, slots=True)
class JobResult:
    stream: str
    request: DecodeRequest
    transcription: Transcription | None  # None: skipped as stale, or the engine failed
    wait: float  # seconds in the queue
    infer: float  # seconds of decoding
    error: str | None = None


Done = Callable[[JobResult], None]


@dataclass(slots=True)
class _Job:
    stream: str
    request: DecodeRequest
    done: Done
    enqueued: float


@dataclass
class SchedulerStats:
    decoded_finals: int = 0
    decoded_interims: int = 0
    skipped_interims: int = 0
    failures: int = 0
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    infers: deque[float] = field(default_factory=lambda: deque(maxlen=1000))


class AsrScheduler:
    def __init__(self, engine: Engine, *, workers: int = 1,
                 clock: Callable[[], float] = time.monotonic,
                 observe: Callable[[JobResult, bool], None] | None = None) -> None:
        """``observe(result, skipped)`` is called for every job (e.g. to record metrics)."""
        self.engine = engine
        self.clock = clock
        self.observe = observe
        self.stats = SchedulerStats()
        self._cond = threading.Condition()
        self._finals: deque[_Job] = deque()
        self._interims: dict[str, _Job] = {}
        self._turns: deque[str] = deque()  # streams with a waiting interim, in turn order
        self._finalized: dict[str, int] = {}  # stream → highest segment with a final asked
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"earshot-asr-{i}",
                                          daemon=True) for i in range(max(1, workers))]
        for t in self._threads:
            t.start()

    def submit(self, stream: str, request: DecodeRequest, done: Done) -> None:
        job = _Job(stream, request, done, self.clock())
        skipped: _Job | None = None
        with self._cond:
            if request.final:
                self._finals.append(job)
                seg = self._finalized.get(stream, -1)
                self._finalized[stream] = max(seg, request.segment)
                old = self._interims.get(stream)
                if old is not None and old.request.segment <= request.segment:
                    skipped = self._interims.pop(stream)
            else:
                skipped = self._interims.get(stream)
                self._interims[stream] = job
                if skipped is None:
                    self._turns.append(stream)
            self._cond.notify()
        if skipped is not None:
            self._skip(skipped)

    def forget(self, stream: str) -> None:
        """The stream is gone: drop its waiting interim and bookkeeping."""
        with self._cond:
            job = self._interims.pop(stream, None)
            self._finalized.pop(stream, None)
        if job is not None:
            self._skip(job)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._finals) + len(self._interims)

    def _next(self) -> _Job | None:
        with self._cond:
            while True:
                if self._finals:
                    return self._finals.popleft()
                while self._turns:
                    stream = self._turns.popleft()
                    job = self._interims.pop(stream, None)
                    if job is not None:
                        return job
                if self._closed:
                    return None
                self._cond.wait()

    def _work(self) -> None:
        while (job := self._next()) is not None:
            req = job.request
            if not req.final and self._finalized.get(job.stream, -1) >= req.segment:
                self._skip(job)
                continue
            started = self.clock()
            try:
                result: Transcription | None = self.engine.transcribe(req.audio, final=req.final)
                error = None
            except Exception as exc:  # one bad decode must not kill the worker
                log.exception("speech-to-text failed")
                result, error = None, f"{type(exc).__name__}: {exc}"
                self.stats.failures += 1
            finished = self.clock()
            wait, infer = started - job.enqueued, finished - started
            self.stats.waits.append(wait)
            self.stats.infers.append(infer)
            if req.final:
                self.stats.decoded_finals += 1
            else:
                self.stats.decoded_interims += 1
            self._deliver(job, JobResult(job.stream, req, result, wait, infer, error))

    def _skip(self, job: _Job) -> None:
        self.stats.skipped_interims += 1
        self._deliver(job, JobResult(job.stream, job.request, None, 0.0, 0.0), skipped=True)

    def _deliver(self, job: _Job, result: JobResult, *, skipped: bool = False) -> None:
        try:
            if self.observe is not None:
                self.observe(result, skipped)
            job.done(result)
        except Exception:
            log.exception("speech-to-text result callback failed")
