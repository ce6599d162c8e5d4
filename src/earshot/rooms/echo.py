"""The speaking side of a call: echo cancellation, gain control, noise suppression.

A pure core around the WebRTC audio processing module (AEC3, AGC2, NS) as bound by
``pywebrtc-audio`` (``pip install 'earshot[call]'``): float32 frames in, float32 frames
out, no I/O, no clock. One :class:`VoiceProcessor` per microphone:

* :meth:`VoiceProcessor.process_reverse` takes what the speaker is about to play (the far
  end: the call's mix), the reference the echo canceller subtracts;
* :meth:`VoiceProcessor.process` takes what the microphone picked up (the near end) and
  gives it back cleaned, as many frames as it was given.

Frames are mono float32 in [-1, 1] (int16 is accepted and scaled by 1/32768), a whole
number of 10 ms blocks (``rate // 100`` samples each) at 16, 32 or 48 kHz; anything else is
refused with :class:`~earshot.rooms.errors.RoomError` (code ``bad_audio``). Every 10 ms
block of near end is processed together with the oldest far-end block not yet used
(silence if the speaker has played nothing since), as the WebRTC module expects one
render block per capture block; far-end blocks that pile up beyond ``max_pending``
(200 ms by default: the speaker runs ahead of the microphone) are dropped oldest first and
counted in :attr:`VoiceProcessor.stats`. AEC3 estimates the echo path's delay by itself
(up to about half a second); ``delay_ms`` is a hint of the render-to-capture delay that the
application knows (device buffers), 0 by default.

Switches: ``aec``, ``agc`` and ``ns`` may be turned on and off at any time; changing one
rebuilds the module, so the echo canceller adapts again from scratch (about a second of
far-end speech). With all three off the frames come back unchanged (no high-pass filter
either). With any on, a 80 Hz high-pass filter runs too (WebRTC's voice pipeline).

Latency (measured on speech fixtures by cross-correlation, tests/rooms/test_echo.py): the
output lags the input by 8 ms with AEC (AEC3's block framing), 6 ms with NS (the
suppressor's overlap), 14 ms with both; AGC adds none; the band split adds 1 ms more at
48 kHz (0.125 ms at 32 kHz). :attr:`VoiceProcessor.latency_ms` gives these figures for the
current switches.

Why this binding: ``pywebrtc-audio`` ships wheels (Linux x86_64 and aarch64, macOS,
Windows; CPython 3.10-3.14) of under 1 MB with numpy as its only dependency, takes float32
arrays directly and releases the GIL; LiveKit's ``rtc.AudioProcessingModule`` (the same
AEC3: measured side by side when choosing, it cancelled within 1.5 dB of this one, with the
same latency and CPU) needs a 30 MB native library, protobuf and its FFI runtime;
``aec-audio-processing`` has no wheels (an 8-minute compile) and
``webrtc-audio-processing`` is unmaintained since 2019 (needs swig).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from earshot.errors import MissingDependency
from earshot.rooms.errors import RoomError, integer

__all__ = ["RATES", "EchoStats", "VoiceProcessor"]

RATES = (16000, 32000, 48000)
INSTALL_HINT = "pip install 'earshot[call]'"
MAX_DELAY_MS = 500

# Output lag in ms (measured): per module, plus the band split above 16 kHz.
_LATENCY_AEC = 8.0
_LATENCY_NS = 6.0
_LATENCY_SPLIT = {16000: 0.0, 32000: 0.125, 48000: 1.0}


def _binding() -> Any:
    try:
        from pywebrtc_audio import AudioProcessor
    except ImportError:
        raise MissingDependency("echo cancellation needs the pywebrtc-audio package: "
                                f"{INSTALL_HINT}") from None
    return AudioProcessor


@dataclass(frozen=True, slots=True)
class EchoStats:
    """Counters, in 10 ms blocks."""

    blocks: int  # near-end blocks processed
    reverse_blocks: int  # far-end blocks received
    reverse_missing: int  # near-end blocks processed with silence as the far end
    reverse_dropped: int  # far-end blocks dropped because more than max_pending piled up
    rebuilds: int  # times a switch rebuilt the module


class VoiceProcessor:
    """Echo cancellation (with the far end as reference), automatic gain control and noise
    suppression for one microphone; see the module docstring for the contract."""

    def __init__(
        self,
        rate: int = 48000,
        *,
        aec: bool = True,
        agc: bool = True,
        ns: bool = True,
        ns_level: int = 1,
        delay_ms: int = 0,
        max_pending: int = 20,
    ) -> None:
        rate = integer("rate", rate)
        if rate not in RATES:
            raise RoomError("bad_audio", f"echo cancellation runs at {RATES} Hz, not {rate}")
        ns_level = integer("ns_level", ns_level)
        if not 0 <= ns_level <= 3:
            raise RoomError("bad_audio", f"ns_level must be 0..3, got {ns_level}")
        max_pending = integer("max_pending", max_pending)
        if max_pending < 1:
            raise RoomError("bad_audio", f"max_pending must be >= 1, got {max_pending}")
        self.rate = rate
        self.frame = rate // 100
        self._aec, self._agc, self._ns = bool(aec), bool(agc), bool(ns)
        self._ns_level = ns_level
        self._delay_ms = _delay(delay_ms)
        self._max_pending = max_pending
        self._pending: deque[np.ndarray] = deque()
        self._silence = np.zeros(self.frame, np.float32)
        self._ap: Any = None
        self._blocks = self._reverse = self._missing = self._dropped = self._rebuilds = 0
        self._build()

    # -- switches ----------------------------------------------------------------------------

    @property
    def aec(self) -> bool:
        return self._aec

    @aec.setter
    def aec(self, on: bool) -> None:
        if bool(on) != self._aec:
            self._aec = bool(on)
            self._rebuild()

    @property
    def agc(self) -> bool:
        return self._agc

    @agc.setter
    def agc(self, on: bool) -> None:
        if bool(on) != self._agc:
            self._agc = bool(on)
            self._rebuild()

    @property
    def ns(self) -> bool:
        return self._ns

    @ns.setter
    def ns(self, on: bool) -> None:
        if bool(on) != self._ns:
            self._ns = bool(on)
            self._rebuild()

    @property
    def delay_ms(self) -> int:
        """The render-to-capture delay hint given to the echo canceller (0..500 ms)."""
        return self._delay_ms

    @delay_ms.setter
    def delay_ms(self, value: int) -> None:
        self._delay_ms = _delay(value)
        if self._ap is not None:
            self._ap.stream_delay_ms = self._delay_ms

    @property
    def active(self) -> bool:
        """True if any of the three runs (else frames pass through unchanged)."""
        return self._aec or self._agc or self._ns

    @property
    def latency_ms(self) -> float:
        """How much later a sound comes out of :meth:`process` than it went in (measured)."""
        if not self.active:
            return 0.0
        ms = (_LATENCY_AEC if self._aec else 0.0) + (_LATENCY_NS if self._ns else 0.0)
        return ms + _LATENCY_SPLIT[self.rate]

    @property
    def speech_probability(self) -> float:
        """The module's speech probability for the last block (0 when nothing runs)."""
        return float(self._ap.speech_probability) if self._ap is not None else 0.0

    @property
    def stats(self) -> EchoStats:
        return EchoStats(self._blocks, self._reverse, self._missing, self._dropped,
                         self._rebuilds)

    # -- audio -------------------------------------------------------------------------------

    def process_reverse(self, far: np.ndarray) -> None:
        """Give the far end (what the speaker plays), a whole number of 10 ms blocks."""
        x = self._blocks_of(far, "far")
        for i in range(0, len(x), self.frame):
            self._pending.append(x[i:i + self.frame])
            self._reverse += 1
        while len(self._pending) > self._max_pending:
            self._pending.popleft()
            self._dropped += 1

    def process(self, near: np.ndarray) -> np.ndarray:
        """The near end (the microphone) cleaned: float32, as many samples as given."""
        x = self._blocks_of(near, "near")
        out = np.empty_like(x)
        for i in range(0, len(x), self.frame):
            block = x[i:i + self.frame]
            if self._pending:
                far = self._pending.popleft()
            else:
                far = self._silence
                self._missing += 1
            self._blocks += 1
            if self._ap is None:
                out[i:i + self.frame] = block
            else:
                out[i:i + self.frame] = self._ap.process(block, far)
        return out

    def reset(self) -> None:
        """Forget the adaptation and the pending far end (keep switches and counters)."""
        self._pending.clear()
        if self._ap is not None:
            self._ap.reset()

    # -- internals ---------------------------------------------------------------------------

    def _build(self) -> None:
        if not self.active:
            self._ap = None
            return
        self._ap = _binding()(
            sample_rate=self.rate,
            num_channels=1,
            echo_cancellation=self._aec,
            noise_suppression=self._ns,
            auto_gain_control=self._agc,
            high_pass_filter=True,
            ns_level=self._ns_level,
            stream_delay_ms=self._delay_ms,
        )

    def _rebuild(self) -> None:
        self._rebuilds += 1
        self._build()

    def _blocks_of(self, samples: np.ndarray, what: str) -> np.ndarray:
        a = np.asarray(samples)
        if a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 1:
            raise RoomError("bad_audio", f"{what} must be mono (1-D), got shape {a.shape}")
        if a.dtype == np.int16:
            a = a.astype(np.float32) / 32768.0
        elif a.dtype in (np.float32, np.float64):
            a = np.ascontiguousarray(a, dtype=np.float32)
        else:
            raise RoomError("bad_audio", f"{what} must be float32 or int16, got {a.dtype}")
        if len(a) == 0 or len(a) % self.frame:
            raise RoomError("bad_audio", f"{what} must be a whole number of 10 ms blocks "
                            f"({self.frame} samples at {self.rate} Hz), got {len(a)}")
        if not np.isfinite(a).all():
            raise RoomError("bad_audio", f"{what} holds NaN or infinite samples")
        return a



def _delay(value: object) -> int:
    ms = integer("delay_ms", value)
    if not 0 <= ms <= MAX_DELAY_MS:
        raise RoomError("bad_audio", f"delay_ms must be 0..{MAX_DELAY_MS}, got {ms}")
    return ms
