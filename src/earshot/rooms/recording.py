"""The call recording and the transcript by speaker: pure functions over the participants'
archives and finals, aligned on the room clock.

A :class:`Track` is one participant's stretch of a call: their stream's archive from
frame ``offset`` (the stream's frame when they joined) plays at room time ``joined_at``,
for ``frames`` frames (until they left; ``None``: as far as the archive goes). The audio
comes as an array (``samples``) or from a reader callback ``read(start, count)`` that
returns up to ``count`` frames from stream frame ``start`` (fewer at the end of the
archive), so a long call is mixed block by block without holding it in memory
(:func:`iter_call`).

The mix (exactly)
    Track ``i`` starts at room frame ``round(joined_at * rate)``; its frames are the
    archive's from ``offset`` on, resampled to the room rate with soxr (``HQ``, streaming,
    delay-compensated) when the stream has another rate, channels averaged. The mix is the
    float64 sum of every track at each room frame, rounded once to float32; silence where
    nobody had joined yet. Without a limiter (``knee=None``, the default) the recording is
    therefore the aligned sum of the archives: written as 16-bit PCM it equals the sum of
    the 16-bit archives within 1 LSB (the tests check it), as long as the sum stays inside
    full scale; with ``knee`` the live mixer's soft limiter
    (:func:`earshot.rooms.mixer.limit`) is applied to the sum. ``tracks=True`` gives one
    channel per participant instead (the order of :func:`participants`: first joined
    first), a participant's stretches summed into their channel.

The transcript by speaker
    :func:`call_transcript` maps each participant's finals (earshot's final shape:
    ``segment``, ``start``, ``end``, ``text``, ``words``; times in seconds of their own
    stream) to the room clock through the track that holds them, names the speaker, and
    interleaves everyone's by start time. A final is kept if it overlaps the stretch its
    stream was in the call (its start is clamped to the join); the others (said before
    joining, or after leaving) are left out. The result renders with
    :mod:`earshot.asr.export`'s JSON, SRT, WebVTT and text renderers, which name the
    speaker of a final that has one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from earshot.rooms.errors import RoomError
from earshot.rooms.mixer import limit

__all__ = ["Track", "call_frames", "call_transcript", "iter_call", "mix_call", "participants"]

Reader = Callable[[int, int], np.ndarray]
BLOCK_SECONDS = 1.0
_READ = 1 << 15  # input frames read at once from a track


@dataclass(frozen=True, slots=True)
class Track:
    """One participant's stretch of a call (see the module docstring)."""

    participant: str
    rate: int
    joined_at: float
    offset: int = 0
    frames: int | None = None
    samples: np.ndarray | None = None
    read: Reader | None = None
    stream: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rate, int) or self.rate <= 0:
            raise RoomError("bad_stream", f"{self.participant}: rate must be a positive "
                            f"integer, got {self.rate!r}")
        if not math.isfinite(self.joined_at) or self.joined_at < 0:
            raise RoomError("bad_time", f"{self.participant}: joined_at must be a finite "
                            f"room time >= 0, got {self.joined_at!r}")
        if self.offset < 0 or (self.frames is not None and self.frames < 0):
            raise RoomError("bad_stream", f"{self.participant}: offset and frames must be "
                            ">= 0")
        if (self.samples is None) == (self.read is None):
            raise RoomError("bad_stream", f"{self.participant}: give samples or read, "
                            "one of them")

    def available(self) -> int:
        """Frames of the stretch: ``frames``, or what the array holds past ``offset``."""
        if self.samples is not None:
            have = max(0, len(self.samples) - self.offset)
            return have if self.frames is None else min(have, self.frames)
        if self.frames is None:
            raise RoomError("bad_stream", f"{self.participant}: a track read through a "
                            "callback needs its frames")
        return self.frames

    def room_start(self, rate: int) -> int:
        return round(self.joined_at * rate)

    def room_frames(self, rate: int) -> int:
        return self.available() * rate // self.rate

    def _read(self, start: int, count: int) -> np.ndarray:
        """Mono float32 frames ``start .. start + count`` of the stretch (0 = ``offset``)."""
        count = max(0, min(count, self.available() - start))
        if count == 0:
            return np.zeros(0, np.float32)
        if self.samples is not None:
            raw = self.samples[self.offset + start:self.offset + start + count]
        else:
            assert self.read is not None
            raw = self.read(self.offset + start, count)
        return _mono(np.asarray(raw), self.participant)[:count]


