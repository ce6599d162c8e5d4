"""The protocol doors' I/O glue: OpenAI speech-to-text (REST), Deepgram live, OpenAI
Realtime, Wyoming, Icecast sources. Each is a thin module over its sans-I/O core
(:mod:`earshot.integrations`) and the one shared :mod:`~earshot.server.doors.runner`, which
opens ordinary earshot streams through the hub. docs/doors.md says what each supports."""

from __future__ import annotations

from fastapi import FastAPI


def add_doors(app: FastAPI) -> None:
    """The doors that live on the main port (HTTP and WebSocket routes)."""
    from earshot.server.doors import deepgram, openai_realtime, openai_rest

    app.include_router(openai_rest.router)
    app.include_router(deepgram.router)
    app.include_router(openai_realtime.router)
