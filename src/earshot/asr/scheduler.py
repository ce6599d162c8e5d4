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
* **Speculative second passes** (two-pass engines declaring ``speculative = True``): a
  speculative request (the VAD saw silence begin; :meth:`UtterancePolicy.speculate`) hands
  the utterance's decoder the audio up to that end and has it decode the utterance whole
  (``speculate``) while the VAD waits to confirm the end. It ranks below finals and
  interims: taken only when neither waits and another worker stays idle (with one worker:
  when it is idle), one per stream (a newer one replaces it), never delivered to the stream.
  When the final of that utterance has the same audio (segment, start, end), it waits for
  the speculative decode if still running and uses it (a *hit*: the final only finishes
  the first pass, ``finish_with``);
  otherwise (speech resumed: a later end) the speculative result is discarded (a *miss*; its
  decode seconds are *wasted*). A final's ``JobResult`` says which, and the waste.
* The engine's native code may release the GIL; workers run beside the event loop.
"""

from __future__ import annotations

import dataclasses
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
    #: two-pass finals when speculation is on: True when the speculative second pass was
    #: used, False when not (None: speculation off); ``spec_misses`` speculative decodes of
    #: this utterance were thrown away, after ``spec_wasted`` seconds of decoding
    speculative: bool | None = None
    spec_misses: int = 0
    spec_wasted: float = 0.0


Done = Callable[[JobResult], None]


@dataclass(slots=True)
class _Job:
    stream: str
    request: DecodeRequest
    done: Done
    enqueued: float
    language: str | None = None
    spec: tuple[bool, int, float] | None = None  # finals: speculative hit, misses, wasted s
    holder: _Spec | None = None  # speculative jobs: their state


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
    speculative_decoded: int = 0  # speculative second passes run
    speculative_hits: int = 0  # finals that used one
    speculative_misses: int = 0  # speculative decodes thrown away (speech resumed)
    speculative_dropped: int = 0  # speculative requests never decoded (no spare worker)
    speculative_wasted: float = 0.0  # seconds spent on the misses


@dataclass(slots=True)
class _Spec:
    """A speculative second pass of one utterance."""

    job: _Job
    state: str = "queued"  # queued → running → done
    finished: threading.Event = field(default_factory=threading.Event)
    result: Transcription | None = None
    infer: float = 0.0
    #: "" (may be used), "replaced" (by a newer one: the final reports it), "orphan" (its
    #: final or stream has gone: counted in the stats only)
    fate: str = ""


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
        #: speculative second passes: the current one of each utterance, the queue (streams
        #: in order), each utterance's misses and wasted seconds so far
        self.speculates = self.two_pass and getattr(engine, "speculative", False) is True
        self._specs: dict[tuple[str, int], _Spec] = {}
        self._spec_queue: dict[str, _Spec] = {}
        self._spec_waste: dict[tuple[str, int], tuple[int, float]] = {}
        self._running = 0  # workers decoding now
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
        if request.speculative:
            self._submit_spec(job)
            return
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
            self._spec_queue.pop(stream, None)
            for key in [k for k in self._specs if k[0] == stream]:
                self._specs.pop(key).fate = "orphan"
            for key in [k for k in self._spec_waste if k[0] == stream]:
                del self._spec_waste[key]
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
            jobs = self._pick()
            if jobs is not None:
                self._running += 1
            return jobs

    def _pick(self) -> list[_Job] | None:
        """The next jobs to decode (under ``_cond``; None: closed)."""
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
            if self._spec_queue and (self.workers == 1 or self._running + 1 < self.workers):
                stream = next(iter(self._spec_queue))
                spec = self._spec_queue.pop(stream)
                spec.state = "running"
                return [spec.job]
            self._cond.wait()

    def _work(self) -> None:
        while (jobs := self._next()) is not None:
            try:
                if jobs[0].request.speculative:
                    self._run_spec(jobs[0])
                else:
                    self._run(jobs)
            finally:
                with self._cond:
                    self._running -= 1
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
            hit, misses, wasted = job.spec if job.spec is not None else (None, 0, 0.0)
            if job.request.final and self.speculates and hit is None:
                hit = False
            self._deliver(job, JobResult(job.stream, job.request, result, wait, infer,
                                         error, len(live), hit, misses, round(wasted, 4)))

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
        """The decoder of this request's utterance (None: a stale interim or speculation)."""
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
        second = self._claim_spec(job) if req.final and self.speculates else None
        s = self._session(job)
        if s is None:
            return None
        with s.lock:
            if s.closed:
                if req.final:  # finished by another request of the same utterance:
                    # not expected, but never lose a final
                    return second if second is not None else self._whole(job)
                return None
            try:
                if second is not None:  # the second pass is done: finish the first only
                    s.closed = True
                    decoder, s.decoder = s.decoder, None
                    if decoder is None:  # every interim was skipped: no first pass
                        return dataclasses.replace(second, first_text="", first_decode=0.0)
                    finish_with = getattr(decoder, "finish_with", None)
                    if callable(finish_with):
                        try:
                            return cast("Transcription", finish_with(second))
                        except Exception:  # the words are there: lose the first pass only
                            log.exception("finishing a first pass failed")
                            decoder.close()
                            return dataclasses.replace(second, first_text="",
                                                       first_decode=0.0)
                    decoder.close()
                    return second
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

    # -- speculative second passes -------------------------------------------------------------
    def _submit_spec(self, job: _Job) -> None:
        key = (job.stream, job.request.segment)
        with self._cond:
            if not self.speculates or self._closed \
                    or self._finalized.get(job.stream, -1) >= key[1]:
                return
            queued = self._spec_queue.pop(job.stream, None)  # one waits per stream
            if queued is not None:
                qkey = (job.stream, queued.job.request.segment)
                if self._specs.get(qkey) is queued:
                    del self._specs[qkey]
                queued.fate = "orphan"
                self.stats.speculative_dropped += 1
            old = self._specs.pop(key, None)
            if old is not None:
                self._discard(key, old, "replaced")
            spec = job.holder = _Spec(job)
            self._specs[key] = self._spec_queue[job.stream] = spec
            self._cond.notify()

    def _discard(self, key: tuple[str, int], spec: _Spec, fate: str) -> None:
        """``spec`` will not be used (under ``_cond``): a decoded one is a miss."""
        spec.fate = fate
        if spec.state == "queued":
            self.stats.speculative_dropped += 1
            if self._spec_queue.get(key[0]) is spec:
                del self._spec_queue[key[0]]
        elif spec.state == "done":
            self._waste(key, spec)
        # running: counted when it finishes (_run_spec)

    def _waste(self, key: tuple[str, int], spec: _Spec) -> None:
        misses, wasted = self._spec_waste.get(key, (0, 0.0))
        self._spec_waste[key] = (misses + 1, wasted + spec.infer)
        self.stats.speculative_misses += 1
        self.stats.speculative_wasted += spec.infer

    def _run_spec(self, job: _Job) -> None:
        key = (job.stream, job.request.segment)
        spec = job.holder
        assert spec is not None
        started = self.clock()
        result: Transcription | None = None
        try:
            result = self._speculate(job)
        except Exception:
            log.exception("speculative speech-to-text failed (the final decodes on its own)")
        infer = self.clock() - started
        with self._cond:
            spec.result, spec.infer, spec.state = result, infer, "done"
            self.stats.speculative_decoded += 1
            if spec.fate == "replaced" and self._finalized.get(key[0], -1) < key[1]:
                self._waste(key, spec)  # the final will report it
            elif spec.fate:  # its final (or stream) has gone: in the stats only
                self.stats.speculative_misses += 1
                self.stats.speculative_wasted += infer
        spec.finished.set()
        if self.observe is not None:
            try:
                self.observe(JobResult(job.stream, job.request, result, started - job.enqueued,
                                       infer), False)
            except Exception:
                log.exception("speech-to-text result callback failed")

    def _speculate(self, job: _Job) -> Transcription | None:
        """The speculative pass on the utterance's own decoder (None: its session ended)."""
        req = job.request
        s = self._session(job)
        if s is None:
            return None
        with s.lock:
            if s.closed:
                return None
            if s.decoder is None:
                s.decoder = cast("IncrementalEngine", self.engine).begin(language=job.language)
                s.fed = 0
            speculate = getattr(s.decoder, "speculate", None)
            if not callable(speculate):
                return None
            result = cast("Transcription", speculate(req.audio[s.fed:]))
            s.fed = max(s.fed, req.audio.size)
            return result

    def _claim_spec(self, job: _Job) -> Transcription | None:
        """For a final: the speculative second pass of its utterance if it decoded the same
        audio (waiting for it when it is still running), else None; either way the
        utterance's speculation ends here and its misses are recorded for the result."""
        req = job.request
        key = (job.stream, req.segment)
        with self._cond:
            spec = self._specs.pop(key, None)
            match = spec is not None and spec.job.request.start == req.start \
                and spec.job.request.end == req.end
            if spec is not None and (not match or spec.state == "queued"):
                self._discard(key, spec, "orphan")
                spec = None
        if spec is not None:
            spec.finished.wait()
        with self._cond:
            if spec is not None and spec.result is None:  # it failed
                spec = None
            if spec is not None:
                self.stats.speculative_hits += 1
            misses, wasted = self._spec_waste.pop(key, (0, 0.0))
        job.spec = (spec is not None, misses, wasted)
        return spec.result if spec is not None else None

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
