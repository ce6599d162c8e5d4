"""The publisher's core on a spool entry (``SpoolBuffer``), directly: the spool survives the
process, and audio dropped from a full spool ends its stream as it is. No sockets: the
server is :mod:`ingest_double` (the real server-side protocol core)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ingest_double import IngestServer, connect, hang_up, pump

from earshot.client.buffer import SpoolBuffer
from earshot.client.protocol import Done, RetryIn, State
from earshot.client.spool import Dropped, Spool
from earshot.client.spooled import entry_protocol

RATE = 8000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pcm(n: int) -> np.ndarray:
    return (np.arange(n) % 30000 - 15000).astype("<i2")  # every frame says where it is from


@pytest.mark.parametrize("lose_unacked", [False, True])
def test_the_spool_survives_a_restart_and_a_new_core_resumes_from_it(
        tmp_path: Path, lose_unacked: bool) -> None:
    clock = Clock()
    sp = Spool(tmp_path, segment_seconds=0.25, clock=clock)
    entry = sp.create(format="s16", rate=RATE, channels=1, name="pi", processors=[])
    c = entry_protocol(entry, server="ws://server/ws", spool=sp)
    x = pcm(5000)
    c.send(x[:3000])  # capture, before any server was reachable
    assert (entry.written, c.buffer.end, c.unacked) == (3000, 3000, 3000)
    server = IngestServer()
    connect(c, server)
    start = json.loads(server.received[0])  # type: ignore[arg-type]
    assert start["client"]["spool"] == entry.id and start["name"] == "pi"
    # the stream is on disk before any audio went out on it (a restart resumes it)
    on_disk = json.loads((entry.path / "meta.json").read_text())
    assert (on_disk["stream_id"], on_disk["resume_token"]) == (c.stream_id, c.resume_token)
    c.send(x[3000:])
    pump(c, server)
    clock.now = 5.0  # the index records acks at most once a second
    server.ack(2000)
    pump(c, server)
    assert entry.acked == 2000 and json.loads((entry.path / "meta.json").read_text())[
        "acked"] == 2000
    assert [p.name for p in sorted(entry.path.glob("*.pcm"))] == [
        "000000002000.pcm", "000000004000.pcm"]  # acknowledged segments are gone
    hang_up(c, server, lose_unacked=lose_unacked)
    sp.close()  # the process dies: what is on disk is all there is

    again = Spool(tmp_path, segment_seconds=0.25)
    (e,) = again.entries()
    assert e.try_lock() and (e.stream_id, e.written, e.acked) == (c.stream_id, 5000, 2000)
    e.close_capture()  # its capturer is gone: deliver what it left, then stop
    c2 = entry_protocol(e, server="ws://server/ws")
    before = len(server.received)
    connect(c2, server)
    resume = json.loads(server.received[before])  # type: ignore[arg-type]
    assert (resume["resume"], resume["resume_token"]) == (c.stream_id, c.resume_token)
    held = 2000 if lose_unacked else 5000
    resent = b"".join(m for m in server.received[before:] if isinstance(m, bytes))
    assert resent == x[held:].tobytes()  # from disk, exactly what the server lacks
    assert json.loads(server.received[-1]) == {"type": "stop"}  # type: ignore[arg-type]
    d = hang_up(c2, server)
    assert d == Done(5000, c.stream_id)
    e.mark_stopped(5000)
    assert e.delivered and bytes(server.stream().data) == x.tobytes()


def test_audio_dropped_from_a_full_spool_ends_the_stream_as_it_is(tmp_path: Path) -> None:
    """2000-frame segments, room for three. 2500 frames are sent, 500 acknowledged; capture
    goes on: the oldest segment is deleted with 1500 frames unacknowledged. The stream in
    flight is stopped at once, holding everything sent; the rest goes to a new stream."""
    sp = Spool(tmp_path, max_bytes=3 * 2000 * 2, segment_seconds=0.25)
    entry = sp.create(format="s16", rate=RATE, channels=1)
    dropped: list[Dropped] = []
    c = entry_protocol(entry, server="ws://server/ws", spool=sp, on_dropped=dropped.extend)
    x = pcm(7500)
    server = IngestServer()
    connect(c, server)
    c.send(x[:2500])
    pump(c, server)
    server.ack(500)
    pump(c, server)
    first = c.stream_id
    for i in range(2500, 7500, 500):
        c.send(x[i:i + 500])
    assert dropped == [Dropped(entry.id, 500, 2000, RATE)]
    assert c.buffer.cut and entry.finish == [[first, c.resume_token, 0]]
    out = c.data_to_send()
    assert out == ['{"type":"stop"}']  # no more audio on this stream
    server.receive(out[0])
    pump(c, server)
    assert hang_up(c, server) == Done(2500, first)
    assert bytes(server.streams[first or ""].data) == x[:2500].tobytes()
    entry.finished(first or "", 2500)  # (what deliver_entry does) it held 2500: go on there
    assert (entry.origin, entry.finish) == (2500, [])

    entry.close_capture()
    rest = entry_protocol(entry, server="ws://server/ws")
    assert isinstance(rest.buffer, SpoolBuffer) and rest.buffer.origin == 2500
    connect(rest, server)
    assert rest.stream_id != first
    assert hang_up(rest, server) == Done(5000, rest.stream_id)
    assert bytes(server.stream().data) == x[2500:].tobytes()  # nothing lost, nothing twice


def test_a_cut_buffer_without_a_stream_needs_no_connection(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=2 * 2000 * 2, segment_seconds=0.25)
    entry = sp.create(format="s16", rate=RATE, channels=1)
    c = entry_protocol(entry, server="ws://server/ws", spool=sp)
    for _ in range(0, 6000, 500):  # nobody listens: the oldest audio goes
        c.send(pcm(500))
    assert c.buffer.cut and entry.origin == 2000
    assert c.connecting() == Done(None, None) and c.state is State.DONE


def test_a_stream_dropped_while_away_is_stopped_as_it_is_on_resume(tmp_path: Path) -> None:
    sp = Spool(tmp_path, max_bytes=3 * 2000 * 2, segment_seconds=0.25)
    entry = sp.create(format="s16", rate=RATE, channels=1)
    c = entry_protocol(entry, server="ws://server/ws", spool=sp)
    x = pcm(9000)
    server = IngestServer()
    connect(c, server)
    c.send(x[:1200])
    pump(c, server)
    server.ack(400)
    pump(c, server)
    assert isinstance(hang_up(c, server, lose_unacked=True), RetryIn)  # holds 400 now
    for i in range(1200, 9000, 600):
        c.send(x[i:i + 600])
    assert c.buffer.cut
    connect(c, server)  # resumes only to stop it as it is: no audio
    sent = server.received[-2:]
    assert json.loads(sent[0])["resume"] == c.stream_id  # type: ignore[arg-type]
    assert sent[1] == '{"type":"stop"}'
    assert hang_up(c, server) == Done(400, c.stream_id)


def test_a_spooled_publisher_never_gives_up(tmp_path: Path) -> None:
    from earshot.client import Publisher, Reconnect

    pub = Publisher("ws://server/ws", rate=RATE, format="s16", spool=tmp_path,
                    reconnect=Reconnect(initial=0.5, attempts=3, busy_attempts=5))
    r = pub.reconnect
    assert (r.attempts, r.first_attempts, r.busy_attempts, r.initial) == (None, None, None, 0.5)
