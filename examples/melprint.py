"""A processor in a dozen lines: print a coarse log-mel picture of the stream, live.

    earshot serve --processor examples.melprint:MelPrint          # every stream, in-process
    earshot worker examples.melprint:MelPrint --url ws://host:8000  # or from another machine
"""

from __future__ import annotations

import numpy as np

from earshot.dsp.mel import LogMelSpectrogram
from earshot.processors import Chunk, Event, Processor

SHADES = " .:-=+*#%@"


class MelPrint(Processor):
    name = "melprint"
    rate = 16000  # earshot resamples for us; chunks arrive mono float32

    def __init__(self, mels: int = 24) -> None:
        self.mels = mels
        self.mel: LogMelSpectrogram | None = None

    def process(self, chunk: Chunk) -> list[Event]:
        if self.mel is None:
            self.mel = LogMelSpectrogram(chunk.rate, n_mels=self.mels, offset=chunk.offset)
        frames = self.mel.feed(chunk.samples)
        if frames is None or frames.n_frames == 0:
            return []
        level = np.clip((frames.data.mean(axis=0) + 8) / 8, 0, 0.999)  # log10 power → 0..1
        picture = "".join(SHADES[int(v * len(SHADES))] for v in level)
        print(f"{chunk.t:8.2f}s |{picture}|", flush=True)
        return [self.event("melprint", frames.offset / chunk.rate, picture=picture)]
