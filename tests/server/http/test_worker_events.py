"""Events posted on /ws/subscribe (remote workers) and starts on /ws, checked against the
poster's scopes, the streams it was handed and the audio received — in process, on a real
hub (earshot.server.testing.Gateway), no sockets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from earshot.server.auth import ADMIN, Principal, Scope, mint, secret_of
from earshot.server.http.subscribe import handle_worker_message
from earshot.server.testing import Gateway
from earshot.wire.ingest import Limits, parse_start
from helpers import RecordingOwner

RATE = 16000
ALL = 10**9  # (frames handed: the bound is the audio the server received)
WORKER = Principal("w", frozenset({Scope.WORKER}), processors=frozenset({"vad"}))
LISTENER = Principal("l", frozenset({Scope.LISTEN}))


def _msg(sid: str, *events: dict[str, Any]) -> str:
    return json.dumps({"type": "event", "stream": sid, "events": list(events)})


async def _live(gw: Gateway, seconds: float = 2.0) -> tuple[Any, RecordingOwner, np.ndarray]:
    owner = RecordingOwner()
    live, _, _ = await gw.hub.open(parse_start({"type": "start", "format": "s16", "rate": RATE,
                                                "name": "kitchen/mic", "processors": []},
                                               Limits()), owner)
    x = (np.random.default_rng(1).standard_normal(int(RATE * seconds)) * 3000).astype("<i2")
    gw.hub.add_audio(live, x.tobytes(), len(x))
    await gw.hub.flush(live)
    return live, owner, x


async def test_only_workers_post_and_only_for_streams_they_were_handed(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        live, owner, _ = await _live(gw)
        sid, note = live.id, {"type": "note", "processor": "vad", "t": 0.5}
        for who in (LISTENER, Principal("p", frozenset({Scope.PUBLISH}))):
            err = handle_worker_message(gw.hub, _msg(sid, note), who, {sid: ALL})
            assert err is not None and err["code"] == "forbidden"
            assert "worker scope" in err["message"]
        err = handle_worker_message(gw.hub, _msg(sid, note), WORKER, {})  # not handed
        assert err is not None and err["code"] == "forbidden" and "not handed" in err["message"]
        err = handle_worker_message(gw.hub, _msg(sid, note), ADMIN, {"other1": ALL})  # nor admin
        assert err is not None and err["code"] == "forbidden"
        err = handle_worker_message(gw.hub, _msg(sid, {**note, "processor": "asr"}), WORKER,
                                    {sid: ALL})
        assert err is not None and err["code"] == "forbidden" and "'asr'" in err["message"]
        err = handle_worker_message(gw.hub, _msg(sid, {"type": "note"}), WORKER, {sid: ALL})
        assert err is not None and err["code"] == "forbidden"  # a kinds grant needs 'processor'
        named = Principal("n", frozenset({Scope.WORKER}), names="garage/*")
        err = handle_worker_message(gw.hub, _msg(sid, note), named, {sid: ALL})
        assert err is not None and err["code"] == "forbidden" and "kitchen/mic" in err["message"]
        err = handle_worker_message(gw.hub, _msg(sid, {"type": "error", "code": "made_up_1",
                                                       "processor": "vad"}), WORKER, {sid: ALL})
        assert err is not None and err["code"] == "bad_event" and "made_up_1" in err["message"]
        assert [m["type"] for m in owner.posted] == []  # nothing of a refused message went out
        assert handle_worker_message(gw.hub, _msg(sid, note), WORKER, {sid: ALL}) is None
        assert owner.posted == [{**note, "stream": sid}]
        metrics = gw.metrics.errors.collect()[0].samples
        assert not any(s.labels.get("code") == "made_up_1" for s in metrics)


async def test_speech_end_spans_are_within_the_audio_and_never_twice(tmp_path: Path) -> None:
    async with Gateway(tmp_path) as gw:
        live, owner, x = await _live(gw, 2.0)
        sid = live.id

        def speech_end(start: float, end: float) -> dict[str, Any]:
            return {"type": "speech_end", "processor": "vad", "start": start, "end": end}

        err = handle_worker_message(gw.hub, _msg(sid, *[speech_end(0, 1e9)] * 20), WORKER,
                                    {sid: ALL})
        assert err is not None and err["code"] == "bad_event"
        assert "after the 2 s of audio received" in err["message"]
        assert handle_worker_message(gw.hub, _msg(sid, speech_end(0.5, 1.0)), WORKER,
                                     {sid: ALL}) is None
        for again in (speech_end(0.5, 1.0), speech_end(0.9, 1.5), speech_end(0.0, 0.2)):
            err = handle_worker_message(gw.hub, _msg(sid, again), WORKER, {sid: ALL})
            assert err is not None and err["code"] == "bad_event"
            assert "before the end of the previous one (1 s)" in err["message"]
        err = handle_worker_message(gw.hub, _msg(sid, speech_end(1.0, 1.5),
                                                 speech_end(1.2, 1.8)), WORKER, {sid: ALL})
        assert err is not None  # a message that repeats itself is refused whole
        assert handle_worker_message(gw.hub, _msg(sid, speech_end(1.0, 2.0)), WORKER,
                                     {sid: ALL}) is None
        await gw.hub.router.settle(sid, 5)  # the cuts run in a worker thread
        segs = gw.store.segments(sid)
        assert [(s.start, s.end) for s in segs] == [(8000, 16000), (16000, 32000)]
        cut, rate = sf.read(tmp_path / segs[0].path, dtype="int16")
        assert rate == RATE and np.array_equal(cut, x[8000:16000])
        assert [m["segment"] for m in owner.posted if m["type"] == "segment"] == [0, 1]


async def test_a_start_needs_the_publish_scope_for_its_name(tmp_path: Path) -> None:
    async with Gateway(tmp_path, token="admin-secret") as gw:
        secret = secret_of(gw.settings.security)
        assert secret is not None
        cases = [
            (mint(secret, ["publish"], ttl=60, names="kitchen/*"), "kitchen/mic", "ready"),
            (mint(secret, ["publish"], ttl=60, names="kitchen/*"), "garage", 4403),
            (mint(secret, ["listen", "worker"], ttl=60), "kitchen/mic", 4403),
            (mint(secret, ["publish"], ttl=1, now=1000.0), "kitchen/mic", 4401),  # expired
            ("admin-secret", "anything", "ready"),
        ]
        for token, name, want in cases:
            for how in ("header", "start"):  # the token up front, or in start
                headers = {"Authorization": f"Bearer {token}"} if how == "header" else None
                client = await gw.connect(headers=headers)
                start = {"type": "start", "format": "s16", "rate": RATE, "name": name,
                         "processors": []}
                if how == "start":
                    start["token"] = token
                if how == "header" and want == 4401:  # refused at once, before any start
                    assert (await client.closed())[0] == 4401
                    continue
                await client.send_json(start)
                if want == "ready":
                    await client.expect("ready")
                    await client.send_json({"type": "stop"})
                    await client.expect("stopped")
                else:
                    err = await client.expect("error")
                    assert err["code"] == ("forbidden" if want == 4403 else "unauthorized")
                    assert (await client.closed())[0] == want, (name, how)


async def test_a_connection_that_does_not_start_in_time_is_closed(tmp_path: Path) -> None:
    async with Gateway(tmp_path, token="admin-secret", auth_timeout=0.2) as gw:
        silent = await gw.connect()
        started = await gw.connect(headers={"Authorization": "Bearer admin-secret"})
        await started.send_json({"type": "start", "format": "s16", "rate": RATE,
                                 "processors": []})
        await started.expect("ready")
        code, _ = await silent.closed(timeout=3)
        assert code == 4401
        err = await silent.expect("error")
        assert err["code"] == "unauthorized" and "within 0.2 s" in err["message"]
        await asyncio.sleep(0.3)
        assert not started.task.done()  # a started stream has no deadline


async def test_a_stream_held_elsewhere_bounds_spans_by_the_audio_handed(tmp_path: Path) -> None:
    """A stream not held by this gateway (another one's, or ended): the worker's events go
    to the bus (the holder cuts its segments), spans within the audio this connection
    was sent."""
    async with Gateway(tmp_path) as gw:
        live, owner, _ = await _live(gw, 2.0)
        sid = live.id
        await gw.hub.detach(live, owner, stopped=True)
        sub = gw.bus.subscribe(sid)
        end = {"type": "speech_end", "processor": "vad", "start": 0.5, "end": 1.5}
        err = handle_worker_message(gw.hub, _msg(sid, end), WORKER, {sid: RATE})
        assert err is not None and "after the 1 s of audio received" in err["message"]
        ok = {**end, "end": 0.75}
        assert handle_worker_message(gw.hub, _msg(sid, ok), WORKER, {sid: RATE}) is None
        assert await asyncio.wait_for(sub.get(), 1) == {**ok, "stream": sid}
        err = handle_worker_message(gw.hub, _msg(sid, ok), WORKER, {sid: RATE})
        assert err is not None and "before the end of the previous one" in err["message"]
