"""Audio sources for the client: a file (optionally paced in real time) or a microphone.

Both are async iterators of numpy blocks shaped (frames, channels), so the code that
publishes a microphone is exercised in tests by a file source with the same interface.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from earshot.audio import SampleFormat
from earshot.errors import ClientError, MissingDependency

__all__ = ["Conditioner", "FileSource", "MicSource", "SourceInfo", "block_level_db",
           "import_sounddevice", "list_devices", "mix_channels", "resolve_device"]


@dataclass
class SourceInfo:
    rate: int
    channels: int
    format: SampleFormat
    frames: int | None = None  # total, when known
    label: str = ""


def mix_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Float32 frames ``(n, c_in)`` to ``(n, channels)``: input channel ``i`` is averaged
    into output channel ``i % channels`` (so stereo to mono is ``(L + R) / 2``, never one
    side); mono to more channels copies it."""
    n, cin = x.shape
    if cin == channels:
        return x
    if cin == 1:
        return np.repeat(x, channels, axis=1)
    if channels == 1:
        mono: np.ndarray = x.mean(axis=1, keepdims=True, dtype=np.float32)
        return mono
    out = np.zeros((n, channels), np.float32)
    counts = np.zeros(channels, np.float32)
    for i in range(cin):
        out[:, i % channels] += x[:, i]
        counts[i % channels] += 1
    return out / counts


