#!/usr/bin/env python3
"""Ingest load generator for earshot: N concurrent real-time WebSocket streams.

Each stream connects to ``/ws``, sends ``start`` (f32 mono by default), then paces binary
frames of ``--frame-ms`` audio in real time against its own start clock (frame k is due at
``t0 + k * frame_ms``; a late stream catches up by sending the overdue frames back to back)
for ``--seconds``, then sends ``stop`` and waits for ``stopped``. Afterwards every archive's
frame count is checked against the frames the stream sent (REST ``/api/streams/ID``, plus the
WAV header via soundfile when this tool started the server itself).

Measured per stream: frames sent; real-time ratios (client side: frames sent by the deadline
/ frames due; server side: frames acknowledged by the deadline / frames due); ack latency
per ack (time from sending the message holding the last sample an ack covers to receiving
that ack); failures (connect errors, refused starts, error messages, unexpected closes).

A stream is *held* when it did not fail and both real-time ratios are >= ``--held-ratio``
(0.9). The server-side ratio is there because loopback socket buffers can absorb many
seconds of audio: a server that falls behind would otherwise still look "real time" from
the sending side.

Server CPU time (psutil, process + children) is sampled at the start and the end of the
steady-state window (all streams started .. first stream's deadline); peak RSS is the
kernel's VmHWM of the server process (plus children's).

Two client implementations:

* ``raw`` (default): a minimal asyncio Protocol speaking RFC 6455 directly. Each worker
  process pre-builds one masked binary frame (fixed mask key) and writes it with a single
  ``transport.write``; one scheduler per process paces all its streams from a heap, so the
  load generator costs a few microseconds per frame and is not the bottleneck.
* ``websockets``: ``websockets.asyncio.client.connect(compression=None)``, one coroutine
  per stream. Heavier; useful as a cross-check at small N.

Examples::

    python benchmarks/ingest_load.py --streams 100 --seconds 20 --json out.json
    python benchmarks/ingest_load.py --streams 10 --url ws://127.0.0.1:8000/ws --server-pid 1234
    python benchmarks/ingest_load.py --table benchmarks/results/ingest-20250101.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import datetime as _dt
import heapq
import http.client
import json
import math
import multiprocessing as mp
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

try:
    import psutil
except ImportError:  # pragma: no cover
    psutil = None  # type: ignore[assignment]

TICK = 0.001  # scheduler granularity (s): the scheduler never spins faster than this


# ------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------
def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) of unsorted values."""
    if not values:
        return None
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def rnd(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def ws_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final, masked client frame (RFC 6455 section 5.2)."""
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if n:
        m = int.from_bytes((mask * (n // 4 + 1))[:n], "big")  # the mask repeated over n bytes
        masked = (int.from_bytes(payload, "big") ^ m).to_bytes(n, "big")
    else:
        masked = b""
    return head + mask + masked


def audio_payload(frame_samples: int, channels: int, rate: int) -> bytes:
    """A 440 Hz tone at -12 dBFS, little-endian float32, interleaved."""
    out = array("f")
    for i in range(frame_samples):
        v = 0.25 * math.sin(2 * math.pi * 440.0 * i / rate)
        for _ in range(channels):
            out.append(v)
    if sys.byteorder != "little":
        out.byteswap()
    return out.tobytes()


def stream_clock(cfg: dict[str, Any], st: Any) -> float:
    """t0 of a stream's schedule (frame k is due at t0 + k * frame_ms).

    ``scheduled``: the time the stream was meant to start, so a slow connect/start counts
    as lateness the stream must catch up (like a client buffering its microphone);
    ``ready``: the time the server answered ``ready`` (start latency is not counted).
    """
    return st.start_at if cfg.get("clock", "scheduled") == "scheduled" else time.monotonic()


def start_message(cfg: dict[str, Any], idx: int) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "start", "format": "f32", "rate": cfg["rate"],
                           "channels": cfg["channels"], "name": f"load-{idx}"}
    if cfg.get("processors") is not None:
        msg["processors"] = cfg["processors"]
    if cfg.get("batch"):
        msg["batch"] = True
    return msg


def code_fingerprint(server_src: str | None = None) -> dict[str, Any]:
    """Which server code ran: git HEAD, dirty flag, and a hash of earshot/**/*.py."""
    import hashlib

    out: dict[str, Any] = {}
    try:
        import earshot

        root = (Path(server_src) / "earshot" if server_src
                else Path(earshot.__file__).resolve().parent)
        if server_src:
            out["server_src"] = str(server_src)
        h = hashlib.sha256()
        for p in sorted(root.rglob("*.py")):
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
        out["src_sha256"] = h.hexdigest()[:16]
        out["version"] = getattr(earshot, "__version__", None)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            repo = Path(earshot.__file__).resolve().parent
            head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True, timeout=5).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--",
                                    "."], capture_output=True, text=True, timeout=5).stdout
            out["git_head"] = head or None
            out["src_dirty"] = bool(dirty.strip())
    except Exception as exc:  # never fail a benchmark over this
        out["error"] = str(exc)
    return out


# ------------------------------------------------------------------------------------------
# per-stream state (shared by both client implementations)
# ------------------------------------------------------------------------------------------
class StreamState:
    __slots__ = (
        "ack_lat",
        "acked",
        "acked_by_deadline",
        "close_code",
        "connect_s",
        "deadline",
        "done",
        "dropped_s",
        "due_frames",
        "failure",
        "idx",
        "kinds",
        "lag_max",
        "late_frames",
        "max_late",
        "send_times",
        "sent",
        "spf",
        "start_at",
        "stop_latency",
        "stop_sent_at",
        "stopped_offset",
        "stream_id",
        "t0",
        "warnings",
    )

    def __init__(self, idx: int, start_at: float, due_frames: int, spf: int) -> None:
        self.idx = idx
        self.start_at = start_at
        self.stream_id: str | None = None
        self.t0 = 0.0
        self.deadline = 0.0
        self.sent = 0  # messages (= frames of --frame-ms) sent
        self.send_times = array("d")
        self.due_frames = due_frames
        self.spf = spf  # sample frames per message
        self.acked = 0  # sample frames acked
        self.acked_by_deadline = 0
        self.ack_lat: list[float] = []  # ms
        self.max_late = 0.0
        self.late_frames = 0  # messages sent more than one frame period late
        self.stop_sent_at = 0.0
        self.stop_latency: float | None = None
        self.stopped_offset: int | None = None
        self.failure: str | None = None
        self.warnings: list[str] = []
        self.done = False
        self.connect_s: float | None = None
        self.close_code: int | None = None
        self.kinds: collections.Counter[str] = collections.Counter()  # server messages
        self.lag_max = 0.0  # seconds, the most a processor said it was behind (lag events)
        self.dropped_s = 0.0  # audio processors skipped (dropped events)

    # -- messages from the server -------------------------------------------------------
    def on_ack(self, offset: int, now: float) -> None:
        self.kinds["ack"] += 1
        if offset <= self.acked:
            return
        self.acked = offset
        if self.stop_sent_at == 0.0:
            if now <= self.deadline:
                self.acked_by_deadline = offset
            k = (offset - 1) // self.spf
            if 0 <= k < len(self.send_times):
                self.ack_lat.append((now - self.send_times[k]) * 1000.0)

    def on_json(self, msg: dict[str, Any], now: float) -> str | None:
        """Handle a server message; returns its type."""
        kind = msg.get("type")
        if kind != "ack":
            self.kinds[str(kind)] += 1
            self.on_event(msg)
        if kind == "ack":
            for e in msg.get("events") or ():  # batched events: counted as "events:TYPE"
                if isinstance(e, dict):
                    self.kinds[f"events:{e.get('type')}"] += 1
                    self.on_event(e)
            self.on_ack(int(msg.get("offset", 0)), now)
        elif kind == "stopped":
            self.stopped_offset = int(msg.get("offset", -1))
            if self.stop_sent_at:
                self.stop_latency = (now - self.stop_sent_at) * 1000.0
        elif kind == "error":
            if self.failure is None:
                self.failure = f"error:{msg.get('code')}"
        elif kind == "warning":
            self.warnings.append(str(msg.get("code")))
        return kind if isinstance(kind, str) else None

    def on_event(self, e: dict[str, Any]) -> None:
        """Processors falling behind: ``lag`` (how far, seconds) and ``dropped`` reports."""
        if e.get("type") == "lag":
            self.lag_max = max(self.lag_max, float(e.get("lag", 0)))
        elif e.get("type") == "dropped":
            self.dropped_s += float(e.get("seconds", 0))

    def result(self, seconds: float) -> dict[str, Any]:
        sent_frames = self.sent * self.spf
        due = self.due_frames
        rt_client = self.sent / due if due else 0.0
        rt_server = self.acked_by_deadline / (due * self.spf) if due else 0.0
        return {
            "idx": self.idx,
            "stream": self.stream_id,
            "failure": self.failure,
            "messages_sent": self.sent,
            "frames_sent": sent_frames,
            "frames_due": due * self.spf,
            "rt_client": round(rt_client, 4),
            "rt_server": round(rt_server, 4),
            "acked_by_deadline": self.acked_by_deadline,
            "stopped_offset": self.stopped_offset,
            "acks": len(self.ack_lat),
            "ack_p50_ms": rnd(pct(self.ack_lat, 50), 3),
            "ack_p99_ms": rnd(pct(self.ack_lat, 99), 3),
            "ack_max_ms": rnd(max(self.ack_lat) if self.ack_lat else None, 3),
            "max_late_ms": round(self.max_late * 1000.0, 3),
            "late_frames": self.late_frames,
            "stop_latency_ms": rnd(self.stop_latency, 3),
            "connect_s": rnd(self.connect_s, 4),
            "warnings": sorted(set(self.warnings)),
            "messages_received": dict(self.kinds),
            "processor_lag_max_s": self.lag_max,
            "processor_dropped_s": self.dropped_s,
        }


# ------------------------------------------------------------------------------------------
# raw RFC 6455 client (asyncio Protocol)
# ------------------------------------------------------------------------------------------
class RawClient(asyncio.Protocol):
    def __init__(self, st: StreamState, loop: asyncio.AbstractEventLoop) -> None:
        self.st = st
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.handshake_done = False
        self.key = ""
        self.ready = loop.create_future()
        self.finished = loop.create_future()  # stopped+closed, or failure
        self.paused = False
        self.closing = False
        # Sent once the 101 arrives. Not pipelined with the upgrade request on purpose:
        # uvicorn's httptools upgrade path drops bytes that arrive with the request.
        self.first_message = b""

    # -- asyncio callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        st = self.st
        if st.stopped_offset is None and st.failure is None:
            st.failure = f"connection_lost:{type(exc).__name__ if exc else 'eof'}"
        if not self.ready.done():
            self.ready.set_result(False)
        if not self.finished.done():
            self.finished.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.handshake_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode("latin-1")
            del buf[: end + 4]
            status = head.split("\r\n", 1)[0]
            if " 101 " not in status + " ":
                self.fail(f"handshake:{status.strip()[:60]}")
                return
            self.handshake_done = True
            if self.first_message:
                self.write(self.first_message)
            elif not self.ready.done():  # compatibility mode: audio at once, no start
                self.ready.set_result(True)
        self.parse_frames()

    # -- frames -------------------------------------------------------------------------
    def parse_frames(self) -> None:
        buf = self.buf
        while True:
            n = len(buf)
            if n < 2:
                return
            b0, b1 = buf[0], buf[1]
            ln = b1 & 0x7F
            hdr = 2
            if ln == 126:
                if n < 4:
                    return
                ln = (buf[2] << 8) | buf[3]
                hdr = 4
            elif ln == 127:
                if n < 10:
                    return
                ln = int.from_bytes(buf[2:10], "big")
                hdr = 10
            if b1 & 0x80:  # servers must not mask; tolerate anyway
                hdr += 4
            if n < hdr + ln:
                return
            payload = bytes(buf[hdr : hdr + ln])
            if b1 & 0x80:
                mk = buf[hdr - 4 : hdr]
                payload = bytes(c ^ mk[i % 4] for i, c in enumerate(payload))
            del buf[: hdr + ln]
            op = b0 & 0x0F
            if op == 1:
                self.on_text(payload)
            elif op == 9:  # ping → pong
                self.write(ws_frame(0xA, payload))
            elif op == 8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.st.close_code = code
                if self.st.stopped_offset is None and self.st.failure is None:
                    reason = payload[2:].decode("utf-8", "replace")
                    self.st.failure = f"closed:{code}:{reason[:60]}"
                if not self.closing:
                    self.closing = True
                    self.write(ws_frame(0x8, payload[:2]))
                if self.transport is not None:
                    self.transport.close()
                return
            # binary, pong, continuation: ignored

    _ACK = b'{"type":"ack","offset":'

    def on_text(self, payload: bytes) -> None:
        now = time.monotonic()
        st = self.st
        if payload.startswith(self._ACK) and payload.endswith(b"}"):
            try:
                st.on_ack(int(payload[len(self._ACK) : -1]), now)
                return
            except ValueError:
                pass
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        kind = st.on_json(msg, now)
        if kind == "ready":
            st.stream_id = msg.get("stream")
            if not self.ready.done():
                self.ready.set_result(True)
        elif kind == "error" and not self.ready.done():
            self.ready.set_result(False)

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def fail(self, why: str) -> None:
        if self.st.failure is None:
            self.st.failure = why
        if self.transport is not None:
            self.transport.close()


class Scheduler:
    """Paces every stream of this process from one heap of (due time, seq, stream)."""

    def __init__(self, frame: bytes, fms: float, on_deadline: Any) -> None:
        self.heap: list[tuple[float, int, Any]] = []
        self.frame = frame
        self.fms = fms
        self.on_deadline = on_deadline
        self.seq = 0
        self.wake = asyncio.Event()
        self.active = 0

    def add(self, client: RawClient) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (client.st.t0, self.seq, client))
        self.active += 1
        self.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        heap, frame, fms = self.heap, self.frame, self.fms
        pop, push, mono = heapq.heappop, heapq.heappush, time.monotonic
        while not stop.is_set():
            now = mono()
            while heap and heap[0][0] <= now:
                due, seq, c = pop(heap)
                st = c.st
                if st.failure is not None or c.transport is None or c.transport.is_closing():
                    self.active -= 1
                    continue
                if now >= st.deadline or st.sent >= st.due_frames:
                    self.active -= 1
                    self.on_deadline(c)
                    continue
                if c.paused:  # write buffer full: the server is not reading; poll
                    push(heap, (now + TICK, seq, c))
                    continue
                c.transport.write(frame)
                late = now - due
                if late > st.max_late:
                    st.max_late = late
                if late > fms:
                    st.late_frames += 1
                st.send_times.append(now)
                st.sent += 1
                push(heap, (st.t0 + st.sent * fms, seq, c))
                now = mono()
            if heap:
                delay = heap[0][0] - mono()
                await asyncio.sleep(delay if delay > TICK else TICK)
            else:
                self.wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 0.05)


def settle(settled: Any) -> None:
    """Count one stream as settled (started or failed) in the shared counter."""
    with settled.get_lock():
        settled.value += 1


async def raw_worker(cfg: dict[str, Any], states: list[StreamState], settled: Any) -> None:
    loop = asyncio.get_running_loop()
    url = urlsplit(cfg["url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    query = url.query
    if cfg.get("compat"):  # the classic snippet: format and rate in the URL, no start
        query = "&".join(q for q in (query, f"rate={cfg['rate']}&format=f32"
                                     f"&channels={cfg['channels']}") if q)
    path = (url.path or "/ws") + (f"?{query}" if query else "")
    fms = cfg["frame_ms"] / 1000.0
    spf = cfg["spf"]
    payload = audio_payload(spf, cfg["channels"], cfg["rate"])
    frame = ws_frame(0x2, payload, mask=os.urandom(4))  # one pre-masked frame, reused

    def on_deadline(c: RawClient) -> None:
        st = c.st
        st.stop_sent_at = time.monotonic()
        c.write(ws_frame(0x1, b'{"type":"stop"}'))

    sched = Scheduler(frame, fms, on_deadline)
    stop_sched = asyncio.Event()
    sched_task = asyncio.create_task(sched.run(stop_sched))

    async def one(st: StreamState) -> None:
        await asyncio.sleep(max(0.0, st.start_at - time.monotonic()))
        t_conn = time.monotonic()
        client: RawClient | None = None
        try:
            _, client = await asyncio.wait_for(
                loop.create_connection(lambda: RawClient(st, loop), host, port),
                cfg["connect_timeout"],
            )
            key = base64.b64encode(os.urandom(16)).decode()
            if not cfg.get("compat"):
                start = start_message(cfg, st.idx)
                client.first_message = ws_frame(0x1, json.dumps(start).encode())
            client.write(
                (
                    f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    f"Sec-WebSocket-Version: 13\r\nUser-Agent: earshot-ingest-load\r\n"
                    + (f"Authorization: Bearer {cfg['token']}\r\n" if cfg.get("token") else "")
                    + "\r\n"
                ).encode()
            )
            ok = await asyncio.wait_for(client.ready, cfg["connect_timeout"])
        except (TimeoutError, OSError) as exc:
            ok = False
            if st.failure is None:
                st.failure = f"connect:{type(exc).__name__}:{str(exc)[:60]}"
        settle(settled)
        if not ok or client is None:
            if st.failure is None:
                st.failure = "start_refused"
            if client is not None and client.transport is not None:
                client.transport.close()
            st.done = True
            return
        st.connect_s = time.monotonic() - t_conn
        st.t0 = stream_clock(cfg, st)
        st.deadline = st.t0 + cfg["seconds"]
        sched.add(client)
        try:
            await asyncio.wait_for(asyncio.shield(client.finished),
                                   cfg["seconds"] + cfg["stop_timeout"] + 5)
        except TimeoutError:
            if st.failure is None:
                st.failure = "timeout_waiting_for_stopped"
        if client.transport is not None:
            client.transport.close()
        st.done = True

    await asyncio.gather(*(one(st) for st in states))
    stop_sched.set()
    await sched_task


# ------------------------------------------------------------------------------------------
# websockets-library client (cross-check)
# ------------------------------------------------------------------------------------------
async def websockets_worker(cfg: dict[str, Any], states: list[StreamState], settled: Any) -> None:
    from websockets.asyncio.client import connect

    fms = cfg["frame_ms"] / 1000.0
    payload = audio_payload(cfg["spf"], cfg["channels"], cfg["rate"])
    headers = {"Authorization": f"Bearer {cfg['token']}"} if cfg.get("token") else None

    async def one(st: StreamState) -> None:
        await asyncio.sleep(max(0.0, st.start_at - time.monotonic()))
        t_conn = time.monotonic()
        settled_here = False
        try:
            async with connect(cfg["url"], compression=cfg.get("compression"),
                               additional_headers=headers,
                               open_timeout=cfg["connect_timeout"], max_queue=None,
                               ping_interval=None) as ws:
                await ws.send(json.dumps(start_message(cfg, st.idx)))
                msg = json.loads(await asyncio.wait_for(ws.recv(), cfg["connect_timeout"]))
                st.on_json(msg, time.monotonic())
                settle(settled)
                settled_here = True
                if msg.get("type") != "ready":
                    if st.failure is None:
                        st.failure = f"start_refused:{msg.get('code')}"
                    return
                st.stream_id = msg["stream"]
                st.connect_s = time.monotonic() - t_conn
                st.t0 = stream_clock(cfg, st)
                st.deadline = st.t0 + cfg["seconds"]

                async def reader() -> None:
                    async for m in ws:
                        if isinstance(m, str):
                            kind = st.on_json(json.loads(m), time.monotonic())
                            if kind == "stopped":
                                return

                rtask = asyncio.create_task(reader())
                k = 0
                while k < st.due_frames:
                    now = time.monotonic()
                    if now >= st.deadline or rtask.done():
                        break
                    due = st.t0 + k * fms
                    if due > now:
                        await asyncio.sleep(due - now)
                        now = time.monotonic()
                    await ws.send(payload)
                    late = now - due
                    st.max_late = max(st.max_late, late)
                    if late > fms:
                        st.late_frames += 1
                    st.send_times.append(now)
                    st.sent += 1
                    k += 1
                # let the deadline pass before stopping (same as the raw client)
                await asyncio.sleep(max(0.0, st.deadline - time.monotonic()))
                st.stop_sent_at = time.monotonic()
                await ws.send('{"type":"stop"}')
                try:
                    await asyncio.wait_for(rtask, cfg["stop_timeout"])
                except TimeoutError:
                    if st.failure is None:
                        st.failure = "timeout_waiting_for_stopped"
                if st.stopped_offset is None and st.failure is None:
                    st.failure = "closed_before_stopped"
        except Exception as exc:  # connect errors, refused handshakes, abnormal closes
            if st.failure is None and st.stopped_offset is None:
                st.failure = f"{type(exc).__name__}:{str(exc)[:60]}"
        finally:
            if not settled_here:
                settle(settled)
            st.done = True

    await asyncio.gather(*(one(st) for st in states))


# ------------------------------------------------------------------------------------------
# worker process
# ------------------------------------------------------------------------------------------
def worker_main(wid: int, indices: list[int], cfg: dict[str, Any], settled: Any,
                start_at: Any, go: Any, ready_q: Any, out_q: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C
    raise_nofile()
    if cfg["uvloop"]:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    ready_q.put(wid)
    go.wait()
    t_start = start_at.value
    n = cfg["streams"]
    stagger = cfg["stagger"]
    states = [
        StreamState(i, t_start + (stagger * i / n if n > 1 else 0.0), cfg["due_frames"], cfg["spf"])
        for i in indices
    ]
    runner = raw_worker if cfg["client"] == "raw" else websockets_worker
    try:
        asyncio.run(runner(cfg, states, settled))
        err = None
    except BaseException as exc:  # report whatever we have
        err = f"{type(exc).__name__}: {exc}"
    out_q.put({
        "wid": wid,
        "error": err,
        "streams": [st.result(cfg["seconds"]) for st in states],
        "ack_lat": [x for st in states for x in st.ack_lat],
    })


# ------------------------------------------------------------------------------------------
# server management & measurement
# ------------------------------------------------------------------------------------------
class Server:
    def __init__(self, args: argparse.Namespace) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.data_dir: Path | None = None
        self.owned = args.url is None
        self.log_path: Path | None = None
        self._tmp: str | None = None
        if self.owned:
            self._tmp = tempfile.mkdtemp(prefix="earshot-ingest-load-")
            self.data_dir = Path(self._tmp) / "data"
            self.port = free_port()
            self.url = f"ws://127.0.0.1:{self.port}/ws"
            exe = Path(sys.executable).parent / "earshot"
            cmd = [str(exe) if exe.exists() else (shutil.which("earshot") or "earshot"),
                   "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
                   "--log-level", args.log_level]
            self.kind = getattr(args, "server_kind", "earshot")
            if self.kind != "earshot":  # a bare discard server (benchmarks/bare_servers.py)
                cmd = [sys.executable, str(Path(__file__).with_name("bare_servers.py")),
                       self.kind.removeprefix("bare-"), "--port", str(self.port)]
            self.log_path = Path(self._tmp) / "server.log"
            self.cmd = cmd
            self._log = open(self.log_path, "wb")  # noqa: SIM115
            env = dict(os.environ)
            # raw capacity: the admission guard (server_full past a loop-lag or ack-latency
            # threshold) would otherwise refuse the newcomers of a ramp; older servers
            # ignore these variables
            env.setdefault("EARSHOT_MAX_LOOP_LAG", "0")
            env.setdefault("EARSHOT_MAX_ACK_LATENCY", "0")
            # thousands of streams from one address: no per-address connection limit
            env.setdefault("EARSHOT_CONN_RATE", "0")
            env.setdefault("EARSHOT_REST_RATE", "0")  # the archive check: a GET per stream
            if args.server_src:  # run the server from a snapshot of the package
                env["PYTHONPATH"] = os.pathsep.join(
                    [str(Path(args.server_src).resolve())]
                    + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
            self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                         env=env)
            self.pid: int | None = self.proc.pid
        else:
            self.kind = getattr(args, "server_kind", "earshot")
            self.url = args.url
            self.pid = args.server_pid
            if args.data_dir:
                self.data_dir = Path(args.data_dir)
        parts = urlsplit(self.url)
        self.host = parts.hostname or "127.0.0.1"
        self.http_port = parts.port or 80
        self.ps = psutil.Process(self.pid) if (psutil and self.pid) else None

    def wait_up(self, timeout: float = 30.0) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = self.http_get("/healthz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not up after {timeout}s:\n{self.log_tail()}")

    def http_get(self, path: str, conn: http.client.HTTPConnection | None = None
                 ) -> tuple[int, bytes]:
        c = conn or http.client.HTTPConnection(self.host, self.http_port, timeout=10)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            if conn is None:
                c.close()

    def cpu_time(self) -> float | None:
        if self.ps is None:
            return None
        try:
            t = self.ps.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for ch in self.ps.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    ct = ch.cpu_times()
                    total += ct.user + ct.system
            return total
        except psutil.Error:
            return None

    def rss(self) -> tuple[float | None, float | None]:
        """(current RSS MB, peak RSS MB) of the server and its children."""
        if self.ps is None:
            return None, None
        cur = peak = 0.0
        procs = [self.ps]
        with contextlib.suppress(psutil.Error):
            procs += self.ps.children(recursive=True)
        for p in procs:
            with contextlib.suppress(psutil.Error, OSError):
                cur += p.memory_info().rss / 2**20
                hwm = None
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            hwm = int(line.split()[1]) / 1024.0
                            break
                peak += hwm if hwm is not None else p.memory_info().rss / 2**20
        return cur, peak

    def log_tail(self, n: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, keep: bool) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self._log.close()
        if self._tmp and not keep:
            shutil.rmtree(self._tmp, ignore_errors=True)


def check_archives(server: Server, streams: list[dict[str, Any]]) -> dict[str, Any]:
    """Each stream's archive must hold exactly the frames the stream sent."""
    ok, mismatch, missing = 0, [], []
    sf = None
    if server.data_dir is not None:
        with contextlib.suppress(ImportError):
            import soundfile as sf
    conn = http.client.HTTPConnection(server.host, server.http_port, timeout=10)
    try:
        for s in streams:
            sid = s["stream"]
            if not sid:
                continue
            want = s["frames_sent"]
            got_rest = got_wav = None
            try:
                status, body = server.http_get(f"/api/streams/{sid}", conn)
                if status == 200:
                    got_rest = int(json.loads(body)["frames"])
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                conn.close()
                conn = http.client.HTTPConnection(server.host, server.http_port, timeout=10)
            if sf is not None and server.data_dir is not None:
                p = server.data_dir / "streams" / f"{sid}.wav"
                if p.exists():
                    with contextlib.suppress(Exception):
                        got_wav = int(sf.info(str(p)).frames)
            s["archive_frames_rest"] = got_rest
            s["archive_frames_wav"] = got_wav
            if got_rest is None and got_wav is None:
                missing.append(sid)
            elif all(g is None or g == want for g in (got_rest, got_wav)) and (
                s["stopped_offset"] in (None, want)
            ):
                ok += 1
            else:
                mismatch.append({"stream": sid, "sent": want, "rest": got_rest,
                                 "wav": got_wav, "stopped": s["stopped_offset"]})
    finally:
        conn.close()
    checked = sum(1 for s in streams if s["stream"])
    return {"checked": checked, "ok": ok, "mismatches": mismatch, "missing": missing,
            "method": "rest+wav" if sf is not None and server.data_dir else "rest"}


def with_query(url: str, query: str | None) -> str:
    """``url`` with more query parameters (``--query``)."""
    return url if not query else url + ("&" if "?" in url else "?") + query


def processors_arg(value: str | None) -> list[str] | None:
    if value is None:
        return None
    if value.strip().lower() in ("none", ""):
        return []
    return [p.strip() for p in value.split(",") if p.strip()]


def default_procs(n: int, client: str) -> int:
    per = 250 if client == "websockets" else 500
    return max(1, min(os.cpu_count() or 1, math.ceil(n / per)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()
    need = args.streams * (1 if args.url else 2) + 256
    if nofile < need:
        print(f"warning: RLIMIT_NOFILE {nofile} < ~{need} needed; raise `ulimit -n`",
              file=sys.stderr)
    rate, fms_ms = args.rate, args.frame_ms
    spf = round(rate * fms_ms / 1000.0)
    if abs(spf - rate * fms_ms / 1000.0) > 1e-9:
        raise SystemExit("--frame-ms must be a whole number of samples at --rate")
    due_frames = round(args.seconds * 1000.0 / fms_ms)
    procs = args.procs or default_procs(args.streams, args.client)
    procs = max(1, min(procs, args.streams))

    loadavg_before = os.getloadavg()
    code = code_fingerprint(args.server_src)
    server = Server(args)
    rec: dict[str, Any] = {}
    try:
        server.wait_up()
        cfg = {
            "url": with_query(server.url, args.query), "streams": args.streams,
            "seconds": args.seconds,
            "frame_ms": fms_ms, "rate": rate, "channels": args.channels, "spf": spf,
            "due_frames": due_frames, "stagger": args.stagger, "client": args.client,
            "clock": args.clock,
            "connect_timeout": args.connect_timeout, "stop_timeout": args.stop_timeout,
            "token": args.token, "uvloop": not args.no_uvloop,
            "processors": processors_arg(args.processors),
            "compression": None if args.compression == "none" else args.compression,
            "batch": args.batch,
            "compat": args.compat,
        }
        ctx = mp.get_context("fork")
        settled = ctx.Value("i", 0)
        start_at = ctx.Value("d", 0.0)
        go = ctx.Event()
        ready_q, out_q = ctx.Queue(), ctx.Queue()
        workers = []
        for w in range(procs):
            idx = list(range(w, args.streams, procs))
            p = ctx.Process(target=worker_main, name=f"ingest-load-{w}",
                            args=(w, idx, cfg, settled, start_at, go, ready_q, out_q))
            p.start()
            workers.append(p)
        for _ in range(procs):
            ready_q.get(timeout=60)
        cpu_run0 = server.cpu_time()
        t_go = time.monotonic() + 0.3
        start_at.value = t_go
        go.set()
        wps = [psutil.Process(p.pid) for p in workers] if psutil else []

        def client_cpu() -> list[float]:
            out = []
            for wp in wps:
                try:
                    t = wp.cpu_times()
                    out.append(t.user + t.system)
                except psutil.Error:
                    out.append(float("nan"))
            return out

        # steady-state window: all streams started (or failed) .. first deadline
        t_first_deadline = t_go + args.seconds
        all_started = True
        while settled.value < args.streams:
            if time.monotonic() > t_go + args.stagger + args.seconds / 2:
                all_started = False
                break
            time.sleep(0.02)
        t_started = time.monotonic()
        t_w0 = max(t_started + 0.2, t_go + args.stagger + 0.2)
        if t_w0 > t_first_deadline - 1.0:
            t_w0 = t_started
        peak_cur_rss = 0.0
        while time.monotonic() < t_w0:
            time.sleep(0.01)
        cpu0, ccpu0, w0 = server.cpu_time(), client_cpu(), time.monotonic()
        if psutil:
            psutil.cpu_percent(None)
        while time.monotonic() < t_first_deadline - 0.05:
            cur, _ = server.rss()
            peak_cur_rss = max(peak_cur_rss, cur or 0.0)
            time.sleep(min(0.5, max(0.0, t_first_deadline - 0.05 - time.monotonic())))
        cpu1, ccpu1, w1 = server.cpu_time(), client_cpu(), time.monotonic()
        machine_pct = psutil.cpu_percent(None) * (os.cpu_count() or 1) if psutil else None
        window = w1 - w0

        results: list[dict[str, Any]] = []
        ack_lat: list[float] = []
        errors = []
        for _ in range(procs):
            r = out_q.get(timeout=args.seconds + args.stop_timeout + 120)
            results.extend(r["streams"])
            ack_lat.extend(r["ack_lat"])
            if r["error"]:
                errors.append(r["error"])
        for p in workers:
            p.join(10)
        cpu_run1 = server.cpu_time()
        _, peak_rss = server.rss()
        results.sort(key=lambda s: s["idx"])

        arch = check_archives(server, results) if server.kind == "earshot" else {
            "checked": 0, "ok": 0, "mismatches": [], "missing": [], "method": "none (bare)"}

        n = args.streams
        failed = [s for s in results if s["failure"]]
        # no acks (a bare server, or earshot's compatibility mode): only the client side
        bare = server.kind != "earshot" or args.compat  # can tell

        held = [s for s in results if not s["failure"] and s["rt_client"] >= args.held_ratio
                and (bare or s["rt_server"] >= args.held_ratio)]
        active = n - len(failed)
        cpu_pct = (cpu1 - cpu0) / window * 100.0 if cpu0 is not None and cpu1 is not None else None
        ccpu = [round((b - a) / window * 100.0, 1) for a, b in zip(ccpu0, ccpu1, strict=True)]
        reasons = collections.Counter(s["failure"].split(":")[0] + ":" + s["failure"].split(":")[1]
                                      if s["failure"].count(":") else s["failure"]
                                      for s in failed)
        stop_lat = [s["stop_latency_ms"] for s in results if s["stop_latency_ms"] is not None]
        late = [s["max_late_ms"] for s in results if not s["failure"]]
        conn_s = [s["connect_s"] for s in results if s["connect_s"] is not None]
        kinds: collections.Counter[str] = collections.Counter()
        for s in results:
            kinds.update(s["messages_received"])
        rec = {
            "tool": "benchmarks/ingest_load.py",
            "time": _dt.datetime.now().isoformat(timespec="seconds"),
            "streams": n,
            "held": len(held),
            "failed": len(failed),
            "slow": n - len(held) - len(failed),
            "held_pct": round(100.0 * len(held) / n, 1),
            "seconds": args.seconds,
            "frame_ms": fms_ms,
            "rate": rate,
            "channels": args.channels,
            "client": args.client,
            "clock": args.clock,
            "compression": args.compression,
            "procs": procs,
            "processors": "server default" if args.processors is None else args.processors,
            "server_kind": server.kind, "compat": args.compat, "query": args.query,
            "batch": args.batch,
            "code": code,
            "server": "own" if server.owned else server.url,
            "ack_samples": len(ack_lat),
            "ack_p50_ms": rnd(pct(ack_lat, 50), 3),
            "ack_p90_ms": rnd(pct(ack_lat, 90), 3),
            "ack_p99_ms": rnd(pct(ack_lat, 99), 3),
            "ack_max_ms": rnd(max(ack_lat) if ack_lat else None, 3),
            "stop_p50_ms": rnd(pct(stop_lat, 50), 2),
            "stop_p99_ms": rnd(pct(stop_lat, 99), 2),
            "send_late_max_ms_p99": rnd(pct(late, 99), 2),
            "start_p50_ms": rnd(pct(conn_s, 50) * 1000 if conn_s else None, 1),
            "start_p99_ms": rnd(pct(conn_s, 99) * 1000 if conn_s else None, 1),
            "start_max_ms": rnd(max(conn_s) * 1000 if conn_s else None, 1),
            "rt_client_min": min((s["rt_client"] for s in results), default=None),
            "rt_server_min": min((s["rt_server"] for s in results), default=None),
            "server_cpu_pct": rnd(cpu_pct, 1),
            "server_cpu_pct_per_stream": rnd(cpu_pct / active, 3) if cpu_pct is not None
            and active else None,
            "server_cpu_s_whole_run": rnd(cpu_run1 - cpu_run0, 2) if cpu_run0 is not None
            and cpu_run1 is not None else None,
            "server_rss_mb": rnd(peak_rss, 1),
            "server_rss_window_max_mb": rnd(peak_cur_rss, 1),
            "window_s": round(window, 2),
            "all_started_before_window": all_started,
            "client_cpu_pct": ccpu,
            "client_cpu_pct_per_stream": rnd(sum(ccpu) / active, 4) if ccpu and active
            else None,
            "machine_cpu_pct": rnd(machine_pct, 1),
            "loadavg_before": [round(x, 2) for x in loadavg_before],
            "archives_checked": arch["checked"],
            "archives_ok": arch["ok"],
            "archives_mismatch": len(arch["mismatches"]),
            "archives_missing": len(arch["missing"]),
            "archives_exact": arch["checked"] > 0 and arch["ok"] == arch["checked"],
            "archive_check": arch["method"],
            "archive_mismatch_examples": arch["mismatches"][:5],
            "failure_reasons": dict(reasons),
            "server_messages_per_stream_s": {
                k: round(v / max(1, len(results) - len(failed)) / args.seconds, 2)
                for k, v in sorted(kinds.items())},
            # from the `lag` and `dropped` events the senders got (0: none)
            "processor_lag_max_s": max((s["processor_lag_max_s"] for s in results), default=0),
            "processor_dropped_s": round(sum(s["processor_dropped_s"] for s in results), 3),
            "worker_errors": errors,
        }
        if args.per_stream:
            rec["per_stream"] = results
        if server.owned and server.proc is not None and server.proc.poll() is not None:
            rec["server_exited"] = server.proc.returncode
        return rec
    finally:
        srv_tail = "\n".join(
            ln for ln in (server.log_tail(400) if server.owned else "").splitlines()
            if any(w in ln for w in ("ERROR", "Traceback", "Error", "WARNING", "Exception"))
        )[-4000:]
        server.stop(args.keep)
        if rec and srv_tail.strip():
            rec["server_log_tail"] = srv_tail


def checked(r: dict[str, Any]) -> int:
    """Archives checked: one per stream that got 'ready' (failed starts have none)."""
    if "archives_checked" in r:
        return int(r["archives_checked"])
    return int(r["archives_ok"] + r["archives_mismatch"] + r["archives_missing"])


def summary_line(r: dict[str, Any]) -> str:
    def f(x: Any, spec: str = "") -> str:
        return "-" if x is None else format(x, spec)

    return (
        f"streams={r['streams']} held={r['held']}/{r['streams']} failed={r['failed']} "
        f"slow={r['slow']} | ack p50={f(r['ack_p50_ms'], '.2f')}ms "
        f"p99={f(r['ack_p99_ms'], '.2f')}ms max={f(r['ack_max_ms'], '.1f')}ms | "
        f"server CPU={f(r['server_cpu_pct'], '.1f')}% "
        f"({f(r['server_cpu_pct_per_stream'], '.3f')}%/stream) "
        f"RSS={f(r['server_rss_mb'], '.0f')}MB | archives {r['archives_ok']}/{checked(r)} exact"
        f" ({r['archives_mismatch']} mismatched, {r['archives_missing']} missing) | "
        f"start p50/max={f(r.get('start_p50_ms'), '.0f')}/{f(r.get('start_max_ms'), '.0f')}ms | "
        f"processors: lag max {f(r.get('processor_lag_max_s'))} s, "
        f"dropped {f(r.get('processor_dropped_s'))} s | "
        f"client CPU={r['client_cpu_pct']}% x{r['procs']} ({r['client']}) "
        f"machine={f(r['machine_cpu_pct'], '.0f')}%/{(os.cpu_count() or 1) * 100}%"
    )


TABLE_HEAD = ("| streams | held | server CPU % total | CPU % per stream | ack p50 ms | "
              "ack p99 ms | RSS MB | archives exact |\n"
              "|---:|---:|---:|---:|---:|---:|---:|:---|")


def table(records: list[dict[str, Any]]) -> str:
    def f(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    rows = [TABLE_HEAD]
    for r in records:
        n_chk = checked(r)
        exact = f"{'yes' if r['archives_exact'] else 'NO'} ({r['archives_ok']}/{n_chk}"
        if r["archives_mismatch"] or r["archives_missing"]:
            exact += f"; {r['archives_mismatch']} mismatched, {r['archives_missing']} missing"
        exact += ")"
        held = f"{r['held']}/{r['streams']}"
        if r["failed"]:
            held += f" ({r['failed']} failed)"
        rows.append(
            f"| {r['streams']} | {held} | {f(r['server_cpu_pct'], '.1f')} | "
            f"{f(r['server_cpu_pct_per_stream'], '.3f')} | {f(r['ack_p50_ms'], '.2f')} | "
            f"{f(r['ack_p99_ms'], '.2f')} | {f(r['server_rss_mb'], '.0f')} | {exact} |"
        )
    return "\n".join(rows)


def load_records(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        data = data.get("runs", [data])
    return list(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=10, help="concurrent streams (N)")
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per stream (S)")
    ap.add_argument("--frame-ms", type=float, default=20.0, help="audio per binary message")
    ap.add_argument("--rate", type=int, default=48000)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--url", help="ingest URL of a running server (default: start one)")
    ap.add_argument("--server-pid", type=int, help="with --url: server PID for CPU/RSS")
    ap.add_argument("--server-src", help="own server: a directory holding an 'earshot' "
                    "package to run instead of the installed one (e.g. a snapshot of src/, "
                    "so a series of runs measures one version while src/ is edited)")
    ap.add_argument("--data-dir", help="with --url: the server's data dir (WAV check)")
    ap.add_argument("--token", help="auth token for --url servers that need one")
    ap.add_argument("--procs", type=int, default=0,
                    help="load-generator processes (default: by N and client)")
    ap.add_argument("--client", choices=("raw", "websockets"), default="raw")
    ap.add_argument("--server-kind", default="earshot",
                    choices=("earshot", "bare-websockets", "bare-starlette"),
                    help="own server: earshot, or a bare discard server from "
                    "benchmarks/bare_servers.py (no acks: held by the client-side ratio)")
    ap.add_argument("--no-batch", dest="batch", action="store_false",
                    help="do not ask for events batched with their acks ('batch' in start; "
                    "earshot's Python client and page ask for it)")
    ap.add_argument("--processors", help="processors to ask for in 'start': 'none' (pure "
                    "ingest) or names, comma-separated (default: the server's defaults)")
    ap.add_argument("--compression", choices=("none", "deflate"), default="none",
                    help="websockets client only: offer permessage-deflate like browsers do "
                    "(uvicorn accepts it by default)")
    ap.add_argument("--stagger", type=float, default=1.0, help="spread stream starts (s)")
    ap.add_argument("--query", help="more URL query parameters, e.g. processors=level (with "
                    "--compat: what a classic snippet names in its URL)")
    ap.add_argument("--compat", action="store_true",
                    help="compatibility mode, as the classic browser snippets connect: "
                    "no start, ?rate=&format=f32 in the URL, raw client only (earshot "
                    "then sends no acks: held by the client-side ratio)")
    ap.add_argument("--held-ratio", type=float, default=0.9)
    ap.add_argument("--clock", choices=("scheduled", "ready"), default="scheduled",
                    help="each stream's t0: its scheduled start (connect/start latency "
                    "must be caught up) or the moment 'ready' arrived")
    ap.add_argument("--connect-timeout", type=float, default=15.0)
    ap.add_argument("--stop-timeout", type=float, default=60.0)
    ap.add_argument("--log-level", default="warning", help="own server's --log-level")
    ap.add_argument("--no-uvloop", action="store_true", help="client: plain asyncio loop")
    ap.add_argument("--keep", action="store_true", help="keep the own server's temp dir")
    ap.add_argument("--per-stream", action="store_true", help="per-stream rows in the JSON")
    ap.add_argument("--json", help="write the run's record (JSON object) here")
    ap.add_argument("--json-append", help="append the record to this JSON list file")
    ap.add_argument("--table", metavar="JSON", help="print a markdown table of a results "
                    "file and exit")
    args = ap.parse_args(argv)

    if args.table:
        print(table(load_records(Path(args.table))))
        return 0
    if psutil is None:
        print("warning: psutil missing (pip install psutil): no CPU/RSS numbers",
              file=sys.stderr)
    if args.compression != "none" and args.client != "websockets":
        ap.error("--compression needs --client websockets")
    if args.url is None and args.server_pid:
        ap.error("--server-pid needs --url")

    rec = run(args)
    print(summary_line(rec), flush=True)
    if rec.get("failure_reasons"):
        print(f"  failures: {rec['failure_reasons']}", flush=True)
    if rec.get("archive_mismatch_examples"):
        print(f"  archive mismatches: {rec['archive_mismatch_examples']}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rec, indent=2) + "\n")
    if args.json_append:
        p = Path(args.json_append)
        p.parent.mkdir(parents=True, exist_ok=True)
        runs = load_records(p) if p.exists() else []
        runs.append(rec)
        p.write_text(json.dumps(runs, indent=2) + "\n")
    return 0 if rec["held"] == rec["streams"] and rec["archives_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
