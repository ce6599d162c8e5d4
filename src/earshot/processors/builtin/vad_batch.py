"""One VAD batcher per process and model: many streams' windows in one ONNX call.

Silero costs about 140 µs per call for one 32 ms window but about 65 µs per window when 100
windows go in one call (the model treats batch rows independently), and the Python around
each call (feeds, outputs, state hand-over) is paid once per call instead of once per window.
So every stream's :class:`~earshot.processors.builtin.vad.Vad` hands its audio to the process-wide
:class:`VadBatcher` of its model and rate, which:

* collects the jobs submitted meanwhile (waiting at most ``linger`` seconds after the oldest,
  so that a lightly loaded server still batches a little), on its first worker thread; the
  others (``workers`` in all, 2) only take jobs that have waited ``backlog`` seconds (50 ms),
  when the first is busy with a long batch or starved of CPU on a busy machine: one thread
  batches best, two keep up when one cannot;
* frames each stream's audio into whole windows (:meth:`StreamingVad.frame`), scores all of
  them with :func:`~earshot.dsp.vad.score_batch` (each stream keeps its own recurrent state
  and context: the numbers are those of scoring each stream alone), and segments each
  stream's probabilities (:meth:`StreamingVad.consume`);
* resolves each job's asyncio future on its own loop, one ``call_soon_threadsafe`` per loop
  per batch.

The 48 → 16 kHz resampling stays on the event loop (the pipeline's converter, once per
feed): soxr releases the GIL, so on this thread each of the N calls per round would wait
to take it back from a busy loop (measured: with the loop 50 % busy, 250 streams fell 2.7 s
behind; with the resampling on the loop, 0.2 s). The ONNX calls release it too, but only
once per step of a whole batch.

A job that fails (bad input, a bug) fails alone: its future gets the exception, the others
their results; if the batched ONNX call itself fails, the streams are scored one by one so
that only the culprit fails. :meth:`VadBatcher.run_jobs` is the core, usable without threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from earshot.dsp.vad import SileroModel, StreamingVad, VadResult, score_batch


@dataclass(slots=True)
class VadJob:
    """Audio of one stream to analyse: ``samples`` (mono float32) starting at ``offset``."""

    vad: StreamingVad
    samples: np.ndarray
    offset: int
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[VadResult] | None = None
    queued: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class BatcherStats:
    batches: int = 0  # rounds of run_jobs
    jobs: int = 0
    windows: int = 0
    calls: int = 0  # session.run calls (one per step of a batch)
    busy: float = 0.0  # seconds in run_jobs


class VadBatcher:
    """Scores the VAD windows of every stream of one model and rate, in batches."""

    def __init__(self, *, linger: float = 0.004, workers: int = 2,
                 backlog: float = 0.05) -> None:
        self.linger = linger
        self.workers = workers
        self.backlog = backlog
        self.stats = BatcherStats()
        self._cv = threading.Condition()
        self._jobs: list[VadJob] = []
        self._threads: list[threading.Thread] = []
        self._pid = 0

    # -- the core ---------------------------------------------------------------------------
    def run_jobs(self, jobs: list[VadJob]) -> list[VadResult | Exception]:
        """Analyse ``jobs`` (at most one per stream) together; a result or an exception each."""
        t0 = time.perf_counter()
        results: list[VadResult | Exception] = [ValueError("not run")] * len(jobs)
        framed: list[tuple[int, np.ndarray, int]] = []  # (job index, windows, offset)
        for i, job in enumerate(jobs):
            try:
                windows, offset = job.vad.frame(job.samples, job.offset)
            except Exception as exc:
                results[i] = exc
                continue
            framed.append((i, windows, offset))
        models = [jobs[i].vad.model for i, _, _ in framed]
        batch = [w for _, w, _ in framed]
        try:
            probs: list[np.ndarray | Exception] = list(score_batch(models, batch))
            self.stats.calls += max((len(w) for w in batch), default=0)
        except Exception:  # find the culprit: score one by one (states are untouched)
            probs = []
            for m, w in zip(models, batch, strict=True):
                try:
                    probs.append(m.score(w))
                except Exception as exc:
                    probs.append(exc)
                self.stats.calls += len(w)
        for (i, w, offset), p in zip(framed, probs, strict=True):
            if isinstance(p, Exception):
                results[i] = p
                continue
            try:
                results[i] = jobs[i].vad.consume(w, p, offset)
            except Exception as exc:
                results[i] = exc
            self.stats.windows += len(w)
        self.stats.batches += 1
        self.stats.jobs += len(jobs)
        self.stats.busy += time.perf_counter() - t0
        return results

    # -- the asyncio side -------------------------------------------------------------------
    def submit(self, vad: StreamingVad, samples: np.ndarray, offset: int
               ) -> asyncio.Future[VadResult]:
        """Queue a stream's audio; the future resolves on the running loop."""
        loop = asyncio.get_running_loop()
        job = VadJob(vad, samples, offset, loop, loop.create_future())
        with self._cv:
            self._jobs.append(job)
            if self._pid != os.getpid():  # first use, or a forked child: no threads yet
                self._pid, self._threads = os.getpid(), []
            self._threads = [t for t in self._threads if t.is_alive()]
            while len(self._threads) < self.workers:
                i = len(self._threads)  # the first worker batches; the others take backlogs
                t = threading.Thread(target=self._work, daemon=True, name=f"earshot-vad-{i}",
                                     args=(self.linger if i == 0 else self.backlog,))
                t.start()
                self._threads.append(t)
            if len(self._jobs) == 1:  # was empty: wake the workers (they time their waits)
                self._cv.notify_all()
        assert job.future is not None
        return job.future

    def _work(self, linger: float) -> None:
        while True:
            self._round(self._take(linger))  # no reference to a job outlives its round

    def _take(self, linger: float) -> list[VadJob]:
        with self._cv:
            while True:
                if self._jobs:
                    wait = self._jobs[0].queued + linger - time.monotonic()
                    if wait <= 0:
                        break
                    self._cv.wait(wait)
                else:
                    self._cv.wait()
            jobs: list[Any] = []
            later: list[Any] = []
            seen: set[int] = set()
            for job in self._jobs:  # one job per stream per round: they are sequential
                (later if id(job.vad) in seen else jobs).append(job)
                seen.add(id(job.vad))
            self._jobs = later
            return jobs

    def _round(self, jobs: list[VadJob]) -> None:
        try:
            results: list[VadResult | Exception] = self.run_jobs(jobs)
        except Exception as exc:  # pragma: no cover - run_jobs catches per job
            results = [exc] * len(jobs)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[VadJob, VadResult | Exception]]] = (
            defaultdict(list))
        for job, res in zip(jobs, results, strict=True):
            if job.loop is not None:
                by_loop[job.loop].append((job, res))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these
                loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[VadJob, VadResult | Exception]]) -> None:
    for job, res in items:
        fut = job.future
        if fut is None or fut.done():
            continue
        if isinstance(res, BaseException):
            fut.set_exception(res)
        else:
            fut.set_result(res)


_BATCHERS: dict[tuple[int, int], VadBatcher] = {}
_BATCHERS_LOCK = threading.Lock()


def batcher_for(model: SileroModel) -> VadBatcher:
    """The process-wide batcher of ``model``'s session and rate."""
    key = (model.session_id, model.rate)
    with _BATCHERS_LOCK:
        b = _BATCHERS.get(key)
        if b is None:
            b = _BATCHERS[key] = VadBatcher()
        return b
