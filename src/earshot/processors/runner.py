"""Run a stream's processors: one resampler per needed rate, one bounded queue per processor.

:class:`StreamPipeline` is fed the stream's audio (float32, native rate) as it is archived.
It mixes down and resamples once per distinct (rate, mono) need with soxr's streaming
resampler, then hands each processor its chunks through its own :class:`ProcessorRunner`:

* batches — a runner takes everything queued and processes it in one go, off the event loop
  (or on it, for processors marked ``inline``), never one thread hop per 20 ms frame;
* lag — how far a processor is behind the audio fed, in seconds, reported in ``lag`` events;
  past ``max_lag`` it drops its oldest queued audio (for itself only) and reports it in a
  ``dropped`` event;
* failure — a processor that raises gets one ``error`` event and is stopped for this stream;
  the stream, its archive and the other processors go on;
* cleanup — processors named in ``filtered`` get the stream's filtered audio
  (earshot.dsp.cleanup, handed to :meth:`StreamPipeline.feed` as ``clean``, already stamped
  with stream time) through converters of their own; the others get the raw audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import soxr

from earshot.audio import to_mono
from earshot.processors.base import Chunk, Event, Processor, StreamInfo
from earshot.wire.codes import Code

log = logging.getLogger("earshot.processors.runner")
Publish = Callable[[list[Event]], None]

_default_executor: ThreadPoolExecutor | None = None


def default_executor() -> ThreadPoolExecutor:
    global _default_executor
    if _default_executor is None:
        _default_executor = ThreadPoolExecutor(thread_name_prefix="earshot-proc")
    return _default_executor


class Converter:
    """Mix-down and streaming resampling of one stream to one (rate, mono) variant."""

    def __init__(self, in_rate: int, out_rate: int, channels: int, mono: bool,
                 start_offset: int = 0) -> None:
        self.in_rate, self.out_rate, self.mono = in_rate, out_rate, mono
        self.offset = round(start_offset * out_rate / in_rate)
        self.nch = nch = 1 if mono else channels
        self._rs = None if in_rate == out_rate else soxr.ResampleStream(
            in_rate, out_rate, nch, dtype="float32", quality="HQ")

    def convert(self, samples: np.ndarray, last: bool = False) -> Chunk | None:
        """samples: float32 (frames, channels) at the stream's rate."""
        x = samples
        if self.mono:
            x = to_mono(x)
        if self._rs is not None:
            x = self._rs.resample_chunk(np.ascontiguousarray(x, dtype=np.float32), last=last)
        if not len(x):
            return None
        chunk = Chunk(x, self.offset, self.out_rate)
        self.offset += len(x)
        return chunk

    def tail(self) -> Chunk | None:
        """What the resampler still holds, at the end of the stream."""
        if self._rs is None:
            return None
        empty = np.zeros((0,) if self.nch == 1 else (0, self.nch), np.float32)
        x = self._rs.resample_chunk(empty, last=True)
        if not len(x):
            return None
        chunk = Chunk(x, self.offset, self.out_rate)
        self.offset += len(x)
        return chunk


class _FinalizeMark:
    """In a runner's queue: call the processor's ``finalize`` once the audio before it is
    processed (see :meth:`StreamPipeline.finalize`)."""


FINALIZE = _FinalizeMark()


@dataclass(slots=True)
class RunnerStats:
    processed: int = 0  # frames processed (processor rate)
    dropped: int = 0  # frames dropped for lag
    skipped: int = 0  # frames an on-demand processor passed over (nobody watching)
    busy: float = 0.0  # seconds spent in process()


