"""One speech-to-text model shared by every stream: worker threads, fair, finals first.

* Finals are decoded before any interim, in the order they were asked for.
* Interims are taken round-robin across streams, so one talkative stream cannot starve the
  others, and each stream has at most one waiting interim: a newer one replaces it, and one
  whose utterance already has its final is skipped, not decoded (it would arrive stale).
* **Incremental engines** (``incremental = True``, e.g. PocketSphinx) keep one open
  decoder per utterance being spoken: every request of an utterance feeds only the audio the
  decoder has not seen yet, an interim reads the partial hypothesis, the final finishes the
  decoder. A two-pass engine's final hands the decoder the audio not yet fed without
  decoding it (``append``): its second pass decodes the whole utterance anyway, so a final
  whose interims were skipped under load costs one decode, not two. Decoding work is then
  proportional to the audio, never to the utterance length times the number of interims, so
  interims cannot pile up in front of finals.
* **Batching engines** (``max_batch`` > 1, e.g. faster-whisper) get up to ``max_batch``
  waiting finals of different streams in one ``transcribe_batch`` call (or, when no final
  waits, up to ``max_batch`` interims, round-robin). A worker that finds one final waits
  ``batch_window`` seconds at most for others to join it. Results are delivered in the
  order the jobs were taken, each to its own stream.
* The engine's native code may release the GIL; workers run beside the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from earshot.asr.engine import batch_size, is_incremental, is_two_pass
from earshot.asr.policy import DecodeRequest

if TYPE_CHECKING:
    from earshot.asr.engine import Engine, IncrementalEngine, Transcription, UtteranceDecoder

log = logging.getLogger("earshot.asr")


@dataclass(frozen=True, slots=True)
class JobResult:
    stream: str
    request: DecodeRequest
    transcription: Transcription | None  # None: skipped as stale, or the engine failed
    wait: float  # seconds in the queue
    infer: float  # seconds of decoding (of the whole batch it was part of)
    error: str | None = None
    batch: int = 1  # jobs decoded in the same engine call


Done = Callable[[JobResult], None]


@dataclass(slots=True)
class _Job:
    stream: str
    request: DecodeRequest
    done: Done
    enqueued: float
    language: str | None = None


@dataclass
class SchedulerStats:
    decoded_finals: int = 0
    decoded_interims: int = 0
    skipped_interims: int = 0
    failures: int = 0
    batches: int = 0  # engine calls
    batched_jobs: int = 0  # jobs decoded in calls of more than one
    largest_batch: int = 0
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    infers: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1000))


@dataclass(slots=True)
class _Session:
    """A stream's open utterance on an incremental engine."""

    segment: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    decoder: UtteranceDecoder | None = None
    fed: int = 0  # frames of the utterance fed so far
    closed: bool = False


