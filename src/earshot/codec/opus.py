"""Opus packets ↔ float32 PCM at the stream's rate, with sample-exact offsets.

Timeline and pre-skip
---------------------
An Opus encoder delays its input by its *lookahead* (libopus: 6.5 ms for ``voip``/``audio``,
2.5 ms for ``lowdelay``). Decoding packet ``i`` therefore yields the samples
``[D_i, D_i + d_i)`` of the *decoder timeline*, where ``d_i`` is the packet's duration (from
its TOC byte) and ``D_i`` the sum of the durations of the packets before it. Stream sample
``k`` (= encoder input sample ``k``) is decoder-timeline sample ``k + pre_skip``, with
``pre_skip`` the encoder's lookahead in samples at the stream rate (RFC 7845 calls it
pre-skip and counts it at 48 kHz; here it is at the stream rate: ``pre_skip_48k * rate //
48000``). So:

* the client sends ``pre_skip`` in ``start`` (what ``OPUS_GET_LOOKAHEAD`` returns on an
  encoder running at the stream rate, :attr:`OpusEncoder.pre_skip`, or the OpusHead
  pre-skip scaled to the stream rate); a new stream's decoder is
  ``OpusDecoder(rate, channels, pre_skip=pre_skip)``, which drops exactly that many samples,
  after which decoded sample ``k`` *is* input sample ``k``;
* packet ``i`` begins at stream offset ``D_i - pre_skip`` (packet 0 at ``-pre_skip``), and
  :func:`packet_samples` gives ``d_i`` without decoding, so offsets stay exact;
* the server only ever holds whole packets (and whole concealed packets), so ``held`` is
  always such a boundary (given frames of at least 10 ms, longer than the pre-skip). To
  resume, the client continues from a packet boundary ``offset = D_i - pre_skip <= held``
  (ideally one or two packets *before* ``held``; no ``offset`` means ``held``, or
  ``-pre_skip`` while nothing is held) and the server starts a fresh decoder with
  ``pre_skip = held - offset``. A fresh decoder turns every packet into exactly ``d_i``
  samples, so counts stay exact; only its first packet or two sound worse (no history:
  CELT overlap, SILK predictor state) — resending a packet or two before ``held`` puts that
  warm-up into the dropped part;
* the client's encoder pads the final partial frame and its lookahead at the end
  (:meth:`OpusEncoder.flush`, :attr:`OpusEncoder.padding`); a ``stop`` may carry the true
  length so the server can trim it (the Ogg archive trims it with its final granule).

Decoding
--------
:class:`OpusDecoder` runs libopus's own decoder at the stream rate through ctypes (the copy
PyAV bundles, else the system's ``libopus``), so packets decode exactly as the reference
decoder decodes them, with its packet-loss concealment. libavcodec's decoders (the
fallback, ``backend="pyav"``) always output 48 kHz; every ``48000 // rate``-th sample is
kept: phase-aligned at 12 kHz and above, but 29 samples (at 48 kHz) late on SILK
narrowband (8 kHz), with weaker concealment, and aliasing when a packet codes more than
``rate / 2`` of bandwidth (libopus band-limits those properly; both count them in
:attr:`OpusDecoder.wide_packets`). Either way each packet yields exactly its TOC duration.

Alignment is sample-exact; phase is the codec's: SILK-only and CELT-only packets come back
with their best-matching lag at 0, hybrid packets (24/48 kHz around 32 kbit/s) about
1/24 ms early (1 sample at 24 kHz, 2-3 at 48 kHz) — libopus's reference behaviour. The
``voip`` application also high-passes the input, which costs lag-0 correlation on speech
(0.97 at 16 kHz, 0.89 at 48 kHz, against 0.99 and 0.94 for ``audio``), hence the
``audio`` default (also WebCodecs' default).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from earshot.errors import EarshotError, MissingDependency, ProtocolError
from earshot.wire.codes import Code

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
#: frame durations (ms) the encoder accepts; every packet lasts a multiple of 2.5 ms
FRAME_MS = (2.5, 5, 10, 20, 40, 60)
APPLICATIONS = ("voip", "audio", "lowdelay")
Application = Literal["voip", "audio", "lowdelay"]

MAX_PACKET_SAMPLES_48K = 5760  # 120 ms, RFC 6716 §3.2.5 (R5)
MAX_FRAME_BYTES = 1275  # RFC 6716 §3.2.1 (R2)

# Samples per frame at 48 kHz for each TOC config (RFC 6716 §3.1, table 2):
# 0-11 SILK 10/20/40/60 ms, 12-15 hybrid 10/20 ms, 16-31 CELT 2.5/5/10/20 ms.
_FRAME_48K = (
    (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4
)
# Audio bandwidth (Hz) coded by each TOC config: NB 4k, MB 6k, WB 8k, SWB 12k, FB 20k.
_BANDWIDTH = (
    (4000,) * 4 + (6000,) * 4 + (8000,) * 4 + (12000,) * 2 + (20000,) * 2
    + (4000,) * 4 + (8000,) * 4 + (12000,) * 4 + (20000,) * 4
)


def import_av() -> Any:
    """PyAV, or :class:`MissingDependency` with an install hint."""
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependency(
            "Opus support needs PyAV (which bundles libopus): pip install av"
        ) from e
    return av


def encoder_missing() -> str | None:
    """Why Opus cannot be encoded here (the relay to ``audio=opus`` listeners), or None.
    Asked up front, at subscribe, so a missing library never fails another connection."""
    try:
        av = import_av()
    except MissingDependency as exc:
        return str(exc)
    if "libopus" not in av.codecs_available:  # pragma: no cover - PyAV wheels have it
        return "this PyAV build has no libopus encoder: pip install av"
    return None


def decoder_missing() -> str | None:
    """Why Opus cannot be decoded here (Opus ingest), or None. Asked at ``start``."""
    if _libopus() is not None:
        return None
    try:
        import_av()
    except MissingDependency as exc:
        return str(exc)
    return None


def _bad(message: str) -> ProtocolError:
    return ProtocolError(Code.BAD_OPUS, message)


def _check_rate_channels(rate: int, channels: int) -> int:
    """Validate; return the 48 kHz / rate factor."""
    if rate not in OPUS_RATES:
        raise EarshotError(f"Opus rate must be one of {OPUS_RATES}, not {rate}")
    if channels not in (1, 2):
        raise EarshotError(f"Opus streams here are mono or stereo, not {channels} channels")
    return 48000 // rate


def _frame_len(packet: bytes, pos: int) -> tuple[int, int]:
    """One RFC 6716 §3.2.1 frame length at ``pos``: (length, bytes used)."""
    if pos >= len(packet):
        raise _bad("Opus packet truncated inside a frame length")
    b0 = packet[pos]
    if b0 < 252:
        return b0, 1
    if pos + 1 >= len(packet):
        raise _bad("Opus packet truncated inside a two-byte frame length")
    return b0 + 4 * packet[pos + 1], 2


def parse_packet(packet: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Check a packet against RFC 6716 §3.2 (R1-R7); return (TOC byte, samples at 48 kHz).

    Structural checks only: any well-formed packet decodes (garbage payload → noise).
    Raises :class:`ProtocolError` ``bad_opus`` with a readable reason."""
    if not isinstance(packet, bytes | bytearray | memoryview):
        raise _bad(f"an Opus packet is bytes, not {type(packet).__name__}")
    p = bytes(packet)
    n = len(p)
    if n == 0:
        raise _bad("empty Opus packet (a packet has at least its TOC byte)")
    toc = p[0]
    per_frame = _FRAME_48K[toc >> 3]
    code = toc & 3
    if code == 0:
        count, sizes = 1, [n - 1]
    elif code == 1:
        if (n - 1) % 2:
            raise _bad(f"Opus code-1 packet with an odd payload of {n - 1} bytes")
        count, sizes = 2, [(n - 1) // 2] * 2
    elif code == 2:
        first, used = _frame_len(p, 1)
        rest = n - 1 - used - first
        if rest < 0:
            raise _bad(f"Opus code-2 packet: first frame of {first} bytes overruns the packet")
        count, sizes = 2, [first, rest]
    else:
        if n < 2:
            raise _bad("Opus code-3 packet without its frame-count byte")
        fc = p[1]
        count = fc & 0x3F
        if count == 0:
            raise _bad("Opus code-3 packet with a frame count of 0")
        if count * per_frame > MAX_PACKET_SAMPLES_48K:
            raise _bad(f"Opus packet of {count} frames lasts more than 120 ms")
        pos, padding = 2, 0
        if fc & 0x40:  # padding length: bytes of 255 mean 254 and continue
            while True:
                if pos >= n:
                    raise _bad("Opus code-3 packet truncated inside its padding length")
                b = p[pos]
                pos += 1
                padding += 254 if b == 255 else b
                if b != 255:
                    break
        avail = n - pos - padding
        if avail < 0:
            raise _bad("Opus code-3 packet: padding overruns the packet")
        if fc & 0x80:  # VBR: count-1 explicit lengths, the last frame takes the rest
            sizes = []
            for _ in range(count - 1):
                size, used = _frame_len(p, pos)
                pos += used
                avail -= used
                sizes.append(size)
            last = avail - sum(sizes)
            if avail < 0 or last < 0:
                raise _bad("Opus code-3 VBR packet: frame lengths overrun the packet")
            sizes.append(last)
        else:
            if avail % count:
                raise _bad(
                    f"Opus code-3 CBR packet: {avail} payload bytes do not split into "
                    f"{count} equal frames"
                )
            sizes = [avail // count] * count
    if max(sizes) > MAX_FRAME_BYTES:
        raise _bad(f"Opus frame of {max(sizes)} bytes (the maximum is {MAX_FRAME_BYTES})")
    return toc, count * per_frame


def packet_samples(packet: bytes | bytearray | memoryview, rate: int) -> int:
    """Samples (per channel, at ``rate``) that ``packet`` decodes to, from its TOC byte.

    Validates the packet's structure (:func:`parse_packet`); never decodes."""
    if rate not in OPUS_RATES:
        raise EarshotError(f"Opus rate must be one of {OPUS_RATES}, not {rate}")
    return parse_packet(packet)[1] * rate // 48000


@dataclass(frozen=True, slots=True)
class OpusHead:
    """The RFC 7845 §5.1 identification header (channel mapping family 0 only)."""

    channels: int
    pre_skip_48k: int  # pre-skip in 48 kHz samples, as in the header
    input_rate: int = 48000  # informational: the rate the encoder was fed
    output_gain: int = 0  # Q7.8 dB

    def to_bytes(self) -> bytes:
        return b"OpusHead" + struct.pack(
            "<BBHIhB", 1, self.channels, self.pre_skip_48k, self.input_rate,
            self.output_gain, 0,
        )

    @classmethod
    def parse(cls, data: bytes) -> OpusHead:
        if len(data) < 19 or data[:8] != b"OpusHead":
            raise EarshotError("not an OpusHead header")
        version, channels, pre_skip, rate, gain, family = struct.unpack_from("<BBHIhB", data, 8)
        if version >> 4 != 0 or family != 0 or channels not in (1, 2):
            raise EarshotError(
                f"unsupported OpusHead (version {version}, mapping {family}, "
                f"{channels} channels)"
            )
        return cls(channels, pre_skip, rate, gain)


def _layout(channels: int) -> str:
    return "mono" if channels == 1 else "stereo"


class OpusEncoder:
    """PCM → Opus packets of exactly ``frame_ms`` each (libopus through PyAV).

    :meth:`encode` buffers any remainder smaller than a frame; :meth:`flush` ends the
    stream: it pads the last partial frame with silence and drains the encoder's lookahead.
    Decoding every packet and dropping :attr:`pre_skip` samples gives the input back,
    followed by :attr:`padding` samples of padding.
    """

    def __init__(self, rate: int, channels: int, *, frame_ms: float = 20,
                 bitrate: int = 32000, application: Application = "audio") -> None:
        factor = _check_rate_channels(rate, channels)
        if frame_ms not in FRAME_MS:
            raise EarshotError(f"Opus frame_ms must be one of {FRAME_MS}, not {frame_ms}")
        if application not in APPLICATIONS:
            raise EarshotError(f"Opus application must be one of {APPLICATIONS}")
        if not 6000 <= bitrate <= 510_000:
            raise EarshotError(f"Opus bitrate must be 6000..510000 bit/s, not {bitrate}")
        av = import_av()
        if "libopus" not in av.codecs_available:  # pragma: no cover - PyAV wheels have it
            raise MissingDependency("this PyAV build has no libopus encoder: pip install av")
        self.rate = rate
        self.channels = channels
        self.frame_ms = frame_ms
        self.frame_size = round(rate * frame_ms / 1000)
        self._av = av
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = rate
        ctx.layout = _layout(channels)
        ctx.format = "flt"
        ctx.bit_rate = bitrate
        ctx.options = {"application": application, "frame_duration": str(frame_ms)}
        ctx.open()
        self._ctx = ctx
        head = OpusHead.parse(bytes(ctx.extradata or b""))
        #: encoder delay in samples at ``rate`` (drop this many samples after decoding)
        self.pre_skip = head.pre_skip_48k // factor
        self._buf = np.zeros((0, channels), np.float32)
        self._pts = 0
        self.frames_in = 0  # sample frames given to encode()
        self.packet_frames = 0  # samples (at rate) covered by the packets returned
        self.padding = 0  # after flush(): trailing decoded samples that are not input
        self._flushed = False

    def _as_frames(self, pcm: np.ndarray) -> np.ndarray:
        x = np.asarray(pcm)
        if x.ndim == 1 and self.channels == 1:
            x = x[:, None]
        if x.ndim != 2 or x.shape[1] != self.channels:
            raise EarshotError(
                f"expected PCM of shape (frames, {self.channels}), got {x.shape}"
            )
        if x.dtype == np.int16:
            return x.astype(np.float32) / 32768.0
        if not np.issubdtype(x.dtype, np.floating):
            raise EarshotError(f"expected float (or int16) PCM, got {x.dtype}")
        x = x.astype(np.float32, copy=False)
        if not np.isfinite(x).all():  # libopus must never see NaN/Inf
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        return x

    def _encode_frame(self, chunk: np.ndarray | None) -> list[bytes]:
        frame = None
        if chunk is not None:
            frame = self._av.AudioFrame.from_ndarray(
                np.ascontiguousarray(chunk).reshape(1, -1), format="flt",
                layout=_layout(self.channels),
            )
            frame.sample_rate = self.rate
            frame.pts = self._pts
            self._pts += len(chunk)
        out = [bytes(p) for p in self._ctx.encode(frame)]
        self.packet_frames += sum(packet_samples(p, self.rate) for p in out)
        return out

    def encode(self, pcm: np.ndarray) -> list[bytes]:
        """Encode float32 PCM ``(frames, channels)`` (or ``(frames,)`` for mono, or int16)."""
        if self._flushed:
            raise EarshotError("this OpusEncoder was flushed; make a new one")
        x = self._as_frames(pcm)
        self.frames_in += len(x)
        buf = np.concatenate([self._buf, x]) if len(self._buf) else x
        fs = self.frame_size
        whole = len(buf) // fs * fs
        packets: list[bytes] = []
        for i in range(0, whole, fs):
            packets += self._encode_frame(buf[i:i + fs])
        self._buf = buf[whole:].copy()
        return packets

    def flush(self) -> list[bytes]:
        """End of stream: pad the partial frame with silence, drain the lookahead.

        Afterwards :attr:`padding` is the number of samples that decoding (with
        :attr:`pre_skip` dropped) yields beyond the input; trim them."""
        if self._flushed:
            return []
        packets: list[bytes] = []
        if len(self._buf):
            pad = np.zeros((self.frame_size - len(self._buf), self.channels), np.float32)
            packets += self._encode_frame(np.concatenate([self._buf, pad]))
            self._buf = self._buf[:0]
        packets += self._encode_frame(None)
        self._flushed = True
        self.padding = self.packet_frames - self.pre_skip - self.frames_in
        return packets


class OpusDecoder:
    """Opus packets → float32 PCM ``(frames, channels)`` at ``rate``, one packet at a time.

    Every packet yields exactly :func:`packet_samples` samples, less what is left of the
    initial ``pre_skip`` (dropped from the very first output samples). Bad packets raise
    :class:`ProtocolError` ``bad_opus`` and leave the decoder usable.

    ``backend``: ``"libopus"`` decodes with libopus itself at ``rate`` (the copy bundled with
    PyAV, else the system's), ``"pyav"`` with libavcodec's native decoder at 48 kHz, keeping
    every ``48000 // rate``-th sample; ``"auto"`` (default) prefers libopus.
    """

    def __init__(self, rate: int, channels: int, *, pre_skip: int = 0,
                 backend: Literal["auto", "libopus", "pyav"] = "auto") -> None:
        self._factor = _check_rate_channels(rate, channels)
        if pre_skip < 0:
            raise EarshotError(f"pre_skip must be >= 0, not {pre_skip}")
        self.rate = rate
        self.channels = channels
        self.pre_skip = pre_skip
        self._skip = pre_skip
        lib = _libopus() if backend in ("auto", "libopus") else None
        if lib is None and backend == "libopus":
            raise MissingDependency(
                "libopus not found (neither bundled with PyAV nor installed): pip install av"
            )
        self._impl: _LibopusImpl | _PyAVImpl = (
            _LibopusImpl(lib, rate, channels) if lib is not None else _PyAVImpl(rate, channels)
        )
        self.backend = self._impl.name
        self._last_toc: int | None = None
        self.frames = 0  # sample frames returned so far (after pre-skip)
        self.packets = 0
        self.concealed = 0  # sample frames synthesized by conceal()
        self.wide_packets = 0  # packets coding more bandwidth than rate / 2
        self.length_fixes = 0  # packets whose decoder output had to be padded or cut

    def samples_per_packet(self, packet: bytes) -> int:
        """Samples at the stream rate that ``packet`` decodes to (TOC only, no decoding)."""
        return packet_samples(packet, self.rate)

    def _exact(self, y: np.ndarray, n: int) -> np.ndarray:
        if len(y) != n:  # never seen; keeps offsets exact whatever the decoder does
            self.length_fixes += 1
            y = y[:n]
            if len(y) < n:
                y = np.concatenate([y, np.zeros((n - len(y), self.channels), np.float32)])
        return y

    def _emit(self, y: np.ndarray) -> np.ndarray:
        if self._skip:
            k = min(self._skip, len(y))
            self._skip -= k
            y = y[k:]
        self.frames += len(y)
        return y

    def decode(self, packet: bytes) -> np.ndarray:
        """Decode one packet; returns ``packet_samples(packet, rate)`` frames (less pre-skip)."""
        toc, n48 = parse_packet(packet)
        if _BANDWIDTH[toc >> 3] * 2 > self.rate:
            self.wide_packets += 1
        n = n48 // self._factor
        y = self._exact(self._impl.decode(bytes(packet), n), n)
        self._last_toc = toc
        self.packets += 1
        return self._emit(y)

    def conceal(self, frames: int) -> np.ndarray:
        """``frames`` samples standing in for lost packets (packet-loss concealment).

        The decoder extrapolates from its history (libopus PLC: ``opus_decode`` without
        data; the PyAV backend feeds TOC-only packets, which RFC 6716 defines as lost
        frames), fading to silence over consecutive losses. Runs in 20 ms steps, the last
        one rounded up to a whole 2.5 ms (10 ms with PyAV) and cut. Before any packet, or
        if the decoder refuses, it is silence. The count is exact either way."""
        if frames < 0:
            raise EarshotError(f"cannot conceal {frames} frames")
        remaining = frames
        parts = []
        step20 = self.rate // 50
        while remaining > 0:
            step = min(step20, remaining)
            y = None
            if self._last_toc is not None:
                try:
                    y = self._impl.conceal(step, self._last_toc)
                except ProtocolError:
                    y = None
            y = self._exact(
                y if y is not None else np.zeros((0, self.channels), np.float32), step
            )
            parts.append(y)
            remaining -= step
        self.concealed += frames
        y = np.concatenate(parts) if parts else np.zeros((0, self.channels), np.float32)
        return self._emit(y)


_LIBOPUS: list[Any] = []  # [ctypes.CDLL | None] once looked up


def _libopus() -> Any:
    """libopus through ctypes: PyAV's bundled copy first, then the system's; else None."""
    if _LIBOPUS:
        return _LIBOPUS[0]
    import ctypes
    import ctypes.util
    import importlib.util
    from pathlib import Path

    candidates: list[str] = []
    spec = importlib.util.find_spec("av")
    if spec is not None and spec.origin:
        pkg = Path(spec.origin).parent
        for d in (pkg.parent / "av.libs", pkg / ".dylibs", pkg):
            if d.is_dir():
                candidates += sorted(
                    str(f) for f in d.iterdir()
                    if re.match(r"(lib)?opus[-.]", f.name)
                    and (".so" in f.name or f.suffix in (".dylib", ".dll"))
                )
    found = ctypes.util.find_library("opus")
    candidates += [found] if found else []
    lib = None
    for cand in candidates:
        try:
            lib = ctypes.CDLL(cand)
            _ = lib.opus_decoder_create, lib.opus_decode_float, lib.opus_decoder_destroy
        except (OSError, AttributeError):
            lib = None
            continue
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int,
                                            ctypes.POINTER(ctypes.c_int)]
        lib.opus_decoder_destroy.restype = None
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_decode_float.restype = ctypes.c_int
        lib.opus_decode_float.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                                          ctypes.POINTER(ctypes.c_float), ctypes.c_int,
                                          ctypes.c_int]
        lib.opus_strerror.restype = ctypes.c_char_p
        lib.opus_strerror.argtypes = [ctypes.c_int]
        break
    _LIBOPUS.append(lib)
    return lib


