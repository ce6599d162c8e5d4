"""``spectrogram``: log-mel frames in compact batches for live drawing.

Each event carries ``frames`` x ``mels`` values, row by row, as base64 of unsigned bytes:
byte ``b`` stands for ``floor_db + b / 255 * (ceil_db - floor_db)`` dB (mel power in dB).
"""

from __future__ import annotations

import base64

import numpy as np

from earshot.dsp.mel import LogMelSpectrogram
from earshot.processors.base import Chunk, Event, Processor
from earshot.processors.schema import SPECTROGRAM


class Spectrogram(Processor):
    name = "spectrogram"
    client_options = SPECTROGRAM
    rate = 16000

    def __init__(self, mels: int = 64, win_ms: float = 25.0, hop_ms: float = 10.0,
                 floor_db: float = -100.0, ceil_db: float = 20.0, max_frames: int = 50) -> None:
        self.max_frames = max_frames
        self.mels, self.win_ms, self.hop_ms = mels, win_ms, hop_ms
        self.floor_db, self.ceil_db = floor_db, ceil_db
        self._mel: LogMelSpectrogram | None = None

    def process(self, chunk: Chunk) -> list[Event]:
        if self._mel is None:
            self._mel = LogMelSpectrogram(chunk.rate, self.mels, self.win_ms, self.hop_ms,
                                          offset=chunk.offset)
        frames = self._mel.feed(chunk.samples)
        if frames is None or frames.n_frames == 0:
            return []
        db = frames.data * 10.0
        span = self.ceil_db - self.floor_db
        q = np.clip(np.rint((db - self.floor_db) * (255.0 / span)), 0, 255).astype(np.uint8)
        out = []
        for i in range(0, len(q), self.max_frames):  # a processor catching up: several events
            part = q[i : i + self.max_frames]
            out.append(self.event(
                "spectrogram", (frames.offset + i * frames.hop) / chunk.rate, frames=len(part),
                mels=self.mels, hop=frames.hop / chunk.rate, floor_db=self.floor_db,
                ceil_db=self.ceil_db, data=base64.b64encode(part.tobytes()).decode("ascii"),
            ))
        return out


def decode_spectrogram(event: Event) -> np.ndarray:
    """The dB values of a ``spectrogram`` event, shaped (frames, mels)."""
    q = np.frombuffer(base64.b64decode(event["data"]), np.uint8).astype(np.float32)
    span = event["ceil_db"] - event["floor_db"]
    db: np.ndarray = (event["floor_db"] + q * (span / 255.0)).reshape(event["frames"],
                                                                      event["mels"])
    return db