class ProcessorRunner:
    """One processor on one stream: its own queue, batches, lag and drop accounting."""

    def __init__(self, proc: Processor, rate: int, publish: Publish, *, max_lag: float,
                 executor: Executor, lag_report: float = 1.0,
                 wanted: Callable[[], bool] | None = None) -> None:
        self.proc = proc
        #: an on-demand processor's audience: while it answers False, audio is skipped
        self.wanted = wanted
        self.name = proc.name
        self.rate = rate
        self.publish = publish
        self.max_lag_frames = int(max_lag * rate)
        self.lag_report_frames = lag_report * rate
        self.executor = executor
        self.stats = RunnerStats()
        self.failed = False
        self._queue: deque[Chunk | _FinalizeMark] = deque()
        self._queued = 0
        self._fed_end: int | None = None  # end offset of the audio handed to this runner
        self._done_end = 0  # end offset of the audio processed most recently
        self.safe_end = 0  # a fresh processor started here finds the same from then on
        self._drop_pending = 0
        self._last_lag_report = -1.0
        self._last_drop_report = -1.0
        self._lagging = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.task: asyncio.Task[None] | None = None
        self._aprocess = getattr(proc, "process_async", None)
        self._inline = proc.inline
        self._checkpoints = type(proc).checkpoint is not Processor.checkpoint
        loop = asyncio.get_running_loop()

        def sink(events: list[Event]) -> None:  # Processor.emit, from any thread
            if not self.failed and events:
                loop.call_soon_threadsafe(self.publish, self._stamp(events))

        proc.attach(sink)

    @property
    def lag(self) -> float:
        """How far behind the live edge this processor's latest results are, in seconds of
        audio (dropping a backlog does not hide it: results are still this late)."""
        if self._fed_end is None:
            return 0.0
        return max(0, self._fed_end - self._done_end) / self.rate

    def start(self) -> None:
        if not self._inline:
            self.task = asyncio.create_task(self._run(), name=f"earshot-proc-{self.name}")

    @property
    def resting(self) -> bool:
        """An on-demand processor nobody receives now, with nothing queued: its audio can
        be passed over (:meth:`pass_over`) without being converted for it."""
        wanted = self.wanted
        return wanted is not None and not self._queue and not self.failed and not wanted()

    def pass_over(self, offset: int, frames: int) -> None:
        """Audio this (:attr:`resting`) processor is not given: it only keeps time."""
        end = offset + frames
        try:
            self.proc.skip(offset, frames, self.rate)
        except Exception as exc:
            self._fail(exc, None)
            return
        self._fed_end = self._done_end = self.safe_end = end
        self.stats.skipped += frames

    def put(self, chunk: Chunk) -> None:
        if self.failed:
            return
        if self.resting:  # an on-demand processor nobody would receive now
            self.pass_over(chunk.offset, chunk.frames)
            return
        if self._fed_end is None:
            self._done_end = chunk.offset  # first chunk: nothing before it is owed
            self.safe_end = chunk.offset
        if self._inline:  # microseconds of work: do it now, no queue, no task switch
            end = chunk.offset + len(chunk.samples)
            self._fed_end = end
            try:
                produced = self.proc.process(chunk)
            except Exception as exc:
                self._fail(exc, chunk)
                return
            self.stats.processed += end - chunk.offset
            self._done_end = end
            if self._checkpoints:
                self._update_safe()
            else:  # (the base class's: nothing held beyond what was processed)
                self.safe_end = end
            if produced:
                self.publish(self._stamp(produced))
            return
        self._queue.append(chunk)
        self._idle.clear()
        self._queued += chunk.frames
        self._fed_end = chunk.end
        marks: list[_FinalizeMark] = []  # never dropped: each gets its answer
        while self._queued > self.max_lag_frames and len(self._queue) > 1:
            old = self._queue.popleft()
            if isinstance(old, _FinalizeMark):
                marks.append(old)
                continue
            self._queued -= old.frames
            self._drop_pending += old.frames
        self._queue.extendleft(reversed(marks))
        self._wake.set()
        reports = self._report(chunk, time.monotonic())
        if reports:
            self.publish(reports)

    def finalize(self) -> None:
        """Queue a finalize after the audio handed over so far (inline: call it now)."""
        if self.failed:
            return
        if self._inline:
            try:
                produced = self.proc.finalize()
            except Exception as exc:
                self._fail(exc, None)
                return
            if produced:
                self.publish(self._stamp(produced))
            return
        self._queue.append(FINALIZE)
        self._idle.clear()
        self._wake.set()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._inline and not self.failed:
            try:
                tail = self.proc.flush()
            except Exception as exc:
                self._fail(exc, None)
                return
            if tail:
                self.publish(self._stamp(tail))

    async def idle(self) -> None:
        """Wait until everything handed over so far is processed (or the processor failed)."""
        while not self._idle.is_set() and not self.failed and self.task and not self.task.done():
            await asyncio.wait({asyncio.ensure_future(self._idle.wait()), self.task},
                               return_when=asyncio.FIRST_COMPLETED)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.failed:
            if not self._queue:
                self._idle.set()
                if self._closing:
                    break
                self._wake.clear()
                await self._wake.wait()
                continue
            items = list(self._queue)
            self._queue.clear()
            self._queued = 0
            for batch in _runs(items):
                if batch is FINALIZE:
                    try:
                        produced = await loop.run_in_executor(self.executor, self._finalize)
                    except Exception as exc:
                        self._fail(exc, None)
                        return
                    if produced:
                        self.publish(produced)
                    continue
                assert isinstance(batch, list)
                try:
                    if self._aprocess is not None:
                        produced = await self._process_async(batch)
                    else:
                        produced = await loop.run_in_executor(self.executor, self._process,
                                                              batch)
                except Exception as exc:
                    self._fail(exc, batch[0])
                    return
                self._done_end = batch[-1].end
                self._update_safe()
                if produced:
                    self.publish(produced)
            if self.failed:
                return
        if self._drop_pending:
            self.publish(self._report_drops(self._done_end))
        if not self.failed:
            try:
                tail = await loop.run_in_executor(self.executor, self.proc.flush)
            except Exception as exc:
                self._fail(exc, None)
                return
            if tail:
                self.publish(self._stamp(tail))

    def _update_safe(self) -> None:
        """Called on the loop between batches (the processor is not running then)."""
        cp = self.proc.checkpoint()
        self.safe_end = self._done_end if cp is None else max(self.safe_end,
                                                               min(cp, self._done_end))

    def _finalize(self) -> list[Event]:
        return self._stamp(self.proc.finalize() or [])

    def _process(self, batch: list[Chunk]) -> list[Event]:
        t0 = time.perf_counter()
        out: list[Event] = []
        for chunk in _merge(batch):
            produced = self.proc.process(chunk)
            if produced:
                out.extend(produced)
            self.stats.processed += chunk.frames
        self.stats.busy += time.perf_counter() - t0
        return self._stamp(out)

    async def _process_async(self, batch: list[Chunk]) -> list[Event]:
        """For a processor with ``async def process_async(chunk)`` (the VAD, batched across
        streams by :mod:`earshot.processors.builtin.vad_batch`): awaited on the loop instead of a
        thread hop; queueing, lag, drops and checkpoints are the same."""
        t0 = time.perf_counter()
        out: list[Event] = []
        aprocess = self._aprocess
        assert aprocess is not None  # (set when the processor has process_async)
        for chunk in _merge(batch):
            produced = await aprocess(chunk)
            if produced:
                out.extend(produced)
            self.stats.processed += chunk.frames
        self.stats.busy += time.perf_counter() - t0  # wall time here, queueing included
        return self._stamp(out)

    def _stamp(self, events: Iterable[Event]) -> list[Event]:
        out = []
        for e in events:
            e.setdefault("processor", self.name)
            out.append(e)
        return out

    def _report(self, chunk: Chunk, now: float) -> list[Event]:
        """Lag and drop reports, made as audio is handed over (so a processor stuck in a
        long batch is still reported): at most once a second each, and once on catching up.
        """
        out: list[Event] = []
        if self._drop_pending and now - self._last_drop_report >= 1.0:
            self._last_drop_report = now
            out.extend(self._report_drops(chunk.offset))
        behind = self.lag * self.rate >= self.lag_report_frames
        if behind and now - self._last_lag_report >= 1.0:
            self._last_lag_report = now
            self._lagging = True
        elif not behind and self._lagging:
            self._lagging = False
        else:
            return out
        out.append({"type": "lag", "processor": self.name,
                    "t": round(self._done_end / self.rate, 6), "lag": round(self.lag, 3)})
        return out

    def _report_drops(self, at: int) -> list[Event]:
        n, self._drop_pending = self._drop_pending, 0
        self.stats.dropped += n
        return [{
            "type": "dropped", "processor": self.name, "t": round(at / self.rate, 6),
            "frames": n, "seconds": round(n / self.rate, 3),
            "total_seconds": round(self.stats.dropped / self.rate, 3),
            "message": f"{self.name} fell more than {self.max_lag_frames / self.rate:g} s "
                       f"behind; skipped {n / self.rate:.2f} s of audio for it only",
        }]

    def _fail(self, exc: BaseException, chunk: Chunk | None) -> None:
        self.failed = True
        self._queue.clear()
        self._idle.set()
        log.warning("processor %s failed", self.name, exc_info=exc)
        self.publish([{
            "type": "error", "code": Code.PROCESSOR_FAILED, "processor": self.name,
            "t": round((chunk.t if chunk else self._done_end / self.rate), 6),
            "message": f"{self.name} raised {type(exc).__name__}: {exc}; "
                       "it is stopped for this stream (the stream goes on)",
        }])


