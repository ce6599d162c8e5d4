"""The MQTT bridge: events of streams published to an MQTT broker (``--mqtt URL``).

    earshot serve --mqtt mqtt://[user:pass@]host:1883[/prefix]
    earshot worker vad --bus redis://… --mqtt mqtts://host:8883/site1/earshot

Topics are ``<prefix>/<stream name or id>/<event type>`` (README: "MQTT"); which QoS and
retain flag each type gets is decided by :class:`Topics`, a pure core (an event in,
messages out). :class:`MqttBridge` does the I/O with paho-mqtt (>= 2.0, imported only
when ``--mqtt`` is given): the event loop never waits for the broker. Events go into a
bounded queue, handed to paho's network thread (``loop_start``) at most ``window`` at a
time; while the broker is down QoS 0 events are dropped at once, QoS 1 events wait in the
queue (past ``queue_size`` the oldest is dropped), and the retained stream states are
coalesced (the latest per topic) and published again on every (re)connection, so a broker
restarted empty learns which streams are live. Every drop is counted (``/metrics``).

Each event is published once in a cluster: by the process that made it. A gateway
publishes its own events (its processors', ``stream_started``/``stream_ended``,
``segment``, its warnings) and skips events made by workers (they carry ``worker``); a
worker given ``--mqtt`` publishes its processors' events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from earshot.errors import ConfigError, MissingDependency
from earshot.redact import redact_url

log = logging.getLogger("earshot.integrations.mqtt")

DEFAULT_PREFIX = "earshot"
MAX_LEVEL_BYTES = 128  # a stream name's topic level, in UTF-8 bytes
#: protocol messages that are no events of a stream (never published)
INTERNAL = frozenset({"processed", "ack", "ready", "pong", "subscribed", "audio", "stopped"})
#: event types published with QoS 1 (at least once); every other type gets QoS 0
QOS1 = frozenset({"speech_start", "speech_end", "transcript", "stream_started", "stream_ended",
                  "segment", "error", "warning"})
STATE = "state"  # the retained topic level of a stream's state


# -- the URL --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MqttTarget:
    """A parsed ``mqtt://`` / ``mqtts://`` URL."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    prefix: str = DEFAULT_PREFIX
    cafile: str | None = None

    @property
    def display(self) -> str:
        """The URL without its password (for logs)."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt{'s' if self.tls else ''}://{user}{host}:{self.port}/{self.prefix}"


def check_prefix(prefix: str) -> str:
    """A topic prefix: one or more non-empty levels without ``+``, ``#`` or a leading ``$``."""
    if not prefix:
        return DEFAULT_PREFIX
    levels = prefix.split("/")
    if any(not lv for lv in levels):
        raise ConfigError(f"MQTT topic prefix {prefix!r} has an empty level")
    if any(c in prefix for c in "+#\x00"):
        raise ConfigError(f"MQTT topic prefix {prefix!r} may not contain '+', '#' or NUL")
    if prefix.startswith("$"):
        raise ConfigError(f"MQTT topic prefix {prefix!r} may not start with '$' "
                          "(reserved for the broker)")
    if len(prefix.encode()) > 1024:
        raise ConfigError("MQTT topic prefix too long")
    return prefix


def parse_mqtt_url(url: str) -> MqttTarget:
    """``mqtt[s]://[user[:password]@]host[:port][/prefix][?cafile=PATH]`` → a target, or a
    :class:`ConfigError` saying what is wrong."""
    where = f"--mqtt {redact_url(url)!r}"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if parts.fragment or url.rstrip().endswith("#"):
        raise ConfigError(f"{where}: a topic prefix may not contain '+', '#' (in a password, "
                          "write %23)")
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"{where}: use mqtt://HOST:1883[/prefix] or mqtts://HOST:8883"
                          "[/prefix]")
    if not parts.hostname:
        raise ConfigError(f"{where}: no broker host")
    tls = parts.scheme == "mqtts"
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"cafile"})
    if unknown:
        raise ConfigError(f"{where}: unknown parameter {unknown[0]!r} (only cafile=PATH)")
    cafile = query.get("cafile", [None])[-1] or None
    if cafile is not None:
        if not tls:
            raise ConfigError(f"{where}: cafile= needs mqtts://")
        if not Path(cafile).is_file():
            raise ConfigError(f"{where}: CA file {cafile} does not exist")
    return MqttTarget(
        host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        prefix=check_prefix(unquote(parts.path.strip("/"))), cafile=cafile)


