"""Stateful fuzzing of the ingest protocol core (issue 12, must-show 5).

A hypothesis :class:`RuleBasedStateMachine` drives :class:`earshot.wire.ingest.IngestConnection`
with random interleavings of connect (plain or compatibility mode), start, resume (with and
without a declared offset, past the end, with the wrong format), audio of any length (split
anywhere, too large), stop, ping, garbage text and binary, acks, disconnects and crashes
(the server losing what it had not acknowledged). The machine plays the I/O layer (it
decides on each start like the hub would) and keeps a model of the archive, and checks
after every step:

* the archive holds exactly the client's bytes, in order, from 0: nothing lost, nothing
  twice, across any number of resumes (offsets monotonic, no gap, no duplicate);
* the server's offset equals what it accepted, and no ack is beyond it;
* every ``error`` carries a stable code and a message, every close a valid close code
  after an error, and a closed connection says nothing more;
* no exception escapes the core.

Bounded in the suite (``EARSHOT_FUZZ_EXAMPLES``, default 150 runs of up to 50 steps). The
seed corpus ``fuzz_corpus.json`` (explicit step sequences, replayed by
:func:`test_seed_corpus`) keeps the cases found so far; a long run writes any failure it
finds to the example database ``tests/wire/hypothesis-db`` (commit it):

    EARSHOT_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/wire/test_fuzz_ingest.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase, ReadOnlyDatabase
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from earshot.audio import StreamSpec
from earshot.wire.ingest import (
    FATAL_CLOSE,
    AudioIn,
    Close,
    IngestConnection,
    Limits,
    Send,
    StartRequested,
    State,
    StopRequested,
)

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "fuzz_corpus.json"
DB_DIR = HERE / "hypothesis-db"
LIMITS = Limits(max_message_bytes=8192)
RATE = 16000
LONG_RUN = "EARSHOT_FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("EARSHOT_FUZZ_EXAMPLES", "150"))
KNOWN_CLOSES = set(FATAL_CLOSE.values())


def truth(start: int, stop: int) -> bytes:
    """The client's stream content: byte ``i`` is a fixed function of ``i``, so any
    misplaced, repeated or missing byte shows."""
    i = np.arange(start, stop, dtype=np.int64)
    return (((i * 131) ^ ((i >> 8) * 7)) & 0xFF).astype(np.uint8).tobytes()


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                         st.floats(allow_nan=True), st.text(max_size=12))
start_values = {
    "format": st.sampled_from(["s16", "f32", "opus", "mp3", "", "S16"]) | json_scalars,
    "rate": st.sampled_from([16000, 8000, 7999, 192001, 0, -1]) | json_scalars
    | st.sampled_from(["16000", " 16000", "\u00b2", "\u0661\u0666\u0660\u0660\u0660",
                       "9" * 5000]),
    "channels": st.integers(-2, 10) | json_scalars,
    "name": st.text(max_size=300) | json_scalars,
    "offset": st.integers(-5, 10**6) | json_scalars | st.just("12"),
    "processors": st.lists(st.text(max_size=5) | st.integers(), max_size=20) | json_scalars,
    "client": st.dictionaries(st.text(max_size=5), json_scalars, max_size=3) | json_scalars,
    "pre_skip": st.integers(-1, 40000) | json_scalars,
    "archive": st.sampled_from(["wav", "flac", "ogg", "mp4"]) | json_scalars,
    "resume": st.text(max_size=10) | json_scalars,
    "token": json_scalars,
}
garbage_texts = st.one_of(
    st.text(max_size=100),
    st.just("{"), st.just("[]"), st.just("null"), st.just("[" * 3000 + "]" * 3000),
    st.just("x" * 5000),
    st.builds(json.dumps, st.dictionaries(st.sampled_from(["type", *start_values]),
                                          json_scalars, max_size=5)),
    st.builds(lambda d: json.dumps({"type": "start", **d}),
              st.fixed_dictionaries({}, optional=start_values)),
    st.builds(lambda v: json.dumps({"type": "stop", "length": v}), json_scalars),
    st.builds(lambda v: json.dumps({"type": "ping", "id": v}), json_scalars),
)


class IngestMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.spec = StreamSpec("s16", RATE, 1)
        self.fb = self.spec.frame_bytes
        self.conn: IngestConnection | None = None
        self.archive = bytearray()  # the server's copy of the current stream
        self.exists = False  # the current stream exists on the server
        self.finished = False
        self.acked = 0  # frames acknowledged to the client
        self.cpos = 0  # next byte of the stream the client sends on this connection
        self.last_offset = 0
        self.spec_of_stream = self.spec

    # -- set-up -----------------------------------------------------------------------
    @initialize(fmt=st.sampled_from(["s16", "f32"]), channels=st.integers(1, 3))
    def choose_spec(self, fmt: str, channels: int) -> None:
        self.spec = StreamSpec(fmt, RATE, channels)  # type: ignore[arg-type]
        self.fb = self.spec.frame_bytes

    # -- the client's moves -------------------------------------------------------------
    @rule(compat=st.booleans())
    def connect(self, compat: bool) -> None:
        if self.conn is not None:
            self.conn.closed()
        self.conn = IngestConnection(LIMITS, self.spec if compat else None)
        self.cpos = 0
        self.last_offset = 0

    @precondition(lambda self: self.conn is not None)
    @rule(resume=st.booleans(), declare=st.sampled_from(["none", "acked", "held", "past"]),
          mismatch=st.integers(0, 9))
    def start(self, resume: bool, declare: str, mismatch: int) -> None:
        msg: dict[str, Any] = {"type": "start", "format": self.spec.format, "rate": RATE,
                               "channels": self.spec.channels}
        if mismatch == 0:  # a resume in another format (or a new stream in it)
            msg["channels"] = self.spec.channels % 3 + 1
        if resume:
            msg.update(resume="s1", resume_token="tok")
            if declare == "acked":
                msg["offset"] = self.acked
            elif declare == "held":
                msg["offset"] = len(self.archive) // self.fb
            elif declare == "past":
                msg["offset"] = len(self.archive) // self.fb + 1 + mismatch
        self.feed_text(json.dumps(msg))

    @precondition(lambda self: self.conn is not None)
    @rule(n=st.one_of(st.integers(0, 40), st.integers(0, 3 * 8192), st.just(8193)))
    def audio(self, n: int) -> None:
        """The next ``n`` bytes of the stream (any length: not whole frames, too large)."""
        assert self.conn is not None
        if self.conn.state is State.AWAITING_START and self.conn.compat is not None:
            self.cpos = 0  # a compatibility-mode client starts a new stream with its audio
        data = truth(self.cpos, self.cpos + n)
        self.cpos += n
        self.run(self.conn.receive_bytes(data), sent_bytes=data)

    @precondition(lambda self: self.conn is not None)
    @rule(data=st.binary(max_size=64))
    def garbage_binary(self, data: bytes) -> None:
        assert self.conn is not None
        if self.conn.state in (State.STREAMING, State.AWAITING_START):
            return  # any bytes are valid PCM there (audio() sends those)
        self.run(self.conn.receive_bytes(data), sent_bytes=data)

    @precondition(lambda self: self.conn is not None)
    @rule(text=garbage_texts)
    def garbage_text(self, text: str) -> None:
        self.feed_text(text)

    @precondition(lambda self: self.conn is not None)
    @rule(length=st.none() | st.integers(0, 10**6))
    def stop(self, length: int | None) -> None:
        self.feed_text(json.dumps({"type": "stop"} if length is None else
                                  {"type": "stop", "length": length}))

    @precondition(lambda self: self.conn is not None)
    @rule(ping_id=json_scalars)
    def ping(self, ping_id: Any) -> None:
        assert self.conn is not None
        was_closed = self.conn.state is State.CLOSED
        outs = self.feed_text(json.dumps({"type": "ping", "id": ping_id}))
        if not was_closed and len(json.dumps({"type": "ping", "id": ping_id})) <= 8192:
            pongs = [o.message for o in outs if isinstance(o, Send)]
            assert pongs and pongs[0]["type"] == "pong"
            assert json.dumps(pongs[0]["id"]) == json.dumps(ping_id)

    @precondition(lambda self: self.conn is not None)
    @rule()
    def disconnect(self) -> None:
        assert self.conn is not None
        self.conn.closed()
        assert self.conn.receive_text('{"type":"ping"}') == []
        assert self.conn.receive_bytes(b"\0\0") == []
        self.conn = None

    # -- the server's moves -------------------------------------------------------------
    @precondition(lambda self: self.conn is not None and self.conn.state is State.STREAMING)
    @rule()
    def ack(self) -> None:
        """The server makes what it holds durable and acknowledges it."""
        assert self.conn is not None
        self.acked = self.conn.offset

    @rule(keep=st.floats(0, 1))
    def crash(self, keep: float) -> None:
        """kill -9: the connection is gone and unacknowledged frames may be lost."""
        if self.conn is not None:
            self.conn.closed()
            self.conn = None
        held = len(self.archive) // self.fb
        kept = self.acked + int((held - self.acked) * keep)
        del self.archive[kept * self.fb:]

    @precondition(lambda self: self.conn is not None and self.conn.state is State.STREAMING)
    @rule()
    def superseded(self) -> None:
        assert self.conn is not None
        self.run(self.conn.fail("superseded", "a newer connection resumed this stream"))

    # -- the I/O layer ------------------------------------------------------------------
    def feed_text(self, text: str) -> list[Any]:
        assert self.conn is not None
        outs = self.conn.receive_text(text)
        self.run(outs)
        return outs

    def decide(self, req: StartRequested) -> list[Any]:
        """What the hub would answer to a start."""
        assert self.conn is not None
        start = req.start
        if start.resume is None:  # a new stream
            if start.spec.format == "opus":  # (Opus has its own tests; not offered here)
                return self.conn.refuse("unsupported_format", "no opus on this server")
            self.archive.clear()
            self.exists, self.finished, self.acked = True, False, 0
            self.spec = self.spec_of_stream = start.spec
            self.fb = start.spec.frame_bytes
            return self.conn.accept("s1", "tok", 0)
        if not self.exists:
            return self.conn.refuse("unknown_stream", "no such stream")
        if self.finished:
            return self.conn.refuse("stream_finished", "the stream has ended")
        if start.spec != self.spec_of_stream:
            return self.conn.refuse("resume_mismatch", "resume with another format")
        return self.conn.accept("s1", "tok", len(self.archive) // self.fb)

    def run(self, outs: list[Any], sent_bytes: bytes = b"") -> None:
        assert self.conn is not None
        conn = self.conn
        queue = list(outs)
        closed_here = False
        said: list[dict[str, Any]] = []
        while queue:
            out = queue.pop(0)
            assert isinstance(out, Send | StartRequested | AudioIn | StopRequested | Close), out
            if isinstance(out, Send):
                msg = out.message
                said.append(msg)
                assert isinstance(msg.get("type"), str)
                if msg["type"] == "error":
                    assert isinstance(msg.get("code"), str) and msg["code"], msg
                    assert isinstance(msg.get("message"), str) and msg["message"], msg
                if msg["type"] == "ready":
                    held = len(self.archive) // self.fb
                    assert msg["offset"] == held
                    assert msg["offset"] >= self.acked  # nothing acknowledged was lost
                    assert conn.start is not None
                    declared = conn.start.offset
                    if conn.start.compat:
                        pass  # compat: the pending binary continues from cpos
                    elif declared is not None:
                        self.cpos = declared * self.fb
                    else:
                        self.cpos = held * self.fb
                    self.last_offset = held
            elif isinstance(out, StartRequested):
                queue[:0] = self.decide(out)
            elif isinstance(out, AudioIn):
                assert out.frames > 0 and len(out.data) == out.frames * self.fb
                at = len(self.archive)
                assert out.data == truth(at, at + len(out.data)), "misplaced audio"
                self.archive += out.data
            elif isinstance(out, StopRequested):
                self.finished = True
                self.acked = len(self.archive) // self.fb  # the server flushes on stop
                conn.closed()  # (the I/O layer answers 'stopped' and closes 1000)
            elif isinstance(out, Close):
                assert said and said[-1]["type"] == "error", said
                assert out.code in KNOWN_CLOSES or out.code == 4400, out
                assert conn.state is State.CLOSED
                closed_here = True
        if closed_here:
            assert conn.receive_text('{"type":"ping"}') == []
            assert conn.receive_bytes(b"\0" * 4) == []

    # -- invariants ---------------------------------------------------------------------
    @invariant()
    def archive_is_exactly_the_stream(self) -> None:
        assert len(self.archive) % self.fb == 0
        assert bytes(self.archive) == truth(0, len(self.archive))
        assert self.acked * self.fb <= len(self.archive)

    @invariant()
    def offsets_monotonic_and_acks_within_accepted(self) -> None:
        conn = self.conn
        if conn is None or conn.state not in (State.STREAMING, State.STOPPING):
            return
        assert conn.offset >= self.last_offset
        self.last_offset = conn.offset
        assert conn.offset * self.fb == len(self.archive)  # the offset acks are made of
        assert self.acked <= conn.offset


IngestMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=(DirectoryBasedExampleDatabase(str(DB_DIR)) if LONG_RUN
              else ReadOnlyDatabase(DirectoryBasedExampleDatabase(str(DB_DIR)))),
)
# (a long run takes minutes: no per-test timeout then)
TestIngestMachine = pytest.mark.timeout(0 if LONG_RUN else 180)(IngestMachine.TestCase)


# -- the seed corpus: explicit step sequences, replayed exactly ---------------------------
def replay(steps: list[list[Any]]) -> IngestMachine:
    m = IngestMachine()
    for name, kwargs in steps:
        getattr(m, name)(**kwargs)
        m.archive_is_exactly_the_stream()
        m.offsets_monotonic_and_acks_within_accepted()
    return m


CASES = json.loads(CORPUS.read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_seed_corpus(case: dict[str, Any]) -> None:
    m = replay(case["steps"])
    if "archive_frames" in case:
        assert len(m.archive) // m.fb == case["archive_frames"]