class Conditioner:
    """A capture's blocks at any rate and channel count to the stream's: channels mixed
    (:func:`mix_channels`), then resampled by soxr's streaming resampler (high quality,
    band-limited: never by keeping every n-th sample). Pure: arrays in, arrays out."""

    def __init__(self, in_rate: int, in_channels: int, out_rate: int, out_channels: int,
                 quality: str = "HQ") -> None:
        if min(in_rate, out_rate, in_channels, out_channels) < 1:
            raise ClientError("rates and channel counts must be positive")
        self.in_rate, self.in_channels = in_rate, in_channels
        self.out_rate, self.out_channels = out_rate, out_channels
        self._rs: Any = None
        if in_rate != out_rate:
            import soxr

            self._rs = soxr.ResampleStream(in_rate, out_rate, out_channels, dtype="float32",
                                           quality=quality)

    @property
    def identity(self) -> bool:
        return self._rs is None and self.in_channels == self.out_channels

    def process(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.asarray(block)
        if x.ndim == 1:
            x = x[:, None]
        if x.shape[1] != self.in_channels:
            raise ClientError(f"block has {x.shape[1]} channels, expected {self.in_channels}")
        x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
        x = mix_channels(x, self.out_channels)
        if self._rs is None:
            return x
        y = self._rs.resample_chunk(np.ascontiguousarray(x), last=last)
        return np.asarray(y, np.float32).reshape(-1, self.out_channels)

    def flush(self) -> np.ndarray:
        """The resampler's tail at the end of the capture."""
        return self.process(np.zeros((0, self.in_channels), np.float32), last=True)


def resolve_device(spec: int | str | None, devices: list[dict[str, Any]]) -> int | None:
    """An input device from ``--device``: an index, or (part of) a name, case-insensitive.
    ``devices`` are :func:`list_devices` rows. ``None`` is the system's default."""
    if spec is None:
        return None
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        index = int(spec)
        if any(d["index"] == index for d in devices):
            return index
        raise ClientError(f"no input device {index}; inputs: {_names(devices)}")
    exact = [d for d in devices if d["name"].lower() == spec.lower()]
    found = exact or [d for d in devices if spec.lower() in d["name"].lower()]
    if len(found) == 1:
        return int(found[0]["index"])
    if not found:
        raise ClientError(f"no input device matches {spec!r}; inputs: {_names(devices)}")
    raise ClientError(f"{spec!r} matches several input devices: {_names(found)}; "
                      "give more of the name, or the index")


def _names(devices: list[dict[str, Any]]) -> str:
    return ", ".join(f"{d['index']}: {d['name']}" for d in devices) or "none"


async def _conditioned(blocks: AsyncIterator[np.ndarray],
                       cond: Conditioner) -> AsyncIterator[np.ndarray]:
    async for block in blocks:
        y = cond.process(block)
        if len(y):
            yield y
    tail = cond.flush()
    if len(tail):
        yield tail


class FileSource:
    """Blocks of a sound file; with ``realtime=True`` paced like a live microphone.

    ``rate`` / ``channels`` convert it (as :class:`Conditioner` does for a microphone);
    the blocks are then float32."""

    def __init__(self, path: str | Path, *, realtime: bool = False, frame_ms: float = 20.0,
                 format: SampleFormat | None = None, rate: int | None = None,
                 channels: int | None = None) -> None:
        import soundfile as sf

        self.path = Path(path)
        try:  # say "does not exist" rather than libsndfile's "System error."
            with open(self.path, "rb"):
                pass
        except FileNotFoundError:
            raise ClientError(f"cannot read {self.path}: the file does not exist") from None
        except OSError as exc:
            raise ClientError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            info = sf.info(str(self.path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise ClientError(f"cannot read {self.path}: {exc}") from None
        pcm16 = info.subtype in {"PCM_16", "PCM_S8", "PCM_U8"}
        fmt: SampleFormat = format or ("s16" if pcm16 else "f32")
        self.info = SourceInfo(info.samplerate, info.channels, fmt, info.frames, self.path.name)
        self.realtime = realtime
        self.block = max(1, int(info.samplerate * frame_ms / 1000))
        self.conditioner: Conditioner | None = None
        out_rate, out_ch = rate or info.samplerate, channels or info.channels
        if (out_rate, out_ch) != (info.samplerate, info.channels):
            self.conditioner = Conditioner(info.samplerate, info.channels, out_rate, out_ch)
            frames = None if info.frames is None else round(info.frames * out_rate
                                                            / info.samplerate)
            self.info = SourceInfo(out_rate, out_ch, "f32", frames, self.path.name)

    def __aiter__(self) -> AsyncIterator[np.ndarray]:
        if self.conditioner is not None:
            return _conditioned(self._blocks(), self.conditioner)
        return self._blocks()

    async def _blocks(self) -> AsyncIterator[np.ndarray]:
        import soundfile as sf

        dtype = "int16" if self.info.format == "s16" else "float32"
        file_rate = self.conditioner.in_rate if self.conditioner else self.info.rate
        t0 = time.monotonic()
        done = 0
        for block in sf.blocks(str(self.path), blocksize=self.block, dtype=dtype,
                               always_2d=True):
            yield block
            done += len(block)
            if self.realtime:
                ahead = t0 + done / file_rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)


def import_sounddevice(use: str = "microphone input") -> Any:
    """The sounddevice module, or :class:`MissingDependency` naming ``use`` (what needed
    it: ``"microphone input"``, ``"playback"``) and how to install it."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # OSError: PortAudio library missing
        raise MissingDependency(
            f"{use} needs sounddevice and PortAudio ({exc}): "
            "pip install 'earshot[mic]' (and apt-get install libportaudio2)"
        ) from None
    return sounddevice


def list_devices() -> list[dict[str, Any]]:
    sd = import_sounddevice()
    return [
        {"index": i, "name": d["name"], "channels": d["max_input_channels"],
         "rate": d["default_samplerate"]}
        for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0
    ]


class MicSource:
    """Blocks from a microphone via sounddevice, until the iterator is closed.

    The device is opened at its own rate with (up to) its own channels; ``rate`` and
    ``channels`` are what the stream gets, converted by a :class:`Conditioner` (soxr, a
    proper downmix). ``device`` is an index or (part of) a name.

    The PortAudio callback runs on its own thread and only hands blocks to the event loop;
    if the loop falls far behind (``max_blocks`` queued), blocks are dropped and counted in
    :attr:`overflows` rather than blocking the audio thread.
    """

    def __init__(self, *, device: int | str | None = None, rate: int | None = None,
                 channels: int = 1, frame_ms: float = 20.0, max_blocks: int = 3000) -> None:
        self._sd = import_sounddevice()
        device = resolve_device(device, list_devices())
        dev = self._sd.query_devices(device, "input")
        self.device = device
        self.device_rate = int(dev["default_samplerate"])
        # open as many channels as the stream needs (at least stereo, where the device has
        # it, so a mono stream is a true mix), never more than the device has
        self.device_channels = max(1, min(int(dev["max_input_channels"]), max(channels, 2)))
        rate = int(rate or self.device_rate)
        self.conditioner = Conditioner(self.device_rate, self.device_channels, rate, channels)
        self.info = SourceInfo(rate, channels, "f32", None, str(dev["name"]))
        self.block = max(1, int(self.device_rate * frame_ms / 1000))
        self.max_blocks = max_blocks
        self.overflows = 0

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[np.ndarray] = asyncio.Queue(self.max_blocks)

        def put(block: np.ndarray) -> None:
            try:
                queue.put_nowait(block)
            except asyncio.QueueFull:
                self.overflows += 1

        def callback(indata: np.ndarray, frames: int, t: Any, status: Any) -> None:
            loop.call_soon_threadsafe(put, indata.copy())

        stream = self._sd.InputStream(
            samplerate=self.device_rate, channels=self.device_channels, dtype="float32",
            blocksize=self.block, device=self.device, callback=callback,
        )
        cond = self.conditioner
        with stream:
            while True:
                block = await queue.get()
                y = block if cond.identity else cond.process(block)
                if len(y):
                    yield y


def block_level_db(block: np.ndarray) -> float:
    """RMS level of a block in dBFS (floored at -120), for live meters in the terminal."""
    x = block.astype(np.float32)
    if block.dtype == np.int16:
        x /= 32768.0
    rms = float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0
    return max(-120.0, 20.0 * np.log10(rms)) if rms > 0 else -120.0
