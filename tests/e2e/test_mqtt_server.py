"""The MQTT bridge end to end: a real mosquitto, real ``earshot serve --mqtt`` / ``earshot
worker --mqtt`` processes, a real paho subscriber (issue 13, item 6)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from helpers import FIXTURES, Child, ServerProcess, of, stream_file
from mqtt_helpers import Mosquitto, Subscriber

pytestmark = pytest.mark.slow


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "mosquitto").start()
    yield b
    b.stop()


@pytest.fixture
def subscribers() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(port: int, *topics: str) -> Subscriber:
        made.append(Subscriber(port, *topics))
        return made[-1]

    yield make
    for s in made:
        s.close()


def speech() -> tuple[np.ndarray, int]:
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    return x, rate


def payloads(msgs: list) -> list[dict]:
    return [m.json() for m in msgs]


def archive(server: ServerProcess, sid: str) -> np.ndarray:
    rec = httpx.get(f"{server.http}/api/streams/{sid}").json()
    return sf.read(server.data_dir / rec["path"], dtype="int16")[0]


async def test_level_and_vad_events_reach_a_subscriber_in_order(
        broker: Mosquitto, server_factory: Callable[..., ServerProcess],
        subscribers: Callable[..., Subscriber]) -> None:
    server = server_factory("--mqtt", f"{broker.url}/site1/earshot")
    sub = subscribers(broker.port, "site1/earshot/#")
    x, rate = speech()
    name = "kitchen/mic+1#"  # '/', '+' and '#' cannot stand in a topic level
    pub, events, _ = await stream_file(server.url, x, rate, processors=["level", "vad"],
                                       realtime=False, name=name)
    sid = pub.stream_id
    base = "site1/earshot/kitchen_mic_1_"
    sub.wait_for(lambda: sub.on(f"{base}/stream_ended"))
    sub.wait_for(lambda: len(sub.on(f"{base}/level")) >= len(of(events, "level")), 10)

    # every level event the sender got, in stream-time order, covering the stream
    levels = payloads(sub.on(f"{base}/level"))
    assert levels == of(events, "level")
    ts = [e["t"] for e in levels]
    assert ts == sorted(ts) and ts[0] == 0.0
    assert ts[-1] + levels[-1]["duration"] == pytest.approx(len(x) / rate, abs=1e-3)
    assert all(e["stream"] == sid for e in levels)
    # speech_start/end as the sender saw them, QoS 1; the fixture's three utterances
    starts, ends = payloads(sub.on(f"{base}/speech_start")), payloads(sub.on(f"{base}/speech_end"))
    assert starts == of(events, "speech_start") and ends == of(events, "speech_end")
    assert len(starts) == len(ends) == 3
    truth = json.loads((FIXTURES / "speech_16k.json").read_text())["speech"]
    for e, u in zip(ends, truth, strict=True):
        assert e["start"] == pytest.approx(u["start_s"], abs=0.25)
        assert e["end"] == pytest.approx(u["end_s"], abs=0.35)
    assert {m.qos for m in sub.on(f"{base}/speech_end")} == {1}
    assert len(sub.on(f"{base}/segment")) == 3
    started = payloads(sub.on(f"{base}/stream_started"))
    assert [(e["stream"], e["name"]) for e in started] == [(sid, name)]
    assert payloads(sub.on(f"{base}/stream_ended"))[0]["frames"] == len(x)
    # the state topic, retained: a dashboard connecting after the end sees it finished
    late = subscribers(broker.port, "site1/earshot/+/state")
    late.wait_for(lambda: late.on(f"{base}/state"))
    (state,) = late.on(f"{base}/state")
    assert state.retain and state.json()["state"] == "finished" and state.json()["stream"] == sid
    assert not any(m.topic.startswith("site1/earshot/" + sid) for m in sub.messages)
    m = httpx.get(f"{server.http}/metrics").text
    assert 'earshot_mqtt_connected 1.0' in m
    assert 'earshot_mqtt_dropped_total{reason="queue_full"} 0.0' in m


async def test_the_state_topic_shows_live_streams_to_late_subscribers(
        broker: Mosquitto, server_factory: Callable[..., ServerProcess],
        subscribers: Callable[..., Subscriber]) -> None:
    from earshot.client import Publisher

    server = server_factory("--mqtt", broker.url)
    pub = Publisher(server.url, rate=16000, format="s16", processors=[])  # no name: its id
    await pub.start()
    await pub.send(np.zeros(1600, np.int16))
    topic = f"earshot/{pub.stream_id}/state"
    late = subscribers(broker.port, "earshot/+/state")
    late.wait_for(lambda: late.on(topic))
    live = late.on(topic)[0]
    assert live.retain and live.json()["state"] == "live" and live.json()["rate"] == 16000
    await pub.stop()
    late.wait_for(lambda: len(late.on(topic)) == 2)
    assert late.on(topic)[1].payload == b""  # an unnamed stream's state is cleared at its end
    later = subscribers(broker.port, "earshot/+/state")
    await asyncio.sleep(0.5)
    assert later.on(topic) == []


async def test_a_broker_restart_loses_no_ingest_and_the_bridge_comes_back(
        tmp_path: Path, broker: Mosquitto, server_factory: Callable[..., ServerProcess],
        subscribers: Callable[..., Subscriber]) -> None:
    server = server_factory("--mqtt", broker.url, "--log-level", "info")
    sub = subscribers(broker.port, "earshot/#")
    x, rate = speech()
    x = x[: 5 * rate]

    async def outage() -> None:
        await asyncio.sleep(1.2)
        broker.kill9()
        await asyncio.sleep(1.5)
        broker.start()

    task = asyncio.create_task(outage())
    pub, events, _ = await stream_file(server.url, x, rate, processors=["level"],
                                       realtime=True, name="porch")
    await task
    assert np.array_equal(archive(server, pub.stream_id), x)  # ingest never waited
    sub.wait_for(lambda: sub.on("earshot/porch/stream_ended"), 15)
    levels = payloads(sub.on("earshot/porch/level"))
    ts = [e["t"] for e in levels]
    assert ts == sorted(ts)
    assert any(t < 1.0 for t in ts) and any(t > 4.0 for t in ts)  # before and after
    assert len(levels) < len(of(events, "level"))  # QoS 0 during the outage: dropped
    # the broker came back empty: the bridge published the live state again
    assert any(m.json().get("state") == "live" for m in sub.on("earshot/porch/state"))
    log = server.log.read_text()
    assert log.count("mqtt: lost") == 1 and log.count("again after") == 1, log
    assert "Traceback" not in log
    m = httpx.get(f"{server.http}/metrics").text
    dropped = [line for line in m.splitlines()
               if line.startswith('earshot_mqtt_dropped_total{reason="disconnected"}')]
    assert dropped and float(dropped[0].split()[-1]) > 0
    assert "earshot_mqtt_connects_total 2.0" in m


async def test_a_stalled_broker_never_stalls_ingest(
        broker: Mosquitto, server_factory: Callable[..., ServerProcess],
        subscribers: Callable[..., Subscriber]) -> None:
    """The broker stops reading (SIGSTOP: its TCP connections stay up) while a stream makes
    a level event every 10 ms of audio (the shortest interval a client may ask), sent faster
    than real time: acks and the archive go on; the bridge's queue holds
    what the broker cannot take yet, and once it reads again everything arrives, in order."""
    import signal

    server = server_factory("--mqtt", broker.url)
    sub = subscribers(broker.port, "earshot/#")
    x, rate = speech()
    x = np.tile(x, 40 * rate // len(x) + 1)[: 40 * rate]  # 4000 readings: past what the
    assert broker.proc is not None                         # sockets' buffers can hold
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        pub, events, _ = await stream_file(
            server.url, x, rate, realtime=False, name="fast",
            processors=[{"name": "level", "options": {"interval": 0.01}}])
        took = time.monotonic() - t0
        assert np.array_equal(archive(server, pub.stream_id), x)
        assert len(of(events, "level")) == 4000  # the sender got every event meanwhile
        queued = float(next(line.split()[-1] for line in
                            httpx.get(f"{server.http}/metrics").text.splitlines()
                            if line.startswith("earshot_mqtt_queue ")))
        assert queued > 0  # waiting for the broker, not lost
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    assert took < 20
    sub.wait_for(lambda: len(sub.on("earshot/fast/level")) == 4000, 30)
    ts = [e["t"] for e in payloads(sub.on("earshot/fast/level"))]
    assert ts == sorted(ts) and ts == [e["t"] for e in of(events, "level")]


async def test_mqtts_with_a_cafile(
        tmp_path: Path, server_factory: Callable[..., ServerProcess],
        subscribers: Callable[..., Subscriber]) -> None:
    from hardening_helpers import make_ca, make_server_cert

    ca, ca_cert, ca_key = make_ca(tmp_path, "mqtt")
    other, _, _ = make_ca(tmp_path, "other")
    cert, key = make_server_cert(tmp_path, ca_cert, ca_key)
    broker = Mosquitto(tmp_path / "mosquitto", tls=(cert, key)).start()
    try:
        sub = subscribers(broker.port, "earshot/#", "wrong/#")  # on the plain listener
        good = server_factory("--mqtt", f"mqtts://127.0.0.1:{broker.tls_port}?cafile={ca}")
        bad = server_factory("--mqtt", f"mqtts://127.0.0.1:{broker.tls_port}/wrong"
                                       f"?cafile={other}", data_dir=tmp_path / "bad")
        x, rate = speech()
        for srv in (good, bad):
            pub, _, _ = await stream_file(srv.url, x[:rate], rate, processors=["level"],
                                          realtime=False, name="tls")
            assert np.array_equal(archive(srv, pub.stream_id), x[:rate])
        sub.wait_for(lambda: sub.on("earshot/tls/stream_ended"))
        assert len(sub.on("earshot/tls/level")) == 20
        assert not [m for m in sub.messages if m.topic.startswith("wrong/")]
        log = bad.log.read_text()  # a certificate it does not trust: refused, said once
        assert log.count("mqtt: cannot reach") == 1 and "Traceback" not in log, log
        assert "CERTIFICATE_VERIFY_FAILED" in log
    finally:
        broker.stop()


class Proc(Child):
    def __init__(self, cmd: list[str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=open(log, "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT)


def earshot(*args: str) -> list[str]:
    return [sys.executable, "-m", "earshot.cli", *args]


async def test_a_websocket_worker_publishes_its_events_once(
        tmp_path: Path, broker: Mosquitto, server_factory: Callable[..., ServerProcess],
        subscribers: Callable[..., Subscriber]) -> None:
    server = server_factory("--mqtt", broker.url, "--log-level", "info")
    sub = subscribers(broker.port, "earshot/#")
    worker = Proc(earshot("worker", "level", "--url", f"http://127.0.0.1:{server.port}",
                          "--mqtt", broker.url, "--name", "w1"), tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 20
        while "attached" not in worker.log.read_text():
            assert time.monotonic() < deadline, worker.log.read_text()
            await asyncio.sleep(0.1)
        x, rate = speech()
        x = x[: 3 * rate]
        _, events, _ = await stream_file(server.url, x, rate, processors=[],
                                         realtime=True, name="hall")
        got = lambda: payloads(sub.on("earshot/hall/level"))  # noqa: E731
        sub.wait_for(lambda: got() and got()[-1]["t"] + got()[-1]["duration"]
                     >= len(x) / rate - 1e-3, 20)
        await asyncio.sleep(0.5)
        levels = got()
        ts = [e["t"] for e in levels]
        assert ts == sorted(ts) and len(set(ts)) == len(ts)  # once each: not by the server too
        assert {e["worker"] for e in levels} == {"w1"}
        told = of(events, "level")  # what the sender got through the server (its last
        assert told and levels[:len(told)] == told  # ones may come after it stopped)
        assert sub.on("earshot/hall/stream_started")  # the server's own events
        assert "left to that worker" in server.log.read_text()
    finally:
        worker.stop()


async def test_bus_workers_and_gateways_publish_each_event_once(
        tmp_path: Path, broker: Mosquitto, server_factory: Callable[..., ServerProcess],
        subscribers: Callable[..., Subscriber]) -> None:
    from redis_helpers import RedisServer, WorkerProcess, wait_balanced

    redis = RedisServer(tmp_path / "redis").start()
    worker = WorkerProcess(redis.url, ["level"], tmp_path / "worker.log", "bw")
    worker.cmd += ["--mqtt", broker.url]
    try:
        server = server_factory("--bus", redis.url, "--processes", "2", "--mqtt", broker.url)
        worker.start()
        sub = subscribers(broker.port, "earshot/#")
        await asyncio.to_thread(wait_balanced, redis.client(), "level", 1)  # its leases
        x, rate = speech()
        x = x[: 3 * rate]
        names = ["yard", "shed"]
        pubs = await asyncio.gather(*(stream_file(server.url, x, rate, processors=["level"],
                                                  realtime=True, name=n) for n in names))
        for n in names:
            sub.wait_for(lambda n=n: sub.on(f"earshot/{n}/stream_ended"), 15)
            got = lambda n=n: payloads(sub.on(f"earshot/{n}/level"))  # noqa: E731
            sub.wait_for(lambda got=got: got() and got()[-1]["t"] + got()[-1]["duration"]
                         >= len(x) / rate - 1e-3, 20)
        await asyncio.sleep(0.5)
        for n, (pub, events, _) in zip(names, pubs, strict=True):
            levels = payloads(sub.on(f"earshot/{n}/level"))
            ts = [e["t"] for e in levels]
            assert ts == sorted(ts) and len(set(ts)) == len(ts)  # each once, in order
            assert ts[0] == 0.0 and {e["stream"] for e in levels} == {pub.stream_id}
            assert {e["worker"] for e in levels} == {"bw"}
            told = of(events, "level")
            assert told and levels[:len(told)] == told
            assert len(sub.on(f"earshot/{n}/stream_started")) == 1  # one gateway's
            assert len(sub.on(f"earshot/{n}/stream_ended")) == 1
            assert sub.on(f"earshot/{n}/state")[-1].json()["state"] == "finished"
    finally:
        worker.stop()
        redis.stop()


def test_a_bad_url_fails_at_start(tmp_path: Path) -> None:
    """(Every way a URL can be wrong: tests/integrations/test_mqtt.py.)"""
    for cmd, says in (
            (earshot("serve", "--data-dir", str(tmp_path / "d"), "--mqtt", "http://h:1883"),
             "use mqtt://"),
            (earshot("worker", "level", "--mqtt", "mqtt://me:secret@host:99999"),
             "out of range")):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert says in r.stderr and "Traceback" not in r.stderr
        assert "secret" not in r.stderr
