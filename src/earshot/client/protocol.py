"""The publisher's side of the ingest protocol, sans I/O: no sockets, no asyncio, time passed in.

:class:`PublisherProtocol` is one stream's delivery as a state machine, in the manner of
python-websockets' ``ClientProtocol``. The I/O layer (:mod:`earshot.client.connection`)
opens WebSockets and carries out what the core asks:

* inputs: :meth:`~PublisherProtocol.send` (audio from the application),
  :meth:`~PublisherProtocol.stop`, :meth:`~PublisherProtocol.connecting` /
  :meth:`~PublisherProtocol.connected` (a connection attempt, a WebSocket open),
  :meth:`~PublisherProtocol.receive_text` (a server message),
  :meth:`~PublisherProtocol.handle_timer` (the clock), and
  :meth:`~PublisherProtocol.connection_lost` / :meth:`~PublisherProtocol.connection_failed`;
* outputs: :meth:`~PublisherProtocol.next_message` (the next text or binary message to send
  on the open connection: ``start``, audio the server lacks, ``stop``),
  :meth:`~PublisherProtocol.events_received` (events for the application),
  :meth:`~PublisherProtocol.close_expected` and :meth:`~PublisherProtocol.get_timer`, and at
  the end of every connection a decision: :class:`RetryIn` (reconnect after that many
  seconds), :class:`Done` (stopped; the server's frame count is the client's) or
  :class:`Failed` (a final error).

The audio not yet acknowledged lives in an :class:`~earshot.client.buffer.AudioBuffer` the
core appends to, reads from and releases: in memory, as Opus packets, or in a spool on disk.
Offsets are frames of the server stream. After a reconnect the core resends exactly what the
server lacks (from the offset in its ``ready``; Opus from the last acknowledged packet, which
the server's fresh decoder drops), and it never reports success unless the server's
``stopped`` count equals the frames it sent.
"""

from __future__ import annotations

import json
import random
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import numpy as np

from earshot.audio import BYTES_PER_SAMPLE, WireFormat, encode
from earshot.client.buffer import AudioBuffer, MemoryBuffer, PacketBuffer
from earshot.client.transport import Refusal
from earshot.errors import ClientError
from earshot.wire.codes import BUSY, RETRYABLE, Code, final_close

__all__ = ["Decision", "Done", "Failed", "PacketEncoder", "PublisherProtocol", "Reconnect",
           "Resume", "RetryIn", "State", "encode_pcm"]

