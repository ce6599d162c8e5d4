#!/usr/bin/env python3
"""Bare WebSocket servers that discard audio: the cost floor earshot's ingest is measured
against (benchmarks/bench_hotpath.py, benchmarks/ingest_load.py ``--server-kind``).

They speak just enough of earshot's protocol for the load generator: ``start`` gets a
``ready``, binary messages are counted and dropped, ``stop`` gets ``stopped`` with the frame
count, then the connection closes. No archive, no acks, no processors.

* ``websockets``: ``websockets.asyncio.server.serve`` (compression off), one coroutine per
  connection — the practical limit of a Python asyncio WebSocket server;
* ``starlette``: uvicorn (``websockets-sansio``, as earshot runs it) + a Starlette
  WebSocket endpoint — what the ASGI layers cost by themselves.

    python benchmarks/bare_servers.py websockets --port 8765
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from http import HTTPStatus
from typing import Any


def ready(msg: dict[str, Any]) -> str:
    return json.dumps({"type": "ready", "stream": "bare", "resume_token": "-", "offset": 0,
                       "format": msg.get("format", "f32"), "rate": msg.get("rate", 48000),
                       "channels": msg.get("channels", 1)})


def frame_bytes(msg: dict[str, Any]) -> int:
    return {"f32": 4, "s16": 2}.get(str(msg.get("format", "f32")), 4) * int(
        msg.get("channels", 1))


async def serve_websockets(host: str, port: int) -> None:
    from websockets.asyncio.server import serve

    async def handler(ws: Any) -> None:
        received = 0
        fb = 4
        async for m in ws:
            if isinstance(m, bytes):
                received += len(m)
                continue
            msg = json.loads(m)
            if msg.get("type") == "start":
                fb = frame_bytes(msg)
                await ws.send(ready(msg))
            elif msg.get("type") == "stop":
                await ws.send(json.dumps({"type": "stopped", "offset": received // fb}))
                await ws.close()
                return

    def health(connection: Any, request: Any) -> Any:
        if request.path == "/healthz":  # the load generator waits for it
            return connection.respond(HTTPStatus.OK, "ok\n")
        return None

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with serve(handler, host, port, compression=None, max_size=16 << 20,
                     process_request=health):
        await stop


def serve_starlette(host: str, port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    async def ingest(ws: WebSocket) -> None:
        await ws.accept()
        received, fb = 0, 4
        while True:
            m = await ws.receive()
            if m["type"] == "websocket.disconnect":
                return
            if m.get("bytes") is not None:
                received += len(m["bytes"])
                continue
            msg = json.loads(m.get("text") or "{}")
            if msg.get("type") == "start":
                fb = frame_bytes(msg)
                await ws.send_text(ready(msg))
            elif msg.get("type") == "stop":
                await ws.send_text(json.dumps({"type": "stopped", "offset": received // fb}))
                await ws.close()
                return

    async def healthz(_: Any) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[WebSocketRoute("/ws", ingest), Route("/healthz", healthz)])
    uvicorn.run(app, host=host, port=port, ws="websockets-sansio", ws_per_message_deflate=False,
                log_level="warning", lifespan="off")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("websockets", "starlette"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    if args.kind == "websockets":
        try:
            import uvloop  # the same loop earshot's uvicorn picks when it is installed

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(serve_websockets(args.host, args.port))
    else:
        serve_starlette(args.host, args.port)


if __name__ == "__main__":
    main()