# -- the pure core: events → messages -------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool


def topic_level(text: str, fallback: str) -> str:
    """One topic level from free text: ``/`` (a new level), ``+`` and ``#`` (wildcards)
    become ``_``; control characters and unpaired surrogates are dropped; at most
    :data:`MAX_LEVEL_BYTES` of UTF-8; an empty result is ``fallback``."""
    out = []
    size = 0
    for ch in text:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF or o in (0xFFFE, 0xFFFF):
            continue
        if ch in "/+#":
            ch = "_"
        n = len(ch.encode())
        if size + n > MAX_LEVEL_BYTES:
            break
        out.append(ch)
        size += n
    level = "".join(out).strip()
    if level.startswith("$"):  # harmless below the prefix, but confusing in a broker's UI
        level = "_" + level[1:]
    return level or fallback


def _json(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), default=str).encode()


class Topics:
    """Where each event goes and how (pure: no I/O; the time is passed in).

    * ``<prefix>/<key>/<type>`` for every event, where ``key`` is the stream's name (from
      its ``stream_started`` or :meth:`remember`) or else its id, made a safe topic level;
      a final transcript goes to ``transcript``, an interim one to ``transcript_interim``;
    * QoS 1 for the types in :data:`QOS1` (and final transcripts), else QoS 0; none
      retained;
    * ``<prefix>/<key>/state``, retained, QoS 1: ``{"state":"live",…}`` from
      ``stream_started``; at ``stream_ended`` a named stream's becomes its end state
      (``finished`` or ``interrupted``), an unnamed one's is cleared (an empty retained
      message), so stream ids do not pile up on the broker.
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX, *, max_names: int = 10_000) -> None:
        self.prefix = check_prefix(prefix)
        self.max_names = max_names
        self._names: OrderedDict[str, str] = OrderedDict()  # stream id → name
        self._keys: dict[str, str] = {}  # stream id → its topic level (a cache)
        self._levels: dict[str, str] = {}  # event type → its topic level (a cache)

    def remember(self, stream: str, name: str | None) -> None:
        if not name:
            return
        self._names[stream] = name
        self._names.move_to_end(stream)
        self._keys.pop(stream, None)
        while len(self._names) > self.max_names:
            old, _ = self._names.popitem(last=False)
            self._keys.pop(old, None)

    def key(self, stream: str) -> str:
        """The topic level of a stream: its name, else its id."""
        key = self._keys.get(stream)
        if key is None:
            sid = topic_level(stream, "unknown")
            name = self._names.get(stream)
            key = topic_level(name, sid) if name else sid
            if len(self._keys) >= self.max_names:
                self._keys.clear()
            self._keys[stream] = key
        return key

    def messages(self, stream: str, event: dict[str, Any], now: float) -> list[Message]:
        kind = event.get("type")
        if not isinstance(kind, str) or kind in INTERNAL:
            return []
        if kind == "stream_started":
            self.remember(stream, event.get("name"))
        base = f"{self.prefix}/{self.key(stream)}"
        qos = 1 if kind in QOS1 else 0
        level = self._levels.get(kind)
        if level is None:
            level = topic_level(kind, "event")
            if len(self._levels) < 1000:  # (types are few; a flood of made-up ones is not)
                self._levels[kind] = level
        if kind == "transcript" and not event.get("final"):
            level, qos = "transcript_interim", 0
        out = [Message(f"{base}/{level}", _json(event), qos, False)]
        if kind == "stream_started":
            state = {"state": "live", "stream": stream, "name": event.get("name"),
                     "rate": event.get("rate"), "channels": event.get("channels"),
                     "resumed": bool(event.get("resumed")), "at": round(now, 3)}
            out.append(Message(f"{base}/{STATE}", _json(state), 1, True))
        elif kind == "stream_ended":
            if self._names.get(stream):
                state = {"state": str(event.get("state") or "finished"), "stream": stream,
                         "name": self._names[stream], "frames": event.get("frames"),
                         "at": round(now, 3)}
                out.append(Message(f"{base}/{STATE}", _json(state), 1, True))
            else:
                out.append(Message(f"{base}/{STATE}", b"", 1, True))  # clears it
        return out


# -- the link's state, as one log line per change (pure) ------------------------------------
class LinkLog:
    """Turns connection observations into at most one log line per change of state."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.state = "starting"  # → up, down (lost or never reached)
        self.since = 0.0
        self.dropped_at_down = 0

    def up(self, now: float, dropped: int) -> str | None:
        before, self.state = self.state, "up"
        if before == "starting":
            return f"mqtt: connected to {self.where}"
        if before == "down":
            n = dropped - self.dropped_at_down
            return (f"mqtt: connected to {self.where} again after {now - self.since:.1f} s"
                    + (f"; {n} events dropped meanwhile" if n else ""))
        return None

    def down(self, reason: str, now: float, dropped: int, *, refused: bool = False) -> str | None:
        before = self.state
        if before == "down":
            return None
        self.state, self.since, self.dropped_at_down = "down", now, dropped
        if refused:
            return (f"mqtt: {self.where} refused the connection ({reason}); retrying with "
                    "backoff")
        if before == "starting":
            return (f"mqtt: cannot reach {self.where} ({reason}); retrying with backoff "
                    "(QoS 0 events are dropped meanwhile)")
        return (f"mqtt: lost {self.where} ({reason}); reconnecting with backoff (QoS 0 "
                "events are dropped meanwhile)")


