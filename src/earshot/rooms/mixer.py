"""The room's mixer: per 20 ms tick, one mix-minus per seat. Pure: frames in, mixes out,
time passed in (seconds, any origin, non-decreasing), no I/O, no clock, no threads.

Input
    :meth:`Mixer.push` takes a seat's audio as it arrives: its stream offset (in frames at
    the seat's own rate, as acknowledged by the ingest) and the samples (float32 or int16,
    mono or ``(frames, channels)``; channels are averaged). The audio is cut into frames of
    one tick (960 samples at 48 kHz) on a grid of room-rate positions
    ``offset * room_rate / seat_rate``, and each frame goes into the seat's own
    :class:`earshot.client.jitter.JitterBuffer` (the one the listeners use). A seat's pushes come
    in offset order (as over one connection): audio sent again (a resume resending what was
    not acknowledged yet) is trimmed to what is new; a jump forward of up to ``max_delay``
    is filled with silence (what fills it later is ignored as sent again), a longer one
    restarts the seat's timeline.

Resampling
    Seats of another rate than the room's are resampled with a streaming soxr resampler per
    seat. Quality trades against latency (measured with 20 ms chunks into 48 kHz, speech
    error against soxr's offline VHQ): ``QQ`` (the default, cubic) holds back 0.1 ms from
    16 kHz and 0.25 ms from 8 kHz, error -30 and -35 dB; ``LQ`` holds back 11 and 33 ms on
    average for the same error; ``MQ`` 21 and 53 ms for -65 and -73 dB. A live call wants
    ``QQ``; the call recording (:mod:`earshot.rooms.recording`) resamples at ``HQ``
    offline. Resampled audio is placed as many samples later as the resampler holds back
    after its first chunk (5 at 48 kHz from 16 kHz with QQ: 0.1 ms), so that a frame is
    complete, and mixed, as soon as its input has arrived.

Jitter
    Each seat's jitter buffer absorbs network jitter, adapts between ``min_delay`` and
    ``max_delay`` and paces the seat out one frame per tick. A frame enters it stamped with
    the time of the first tick that can mix it rather than its arrival, so jitter that does
    not push a frame past its tick costs no cushion: the wait for the tick absorbs it.
    Simulated (benchmarks/bench_mixer.py: arrival phases 1-19 ms before a tick, against the
    same jitter buffer fed on arrival), a frame's median wait in the mixer is 9 ms without
    jitter and 12-16 ms with 2-10 ms of it (24-28 ms fed on arrival; neither conceals
    anything); with 0-30 ms of jitter 24 ms, concealing 0.5 % of the frames (34 ms, none).
    Before a frame enters the buffer it is dropped as *stale* if it lies further behind
    the seat's live edge (the least transit ``arrival - position / rate`` seen, allowed to
    creep up 200 ppm for clock drift) than ``max_delay`` while the seat plays, or than
    ``initial_delay`` plus a tick while it waits to start again after a stall: so the
    backlog that a resumed connection sends is neither played late nor taken for jitter.

Ticks
    :meth:`Mixer.tick` produces every tick due by ``now``: tick ``k`` is due at
    ``origin + k * tick`` and covers the room-clock block ``[k * tick, (k + 1) * tick)``.
    Each seat's jitter buffer gives one frame per tick, whatever the others do, so a seat
    whose audio is late never delays the others' mix. A seat that has nothing due (its
    frame is late or lost, it stalled, it has not started, it is muted) contributes
    silence; going from audio to silence it contributes a 2.5 ms fade-out (its last frame's
    tail mirrored, so the waveform is continuous, times a linear ramp to zero), and coming
    back (or after its buffer skipped frames) its first frame fades in over 2.5 ms. Audio
    that arrives after its frame was consumed is counted late and dropped; after a stall
    (a dropped connection) the seat restarts at the live edge: what was missed is never
    replayed late. When the caller falls more than ``max_catch_up`` ticks behind, the
    oldest due ticks are consumed without being mixed (counted in :attr:`Mixer.skipped`).

The mix (exactly)
    A seat's *contribution* to a tick is its frame as received (resampled if needed;
    the fades above apart), else zeros. The mix-minus of seat ``s`` is the sum, in float64,
    of every other seat's contribution, rounded once to float32; ``Tick.full`` is the sum of
    all of them. Then, with ``knee`` set (0.75 by default, ``None`` for no limiter), each
    sample goes through the soft limiter :func:`limit`: unchanged where ``|x| <= knee``,
    else ``sign(x) * (knee + (1 - knee) * tanh((|x| - knee) / (1 - knee)))`` (continuous,
    slope 1 at the knee, monotonic, never beyond full scale). There is no other gain: each
    participant is heard at the level they sent. So below the knee the live mix is the
    exact sum of the others (the tests check it sample by sample).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from earshot.client.jitter import JitterBuffer, JitterError, JitterStats
from earshot.rooms.errors import RoomError, integer

__all__ = ["Mixer", "SeatStats", "SeatStatus", "Tick", "limit"]

SeatStatus = Literal["audio", "concealed", "waiting", "muted"]
QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")
MAX_SEAT_RATE = 384000
MAX_CHANNELS = 8
DRIFT = 200e-6  # how fast (s/s) the live-edge estimate creeps up: twice a poor crystal's


def limit(x: np.ndarray, knee: float = 0.75) -> np.ndarray:
    """The soft limiter (see the module docstring): identity up to ``knee``, then a tanh
    curve that approaches full scale; float32 in, float32 out."""
    x = np.asarray(x, dtype=np.float32)
    a = np.abs(x)
    over = a > knee
    if not over.any():
        return x.copy()
    y = x.copy()
    head = 1.0 - knee
    y[over] = np.sign(x[over]) * (knee + head * np.tanh((a[over] - knee) / head))
    return y


@dataclass(frozen=True, slots=True)
class Tick:
    """One tick's output.

    ``index`` and ``t``: the tick number and its room-clock time (seconds). ``mixes``: per
    seat, what that seat hears (everyone else), float32, one tick long. ``full``: everyone
    (for room listeners and monitors). ``status``: per seat, what it contributed.
    ``positions``: per seat, the stream frame (at the seat's rate) its contribution starts
    at, ``None`` when it contributed no audio.
    """

    index: int
    t: float
    mixes: Mapping[str, np.ndarray]
    full: np.ndarray
    status: Mapping[str, SeatStatus]
    positions: Mapping[str, int | None]


@dataclass(frozen=True, slots=True)
class SeatStats:
    """One seat's counters. ``jitter``: its jitter buffer's (frames are ticks)."""

    rate: int
    frames_in: int  # seat-rate frames accepted
    repeated_frames: int  # seat-rate frames received again (a resume) and ignored
    gaps: int  # jumps forward in offsets (filled with silence or restarting the timeline)
    restarts: int  # of those, the ones that restarted the timeline
    stale_frames: int  # ticks of audio dropped before the jitter buffer: far behind live
    jitter: JitterStats


class _Seat:
    def __init__(self, name: str, rate: int, channels: int, room_rate: int, tick: int,
                 buffer: JitterBuffer, quality: str) -> None:
        self.name, self.rate, self.channels = name, rate, channels
        self.room_rate, self.tick = room_rate, tick
        self.jb = buffer
        self.quality = quality
        self.resampler: Any = None
        self.next_in: int | None = None  # seat-rate offset expected next
        self.start_pos = 0  # room-rate position where the current timeline starts
        self.shift = 0  # room-rate samples the audio is placed later (resampler's hold)
        self.pending: np.ndarray | None = None  # room-rate samples of the unfinished frame
        self.pending_at = 0  # room-rate position of pending[0] (a multiple of tick)
        self.muted = False
        self.last: np.ndarray | None = None  # the last frame contributed as audio
        self.frames_in = self.repeated = self.gaps = self.restarts = self.stale = 0
        # The live edge: the least transit (arrival time - position / rate) seen, creeping
        # up by DRIFT per second so that it follows a sender whose clock runs slow.
        self.min_transit: float | None = None
        self.transit_at = 0.0
        self.has_played = False

    def room_pos(self, offset: int) -> int:
        return offset * self.room_rate // self.rate

    def seat_pos(self, pos: int) -> int:
        return (pos - self.shift) * self.rate // self.room_rate


class Mixer:
    """Mix-minus for every seat of one room; see the module docstring."""

    def __init__(
        self,
        *,
        origin: float,
        rate: int = 48000,
        tick_ms: int = 20,
        max_seats: int = 8,
        min_delay: float = 0.0,
        initial_delay: float = 0.04,
        max_delay: float = 0.2,
        fade_ms: float = 2.5,
        knee: float | None = 0.75,
        max_catch_up: int = 5,
        quality: str = "QQ",
    ) -> None:
        self.rate = integer("rate", rate, minimum=1)
        tick_ms = integer("tick_ms", tick_ms, minimum=1)
        if (self.rate * tick_ms) % 1000:
            raise RoomError("bad_audio", f"a {tick_ms} ms tick is not a whole number of "
                            f"samples at {self.rate} Hz")
        self.tick_frames = self.rate * tick_ms // 1000
        self.tick_seconds = tick_ms / 1000
        self.max_seats = integer("max_seats", max_seats, minimum=1)
        self.max_catch_up = integer("max_catch_up", max_catch_up, minimum=1)
        if knee is not None and not 0.0 < float(knee) < 1.0:
            raise RoomError("bad_audio", f"knee must be in (0, 1) or None, got {knee!r}")
        self.knee = None if knee is None else float(knee)
        fade = float(fade_ms)
        if not 0.0 <= fade <= tick_ms:
            raise RoomError("bad_audio", f"fade_ms must be 0..{tick_ms}, got {fade_ms!r}")
        self.fade_frames = round(fade * self.rate / 1000)
        if quality not in QUALITIES:
            raise RoomError("bad_audio", f"quality must be one of {QUALITIES}")
        self.quality = quality
        self._min_delay, self._max_delay = float(min_delay), float(max_delay)
        self._initial_delay = float(initial_delay)
        try:  # check the settings once, with the message the jitter buffer gives
            self._new_buffer()
        except JitterError as exc:
            raise RoomError("bad_audio", str(exc)) from None
        self.max_delay_frames = math.ceil(float(max_delay) * self.rate)
        self.origin = _time(origin)
        self._now = self.origin
        self._next = 0  # index of the next tick
        self._seats: dict[str, _Seat] = {}
        self.skipped = 0  # ticks consumed without being mixed (the caller fell behind)
        ramp = (np.arange(self.fade_frames, dtype=np.float32) + 0.5) / max(1, self.fade_frames)
        self._fade_in = ramp
        self._fade_out = ramp[::-1].copy()

    # -- seats -------------------------------------------------------------------------------

    @property
    def seats(self) -> tuple[str, ...]:
        return tuple(self._seats)

    def add_seat(self, seat: str, rate: int, channels: int = 1) -> None:
        """Give ``seat`` a place in the mix (it hears the others from the next tick on)."""
        if seat in self._seats:
            raise RoomError("name_taken", f"seat {seat!r} is already in the mix")
        if len(self._seats) >= self.max_seats:
            raise RoomError("room_full", f"the mix holds at most {self.max_seats} seats")
        rate = integer("rate", rate, minimum=1)
        if rate > MAX_SEAT_RATE:
            raise RoomError("bad_audio", f"rate {rate} Hz is above {MAX_SEAT_RATE}")
        channels = integer("channels", channels, minimum=1)
        if channels > MAX_CHANNELS:
            raise RoomError("bad_audio", f"at most {MAX_CHANNELS} channels, got {channels}")
        jb = self._new_buffer()
        self._seats[seat] = _Seat(seat, rate, channels, self.rate, self.tick_frames, jb,
                                  self.quality)

    def _new_buffer(self) -> JitterBuffer:
        return JitterBuffer(self.rate, self.tick_frames, min_delay=self._min_delay,
                            max_delay=self._max_delay, initial_delay=self._initial_delay)

    def remove_seat(self, seat: str) -> None:
        """Take ``seat`` out of the mix (from the next tick on)."""
        self._get(seat)
        del self._seats[seat]

    def set_muted(self, seat: str, muted: bool) -> None:
        """A muted seat's audio is still consumed on time but contributes silence."""
        self._get(seat).muted = bool(muted)

    def stats(self, seat: str) -> SeatStats:
        s = self._get(seat)
        return SeatStats(s.rate, s.frames_in, s.repeated, s.gaps, s.restarts, s.stale,
                         s.jb.stats)

    # -- input -------------------------------------------------------------------------------

    def push(self, seat: str, offset: int, samples: np.ndarray, now: float) -> None:
        """Audio of ``seat`` from its stream frame ``offset``, arriving at ``now``."""
        s = self._get(seat)
        now = self._advance(now)
        try:
            offset = operator.index(offset)
        except TypeError:
            raise RoomError("bad_audio", f"offset must be an integer, got {offset!r}") from None
        if offset < 0:
            raise RoomError("bad_audio", f"negative offset {offset}")
        x = _mono(samples, s.channels)
        n = len(x)
        if n == 0:
            return
        if s.next_in is not None and offset < s.next_in:  # already had (part of) it
            seen = min(n, s.next_in - offset)
            s.repeated += seen
            x, offset = x[seen:], offset + seen
            if len(x) == 0:
                return
        if s.next_in is None:
            self._restart(s, offset)
        elif offset > s.next_in:
            s.gaps += 1
            gap = offset - s.next_in
            if s.room_pos(gap) <= self.max_delay_frames:
                self._feed(s, np.zeros(gap, np.float32), now)  # a short hole: silence
            else:
                s.restarts += 1
                self._flush(s, now)
                self._restart(s, offset)
        s.frames_in += len(x)
        s.next_in = offset + len(x)
        self._feed(s, x, now)

    def _restart(self, s: _Seat, offset: int) -> None:
        """Start the seat's timeline at ``offset`` (the first push, or after a long jump)."""
        s.start_pos = s.room_pos(offset)
        s.pending = None
        s.resampler = None
        if s.rate != self.rate:
            import soxr

            s.resampler = soxr.ResampleStream(s.rate, self.rate, 1, dtype="float32",
                                              quality=s.quality)

    def _feed(self, s: _Seat, x: np.ndarray, now: float) -> None:
        if s.resampler is not None:
            x = s.resampler.resample_chunk(x)
        if s.pending is None:
            # The first output of a timeline. The resampler holds back a few samples for
            # its interpolation (``delay()``: 5 at 16 kHz with QQ); placing the audio that
            # much later (0.1 ms) lets a frame be complete as soon as its input is.
            s.shift = round(s.resampler.delay()) if s.resampler is not None else 0
            p = s.start_pos + s.shift
            s.pending_at = p - p % self.tick_frames
            s.pending = np.zeros(p - s.pending_at, np.float32)  # the frame's head: silence
        self._frames(s, x, now)

    def _flush(self, s: _Seat, now: float) -> None:
        """The end of a timeline: the resampler's tail, then the last frame padded."""
        if s.pending is None:
            return
        if s.resampler is not None:
            self._frames(s, s.resampler.resample_chunk(np.zeros(0, np.float32), last=True), now)
        if len(s.pending):
            pad = self.tick_frames - len(s.pending)
            self._frames(s, np.zeros(pad, np.float32), now)

    def _frames(self, s: _Seat, y: np.ndarray, now: float) -> None:
        assert s.pending is not None
        if len(y):
            s.pending = np.concatenate([s.pending, y.astype(np.float32, copy=False)])
        t = self.tick_frames
        done = len(s.pending) // t
        # Stamped with the tick that will first see them: jitter that does not move a frame
        # to a later tick costs no cushion (the wait for the tick absorbs it).
        ticks = math.ceil((now - self.origin) / self.tick_seconds - 1e-9)
        stamp = max(now, self.origin + ticks * self.tick_seconds)
        for i in range(done):
            if not self._stale(s, s.pending_at, now):
                s.jb.push(s.pending_at, t, s.pending[i * t:(i + 1) * t].copy(), stamp)
            s.pending_at += t
        if done:
            s.pending = s.pending[done * t:].copy()

    def _stale(self, s: _Seat, pos: int, now: float) -> bool:
        """True for a frame too far behind the seat's live edge to be worth playing: more
        than ``max_delay`` while the seat plays, more than ``initial_delay`` plus a tick
        while it waits to start again after a stall (so the backlog a resumed connection
        sends is not played late, and does not pass for jitter either)."""
        transit = now - pos / self.rate
        if s.min_transit is None:
            s.min_transit, s.transit_at = transit, now
            return False
        edge = s.min_transit + DRIFT * (now - s.transit_at)
        if transit < edge:
            s.min_transit, s.transit_at, edge = transit, now, transit
        if s.jb.started or not s.has_played:
            allowance = self._max_delay
        else:
            allowance = self._initial_delay + self.tick_seconds
        if transit - edge > allowance + 1e-9:
            s.stale += 1
            return True
        return False

    # -- output ------------------------------------------------------------------------------

    def next_due(self) -> float:
        """When the next tick is due (``now`` seconds): the caller's timer target."""
        return self.origin + self._next * self.tick_seconds

    def tick(self, now: float) -> list[Tick]:
        """Every tick due by ``now``, oldest first (at most ``max_catch_up``)."""
        now = self._advance(now)
        due = math.floor((now - self.origin) / self.tick_seconds + 1e-9) + 1
        out: list[Tick] = []
        while self._next < due:
            if due - self._next > self.max_catch_up:
                for s in self._seats.values():  # consumed on time, not mixed
                    s.jb.pop(now)
                    s.last = None
                self.skipped += 1
            else:
                out.append(self._mix(self._next, now))
            self._next += 1
        return out

    def _mix(self, index: int, now: float) -> Tick:
        t = self.tick_frames
        names = list(self._seats)
        contrib = np.zeros((len(names), t), np.float64)
        status: dict[str, SeatStatus] = {}
        positions: dict[str, int | None] = {}
        for i, name in enumerate(names):
            s = self._seats[name]
            play = s.jb.pop(now)
            positions[name] = None
            if play.kind == "audio":
                s.has_played = True
            if play.kind == "audio" and not s.muted:
                frame = play.payload
                assert isinstance(frame, np.ndarray)
                if s.last is None or play.skipped:
                    frame = frame.copy()
                    frame[:self.fade_frames] *= self._fade_in
                contrib[i] = frame
                s.last = frame
                status[name] = "audio"
                assert play.media_offset is not None
                positions[name] = s.seat_pos(play.media_offset)
                continue
            if s.last is not None and self.fade_frames:  # a continuous fade to silence
                tail = s.last[-self.fade_frames:][::-1]
                contrib[i, :self.fade_frames] = tail * self._fade_out
            s.last = None
            if s.muted:
                status[name] = "muted"
            else:
                status[name] = "concealed" if play.kind == "concealed" else "waiting"
        total = contrib.sum(axis=0) if names else np.zeros(t, np.float64)
        mixes: dict[str, np.ndarray] = {}
        for i, name in enumerate(names):
            others = np.delete(contrib, i, axis=0).sum(axis=0) if len(names) > 1 else None
            y = np.zeros(t, np.float32) if others is None else others.astype(np.float32)
            mixes[name] = self._limit(y)
        return Tick(index, index * self.tick_seconds, mixes,
                    self._limit(total.astype(np.float32)), status, positions)

    def _limit(self, y: np.ndarray) -> np.ndarray:
        return y if self.knee is None else limit(y, self.knee)

    # -- helpers -----------------------------------------------------------------------------

    def _get(self, seat: str) -> _Seat:
        try:
            return self._seats[seat]
        except KeyError:
            raise RoomError("not_in_room", f"no seat {seat!r} in the mix") from None

    def _advance(self, now: float) -> float:
        now = _time(now)
        if now < self._now - 1e-9:
            raise RoomError("bad_time", f"time went backwards: {now} after {self._now}")
        self._now = max(now, self._now)
        return now


def _mono(samples: np.ndarray, channels: int) -> np.ndarray:
    a = np.asarray(samples)
    if a.dtype == np.int16:
        a = a.astype(np.float32) / 32768.0
    elif a.dtype in (np.float32, np.float64):
        a = a.astype(np.float32, copy=False)
    else:
        raise RoomError("bad_audio", f"samples must be float32 or int16, got {a.dtype}")
    if a.ndim == 1 and channels > 1:
        if len(a) % channels:
            raise RoomError("bad_audio", f"{len(a)} interleaved samples are not a whole "
                            f"number of {channels}-channel frames")
        a = a.reshape(-1, channels)
    if a.ndim == 2:
        if a.shape[1] != channels:
            raise RoomError("bad_audio", f"samples have {a.shape[1]} channels; the seat "
                            f"has {channels}")
        a = a[:, 0] if channels == 1 else a.mean(axis=1, dtype=np.float32)
    elif a.ndim != 1:
        raise RoomError("bad_audio", f"samples must be 1-D or (frames, channels), got "
                        f"shape {a.shape}")
    if not np.isfinite(a).all():
        raise RoomError("bad_audio", "samples hold NaN or infinite values")
    return np.ascontiguousarray(a, dtype=np.float32)



def _time(now: float) -> float:
    try:
        t = float(now)
    except (TypeError, ValueError):
        raise RoomError("bad_time", f"time must be a number of seconds, got {now!r}") from None
    if not math.isfinite(t):
        raise RoomError("bad_time", f"time must be finite, got {now!r}")
    return t
