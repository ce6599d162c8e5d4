"""The protocol doors' I/O glue: OpenAI speech-to-text (REST), Deepgram live, OpenAI
Realtime, Wyoming, Icecast sources. Each is a thin module over its sans-I/O core
(:mod:`earshot.integrations`) and the one shared :mod:`~earshot.server.doors.runner`, which
opens ordinary earshot streams through the hub. docs/doors.md says what each supports."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI


def add_doors(app: FastAPI) -> None:
    """The doors that live on the main port (HTTP and WebSocket routes)."""
    from earshot.server.doors import deepgram, openai_realtime, openai_rest

    app.include_router(openai_rest.router)
    app.include_router(deepgram.router)
    app.include_router(openai_realtime.router)


async def start_listeners(app: FastAPI) -> list[asyncio.Server]:
    """The doors on ports of their own, when asked for (``--wyoming``, ``--icecast``)."""
    settings, hub = app.state.settings, app.state.hub
    servers: list[asyncio.Server] = []
    if settings.doors.wyoming:
        from earshot.server.doors import wyoming

        servers.append(await wyoming.start(settings, hub, app.state.capabilities))
    if settings.doors.icecast:
        from earshot.server.doors import icecast

        servers.append(await icecast.start(settings, hub, app.state.capabilities))
    return servers


async def stop_listeners(servers: list[asyncio.Server]) -> None:
    for server in servers:
        server.close()
    for server in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2.0)
