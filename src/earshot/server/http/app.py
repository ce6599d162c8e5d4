"""The ASGI application: routes, lifespan (recovery on start, clean detach on stop)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.websockets import WebSocket

from earshot import __version__
from earshot.cluster.bus import MemoryBus
from earshot.cluster.bus.base import Bus
from earshot.config import Settings
from earshot.processors.builtin.asr import Asr
from earshot.processors.registry import Registry
from earshot.server.auth import AuthError, Pending, Scope, auth_on, authenticate_request
from earshot.server.http.docs import add_docs
from earshot.server.http.guard import Guard
from earshot.server.http.rest import api, ops
from earshot.server.http.static import CorsStaticFiles
from earshot.server.http.subscribe import subscribe
from earshot.server.ingest.session import IngestSession, refuse_unauthorized
from earshot.server.metrics import Metrics
from earshot.server.rooms.routes import add_rooms, close_rooms, open_rooms
from earshot.server.rooms.service import limits_report, room_limits
from earshot.server.streams.admission import probe_loop_lag
from earshot.server.streams.hub import Hub
from earshot.server.streams.lifecycle import DRAIN_TIMEOUT, drain_on_signals
from earshot.storage.metadata import open_store
from earshot.wire.codes import Code

if TYPE_CHECKING:
    from earshot.asr.loading import LoadedAsr

log = logging.getLogger("earshot")


ASR_HINT = ("speech-to-text is not configured: install 'earshot[asr]' and start the server "
            "with --asr-model NAME_OR_PATH")


def load_asr(settings: Settings, metrics: Metrics | None = None) -> LoadedAsr:
    """The shared speech-to-text engine and its scheduler (:mod:`earshot.asr.loading`)."""
    from earshot.asr.loading import load_asr as load

    return load(settings, metrics.observe_asr if metrics is not None else None)


def capabilities(settings: Settings, registry: Registry,
                 asr: LoadedAsr | None = None) -> dict[str, Any]:
    """What this server can do, reported by /healthz (and the CLI at start-up)."""
    report = asr.report() if asr is not None else {"available": False, "reason": ASR_HINT}
    if "asr" not in registry.offered:
        report = {"available": False,
                  "reason": registry.unavailable.get("asr", report.get("reason", ASR_HINT))}
    return {
        "archive_format": settings.archive.format,
        "auth": auth_on(settings.security),
        "processors": sorted(registry.offered),
        "default_processors": [s.ref for s in registry.defaults],
        "asr": report,
        "rooms": limits_report(room_limits(settings.rooms)),  # calls' limits (docs/calls.md)
    }


def make_bus(settings: Settings) -> Bus:
    """The in-process bus, or Redis Streams with ``--bus redis://…``."""
    if settings.bus.url is None:
        return MemoryBus()
    from earshot.cluster.bus.redis import RedisStreamsBus, redis_module

    redis_module()  # a missing extra fails at start, with how to install it
    return RedisStreamsBus(settings.bus.url, retention=settings.bus.retention)