def _runs(items: list[Chunk | _FinalizeMark]) -> list[list[Chunk] | _FinalizeMark]:
    """A queue's items as runs of chunks between finalize marks, in order."""
    out: list[list[Chunk] | _FinalizeMark] = []
    for item in items:
        if isinstance(item, _FinalizeMark):
            out.append(item)
        elif out and isinstance(out[-1], list):
            out[-1].append(item)
        else:
            out.append([item])
    return out


def _merge(batch: list[Chunk]) -> list[Chunk]:
    """Join consecutive chunks into as few as possible (one, unless audio was dropped)."""
    runs: list[list[Chunk]] = [[batch[0]]]
    for c in batch[1:]:
        if c.offset == runs[-1][-1].end:
            runs[-1].append(c)
        else:
            runs.append([c])
    return [r[0] if len(r) == 1 else
            Chunk(np.concatenate([c.samples for c in r]), r[0].offset, r[0].rate) for r in runs]


@dataclass(frozen=True)
class Audience:
    """Who receives the events of a stream's :attr:`~Processor.on_demand` processors."""

    #: the processors the sender named in its ``start``: their events go to it (and to
    #: everyone), and they always run
    named: frozenset[str]
    #: whether anyone else receives the stream's events now (its subscribers)
    watched: Callable[[], bool]
    #: where the other on-demand processors' events go: to everyone but the sender
    observers: Publish


