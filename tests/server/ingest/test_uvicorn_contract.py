"""What the direct lane relies on of uvicorn (earshot.server.ingest.lane.RELIES_ON) exists in
the installed uvicorn: a new release that renames any of it fails here, not in production."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from earshot.server.ingest.lane import RELIES_ON, EarshotWebSocketProtocol


async def _app(scope: Any, receive: Any, send: Any) -> None:
    return None


@pytest.fixture
def protocol() -> WebSocketsSansIOProtocol:
    config = Config(app=_app, ws="websockets-sansio")
    config.load()
    loop = asyncio.new_event_loop()
    try:
        return WebSocketsSansIOProtocol(config, ServerState(), {}, _loop=loop)
    finally:
        loop.close()


def test_the_attributes_the_lane_reads_exist(protocol: WebSocketsSansIOProtocol) -> None:
    missing = [a for a in RELIES_ON["attributes"] if not hasattr(protocol, a)]
    assert missing == [], f"uvicorn no longer sets {missing}"


def test_the_attributes_set_on_connect_are_set_by_handle_connect() -> None:
    source = inspect.getsource(WebSocketsSansIOProtocol.handle_connect)
    missing = [a for a in RELIES_ON["set_on_connect"]
               if f"self.{a} =" not in source and f"self.{a}:" not in source]
    assert missing == [], f"uvicorn's handle_connect no longer sets {missing}"


def test_the_methods_the_lane_overrides_exist_with_the_same_signature() -> None:
    for name in RELIES_ON["methods"]:
        base = getattr(WebSocketsSansIOProtocol, name, None)
        assert callable(base), f"uvicorn has no {name}"
        ours = EarshotWebSocketProtocol.__dict__.get(name)
        if ours is not None:
            assert inspect.signature(ours).parameters.keys() == \
                inspect.signature(base).parameters.keys(), name