def participants(tracks: Sequence[Track]) -> list[str]:
    """Participants in the order they first joined (the channel order of ``tracks=True``)."""
    order: dict[str, float] = {}
    for t in sorted(tracks, key=lambda t: t.joined_at):
        order.setdefault(t.participant, t.joined_at)
    return list(order)


def call_frames(tracks: Sequence[Track], rate: int = 48000) -> int:
    """The call's length in room frames: until the last track ends."""
    return max((t.room_start(rate) + t.room_frames(rate) for t in tracks), default=0)


class _Source:
    """A track's room-rate frames, taken in order from a room frame on."""

    def __init__(self, track: Track, rate: int, skip: int) -> None:
        self.track, self.rate = track, rate
        self.length = track.room_frames(rate)
        self.pos = min(skip, self.length)  # room-rate frames of the track given out so far
        self.buf = np.zeros(0, np.float32)
        self.resampler: Any = None
        self.next_in = self.pos * track.rate // rate if track.rate != rate else self.pos
        self.done = False
        if track.rate != rate:
            import soxr

            self.resampler = soxr.ResampleStream(track.rate, rate, 1, dtype="float32",
                                                 quality="HQ")

    def take(self, n: int) -> np.ndarray:
        n = max(0, min(n, self.length - self.pos))
        if self.resampler is None:
            out = self.track._read(self.next_in, n)
            self.next_in += len(out)
        else:
            while len(self.buf) < n and not self.done:
                x = self.track._read(self.next_in, _READ)
                self.next_in += len(x)
                last = len(x) < _READ
                y = self.resampler.resample_chunk(x, last=last)
                self.buf = np.concatenate([self.buf, y.astype(np.float32, copy=False)])
                self.done = last
            out, self.buf = self.buf[:n], self.buf[n:]
        if len(out) < n:  # an archive shorter than announced: silence
            out = np.concatenate([out, np.zeros(n - len(out), np.float32)])
        self.pos += n
        return out