def create_app(settings: Settings) -> FastAPI:
    """The application. Loads the speech-to-text model (if configured) and checks every
    ``--processor`` now, so a misconfiguration fails at start with a clear message."""
    settings.server.data_dir.mkdir(parents=True, exist_ok=True)
    db = settings.server.db or settings.server.data_dir / "earshot.db"
    open_store(db).close()  # a bad --db fails here, before listening, with a clear message
    metrics = Metrics()
    loaded = load_asr(settings, metrics)
    scheduler = loaded.scheduler
    if scheduler is not None:
        registry = Registry(settings.processing.processors,
                            extra={"asr": type("Asr", (Asr,), {"scheduler": scheduler})})
    else:
        registry = Registry(settings.processing.processors,
                            unavailable={"asr": loaded.reason or ASR_HINT})

    s3 = None
    if settings.archive.store:  # a bad URL or a missing boto3 fails here; the store's own
        from earshot.server.streams.objects import store_from_settings  # check comes next

        s3 = store_from_settings(settings)

    bridge = None
    if settings.mqtt.url:
        from earshot.integrations.mqtt import MqttBridge, paho_module

        paho_module()  # a missing paho-mqtt fails at start, with how to install it
        bridge = MqttBridge(settings.mqtt.url, role="gateway", skip_worker_events=True)
        metrics.registry.register(bridge.collector())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(db, fsync=settings.archive.fsync)  # in the serving process
        bus = app.state.bus
        hub = Hub(settings, store, app.state.metrics, bus, registry=registry)
        await bus.start(hub.on_bus_events, hub.on_bus_release, hub.on_bus_job)
        if bridge is not None:  # --mqtt: the events this gateway publishes
            bridge.start()
            bus.taps.append(bridge.offer)
        repaired = await hub.recover()
        if repaired:
            log.warning("repaired %d archive(s) left open by a crash", len(repaired))
        objects = None
        if s3 is not None:  # --archive-store: checked now (a clear error, /healthz degraded)
            from earshot.server.streams.objects import ArchiveStore

            objects = hub.objects = ArchiveStore(settings, store, s3, writing=hub.archive_of)
            hub.router.parts_of = objects.parts
            await objects.start()
            collector = objects.collector()
            app.state.metrics.registry.register(collector)
        app.state.hub = hub
        await open_rooms(app)  # with a Redis bus: rooms across gateways (server/rooms/relay.py)
        from earshot.server.doors import start_listeners, stop_listeners

        listeners = await start_listeners(app)  # --wyoming, --icecast (docs/doors.md)
        hub.reserve_held()  # after a planned restart, resumes are admitted first
        restore_signals = drain_on_signals(hub.drain, DRAIN_TIMEOUT)
        ticker = asyncio.create_task(hub.run_ticker(), name="earshot-ticker")
        probe = asyncio.create_task(probe_loop_lag(hub.observe_loop_lag,
                                                   cpu=hub.admission.observe_cpu,
                                                   idle=lambda: hub.idle), name="earshot-lag")
        try:
            yield
        finally:
            await stop_listeners(listeners)
            restore_signals()
            await close_rooms(app)
            ticker.cancel()
            probe.cancel()
            await hub.shutdown()
            if objects is not None:
                await objects.close()
                app.state.metrics.registry.unregister(collector)
            if bridge is not None:
                await bridge.close()
            await bus.close()
            if scheduler is not None:
                scheduler.close()
            store.close()

    app = FastAPI(
        title="earshot",
        version=__version__,
        summary="Self-hosted real-time audio server",
        lifespan=lifespan,
        docs_url=None,  # served by add_docs, with local assets instead of a CDN's
        redoc_url=None,
    )
    add_docs(app)
    app.state.settings = settings
    app.state.metrics = metrics
    bus = app.state.bus = make_bus(settings)
    from earshot.cluster.bus.redis import RedisStreamsBus  # (imports redis-py only when used)

    if isinstance(bus, RedisStreamsBus):
        from earshot.server.metrics import BusCollector

        def entry_seconds() -> float:  # one log entry is one ack batch, which stretches
            hub = getattr(app.state, "hub", None)  # under load (server/cadence.py)
            return hub.load.cadence.current if hub is not None else settings.ingest.ack_interval

        metrics.registry.register(BusCollector(bus, entry_seconds))
    app.state.capabilities = capabilities(settings, registry, loaded)
    app.include_router(api)
    app.include_router(ops)
    from earshot.server.doors import add_doors

    add_doors(app)  # OpenAI, Deepgram on the main port (docs/doors.md)
    add_rooms(app, settings)  # calls: /ws/call, /api/rooms (server/rooms/)
    app.add_middleware(Guard.from_settings, settings=settings, metrics=metrics,
                       state=app.state)  # see guard.py

    web = Path(__file__).resolve().parents[2] / "web"
    app.mount("/web", CorsStaticFiles(directory=web, origins=settings.security.web_origins),
              name="web")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(web / "index.html", media_type="text/html")

    security = settings.security
    pending = Pending(security.max_preauth, security.max_preauth_per_address)

    @app.websocket("/ws")
    async def ingest(ws: WebSocket) -> None:
        await IngestSession(ws, app.state.hub, pending).run()

    @app.websocket("/ws/subscribe")
    async def subscribe_route(ws: WebSocket) -> None:
        try:
            principal = authenticate_request(security, ws.headers, ws.query_params)
            if not principal.scopes & {Scope.LISTEN, Scope.WORKER, Scope.ADMIN}:
                raise AuthError(Code.FORBIDDEN, "subscribing needs the listen or worker scope")
        except AuthError as exc:
            await refuse_unauthorized(ws, exc.code, exc.message)
            return
        await subscribe(ws, app.state.hub, principal)

    return app


SETTINGS_ENV = "EARSHOT_SETTINGS_JSON"


def app_from_env() -> FastAPI:
    """The app factory of each gateway process under ``earshot serve --processes N``."""
    import os

    from earshot.config import settings_from_json

    return create_app(settings_from_json(os.environ[SETTINGS_ENV]))
