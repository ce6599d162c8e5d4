"""Pure, I/O-free streaming DSP cores: level meter, log-mel spectrogram, voice activity.

Positions are integer frame offsets in each core's own sample-rate timeline. Results do
not depend on how the input is chunked. onnxruntime is imported on first VAD model load.
"""

from earshot.dsp.level import LevelMeter, LevelReading
from earshot.dsp.mel import LogMelSpectrogram, MelFrames
from earshot.dsp.vad import SileroModel, StreamingVad, VadEvent, VadResult, VadSegmenter

__all__ = [
    "LevelMeter",
    "LevelReading",
    "LogMelSpectrogram",
    "MelFrames",
    "SileroModel",
    "StreamingVad",
    "VadEvent",
    "VadResult",
    "VadSegmenter",
]