def iter_call(tracks: Sequence[Track], rate: int = 48000, *, tracks_mode: bool = False,
              knee: float | None = None, start: float = 0.0, end: float | None = None,
              block: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """The call from room time ``start`` to ``end`` (default: its end), in blocks of
    ``block`` seconds: float32, ``(n,)``, or ``(n, participants)`` with ``tracks_mode``."""
    if not isinstance(rate, int) or rate <= 0:
        raise RoomError("bad_audio", f"rate must be a positive integer, got {rate!r}")
    if knee is not None and not 0.0 < knee < 1.0:
        raise RoomError("bad_audio", f"knee must be in (0, 1) or None, got {knee!r}")
    for name, value in (("start", start), ("block", block)):
        if not math.isfinite(value) or value < 0 or (name == "block" and value == 0):
            raise RoomError("bad_time", f"{name} must be a finite number of seconds >= 0")
    total = call_frames(tracks, rate)
    first = min(round(start * rate), total)
    last = total if end is None else max(first, min(total, round(_finite(end) * rate)))
    names = participants(tracks)
    chan = {n: i for i, n in enumerate(names)}
    step = max(1, round(block * rate))
    sources: dict[int, _Source] = {}
    pos = first
    while pos < last:
        n = min(step, last - pos)
        acc = np.zeros((n, len(names)) if tracks_mode else n, np.float64)
        for i, t in enumerate(tracks):
            t0 = t.room_start(rate)
            t1 = t0 + t.room_frames(rate)
            lo, hi = max(pos, t0), min(pos + n, t1)
            if lo >= hi:
                continue
            src = sources.get(i)
            if src is None:
                src = sources[i] = _Source(t, rate, lo - t0)
            part = src.take(hi - lo)
            if tracks_mode:
                acc[lo - pos:hi - pos, chan[t.participant]] += part
            else:
                acc[lo - pos:hi - pos] += part
        out = acc.astype(np.float32)
        yield out if knee is None else limit(out, knee)
        pos += n


def mix_call(tracks: Sequence[Track], rate: int = 48000, *, tracks_mode: bool = False,
             knee: float | None = None, start: float = 0.0,
             end: float | None = None) -> np.ndarray:
    """The whole call (or ``start``..``end``) at once; see :func:`iter_call`."""
    blocks = list(iter_call(tracks, rate, tracks_mode=tracks_mode, knee=knee, start=start,
                            end=end, block=60.0))
    if blocks:
        return np.concatenate(blocks)
    width = len(participants(tracks))
    return np.zeros((0, width) if tracks_mode else 0, np.float32)


def call_transcript(tracks: Sequence[Track],
                    finals: Mapping[str, Iterable[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Everyone's finals on the room clock, the speaker named, interleaved by time.

    ``finals`` maps a stream id (``Track.stream``) to that stream's finals. Each result is
    ``{"segment", "start", "end", "text", "words", "speaker", "stream"}``, ``segment``
    numbering the call's finals from 0 in order."""
    order = {n: i for i, n in enumerate(participants(tracks))}
    out: list[tuple[float, float, int, dict[str, Any]]] = []
    for stream, items in finals.items():
        spans = [t for t in tracks if t.stream == stream]
        if not spans:
            raise RoomError("bad_stream", f"finals of stream {stream!r}, which no track holds")
        for f in items:
            try:
                s0, s1 = _finite(f["start"]), _finite(f["end"])
                text = str(f["text"])
            except (KeyError, TypeError, ValueError, RoomError):
                raise RoomError("bad_transcript", f"stream {stream!r}: a final needs finite "
                                f"start, end and a text, got {dict(f)!r}") from None
            for t in spans:
                lo = t.offset / t.rate
                hi = math.inf if t.frames is None else (t.offset + t.frames) / t.rate
                if s1 <= lo or s0 >= hi:
                    continue
                shift = t.joined_at - lo
                words = [_word(w, shift, t.joined_at) for w in f.get("words") or []]
                start = round(max(s0, lo) + shift, 6)
                end = round(max(s1 + shift, start), 6)
                item: dict[str, Any] = {"start": start, "end": end, "text": text,
                                        "words": words, "speaker": t.participant,
                                        "stream": stream}
                out.append((start, end, order[t.participant], item))
                break
    out.sort(key=lambda x: x[:3])
    return [{"segment": i, **item} for i, (_, _, _, item) in enumerate(out)]


def _word(w: Any, shift: float, floor: float) -> dict[str, Any]:
    if not isinstance(w, Mapping):
        raise RoomError("bad_transcript", f"a word must be an object, got {w!r}")
    d = dict(w)
    for k in ("start", "end"):
        if k in d:
            d[k] = round(max(floor, _finite(d[k]) + shift), 6)
    return d


def _mono(a: np.ndarray, who: str) -> np.ndarray:
    if a.dtype == np.int16:
        a = a.astype(np.float32) / 32768.0
    elif a.dtype in (np.float32, np.float64):
        a = a.astype(np.float32, copy=False)
    else:
        raise RoomError("bad_audio", f"{who}: samples must be float32 or int16, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, 0] if a.shape[1] == 1 else a.mean(axis=1, dtype=np.float32)
    elif a.ndim != 1:
        raise RoomError("bad_audio", f"{who}: samples must be 1-D or (frames, channels)")
    return a


def _finite(x: Any) -> float:
    v = float(x)
    if not math.isfinite(v):
        raise RoomError("bad_time", f"not a finite time: {x!r}")
    return v
