"""Listen to a live stream: subscribe to its audio, smooth the network with a jitter buffer,
and play it (sounddevice) or write it to a WAV file, with low and steady delay.

    earshot listen STREAM_ID --out take.wav        # or without --out: the sound card
    earshot listen STREAM_ID --codec opus          # ~30 kbit/s instead of 768

The relay delivers PCM in batches (or Opus in 20 ms packets); PCM is re-framed into 20 ms
frames, each frame is pushed into :class:`earshot.jitter.JitterBuffer` with its arrival time,
and a playout clock pops one frame every 20 ms: audio, concealment (Opus PLC, or silence for
PCM) when a frame is missing, never a stall in the output once playback started.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from earshot.errors import ClientError
from earshot.jitter import JitterBuffer
from earshot.subscriber import messages


@dataclass
class ListenStats:
    stream: str
    rate: int = 0
    channels: int = 1
    frames_out: int = 0
    played_frames: int = 0
    concealed_ms: float = 0.0
    late: int = 0
    loss_rate: float = 0.0
    delays: list[float] = field(default_factory=list)  # buffered seconds, per pop
    bytes_in: int = 0

    def summary(self) -> dict[str, Any]:
        d = np.array(self.delays or [0.0])
        return {"stream": self.stream, "rate": self.rate, "seconds": self.frames_out / max(
            self.rate, 1), "delay_p50_ms": float(np.percentile(d, 50) * 1000),
                "delay_p99_ms": float(np.percentile(d, 99) * 1000),
                "concealed_ms": self.concealed_ms, "late": self.late,
                "loss_rate": self.loss_rate, "bytes_in": self.bytes_in}


class Listener:
    def __init__(self, url: str, stream: str, *, codec: str = "pcm", token: str | None = None,
                 out: Path | None = None, play: bool = False, frame_ms: float = 20.0,
                 seconds: float | None = None, ssl: Any = None) -> None:
        self.url, self.stream, self.codec, self.token = url, stream, codec, token
        self.ssl = ssl  # an ssl.SSLContext for wss:// (earshot.transport.client_ssl)
        self.out, self.play, self.frame_ms, self.seconds = out, play, frame_ms, seconds
        self.stats = ListenStats(stream)
        self.jitter: JitterBuffer | None = None
        self._frame = 0
        self._pcm_pending: np.ndarray | None = None
        self._pcm_offset = 0
        self._decoder: Any = None
        self._ended = asyncio.Event()
        self._writer: Any = None
        self._device: Any = None

    async def run(self) -> ListenStats:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        from earshot.transport import ws_options
        from earshot.urls import ws_url

        url = ws_url(self.url, "/ws/subscribe", stream=self.stream,
                     audio="opus" if self.codec == "opus" else "s16")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            async with connect(url, additional_headers=headers, max_size=None,
                               compression=None, **ws_options(url, self.ssl)) as ws:
                receiver = asyncio.create_task(self._receive(ws))
                player = asyncio.create_task(self._playout())
                try:
                    done, _ = await asyncio.wait({receiver, player},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if receiver in done:
                        receiver.result()  # errors surface here
                        await player  # the stream ended: play out what is buffered
                finally:
                    for task in (receiver, player):
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
        except (OSError, InvalidHandshake) as exc:
            from earshot.transport import handshake_refusal

            refused = handshake_refusal(exc)  # a wrong certificate, a refused origin, ...
            if refused is not None:
                raise ClientError(f"{url}: {refused.message}", code=refused.code) from None
            raise ClientError(f"cannot reach {url}: {exc}", code="unreachable") from None
        except ConnectionClosed:
            pass
        finally:
            self._close_sinks()
        return self.stats

    async def _receive(self, ws: Any) -> None:
        async for msg, payload in messages(ws):
            if payload is not None:
                self.stats.bytes_in += len(payload)
                self._audio(msg, payload, time.monotonic())
                continue
            kind = msg.get("type")
            if kind == "error" and "stream" not in msg:
                raise ClientError(msg.get("message", "refused"), code=msg.get("code"))
            elif kind == "stream_ended":
                self._ended.set()
                return
            elif kind == "subscribed" and not any(s["stream"] == self.stream
                                                  for s in msg.get("live", [])):
                raise ClientError(f"stream {self.stream} is not live", code="not_live")

    def _audio(self, h: dict[str, Any], payload: bytes, now: float) -> None:
        rate, channels = int(h["rate"]), int(h["channels"])
        if self.jitter is None:
            self.stats.rate, self.stats.channels = rate, channels
            self._frame = round(rate * self.frame_ms / 1000)
            if h["format"] == "opus":
                from earshot.codec.opus import OpusDecoder

                self._frame = int(h["frames"])
                self._decoder = OpusDecoder(rate, channels)
            self.jitter = JitterBuffer(rate, self._frame)
            self._open_sinks(rate, channels)
        if h["format"] == "opus":
            self.jitter.push(int(h["offset"]), int(h["frames"]), payload, now)
            return
        x = np.frombuffer(payload, "<i2").reshape(-1, channels)
        offset = int(h["offset"])
        if self._pcm_pending is None or offset != self._pcm_offset + len(self._pcm_pending):
            self._pcm_pending, self._pcm_offset = x, offset  # start, or after a gap
        else:
            self._pcm_pending = np.concatenate((self._pcm_pending, x))
        f = self._frame
        while len(self._pcm_pending) >= f:
            self.jitter.push(self._pcm_offset, f, self._pcm_pending[:f], now)
            self._pcm_pending = self._pcm_pending[f:]
            self._pcm_offset += f

    async def _playout(self) -> None:
        while self.jitter is None:
            if self._ended.is_set():
                return
            await asyncio.sleep(0.005)
        jb, f, rate = self.jitter, self._frame, self.stats.rate
        period = f / rate
        t0 = time.monotonic()
        k = 0
        while True:
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * period - time.monotonic()))
            out = jb.pop(time.monotonic())
            st = jb.stats
            if out.kind == "waiting":
                if self._ended.is_set() and not st.buffered_packets:
                    return
                continue
            self.stats.delays.append(st.delay)
            if out.kind == "audio":
                pcm = (self._decoder.decode(out.payload) if self._decoder is not None
                       else out.payload.astype(np.float32) / 32768.0)
            elif self._decoder is not None:
                pcm = self._decoder.conceal(f)
            else:
                pcm = np.zeros((f, self.stats.channels), np.float32)
            self._sink(pcm)
            self.stats.frames_out += f
            self.stats.played_frames = st.played_frames
            self.stats.concealed_ms, self.stats.late = st.concealed_ms, st.late
            self.stats.loss_rate = st.loss_rate
            if self.seconds is not None and self.stats.frames_out >= self.seconds * rate:
                self._ended.set()
                return
            if self._ended.is_set() and not st.buffered_packets:
                return

    def _open_sinks(self, rate: int, channels: int) -> None:
        if self.out is not None:
            import soundfile as sf

            self._writer = sf.SoundFile(self.out, "w", samplerate=rate, channels=channels,
                                        subtype="PCM_16")
        if self.play:
            from earshot.sources import import_sounddevice

            sd = import_sounddevice()
            self._device = sd.OutputStream(samplerate=rate, channels=channels,
                                           dtype="float32")
            self._device.start()

    def _sink(self, pcm: np.ndarray) -> None:
        if self._writer is not None:
            self._writer.write(pcm)
        if self._device is not None:
            self._device.write(np.ascontiguousarray(pcm, np.float32))

    def _close_sinks(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._device is not None:
            self._device.stop()
            self._device.close()
