"""Listen to a live stream: subscribe to its audio, smooth the network with a jitter buffer,
and play it (sounddevice) or write it to a WAV file, with low and steady delay.

    earshot listen STREAM_ID --out take.wav        # or without --out: the sound card
    earshot listen STREAM_ID --codec opus          # ~30 kbit/s instead of 768

Playing (no ``--out``, or ``--out`` with ``--play``): the relay delivers PCM in batches (or
Opus in 20 ms packets); PCM is re-framed into 20 ms frames, each frame is pushed into
:class:`earshot.client.jitter.JitterBuffer` with its arrival time, and a playout clock pops
one frame every 20 ms: audio, concealment (Opus PLC, or silence for PCM) when a frame is
missing, never a stall in the output once playback started. When the stream ends, whatever is still
buffered is played out, the last partial frame included.

Recording (``--out`` alone): no clock and no jitter buffer, since nobody listens in real
time: every frame from the first one received to the end of the stream is written in stream
order, bit-exact for PCM; only frames the relay itself dropped (a listener that fell behind)
are filled in, with silence or Opus PLC, and counted as concealed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from earshot.client.jitter import JitterBuffer
from earshot.client.subscriber import messages
from earshot.errors import ClientError

__all__ = ["ListenStats", "Listener"]


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
    first_offset: int | None = None  # the first stream frame heard
    recorded: bool = False  # --out alone: every frame, no playout clock

    def summary(self) -> dict[str, Any]:
        d = np.array(self.delays or [0.0])
        return {"stream": self.stream, "rate": self.rate, "seconds": self.frames_out / max(
            self.rate, 1), "delay_p50_ms": float(np.percentile(d, 50) * 1000),
                "delay_p99_ms": float(np.percentile(d, 99) * 1000),
                "concealed_ms": self.concealed_ms, "late": self.late,
                "loss_rate": self.loss_rate, "bytes_in": self.bytes_in,
                "first_offset": self.first_offset, "recorded": self.recorded}


class Listener:
    """One listener of a live stream: subscribes to its audio on ``/ws/subscribe``, and plays
    it through a :class:`~earshot.client.jitter.JitterBuffer` or records it to a WAV file.

    ``await Listener(url, stream_id, play=True).run()`` returns when the stream ends (or
    after ``seconds``) with the :class:`ListenStats`: delay percentiles, concealment, late
    packets, bytes received. Raises :class:`~earshot.errors.ClientError` when the server
    cannot be reached or refuses (a wrong token, a stream that is not live)."""

    def __init__(self, url: str, stream: str, *, codec: str = "pcm", token: str | None = None,
                 out: Path | None = None, play: bool = False, frame_ms: float = 20.0,
                 seconds: float | None = None, record: bool | None = None,
                 ssl: Any = None) -> None:
        """
        :param url: the server (``http://HOST:PORT`` or its ``ws://`` URL).
        :param stream: the stream's id.
        :param codec: ``"pcm"`` (s16 as archived) or ``"opus"`` (about 30 kbit/s, decoded
            here, with Opus's packet-loss concealment).
        :param token: the server's access token, sent as ``Authorization: Bearer``.
        :param out: a WAV file to write.
        :param play: play on the default sound card (the ``[mic]`` extra's sounddevice).
        :param frame_ms: the playout frame, in milliseconds.
        :param seconds: stop after this much audio (default: when the stream ends).
        :param record: write every frame, without the playout clock (default: when there
            is an ``out`` file and nothing is played); ``record=False`` with ``out`` writes
            what a listener hears through the jitter buffer, in real time.
        :param ssl: the TLS context for ``wss://``
            (:func:`earshot.client.transport.client_ssl`).
        """
        self.url, self.stream, self.codec, self.token = url, stream, codec, token
        self.ssl = ssl  # an ssl.SSLContext for wss:// (earshot.client.transport.client_ssl)
        self.out, self.play, self.frame_ms, self.seconds = out, play, frame_ms, seconds
        if record is None:
            record = out is not None and not play
        self.stats = ListenStats(stream, recorded=record)
        self.jitter: JitterBuffer | None = None
        self._end: int | None = None  # the stream's last frame + 1, once it ended
        self._next: int | None = None  # recording: the next frame to write
        self._transit_min = float("inf")
        self._frame = 0
        self._pcm_pending: np.ndarray | None = None
        self._pcm_offset = 0
        self._decoder: Any = None
        self._ended = asyncio.Event()
        self._writer: Any = None
        self._device: Any = None

    def check_dependencies(self) -> None:
        """Raise :class:`~earshot.errors.MissingDependency` if playback or the Opus codec
        needs a package that is not installed (:meth:`run` asks before connecting, not once
        the first audio is in)."""
        if self.codec == "opus":
            from earshot.codec.opus import decoder_missing
            from earshot.errors import MissingDependency

            if (why := decoder_missing()) is not None:
                raise MissingDependency(f"--codec opus: {why}")
        if self.play:
            from earshot.client.sources import import_sounddevice

            import_sounddevice("playback")

    async def run(self) -> ListenStats:
        """Listen until the stream ends (or ``seconds`` pass); the statistics."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake

        from earshot.client.transport import ws_options
        from earshot.client.urls import ws_url

        self.check_dependencies()
        url = ws_url(self.url, "/ws/subscribe", stream=self.stream,
                     audio="opus" if self.codec == "opus" else "s16")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            async with connect(url, additional_headers=headers, max_size=None,
                               compression=None, **ws_options(url, self.ssl)) as ws:
                receiver = asyncio.create_task(self._receive(ws))
                player = asyncio.create_task(self._ended.wait() if self.stats.recorded
                                             else self._playout())
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
            from earshot.client.transport import handshake_refusal

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
                if self._ended.is_set():  # --seconds reached
                    return
                continue
            kind = msg.get("type")
            if kind == "error" and "stream" not in msg:
                raise ClientError(msg.get("message", "refused"), code=msg.get("code"))
            elif kind == "stream_ended":
                self._finish()
                return
            elif kind == "subscribed" and not any(s["stream"] == self.stream
                                                  for s in msg.get("live", [])):
                raise ClientError(await asyncio.to_thread(self._not_live), code="not_live")

    def _not_live(self) -> str:
        """Why the stream cannot be heard: unknown, finished, or interrupted (asks REST)."""
        from urllib.parse import quote

        from earshot.client.rest import request_json
        from earshot.client.urls import http_base

        base = http_base(self.url)
        try:
            rec = request_json(self.url, f"/api/streams/{quote(self.stream, safe='')}",
                               token=self.token)
        except ClientError as exc:
            if exc.code == "404":
                return f"no stream {self.stream!r} on {base} (earshot streams lists them)"
            return f"stream {self.stream} is not live"
        if rec.get("state") == "finished":
            return (f"stream {self.stream} is finished, not live: its archive is "
                    f"{base}/api/streams/{self.stream}/audio")
        return f"stream {self.stream} is {rec.get('state')}, not live"

    def _finish(self) -> None:
        """The stream ended: what is left of a partial frame is the end of the stream."""
        pending = self._pcm_pending
        if pending is not None and len(pending):
            self._end = self._pcm_offset + len(pending)
            if self.stats.recorded:
                self._record(self._pcm_offset, pending)
            elif self.jitter is not None:  # padded to a whole frame; cut again on output
                pad = np.zeros((self._frame - len(pending), pending.shape[1]), pending.dtype)
                self.jitter.push(self._pcm_offset, self._frame,
                                 np.concatenate((pending, pad)), time.monotonic())
            self._pcm_pending = pending[:0]
        self._ended.set()

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
        if self.stats.first_offset is None:
            self.stats.first_offset = int(h["offset"])
        transit = now - int(h["offset"]) / rate
        self._transit_min = min(self._transit_min, transit)
        if h["format"] == "opus":
            if self.stats.recorded:
                self.stats.delays.append(transit - self._transit_min)
                self._record_opus(int(h["offset"]), payload)
            else:
                self.jitter.push(int(h["offset"]), int(h["frames"]), payload, now)
            return
        x = np.frombuffer(payload, "<i2").reshape(-1, channels)
        offset = int(h["offset"])
        if self.stats.recorded:  # whole batches, as they come; only a tail is kept back
            self.stats.delays.append(transit - self._transit_min)
            self._record(offset, x)
            return
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
            if self._ended.is_set():  # no more is coming: play out what is buffered, now
                for rest in jb.drain():
                    self._play(rest)
                self._update_stats()
                return
            out = jb.pop(time.monotonic())
            st = jb.stats
            if out.kind == "waiting":
                continue
            self.stats.delays.append(st.delay)
            self._play(out)
            self._update_stats()
            if self.seconds is not None and self.stats.frames_out >= self.seconds * rate:
                self._ended.set()
                return

    def _play(self, out: Any) -> None:
        pcm = self._decode(out)
        self._sink(pcm)
        self.stats.frames_out += len(pcm)

    def _decode(self, out: Any) -> np.ndarray:
        """One popped frame as float32 PCM; the stream's last frame cut to its true end."""
        f = self._frame
        pcm: np.ndarray
        if out.kind == "audio":
            pcm = (self._decoder.decode(out.payload) if self._decoder is not None
                   else out.payload.astype(np.float32) / 32768.0)
        elif self._decoder is not None:
            pcm = self._decoder.conceal(f)
        else:
            pcm = np.zeros((f, self.stats.channels), np.float32)
        if self._end is not None and out.media_offset is not None:
            pcm = pcm[:max(0, self._end - out.media_offset)]
        return pcm

    def _update_stats(self) -> None:
        assert self.jitter is not None
        st = self.jitter.stats
        self.stats.played_frames = st.played_frames
        self.stats.concealed_ms, self.stats.late = st.concealed_ms, st.late
        self.stats.loss_rate = st.loss_rate

    def _record(self, offset: int, x: np.ndarray) -> None:
        """Recording: write ``x`` (s16 frames from ``offset``) in stream order."""
        if self._next is None:
            self._next = offset
        if offset > self._next:  # the relay dropped frames for us: keep the timeline
            gap = offset - self._next
            self._write(np.zeros((gap, x.shape[1]), x.dtype))
            self.stats.concealed_ms += gap * 1000 / self.stats.rate
        elif offset < self._next:  # already written
            x = x[self._next - offset:]
        self._write(x)

    def _record_opus(self, offset: int, packet: bytes) -> None:
        if self._next is None:
            self._next = offset
        if offset > self._next:
            gap = offset - self._next
            self._write(self._decoder.conceal(gap))
            self.stats.concealed_ms += gap * 1000 / self.stats.rate
        elif offset < self._next:
            return  # a packet already written
        self._write(self._decoder.decode(packet))

    def _write(self, pcm: np.ndarray) -> None:
        assert self._next is not None
        if self.seconds is not None:
            pcm = pcm[:max(0, round(self.seconds * self.stats.rate) - self.stats.frames_out)]
        if len(pcm):
            self._sink(pcm)
        self._next += len(pcm)
        self.stats.frames_out += len(pcm)
        self.stats.played_frames = self.stats.frames_out
        if self.seconds is not None and self.stats.frames_out >= self.seconds * self.stats.rate:
            self._ended.set()

    def _open_sinks(self, rate: int, channels: int) -> None:
        if self.out is not None:
            import soundfile as sf

            self._writer = sf.SoundFile(self.out, "w", samplerate=rate, channels=channels,
                                        subtype="PCM_16")
        if self.play:
            from earshot.client.sources import import_sounddevice

            sd = import_sounddevice("playback")
            self._device = sd.OutputStream(samplerate=rate, channels=channels,
                                           dtype="float32")
            self._device.start()

    def _sink(self, pcm: np.ndarray) -> None:
        if self._writer is not None:
            self._writer.write(pcm)  # int16 is written as it is (bit-exact), float scaled
        if self._device is not None:
            self._device.write(np.ascontiguousarray(pcm, np.float32))

    def _close_sinks(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._device is not None:
            self._device.stop()
            self._device.close()
