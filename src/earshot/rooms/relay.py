"""The messages that carry a call across gateways: pure framing, bytes in, messages out.

With ``--bus redis://…`` a room is *held* by one gateway (its mix is made there); a
participant connected to another gateway keeps its stream there (archive, processors,
acks, resume) and reaches the room through these messages, sent over Redis pub/sub
(:mod:`earshot.server.rooms.relay` does the I/O). Every message is about one seat of one
room, seen from one connection (``conn``: a random id per call session, so that a
connection a resume superseded changes nothing, as on one gateway).

Frame (little-endian)::

    "ER"  version:u8  kind:u8
    room  participant  conn          each a string: length:u16 then UTF-8
    body                             by kind, below

Bodies:

* ``audio`` (participant's gateway → holder): ``offset:u64 format:u8 channels:u8`` then the
  samples exactly as archived (``format`` 0 = 16-bit, 1 = 32-bit float; interleaved): no
  JSON, no floats as text;
* ``mix`` (holder → participant's gateway): the call socket's binary message as is (the
  8-byte room frame, then the Opus packet or the 16-bit PCM);
* every other kind: a JSON object of its fields (``fields``): ``check`` and ``join``
  (requests: ``req``, ``reply_to`` and the seat's settings), ``reply`` (``req``, then
  ``state`` or ``error`` with ``code`` and ``message``), ``state`` (a request for the
  room's state), ``mute`` (``muted``), ``speech`` (``kind``, ``t``), ``leave``
  (``lost``), ``alive`` (the participant's gateway still has the seat's connection),
  ``post`` (``message``: a room message for the participant: an event, ``levels``).

:func:`decode` refuses anything else with :class:`~earshot.rooms.errors.RoomError`
``bad_relay``; the glue logs and drops such a message (the live mix is lossy by design,
the archive is whole on the participant's gateway).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from earshot.rooms.errors import RoomError

__all__ = ["KINDS", "RelayMessage", "decode", "encode", "pcm"]

VERSION = 1
MAGIC = b"ER"
Kind = Literal["check", "join", "reply", "state", "audio", "mix", "mute", "speech", "leave",
               "alive", "post"]
KINDS: tuple[Kind, ...] = ("check", "join", "reply", "state", "audio", "mix", "mute",
                           "speech", "leave", "alive", "post")
_CODE = {k: i + 1 for i, k in enumerate(KINDS)}
_HEAD = struct.Struct("<2sBB")
_LEN = struct.Struct("<H")
_AUDIO = struct.Struct("<QBB")
FORMATS = ("s16", "f32")
_WIDTH = {"s16": 2, "f32": 4}
MAX_STRING = 1024
MAX_CHANNELS = 8


@dataclass(frozen=True, slots=True)
class RelayMessage:
    """One message. ``fields``: the JSON body of control kinds; ``offset``, ``format``,
    ``channels``: of ``audio``; ``data``: the samples of ``audio``, the packet of ``mix``."""

    kind: Kind
    room: str
    participant: str
    conn: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    offset: int = 0
    format: str = "s16"
    channels: int = 1
    data: bytes = b""

    @property
    def frames(self) -> int:
        """Frames of audio in an ``audio`` message."""
        return len(self.data) // (_WIDTH[self.format] * self.channels)


def encode(m: RelayMessage) -> bytes:
    """The bytes of ``m`` (checked: a message that :func:`decode` would refuse raises)."""
    if m.kind not in _CODE:
        raise RoomError("bad_relay", f"unknown relay message kind {m.kind!r}")
    parts = [_HEAD.pack(MAGIC, VERSION, _CODE[m.kind])]
    for s in (m.room, m.participant, m.conn):
        parts.append(_string(s))
    if m.kind == "audio":
        if m.format not in FORMATS:
            raise RoomError("bad_relay", f"audio format must be s16 or f32, got {m.format!r}")
        if not (isinstance(m.channels, int) and 1 <= m.channels <= MAX_CHANNELS):
            raise RoomError("bad_relay", f"channels must be 1-{MAX_CHANNELS}, got "
                            f"{m.channels!r}")
        if not (isinstance(m.offset, int) and 0 <= m.offset < 1 << 64):
            raise RoomError("bad_relay", f"offset must be a frame number, got {m.offset!r}")
        if len(m.data) % (_WIDTH[m.format] * m.channels):
            raise RoomError("bad_relay", "audio data is not a whole number of frames")
        parts.append(_AUDIO.pack(m.offset, FORMATS.index(m.format), m.channels))
        parts.append(bytes(m.data))
    elif m.kind == "mix":
        parts.append(bytes(m.data))
    else:
        try:
            parts.append(json.dumps(m.fields, separators=(",", ":"),
                                    allow_nan=False).encode())
        except (TypeError, ValueError) as exc:
            raise RoomError("bad_relay", f"fields are not plain JSON: {exc}") from None
    return b"".join(parts)


def decode(data: bytes | bytearray | memoryview) -> RelayMessage:
    """The message in ``data``; :class:`RoomError` ``bad_relay`` if it is not one."""
    b = bytes(data)
    if len(b) < _HEAD.size:
        raise RoomError("bad_relay", "relay message too short")
    magic, version, code = _HEAD.unpack_from(b)
    if magic != MAGIC:
        raise RoomError("bad_relay", "not a relay message")
    if version != VERSION:
        raise RoomError("bad_relay", f"relay message version {version}, expected {VERSION}")
    if not 1 <= code <= len(KINDS):
        raise RoomError("bad_relay", f"unknown relay message kind {code}")
    kind = KINDS[code - 1]
    pos = _HEAD.size
    strings = []
    for _ in range(3):
        s, pos = _read_string(b, pos)
        strings.append(s)
    room, participant, conn = strings
    body = b[pos:]
    if kind == "audio":
        if len(body) < _AUDIO.size:
            raise RoomError("bad_relay", "audio message without its header")
        offset, fmt, channels = _AUDIO.unpack_from(body)
        if fmt >= len(FORMATS) or not 1 <= channels <= MAX_CHANNELS:
            raise RoomError("bad_relay", f"bad audio format {fmt} or channels {channels}")
        pcm_bytes = body[_AUDIO.size:]
        if len(pcm_bytes) % (_WIDTH[FORMATS[fmt]] * channels):
            raise RoomError("bad_relay", "audio data is not a whole number of frames")
        return RelayMessage(kind, room, participant, conn, offset=offset,
                            format=FORMATS[fmt], channels=channels, data=pcm_bytes)
    if kind == "mix":
        return RelayMessage(kind, room, participant, conn, data=body)
    try:
        fields = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RoomError("bad_relay", f"{kind} message with a body that is not JSON") from None
    if not isinstance(fields, dict):
        raise RoomError("bad_relay", f"{kind} message whose body is not a JSON object")
    return RelayMessage(kind, room, participant, conn, fields=fields)


def pcm(m: RelayMessage) -> np.ndarray:
    """An ``audio`` message's samples as float32, shape ``(frames, channels)``."""
    if m.kind != "audio":
        raise RoomError("bad_relay", f"a {m.kind} message carries no samples")
    if m.format == "s16":
        x = np.frombuffer(m.data, dtype="<i2").astype(np.float32) / 32768.0
    else:
        x = np.frombuffer(m.data, dtype="<f4").astype(np.float32)
    return x.reshape(-1, m.channels)


def _string(s: object) -> bytes:
    if not isinstance(s, str):
        raise RoomError("bad_relay", f"expected a string, got {s!r}")
    raw = s.encode()
    if len(raw) > MAX_STRING:
        raise RoomError("bad_relay", f"string of {len(raw)} bytes, at most {MAX_STRING}")
    return _LEN.pack(len(raw)) + raw


def _read_string(b: bytes, pos: int) -> tuple[str, int]:
    if pos + _LEN.size > len(b):
        raise RoomError("bad_relay", "relay message cut short")
    (n,) = _LEN.unpack_from(b, pos)
    pos += _LEN.size
    if n > MAX_STRING or pos + n > len(b):
        raise RoomError("bad_relay", "relay message cut short")
    try:
        return b[pos:pos + n].decode(), pos + n
    except UnicodeDecodeError:
        raise RoomError("bad_relay", "relay message with a string that is not UTF-8") from None
