#!/usr/bin/env python3
"""Summarize a ``py-spy record --format raw`` profile (collapsed stacks).

Prints the top self-time frames (the leaf function of each sample, line numbers merged),
a breakdown of self time by component, and the inclusive time of the server's hot-path
functions. Percentages are of all recorded samples (py-spy drops idle samples unless
``--idle`` was given, so they are shares of the server's busy time).

    python benchmarks/pyspy_summary.py benchmarks/results/profile-100.raw.txt [--top 15]

Record with ``py-spy record --nonblocking``: in the default (blocking) mode the samples are
taken at syscall boundaries and frames that make syscalls are grossly over-counted.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

LINE = re.compile(r":\d+\)$")

# (component, substring of "function (file)" with the line number removed); first match wins.
# py-spy shortens some paths (an editable install shows "hub.py", "ingest.py").
COMPONENTS: list[tuple[str, str]] = [
    ("event loop: uvloop C code (epoll, recv, callback dispatch)",
     "Runner.run (asyncio/runners.py)"),
    ("uvicorn websockets-sansio: send() → transport.write (ack/ready)",
     "WebSocketsSansIOProtocol.send ("),
    ("uvicorn websockets-sansio: receive path", "uvicorn/protocols/websockets/"),
    ("uvicorn other", "uvicorn/"),
    ("websockets sansio (frame parse/serialize)", "websockets/"),
    ("starlette WebSocket", "starlette/"),
    ("fastapi", "fastapi/"),
    ("earshot ingest (IngestSession)", "ingest.py)"),
    ("earshot protocol (IngestConnection)", "protocol.py)"),
    ("earshot hub (add_audio/flush/tick)", "hub.py)"),
    ("earshot archive/wav (os.write etc.)", "storage/"),
    ("earshot archive/wav (os.write etc.)", "archive.py)"),
    ("earshot archive/wav (os.write etc.)", "wav.py)"),
    ("earshot audio (f32→s16 numpy)", "audio.py)"),
    ("earshot processors (pipeline, level meter, dsp)", "pipeline.py)"),
    ("earshot processors (pipeline, level meter, dsp)", "processors/"),
    ("earshot processors (pipeline, level meter, dsp)", "dsp/"),
    ("earshot bus (publish)", "bus/"),
    ("prometheus_client (metrics)", "prometheus_client/"),
    ("json.dumps", "json/"),
    ("asyncio Queue/Lock/Event", "asyncio/queues.py"),
    ("asyncio Queue/Lock/Event", "asyncio/locks.py"),
    ("asyncio Queue/Lock/Event", "asyncio/mixins.py"),
    ("asyncio other", "asyncio/"),
    ("logging", "logging/"),
]
# Generic helpers (and numpy) are charged to their caller's component.
TRANSPARENT = ("numpy/", "(enum.py)", "(<string>)", "(contextlib.py)", "(dataclasses.py)",
               "(abc.py)", "(typing.py)", "(functools.py)")
# Stacks of idle pool threads (py-spy sometimes reports them as busy): excluded.
IDLE = ("WorkerThread.run", "Thread._bootstrap_inner")


HOT = [
    "WebSocketsSansIOProtocol.data_received",
    "ServerProtocol.parse",
    "Protocol.parse",
    "Frame.parse",
    "Protocol.receive_data",
    "Protocol.events_received",
    "WebSocketsSansIOProtocol.handle_events",
    "WebSocketsSansIOProtocol.send_receive_event_to_app",
    "WebSocketsSansIOProtocol.receive",
    "WebSocketsSansIOProtocol.send",
    "WebSocket.receive",
    "WebSocket.send_text",
    "IngestSession.run",
    "IngestConnection.receive_bytes",
    "IngestConnection._audio",
    "Hub.add_audio",
    "Hub.flush",
    "Hub._write_pending",
    "Archive.append",
    "f32_to_s16",
    "sanitize_f32",
    "WavWriter.write",
    "IngestSession.send_json",
    "dumps",
    "Hub.tick",
    "StreamPipeline.feed",
    "ProcessorRunner._run",
    "LevelMeter.feed",
    "IngestSession.post",
    "IngestSession._write_loop",
    "decode",
    "Counter.inc",
    "Histogram.observe",
    "Queue.get",
    "Queue.put_nowait",
    "Lock.acquire",
]


# Where the time goes, per step of the hot path: each sample goes to the innermost of these
# functions on its stack (so "flush: os.write" is not also counted under "flush: other").
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("socket read + frame parse: uvicorn data_received → websockets parser → asyncio.Queue",
     ("WebSocketsSansIOProtocol.data_received",)),
    ("app receive: Starlette WebSocket.receive → uvicorn receive() → Queue.get",
     ("WebSocket.receive", "WebSocketsSansIOProtocol.receive")),
    ("IngestConnection.receive_bytes (protocol core)", ("IngestConnection.receive_bytes",)),
    ("Hub.add_audio (append to pending)", ("Hub.add_audio",)),
    ("flush: f32→s16 conversion (numpy)", ("f32_to_s16", "sanitize_f32")),
    ("flush: os.write to the archive", ("WavWriter.write",)),
    ("flush: processors (StreamPipeline.feed, level meter)", ("StreamPipeline.feed",)),
    ("flush: decode for processors/bus", ("decode",)),
    ("flush: ack queued (IngestSession.post: json.dumps)", ("IngestSession.post",)),
    ("flush: other (metrics, bookkeeping)", ("Hub._write_pending", "Hub.flush", "Hub._ack")),
    ("send: writer task → Starlette send_text → uvicorn send → websockets frame → "
     "transport.write", ("IngestSession._write_loop",)),
    ("ticker (Hub.tick)", ("Hub.tick", "Hub.run_ticker")),
    ("IngestSession.run loop itself", ("IngestSession.run",)),
]


def bucket(frames: list[str]) -> str:
    names = [func_name(f) for f in frames]
    for name in reversed(names):
        for label, funcs in BUCKETS:
            if name in funcs:
                return label
    if len(names) <= 8 and names[-1] == "Runner.run":
        return "event loop internals (uvloop C: epoll, recv/send syscalls, task switching)"
    # --nonblocking samples can have torn (truncated) stacks: place them by their leaf
    leaf = names[-1]
    for label, leaves in ORPHANS:
        if leaf in leaves or any(leaf.startswith(p) for p in leaves if p.endswith(".")):
            return label
    return "other: " + leaf


ORPHANS: list[tuple[str, tuple[str, ...]]] = [
    (BUCKETS[0][0], ("Frame.parse", "Protocol.parse", "ServerProtocol.parse", "StreamReader.",
                     "Protocol.receive_data", "Protocol.recv_frame", "Queue.put_nowait",
                     "Queue._wakeup_next", "Protocol.events_received",
                     "WebSocketsSansIOProtocol.handle_events",
                     "WebSocketsSansIOProtocol.handle_bytes",
                     "WebSocketsSansIOProtocol.send_receive_event_to_app")),
    (BUCKETS[1][0], ("Queue.get", "Queue.get_nowait", "_LoopBoundMixin._get_loop",
                     "Queue.empty")),
    (BUCKETS[10][0], ("WebSocketsSansIOProtocol.send", "Frame.serialize", "Protocol.send_text",
                      "Protocol.send_frame", "Protocol.data_to_send", "Event.wait",
                      "WebSocket.send", "WebSocket.send_text")),
    (BUCKETS[8][0], ("JSONEncoder.iterencode", "JSONEncoder.encode", "dumps")),
    ("ASGI layers re-entered on every await (FastAPI/Starlette middleware, router)",
     ("FastAPI.__call__", "Starlette.__call__", "Router.__call__", "Route.handle",
      "ServerErrorMiddleware.__call__", "ExceptionMiddleware.__call__",
      "AsyncExitStackMiddleware.__call__", "websocket_session.<locals>.app",
      "get_websocket_app.<locals>.app", "wrap_app_handling_exceptions.<locals>.wrapped_app",
      "WebSocketRoute.handle", "create_app.<locals>.ingest", "ProxyHeadersMiddleware.__call__",
      "WebSocketsSansIOProtocol.run_asgi", "APIWebSocketRoute.handle",
      "wrap_app_handling_exceptions.<locals>.wrapped_app.<locals>.sender")),
]


def frame_key(frame: str) -> str:
    return LINE.sub(")", frame.strip())


def func_name(frame: str) -> str:
    return frame.split(" (", 1)[0]


def component(frames: list[str]) -> str:
    """The component of a sample's leaf frame, skipping generic helper frames."""
    for frame in reversed(frames):
        if frame.endswith(TRANSPARENT) or "(numpy/" in frame:
            continue
        for name, needle in COMPONENTS:
            if needle in frame:
                return name
        return "other: " + frame
    return "other"


