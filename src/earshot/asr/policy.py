"""When to decode what: the streaming speech-to-text policy, free of I/O and clocks.

:class:`UtterancePolicy` follows one stream at 16 kHz. It is fed audio (with offsets) and
the VAD's ``speech_start``/``speech_end`` decisions and answers with decode requests:

* an **interim** every ``interim_interval`` seconds of audio while an utterance goes on —
  the utterance so far;
* one **final** when the utterance ends — the whole utterance;
* a **speculative** request (:meth:`UtterancePolicy.speculate`) when the VAD sees silence
  begin: the whole utterance up to where it will end if the silence lasts, decoded while the
  VAD waits to be sure; its result stands for the final when the final's audio is the same
  (same segment, start and end), and is thrown away when speech resumes;
* utterances longer than ``max_utterance`` are cut at their quietest 10 ms in the last
  ``cut_search`` seconds: the part before the cut gets its final, the rest continues as the
  next utterance.

:class:`LocalAgreement` stabilizes interim hypotheses: words that two consecutive
hypotheses agree on become a stable prefix that later interims never take back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

RATE = 16000


@dataclass(frozen=True, slots=True)
class DecodeRequest:
    segment: int  # utterance number in this stream
    start: int  # frame offset (16 kHz) of audio[0]
    audio: np.ndarray  # float32 mono 16 kHz
    final: bool
    version: int  # increases with every request of the stream (newer supersedes older)
    lead: int = 0  # frames of audio[0:lead] before the speech start (context for the engine)
    speculative: bool = False  # the final's audio if the utterance ends here (final False)

    @property
    def end(self) -> int:
        return self.start + len(self.audio)

    @property
    def speech_start(self) -> int:
        return self.start + self.lead


@dataclass
class _Utterance:
    segment: int
    start: int  # speech start (frame offset)
    last_interim: int  # frame offset at which the last interim was requested
    lead: int = 0  # frames of audio before ``start`` given to the engine
    speculated: int | None = None  # end of the last speculative request


@dataclass
class UtterancePolicy:
    interim_interval: float = 0.5
    max_utterance: float = 30.0
    cut_search: float = 5.0
    history: float = 2.0  # audio kept before a speech_start (the VAD reports starts late)
    lead_in: float = 0.0  # seconds of audio before each speech start included in requests
    segment: int = 0  # number of the next utterance
    _buf: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    _buf_start: int = 0
    _utt: _Utterance | None = None
    _version: int = 0

    @property
    def position(self) -> int:
        return self._buf_start + self._buf.size

    @property
    def current(self) -> int | None:
        """The segment number of the utterance in progress (None: none is)."""
        return self._utt.segment if self._utt is not None else None

    def feed(self, samples: np.ndarray, offset: int) -> list[DecodeRequest]:
        """Audio at ``offset`` (contiguous with what came before, or a new start)."""
        if self._buf.size == 0 or offset != self.position:
            self._buf, self._buf_start = np.zeros(0, np.float32), offset
        self._buf = np.concatenate((self._buf, samples.astype(np.float32, copy=False)))
        out: list[DecodeRequest] = []
        utt = self._utt
        if utt is not None:
            limit = int(self.max_utterance * RATE)
            while self.position - utt.start >= limit:
                out.append(self._cut(utt))
                utt = self._utt
                assert utt is not None
            step = int(self.interim_interval * RATE)
            if self.position - utt.last_interim >= step:
                utt.last_interim = self.position
                out.append(self._request(utt, self.position, final=False))
        self._trim()
        return out

    def speech_start(self, offset: int) -> list[DecodeRequest]:
        out = self.speech_end(offset) if self._utt is not None else []
        start = max(offset, self._buf_start)
        lead = min(int(self.lead_in * RATE), start - self._buf_start)
        self._utt = _Utterance(self.segment, start, start, lead)
        self.segment += 1
        return out

    def speech_end(self, offset: int) -> list[DecodeRequest]:
        utt, self._utt = self._utt, None
        if utt is None:
            return []
        end = min(max(offset, utt.start), self.position)
        if end <= utt.start:
            return []
        return [self._request(utt, end, final=True)]

    def speculate(self, end: int) -> DecodeRequest | None:
        """The VAD expects the utterance to end at ``end`` (silence began; it is not sure
        yet): a speculative request for the audio the final will have if it does (None: no
        utterance, nothing to decode, or the same end was asked for already)."""
        utt = self._utt
        if utt is None or end == utt.speculated:
            return None
        end = min(end, self.position)
        if end <= utt.start:
            return None
        utt.speculated = end
        return self._request(utt, end, final=False, speculative=True)

    def flush(self) -> list[DecodeRequest]:
        """End of stream: an utterance still open gets its final."""
        return self.speech_end(self.position)

    def _request(self, utt: _Utterance, end: int, *, final: bool,
                 speculative: bool = False) -> DecodeRequest:
        self._version += 1
        first = utt.start - utt.lead
        a, b = first - self._buf_start, end - self._buf_start
        return DecodeRequest(utt.segment, first, self._buf[a:b].copy(), final, self._version,
                             utt.lead, speculative)

    def _cut(self, utt: _Utterance) -> DecodeRequest:
        """Close ``utt`` at its quietest point near the cap; continue in a new utterance."""
        cap = utt.start + int(self.max_utterance * RATE)
        lo = max(utt.start + RATE, cap - int(self.cut_search * RATE))
        f = RATE // 100
        region = self._buf[lo - self._buf_start : cap - self._buf_start]
        n = region.size // f
        if n:
            energy = np.square(region[: n * f].reshape(n, f), dtype=np.float64).mean(axis=1)
            cut = lo + int(np.argmin(energy)) * f + f // 2
        else:
            cut = cap
        request = self._request(utt, cut, final=True)
        self._utt = _Utterance(self.segment, cut, cut)
        self.segment += 1
        return request

    def _trim(self) -> None:
        keep_from = self.position - int(self.history * RATE)
        if self._utt is not None:
            keep_from = min(keep_from, self._utt.start - self._utt.lead)
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from


_NORM = re.compile(r"[^\w']+")


def _norm(word: str) -> str:
    return _NORM.sub("", word.lower())


class LocalAgreement:
    """Stable prefix of successive hypotheses of one utterance (LocalAgreement-2).

    ``holdback`` words at the end of a hypothesis never become stable, even when two
    hypotheses agree on them: an engine whose final pass revises its partial hypotheses
    (PocketSphinx) is most often wrong about the last words it heard.
    """

    def __init__(self, holdback: int = 0) -> None:
        self.stable: list[str] = []
        self.holdback = max(0, holdback)
        self._prev: list[str] = []

    def update(self, words: list[str]) -> tuple[list[str], list[str]]:
        """Returns (stable, unstable) words for this hypothesis."""
        agree = 0
        for a, b in zip(self._prev, words, strict=False):
            if _norm(a) != _norm(b):
                break
            agree += 1
        agree = min(agree, len(words) - self.holdback)
        if agree > len(self.stable) and [_norm(w) for w in words[: len(self.stable)]] == [
                _norm(w) for w in self.stable]:
            self.stable = words[:agree]
        self._prev = words
        k = len(self.stable)
        if [_norm(w) for w in words[:k]] == [_norm(w) for w in self.stable]:
            return list(self.stable), words[k:]
        return list(self.stable), words  # the hypothesis disagrees with the stable prefix


def stable_span(stable: list[str], final: list[str]) -> int:
    """How many leading words of ``final`` the ``stable`` prefix stands for.

    A final must keep the stable prefix its interims promised (a revising engine, e.g.
    PocketSphinx's second pass, may decode the start of an utterance differently at the
    end). The prefix replaces the ``j`` leading final words it aligns with best (word-level
    edit distance, ties to the longer span); ``j == len(stable)`` with equal words when
    the final agrees.
    """
    if not stable:
        return 0
    ref = [_norm(w) for w in stable]
    hyp = [_norm(w) for w in final]
    from earshot.asr.wer import distances_to_prefixes

    prev = distances_to_prefixes(ref, hyp)
    best = min(prev)
    return max(j for j, d in enumerate(prev) if d == best)