# -- the I/O: paho-mqtt ---------------------------------------------------------------------
def paho_module() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise MissingDependency("--mqtt needs paho-mqtt >= 2.0: pip install 'earshot[server]' "
                                "(or pip install paho-mqtt)") from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise MissingDependency("--mqtt needs paho-mqtt >= 2.0 (an older one is installed): "
                                "pip install -U paho-mqtt")
    return mqtt


def tls_context(target: MqttTarget) -> ssl.SSLContext:
    """The client context of ``mqtts://``: the system's trust store, or the URL's cafile;
    the broker's name is checked against its certificate."""
    try:
        return ssl.create_default_context(cafile=target.cafile)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--mqtt: cannot use the CA file {target.cafile}: {exc}") from None


@dataclass
class BridgeStats:
    published: int = 0  # handed to paho (QoS 0 written to the socket, QoS 1 queued)
    dropped: dict[str, int] = field(default_factory=lambda: {
        "disconnected": 0, "queue_full": 0, "lost": 0, "invalid": 0})
    connects: int = 0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


def _settled(info: Any) -> tuple[bool, bool]:
    """(paho is done with this message, it was lost)."""
    try:
        return bool(info.is_published()), False
    except (ValueError, RuntimeError):  # queue full, or dropped with the connection
        return True, True


