"""The page's static files (``/web/*``), readable from other origins.

Pages on other sites import ``/web/earshot.js`` as an ES module (and its worklets through
``audioWorklet.addModule``): both are CORS requests, so the browser needs
``Access-Control-Allow-Origin`` on these files. Only the static mount gets the header; the
REST API and the WebSockets are unchanged (WebSockets are not subject to CORS; the token
guards them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

ANY = "*"


class CorsStaticFiles(StaticFiles):
    """``StaticFiles`` that answers CORS for ``origins`` (``"*"``: any; empty: none)."""

    def __init__(self, *, origins: Iterable[str] = (ANY,), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.origins = frozenset(origins)

    def allow(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for a request from ``origin``."""
        if origin is None or not self.origins:
            return None
        if ANY in self.origins:
            return ANY
        return origin if origin in self.origins else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        headers = Headers(scope=scope)
        allowed = self.allow(headers.get("origin"))
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            # a preflight (a page that adds headers to its fetch of these files)
            extra = {"Vary": "Origin"}
            if allowed is not None:
                extra.update({
                    "Access-Control-Allow-Origin": allowed,
                    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
                    "Access-Control-Allow-Headers":
                        headers.get("access-control-request-headers", ""),
                    "Access-Control-Max-Age": "600",
                })
            await Response(status_code=204 if allowed else 403, headers=extra)(
                scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                if ANY not in self.origins:
                    raw.append((b"vary", b"Origin"))
                if allowed is not None:
                    raw.append((b"access-control-allow-origin", allowed.encode("latin-1")))
                message = {**message, "headers": raw}
            await send(message)

        await super().__call__(scope, receive, send_with_cors)