class AsrScheduler:
    def __init__(self, engine: Engine, *, workers: int = 1,
                 clock: Callable[[], float] = time.monotonic,
                 observe: Callable[[JobResult, bool], None] | None = None,
                 batch: bool | int = True, batch_window: float = 0.03) -> None:
        """``observe(result, skipped)`` is called for every job (e.g. to record metrics).
        ``batch=False`` (or 1) decodes one job per engine call even when the engine batches;
        a number above 1 caps the batch size."""
        self.engine = engine
        self.clock = clock
        self.observe = observe
        self.stats = SchedulerStats()
        self.incremental = is_incremental(engine)
        self.two_pass = is_two_pass(engine)  # finals decoded again whole
        off = batch is False or (not isinstance(batch, bool) and batch <= 1)
        self.max_batch = 1 if off or self.incremental else batch_size(engine)
        if not isinstance(batch, bool) and batch > 1:
            self.max_batch = min(self.max_batch, batch)
        self.batch_window = batch_window
        self._cond = threading.Condition()
        self._finals: deque[_Job] = deque()
        self._busy: dict[str, int] = {}  # stream → its finals being decoded now
        self._interims: dict[str, _Job] = {}
        self._turns: deque[str] = deque()  # streams with a waiting interim, in turn order
        self._finalized: dict[str, int] = {}  # stream → highest segment with a final asked
        self._sessions: dict[tuple[str, int], _Session] = {}  # (stream, segment) → decoder
        self._closed = False
        self.workers = max(1, workers)
        self._threads = [threading.Thread(target=self._work, name=f"earshot-asr-{i}",
                                          daemon=True) for i in range(max(1, workers))]
        for t in self._threads:
            t.start()

    def submit(self, stream: str, request: DecodeRequest, done: Done, *,
               language: str | None = None) -> None:
        """Queue ``request``; ``done(result)`` is called on a worker thread. ``language``
        (for engines that take one per call) overrides the engine's configured one."""
        job = _Job(stream, request, done, self.clock(), language)
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

    def warm(self) -> None:
        """A stream with speech-to-text began: let the engine get ready (``warm()``, an
        optional engine method that must not block, e.g. starting decoder processes)."""
        warm = getattr(self.engine, "warm", None)
        if callable(warm):
            try:
                warm()
            except Exception:
                log.exception("warming the speech-to-text engine failed")

    def forget(self, stream: str) -> None:
        """The stream is gone: drop its waiting interim, open decoder and bookkeeping."""
        with self._cond:
            job = self._interims.pop(stream, None)
            self._finalized.pop(stream, None)
            sessions = [self._sessions.pop(k) for k in list(self._sessions) if k[0] == stream]
        if job is not None:
            self._skip(job)
        for session in sessions:
            self._close_session(session)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            sessions = list(self._sessions.values())
            self._sessions.clear()
            self._cond.notify_all()
        for s in sessions:
            self._close_session(s)
        for t in self._threads:
            t.join(timeout=5)
        close = getattr(self.engine, "close", None)
        if callable(close):  # e.g. the pocketsphinx engine's decoder processes
            try:
                close()
            except Exception:
                log.exception("closing the speech-to-text engine failed")

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._finals) + len(self._interims)

    def _take_interims(self, n: int) -> list[_Job]:
        jobs: list[_Job] = []
        while self._turns and len(jobs) < n:
            stream = self._turns.popleft()
            job = self._interims.pop(stream, None)
            if job is not None:
                jobs.append(job)
        return jobs

    def _ready(self) -> int:
        """Waiting finals that may be decoded now: a stream's finals are decoded one after
        another (with several workers, a long utterance's final must not be overtaken by
        the next one's), so those of a stream with a final being decoded wait."""
        return sum(1 for j in self._finals if not self._busy.get(j.stream))

    def _take_finals(self, n: int) -> list[_Job]:
        out: list[_Job] = []
        keep: deque[_Job] = deque()
        while self._finals:
            job = self._finals.popleft()
            if len(out) < n and not self._busy.get(job.stream):
                out.append(job)
            else:
                keep.append(job)
        self._finals = keep
        for job in out:
            self._busy[job.stream] = self._busy.get(job.stream, 0) + 1
        return out

    def _release(self, jobs: list[_Job]) -> None:
        with self._cond:
            for job in jobs:
                if job.request.final:
                    left = self._busy.get(job.stream, 0) - 1
                    if left > 0:
                        self._busy[job.stream] = left
                    else:
                        self._busy.pop(job.stream, None)
            self._cond.notify_all()

    def _next(self) -> list[_Job] | None:
        with self._cond:
            while True:
                if self._ready():
                    if self.max_batch > 1 and self._ready() < self.max_batch \
                            and self.batch_window > 0:
                        deadline = self.clock() + self.batch_window
                        while self._ready() < self.max_batch and not self._closed:
                            left = deadline - self.clock()
                            if left <= 0:
                                break
                            self._cond.wait(left)
                        if not self._ready():
                            continue  # another worker took them
                    return self._take_finals(self.max_batch)
                jobs = self._take_interims(self.max_batch)
                if jobs:
                    return jobs
                if self._closed:
                    return None
                self._cond.wait()

    def _work(self) -> None:
        while (jobs := self._next()) is not None:
            try:
                self._run(jobs)
            finally:
                self._release(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        live: list[_Job] = []
        for job in jobs:
            req = job.request
            if not req.final and self._finalized.get(job.stream, -1) >= req.segment:
                self._skip(job)
            else:
                live.append(job)
        if not live:
            return
        started = self.clock()
        results: list[Transcription | None]
        try:
            results = self._decode(live)
            errors: list[str | None] = [None] * len(live)
        except Exception as exc:  # one bad decode must not kill the worker
            log.exception("speech-to-text failed")
            results = [None] * len(live)
            errors = [f"{type(exc).__name__}: {exc}"] * len(live)
            self.stats.failures += len(live)
        finished = self.clock()
        infer = finished - started
        self.stats.batches += 1
        self.stats.batch_sizes.append(len(live))
        self.stats.largest_batch = max(self.stats.largest_batch, len(live))
        if len(live) > 1:
            self.stats.batched_jobs += len(live)
        for job, result, error in zip(live, results, errors, strict=True):
            wait = started - job.enqueued
            self.stats.waits.append(wait)
            self.stats.infers.append(infer)
            if job.request.final:
                self.stats.decoded_finals += 1
            else:
                self.stats.decoded_interims += 1
            self._deliver(job, JobResult(job.stream, job.request, result, wait, infer,
                                         error, len(live)))

    def _decode(self, jobs: list[_Job]) -> list[Transcription | None]:
        if self.incremental:
            return [self._decode_incremental(job) for job in jobs]
        engine: Any = self.engine
        if len(jobs) == 1:
            job = jobs[0]
            if job.language is None:
                return [engine.transcribe(job.request.audio, final=job.request.final)]
            return [engine.transcribe(job.request.audio, final=job.request.final,
                                      language=job.language)]
        final = jobs[0].request.final
        out = engine.transcribe_batch([j.request.audio for j in jobs], final=final,
                                      languages=[j.language for j in jobs])
        if len(out) != len(jobs):
            raise RuntimeError(f"the engine returned {len(out)} results for {len(jobs)} audios")
        return list(out)

    # -- incremental engines ----------------------------------------------------------------
    def _session(self, job: _Job) -> _Session | None:
        """The decoder of this request's utterance (None: a stale interim)."""
        key = (job.stream, job.request.segment)
        with self._cond:
            s = self._sessions.get(key)
            if s is None:
                if not job.request.final and self._finalized.get(job.stream, -1) >= key[1]:
                    return None
                s = self._sessions[key] = _Session(key[1])
        return s

    def _decode_incremental(self, job: _Job) -> Transcription | None:
        req = job.request
        s = self._session(job)
        if s is None:
            return None
        with s.lock:
            if s.closed:
                if req.final:  # finished by another request of the same utterance:
                    return self._whole(job)  # not expected, but never lose a final
                return None
            try:
                if s.decoder is None:
                    s.decoder = cast("IncrementalEngine", self.engine).begin(language=job.language)
                    s.fed = 0
                if req.audio.size > s.fed:
                    rest = req.audio[s.fed:]
                    append = getattr(s.decoder, "append", None)
                    if req.final and self.two_pass and callable(append):
                        append(rest)  # the second pass decodes it; the first need not
                    else:
                        s.decoder.feed(rest)
                    s.fed = req.audio.size
                if not req.final:
                    return s.decoder.partial()
                s.closed = True
                decoder, s.decoder = s.decoder, None
                result = decoder.finish()
            except Exception:
                s.closed = True
                if s.decoder is not None:
                    s.decoder.close()
                    s.decoder = None
                raise
            finally:
                if s.closed:
                    with self._cond:
                        if self._sessions.get((job.stream, req.segment)) is s:
                            del self._sessions[(job.stream, req.segment)]
        return result

    def _whole(self, job: _Job) -> Transcription:
        utt = cast("IncrementalEngine", self.engine).begin(language=job.language)
        try:
            utt.feed(job.request.audio)
        except BaseException:
            utt.close()
            raise
        result: Transcription = utt.finish()
        return result

    @staticmethod
    def _close_session(s: _Session) -> None:
        with s.lock:
            s.closed = True
            if s.decoder is not None:
                try:
                    s.decoder.close()
                except Exception:
                    log.exception("closing a speech-to-text decoder failed")
                s.decoder = None

    # -- results ------------------------------------------------------------------------------
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