class StreamPipeline:
    """All processors of one stream."""

    def __init__(self, info: StreamInfo, processors: list[Processor], publish: Publish, *,
                 start_offset: int = 0, max_lag: float = 10.0, lag_report: float = 1.0,
                 executor: Executor | None = None, filtered: Collection[str] = (),
                 audience: Audience | None = None) -> None:
        self.info = info
        self.publish = publish
        self.offset = start_offset
        executor = executor or default_executor()
        self.converters: dict[tuple[int, bool, bool], Converter] = {}  # (rate, mono, clean)
        self.runners: list[tuple[tuple[int, bool, bool], ProcessorRunner]] = []
        for proc in processors:
            rate = proc.rate or info.rate
            key = (rate, proc.mono or info.channels == 1, proc.name in filtered)
            if audience is not None and proc.on_demand and proc.name not in audience.named:
                runner = ProcessorRunner(proc, rate, audience.observers, max_lag=max_lag,
                                         executor=executor, lag_report=lag_report,
                                         wanted=audience.watched)
            else:
                runner = ProcessorRunner(proc, rate, publish, max_lag=max_lag,
                                         executor=executor, lag_report=lag_report)
            try:
                proc.start(info)
            except Exception as exc:
                log.warning("processor %s failed to start", proc.name, exc_info=exc)
                publish([{"type": "error", "code": Code.PROCESSOR_FAILED, "processor": proc.name,
                          "t": round(start_offset / info.rate, 6),
                          "message": f"{proc.name} failed to start: {type(exc).__name__}: "
                                     f"{exc}; the stream goes on without it"}])
                continue
            if key not in self.converters:
                self.converters[key] = Converter(info.rate, rate, info.channels, key[1],
                                                 start_offset)
            self.runners.append((key, runner))
        for _, runner in self.runners:
            runner.start()
        self.filtered = any(key[2] for key, _ in self.runners)  # wants the filtered audio
        #: the last batch fed was passed over whole (the batch path then batches longer)
        self.rested = False
        #: every processor is on demand, unnamed, at the stream's rate, on its raw audio:
        #: while none is received, a batch is passed over whole (nothing converted)
        self._can_rest = bool(self.runners) and not self.filtered and all(
            r.wanted is not None and key[0] == info.rate for key, r in self.runners)

    def _resting(self) -> bool:
        return all(r.resting for _, r in self.runners)

    @property
    def names(self) -> list[str]:
        return [r.name for _, r in self.runners]

    def feed(self, samples: np.ndarray, offset: int,
             clean: tuple[np.ndarray, int] | None = None) -> None:
        """samples: float32 (frames, channels) at the stream's rate, starting at ``offset``;
        ``clean``: the filtered audio for the filtered processors, (samples, first frame)."""
        if offset != self.offset:
            raise ValueError(f"pipeline at frame {self.offset} was fed frame {offset}")
        frames = len(samples)
        self.offset += frames
        if self._can_rest and self._resting():  # nobody receives any of it
            for conv in self.converters.values():  # (same rate: no resampler state)
                conv.offset += frames
            for _, r in self.runners:
                r.pass_over(offset, frames)
            self.rested = True
            return
        self.rested = False
        self._dispatch({key: conv.convert(samples) for key, conv in self.converters.items()
                        if not key[2]})
        if clean is not None:
            self.feed_clean(*clean)

    def feed_clean(self, samples: np.ndarray, first: int) -> None:
        """Filtered audio (stamped with stream time) for the filtered processors."""
        if len(samples):
            self._dispatch({key: conv.convert(samples)
                            for key, conv in self.converters.items() if key[2]})

    def checkpoint(self) -> int:
        """The stream frame from which fresh processors would find the same events as
        these will from now on: everything before it may be forgotten (acknowledged on a
        log). Bounded by what each processor has processed and by what it still holds
        (:meth:`Processor.checkpoint`, e.g. the start of an utterance in progress)."""
        safe = self.offset
        for _, r in self.runners:
            if not r.failed and r._fed_end is not None:
                safe = min(safe, r.safe_end * self.info.rate // r.rate)
        return safe

    def finalize(self) -> bool:
        """End the utterance in progress now (:meth:`Processor.finalize`), in order with
        the audio fed so far. True when a processor will answer with a ``finalized``
        event; otherwise nobody will, and the caller says it itself."""
        answers = False
        for _, r in self.runners:
            if not r.failed:
                r.finalize()
                answers = answers or (r.proc.finalizes and not r.failed)
        return answers

    async def idle(self) -> None:
        """Wait until every processor has caught up with what was fed."""
        for _, r in self.runners:
            await r.idle()

    def _dispatch(self, chunks: dict[tuple[int, bool, bool], Chunk | None]) -> None:
        for key, runner in self.runners:
            chunk = chunks.get(key)
            if chunk is not None:
                runner.put(chunk)

    async def close(self, timeout: float | None = 10.0) -> list[str]:
        """Flush resamplers, let every processor finish and flush; returns the names of
        processors that did not finish within ``timeout`` (they are cancelled)."""
        tails = {key: conv.tail() for key, conv in self.converters.items()}
        self._dispatch(tails)
        for _, r in self.runners:
            r.close()
        tasks = [r.task for _, r in self.runners if r.task is not None]
        if not tasks:
            return []
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        late = []
        for _, r in self.runners:
            if r.task in pending:
                r.task.cancel()
                late.append(r.name)
        for t in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        return late
