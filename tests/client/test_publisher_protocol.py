"""The publisher's sans-I/O core, directly: no sockets, no event loop, time passed in.

Each test pairs a :class:`PublisherProtocol` with the real server-side core
(:class:`earshot.wire.ingest.IngestConnection`, in :mod:`ingest_double`) and shuttles the
messages between them; what the server ends up holding is compared byte for byte with
what the application sent.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from ingest_double import IngestServer, connect, hang_up, pump

from earshot.audio import encode
from earshot.client.protocol import (
    Done,
    Failed,
    PublisherProtocol,
    Reconnect,
    Resume,
    RetryIn,
    State,
    encode_pcm,
)
from earshot.client.transport import Refusal
from earshot.errors import ClientError

RATE = 16000


def pcm(n: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).integers(-20000, 20000, (n, channels)).astype("<i2")
    return x[:, 0] if channels == 1 else x


def core(**kw: object) -> PublisherProtocol:
    kw.setdefault("rate", RATE)
    kw.setdefault("format", "s16")
    kw.setdefault("rng", random.Random(7))
    return PublisherProtocol(**kw)  # type: ignore[arg-type]


def texts(messages: list[str | bytes]) -> list[dict[str, object]]:
    return [json.loads(m) for m in messages if isinstance(m, str)]


# -- the happy path --------------------------------------------------------------------------
def test_start_ready_audio_acks_stop_stopped() -> None:
    c = core(name="porch", processors=["level"], language="en-US", max_message_frames=500)
    server = IngestServer()
    x = pcm(4000)
    c.send(x[:1000])  # queued before any connection
    connect(c, server)
    start = texts(server.received)[0]
    assert start == {"type": "start", "format": "s16", "rate": RATE, "channels": 1,
                     "client": {"agent": "earshot-python"}, "batch": True, "name": "porch",
                     "processors": ["level"], "language": "en-US"}
    assert c.state is State.STREAMING and c.stream_id in server.streams
    assert [len(m) for m in server.received[1:]] == [1000, 1000]  # 500-frame messages
    assert c.sent == 1000 and c.acked == 0 and c.unacked == 1000

    level = {"type": "level", "t": 0.05, "db": -20.0}
    server.ack(600, events=[level])
    pump(c, server)
    assert (c.acked, c.unacked, c.buffer.start) == (600, 400, 600)  # released

    c.send(x[1000:])
    pump(c, server)
    server.ack()
    c.stop()
    pump(c, server)
    assert texts(server.received)[-1] == {"type": "stop"}
    assert c.close_expected()
    decision = hang_up(c, server)
    assert decision == Done(4000, c.stream_id) and c.outcome == decision
    assert c.state is State.DONE and c.buffer.start == c.buffer.end == 4000
    assert bytes(server.stream().data) == x.tobytes()  # byte-exact, nothing twice
    events = c.events_received()
    assert [e["type"] for e in events] == ["ready", "level", "stopped"]  # acks are internal
    assert events[1] == level
    assert c.connecting() == decision  # the end is the end


def test_arrays_become_wire_bytes_of_the_stream_format() -> None:
    stereo = np.random.default_rng(1).uniform(-0.5, 0.5, (300, 2)).astype(np.float32)
    c = core(format="f32", channels=2)
    assert c.send(stereo) == 300
    assert c.send(stereo.tobytes()) == 300  # raw wire bytes of whole frames
    assert c.buffer.read(0, 300)[0] == encode(stereo, "f32")
    with pytest.raises(ClientError, match="1-D array for a 2-channel stream"):
        c.send(stereo[:, 0])
    with pytest.raises(ClientError, match="array has 3 channels, stream has 2"):
        c.send(np.zeros((5, 3), np.float32))
    with pytest.raises(ClientError, match="whole 8-byte frames"):
        c.send(b"\x00" * 12)
    s16 = core(format="s16")
    s16.send(np.array([0.5, -1.0], np.float32))
    assert s16.buffer.read(0, 2)[0] == np.array([16384, -32768], "<i2").tobytes()
    assert encode_pcm(np.array([7, -7], np.int16), "s16", 1) == b"\x07\x00\xf9\xff"


def test_the_memory_buffer_is_bounded_and_send_after_stop_is_refused() -> None:
    c = core(buffer_seconds=0.1)  # 1600 frames
    block = pcm(1000)
    assert c.room_for(block)
    c.send(block)
    assert not c.room_for(block)  # 2000 > 1600: the I/O layer waits for acks
    assert c.room_for(block[:600])
    c.stop()
    with pytest.raises(ClientError, match="after stop"):
        c.send(block)


# -- drops and resumes -----------------------------------------------------------------------
@pytest.mark.parametrize("lose_unacked", [False, True])
def test_a_drop_resumes_from_the_servers_offset_resending_exactly_the_missing_frames(
        lose_unacked: bool) -> None:
    """The server acknowledged 1500 of 3000 frames when the connection dropped: it holds
    3000 (written, the ack lost) or only 1500 (lost with a crash); either way the resume
    sends exactly what it lacks, once."""
    c = core(max_message_frames=700)
    server = IngestServer()
    x = pcm(6000, seed=2)
    connect(c, server)
    c.send(x[:3000])
    pump(c, server)
    server.ack(1500)
    pump(c, server)
    assert (c.sent, c.acked) == (3000, 1500)
    decision = hang_up(c, server, lose_unacked=lose_unacked)
    assert isinstance(decision, RetryIn) and decision.attempt == 1
    assert decision.delay == pytest.approx(Reconnect().delay(1, random.Random(7)))
    assert c.events_received()[-1] == {"type": "reconnecting", "attempt": 1,
                                       "delay": decision.delay,
                                       "reason": "connection closed (1006 )"}
    c.send(x[3000:])  # capture goes on while disconnected
    before = len(server.received)
    connect(c, server)
    start = texts(server.received[before:])[0]
    assert (start["resume"], start["resume_token"]) == (c.stream_id, server.stream().token)
    assert "offset" not in start  # the server's ready says where to go on
    held = 1500 if lose_unacked else 3000
    resent = b"".join(m for m in server.received[before:] if isinstance(m, bytes))
    assert resent == x[held:].tobytes()  # exactly the missing frames
    assert c.reconnects == 1
    server.ack()
    c.stop()
    pump(c, server)
    assert hang_up(c, server) == Done(6000, c.stream_id)
    assert bytes(server.stream().data) == x.tobytes()


def test_the_server_going_away_while_streaming_is_busy_and_resumed() -> None:
    c = core()
    server = IngestServer()
    connect(c, server)
    c.send(pcm(800))
    pump(c, server)
    server.send({"type": "error", "code": "shutting_down", "message": "restarting"})
    server.close_frame = (1001, "going away")
    pump(c, server)
    decision = hang_up(c, server)
    assert isinstance(decision, RetryIn) and decision.code == "shutting_down"
    assert 0.5 * 0.2 <= decision.delay <= 1.5 * 0.2  # the busy spread
    connect(c, server)
    assert c.state is State.STREAMING and server.stream().frames == 800


@pytest.mark.parametrize("code", ["server_full", "shutting_down", "storage_full"])
def test_busy_refusals_back_off_with_jitter_and_without_a_bound(code: str) -> None:
    rec = Reconnect(initial=0.1, maximum=2.0, attempts=1, first_attempts=1,
                    busy_attempts=None)
    c = core(reconnect=rec, rng=random.Random(3))
    server = IngestServer()
    server.refusals = [(code, "come back later")] * 300
    delays = []
    for n in range(1, 301):
        connect(c, server)
        assert c.close_expected() and c.state is State.OPENING
        decision = hang_up(c, server)
        assert isinstance(decision, RetryIn), decision
        assert (decision.attempt, decision.code) == (n, code)
        base = rec.base(n)
        assert 0.5 * base <= decision.delay <= 1.5 * base
        delays.append(decision.delay)
    assert max(delays) <= 3.0 and len({round(d, 4) for d in delays}) > 250  # not a herd
    events = c.events_received()
    assert len(events) == 300 and events[0]["code"] == code
    assert events[0]["reason"] == f"come back later [{code}]"
    connect(c, server)  # the server has room again
    assert c.state is State.STREAMING and c.reconnects == 300


def test_busy_refusals_give_up_after_busy_attempts() -> None:
    c = core(reconnect=Reconnect(busy_attempts=2))
    server = IngestServer()
    server.refusals = [("server_full", "full")] * 3
    for _ in range(2):
        connect(c, server)
        assert isinstance(hang_up(c, server), RetryIn)
    connect(c, server)
    decision = hang_up(c, server)
    assert isinstance(decision, Failed) and decision.code == "server_full"
    assert "stayed busy (gave up after 2 attempts)" in str(decision.error)


@pytest.mark.parametrize(("code", "close"), [("unauthorized", 4401),
                                             ("bad_resume_token", 4403),
                                             ("stream_finished", 4409)])
def test_fatal_refusals_end_with_the_error(code: str, close: int) -> None:
    server = IngestServer()
    first = core()
    connect(first, server)
    first.send(pcm(100))
    pump(first, server)
    hang_up(first, server)
    assert first.stream_id is not None and first.resume_token is not None
    token = "wrong" if code == "bad_resume_token" else first.resume_token
    if code == "stream_finished":
        server.stream().finished = True
    c = core(resume=Resume(first.stream_id, token, offset=100))
    if code == "unauthorized":
        server.refusals = [("unauthorized", "a token is needed")]
    connect(c, server)
    assert server.close_frame is not None and server.close_frame[0] == close
    decision = hang_up(c, server)
    assert isinstance(decision, Failed) and decision.code == code
    assert str(decision.error).startswith("server refused: ") and f"[{code}]" in str(
        decision.error)
    assert c.state is State.FAILED and c.connecting() == decision


def test_a_fatal_close_while_streaming_carries_the_error_that_preceded_it() -> None:
    c = core()
    server = IngestServer()
    connect(c, server)
    server.send({"type": "error", "code": "superseded", "message": "resumed elsewhere"})
    pump(c, server)
    assert not c.close_expected()  # an error event alone is not the end...
    decision = c.connection_lost(4409, "superseded")  # ...its close code is
    assert isinstance(decision, Failed) and decision.code == "superseded"
    assert "resumed elsewhere" in str(decision.error)


def test_unreachable_servers_are_retried_then_given_up() -> None:
    c = core(reconnect=Reconnect(first_attempts=3), server="ws://nowhere/ws")
    for n in (1, 2, 3):
        d = c.connection_failed("connection refused")
        assert isinstance(d, RetryIn) and d.attempt == n
    d = c.connection_failed("connection refused")
    assert isinstance(d, Failed) and d.code == "unreachable"
    assert str(d.error) == ("cannot reach ws://nowhere/ws (gave up after 3 attempts): "
                            "connection refused")


def test_handshake_refusals_final_or_retried_after_retry_after() -> None:
    c = core()
    d = c.connection_failed("HTTP 429", Refusal("rate_limited", "HTTP 429: slow down", 7.0,
                                                429))
    assert isinstance(d, RetryIn) and d.delay == 7.0 and d.code == "rate_limited"
    d = c.connection_failed("HTTP 403", Refusal("origin_not_allowed", "HTTP 403: no", None,
                                                403))
    assert isinstance(d, Failed) and d.code == "origin_not_allowed"


def test_no_ready_within_the_timeout_is_a_retry() -> None:
    c = core(ready_timeout=5.0)
    c.connected(100.0)
    assert texts(c.data_to_send())[0]["type"] == "start"
    assert c.get_timer() == 105.0
    c.handle_timer(104.9)
    assert not c.close_expected()
    c.handle_timer(105.0)
    assert c.close_expected() and c.get_timer() is None
    d = c.connection_lost(1000, "")
    assert isinstance(d, RetryIn) and d.reason == "no 'ready' within 5 s"


# -- what the server says is checked ---------------------------------------------------------
def test_a_stopped_count_other_than_the_clients_is_an_error_never_success() -> None:
    c = core()
    server = IngestServer()
    connect(c, server)
    c.send(pcm(1000))
    c.stop()
    assert [m for m in c.data_to_send()][-1] == '{"type":"stop"}'
    c.receive_text(json.dumps({"type": "stopped", "stream": c.stream_id, "offset": 999}))
    d = c.connection_lost(1000, "stopped")
    assert isinstance(d, Failed) and d.code == "count_mismatch"
    assert "at 999 frames, but this client sent 1000" in str(d.error)
    assert c.state is State.FAILED


@pytest.mark.parametrize(("held", "code"), [(400, "gap"), (1200, "ahead")])
def test_a_server_holding_less_than_it_acknowledged_or_more_than_was_sent(
        held: int, code: str) -> None:
    c = core()
    server = IngestServer()
    connect(c, server)
    c.send(pcm(1000))
    pump(c, server)
    server.ack(600)
    pump(c, server)
    hang_up(c, server)
    c.connected(0.0)
    c.data_to_send()
    c.receive_text(json.dumps({"type": "ready", "stream": c.stream_id,
                               "resume_token": c.resume_token, "offset": held}))
    d = c.connection_lost(1000)
    assert isinstance(d, Failed) and d.code == code


@pytest.mark.parametrize("message", [
    "not json", "[1, 2]", '{"type": "ack", "offset": "lots"}', '{"type": "ack", "offset": 5000}',
    '{"type": "ack", "offset": 10, "events": {"a": 1}}', '{"type": "stopped", "offset": 0}',
])
def test_malformed_server_messages_are_a_clear_error(message: str) -> None:
    c = core()
    server = IngestServer()
    connect(c, server)
    c.send(pcm(100))
    pump(c, server)
    c.receive_text(message)
    assert c.close_expected()
    d = c.connection_lost(1000)
    assert isinstance(d, Failed) and d.code == "server_protocol"
    assert "the server broke the protocol" in str(d.error)


def test_stream_finished_after_a_stop_whose_answer_was_lost() -> None:
    c = core()
    server = IngestServer()
    connect(c, server)
    c.send(pcm(500))
    c.stop()
    for m in c.data_to_send():
        server.receive(m)
    assert server.stream().finished
    server.take()  # 'stopped' is lost with the connection
    server.close_frame = None
    assert isinstance(hang_up(c, server), RetryIn)
    connect(c, server)  # the resume: the stream is finished
    d = hang_up(c, server)
    assert d == Done(500, c.stream_id, confirmed=False)
    assert c.stream_id is not None and server.streams[c.stream_id].frames == 500


# -- backoff ---------------------------------------------------------------------------------
def test_backoff_grows_to_its_maximum_with_injected_jitter() -> None:
    r = Reconnect(initial=0.2, maximum=2.0, factor=2.0, jitter=0.25)
    assert [r.base(n) for n in range(1, 7)] == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    rng = random.Random(11)
    expect = random.Random(11)
    for n in range(1, 7):
        assert r.delay(n, rng) == r.base(n) * (1 + expect.uniform(-0.25, 0.25))
    assert all(0.75 * r.base(n) <= r.delay(n) <= 1.25 * r.base(n) for n in range(1, 9))
    busy = [r.busy_delay(3, random.Random(s)) for s in range(200)]
    assert 0.4 <= min(busy) < 0.45 and 1.15 < max(busy) <= 1.2


def test_attempts_in_a_row_reset_once_the_stream_is_ready() -> None:
    c = core(reconnect=Reconnect(attempts=2))
    server = IngestServer()
    connect(c, server)
    for _ in range(5):  # drop, fail once, reconnect: never two failures in a row
        assert isinstance(hang_up(c, server), RetryIn)
        assert isinstance(c.connection_failed("refused"), RetryIn)
        connect(c, server)
        assert c.state is State.STREAMING
    hang_up(c, server)
    c.connection_failed("refused")
    assert isinstance(c.connection_failed("refused"), Failed)


# -- Opus ------------------------------------------------------------------------------------
def test_opus_whole_packets_offsets_by_packet_duration_and_resume_from_the_last_ack() -> None:
    from earshot.codec.opus import OpusEncoder, packet_samples

    rate = 48000
    enc = OpusEncoder(rate, 1, frame_ms=20)
    c = core(rate=rate, format="opus", encoder=enc)
    server = IngestServer()
    t = np.arange(rate) / rate
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # 1 s
    c.send(x[:24000])
    connect(c, server)
    start = texts(server.received)[0]
    assert start["format"] == "opus" and start["pre_skip"] == enc.pre_skip
    packets = [m for m in server.received if isinstance(m, bytes)]
    assert [packet_samples(p, rate) for p in packets] == [960] * len(packets)  # whole
    s = server.stream()
    assert [at for at, _ in s.packets] == [-enc.pre_skip + 960 * i for i in range(len(packets))]
    sent = c.sent
    assert sent == -enc.pre_skip + 960 * len(packets)
    acked = server.ack(s.packets[10][0] + 960)  # the end of packet 10: a packet boundary
    pump(c, server)
    assert c.acked == acked and c.buffer.start == acked
    assert isinstance(hang_up(c, server), RetryIn)
    c.send(x[24000:])
    before = len(server.received)
    connect(c, server)
    resume = texts(server.received[before:])[0]
    assert (resume["resume"], resume["offset"], resume["pre_skip"]) == (
        c.stream_id, acked, enc.pre_skip)
    resent = [m for m in server.received[before:] if isinstance(m, bytes)]
    assert resent[: len(packets) - 11] == packets[11:]  # every packet from the last ack on
    c.stop()
    pump(c, server)
    stop = texts(server.received)[-1]
    assert stop == {"type": "stop", "length": rate}  # the true length, padding cut
    assert hang_up(c, server) == Done(rate, c.stream_id)
    assert c.offset == rate and c.bytes_sent == sum(map(len, packets)) + sum(
        map(len, [m for m in server.received[before:] if isinstance(m, bytes)]))


def test_opus_takes_only_samples() -> None:
    from earshot.codec.opus import OpusEncoder

    c = core(rate=16000, format="opus", encoder=OpusEncoder(16000, 1))
    with pytest.raises(ClientError, match="numpy arrays"):
        c.send(b"\x00\x00")
    with pytest.raises(ClientError, match="encoder"):
        core(format="opus")


def test_stream_finished_with_fewer_frames_than_sent_is_no_success() -> None:
    """A server that finished the stream without its tail (a full disk at the stop, issue
    19) says how many frames it holds: the client fails with count_mismatch, never Done."""
    c = core()
    server = IngestServer()
    connect(c, server)
    c.send(pcm(500))
    c.stop()
    for m in c.data_to_send():
        server.receive(m)
    assert server.stream().finished
    server.stream().frames = 300  # the server lost the last 200
    server.take()
    server.close_frame = None
    assert isinstance(hang_up(c, server), RetryIn)
    connect(c, server)
    d = hang_up(c, server)
    assert isinstance(d, Failed) and d.code == "count_mismatch"
    assert "holds 300 frames, but this client sent 500" in str(d.error)
