"""The relay framing between gateways (earshot.rooms.relay): every kind round-trips, audio
is binary and exact, and anything that is not a message is refused with ``bad_relay``."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from earshot.rooms.errors import RoomError
from earshot.rooms.relay import KINDS, RelayMessage, decode, encode, pcm


def test_audio_round_trips_exactly_and_is_binary(speech: np.ndarray) -> None:
    x = (speech[:320] * 32767).astype("<i2")
    m = RelayMessage("audio", "duo", "änn", "c0ffee", offset=16000 * 3600 * 24,
                     format="s16", channels=1, data=x.tobytes())
    b = encode(m)
    assert len(b) == 4 + (2 + 3) + (2 + 4) + (2 + 6) + 10 + 640  # no JSON, no text floats
    assert b[:2] == b"ER" and b[-640:] == x.tobytes()
    back = decode(b)
    assert back == m and back.frames == 320
    y = pcm(back)
    assert y.shape == (320, 1) and np.array_equal(y[:, 0], x.astype(np.float32) / 32768)


def test_float_stereo_audio_keeps_its_samples() -> None:
    x = np.array([[0.25, -0.5], [1e-7, 0.999]], dtype="<f4")
    m = RelayMessage("audio", "r", "p", "c", offset=7, format="f32", channels=2,
                     data=x.tobytes())
    back = decode(encode(m))
    assert back.offset == 7 and back.channels == 2 and back.frames == 2
    assert np.array_equal(pcm(back), x)


def test_mix_carries_the_call_socket_message_as_is() -> None:
    packet = struct.pack("<Q", 960 * 51) + bytes(range(256)) * 3
    back = decode(encode(RelayMessage("mix", "room", "bob", "id", data=packet)))
    assert back.kind == "mix" and back.data == packet and back.fields == {}


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("audio", "mix")])
def test_control_kinds_round_trip_their_fields(kind: str) -> None:
    fields = {"req": "abc", "reply_to": "gw@h:1", "muted": True, "t": 1.25,
              "message": {"type": "joined", "participant": "ann", "t": 0.5},
              "error": {"code": "room_full", "message": "full"}}
    m = RelayMessage(kind, "room-1", "ann", "c", fields=fields)  # type: ignore[arg-type]
    assert decode(encode(m)) == m


@pytest.mark.parametrize("bad", [
    b"", b"ER", b"XX\x01\x01\x00\x00\x00\x00\x00\x00",  # not one
    b"ER\x02\x01\x00\x00\x00\x00\x00\x00{}",  # another version
    b"ER\x01\x63\x00\x00\x00\x00\x00\x00{}",  # unknown kind
    b"ER\x01\x01\x05\x00ab",  # a string cut short
    b"ER\x01\x01\x02\x00\xff\xfe\x00\x00\x00\x00{}",  # not UTF-8
    b"ER\x01\x01\x00\x00\x00\x00\x00\x00[1]",  # a body that is not an object
    b"ER\x01\x01\x00\x00\x00\x00\x00\x00{nope",  # nor JSON
    b"ER\x01\x05\x00\x00\x00\x00\x00\x00\x01\x00",  # audio without its header
    b"ER\x01\x05\x00\x00\x00\x00\x00\x00" + struct.pack("<QBB", 0, 0, 1) + b"\x01",  # half
    b"ER\x01\x05\x00\x00\x00\x00\x00\x00" + struct.pack("<QBB", 0, 9, 1),  # bad format
    b"ER\x01\x05\x00\x00\x00\x00\x00\x00" + struct.pack("<QBB", 0, 0, 0),  # no channels
])
def test_what_is_not_a_message_is_refused(bad: bytes) -> None:
    with pytest.raises(RoomError) as e:
        decode(bad)
    assert e.value.code == "bad_relay"


@pytest.mark.parametrize("m", [
    RelayMessage("nope", "r", "p"),  # type: ignore[arg-type]
    RelayMessage("audio", "r", "p", format="u8"),
    RelayMessage("audio", "r", "p", channels=0),
    RelayMessage("audio", "r", "p", offset=-1),
    RelayMessage("audio", "r", "p", data=b"\x00"),  # half a frame
    RelayMessage("post", "r", "p", fields={"x": float("nan")}),
    RelayMessage("post", "r", "p", fields={"x": object()}),
    RelayMessage("post", "r" * 2000, "p"),
])
def test_encode_refuses_what_decode_would(m: RelayMessage) -> None:
    with pytest.raises(RoomError) as e:
        encode(m)
    assert e.value.code == "bad_relay"


def test_only_audio_carries_samples() -> None:
    with pytest.raises(RoomError):
        pcm(RelayMessage("mix", "r", "p", data=b"\x00\x00"))
    b = encode(RelayMessage("leave", "r", "p", fields={"lost": True}))
    body = json.loads(b[4 + 3 + 3 + 2:])  # head, "r", "p", "" then the JSON
    assert body == {"lost": True}
