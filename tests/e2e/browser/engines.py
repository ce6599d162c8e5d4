"""Speech-to-text engines for the browser tests (``--asr-engine engines:Deaf``)."""

from __future__ import annotations

import numpy as np

from earshot.asr.engine import EngineConfig, Transcription


class Deaf:
    """Hears speech, recognises no word: every utterance ends in an empty final."""

    name = "deaf"

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg

    def transcribe(self, audio: np.ndarray, *, final: bool) -> Transcription:
        return Transcription("", (), "en", len(audio) / 16000)
