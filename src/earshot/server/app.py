"""The ASGI application: routes, lifespan (recovery on start, clean detach on stop)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from earshot import __version__
from earshot.bus import MemoryBus
from earshot.config import Settings
from earshot.errors import ConfigError
from earshot.processors.asr import Asr
from earshot.processors.registry import Registry
from earshot.server.auth import presented_token, token_ok
from earshot.server.guard import Guard
from earshot.server.hub import Hub
from earshot.server.ingest import IngestSession, refuse_unauthorized
from earshot.server.metrics import Metrics
from earshot.server.rest import api, ops
from earshot.server.subscribe import subscribe
from earshot.storage.metadata import SqliteStore

if TYPE_CHECKING:
    from earshot.asr.scheduler import AsrScheduler

log = logging.getLogger("earshot")


ASR_HINT = ("speech-to-text is not configured: install 'earshot[asr]' and start the server "
            "with --asr-model NAME_OR_PATH")


def load_asr(settings: Settings, metrics: Metrics | None = None) -> AsrScheduler | None:
    """The shared speech-to-text model and its scheduler, if a model is configured.

    ``--asr-engine`` is ``faster-whisper`` or the import path of another engine class
    (constructed with an :class:`~earshot.asr.engine.EngineConfig`).
    """
    if not settings.asr_model:
        return None
    from earshot.asr.engine import EngineConfig, load_engine
    from earshot.asr.scheduler import AsrScheduler

    cfg = EngineConfig(model=settings.asr_model, device=settings.asr_device,
                       compute_type=settings.asr_compute_type, language=settings.asr_language,
                       beam_size=settings.asr_beam_size, threads=settings.asr_threads,
                       workers=settings.asr_workers)
    if settings.asr_engine == "faster-whisper":
        engine = load_engine(cfg)
    else:
        module, _, attr = settings.asr_engine.partition(":")
        try:
            engine = getattr(importlib.import_module(module), attr)(cfg)
        except (ImportError, AttributeError, TypeError) as exc:
            raise ConfigError(f"cannot load speech-to-text engine {settings.asr_engine!r}: "
                              f"{exc}") from None
    return AsrScheduler(engine, workers=settings.asr_workers,
                        observe=metrics.observe_asr if metrics is not None else None)


def capabilities(settings: Settings, registry: Registry) -> dict[str, Any]:
    """What this server can do, reported by /healthz (and the CLI at start-up)."""
    asr: dict[str, Any] = {"available": "asr" in registry.offered}
    if asr["available"]:
        asr.update(model=settings.asr_model, engine=settings.asr_engine)
    else:
        asr["reason"] = registry.unavailable.get("asr", ASR_HINT)
    return {
        "archive_format": settings.archive_format,
        "auth": bool(settings.token),
        "processors": sorted(registry.offered),
        "default_processors": [s.ref for s in registry.defaults],
        "asr": asr,
    }


def create_app(settings: Settings) -> FastAPI:
    """The application. Loads the speech-to-text model (if configured) and checks every
    ``--processor`` now, so a misconfiguration fails at start with a clear message."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    scheduler = load_asr(settings, metrics)
    if scheduler is not None:
        registry = Registry(settings.processors,
                            extra={"asr": type("Asr", (Asr,), {"scheduler": scheduler})})
    else:
        registry = Registry(settings.processors, unavailable={"asr": ASR_HINT})

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
            if scheduler is not None:
                scheduler.close()
            store.close()

    app = FastAPI(
        title="earshot",
        version=__version__,
        summary="Self-hosted real-time audio server",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.bus = MemoryBus()
    app.state.capabilities = capabilities(settings, registry)
    app.include_router(api)
    app.include_router(ops)
    app.add_middleware(Guard.from_settings, settings=settings, metrics=metrics)  # see guard.py

    web = Path(__file__).resolve().parent.parent / "web"
    app.mount("/web", StaticFiles(directory=web), name="web")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(web / "index.html", media_type="text/html")

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
