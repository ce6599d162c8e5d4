"""Batched VAD: score_batch and the VadBatcher core give each stream exactly what it gets alone."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest
import soundfile as sf

from earshot.dsp.vad import SileroModel, StreamingVad, VadEvent, score_batch
from earshot.processors.base import StreamInfo
from earshot.processors.builtin.vad import Vad
from earshot.processors.builtin.vad_batch import VadBatcher, VadJob, batcher_for
from earshot.processors.runner import StreamPipeline
from helpers import FIXTURES

RATE = 16000


def test_score_batch_equals_each_stream_alone(speech_16k: np.ndarray) -> None:
    # five streams: different parts of the speech, different numbers of windows (one none)
    starts, counts = [0, 12_345, 13_000, 40_000, 7], [60, 37, 0, 45, 1]
    alone = [SileroModel() for _ in starts]
    batched = [SileroModel() for _ in starts]
    for rnd in range(3):  # state and context carry over between batches
        wins = [speech_16k[s + rnd * 512 * n : s + (rnd + 1) * 512 * n].reshape(n, 512)
                for s, n in zip(starts, counts, strict=True)]
        got = score_batch(batched, wins)
        for m, w, g in zip(alone, wins, got, strict=True):
            want = m.score(w)
            assert g.shape == want.shape and g.dtype == np.float32
            assert np.abs(g - want).max(initial=0) <= 1e-6
        assert max(float(g.max(initial=0)) for g in got) > 0.9  # there is speech in there
    for a, b in zip(alone, batched, strict=True):
        assert np.allclose(a._state, b._state, atol=1e-6)
        assert np.array_equal(a._x[:, :64], b._x[:, :64])  # the context carried over


def test_score_batch_rejects_mixed_rates() -> None:
    with pytest.raises(ValueError):
        score_batch([SileroModel(), SileroModel(rate=8000)],
                    [np.zeros((1, 512), np.float32), np.zeros((1, 256), np.float32)])


def _events(vad: StreamingVad, x: np.ndarray, cuts: list[int], offset: int) -> list[VadEvent]:
    out: list[VadEvent] = []
    for a, b in itertools.pairwise(cuts):
        out += vad.feed(x[a:b], offset + a).events
    return out + vad.flush()


def test_batcher_core_equals_unbatched_with_streams_joining_and_leaving(
        speech_16k: np.ndarray) -> None:
    """Six streams of different lengths, offsets and chunkings, joining and leaving at
    different rounds: the same events and probabilities as each stream fed alone."""
    rng = np.random.default_rng(7)
    x = speech_16k
    plans = []  # (audio, stream offset, cut points, first round)
    for k in range(6):
        audio = x[k * 3_000 : x.size - k * 11_000]
        step = [1_600, 4_800, 999, 16_000, 320, 2_500][k]
        cuts = [*range(0, audio.size, step), audio.size]
        offset = [0, 48_000, 5, 0, 123_456, 16_000][k]
        plans.append((audio, offset, cuts, int(rng.integers(0, 20))))
    want = [_events(StreamingVad(), a, c, o) for a, o, c, _ in plans]
    vads = [StreamingVad() for _ in plans]
    got: list[list[VadEvent]] = [[] for _ in plans]
    probs: list[list[np.ndarray]] = [[] for _ in plans]
    b = VadBatcher()
    rnd = 0
    while True:
        jobs, who = [], []
        for k, (audio, off, cuts, first) in enumerate(plans):
            i = rnd - first
            if 0 <= i < len(cuts) - 1:
                jobs.append(VadJob(vads[k], audio[cuts[i]:cuts[i + 1]], off + cuts[i]))
                who.append(k)
            elif i == len(cuts) - 1:
                got[k] += vads[k].flush()  # left: the others go on
        if not jobs and rnd > 20:
            break
        for k, res in zip(who, b.run_jobs(jobs), strict=True):
            assert not isinstance(res, Exception), res
            got[k] += res.events
            probs[k].append(res.probs)
        rnd += 1
    assert b.stats.calls < 0.75 * b.stats.windows  # several windows per ONNX call
    for k, (audio, off, _, _) in enumerate(plans):
        assert got[k] == want[k]
        assert len(want[k]) >= 2 and want[k][0].offset >= off - 1600  # speech, in stream time
        alone = SileroModel().score(audio[: audio.size // 512 * 512])
        assert np.abs(np.concatenate(probs[k]) - alone).max() <= 1e-6


def test_a_failing_stream_does_not_harm_the_others(speech_16k: np.ndarray) -> None:
    x = speech_16k[:64_000]
    good, ref = StreamingVad(), StreamingVad()
    bad_input, bad_model = StreamingVad(), StreamingVad()
    bad_model.model._state = np.zeros((2, 1, 64), np.float32)  # breaks the batched call
    b = VadBatcher()
    want: list[VadEvent] = []
    got: list[VadEvent] = []
    for i in range(0, x.size, 8_000):
        jobs = [VadJob(good, x[i:i + 8_000], i), VadJob(bad_input, x[:100], 999_999 + i),
                VadJob(bad_model, x[i:i + 8_000], i)]
        res = b.run_jobs(jobs)
        if i:  # the first feed of bad_input sets its start; the next ones are not contiguous
            assert isinstance(res[1], ValueError) and "non-contiguous" in str(res[1])
        assert isinstance(res[2], Exception)  # scored alone, it fails alone
        assert not isinstance(res[0], Exception)
        got += res[0].events
        want += ref.feed(x[i:i + 8_000], i).events
    assert got == want and len(got) >= 1


async def test_pipelines_batched_equal_threaded() -> None:
    """Four 48 kHz streams through real pipelines at once: the batched Vad gives the events of
    the threaded one (process() on the executor), with the checkpoint semantics intact."""
    x, rate = sf.read(FIXTURES / "speech_48k.wav", dtype="float32", always_2d=True)

    class ThreadedVad(Vad):
        process_async = None  # type: ignore[assignment]

    async def run(make: type[Vad], k: int) -> tuple[list[dict], list[int]]:
        events: list[dict] = []
        cps = []
        start = k * 4_800
        pipe = StreamPipeline(StreamInfo(f"s{k}", rate, 1), [make()], events.extend,
                              start_offset=start)
        step = [4_800, 960, 14_400, 2_400][k]
        for i in range(start, x.shape[0] - k * 20_000, step):
            pipe.feed(x[i:i + step], i)
            if i % 48_000 < step:
                await pipe.idle()
                cps.append(pipe.checkpoint())
            await asyncio.sleep(0)
        await pipe.close(None)
        return events, cps

    batched = await asyncio.gather(*(run(Vad, k) for k in range(4)))
    threaded = await asyncio.gather(*(run(ThreadedVad, k) for k in range(4)))
    for (ev_b, _), (ev_t, _) in zip(batched, threaded, strict=True):
        # lag reports depend on timing, not on the VAD
        assert [e for e in ev_b if e["type"] != "lag"] == [e for e in ev_t if e["type"] != "lag"]
        assert sum(e["type"] == "speech_end" for e in ev_b) >= 2
    # checkpoints move on, never past the audio fed (their exact values depend on how the
    # runner happened to batch: tests/cluster checks what they guarantee)
    for k, (_, cps) in enumerate(batched):
        assert len(cps) >= 3 and cps == sorted(cps) and cps[-1] > k * 4_800
    assert batcher_for(SileroModel()).stats.jobs > 0


async def test_vad_goes_on_after_a_gap(speech_16k: np.ndarray) -> None:
    """Audio dropped for lag leaves a gap: the segment in progress ends where the audio
    stopped and the VAD goes on from the next chunk (batched and not alike)."""
    from earshot.processors.base import Chunk

    x = speech_16k
    cut, resume = int(2.0 * RATE), int(4.0 * RATE)  # in phrase 1 (0.80-3.39 s); before 2
    parts = [Chunk(x[i:min(i + 1600, cut)], i, RATE) for i in range(0, cut, 1600)]
    parts += [Chunk(x[i:i + 1600], i, RATE) for i in range(resume, x.size, 1600)]
    sync, batched = Vad(), Vad()
    got_sync = [e for c in parts for e in sync.process(c)] + sync.flush()
    got_batched = [e for c in parts for e in await batched.process_async(c)] + batched.flush()
    assert got_sync == got_batched
    ends = [e for e in got_sync if e["type"] == "speech_end"]
    assert ends[0]["end"] <= cut / RATE and ends[0]["start"] < 1.0
    assert len(ends) >= 3 and ends[1]["start"] >= 4.0
