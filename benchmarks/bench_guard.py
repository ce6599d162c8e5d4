"""What the hardening layer costs: python benchmarks/bench_guard.py [--messages N].

* per outgoing WebSocket message (acks, events), the Guard middleware's send wrapper,
  as a ratio against the same app unwrapped, run side by side (interleaved, best of 5);
* per handshake, one GuardCore.admit decision (Host, Origin, both token buckets);
* per log line, RedactFilter on a uvicorn access-log record.

In process, no sockets: these are the costs Guard and the filter add on top of whatever
the transport costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from earshot.config import Settings
from earshot.redact import RedactFilter
from earshot.server.http.guard import Guard, GuardCore, OriginPolicy


def make_app(n: int) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        msg = {"type": "websocket.send", "text": '{"type":"ack","offset":1600}'}
        for _ in range(n):
            await send(msg)
        await send({"type": "websocket.close", "code": 1000})

    return app


async def run(app: Any, scope: dict[str, Any]) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        return None

    t0 = time.perf_counter()
    await app(scope, receive, send)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "guard.json"),
                    help="write the numbers here (JSON)")
    args = ap.parse_args()
    out: dict[str, Any] = {"tool": "benchmarks/bench_guard.py",
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    n = args.messages
    scope = {"type": "websocket", "path": "/ws", "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000")]}
    bare = make_app(n)
    guarded = Guard.from_settings(make_app(n), Settings())
    times: dict[str, list[float]] = {"bare": [], "guard": []}
    for _ in range(5):
        for name, app in (("bare", bare), ("guard", guarded)):
            times[name].append(asyncio.run(run(app, dict(scope))))
    b, g = min(times["bare"]), min(times["guard"])
    print(f"per message: bare {b / n * 1e9:.0f} ns, with Guard {g / n * 1e9:.0f} ns "
          f"(+{(g - b) / n * 1e9:.0f} ns, ratio {g / b:.2f})")
    out["per_message_ns"] = {"bare": round(b / n * 1e9), "guard": round(g / n * 1e9)}

    core = GuardCore(OriginPolicy.build(["https://app.example.com"], bind_host="127.0.0.1"),
                     conn_rate=1e9, conn_burst=1e9, auth_fail_rate=0.2, auth_fail_burst=20)
    k = 20_000

    def admit() -> None:
        for i in range(k):
            core.admit(websocket=True, path="/ws", client=f"10.0.{i % 250}.{i % 200}",
                       host="127.0.0.1:8000", origin="http://localhost:5173", now=i * 1e-3)

    out["per_handshake_us"] = round(best(admit) / k * 1e6, 2)
    print(f"per handshake decision: {out['per_handshake_us']:.2f} µs")

    f = RedactFilter(["Tk-9f2c81e7d4b0a6"])
    for label, path in (("with ?token=", "/api/streams?limit=5&token=Tk-9f2c81e7d4b0a6"),
                        ("without", "/api/streams?limit=5")):
        recs = [logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                                  '%s - "%s %s HTTP/%s" %d',
                                  (("127.0.0.1", 5000), "GET", path, "1.1", 200), None)
                for _ in range(k)]
        it = iter(recs * 5)

        def one_pass(it: Any = it) -> None:
            for _ in range(k):
                f.filter(next(it))

        per_line = round(best(one_pass) / k * 1e6, 2)
        out[f"per_log_line_us_{'token' if 'token' in label else 'plain'}"] = per_line
        print(f"per access-log line {label}: {per_line:.2f} µs")
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


def best(fn: Any, repeats: int = 5) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return min(runs)


if __name__ == "__main__":
    main()
