"""Adaptive jitter buffer for listeners of a live audio relay: pure, no I/O, no clock.

Time never comes from a clock: every call takes ``now`` (seconds, any origin, non-decreasing),
so the buffer is deterministic and can be driven by a simulation as easily as by a real
audio callback. Payloads are opaque (PCM arrays, Opus packets): the buffer never decodes.

Packets
    A packet is ``(offset, frames, payload)``: ``offset`` is its first sample frame in the
    stream (at the stream rate), ``frames`` its length. Packets must be exactly ``frame``
    samples long (the playout frame, e.g. 20 ms) and lie on one grid: every offset is congruent
    to the first packet's offset modulo ``frame``. This is the simplest robust contract (a
    packet is one playout unit, so there is no partial consumption, no overlap to resolve);
    breaking it raises :class:`JitterError`. Senders that packetise differently must re-frame
    before pushing.

Two timelines
    ``Playout.offset`` is the playout position: once playback has started it advances by
    exactly ``frame`` on every :meth:`JitterBuffer.pop`, whatever happens, so the output is
    continuous. ``Playout.media_offset`` is the stream frame that pop consumed. It normally
    advances by one frame too, except when the buffer time-scales to adapt its delay:

    * stretch: the due frame is missing and the delay is below target (or nothing at all is
      buffered). The pop returns ``"concealed"`` with ``media_offset=None`` and the stream
      position does *not* advance, so the frame can still play if it arrives: delay grows by
      one frame.
    * accelerate: stream frames are discarded without being played (``Playout.skipped``):
      delay shrinks by that much.

Adaptation (NetEq's ideas, simplified; ``T`` = one frame, quantities in whole frames)
    1. Every arrival records its relative transit ``r = now - offset / rate`` (the unknown
       clock offset between sender and listener cancels out). Over arrivals of the last
       ``history`` seconds, ``jitter = p95(r) - min(r)`` (nearest rank) and
       ``target_delay = clamp(jitter, min_delay, max_delay)``. For the first ``history``
       seconds after the first arrival (and after a stall or a discontinuity) the target is
       at least ``initial_delay``: the estimate has no data yet. ``tgt = ceil(target / T)``.
    2. Playback starts once the buffered span reaches ``tgt + 1`` frames, at the live edge (the
       frame ``tgt + 1`` frames before the newest packet's end); older packets are skipped.
    3. On each pop, with ``span`` = frames from the play position to the newest packet's end
       (gaps and the due frame included; ``max = ceil(max_delay / T)``):

       * ``span > max + 1``: overflow; jump to the live edge;
       * ``span >= tgt + 2`` and the due frame is missing: skip missing frames (free, no
         audio is dropped) as long as ``span`` stays ``>= tgt + 1``;
       * ``span >= tgt + 2`` and at least ``accelerate_every`` pops since the last such skip:
         accelerate, i.e. skip the due frame;
       * then: due frame present: ``"audio"``. Missing, later packets present and the cushion
         behind it ``>= tgt``: the frame is lost, ``"concealed"``, and the position advances
         (if the packet turns up later it is *late*). Otherwise (nothing buffered, or below
         target): stretch. More than ``max`` consecutive stretches mean the stream stalled:
         the buffer forgets its jitter history, returns ``"waiting"`` and pre-buffers again
         as in step 2.

       A missing stretch of more than ``max`` frames before the first buffered packet is a
       discontinuity (the sender jumped ahead), not a loss: the position jumps over it and the
       jitter history is forgotten. Packets beyond such a gap do not count in ``span``.

    Why this is safe: the cushion left after a pop never exceeds the real slack between a
    packet's arrival and its playout (the newest packet bounds it), so skipping only when
    ``span >= tgt + 2`` never brings the slack below ``target_delay``. Delay adapts DOWN after
    a burst as soon as the burst has left the history window, by one frame per
    ``accelerate_every`` pops (1.25x by default). It adapts UP on the first miss after the
    target rose, or on an underrun (one frame per stretched pop); late arrivals enter the
    history, so when such delays are common (at least 5 % of packets) the target rises and
    keeps the added delay, while rare spikes are skipped back out. After an outage in which
    packets were lost rather than delayed, the stretch is given back by the free skip. Slow
    clock drift between sender and listener is absorbed the same way.

Accounting
    Every stream frame from the start is consumed exactly once: played (``"audio"``),
    concealed as lost, or skipped. Every distinct packet received is either played, skipped,
    still buffered, or late (it arrived after its frame was consumed). Duplicates (of buffered
    packets, or of the last few seconds of consumed ones) are ignored and counted.

Limitations
    Not thread-safe: serialise ``push`` and ``pop`` (e.g. one lock) if they run on different
    threads. Offsets must not go backwards within a stream: when the source restarts its
    offsets call :meth:`JitterBuffer.reset` (otherwise its packets count as duplicates or
    late until a stall). A stream shorter than the pre-buffer never starts. Time-scaling is
    by whole frames (skip or stretch 20 ms), not by WSOLA-style sample-level stretching;
    the caller can cross-fade using ``Playout.skipped`` and the concealed kinds.
"""