class MqttBridge:
    """Publishes events to a broker; :meth:`offer` is called on the event loop and never
    blocks. ``skip_worker_events``: a gateway's, which leaves workers' events to them."""

    def __init__(self, url: str | MqttTarget, *, role: str = "server",
                 skip_worker_events: bool = False, queue_size: int = 10_000,
                 window: int = 1000, max_states: int = 10_000, keepalive: int = 30,
                 reconnect_delay: tuple[float, float] = (0.5, 30.0),
                 cafile: str | None = None, slice: int = 64) -> None:
        target = parse_mqtt_url(url) if isinstance(url, str) else url
        if cafile and target.tls and target.cafile is None:
            target = MqttTarget(target.host, target.port, True, target.username,
                                target.password, target.prefix, str(cafile))
        self.target = target
        self.tls_context = tls_context(target) if target.tls else None  # (fails now if bad)
        self.role = role
        self.skip_worker_events = skip_worker_events
        self.queue_size = queue_size
        self.window = window
        self.slice = slice  # most messages handed to paho in one turn of the event loop
        self.max_states = max_states
        self.keepalive = keepalive
        self.reconnect_delay = reconnect_delay
        self.topics = Topics(target.prefix)
        self.stats = BridgeStats()
        self.connected = False
        self.client_id = f"earshot-{role}-{socket.gethostname()}-{os.getpid()}"[:64]
        self._link = LinkLog(target.display)
        self._queue: deque[Message] = deque()
        self._states: OrderedDict[str, Message] = OrderedDict()  # retained: latest per topic
        self._dirty: dict[str, None] = {}  # state topics to (re)publish, in order
        self._inflight: deque[Any] = deque()  # paho's MQTTMessageInfo
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._warned_workers: set[str] = set()
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (paho's thread) from the running event loop."""
        mqtt = paho_module()
        self._loop = asyncio.get_running_loop()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=mqtt.MQTTv311)
        if self.target.username is not None:
            c.username_pw_set(self.target.username, self.target.password)
        if self.tls_context is not None:
            c.tls_set_context(self.tls_context)
        c.max_inflight_messages_set(self.window)
        c.max_queued_messages_set(0)  # bounded by our window instead
        c.reconnect_delay_set(*self.reconnect_delay)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.connect_async(self.target.host, self.target.port, keepalive=self.keepalive)
        c.loop_start()
        self._client = c

    async def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (for up to ``timeout`` s while connected), then disconnect."""
        self._closing = True
        c = self._client
        if c is None:
            return
        deadline = time.monotonic() + timeout
        while self.connected and time.monotonic() < deadline and self.pending():
            self._pump()
            await asyncio.sleep(0.02)
        if self._timer is not None:
            self._timer.cancel()
        with contextlib.suppress(Exception):
            c.disconnect()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.to_thread(c.loop_stop), timeout=5)
        self._client = None
        log.info("mqtt: closed (%d messages published, %d dropped)", self.stats.published,
                 self.stats.dropped_total)

    def pending(self) -> int:
        """Messages not yet done with: queued, states to publish, in flight."""
        self._prune()
        return len(self._queue) + len(self._dirty) + len(self._inflight)

    # -- the event loop's side --------------------------------------------------------------
    def remember(self, stream: str, name: str | None) -> None:
        """A stream's name, for workers (which never see its ``stream_started``)."""
        self.topics.remember(stream, name)

    def offer(self, stream: str, event: dict[str, Any]) -> None:
        """Queue the messages of one event (called on the event loop; never blocks)."""
        if self.skip_worker_events and "worker" in event:
            self._worker_event(event)
            return
        try:
            msgs = self.topics.messages(stream, event, time.time())
        except (TypeError, ValueError) as exc:  # an event JSON cannot carry
            self.stats.dropped["invalid"] += 1
            log.debug("mqtt: cannot publish %r: %s", event.get("type"), exc)
            return
        for msg in msgs:
            if msg.retain:
                self._states[msg.topic] = msg
                self._states.move_to_end(msg.topic)
                while len(self._states) > self.max_states:
                    old, _ = self._states.popitem(last=False)
                    self._dirty.pop(old, None)
                self._dirty.pop(msg.topic, None)
                self._dirty[msg.topic] = None
            elif msg.qos == 0 and not self.connected:
                self.stats.dropped["disconnected"] += 1
            else:
                if len(self._queue) >= self.queue_size:
                    self._queue.popleft()
                    self.stats.dropped["queue_full"] += 1
                self._queue.append(msg)
        if self.connected and not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._pump)

    def _worker_event(self, event: dict[str, Any]) -> None:
        worker = str(event.get("worker"))
        if worker not in self._warned_workers and len(self._warned_workers) < 100:
            self._warned_workers.add(worker)
            log.warning("mqtt: events of worker %s are left to that worker to publish: start "
                        "it with --mqtt too", worker)

    def _prune(self) -> None:
        while self._inflight:
            done, lost = _settled(self._inflight[0])
            if not done:
                break
            self._inflight.popleft()
            if lost:
                self.stats.dropped["lost"] += 1

    def _pump(self) -> None:
        self._scheduled = False
        c = self._client
        if not self.connected or c is None:
            return
        self._prune()
        budget = self.slice  # per turn of the event loop: a publish costs ~20-80 µs here
        while len(self._inflight) < self.window and budget > 0:
            budget -= 1
            if self._dirty:
                topic = next(iter(self._dirty))
                del self._dirty[topic]
                msg = self._states.get(topic)
                if msg is None:
                    continue
                if not msg.payload:  # a clear, once published, need not be kept
                    del self._states[topic]
            elif self._queue:
                msg = self._queue.popleft()
            else:
                break
            try:
                info = c.publish(msg.topic, msg.payload, msg.qos, msg.retain)
            except ValueError as exc:
                self.stats.dropped["invalid"] += 1
                log.debug("mqtt: cannot publish to %r: %s", msg.topic, exc)
                continue
            self.stats.published += 1
            self._inflight.append(info)
        if not (self._queue or self._dirty) or self._loop is None:
            return
        if budget <= 0 and not self._scheduled:  # more next turn, after other work
            self._scheduled = True
            self._loop.call_soon(self._pump)
        elif budget > 0 and self._timer is None:  # the window is full: look again soon
            self._timer = self._loop.call_later(0.01, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._pump()

    def _up(self) -> None:
        self.connected = True
        self.stats.connects += 1
        line = self._link.up(time.monotonic(), self.stats.dropped_total)
        if line:
            (log.info if self.stats.connects == 1 else log.warning)(line)
        for topic in self._states:  # a broker restarted empty learns the live streams again
            self._dirty[topic] = None
        self._pump()

    def _down(self, reason: str, refused: bool = False) -> None:
        self.connected = False
        if self._closing:
            return
        line = self._link.down(reason, time.monotonic(), self.stats.dropped_total,
                               refused=refused)
        if line:
            log.warning(line)

    # -- paho's thread: hand over to the event loop, never raise --------------------------
    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                    properties: Any) -> None:
        with contextlib.suppress(Exception):  # raising here would end paho's thread
            if getattr(reason_code, "is_failure", False):
                self._call(self._down, str(reason_code), True)
            else:
                self._call(self._up)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any,
                       properties: Any) -> None:
        with contextlib.suppress(Exception):
            by_broker = getattr(flags, "is_disconnect_packet_from_server", False)
            self._call(self._down, str(reason_code) if by_broker else "connection lost")

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        with contextlib.suppress(Exception):
            # paho calls this while handling the OSError of the attempt: say what it was
            exc = sys.exc_info()[1]
            self._call(self._down, (str(exc) or type(exc).__name__) if exc is not None
                       else "connection failed")

    # -- /metrics ---------------------------------------------------------------------------
    def collector(self) -> Any:
        return _Collector(self)


class _Collector:
    """The bridge's counters for a prometheus_client registry (read at scrape time)."""

    def __init__(self, bridge: MqttBridge) -> None:
        self.bridge = bridge

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        b = self.bridge
        yield GaugeMetricFamily("earshot_mqtt_connected", "1 while connected to the broker",
                                value=1.0 if b.connected else 0.0)
        yield CounterMetricFamily("earshot_mqtt_published", "MQTT messages handed to the "
                                  "broker connection", value=b.stats.published)
        dropped = CounterMetricFamily("earshot_mqtt_dropped", "MQTT messages dropped, by "
                                      "reason (disconnected: QoS 0 while the broker was "
                                      "down; queue_full; lost: with a connection)",
                                      labels=["reason"])
        for reason, n in b.stats.dropped.items():
            dropped.add_metric([reason], n)
        yield dropped
        yield GaugeMetricFamily("earshot_mqtt_queue", "MQTT messages waiting for the broker",
                                value=len(b._queue) + len(b._dirty))
        yield CounterMetricFamily("earshot_mqtt_connects", "Connections to the broker made",
                                  value=b.stats.connects)
