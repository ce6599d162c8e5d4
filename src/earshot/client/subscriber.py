"""The client side of ``/ws/subscribe``: pairs each ``audio`` header with its payload."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any


async def messages(ws: Any) -> AsyncIterator[tuple[dict[str, Any], bytes | None]]:
    """Yield ``(event, None)`` for events and ``(audio_header, payload)`` for audio."""
    header: dict[str, Any] | None = None
    async for raw in ws:
        if isinstance(raw, bytes):
            if header is not None:
                yield header, raw
                header = None
            continue
        msg = json.loads(raw)
        if msg.get("type") == "audio":
            header = msg
        else:
            yield msg, None