from __future__ import annotations

import math
import operator
from collections import deque
from dataclasses import dataclass
from typing import Literal, SupportsIndex

from earshot.errors import EarshotError

__all__ = ["JitterBuffer", "JitterError", "JitterStats", "Playout"]

Kind = Literal["audio", "concealed", "waiting"]

_QUANTILE = 0.95
_EPS = 1e-9


class JitterError(EarshotError):
    """Invalid jitter-buffer settings, or a packet that breaks the packetisation contract."""


@dataclass(frozen=True, slots=True)
class Playout:
    """What to play for one frame.

    ``offset``: playout position, advancing by exactly ``frames`` per pop once playback has
    started (0 before the first start). ``payload``: the packet's payload for ``"audio"``, else
    ``None`` (``"concealed"``: do PLC/FEC or play silence; ``"waiting"``: play silence).
    ``media_offset``: the stream frame this pop consumed (the played or the lost frame);
    ``None`` when no stream frame was consumed (waiting, or a stretch). ``skipped``: stream
    frames discarded just before this one to reduce delay (a hint for cross-fading).
    """

    offset: int
    frames: int
    payload: object | None
    kind: Kind
    media_offset: int | None = None
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class JitterStats:
    """Counters and delays. ``concealed_frames = lost_frames + held_frames``."""

    delay: float  # seconds of media buffered from the play position to the newest packet's end
    target_delay: float  # seconds, as of the last pop
    received: int  # distinct packets that arrived (late ones included)
    late: int  # packets dropped because their frame had already been consumed
    duplicates: int  # ignored repeats
    concealed_frames: int  # pops of kind "concealed"
    concealed_ms: float
    accelerated_frames: int  # stream frames skipped to reduce delay
    loss_rate: float  # lost_frames / (played_frames + lost_frames)
    played_frames: int
    lost_frames: int  # frames concealed because their packet was missing (lost or late)
    held_frames: int  # stretched pops (underruns), each adding one frame of delay
    buffered_packets: int


def _index(name: str, value: object) -> int:
    try:
        if not isinstance(value, SupportsIndex):  # float, str, None...
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise JitterError(f"{name} must be an integer, got {value!r}") from None


