"""A compressed audio byte stream (MP3, Ogg Vorbis/Opus, AAC, FLAC, WebM...) to PCM blocks.

:class:`StreamDecoder` is fed the bytes as they arrive (an Icecast source's body, a Deepgram
client's containerised audio) and gives back float32 blocks of shape ``(frames, channels)``
at the source's own rate and channel count (:attr:`~StreamDecoder.rate`,
:attr:`~StreamDecoder.channels`, known with the first block). It runs PyAV's demuxer and
decoder (the ``opus`` extra's ``av``) on its own thread, reading from an in-memory pipe, so
the interface stays bytes in, blocks out: :meth:`~StreamDecoder.feed` returns whatever has
been decoded so far, :meth:`~StreamDecoder.take` too (for a caller woken by ``notify``),
:meth:`~StreamDecoder.close` ends the input and returns the rest.

The samples are libavcodec's, exactly as ``ffmpeg -f FORMAT -i pipe:0 -f f32le -`` decodes
the same bytes (the tests check it sample for sample). A stream read from a pipe cannot be
seeked, so an MP3's end padding (up to one frame) stays in, as with ffmpeg itself. Should
the rate or the channel layout change mid-stream (chained Ogg), later blocks are resampled
to the first's, since an earshot stream has one rate.

Bytes that cannot be decoded end the stream with :attr:`~StreamDecoder.error` set (a
:class:`~earshot.integrations.common.DoorError` with code ``bad_audio``); input past
``max_buffered`` bytes not yet read by the decoder is refused (``decoder_behind``), so a
client cannot make the server hold unbounded data.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from earshot.errors import MissingDependency
from earshot.integrations.common import DoorError

MAX_BUFFERED = 8 * 1024 * 1024
#: what the demuxer reads before the first packet (small: a live source's first audio
#: should not wait for seconds of probing; the format is given or easy to tell)
PROBE_OPTIONS = {"probesize": "32768", "analyzeduration": "0"}


class _Pipe:
    """The decoder thread's input: ``read`` blocks until bytes or the end arrive."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._eof = False
        self._cv = threading.Condition()

    def read(self, n: int = -1) -> bytes:
        with self._cv:
            while not self._buf and not self._eof:
                self._cv.wait()
            if n < 0:
                n = len(self._buf)
            data = bytes(self._buf[:n])
            del self._buf[:n]
            return data

    def put(self, data: bytes) -> None:
        with self._cv:
            self._buf += data
            self._cv.notify_all()

    def end(self) -> None:
        with self._cv:
            self._eof = True
            self._buf.clear()
            self._cv.notify_all()

    def finish(self) -> None:
        """No more input: the reader gets what is left, then the end."""
        with self._cv:
            self._eof = True
            self._cv.notify_all()

    def __len__(self) -> int:
        return len(self._buf)


_SCALE = {"s16": 32768.0, "s16p": 32768.0, "s32": 2.0**31, "s32p": 2.0**31}


def frame_to_block(frame: Any) -> np.ndarray:
    """A PyAV audio frame → float32 ``(samples, channels)``, without resampling."""
    x: np.ndarray = np.asarray(frame.to_ndarray())
    fmt = str(frame.format.name)
    channels = len(frame.layout.channels)
    x = x.T if frame.format.is_planar else x.reshape(-1, channels)
    if fmt in ("u8", "u8p"):
        x = (x.astype(np.float32) - 128.0) / 128.0
    elif fmt in _SCALE:
        x = x.astype(np.float64) / _SCALE[fmt]
    return np.ascontiguousarray(x, dtype=np.float32)


class StreamDecoder:
    """Compressed bytes in, float32 blocks out (see the module docstring).

    ``format`` is a demuxer name (``"mp3"``, ``"ogg"``, ``"aac"``, ``"flac"``,
    ``"matroska"``...), or None to have it probed. ``notify`` is called on the decoder's
    thread whenever blocks are ready (or the decoder ended)."""

    def __init__(self, format: str | None = None, *, max_buffered: int = MAX_BUFFERED,
                 notify: Callable[[], None] | None = None) -> None:
        try:
            import av  # noqa: F401
        except ImportError:
            raise MissingDependency("decoding compressed audio needs PyAV: "
                                    "pip install 'earshot[opus]'") from None
        self.format = format
        self.max_buffered = max_buffered
        self.notify = notify
        self.rate: int | None = None
        self.channels: int | None = None
        self.codec: str | None = None
        self.error: DoorError | None = None
        self.frames = 0  # frames decoded so far
        self.resampled = False  # the rate or layout changed mid-stream
        self._pipe = _Pipe()
        self._lock = threading.Lock()
        self._blocks: list[np.ndarray] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="earshot-stream-decoder",
                                        daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        """The decoder thread has ended (input over, or an error)."""
        return not self._thread.is_alive()

    def feed(self, data: bytes | bytearray | memoryview) -> list[np.ndarray]:
        if self.error is not None:
            raise self.error
        if self._closed:
            raise DoorError("closed", "the decoder's input is closed")
        if len(self._pipe) + len(data) > self.max_buffered:
            self.error = DoorError("decoder_behind",
                                   f"more than {self.max_buffered} bytes wait to be decoded")
            self._pipe.end()
            raise self.error
        if data:
            self._pipe.put(bytes(data))
        return self.take()

    def take(self) -> list[np.ndarray]:
        """The blocks decoded since the last call."""
        with self._lock:
            out, self._blocks = self._blocks, []
        return out

    def close(self, timeout: float | None = 30.0) -> list[np.ndarray]:
        """End of input: wait for the decoder to finish and return the last blocks."""
        if not self._closed:
            self._closed = True
            self._pipe.finish()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._pipe.end()
            raise DoorError("decoder_stuck", "the decoder did not finish in time")
        return self.take()

    def abort(self) -> None:
        """Drop the input and end the decoder (a source that went away)."""
        self._closed = True
        self._pipe.end()

    def _run(self) -> None:
        import av

        resampler: Any = None
        try:
            container = av.open(self._pipe, mode="r", format=self.format,
                                options=PROBE_OPTIONS)
            try:
                if not container.streams.audio:
                    raise DoorError("bad_audio", "the stream has no audio")
                stream = container.streams.audio[0]
                self.codec = stream.codec_context.name
                layout = None
                for frame in container.decode(stream):
                    if self.rate is None:
                        self.rate, layout = frame.sample_rate, frame.layout.name
                        self.channels = len(frame.layout.channels)
                    elif (frame.sample_rate, frame.layout.name) != (self.rate, layout):
                        if resampler is None:
                            self.resampled = True
                            resampler = av.AudioResampler(format="flt", layout=layout,
                                                          rate=self.rate)
                        self._put([frame_to_block(f) for f in resampler.resample(frame)])
                        continue
                    self._put([frame_to_block(frame)])
                if resampler is not None:
                    self._put([frame_to_block(f) for f in resampler.resample(None)])
            finally:
                container.close()
        except DoorError as exc:
            self.error = exc
        except Exception as exc:  # PyAV's FFmpegError and kin: bytes that are not audio
            if self.error is None:
                what = " ".join(str(exc).split())[:200]
                self.error = DoorError("bad_audio", f"cannot decode the audio ({what})")
        finally:
            if self.notify is not None:
                self.notify()

    def _put(self, blocks: list[np.ndarray]) -> None:
        blocks = [b for b in blocks if len(b)]
        if not blocks:
            return
        with self._lock:
            self._blocks += blocks
            self.frames += sum(len(b) for b in blocks)
        if self.notify is not None:
            self.notify()
