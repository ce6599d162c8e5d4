"""All-or-nothing stream open: a start that fails after its stream was created leaves
nothing held (issue 19, item 2), and a stateful test of the open/resume/stop/drop/fail
life cycle keeps the invariant that no stream is ``live`` without a connection."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from earshot.errors import ProtocolError
from earshot.processors.base import Chunk, Event, Processor
from earshot.processors.registry import Registry
from earshot.server.streams.hub import LiveStream
from earshot.server.testing import Gateway
from earshot.wire.ingest import Limits, parse_start
from helpers import RecordingOwner

RATE = 16000


class Boom(Processor):
    """A processor whose construction fails with something other than a ProcessorError
    (a bug in a plug-in, a library raising on bad input): the open must roll back."""

    name = "boom"

    def __init__(self) -> None:
        raise RuntimeError("boom")

    def process(self, chunk: Chunk) -> list[Event] | None:  # pragma: no cover
        return None


def start(**extra: Any) -> Any:
    return parse_start({"type": "start", "format": "s16", "rate": RATE, "processors": [],
                        **extra}, Limits())


def held(gw: Gateway) -> int:
    return int(gw.hub.admission_report()["held"])


async def test_a_start_failing_after_creation_leaves_nothing_held(tmp_path: Path) -> None:
    async with Gateway(tmp_path, max_streams=2) as gw:
        gw.hub.registry = Registry(extra={"boom": Boom})
        for _ in range(5):
            with pytest.raises(RuntimeError, match="boom"):
                await gw.hub.open(start(processors=["level", "boom"]), RecordingOwner())
        assert gw.hub.live == {} and held(gw) == 0
        assert gw.hub.metrics.streams_active._value.get() == 0
        assert gw.store.with_state("live") == []
        assert list((tmp_path / "streams").iterdir()) == []  # no file left (nor open)
        # the door is open: max_streams=2 would have refused after two zombies
        owner = RecordingOwner()
        live, _, _ = await gw.hub.open(start(processors=["level"]), owner)
        gw.hub.add_audio(live, np.zeros(1600, "<i2").tobytes(), 1600)
        await gw.hub.detach(live, owner, stopped=True)
        gw.hub.delete(live.id)


async def test_a_resume_failing_half_way_leaves_the_stream_resumable(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        gw.hub.registry = Registry(extra={"boom": Boom})
        owner = RecordingOwner()
        live, token, _ = await gw.hub.open(start(), owner)
        gw.hub.add_audio(live, np.ones(800, "<i2").tobytes(), 800)
        await gw.hub.detach(live, owner, stopped=False)
        with pytest.raises(RuntimeError):
            await gw.hub.open(start(resume=live.id, resume_token=token, processors=["boom"]),
                              RecordingOwner())
        rec = gw.store.get(live.id)
        assert (rec.state, rec.frames) == ("interrupted", 800) and gw.hub.live == {}
        again, _, _ = await gw.hub.open(start(resume=live.id, resume_token=token), RecordingOwner())
        assert again.offset == 800


async def test_five_malformed_starts_over_a_session_leave_no_zombie(tmp_path: Path) -> None:
    """Through the ingest session (what /ws runs): each bad start is answered bad_start
    (caught before anything is created) or internal (rolled back), the connection goes on."""
    async with Gateway(tmp_path, max_streams=1) as gw:
        gw.hub.registry = Registry(extra={"boom": Boom})
        for bad in ([{"name": ["x"]}], [{"name": "level", "options": [1]}], ["boom"],
                    [{"name": {"a": 1}}], ["level", "boom"]):
            client = await gw.connect()
            await client.send_json({"type": "start", "format": "s16", "rate": RATE,
                                    "processors": bad})
            err = await client.expect("error")
            assert err["code"] == ("internal" if "boom" in bad else "bad_start"), err
        assert gw.hub.live == {} and held(gw) == 0
        client = await gw.connect()
        await client.send_json({"type": "start", "format": "s16", "rate": RATE,
                                "processors": []})
        ready = await client.expect("ready")
        assert gw.hub.is_live(ready["stream"])


# -- the stateful life cycle ------------------------------------------------------------


class LifeCycle(RuleBasedStateMachine):
    """Open, resume (also while the old connection still holds it), stop, drop, and opens
    and resumes that fail half-way, in any order. After every step: each stream in the
    live map is held by a connection still there (or is being detached), every row that
    says ``live`` is in the live map, and the admission count is the live map's size."""

    streams = Bundle("streams")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = __import__("tempfile").TemporaryDirectory(prefix="earshot-lc-")
        self.gw = Gateway(Path(self.tmp.name))
        self.loop.run_until_complete(self.gw.__aenter__())
        self.gw.hub.registry = Registry(extra={"boom": Boom})
        self.tokens: dict[str, str] = {}
        self.owners: dict[str, RecordingOwner] = {}
        self.finished: set[str] = set()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.gw.close())
        self.loop.close()
        self.tmp.cleanup()

    @rule(target=streams, procs=st.sampled_from([[], ["level"]]))
    def open_new(self, procs: list[str]) -> str:
        owner = RecordingOwner()
        live, token, _ = self.run(self.gw.hub.open(start(processors=procs), owner))
        self.tokens[live.id], self.owners[live.id] = token, owner
        return live.id

    @rule()
    def open_fails(self) -> None:
        with pytest.raises(RuntimeError):
            self.run(self.gw.hub.open(start(processors=["level", "boom"]), RecordingOwner()))

    @rule(sid=streams, frames=st.integers(0, 2000))
    def feed(self, sid: str, frames: int) -> None:
        live = self.gw.hub.live.get(sid)
        if live is not None and frames:
            self.gw.hub.add_audio(live, np.ones(frames, "<i2").tobytes(), frames)

    @rule(sid=streams, fail=st.booleans())
    def resume(self, sid: str, fail: bool) -> None:
        owner = RecordingOwner()
        s = start(resume=sid, resume_token=self.tokens[sid],
                  processors=["boom"] if fail else [])
        if sid in self.finished:
            with pytest.raises(ProtocolError):
                self.run(self.gw.hub.open(s, owner))
            return
        held_live = self.gw.hub.live.get(sid)
        # a stream held here keeps its pipeline; one without any gets a new one
        if fail and (held_live is None or held_live.pipeline is None):
            with pytest.raises(RuntimeError):
                self.run(self.gw.hub.open(s, owner))
            self.owners.pop(sid, None)  # a held stream's connection was superseded
            return
        live, _, _ = self.run(self.gw.hub.open(s, owner))  # (a held stream keeps its pipeline)
        self.owners[sid] = owner
        assert live.owner is owner

    @rule(sid=streams, stopped=st.booleans(), stale=st.booleans())
    def detach(self, sid: str, stopped: bool, stale: bool) -> None:
        live = self.gw.hub.live.get(sid)
        if live is None:
            return
        owner = RecordingOwner() if stale else self.owners[sid]  # a superseded connection's detach
        self.run(self.gw.hub.detach(live, owner, stopped=stopped))  # type: ignore[arg-type]
        if not stale:
            del self.owners[sid]  # the connection is gone
            if stopped:
                self.finished.add(sid)

    @rule(sid=consumes(streams))
    def delete(self, sid: str) -> None:
        if sid in self.gw.hub.live:
            return
        self.gw.hub.delete(sid)
        self.finished.add(sid)  # (its token is of no use any more)
        self.tokens.pop(sid, None)

    @invariant()
    def nothing_live_without_a_connection(self) -> None:
        hub = self.gw.hub
        for sid, live in hub.live.items():
            assert isinstance(live, LiveStream)
            # its owner is the connection that opened or last resumed it, still connected
            # (a failed open's connection is gone: it must hold nothing)
            assert live.owner is self.owners.get(sid) or live.detaching is not None, sid
        rows = {r.id for r in self.gw.store.with_state("live")}
        assert rows <= set(hub.live), rows - set(hub.live)
        assert hub.admission_report()["held"] == len(hub.live)
        assert hub.metrics.streams_active._value.get() == len(hub.live)

    @invariant()
    def finished_streams_are_not_live(self) -> None:
        assert not (self.finished & set(self.gw.hub.live))


LifeCycle.TestCase.settings = settings(max_examples=30, stateful_step_count=20,
                                       deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])
test_life_cycle = LifeCycle.TestCase


def test_json_of_the_probe_is_what_the_issue_sent() -> None:
    """The issue's probe, ``processors: [{"name": ["x"]}]``, is refused by the parser now."""
    with pytest.raises(ProtocolError) as exc:
        parse_start(json.loads('{"type":"start","processors":[{"name":["x"]}]}'), Limits())
    assert exc.value.code == "bad_start" and "processors[0].name" in exc.value.message
