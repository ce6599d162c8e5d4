"""The MQTT bridge's pure parts: URLs, topic levels, events → messages, the link's log
lines, and the queue policy (no socket: the bridge is never started here)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from earshot.errors import ConfigError
from earshot.integrations.mqtt import (
    MAX_LEVEL_BYTES,
    LinkLog,
    Message,
    MqttBridge,
    MqttTarget,
    Topics,
    parse_mqtt_url,
    redact_url,
    topic_level,
)


def test_urls() -> None:
    t = parse_mqtt_url("mqtt://broker")
    assert t == MqttTarget("broker", 1883, False, None, None, "earshot", None)
    t = parse_mqtt_url("mqtts://me:p%40ss@broker.example/site1/earshot/")
    assert (t.host, t.port, t.tls, t.username, t.password, t.prefix) == (
        "broker.example", 8883, True, "me", "p@ss", "site1/earshot")
    assert t.display == "mqtts://me@broker.example:8883/site1/earshot"  # no password
    assert "p%40ss" not in repr(t) and "p@ss" not in repr(t)
    assert parse_mqtt_url("mqtt://[::1]:1884").display == "mqtt://[::1]:1884/earshot"


def test_a_cafile_needs_mqtts_and_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert parse_mqtt_url(f"mqtts://h?cafile={ca}").cafile == str(ca)
    with pytest.raises(ConfigError, match="needs mqtts"):
        parse_mqtt_url(f"mqtt://h?cafile={ca}")
    with pytest.raises(ConfigError, match="does not exist"):
        parse_mqtt_url(f"mqtts://h?cafile={tmp_path / 'no.pem'}")
    with pytest.raises(ConfigError, match="cannot use the CA file"):  # not PEM: at start
        MqttBridge(f"mqtts://h?cafile={ca}")
    assert MqttBridge("mqtts://h").tls_context is not None  # the system's trust store


@pytest.mark.parametrize("url, says", [
    ("redis://h", "use mqtt://"), ("mqtt://", "no broker host"),
    ("mqtt://h:70000", "out of range"), ("mqtt://h:x", "Port could not be cast"),
    ("mqtt://h/a//b", "empty level"), ("mqtt://h/a/#", "may not contain"),
    ("mqtt://h/$SYS", "may not start with '$'"), ("mqtt://h?retain=1", "unknown parameter"),
])
def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("$", r"\$")):
        parse_mqtt_url(url)


def test_a_bad_url_never_shows_its_password() -> None:
    with pytest.raises(ConfigError) as err:
        parse_mqtt_url("mqtt://me:secret@h:99999")
    assert "secret" not in str(err.value)
    assert redact_url("mqtt://me:secret@h/x") == "mqtt://me:***@h/x"
    assert redact_url("mqtt://h/x@y") == "mqtt://h/x@y"


def test_settings_check_the_url() -> None:
    from earshot.config import Settings, env_overrides, parse_config_file

    assert Settings.of(mqtt="mqtt://h/x").mqtt.url == "mqtt://h/x"
    assert env_overrides({"EARSHOT_MQTT": "mqtt://h"}) == {"mqtt": "mqtt://h"}
    assert parse_config_file('mqtt = "mqtts://h:8883/a/b"') == {"mqtt": "mqtts://h:8883/a/b"}
    with pytest.raises(ConfigError, match="use mqtt://"):
        Settings.of(mqtt="http://h")


def test_topic_levels() -> None:
    assert topic_level("kitchen/mic+1#", "id") == "kitchen_mic_1_"
    assert topic_level("  ", "id") == "id"
    assert topic_level("a\x00b\nc\x7fd\x85e", "id") == "abcde"
    assert topic_level("$SYS", "id") == "_SYS"
    assert topic_level("küche 🎤", "id") == "küche 🎤"
    long = topic_level("é" * 100, "id")  # 2 bytes each: cut whole, never mid-character
    assert long == "é" * (MAX_LEVEL_BYTES // 2)


@given(st.text())
def test_any_name_makes_one_valid_level(text: str) -> None:
    level = topic_level(text, "fallback")
    assert level and not any(c in level for c in "/+#\x00")
    assert len(level.encode("utf-8")) <= MAX_LEVEL_BYTES  # (encodes: no lone surrogate)


def msgs(topics: Topics, event: dict[str, Any], stream: str = "s1") -> list[tuple]:
    return [(m.topic, json.loads(m.payload) if m.payload else None, m.qos, m.retain)
            for m in topics.messages(stream, event, now=1000.0)]


def test_events_to_topics_qos_and_retain() -> None:
    t = Topics("site/e")
    level = {"type": "level", "stream": "s1", "t": 0.05, "rms": -20.0}
    assert msgs(t, level) == [("site/e/s1/level", level, 0, False)]  # no name yet: the id
    started = {"type": "stream_started", "stream": "s1", "name": "Front door", "rate": 16000,
               "channels": 1, "resumed": False, "t": 0.0}
    assert msgs(t, started) == [
        ("site/e/Front door/stream_started", started, 1, False),
        ("site/e/Front door/state", {"state": "live", "stream": "s1", "name": "Front door",
                                     "rate": 16000, "channels": 1, "resumed": False,
                                     "at": 1000.0}, 1, True)]
    assert msgs(t, level)[0][0] == "site/e/Front door/level"
    for kind in ("speech_start", "speech_end", "segment", "error", "warning"):
        assert msgs(t, {"type": kind})[0][2] == 1
    assert msgs(t, {"type": "transcript", "final": True, "text": "hi"})[0][:3:2] == (
        "site/e/Front door/transcript", 1)
    assert msgs(t, {"type": "transcript", "final": False, "text": "h"})[0][:3:2] == (
        "site/e/Front door/transcript_interim", 0)
    assert msgs(t, {"type": "my/custom+kind"})[0][0] == "site/e/Front door/my_custom_kind"
    for internal in ("processed", "ack", "audio", "subscribed"):
        assert msgs(t, {"type": internal}) == []
    assert msgs(t, {"no": "type"}) == [] and msgs(t, {"type": 3}) == []
    ended = {"type": "stream_ended", "stream": "s1", "state": "interrupted", "frames": 160}
    assert msgs(t, ended)[1] == ("site/e/Front door/state", {
        "state": "interrupted", "stream": "s1", "name": "Front door", "frames": 160,
        "at": 1000.0}, 1, True)


def test_an_unnamed_streams_state_is_cleared_at_its_end() -> None:
    t = Topics()
    msgs(t, {"type": "stream_started", "stream": "abc", "name": None}, "abc")
    (_, (topic, payload, qos, retain)) = msgs(t, {"type": "stream_ended", "state": "finished"},
                                              "abc")
    assert (topic, payload, qos, retain) == ("earshot/abc/state", None, 1, True)
    assert t.messages("abc", {"type": "stream_ended"}, 0.0)[1].payload == b""


def test_names_are_remembered_within_a_bound() -> None:
    t = Topics(max_names=2)
    for sid in ("a", "b", "c"):
        t.remember(sid, sid.upper())
    assert [t.key(s) for s in ("a", "b", "c")] == ["a", "B", "C"]
    t.remember("d", "")  # no name: the id
    assert t.key("d") == "d"


def test_the_link_logs_one_line_per_change() -> None:
    link = LinkLog("mqtt://h:1883/earshot")
    assert "cannot reach" in (link.down("refused", 1.0, 0) or "")
    assert link.down("refused", 2.0, 0) is None  # retries say nothing
    assert link.up(4.5, 7) == "mqtt: connected to mqtt://h:1883/earshot again after 3.5 s; " \
                              "7 events dropped meanwhile"
    assert link.up(5.0, 7) is None
    assert "lost" in (link.down("connection lost", 6.0, 7) or "")
    assert link.up(7.0, 7) == "mqtt: connected to mqtt://h:1883/earshot again after 1.0 s"
    first = LinkLog("x")
    assert first.up(0, 0) == "mqtt: connected to x"
    assert "refused the connection (Not authorized)" in (
        LinkLog("x").down("Not authorized", 0, 0, refused=True) or "")


# -- the queue policy, with a stand-in for paho's client (records, never sends) --------------
class Info:
    def __init__(self) -> None:
        self.done = False
        self.rc = 0

    def is_published(self) -> bool:
        if self.rc:
            raise RuntimeError("lost")
        return self.done


class FakeClient:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int, bool]] = []
        self.infos: list[Info] = []

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> Info:
        self.sent.append((topic, payload, qos, retain))
        self.infos.append(Info())
        return self.infos[-1]


def bridge(**kw: Any) -> MqttBridge:
    return MqttBridge("mqtt://h", **kw)


def test_while_down_qos0_is_dropped_qos1_waits_bounded_and_states_coalesce() -> None:
    b = bridge(queue_size=3)
    b.offer("s", {"type": "level", "t": 0})
    assert b.stats.dropped["disconnected"] == 1 and not b._queue
    for i in range(5):
        b.offer("s", {"type": "speech_start", "t": i})
    assert [json.loads(m.payload)["t"] for m in b._queue] == [2, 3, 4]  # oldest dropped
    assert b.stats.dropped["queue_full"] == 2
    b.offer("s", {"type": "stream_started", "name": "n"})
    b.offer("s", {"type": "stream_started", "name": "n", "resumed": True})
    assert list(b._dirty) == ["earshot/n/state"]  # the latest state only, never dropped
    assert json.loads(b._states["earshot/n/state"].payload)["resumed"] is True


def test_the_pump_sends_states_first_within_the_window() -> None:
    b = bridge(window=2)
    c = FakeClient()
    b._client, b.connected = c, True
    b.offer("s", {"type": "speech_start", "t": 1})
    b.offer("s", {"type": "stream_started", "name": "n"})  # + its state
    b.offer("s", {"type": "level", "t": 2})
    b._pump()
    assert [s[0] for s in c.sent] == ["earshot/n/state", "earshot/s/speech_start"]
    assert len(b._queue) == 2  # the window is full: they wait
    c.infos[0].done = True
    c.infos[1].rc = 7  # lost with a connection
    b._pump()
    assert [s[0] for s in c.sent[2:]] == ["earshot/n/stream_started", "earshot/n/level"]
    assert b.stats.dropped["lost"] == 1 and b.stats.published == 4
    if b._timer is not None:
        b._timer.cancel()


def test_a_cleared_state_is_forgotten_once_sent_and_states_come_back_on_reconnect() -> None:
    b = bridge()
    c = FakeClient()
    b._client = c
    b.offer("id1", {"type": "stream_started"})
    b.offer("id2", {"type": "stream_started"})
    b._up()
    b.offer("id1", {"type": "stream_ended"})
    b._pump()
    assert ("earshot/id1/state", b"", 1, True) in c.sent
    assert list(b._states) == ["earshot/id2/state"]
    b._down("connection lost")
    sent = len(c.sent)
    b._up()  # a broker restarted empty gets the live states again
    assert [s[0] for s in c.sent[sent:]] == ["earshot/id2/state"]
    assert b.stats.connects == 2


def test_a_gateway_leaves_workers_events_to_them(caplog: pytest.LogCaptureFixture) -> None:
    b = bridge(skip_worker_events=True)
    b._client, b.connected = FakeClient(), True
    b.offer("s", {"type": "speech_start", "worker": "w1"})
    b.offer("s", {"type": "speech_end", "worker": "w1"})
    assert not b._queue
    assert sum("left to that worker" in r.message for r in caplog.records) == 1


def test_metrics() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    b = bridge()
    b.offer("s", {"type": "level"})
    b.offer("s", {"type": "speech_end"})
    reg = CollectorRegistry()
    reg.register(b.collector())  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    assert "earshot_mqtt_connected 0.0" in text
    assert 'earshot_mqtt_dropped_total{reason="disconnected"} 1.0' in text
    assert "earshot_mqtt_queue 1.0" in text


def test_messages_are_plain_values() -> None:
    m = Message("a/b", b"{}", 1, True)
    assert (m.topic, m.qos, m.retain) == ("a/b", 1, True)


async def test_one_turn_of_the_event_loop_hands_over_at_most_a_slice() -> None:
    b = bridge(slice=2)
    c = FakeClient()
    b._client, b._loop = c, asyncio.get_running_loop()
    b._up()
    for i in range(5):
        b.offer("s", {"type": "speech_start", "t": i})
    b._pump()
    assert len(c.sent) == 2 and b._scheduled  # the rest on the next turns
    for _ in range(5):
        await asyncio.sleep(0)
    assert [json.loads(p)["t"] for _, p, _, _ in c.sent] == [0, 1, 2, 3, 4]