class _LibopusImpl:
    """libopus's own decoder, running at the stream rate."""

    name = "libopus"

    def __init__(self, lib: Any, rate: int, channels: int) -> None:
        import ctypes
        import weakref

        self._lib = lib
        self.channels = channels
        err = ctypes.c_int(0)
        handle = lib.opus_decoder_create(rate, channels, ctypes.byref(err))
        if err.value != 0 or not handle:  # pragma: no cover - only on bad arguments / OOM
            raise EarshotError(f"opus_decoder_create failed: {lib.opus_strerror(err.value)}")
        self._handle = handle
        self._finalizer = weakref.finalize(self, lib.opus_decoder_destroy, handle)
        self._max = rate * 120 // 1000
        self._out = np.zeros(self._max * channels, np.float32)
        self._ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))

    def _run(self, data: bytes | None, frame_size: int) -> np.ndarray:
        n = self._lib.opus_decode_float(
            self._handle, data, len(data) if data else 0, self._ptr, frame_size, 0
        )
        if n < 0:
            reason = self._lib.opus_strerror(n).decode(errors="replace")
            size = len(data) if data else 0
            raise _bad(f"undecodable Opus packet ({size} bytes): libopus says {reason!r}")
        return self._out[: n * self.channels].reshape(n, self.channels).copy()

    def decode(self, packet: bytes, n: int) -> np.ndarray:
        return self._run(packet, self._max)

    def conceal(self, n: int, last_toc: int) -> np.ndarray:
        quantum = self._max // 48  # 2.5 ms
        return self._run(None, -(-n // quantum) * quantum)[:n]


class _PyAVImpl:
    """libavcodec's native Opus decoder (48 kHz), every ``48000 // rate``-th sample kept.

    Phase-aligned with libopus for MB/WB/SWB/FB; for 8 kHz (SILK narrowband) libavcodec
    lags by 29 samples at 48 kHz, so prefer the libopus backend."""

    name = "pyav"

    def __init__(self, rate: int, channels: int) -> None:
        self._av = import_av()
        self.channels = channels
        self._factor = 48000 // rate
        self._ctx = self._open()

    def _open(self) -> Any:
        ctx = self._av.CodecContext.create("opus", "r")
        ctx.sample_rate = 48000
        ctx.layout = _layout(self.channels)
        ctx.open()
        return ctx

    def decode(self, packet: bytes, n: int) -> np.ndarray:
        try:
            frames = self._ctx.decode(self._av.Packet(packet))
        except self._av.error.FFmpegError as e:
            raise _bad(f"undecodable Opus packet ({len(packet)} bytes): {e}") from None
        parts = []
        for fr in frames:
            a = fr.to_ndarray()
            a = a.T if fr.format.is_planar else a.reshape(-1, self.channels)
            if a.dtype == np.int16:
                a = a.astype(np.float32) / 32768.0
            parts.append(a.astype(np.float32, copy=False))
        y = np.concatenate(parts) if parts else np.zeros((0, self.channels), np.float32)
        return np.ascontiguousarray(y[:: self._factor])

    def conceal(self, n: int, last_toc: int) -> np.ndarray:
        step = 960 if n * self._factor > 480 else 480
        return self.decode(bytes([_plc_toc(last_toc, step)]), step // self._factor)[:n]


def _plc_toc(last_toc: int, samples_48k: int) -> int:
    """A code-0 TOC byte with the mode/bandwidth/stereo of ``last_toc`` lasting 10 or 20 ms."""
    cfg = last_toc >> 3
    twenty = samples_48k == 960
    if cfg < 12:  # SILK: 10, 20, 40, 60 ms
        cfg = (cfg & ~3) | (1 if twenty else 0)
    elif cfg < 16:  # hybrid: 10, 20 ms
        cfg = (cfg & ~1) | (1 if twenty else 0)
    else:  # CELT: 2.5, 5, 10, 20 ms
        cfg = (cfg & ~3) | (3 if twenty else 2)
    return (cfg << 3) | (last_toc & 4)
