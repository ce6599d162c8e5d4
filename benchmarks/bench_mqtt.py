"""MQTT bridge: events per second sustained end to end, latency, and the ingest CPU it costs.

    nice -n 10 python benchmarks/bench_mqtt.py [--streams 10,40] [--seconds 15]

For each N in ``--streams``: N real-time 16 kHz streams with ``level`` every 10 ms (100
events per second each) go to a real ``earshot serve``, once without and once with
``--mqtt`` to a real mosquitto on a free port; a subscriber process (paho, QoS 0, as a
dashboard would) counts every level event and its arrival. Reported per run:

* **events/s**: level events the subscriber received per second of the run, and how many
  of those the server made (``earshot_mqtt_published`` + dropped, from ``/metrics``);
* **latency**: from the moment the last sample of a level frame was sent (the stream's
  clock) to the event's arrival at the subscriber (p50/p99; it includes the server's
  0.1 s ack batching, as the sender's own events do);
* **server CPU**: the ``earshot serve`` process's CPU seconds per second of the run, with
  and without the bridge: the difference is what the bridge costs ingest.

``--burst N`` also offers N events to one
:class:`earshot.integrations.mqtt.MqttBridge` in this process as
fast as the event loop goes, and reports how fast they reach the subscriber (the bridge's
own ceiling). Results are appended to ``benchmarks/results/mqtt.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import ServerProcess  # noqa: E402
from mqtt_helpers import Mosquitto  # noqa: E402

RATE = 16000
DONE = "bench-done"


# -- the subscriber (a process of its own, so it never shares a GIL with the load) ----------
def subscribe(port: int, out: Path) -> None:
    import threading

    import paho.mqtt.client as mqtt

    got: list[tuple[str, float, float, float]] = []
    done = threading.Event()

    def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
        c.subscribe([("bench/#", 0), (DONE, 0)])

    def on_message(c: Any, u: Any, msg: Any) -> None:
        now = time.monotonic()
        if msg.topic == DONE:
            done.set()
            return
        if msg.topic.endswith("/level"):
            e = json.loads(msg.payload)
            got.append((e["stream"], e["t"], e["duration"], now))

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_connect, c.on_message = on_connect, on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    print("ready", flush=True)
    done.wait(600)
    c.disconnect()
    c.loop_stop()
    out.write_text(json.dumps(got))


class SubscriberProcess:
    def __init__(self, port: int, out: Path) -> None:
        self.out = out
        self.port = port
        self.proc = subprocess.Popen([sys.executable, __file__, "subscribe", str(port),
                                      str(out)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # (subscribed)

    def finish(self) -> list[tuple[str, float, float, float]]:
        import paho.mqtt.publish as publish

        publish.single(DONE, b"", hostname="127.0.0.1", port=self.port)
        self.proc.wait(60)
        return [tuple(r) for r in json.loads(self.out.read_text())]  # type: ignore[misc]


# -- the load --------------------------------------------------------------------------------
async def load(url: str, streams: int, seconds: float) -> dict[str, float]:
    """N real-time streams; their ids → the monotonic time their first sample was sent."""
    from earshot.client import Publisher

    rng = np.random.default_rng(1)
    block = np.asarray(rng.uniform(-0.3, 0.3, RATE // 50) * 32767, np.int16)
    t0s: dict[str, float] = {}

    async def one(i: int) -> None:
        pub = Publisher(url, rate=RATE, format="s16", name=f"s{i}",
                        processors=[{"name": "level", "options": {"interval": 0.01}}])
        await pub.start()
        t0 = time.monotonic()
        assert pub.stream_id is not None
        t0s[pub.stream_id] = t0
        n = int(seconds * 50)
        for k in range(n):
            await pub.send(block)
            await asyncio.sleep(max(0.0, t0 + (k + 1) / 50 - time.monotonic()))
        await pub.stop(timeout=60)

    await asyncio.gather(*(one(i) for i in range(streams)))
    return t0s


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def run(tmp: Path, broker: Mosquitto | None, streams: int, seconds: float) -> dict[str, Any]:
    args = ["--processor", "level"] + (["--mqtt", f"{broker.url}/bench"] if broker else [])
    data = tmp / f"data-{streams}-{int(bool(broker))}"
    server = ServerProcess(data, *args).start()
    sub = SubscriberProcess(broker.port, tmp / "got.json") if broker else None
    try:
        proc = psutil.Process(server.proc.pid)  # type: ignore[union-attr]
        cpu0, w0 = sum(proc.cpu_times()[:2]), time.monotonic()
        t0s = asyncio.run(load(server.url, streams, seconds))
        cpu1, w1 = sum(proc.cpu_times()[:2]), time.monotonic()
        time.sleep(1.0)  # the last events
        metrics = httpx.get(server.http + "/metrics").text
    finally:
        got = sub.finish() if sub else []
        server.stop()
    out: dict[str, Any] = {"streams": streams, "seconds": seconds, "mqtt": bool(broker),
                           "server_cpu_per_s": round((cpu1 - cpu0) / (w1 - w0), 4)}
    if broker:
        published = metric(metrics, "earshot_mqtt_published_total")
        dropped = metric(metrics, "earshot_mqtt_dropped_total")
        lat = np.array([arr - (t0s[sid] + t + d) for sid, t, d, arr in got if sid in t0s])
        out.update(events_received=len(got), events_published=int(published),
                   events_dropped=int(dropped),
                   received_per_s=round(len(got) / (w1 - w0), 1),
                   latency_p50_ms=round(float(np.percentile(lat, 50)) * 1000, 1),
                   latency_p99_ms=round(float(np.percentile(lat, 99)) * 1000, 1))
    return out


async def burst(port: int, n: int) -> dict[str, Any]:
    from earshot.integrations.mqtt import MqttBridge

    b = MqttBridge(f"mqtt://127.0.0.1:{port}/bench", queue_size=n + 10)
    b.start()
    while not b.connected:
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    cpu0 = time.process_time()
    for i in range(n):
        b.offer("b1", {"type": "level", "stream": "b1", "t": i / 100, "duration": 0.01,
                       "rms": -20.0, "peak": -12.0, "clipped": 0})
        if i % 200 == 199:
            await asyncio.sleep(0)  # the event loop goes on between batches
    offered = time.monotonic() - t0
    while b.pending():
        await asyncio.sleep(0.005)
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    await b.close()
    return {"burst": n, "offer_us_per_event": round(offered / n * 1e6, 2),
            "handed_per_s": round(n / wall), "process_cpu_us_per_event": round(cpu / n * 1e6, 1),
            "dropped": b.stats.dropped_total}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--streams", default="10,40")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--burst", type=int, default=50_000)
    a = p.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as d:
        tmp = Path(d)
        broker = Mosquitto(tmp / "mosquitto").start()
        try:
            if a.burst:
                sub = SubscriberProcess(broker.port, tmp / "burst.json")
                t0 = time.monotonic()
                r = asyncio.run(burst(broker.port, a.burst))
                got = sub.finish()
                arrivals = sorted(x[3] for x in got)
                r.update(received=len(got), received_per_s=round(
                    len(got) / max(arrivals[-1] - t0, 1e-9)) if got else 0)
                results.append(r)
                print(json.dumps(r), flush=True)
            for n in (int(x) for x in a.streams.split(",")):
                for with_mqtt in (False, True):
                    r = run(tmp, broker if with_mqtt else None, n, a.seconds)
                    results.append(r)
                    print(json.dumps(r), flush=True)
        finally:
            broker.stop()
    stamp = {"date": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg(),
             "cpus": os.cpu_count(), "command": " ".join(sys.argv)}
    with open(ROOT / "benchmarks" / "results" / "mqtt.jsonl", "a") as f:
        for r in results:
            f.write(json.dumps({**stamp, **r}) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "subscribe":
        subscribe(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
