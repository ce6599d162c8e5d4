"""``asr``: live speech-to-text — interim hypotheses while someone speaks, one final per
utterance with word timestamps, all stamped in stream time.

Utterances come from a silero VAD (the same one as the ``vad`` processor), each decoded
with ``lead_in`` seconds of audio before its start. While speech goes on, a hypothesis of
the utterance so far comes every ``interim_interval`` seconds (an incremental engine is fed
only the new audio); words two consecutive hypotheses agree on, except the last
``holdback`` (2 for incremental engines, whose final pass revises them, else 0), become the
``stable`` prefix. When the utterance ends, the final is decoded (the incremental decoder
finished, or the whole utterance decoded again) and keeps the stable prefix its interims
promised. A two-pass engine (PocketSphinx by default: the final is a second decode of the
whole utterance, with fewer errors than the interims) promises nothing: its interims'
``stable`` is empty unless the ``holdback`` option is given, and its final carries the
first pass's text and both passes' seconds::

    {"type": "transcript", "final": true, "text": "...", "decode": 0.52,
     "first_pass": {"text": "...", "decode": 0.61}, "second_pass": {"decode": 0.48}, ...}

(``first_pass.decode``: the seconds the incremental decoding of the utterance took in all,
spread over the utterance while it was spoken; ``second_pass.decode``: the whole-utterance
decode, after its end and part of the final's ``decode`` unless it was speculative.) The
second pass starts speculatively when the VAD sees silence begin (its ``tentative_end``),
on the audio up to where the utterance will end if the silence lasts; the final uses it
when the VAD confirms that end (``"second_pass": {"decode": 0.13, "speculative": true,
"misses": 0, "wasted": 0.0}``: ``speculative`` whether this final used it, ``misses`` and
``wasted`` the speculative decodes of the utterance thrown away because speech resumed,
and their seconds). Speculation runs only on a spare decoder (asr/scheduler.py).

Decoding runs on the server's shared
:class:`~earshot.asr.scheduler.AsrScheduler`, never in this processor's own thread, so a slow
model delays transcripts, never audio, levels or speech events.

Event::

    {"type": "transcript", "final": false, "text": "hello wor", "stable": "hello",
     "start": 1.02, "end": 2.50, "segment": 0, "queue": 0.01, "decode": 0.12,
     "words": [{"w": "hello", "start": 1.05, "end": 1.40, "p": 0.93}, ...]}

``queue`` and ``decode`` are the seconds the decode waited for the model and took
(``decode`` is of the whole batch when several streams were decoded in one call).

When the decoders fall behind, interims go first (a newer one replaces one still waiting,
and finals are taken before any interim); a ``lag`` event says so, at most once a second:
``{"type": "lag", "processor": "asr", "lag": 2.4, "interims_skipped": 3, "message": ...}``
(``lag``: how long the last decode waited; sent when that reaches ``lag_warning`` seconds
or when two or more interims were skipped since the last one).

The spoken language comes from the ``language`` option, else the ``start`` message's
``language`` (a BCP 47 tag such as ``en-US``; its primary subtag is used). An engine that
cannot decode it (PocketSphinx is English only) keeps its own language, and the stream gets
a ``warning`` with code ``language_unsupported`` once, at start.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from earshot.asr.engine import is_two_pass, language_problem, primary_language
from earshot.asr.policy import (
    RATE,
    DecodeRequest,
    LocalAgreement,
    UtterancePolicy,
    stable_span,
)
from earshot.asr.scheduler import AsrScheduler, JobResult
from earshot.dsp.vad import StreamingVad
from earshot.errors import ProcessorError
from earshot.processors.base import Chunk, Event, Processor, StreamInfo
from earshot.processors.schema import ASR


class Asr(Processor):
    name = "asr"
    rate = RATE
    client_options = ASR
    #: set by the server when a model is configured (one model for every stream)
    scheduler: ClassVar[AsrScheduler | None] = None
    finalizes = True

    def __init__(self, interim_interval: float = 0.5, max_utterance: float = 30.0,
                 threshold: float = 0.5, min_silence_ms: float = 300.0,
                 min_speech_ms: float = 250.0, pad_ms: float = 30.0,
                 lag_warning: float = 2.0, final_timeout: float = 60.0,
                 language: str | None = None, holdback: int | None = None,
                 lead_in: float = 0.1, speculate_after: float = 0.0) -> None:
        if self.scheduler is None:
            raise ProcessorError("speech-to-text is not configured: start the server without "
                                 "--asr-engine none, or with --asr-model NAME_OR_PATH")
        if language is not None and (not isinstance(language, str) or not language.strip()):
            raise ProcessorError("the asr option 'language' must be a tag such as 'en-US'")
        self.language_option = language
        #: interims promise a stable prefix (not by default when the final is a second pass)
        self.promise = holdback is not None or not is_two_pass(self.scheduler.engine)
        if holdback is None:  # first-pass hypotheses of incremental engines get revised
            holdback = 2 if self.scheduler.incremental else 0
        self.holdback = int(holdback)
        self.language: str | None = None  # what decodes are asked for (None: the engine's)
        self.vad_options: dict[str, Any] = dict(
            threshold=threshold, min_silence_ms=min_silence_ms, min_speech_ms=min_speech_ms,
            pad_ms=pad_ms)
        self.policy = UtterancePolicy(interim_interval=interim_interval,
                                      max_utterance=max_utterance, lead_in=lead_in)
        self.lag_warning = lag_warning
        #: decode the second pass while the VAD waits out its silence (two-pass engines),
        #: once the silence has lasted ``speculate_after`` seconds (0: at once)
        self.speculate = self.scheduler.speculates
        self.speculate_after = int(speculate_after * RATE)
        self.final_timeout = final_timeout
        self._vad: StreamingVad | None = None
        self._agree: dict[int, LocalAgreement] = {}
        self._finalized: set[int] = set()
        self._cond = threading.Condition()
        self._finals_out = 0  # finals asked for, not yet delivered
        self._shown_version = 0  # newest interim delivered (several workers may race)
        self._last_lag_warning = -1e9
        #: finalize requests in order: (segment cut or None, finals still awaited, t)
        self._finalizing: list[tuple[int | None, set[int], float]] = []
        self._pending_finals: set[int] = set()  # segments whose final is being decoded
        self._cut: set[int] = set()  # segments ended by finalize, their final not yet out
        self._skipped = 0  # interims skipped since the last lag event (decoders saturated)

    def start(self, info: StreamInfo) -> None:
        super().start(info)
        self.stream = info.id
        assert self.scheduler is not None
        self.scheduler.warm()
        asked = self.language_option or info.language
        if asked:
            assert self.scheduler is not None
            problem = language_problem(self.scheduler.engine, asked)
            if problem is None:
                self.language = primary_language(asked)
            else:
                self.emit([self.event("warning", 0.0, code="language_unsupported",
                                      language=asked, message=problem)])

    def process(self, chunk: Chunk) -> list[Event]:
        if self._vad is None:
            self._vad = StreamingVad(chunk.rate, **self.vad_options)
        found = self._vad.feed(chunk.samples, chunk.offset).events
        # the policy gets the chunk up to each VAD decision, then the decision: a chunk
        # longer than the policy's history (a stream sent faster than real time) must not
        # push an utterance's start out of its buffer before the start is known
        requests: list[DecodeRequest] = []
        x, done = chunk.samples, 0
        for e in found:
            cut = min(max(e.offset - chunk.offset, done), len(x))
            if cut > done:
                requests += self.policy.feed(x[done:cut], chunk.offset + done)
                done = cut
            if e.kind == "speech_start":
                requests += self.policy.speech_start(e.offset)
            else:
                requests += self.policy.speech_end(e.offset)
        if done < len(x):
            requests += self.policy.feed(x[done:], chunk.offset + done)
        end = self._vad.tentative_end  # silence began: the utterance may end there
        if self.speculate and end is not None \
                and chunk.offset + len(x) - end >= self.speculate_after:
            spec = self.policy.speculate(end)
            if spec is not None:
                requests.append(spec)
        for r in requests:
            self._submit(r)
        return []

    def finalize(self) -> list[Event]:
        """End the utterance being spoken now: its final (``"finalize": true``) is decoded
        at once; then one ``finalized`` event (``segment`` null when nothing was said),
        after every final asked for before it."""
        if self._vad is not None:  # its speech ends here; a fresh VAD goes on
            self._vad.flush()
            self._vad = None
        segment = self.policy.current
        requests = self.policy.speech_end(self.policy.position)
        t = self.policy.position / RATE
        if not requests:
            segment = None
        with self._cond:
            if segment is not None:
                self._cut.add(segment)
        for r in requests:
            self._submit(r)
        with self._cond:
            self._finalizing.append((segment, set(self._pending_finals), t))
        return self._finalized_ready()

    def _finalized_ready(self) -> list[Event]:
        """The ``finalized`` events now due, in the order they were asked for."""
        out: list[Event] = []
        with self._cond:
            while self._finalizing and not self._finalizing[0][1]:
                segment, _, t = self._finalizing.pop(0)
                out.append(self.event("finalized", t, segment=segment))
        return out

    def flush(self) -> list[Event]:
        if self._vad is not None:
            for e in self._vad.flush():
                if e.kind == "speech_end":
                    for r in self.policy.speech_end(e.offset):
                        self._submit(r)
        for r in self.policy.flush():
            self._submit(r)
        with self._cond:  # the stream ends: wait for its finals (the runner bounds this)
            self._cond.wait_for(lambda: self._finals_out == 0, self.final_timeout)
        assert self.scheduler is not None
        self.scheduler.forget(self.stream)
        return []

    def _submit(self, request: DecodeRequest) -> None:
        assert self.scheduler is not None
        if request.final:
            with self._cond:
                self._finals_out += 1
                self._pending_finals.add(request.segment)
        self.scheduler.submit(self.stream, request, self._done, language=self.language)

    def _done(self, result: JobResult) -> None:
        """On a scheduler thread: turn a decode into events."""
        req = result.request
        if req.speculative:
            return  # the scheduler keeps it for the final (never called for it, in fact)
        events: list[Event] = []
        try:
            events = self._events(result)
        finally:
            if req.final:
                with self._cond:
                    self._pending_finals.discard(req.segment)
                    for _, awaited, _ in self._finalizing:
                        awaited.discard(req.segment)
                    if req.segment in self._cut:
                        self._cut.discard(req.segment)
                        for e in events:
                            if e.get("type") == "transcript":
                                e["finalize"] = True
                    self._finals_out -= 1
                    self._cond.notify_all()
                events += self._finalized_ready()
        if events:
            self.emit(events)

    def _events(self, result: JobResult) -> list[Event]:
        req, tr = result.request, result.transcription
        out: list[Event] = []
        if not req.final and tr is None and result.error is None:
            self._skipped += 1  # superseded before a decoder was free: interims go first
        late = result.wait >= self.lag_warning
        if (late or self._skipped >= 2) and req.end / RATE - self._last_lag_warning >= 1.0:
            self._last_lag_warning = req.end / RATE
            skipped, self._skipped = self._skipped, 0
            why = f"{result.wait:.1f} s behind" if late else "saturated"
            more = f"; {skipped} interims skipped, finals first" if skipped else ""
            out.append(self.event("lag", req.end / RATE, lag=round(result.wait, 3),
                                  interims_skipped=skipped,
                                  message=f"speech-to-text is {why}{more}"))
        agreed: LocalAgreement | None = None
        if req.final:
            self._finalized.add(req.segment)
            agreed = self._agree.pop(req.segment, None)
        elif req.segment in self._finalized or tr is None or req.version < self._shown_version:
            return out  # stale: its utterance has a final, it was skipped, or a newer one won
        else:
            self._shown_version = req.version
        if result.error is not None:
            out.append(self.event("error", req.start / RATE, code="asr_failed",
                                  segment=req.segment, message=result.error))
            return out
        if tr is None:
            return out
        offset = req.start / RATE  # of the audio decoded, which has a lead-in
        speech = req.speech_start / RATE
        words = [{"w": w.w, "start": round(max(offset + w.start, speech), 3),
                  "end": round(max(offset + w.end, speech), 3), "p": round(w.p, 3)}
                 for w in tr.words]
        text = tr.text
        if not req.final and self.promise:
            agreed = self._agree.setdefault(req.segment, LocalAgreement(self.holdback))
            agreed.update([str(w["w"]) for w in words])
        if agreed is not None and agreed.stable:  # interims and finals keep what was promised
            words, text = _keep_stable(agreed.stable, words, text, speech, req.end / RATE)
        event = self.event("transcript", speech, final=req.final, text=text,
                           start=round(speech, 3), end=round(req.end / RATE, 3),
                           segment=req.segment, words=words,
                           queue=round(result.wait, 4), decode=round(result.infer, 4))
        if result.batch > 1:
            event["batch"] = result.batch
        if tr.first_text is not None:
            event["first_pass"] = {"text": tr.first_text, "decode": tr.first_decode}
            event["second_pass"] = {"decode": tr.second_decode}
            if result.speculative is not None:
                event["second_pass"].update(speculative=result.speculative,
                                            misses=result.spec_misses,
                                            wasted=result.spec_wasted)
        if not req.final:
            event["stable"] = " ".join(agreed.stable) if agreed is not None else ""
        else:
            event["stable"] = text
            if tr.language:
                event["language"] = tr.language
        out.append(event)
        return out


def _keep_stable(stable: list[str], words: list[dict[str, Any]], text: str, start: float,
                 end: float) -> tuple[list[dict[str, Any]], str]:
    """A hypothesis's words with the utterance's stable prefix kept (a promise to the
    client: stable words are never taken back, by a later interim or by the final).
    Unchanged when the hypothesis agrees."""
    j = stable_span(stable, [w["w"] for w in words])
    head = words[:j]
    if [w["w"] for w in head] == stable:
        return words, text
    if len(head) == len(stable):  # substitutions only: keep the final's times
        kept = [{**w, "w": s} for w, s in zip(head, stable, strict=True)]
    else:  # spread the stable words over the time the replaced words took
        a = head[0]["start"] if head else start
        b = head[-1]["end"] if head else (words[0]["start"] if words else end)
        step = (b - a) / len(stable)
        kept = [{"w": s, "start": round(a + i * step, 3), "end": round(a + (i + 1) * step, 3),
                 "p": 0.5} for i, s in enumerate(stable)]
    merged = kept + words[j:]
    return merged, " ".join(w["w"] for w in merged)
