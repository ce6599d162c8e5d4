"""Remote workers: run a processor on another machine, on the live audio of a server.

    earshot worker mypkg.vad:MyVad --url ws://server:8000 --stream '*'

A worker subscribes to ``/ws/subscribe?audio=f32``, runs its processor on every stream it
sees with the same runner the server uses (so resampling, batching, lag and failure
handling are identical), and sends the events back on the same socket; the server fans
them out like its own. Workers attach and detach at any time and reconnect on their own;
a worker attached mid-stream starts at the audio it receives. Only JSON and raw samples
cross the wire: nothing is ever unpickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from earshot.client import Reconnect
from earshot.client.subscriber import messages
from earshot.client.transport import handshake_refusal, ws_options
from earshot.errors import ClientError
from earshot.processors.base import Event, StreamInfo
from earshot.processors.registry import ProcessorSpec
from earshot.processors.runner import StreamPipeline

log = logging.getLogger("earshot.cluster.worker")


class Worker:
    def __init__(self, url: str, spec: ProcessorSpec, *, stream: str = "*",
                 token: str | None = None, name: str | None = None,
                 reconnect: Reconnect | None = None, max_lag: float = 10.0,
                 ssl: Any = None, mqtt: Any = None) -> None:
        self.url = url
        self.ssl = ssl  # an ssl.SSLContext for wss:// (earshot.client.transport.client_ssl)
        self.spec = spec
        self.stream = stream
        self.token = token
        self.name = name or f"{spec.name}@{socket.gethostname()}:{os.getpid()}"
        self.reconnect = reconnect or Reconnect(attempts=None)
        self.max_lag = max_lag
        self.pipelines: dict[str, StreamPipeline] = {}
        self.connected = asyncio.Event()
        self._out: asyncio.Queue[str] = asyncio.Queue()
        self.mqtt = mqtt  # an earshot.integrations.mqtt.MqttBridge: publishes the events made here

    def subscribe_url(self) -> str:
        from earshot.client.urls import ws_url

        return ws_url(self.url, "/ws/subscribe", stream=self.stream, audio="f32")

    async def run(self) -> None:
        """Serve until cancelled, reconnecting whenever the server goes away."""
        if self.mqtt is not None:
            self.mqtt.start()
        try:
            await self._run()
        finally:
            if self.mqtt is not None:
                await self.mqtt.close()

    async def _run(self) -> None:
        attempt = 0
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        while True:
            try:
                async with connect(self.subscribe_url(), additional_headers=headers,
                                   max_size=None, compression=None,
                                   **ws_options(self.subscribe_url(), self.ssl)) as ws:
                    attempt = 0
                    await self._serve(ws)
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                refused = handshake_refusal(exc)  # a wrong certificate, origin, path: final
                if refused is not None and not refused.retryable:
                    raise ClientError(f"{self.url}: {refused.message}",
                                      code=refused.code) from None
                attempt += 1
                limit = self.reconnect.attempts
                if limit is not None and attempt > limit:
                    raise ClientError(f"cannot reach {self.url}: {exc}",
                                      code="unreachable") from None
                delay = self.reconnect.delay(attempt)
                log.warning("worker %s: %s; reconnecting in %.1f s", self.name, exc, delay)
                await asyncio.sleep(delay)
            finally:
                self.connected.clear()
                await self._close_all(flush=False)

    async def _serve(self, ws: ClientConnection) -> None:
        sender = asyncio.create_task(self._send_loop(ws))
        try:
            async for msg, payload in messages(ws):
                if payload is not None:
                    self._audio(msg, payload)
                    continue
                kind = msg.get("type")
                if kind == "subscribed":
                    self.connected.set()
                    log.info("worker %s attached to %s", self.name, self.stream)
                    if self.mqtt is not None:
                        for info in msg.get("live") or ():
                            self.mqtt.remember(str(info.get("stream")), info.get("name"))
                elif kind == "stream_started" and self.mqtt is not None:
                    self.mqtt.remember(str(msg.get("stream")), msg.get("name"))
                elif kind == "stream_ended":
                    pipe = self.pipelines.pop(msg["stream"], None)
                    if pipe is not None:
                        await pipe.close()
                elif kind == "error" and msg.get("code") != "unknown_stream":
                    log.warning("server said: %s", msg.get("message"))
        finally:
            await self._flush_outbox(ws)
            sender.cancel()

    def _audio(self, header: dict[str, Any], payload: bytes) -> None:
        sid, offset = header["stream"], int(header["offset"])
        channels = int(header["channels"])
        samples = np.frombuffer(payload, "<f4").reshape(-1, channels)
        pipe = self.pipelines.get(sid)
        if pipe is not None and pipe.offset != offset:  # we missed audio (too slow)
            self._background_close(self.pipelines.pop(sid))
            pipe = None
        if pipe is None:
            info = StreamInfo(sid, int(header["rate"]), channels)
            pipe = StreamPipeline(info, [self.spec.make()],
                                  functools.partial(self._publish, sid),
                                  start_offset=offset, max_lag=self.max_lag)
            self.pipelines[sid] = pipe
        pipe.feed(samples, offset)

    def _publish(self, sid: str, events: list[Event]) -> None:
        if self.mqtt is not None:
            for e in events:
                self.mqtt.offer(sid, {**e, "stream": sid, "worker": self.name})
        self._out.put_nowait(json.dumps({"type": "event", "stream": sid, "events": events,
                                         "worker": self.name}, separators=(",", ":")))

    async def _send_loop(self, ws: ClientConnection) -> None:
        while True:
            await ws.send(await self._out.get())

    async def _flush_outbox(self, ws: ClientConnection) -> None:
        with contextlib.suppress(Exception):
            while not self._out.empty():
                await ws.send(self._out.get_nowait())

    def _background_close(self, pipe: StreamPipeline) -> None:
        task = asyncio.ensure_future(pipe.close())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _close_all(self, *, flush: bool) -> None:
        pipes, self.pipelines = list(self.pipelines.values()), {}
        for pipe in pipes:
            await pipe.close(timeout=5.0 if flush else 0.0)
