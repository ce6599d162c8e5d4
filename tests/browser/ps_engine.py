"""A minimal pocketsphinx engine for the browser tests (``--asr-engine ps_engine:Engine``):
the wheel's en-US model, one decoder per thread, whole-utterance decodes."""

from __future__ import annotations

import threading

import numpy as np

from earshot.asr.engine import EngineConfig, Transcription, Word


class Engine:
    name = "pocketsphinx-test"

    def __init__(self, cfg: EngineConfig) -> None:
        import pocketsphinx  # noqa: F401  (fail at start when absent)

        self.cfg = cfg
        self._local = threading.local()

    def _decoder(self) -> object:
        d = getattr(self._local, "decoder", None)
        if d is None:
            from pocketsphinx import Decoder

            d = self._local.decoder = Decoder(loglevel="FATAL")
        return d

    def transcribe(self, audio: np.ndarray, *, final: bool) -> Transcription:
        d = self._decoder()
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        d.start_utt()
        d.process_raw(pcm, full_utt=True)
        d.end_utt()
        words: list[Word] = []
        for seg in d.seg():
            w = seg.word
            if w.startswith(("<", "[")) or w == "<sil>":
                continue
            w = w.split("(")[0]
            words.append(Word(w, seg.start_frame / 100, seg.end_frame / 100,
                              float(min(1.0, max(0.0, 10 ** (seg.prob / 10000))))))
        return Transcription(" ".join(x.w for x in words), tuple(words), "en",
                             len(audio) / 16000)
