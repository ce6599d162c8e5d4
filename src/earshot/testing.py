"""Helpers for processor authors: run a processor on samples and get its events.

    from earshot.testing import run_processor
    events = run_processor(MyVad(), samples, 16000)
"""

from __future__ import annotations

import asyncio

import numpy as np

from earshot.audio import s16_to_f32
from earshot.processors.base import Event, Processor, StreamInfo
from earshot.processors.runner import StreamPipeline


def run_processor(processor: Processor, samples: np.ndarray, rate: int, *,
                  chunk_seconds: float = 0.1, max_lag: float = 1e9,
                  stream: str = "test") -> list[Event]:
    """Feed ``samples`` (float32 or int16; (frames,) or (frames, channels)) at ``rate``
    through the same runner the server uses — resampling, batching, flush — and return
    every event in order, as the server would publish them (``stream`` included)."""
    return asyncio.run(run_processor_async(processor, samples, rate, chunk_seconds=chunk_seconds,
                                           max_lag=max_lag, stream=stream))


async def run_processor_async(processor: Processor, samples: np.ndarray, rate: int, *,
                              chunk_seconds: float = 0.1, max_lag: float = 1e9,
                              stream: str = "test") -> list[Event]:
    x = s16_to_f32(samples) if samples.dtype == np.int16 else samples.astype(np.float32)
    if x.ndim == 1:
        x = x[:, None]
    events: list[Event] = []

    def publish(batch: list[Event]) -> None:
        for e in batch:
            e["stream"] = stream
        events.extend(batch)

    info = StreamInfo(stream, rate, x.shape[1])
    pipe = StreamPipeline(info, [processor], publish, max_lag=max_lag, lag_report=float("inf"))
    step = max(1, int(rate * chunk_seconds))
    for i in range(0, len(x), step):
        pipe.feed(x[i:i + step], i)
        await pipe.idle()  # deterministic: as if the audio came in real time
    late = await pipe.close(timeout=None)
    assert not late
    return events


__all__ = ["run_processor", "run_processor_async"]


