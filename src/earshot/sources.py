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


@dataclass
class SourceInfo:
    rate: int
    channels: int
    format: SampleFormat
    frames: int | None = None  # total, when known
    label: str = ""


class FileSource:
    """Blocks of a sound file; with ``realtime=True`` paced like a live microphone."""

    def __init__(self, path: str | Path, *, realtime: bool = False, frame_ms: float = 20.0,
                 format: SampleFormat | None = None) -> None:
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

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        import soundfile as sf

        dtype = "int16" if self.info.format == "s16" else "float32"
        t0 = time.monotonic()
        done = 0
        for block in sf.blocks(str(self.path), blocksize=self.block, dtype=dtype,
                               always_2d=True):
            yield block
            done += len(block)
            if self.realtime:
                ahead = t0 + done / self.info.rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)


def import_sounddevice() -> Any:
    try:
        import sounddevice
    except (ImportError, OSError) as exc:  # OSError: PortAudio library missing
        raise MissingDependency(
            f"microphone input needs sounddevice and PortAudio ({exc}): "
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

    The PortAudio callback runs on its own thread and only hands blocks to the event loop;
    if the loop falls far behind (``max_blocks`` queued), blocks are dropped and counted in
    :attr:`overflows` rather than blocking the audio thread.
    """

    def __init__(self, *, device: int | str | None = None, rate: int | None = None,
                 channels: int = 1, frame_ms: float = 20.0, max_blocks: int = 3000) -> None:
        self._sd = import_sounddevice()
        dev = self._sd.query_devices(device, "input")
        self.device = device
        rate = int(rate or dev["default_samplerate"])
        self.info = SourceInfo(rate, channels, "f32", None, str(dev["name"]))
        self.block = max(1, int(rate * frame_ms / 1000))
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
            samplerate=self.info.rate, channels=self.info.channels, dtype="float32",
            blocksize=self.block, device=self.device, callback=callback,
        )
        with stream:
            while True:
                yield await queue.get()


def block_level_db(block: np.ndarray) -> float:
    """RMS level of a block in dBFS (floored at -120), for live meters in the terminal."""
    x = block.astype(np.float32)
    if block.dtype == np.int16:
        x /= 32768.0
    rms = float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0
    return max(-120.0, 20.0 * np.log10(rms)) if rms > 0 else -120.0
