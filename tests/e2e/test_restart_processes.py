"""Zero-loss planned restart under ``earshot serve --processes 2`` (two gateways on one
port, a real redis-server as their bus): SIGTERM to the supervisor during real-time
streams drains both gateways; after a restart on the same data dir every client resumes,
every archive equals its source, nothing is duplicated."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest
from test_restart import Client, check_archives, db_rows, stop_gracefully, wait_until

from helpers import ServerProcess
from redis_helpers import RedisServer

pytestmark = pytest.mark.slow


async def test_sigterm_under_two_processes_then_restart(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis").start()
    server = ServerProcess(tmp_path / "data", "--bus", redis.url, "--processes", "2")
    try:
        server.start(timeout=60)
        gateways = set()
        for _ in range(40):  # both gateway processes answer on the one port
            with httpx.Client() as c:
                gateways.add(c.get(server.http + "/healthz").json()["bus"]["gateway"])
            if len(gateways) == 2:
                break
        assert len(gateways) == 2, gateways
        clients = [Client(server, i, 7.0) for i in range(10)]
        await asyncio.gather(*(c.start() for c in clients))
        senders = [asyncio.create_task(c.send_realtime()) for c in clients]
        await asyncio.sleep(2.0)
        exit_s = await stop_gracefully(server, signal.SIGTERM)
        # every publisher, on either gateway, was told, with what it sent written and
        # acknowledged; nothing was finalized
        rows = db_rows(server)
        for c in clients:
            assert len(c.acked_at_shutdown) == 1, (c.i, c.acked_at_shutdown)
            state, frames = rows[c.pub.stream_id]
            assert state == "interrupted", (c.i, state)
            assert frames == c.acked_at_shutdown[0] > 0, (c.i, frames, c.acked_at_shutdown)
        await asyncio.to_thread(server.start, 60)
        await wait_until(lambda: all(len(c.readies) == 2 for c in clients), 60,
                         "every client to resume")
        for c in clients:  # the same stream, resumed at what the server held
            assert {r["stream"] for r in c.readies} == {c.pub.stream_id}
            assert c.readies[-1]["offset"] >= c.acked_at_shutdown[0]
        await asyncio.gather(*senders)
        assert await asyncio.gather(*(c.pub.stop() for c in clients)) == [
            len(c.x) for c in clients]
        check_archives(server, clients)  # one stream per client, each equal to its source
        assert exit_s < 30, exit_s
        assert "Traceback" not in server.log.read_text()
    finally:
        server.stop()
        redis.stop()