#: resume refusals that end a stream being stopped "as it is" (nothing left to stop)
GONE = frozenset({Code.STREAM_FINISHED, Code.UNKNOWN_STREAM})


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconnect:
    """Backoff between reconnection attempts, in seconds. ``attempts=None`` retries forever.

    ``attempts`` bounds the attempts in a row once the stream exists, ``first_attempts``
    before it ever started (fail fast if nobody is there), ``busy_attempts`` the refusals of a
    busy server in a row (``server_full``, ``storage_full``, ``shutting_down``; None: no
    bound). The delay of attempt ``n`` is ``initial * factor ** (n - 1)``, at most
    ``maximum``, with ``jitter`` (a fraction) either way; after a busy refusal it is spread
    wider, ``0.5x`` to ``1.5x``, so that clients refused together come back spread out."""

    initial: float = 0.2
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.2
    attempts: int | None = 30
    first_attempts: int | None = 3
    busy_attempts: int | None = 120

    def base(self, attempt: int) -> float:
        """The delay of attempt ``attempt`` (1, 2, ...) before jitter."""
        return min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before attempt ``attempt``, jittered by ``rng`` (default: ``random``)."""
        uniform = rng.uniform if rng is not None else random.uniform
        return self.base(attempt) * (1 + uniform(-self.jitter, self.jitter))

    def busy_delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """After a busy server's refusal: wider jitter (0.5x to 1.5x), so that many clients
        refused or dropped together (a restart) come back spread out, not as a herd."""
        uniform = rng.uniform if rng is not None else random.uniform
        return self.base(attempt) * uniform(0.5, 1.5)


@dataclass(frozen=True, slots=True)
class Resume:
    """Continue an existing server stream: its id, its resume token, and ``offset``, the
    frame the audio given to this publisher begins at (the server holds at least that many
    frames; it says in ``ready`` how many, and the publisher resends from there)."""

    stream: str
    token: str
    offset: int = 0


@dataclass(frozen=True, slots=True)
class RetryIn:
    """Decision: connect again after ``delay`` seconds (attempt ``attempt`` in a row)."""

    delay: float
    attempt: int
    reason: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """Decision: the stream is stopped with ``frames`` frames.

    ``confirmed``: the count is the server's ``stopped`` count, checked equal to what was
    sent. It is False only when the server answered a resume with ``stream_finished`` after
    capture had ended: the stop landed and its answer was lost with the connection; the
    frame count that refusal carries was then checked equal to what was sent (a different
    one, or none, is a ``count_mismatch`` failure). ``frames`` is None for a
    stream ended "as it is" (its buffer was cut) that the server no longer knows."""

    frames: int | None
    stream: str | None
    confirmed: bool = True


@dataclass(frozen=True, slots=True)
class Failed:
    """Decision: the stream cannot go on; ``error`` says why (its ``code`` is stable)."""

    error: ClientError

    @property
    def code(self) -> str | None:
        return self.error.code


Decision = RetryIn | Done | Failed


class PacketEncoder(Protocol):
    """What the core needs of an Opus encoder (:class:`earshot.codec.opus.OpusEncoder`)."""

    @property
    def pre_skip(self) -> int: ...

    def encode(self, pcm: np.ndarray) -> list[bytes]: ...

    def flush(self) -> list[bytes]: ...


class State(Enum):
    WAITING = "waiting"  # no connection (before the first, between attempts)
    OPENING = "opening"  # connected, 'start' sent, waiting for 'ready'
    STREAMING = "streaming"  # 'ready' received: audio flows
    DONE = "done"
    FAILED = "failed"


def encode_pcm(audio: np.ndarray, fmt: str, channels: int) -> bytes:
    """An array of samples (``(frames,)`` for mono or ``(frames, channels)``; float, or
    int16) as wire bytes of format ``fmt`` (``s16`` or ``f32``)."""
    if audio.ndim == 1 and channels != 1:
        raise ClientError(f"1-D array for a {channels}-channel stream")
    if audio.ndim == 2 and audio.shape[1] != channels:
        raise ClientError(f"array has {audio.shape[1]} channels, stream has {channels}")
    if audio.ndim not in (1, 2):
        raise ClientError(f"audio must be (frames,) or (frames, channels), not {audio.shape}")
    if audio.dtype == np.int16:
        if fmt == "s16":
            return audio.astype("<i2", copy=False).tobytes()
        audio = audio.astype(np.float32) / 32768.0
    return encode(audio, "s16" if fmt == "s16" else "f32")


class PublisherProtocol:
    """The client side of one ingest stream, as a pure state machine (see the module doc).

    ``buffer`` holds the unacknowledged audio (default: :class:`MemoryBuffer` of
    ``buffer_seconds``, or :class:`PacketBuffer` for Opus). ``encoder`` (Opus only) turns the
    samples given to :meth:`send` into packets. ``resume`` continues a stream that exists
    (the buffer's ``start`` is where its audio begins). ``server`` names the server in error
    messages. ``ready_timeout`` (seconds) bounds the wait for ``ready`` after connecting.
    ``rng`` jitters the backoff (tests pass a seeded one)."""

    def __init__(
        self,
        *,
        rate: int,
        channels: int = 1,
        format: WireFormat = "f32",
        name: str | None = None,
        processors: list[Any] | None = None,
        language: str | None = None,
        client_info: dict[str, Any] | None = None,
        buffer: AudioBuffer | None = None,
        buffer_seconds: float = 600.0,
        encoder: PacketEncoder | None = None,
        resume: Resume | None = None,
        max_message_frames: int | None = None,
        reconnect: Reconnect | None = None,
        ready_timeout: float = 10.0,
        server: str = "the server",
        rng: random.Random | None = None,
    ) -> None:
        if format not in ("s16", "f32", "opus"):
            raise ClientError(f"format must be s16, f32 or opus, not {format!r}")
        if (format == "opus") != (encoder is not None):
            raise ClientError("an Opus stream needs an encoder, and only an Opus stream")
        if rate <= 0 or channels <= 0:
            raise ClientError(f"bad stream: {rate} Hz x{channels}")
        self.rate = rate
        self.channels = channels
        self.format: WireFormat = format
        self.name = name
        self.processors = processors
        self.language = language
        self.client_info = client_info if client_info is not None else {"agent": "earshot-python"}
        self.encoder = encoder
        #: bytes per sample frame on the wire (0 for Opus packets)
        self.frame_bytes = BYTES_PER_SAMPLE.get(format, 0) * channels
        capacity = max(1, int(buffer_seconds * rate))
        if buffer is None:
            if encoder is not None:
                if resume is not None:
                    raise ClientError("an Opus publisher cannot continue a stream (resume=)")
                buffer = PacketBuffer(capacity, first=-encoder.pre_skip)
            else:
                buffer = MemoryBuffer(self.frame_bytes, capacity,
                                      start=resume.offset if resume is not None else 0)
        self.buffer: AudioBuffer = buffer
        per = self.frame_bytes or 2 * channels
        self.max_message_frames = max_message_frames or max(1, (256 * 1024) // per)
        self.reconnect = reconnect or Reconnect()
        self.ready_timeout = ready_timeout
        self.server = server
        self.rng = rng
        self.stream_id: str | None = resume.stream if resume is not None else None
        self.resume_token: str | None = resume.token if resume is not None else None
        #: frames the server acknowledged (durably written)
        self.acked = buffer.start
        #: frames sent on the current connection (from the server's offset on)
        self.sent = buffer.start
        self.given = 0  # Opus: samples given to send(), the stream's true length
        self.reconnects = 0  # connection attempts made after a RetryIn
        self._retrying = False
        self.bytes_sent = 0  # audio bytes handed out by next_message()
        self.outcome: Done | Failed | None = None
        self._state = State.WAITING
        self._attempt = 0
        self._busy = 0
        self._spread = False  # after a busy refusal (a restart): wider jitter
        self._outbox: deque[str] = deque()
        self._events: list[dict[str, Any]] = []
        self._deadline: float | None = None
        self._verdict: Decision | None = None  # how the current connection ends
        self._last_error: dict[str, Any] = {}
        self._held = 0  # the offset in the last 'ready'
        self._stop_sent = False  # on this connection
        self._expected: int | None = None  # what 'stopped' must say, once 'stop' is sent

    # -- state ---------------------------------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def offset(self) -> int:
        """Frames handed to :meth:`send` (Opus: samples), counting a resumed stream's start."""
        return self.given if self.encoder is not None else self.buffer.end

    @property
    def unacked(self) -> int:
        """Frames held that the server has not acknowledged."""
        return max(0, self.buffer.end - self.acked)

    def room_for(self, audio: np.ndarray | bytes | bytearray | memoryview) -> bool:
        """Whether :meth:`send` of ``audio`` fits the buffer's bound now (else the I/O layer
        waits for acks). A buffer holding nothing always takes one more block."""
        capacity = self.buffer.capacity
        held = self.buffer.end - self.acked
        if capacity is None or held <= 0:
            return True
        if self.encoder is not None:
            frames = 0  # packets come out of the encoder: check what is held already
        elif isinstance(audio, np.ndarray):
            frames = len(audio)
        else:
            frames = len(audio) // self.frame_bytes
        return held + frames <= capacity

    # -- inputs from the application -----------------------------------------------------
    def send(self, audio: np.ndarray | bytes | bytearray | memoryview) -> int:
        """Append audio to the buffer: samples (a numpy array, float or int16) or raw wire
        bytes of whole frames (PCM only). Returns the frames (samples) taken."""
        if self.buffer.closed:
            raise ClientError("send() after stop()")
        if self.encoder is not None:
            if not isinstance(audio, np.ndarray):
                raise ClientError("an Opus publisher takes numpy arrays of samples")
            x = audio.astype(np.float32) / 32768.0 if audio.dtype == np.int16 else audio
            self._append_packets(self.encoder.encode(x))
            self.given += len(x)
            return len(x)
        if isinstance(audio, np.ndarray):
            data = encode_pcm(audio, self.format, self.channels)
        else:
            data = bytes(audio)
            if len(data) % self.frame_bytes:
                raise ClientError(f"{len(data)} bytes is not whole {self.frame_bytes}-byte "
                                  "frames")
        frames = len(data) // self.frame_bytes
        if frames:
            self.buffer.append(data, frames)
        return frames

    def stop(self) -> None:
        """End capture: once every frame is sent, ``stop`` goes out (an Opus encoder's tail
        is appended first)."""
        if self.buffer.closed:
            return
        if self.encoder is not None:
            self._append_packets(self.encoder.flush())
        self.buffer.close()

    # -- inputs from the I/O layer -------------------------------------------------------
    def connecting(self) -> Decision | None:
        """The I/O layer is about to connect. A decision instead when no connection is
        needed: the end is reached, or the buffer was cut before any stream existed."""
        if self.outcome is not None:
            return self.outcome
        if self.buffer.cut and self.stream_id is None:
            return self._settle(Done(None, None))
        if self._retrying:
            self._retrying = False
            self.reconnects += 1
        return None

    def connected(self, now: float) -> None:
        """A WebSocket is open: ``start`` (or the resume) is the first message."""
        if self._state is not State.WAITING:
            raise ClientError(f"connected() while {self._state.value}")
        self._state = State.OPENING
        self._deadline = now + self.ready_timeout
        self._verdict = None
        self._last_error = {}
        self._stop_sent = False
        self._outbox.append(json.dumps(self._start_message()))

    def receive_text(self, text: str, now: float = 0.0) -> None:
        """A text message from the server."""
        if self._state not in (State.OPENING, State.STREAMING) or self._verdict is not None:
            return
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            self._violation(f"a text message that is not JSON: {text[:80]!r}")
            return
        if not isinstance(msg, dict):
            self._violation(f"a text message that is not a JSON object: {text[:80]!r}")
            return
        if self._state is State.OPENING:
            self._opening(msg)
        else:
            self._streaming(msg)

    def handle_timer(self, now: float) -> None:
        """Time passed: ``ready`` that does not come within ``ready_timeout`` ends the
        connection (and the next attempt follows the backoff)."""
        if (self._state is State.OPENING and self._verdict is None
                and self._deadline is not None and now >= self._deadline):
            self._verdict = self._retry(f"no 'ready' within {self.ready_timeout:g} s")

    def connection_lost(self, code: int | None = None, reason: str = "") -> Decision:
        """The open connection ended (closed by either side, or the network); ``code`` and
        ``reason`` are the WebSocket close frame's. Returns what to do next."""
        if self.outcome is not None:
            return self.outcome
        verdict = self._verdict
        if verdict is None:
            err = self._last_error
            if final_close(code):
                verdict = self._fatal(str(err.get("code") or code),
                                      str(err.get("message") or reason or "closed"))
            elif err.get("code") in BUSY:  # e.g. shutting_down (1001): back off, resume
                verdict = self._busy_retry(str(err["code"]), str(err.get("message") or ""))
            else:
                verdict = self._retry(f"connection closed ({code} {reason})")
        return self._settle(verdict)

    def connection_failed(self, reason: str, refusal: Refusal | None = None) -> Decision:
        """A connection could not be opened (refused, unreachable, handshake failed);
        ``refusal`` is the server's HTTP answer to the handshake, if it gave one."""
        if self._state is not State.WAITING:
            return self.connection_lost(None, reason)
        if refusal is not None and not refusal.retryable:
            return self._settle(self._fatal(refusal.code, refusal.message))
        return self._settle(self._retry(reason, refusal))

    def fail(self, code: str | None, message: str) -> Failed:
        """End for good with this error (what the I/O layer knows is final: a bad URL, the
        publisher closed)."""
        failed = Failed(ClientError(message, code=code))
        self._settle(failed)
        return failed

    # -- outputs -------------------------------------------------------------------------
    def next_message(self) -> str | bytes | None:
        """The next message to send on the open connection, or None for now."""
        if self._outbox:
            return self._outbox.popleft()
        if self._state is not State.STREAMING or self._verdict is not None or self._stop_sent:
            return None
        buffer = self.buffer
        if not buffer.cut:
            if self.sent < buffer.end:
                data, after = buffer.read(self.sent, self.max_message_frames)
                if data:
                    self.sent = after
                    self.bytes_sent += len(data)
                    return data
                self._verdict = Failed(ClientError(
                    f"frames from {self.sent} on are missing from the buffer", code="buffer"))
                return None
            if not buffer.closed:
                return None
        # everything is sent and capture ended, or the buffer was cut: the stream ends here
        self._stop_sent = True
        if self.encoder is not None:
            self._expected = self.given
            return json.dumps({"type": "stop", "length": self.given})
        self._expected = self.sent
        return '{"type":"stop"}'

    def data_to_send(self) -> list[str | bytes]:
        """Every message there is to send now (see :meth:`next_message`)."""
        out: list[str | bytes] = []
        while (m := self.next_message()) is not None:
            out.append(m)
        return out

    def events_received(self) -> list[dict[str, Any]]:
        """Events for the application since the last call: the server's messages but acks
        (each ack's batched events, in order), and ``reconnecting`` decisions."""
        events, self._events = self._events, []
        return events

    def close_expected(self) -> bool:
        """The core has decided how this connection ends: close it."""
        return self._verdict is not None

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should be called next (None: no deadline)."""
        if self._state is State.OPENING and self._verdict is None:
            return self._deadline
        return None

    # -- server messages -----------------------------------------------------------------
    def _opening(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "ready":
            self._ready(msg)
            return
        if kind != "error":
            self._events.append(msg)
            return
        code = str(msg.get("code") or "error")
        message = str(msg.get("message") or "")
        if self.buffer.cut and code in GONE and self.stream_id is not None:
            self._verdict = Done(None, self.stream_id, confirmed=False)  # nothing left to stop
        elif code in BUSY:
            self._verdict = self._busy_retry(code, message)
        elif code in RETRYABLE:
            self._verdict = self._retry(message or code)
        elif code == "stream_finished" and self.buffer.closed and self.stream_id is not None:
            # Capture ended and the stream is finished: our 'stop' landed (it is sent only
            # after every frame, and only it finishes a stream) and its answer was lost.
            # Success only if the server's count is ours (a stop whose last write failed
            # must never pass for one that kept everything).
            frames = msg.get("frames")
            if frames == self.offset and not isinstance(frames, bool):
                self._verdict = Done(self.offset, self.stream_id, confirmed=False)
            else:
                said = "did not say how many" if frames is None else f"holds {frames}"
                self._verdict = Failed(ClientError(
                    f"stream {self.stream_id} was finished by the server, which {said} "
                    f"frames, but this client sent {self.offset}", code="count_mismatch"))
        else:
            self._verdict = self._fatal(code, message)

    def _ready(self, msg: dict[str, Any]) -> None:
        stream, token, held = msg.get("stream"), msg.get("resume_token"), msg.get("offset")
        if not (isinstance(stream, str) and stream and isinstance(token, str)
                and isinstance(held, int) and not isinstance(held, bool) and held >= 0):
            self._violation(f"a 'ready' without stream, resume_token and offset: {msg}")
            return
        cut = self.buffer.cut
        if not cut:
            if held < self.acked:
                self._verdict = self._fatal(
                    "gap", f"server holds {held} frames but had acknowledged {self.acked}")
                return
            if held > self.buffer.end:
                self._verdict = self._fatal(
                    "ahead", f"server holds {held} frames but only {self.buffer.end} were sent")
                return
        # remembered before any audio goes out on this connection: a restart resumes it
        if not self.buffer.bind(stream, token):
            cut = True
        self.stream_id, self.resume_token = stream, token
        self._state = State.STREAMING
        self._deadline = None
        self._attempt = self._busy = 0
        self._spread = False
        self._held = held
        if cut:  # the stream ends as it is: 'stop' at once
            self.sent = held
        elif self.encoder is not None:
            self.sent = self.acked  # resend from the last ack: the fresh decoder drops the overlap
        else:
            self._ack(held)
            self.sent = held
        self._events.append(msg)

    def _streaming(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "ack":
            events = msg.get("events") or []
            if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
                self._violation(f"an ack whose events are not a list of objects: {msg}")
                return
            for e in events:  # (batch): before the ack, in order
                if e.get("type") == "error":
                    self._last_error = e
                self._events.append(e)
            offset = self._offset_of(msg)
            if offset is not None:
                self._ack(offset)
        elif kind == "stopped":
            offset = self._offset_of(msg)
            if offset is None:
                return
            if not self._stop_sent:
                self._violation(f"'stopped' before this client sent 'stop': {msg}")
                return
            self._events.append(msg)
            if offset != self._expected:
                self._verdict = Failed(ClientError(
                    f"the server stopped stream {self.stream_id} at {offset} frames, but this "
                    f"client sent {self._expected}", code="count_mismatch"))
                return
            self._ack(offset)
            self._verdict = Done(offset, self.stream_id)
        else:
            if kind == "error":
                self._last_error = msg
            self._events.append(msg)

    def _offset_of(self, msg: dict[str, Any]) -> int | None:
        offset = msg.get("offset")
        if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
            return offset
        self._violation(f"a {msg.get('type')!r} without a frame offset: {msg}")
        return None

    def _ack(self, offset: int) -> None:
        if offset > max(self.sent, self._held):
            self._violation(f"an ack of {offset} frames; only {self.sent} were sent")
            return
        if offset > self.acked:
            self.acked = offset
            # (Opus right after a resume: the server may ack what it holds before the
            # packets resent from the last ack reach it; those stay until they are sent.)
            self.buffer.release(min(offset, self.sent))

    def _violation(self, what: str) -> None:
        self._verdict = Failed(ClientError(f"the server broke the protocol: {what}",
                                           code="server_protocol"))

    # -- decisions -----------------------------------------------------------------------
    def _start_message(self) -> dict[str, Any]:
        start: dict[str, Any] = {
            "type": "start", "format": self.format, "rate": self.rate,
            "channels": self.channels, "client": self.client_info,
            "batch": True,  # events ride along with the ack: one message per ack interval
        }
        if self.name is not None:
            start["name"] = self.name
        if self.processors is not None:
            start["processors"] = self.processors
        if self.language is not None:
            start["language"] = self.language
        if self.stream_id is not None:
            # PCM: no 'offset': the server says in 'ready' what it holds, and the core
            # resends from there (declaring the last ack would make the server skip frames
            # it holds beyond it a second time). A server holding less than it acknowledged
            # is a gap, found at 'ready'.
            start.update(resume=self.stream_id, resume_token=self.resume_token)
        if self.encoder is not None:
            start["pre_skip"] = self.encoder.pre_skip
            if self.stream_id is not None:
                start["offset"] = self.acked  # every packet from the last ack is resent
        return start

    def _append_packets(self, packets: list[bytes]) -> None:
        from earshot.codec.opus import packet_samples

        for p in packets:
            self.buffer.append(p, packet_samples(p, self.rate))

    def _fatal(self, code: str, message: str) -> Failed:
        return Failed(ClientError(f"server refused: {message} [{code}]", code=code))

    def _retry(self, reason: str, refusal: Refusal | None = None) -> Decision:
        self._attempt += 1
        limit = self.reconnect.attempts if self.stream_id is not None \
            else self.reconnect.first_attempts
        if limit is not None and self._attempt > limit:
            return Failed(ClientError(
                f"cannot reach {self.server} (gave up after {limit} attempts): "
                f"{refusal.message if refusal is not None else reason}",
                code=refusal.code if refusal is not None else "unreachable"))
        backoff = self.reconnect.busy_delay if self._spread else self.reconnect.delay
        delay = backoff(self._attempt, self.rng)
        if refusal is not None and refusal.retry_after:
            delay = max(delay, refusal.retry_after)
        self._events.append({"type": "reconnecting", "attempt": self._attempt, "delay": delay,
                             "reason": reason})
        return RetryIn(delay, self._attempt, reason, refusal.code if refusal else None)

    def _busy_retry(self, code: str, message: str) -> Decision:
        self._busy += 1
        self._spread = True
        reason = f"{message} [{code}]"
        limit = self.reconnect.busy_attempts
        if limit is not None and self._busy > limit:
            return Failed(ClientError(f"server stayed busy (gave up after {limit} attempts): "
                                      f"{reason}", code=code))
        delay = self.reconnect.busy_delay(self._busy, self.rng)
        self._events.append({"type": "reconnecting", "attempt": self._busy, "delay": delay,
                             "code": code, "reason": reason})
        return RetryIn(delay, self._busy, reason, code)

    def _settle(self, decision: Decision) -> Decision:
        self._verdict = None
        self._deadline = None
        self._outbox.clear()
        if isinstance(decision, RetryIn):
            self._state = State.WAITING
            self._retrying = True
        else:
            self._state = State.DONE if isinstance(decision, Done) else State.FAILED
            self.outcome = decision
        return decision
