"""The call client without a server: its URL, what send() queues, and its 20 ms clock
playing the mix packets it was given (decoded, concealed, silence while none come)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from earshot.call import Call
from earshot.client.call import call_url
from earshot.codec.opus import OpusEncoder
from earshot.errors import ClientError


def test_the_call_socket_of_an_ingest_url() -> None:
    assert call_url("ws://h:8000/ws", "standup", "Ann B") == \
        "ws://h:8000/ws/call?room=standup&name=Ann+B"
    assert call_url("wss://h/prefix/ws/", "r", "x") == "wss://h/prefix/ws/call?room=r&name=x"
    assert call_url("ws://h:1/ws/call", "r", "x").startswith("ws://h:1/ws/call?")


def test_bad_rates_are_refused() -> None:
    for rate in (0, -16000, 44101, 16000.0):
        with pytest.raises(ClientError):
            Call("ws://h/ws", "r", "x", rate=rate)  # type: ignore[arg-type]


def test_send_queues_exact_16_bit_frames() -> None:
    call = Call("ws://h/ws", "r", "x", rate=16000)
    x = np.array([0, 1, -1, 32767, -32768], np.int16)
    call.send(x)
    call.send(np.array([[0.5, 0.5], [-0.25, -0.25]], np.float32))  # stereo: averaged
    assert call.offset == 7
    # (the queued bytes are what the archive will hold)
    got = call.unacknowledged()
    assert got.tolist() == [0, 1, -1, 32767, -32768, 16384, -8192]


def test_the_clock_plays_packets_by_room_frame() -> None:
    call = Call("ws://h/ws", "r", "x", record=True, min_delay=0.0)
    enc = OpusEncoder(48000, 1, application="lowdelay")
    t = np.arange(960 * 20) / 48000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    packets = enc.encode(tone)
    now = 100.0
    played = []
    for k, p in enumerate(packets):
        call.receive_mix(struct.pack("<Q", 960 * (50 + k)) + p)
        played.append(call.tick(now))
        now += 0.02
    for _ in range(20):  # nothing more comes: concealment, then silence
        played.append(call.tick(now))
        now += 0.02
    heard = call.heard()
    assert len(heard) == 960 * 40 == sum(len(p) for p in played)
    assert float(np.abs(heard[960 * 10:960 * 15]).max()) > 0.2  # the tone, decoded
    assert float(np.abs(heard[-960:]).max()) < 1e-3  # silence once nothing comes
    assert call.ticks == 40