def summarize(path: Path, top: int) -> dict:
    self_t: collections.Counter[str] = collections.Counter()
    comp: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for raw in path.read_text().splitlines():
        raw = raw.rstrip()
        if not raw:
            continue
        stack, _, n = raw.rpartition(" ")
        try:
            count = int(n)
        except ValueError:
            continue
        frames = [frame_key(f) for f in stack.split(";") if f]
        if not frames:
            continue
        if any(func_name(f) in IDLE for f in frames):
            idle += count
            continue
        total += count
        leaf = frames[-1]
        self_t[leaf] += count
        comp[component(frames)] += count
        buckets[bucket(frames)] += count
        names = {func_name(f) for f in frames}
        for h in HOT:
            if h in names:
                incl[h] += count
    return {
        "samples": total,
        "idle_thread_samples_excluded": idle,
        "self": [(f, c, 100.0 * c / total) for f, c in self_t.most_common(top)],
        "components": [(k, c, 100.0 * c / total) for k, c in comp.most_common()],
        "buckets": [(k, c, 100.0 * c / total) for k, c in buckets.most_common()],
        "inclusive": [(h, incl[h], 100.0 * incl[h] / total) for h in HOT if incl[h]],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw", type=Path)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json", type=Path, help="also write the summary as JSON")
    args = ap.parse_args()
    s = summarize(args.raw, args.top)
    if not s["samples"]:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{s['samples']} busy samples of the main thread "
          f"({s['idle_thread_samples_excluded']} samples of idle pool threads excluded)\n")
    print(f"Top {args.top} self-time frames\n\n| # | self % | samples | frame |\n"
          "|---:|---:|---:|:---|")
    for i, (f, c, p) in enumerate(s["self"], 1):
        print(f"| {i} | {p:.1f} | {c} | `{f}` |")
    print("\nWhere the time goes (each sample charged to the innermost hot-path step on "
          "its stack)\n\n| step | % |\n|:---|---:|")
    for k, _c, p in s["buckets"]:
        if p >= 0.5:
            print(f"| {k} | {p:.1f} |")
    rest = sum(p for _, _, p in s["buckets"] if p < 0.5)
    if rest:
        print(f"| (smaller items) | {rest:.1f} |")
    print("\nSelf time by component\n\n| component | self % |\n|:---|---:|")
    for k, _c, p in s["components"]:
        print(f"| {k} | {p:.1f} |")
    print("\nInclusive time of hot-path functions\n\n| function | incl % |\n|:---|---:|")
    for h, _c, p in s["inclusive"]:
        print(f"| `{h}` | {p:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(s, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