def _seconds(name: str, value: float, *, positive: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise JitterError(f"{name} must be a finite {kind} number of seconds, got {value!r}")
    return value


def _time(now: float) -> float:
    now = float(now)
    if not math.isfinite(now):
        raise JitterError(f"now must be a finite number of seconds, got {now!r}")
    return now


class JitterBuffer:
    """Reorders packets, absorbs network jitter and paces them out one ``frame`` per pop.

    See the module docstring for the contract and the adaptation algorithm.
    """

    def __init__(
        self,
        rate: int,
        frame: int,
        *,
        min_delay: float = 0.02,
        max_delay: float = 1.0,
        initial_delay: float = 0.06,
        history: float = 2.0,
        accelerate_every: int = 4,
    ) -> None:
        self._rate = _index("rate", rate)
        self._frame = _index("frame", frame)
        if self._rate <= 0 or self._frame <= 0:
            raise JitterError(f"rate and frame must be positive, got {rate!r} and {frame!r}")
        self._min = _seconds("min_delay", min_delay)
        self._max = _seconds("max_delay", max_delay)
        if self._min > self._max:
            raise JitterError(f"min_delay {min_delay} exceeds max_delay {max_delay}")
        self._initial = _seconds("initial_delay", initial_delay)
        self._history = _seconds("history", history, positive=True)
        self._accel_every = _index("accelerate_every", accelerate_every)
        if self._accel_every < 1:
            raise JitterError(f"accelerate_every must be >= 1, got {accelerate_every!r}")

        self._max_frames = self._frames_for(self._max)
        self._buf: dict[int, object] = {}  # offset -> payload, all offsets >= _pos once set
        self._grid: int | None = None  # offset % frame shared by every packet
        self._pos: int | None = None  # next stream frame to consume (None before first start)
        self._out: int | None = None  # next playout offset (None before first start)
        self._running = False
        self._holds = 0  # consecutive stretched pops
        self._since_skip = self._accel_every
        self._arrivals: deque[tuple[float, float]] = deque()  # (arrival time, relative transit)
        self._epoch: float | None = None  # first arrival since start/stall/discontinuity/reset
        self._target = min(max(self._initial, self._min), self._max)
        # Offsets below _pos that were received, to tell duplicates from late packets.
        self._seen: set[int] = set()
        self._seen_order: deque[int] = deque()
        self._seen_limit = max(256, 2 * self._frames_for(self._history + self._max))

        self._received = 0
        self._late = 0
        self._duplicates = 0
        self._played = 0
        self._lost = 0
        self._held = 0
        self._accelerated = 0

    # -- input -----------------------------------------------------------------------------

    def push(self, offset: int, frames: int, payload: object, now: float) -> None:
        """Accept one packet arriving at ``now``, in any order; duplicates and late ones are
        counted and dropped. Raises :class:`JitterError` if ``frames != frame``, the offset is
        negative or off the packet grid."""
        offset = _index("offset", offset)
        frames = _index("frames", frames)
        now = _time(now)
        if frames != self._frame:
            raise JitterError(f"packet has {frames} frames; this buffer needs exactly "
                              f"{self._frame} per packet")
        if offset < 0:
            raise JitterError(f"negative packet offset {offset}")
        if self._grid is None:
            self._grid = offset % self._frame
        elif offset % self._frame != self._grid:
            raise JitterError(f"packet offset {offset} is off the packet grid "
                              f"(offsets must be {self._grid} mod {self._frame})")
        if offset in self._buf or offset in self._seen:
            self._duplicates += 1
            return
        self._received += 1
        self._arrivals.append((now, now - offset / self._rate))
        if self._epoch is None:
            self._epoch = now
        self._prune(now)
        if self._pos is not None and offset < self._pos:
            self._late += 1
            self._remember(offset)
            return
        self._buf[offset] = payload

    # -- output ----------------------------------------------------------------------------

    def pop(self, now: float) -> Playout:
        """The next ``frame`` of playout at ``now``; call once per frame of playout clock."""
        now = _time(now)
        self._update_target(now)
        tgt = self._frames_for(self._target)
        frame = self._frame
        skipped = 0
        if not self._running:
            start = self._ready(tgt)
            if start is None:
                return self._advance_waiting(0)
            if self._pos is not None:  # after a stall: the gap up to the earliest packet
                skipped = self._jump(min(self._buf), count=False)  # is not an acceleration
            skipped += self._jump(start)
            self._running = True
            self._holds = 0
            self._since_skip = 0
            if self._out is None:
                self._out = start
        elif self._buf:
            assert self._pos is not None
            pos = self._pos
            gap = (min(self._buf) - pos) // frame  # missing frames before the first buffered
            if gap > self._max_frames:  # the stream jumped ahead: a discontinuity, not a loss
                self._forget_history()
                self._update_target(now)
                tgt = self._frames_for(self._target)
                skipped = self._jump(pos + gap * frame, count=False)
                gap = 0
            end = self._segment_end()
            span = (end - self._pos) // frame
            if span > self._max_frames + 1:  # overflow: back to the live edge
                skipped += self._jump(end - (tgt + 1) * frame)
                self._since_skip = 0
            elif gap and span >= tgt + 2:  # surplus and frames missing: skip those, for free
                skipped += self._jump(pos + min(gap, span - tgt - 1) * frame)
            elif span >= tgt + 2 and self._since_skip >= self._accel_every:  # accelerate
                skipped += self._jump(pos + frame)
                self._since_skip = 0
        self._since_skip += 1

        cur, out = self._pos, self._out
        assert cur is not None and out is not None
        pos = cur
        if pos in self._buf:
            payload = self._buf.pop(pos)
            self._remember(pos)
            self._pos = pos + frame
            self._out = out + frame
            self._holds = 0
            self._played += 1
            return Playout(out, frame, payload, "audio", pos, skipped)
        if self._buf and (self._segment_end() - pos) // frame > tgt:
            # Later packets are here and the cushion behind this frame is at least the target:
            # the frame is lost (or hopelessly late). Conceal it and move on.
            self._pos = pos + frame
            self._out = out + frame
            self._holds = 0
            self._lost += 1
            return Playout(out, frame, None, "concealed", pos, skipped)
        # Underrun (nothing buffered) or a missing frame while below target: stretch, i.e.
        # conceal without consuming, so the delay grows by one frame and the frame may still
        # arrive in time.
        self._holds += 1
        if self._holds > self._max_frames:  # stalled: stop concealing, pre-buffer again
            self._running = False
            self._holds = 0
            self._forget_history()
            return self._advance_waiting(skipped)
        self._out = out + frame
        self._held += 1
        return Playout(out, frame, None, "concealed", None, skipped)

    def drain(self) -> list[Playout]:
        """The end of the stream: every buffered frame at once, in order, without waiting
        for the clock or a target delay (no stretch, no acceleration). Frames missing between
        buffered packets come as ``"concealed"`` (lost). The buffer is empty afterwards."""
        outs: list[Playout] = []
        if not self._buf:
            return outs
        frame = self._frame
        pos = self._pos if self._running and self._pos is not None else min(self._buf)
        out = self._out if self._out is not None else pos
        end = max(self._buf) + frame
        while pos < end:
            if pos in self._buf:
                outs.append(Playout(out, frame, self._buf.pop(pos), "audio", pos))
                self._played += 1
            else:
                outs.append(Playout(out, frame, None, "concealed", pos))
                self._lost += 1
            self._remember(pos)
            pos += frame
            out += frame
        self._pos, self._out = pos, out
        self._running = False
        self._holds = 0
        return outs

    # -- state -----------------------------------------------------------------------------

    @property
    def stats(self) -> JitterStats:
        concealed = self._lost + self._held
        consumed = self._played + self._lost
        return JitterStats(
            delay=self._buffered_frames() / self._rate,
            target_delay=self._target,
            received=self._received,
            late=self._late,
            duplicates=self._duplicates,
            concealed_frames=concealed,
            concealed_ms=concealed * self._frame * 1000 / self._rate,
            accelerated_frames=self._accelerated,
            loss_rate=self._lost / consumed if consumed else 0.0,
            played_frames=self._played,
            lost_frames=self._lost,
            held_frames=self._held,
            buffered_packets=len(self._buf),
        )

    def reset(self) -> None:
        """Forget the stream (buffered packets, position, packet grid, jitter history) but
        keep the counters and the playout position. Call it when the source restarts its
        offsets (a new stream); the buffer then pre-buffers again."""
        self._buf.clear()
        self._grid = None
        self._pos = None
        self._running = False
        self._holds = 0
        self._seen.clear()
        self._seen_order.clear()
        self._forget_history()

    @property
    def started(self) -> bool:
        """True while playing (between the pre-buffer and a stall)."""
        return self._running

    # -- internals -------------------------------------------------------------------------

    def _frames_for(self, seconds: float) -> int:
        return max(0, math.ceil(seconds * self._rate / self._frame - _EPS))

    def _buffered_frames(self) -> int:
        if not self._buf:
            return 0
        base = self._pos if self._running and self._pos is not None else min(self._buf)
        return max(self._buf) + self._frame - base

    def _segment_end(self) -> int:
        """End of the buffered packets that precede the first gap longer than ``max_delay``
        (beyond such a gap lies a later part of the stream, reached by a discontinuity)."""
        keys = sorted(self._buf)
        limit = self._max_frames * self._frame
        end = keys[0] + self._frame
        for off in keys[1:]:
            if off - end > limit:
                break
            end = off + self._frame
        return end

    def _prune(self, now: float) -> None:
        horizon = now - self._history
        while self._arrivals and self._arrivals[0][0] < horizon:
            self._arrivals.popleft()

    def _update_target(self, now: float) -> None:
        self._prune(now)
        estimate = 0.0
        if self._arrivals:
            rels = sorted(r for _, r in self._arrivals)
            estimate = rels[max(0, math.ceil(_QUANTILE * len(rels)) - 1)] - rels[0]
        if self._epoch is None or now - self._epoch < self._history:
            estimate = max(estimate, self._initial)
        self._target = min(max(estimate, self._min), self._max)

    def _ready(self, tgt: int) -> int | None:
        """Where to (re)start playback, or None while pre-buffering."""
        if not self._buf:
            return None
        earliest, end = min(self._buf), max(self._buf) + self._frame
        need = (tgt + 1) * self._frame
        if end - earliest < need:
            return None
        return max(earliest, end - need)

    def _jump(self, new_pos: int, *, count: bool = True) -> int:
        """Move the play position forward to ``new_pos``, discarding what lies before it."""
        old = self._pos if self._pos is not None else min(self._buf)
        for off in [o for o in self._buf if o < new_pos]:
            del self._buf[off]
            self._remember(off)
        self._pos = new_pos
        n = (new_pos - old) // self._frame
        if count:
            self._accelerated += n
        return n

    def _forget_history(self) -> None:
        self._arrivals.clear()
        self._epoch = None

    def _remember(self, offset: int) -> None:
        if offset in self._seen:
            return
        self._seen.add(offset)
        self._seen_order.append(offset)
        if len(self._seen_order) > self._seen_limit:
            self._seen.discard(self._seen_order.popleft())

    def _advance_waiting(self, skipped: int) -> Playout:
        out = self._out
        if out is None:
            return Playout(0, self._frame, None, "waiting", None, skipped)
        self._out = out + self._frame
        return Playout(out, self._frame, None, "waiting", None, skipped)
