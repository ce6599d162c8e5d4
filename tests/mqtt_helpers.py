"""A real mosquitto broker on a free loopback port, and a real paho subscriber."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import Child, free_port


def mosquitto_exe() -> str:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                        if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed")
    return exe


class Mosquitto(Child):
    """``mosquitto -c CONF`` with its own conf: one listener on 127.0.0.1, anonymous, no
    persistence (a restart comes back empty: no retained messages)."""

    def __init__(self, workdir: Path, port: int | None = None,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.dir = workdir
        self.port = port or free_port()
        self.tls = tls  # (certificate chain, key): a second listener, with TLS
        self.tls_port = free_port() if tls else 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        exe = mosquitto_exe()
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "mosquitto.conf"
        text = (f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                "persistence false\nlog_dest stderr\n")
        if os.geteuid() == 0:  # (else it becomes user mosquitto, who cannot read our tmp)
            text += "user root\n"
        if self.tls:
            text += (f"listener {self.tls_port} 127.0.0.1\ncertfile {self.tls[0]}\n"
                     f"keyfile {self.tls[1]}\n")
        conf.write_text(text)
        self.proc = subprocess.Popen([exe, "-c", str(conf)],
                                     stdout=open(self.dir / "mosquitto.log", "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "mosquitto.log").read_text())
            try:
                for port in (self.port, self.tls_port) if self.tls else (self.port,):
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                time.sleep(0.1)
                if self.proc.poll() is None:
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client subscribed to ``topics`` (QoS 1), collecting every message."""

    def __init__(self, port: int, *topics: str, client_id: str = "") -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.connects = 0
        self.topics = topics
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.reconnect_delay_set(0.2, 1)  # type: ignore[arg-type]
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the subscriber could not subscribe"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connects += 1
        client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain),
                                          msg.qos, time.monotonic()))

    def on(self, topic: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic == topic]

    def ending(self, suffix: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, pred: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                with self.lock:
                    seen = sorted({m.topic for m in self.messages})
                raise AssertionError(f"timed out; topics seen: {seen}")
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
