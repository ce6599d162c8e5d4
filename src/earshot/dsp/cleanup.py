"""Voice cleanup: per-stream filters (gain, automatic gain control, noise suppression).

A pure core: float32 samples in, float32 samples out, no I/O. The server runs one
:class:`AlignedCleanup` per stream that asked for filters and gives its output to relay
listeners and to the chosen processors; the archive always stays what the client sent.

Filters (a spec is ``name`` or ``name:key=value,key=value``, or ``{"name": …, key: value}``):

* ``gain:db=D`` — a fixed gain of D dB (-60..+60), exact, no latency, no dependency.
* ``agc[:target=T,max_gain=G]`` — automatic gain control: brings the level (RMS of 10 ms
  blocks, ignoring blocks below -60 dBFS) towards T dBFS (default -20), by at most G dB up or
  down (default 30), following a rising level in about 50 ms and a falling one in about 2 s;
  peaks that would pass full scale are clipped. No latency, no dependency. (The AGC inside
  ``webrtc-noise-gain`` was measured to ignore its target: a fixed +8..11 dB whatever the
  setting, so it is not offered.)
* ``denoise[:level=L]`` — the WebRTC audio processing module's noise suppression through
  ``webrtc-noise-gain`` (``pip install 'earshot[cleanup]'``), level 1 (low) .. 4 (very high),
  default 2. It runs on 10 ms frames of 16 kHz mono int16 (all that the wheel offers; its
  high-pass filter is always on): other rates are resampled with soxr to 16 kHz and back,
  so their denoised audio holds nothing above 8 kHz; each channel gets its own suppressor.

Latency. :class:`FilterChain` gives back exactly as many frames as it is fed, delayed by a
fixed :attr:`FilterChain.latency` (frames at the stream rate): output frame ``i`` is the
filtered input frame ``i - latency`` (zeros before the first). It is the sum of its filters':
``gain`` and ``agc`` 0; ``denoise`` 10 ms of framing plus the suppressor's own 6 ms (96
samples at 16 kHz), plus, off 16 kHz, the resamplers' buffering (75 ms at 48 kHz,
233 ms at 8 kHz; probed once per rate pair). The output does not depend on how the input is chunked.
:class:`AlignedCleanup` removes the delay from the timestamps: it stamps the output with
the stream frame it belongs to (``offset - latency``), drops the leading zeros and yields the
last ``latency`` frames at the end (:meth:`AlignedCleanup.tail`), so filtered audio and the
events of processors fed with it keep stream time; the filtered audio only arrives
``latency`` frames later in wall-clock time.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from earshot.errors import ConfigError, MissingDependency, ProtocolError
from earshot.wire.codes import Code

__all__ = ["FILTERS", "AlignedCleanup", "FilterChain", "FilterError", "FilterSpec",
           "check_available", "parse_filters"]

APM_RATE = 16000  # the only rate webrtc-noise-gain processes
APM_FRAME = 160  # 10 ms at 16 kHz
DENOISE_DELAY = 96  # samples at 16 kHz the WebRTC suppressor delays its output (measured)
MAX_FILTERS = 8
INSTALL_HINT = "pip install 'earshot[cleanup]'"

# name -> {parameter: (type, low, high, default or None for required)}
FILTERS: dict[str, dict[str, tuple[type, float, float, float | None]]] = {
    "gain": {"db": (float, -60.0, 60.0, None)},
    "agc": {"target": (float, -60.0, -1.0, -20.0), "max_gain": (float, 0.0, 60.0, 30.0)},
    "denoise": {"level": (int, 1, 4, 2)},
}
NEEDS_WEBRTC = frozenset({"denoise"})


class FilterError(ConfigError):
    """A filter spec that cannot be used (unknown name, bad or missing parameter)."""


@dataclass(frozen=True, slots=True)
class FilterSpec:
    name: str
    params: Mapping[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v:g}" for k, v in self.params.items())


def _parse_one(item: str | Mapping[str, Any]) -> FilterSpec:
    if isinstance(item, str):
        name, _, rest = item.strip().partition(":")
        raw: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq:
                raise FilterError(f"filter {item!r}: expected key=value, got {part!r}")
            raw[key.strip()] = value.strip()
    elif isinstance(item, Mapping):
        raw = dict(item)
        name = raw.pop("name", None)
        if not isinstance(name, str):
            raise FilterError(f"filter {item!r} has no 'name'")
    else:
        raise FilterError(f"a filter is a string or an object, not {type(item).__name__}")
    name = name.strip().lower()
    schema = FILTERS.get(name)
    if schema is None:
        raise FilterError(f"unknown filter {name!r} (known: {', '.join(FILTERS)})")
    params: dict[str, float] = {}
    for key, value in raw.items():
        if key not in schema:
            raise FilterError(f"filter {name!r} has no parameter {key!r} "
                              f"(it takes: {', '.join(schema)})")
        kind, low, high, _ = schema[key]
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if kind is int and number != int(number):
                raise ValueError
        except (TypeError, ValueError):
            what = "an integer" if kind is int else "a number"
            raise FilterError(f"filter {name}: {key} must be {what}, not {value!r}") from None
        if not (math.isfinite(number) and low <= number <= high):
            raise FilterError(f"filter {name}: {key} must be between {low:g} and {high:g}, "
                              f"not {value}")
        params[key] = kind(number)
    for key, (kind, _, _, default) in schema.items():
        if key not in params:
            if default is None:
                raise FilterError(f"filter {name} needs {key}=…, e.g. {name}:{key}=6")
            params[key] = kind(default)
    return FilterSpec(name, params)


def parse_filters(items: Iterable[str | Mapping[str, Any]] | str | None) -> tuple[FilterSpec, ...]:
    """Specs from a ``start`` message's ``filters`` list or the server's ``--filters``.
    Raises :class:`FilterError` naming the bad entry."""
    if items is None:
        return ()
    if isinstance(items, str):
        items = [p for p in re.split(r"[;\s]+", items) if p]
    items = list(items)
    if len(items) > MAX_FILTERS:
        raise FilterError(f"at most {MAX_FILTERS} filters per stream")
    return tuple(_parse_one(i) for i in items)


def start_filters(value: Any) -> tuple[FilterSpec, ...] | None:
    """A ``start`` message's ``filters`` field (None when absent: the server's default);
    a bad one is a :class:`ProtocolError` ``bad_start`` naming it (the start is refused)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ProtocolError(Code.BAD_START,
                            "'filters' must be a list such as [\"agc\", \"denoise\"]")
    try:
        return parse_filters(value)
    except FilterError as exc:
        raise ProtocolError(Code.BAD_START, f"'filters': {exc}") from None


