"""The ASGI application: routes, lifespan (recovery on start, clean detach on stop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.websockets import WebSocket

from earshot import __version__
from earshot.bus import MemoryBus
from earshot.config import Settings
from earshot.processors.registry import Registry
from earshot.server.auth import presented_token, token_ok
from earshot.server.hub import Hub
from earshot.server.ingest import IngestSession, refuse_unauthorized
from earshot.server.metrics import Metrics
from earshot.server.rest import api, ops
from earshot.server.subscribe import subscribe
from earshot.storage.metadata import SqliteStore

log = logging.getLogger("earshot")


def capabilities(settings: Settings) -> dict[str, Any]:
    """What this server can do, reported by /healthz (and the CLI at start-up)."""
    return {
        "archive_format": settings.archive_format,
        "auth": bool(settings.token),
        "processors": sorted(Registry(settings.processors).offered),
        "asr": {
            "available": False,
            "reason": "speech-to-text is not configured: install 'earshot[asr]' and start "
            "the server with --asr-model NAME_OR_PATH",
        },
    }


def create_app(settings: Settings) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(settings.processors)  # bad --processor specs fail here, at start

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = SqliteStore(settings.data_dir / "earshot.db")
        hub = Hub(settings, store, app.state.metrics, app.state.bus, registry=registry)
        repaired = hub.recover()
        if repaired:
            log.warning("repaired %d archive(s) left open by a crash", len(repaired))
        app.state.hub = hub
        ticker = asyncio.create_task(hub.run_ticker(), name="earshot-ticker")
        try:
            yield
        finally:
            ticker.cancel()
            await hub.shutdown()
            store.close()

    app = FastAPI(
        title="earshot",
        version=__version__,
        summary="Self-hosted real-time audio server",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.bus = MemoryBus()
    app.state.capabilities = capabilities(settings)
    app.include_router(api)
    app.include_router(ops)

    @app.websocket("/ws")
    async def ingest(ws: WebSocket) -> None:
        await IngestSession(ws, app.state.hub).run()

    @app.websocket("/ws/subscribe")
    async def subscribe_route(ws: WebSocket) -> None:
        if not token_ok(settings.token, presented_token(ws.headers, ws.query_params)):
            await refuse_unauthorized(ws)
            return
        await subscribe(ws, app.state.hub)

    return app