def _webrtc() -> Any:
    try:
        from webrtc_noise_gain import AudioProcessor
    except ImportError:
        raise MissingDependency("the denoise filter needs the webrtc-noise-gain "
                                f"package: {INSTALL_HINT}") from None
    return AudioProcessor


def check_available(specs: Sequence[FilterSpec]) -> None:
    """Raise :class:`MissingDependency` (with the extra to install) if a filter's library
    is not installed."""
    if any(s.name in NEEDS_WEBRTC for s in specs):
        _webrtc()


# -- filters ------------------------------------------------------------------------------
class _Filter(ABC):
    latency = 0

    @abstractmethod
    def process(self, x: np.ndarray) -> np.ndarray:  # (n, channels) float32 -> same
        """Filter a chunk; as many frames out as in (after ``latency`` frames of delay)."""


class _Gain(_Filter):
    def __init__(self, db: float) -> None:
        self.factor = np.float32(10.0 ** (db / 20.0))

    def process(self, x: np.ndarray) -> np.ndarray:
        return x * self.factor


class _Agc(_Filter):
    """Gain towards a target level, decided per 10 ms block from the blocks before it and
    ramped linearly across the block: causal, so no latency, and the same output however
    the input is chunked."""

    GATE_DB = -60.0
    ATTACK, RELEASE = 0.05, 2.0  # seconds: level rising (gain falls fast), level falling

    def __init__(self, rate: int, target: float, max_gain: float) -> None:
        self.block = max(1, rate // 100)
        self.target, self.max_gain = target, max_gain
        self._up = 1 - math.exp(-0.01 / self.ATTACK)
        self._down = 1 - math.exp(-0.01 / self.RELEASE)
        self._level: float | None = None  # dBFS, smoothed
        self._g0 = self._g1 = 1.0  # gain at the start and end of the current block
        self._pos = 0  # frames of the current block done
        self._buf: list[np.ndarray] = []  # the current block's input so far

    def _next_block(self) -> None:
        block = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
        self._buf, self._pos = [], 0
        p = float(np.mean(np.square(block, dtype=np.float64)))
        if p > 0:
            db = 10 * math.log10(p)
            if db > self.GATE_DB:
                if self._level is None:
                    self._level = db
                else:
                    a = self._up if db > self._level else self._down
                    self._level += a * (db - self._level)
        self._g0 = self._g1
        if self._level is not None:
            g = min(self.max_gain, max(-self.max_gain, self.target - self._level))
            self._g1 = 10 ** (g / 20)

    def process(self, x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        i, n = 0, len(x)
        while i < n:
            k = min(n - i, self.block - self._pos)
            seg = x[i:i + k]
            ramp = self._g0 + (self._g1 - self._g0) * (
                np.arange(self._pos + 1, self._pos + k + 1, dtype=np.float64) / self.block)
            out[i:i + k] = seg * ramp[:, None].astype(np.float32)
            self._buf.append(seg)
            self._pos += k
            i += k
            if self._pos == self.block:
                self._next_block()
        return np.clip(out, -1.0, 1.0, out=out)


class _Fifo:
    """Float32 frames (n, channels) in, the oldest out."""

    def __init__(self, channels: int, prime: int = 0) -> None:
        self._parts: list[np.ndarray] = [np.zeros((prime, channels), np.float32)]
        self.size = prime
        self.channels = channels
        self.short = 0  # frames it had to make up (never, with enough priming: tested)

    def push(self, x: np.ndarray) -> None:
        if len(x):
            self._parts.append(x)
            self.size += len(x)

    def pop(self, n: int) -> np.ndarray:
        if n > self.size:  # never with the probed priming; kept aligned if it happened
            self.short += n - self.size
            self.push(np.zeros((n - self.size, self.channels), np.float32))
        data = self._parts[0] if len(self._parts) == 1 else np.concatenate(self._parts)
        out, rest = data[:n], data[n:]
        self._parts = [rest]
        self.size = len(rest)
        return out


_HOLDBACK: dict[tuple[int, int], float] = {}


def _holdback(a: int, b: int) -> float:
    """Most output frames soxr's streaming resampler a -> b holds back at any point
    (it emits its output content-aligned but in blocks): probed once, in 1 ms steps."""
    key = (a, b)
    if key not in _HOLDBACK:
        import soxr

        rs = soxr.ResampleStream(a, b, 1, dtype="float32", quality="HQ")
        step = max(1, a // 1000)
        x = np.zeros(step, np.float32)
        got, worst = 0, 0.0
        for i in range(1, 400):  # 0.4 s: past the first blocks, where it holds back most
            got += len(rs.resample_chunk(x))
            worst = max(worst, i * step * b / a - got)
        _HOLDBACK[key] = worst + step * b / a  # (between two probe points)
    return _HOLDBACK[key]


class _Webrtc(_Filter):
    """Noise suppression: one webrtc-noise-gain processor per channel at 16 kHz, in 10 ms frames."""

    def __init__(self, rate: int, channels: int, *, ns: int) -> None:
        ap = _webrtc()
        self.channels = channels
        self._apms = [ap(0, ns) for _ in range(channels)]
        self._pending = np.zeros((0, channels), np.int16)  # 16 kHz int16 not yet framed
        self.rate = rate
        delay16 = DENOISE_DELAY
        if rate == APM_RATE:
            self._down = self._up = None
            prime = APM_FRAME
        else:
            import soxr

            self._down = soxr.ResampleStream(rate, APM_RATE, channels, dtype="float32",
                                             quality="HQ")
            self._up = soxr.ResampleStream(APM_RATE, rate, channels, dtype="float32",
                                           quality="HQ")
            prime = math.ceil(_holdback(rate, APM_RATE) * rate / APM_RATE
                              + APM_FRAME * rate / APM_RATE + _holdback(APM_RATE, rate)) + 2
        self._out = _Fifo(channels, prime)
        self.latency = prime + round(delay16 * rate / APM_RATE)

    def _run(self, y16: np.ndarray) -> np.ndarray:
        """16 kHz float32 (n, c) -> the whole 10 ms frames processed (m, c) float32."""
        s16 = np.clip(np.rint(y16 * 32768.0), -32768, 32767).astype(np.int16)
        pend = np.concatenate([self._pending, s16]) if len(self._pending) else s16
        whole = len(pend) // APM_FRAME * APM_FRAME
        self._pending = pend[whole:]
        if not whole:
            return np.zeros((0, self.channels), np.float32)
        out = np.empty((whole, self.channels), np.int16)
        for c, apm in enumerate(self._apms):
            col = np.ascontiguousarray(pend[:whole, c])
            for i in range(0, whole, APM_FRAME):
                out[i:i + APM_FRAME, c] = self._frame(apm, col[i:i + APM_FRAME])
        return out.astype(np.float32) / np.float32(32768.0)

    @staticmethod
    def _frame(apm: Any, frame: np.ndarray) -> np.ndarray:
        """One 10 ms frame through the wheel: ``Process10ms(bytes).audio`` (1.x), or
        ``Process10ms(in_array, out_array)`` (its newer source)."""
        try:
            return np.frombuffer(apm.Process10ms(frame.tobytes()).audio, np.int16)
        except TypeError:
            out = np.empty(APM_FRAME, np.int16)
            apm.Process10ms(frame, out)
            return out

    def process(self, x: np.ndarray) -> np.ndarray:
        y = x if self._down is None else self._down.resample_chunk(x)
        y = self._run(np.asarray(y, np.float32).reshape(-1, self.channels))
        if self._up is not None and len(y):
            y = self._up.resample_chunk(y).reshape(-1, self.channels)
        self._out.push(y)
        return self._out.pop(len(x))


def _build(spec: FilterSpec, rate: int, channels: int) -> _Filter:
    p = spec.params
    if spec.name == "gain":
        return _Gain(float(p["db"]))
    if spec.name == "agc":
        return _Agc(rate, float(p["target"]), float(p["max_gain"]))
    if spec.name == "denoise":
        return _Webrtc(rate, channels, ns=int(p["level"]))
    raise FilterError(f"unknown filter {spec.name!r}")


class FilterChain:
    """The filters of one stream, in order; stateful. Feed float32 ``(n,)`` or
    ``(n, channels)`` at the stream rate, any ``n``; get the same shape back, delayed by
    :attr:`latency` frames. Raises :class:`MissingDependency` if a library is missing."""

    def __init__(self, specs: Sequence[FilterSpec], rate: int, channels: int = 1) -> None:
        self.specs = tuple(specs)
        self.rate, self.channels = rate, channels
        self._filters = [_build(s, rate, channels) for s in self.specs]
        self.latency = sum(f.latency for f in self._filters)

    def process(self, samples: np.ndarray) -> np.ndarray:
        x = np.asarray(samples, dtype=np.float32)
        shape = x.shape
        x = x.reshape(len(x), self.channels)
        if not len(x):
            return np.zeros(shape, np.float32)
        for f in self._filters:
            x = f.process(x)
        return np.ascontiguousarray(x, dtype=np.float32).reshape(shape)

    def flush(self) -> np.ndarray:
        """The last :attr:`latency` frames still inside (fed with silence), ``(latency,
        channels)``."""
        return self.process(np.zeros((self.latency, self.channels), np.float32))


class AlignedCleanup:
    """A :class:`FilterChain` whose output is stamped with stream time.

    :meth:`feed` takes ``(samples, offset)`` and returns ``(filtered, first)``: the filtered
    frames ``first .. first + len(filtered)`` of the stream (``first = offset - latency``,
    never before the start), possibly none yet. A jump in the offsets (a resume, audio not
    fed) starts a fresh chain there; :meth:`tail` gives what the chain still holds."""

    def __init__(self, specs: Sequence[FilterSpec], rate: int, channels: int,
                 start: int = 0, make: Callable[..., FilterChain] = FilterChain) -> None:
        self._make = make
        self.specs, self.rate, self.channels = tuple(specs), rate, channels
        self.chain = make(self.specs, rate, channels)
        self.latency = self.chain.latency
        self._start = self._next = start

    def feed(self, samples: np.ndarray, offset: int) -> tuple[np.ndarray, int]:
        if offset != self._next:
            self.chain = self._make(self.specs, self.rate, self.channels)
            self._start = offset
        self._next = offset + len(samples)
        out = self.chain.process(samples)
        first = offset - self.latency
        skip = max(0, self._start - first)
        return out[skip:], first + skip

    def tail(self) -> tuple[np.ndarray, int]:
        """The last ``latency`` frames (at the end of the stream, or of a connection)."""
        first = self._next - self.latency
        out = self.chain.flush()
        skip = max(0, self._start - first)
        self.chain = self._make(self.specs, self.rate, self.channels)
        self._start = self._next
        return out[skip:], first + skip
