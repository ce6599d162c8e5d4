"""The few REST calls the command line makes, on the standard library alone (urllib), so the
plain install (``pip install earshot``, no test extra) needs no HTTP client package."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

from earshot.client.urls import http_base
from earshot.errors import ClientError


def request_json(url: str, path: str, *, token: str | None = None, method: str = "GET",
                 params: dict[str, Any] | None = None, timeout: float = 10.0,
                 context: Any = None) -> Any:
    """``method path`` on the server of ``url`` (ws:// or http://), the JSON answer.

    Raises :class:`ClientError`: ``code="unreachable"`` when the server cannot be reached,
    ``code="<HTTP status>"`` (with the server's ``detail``) when it answers with an error.
    ``context``: an ``ssl.SSLContext`` for https:// (``earshot.client.transport.client_ssl``).
    """
    base = http_base(url)
    query = f"?{urlencode(params)}" if params else ""
    req = urllib.request.Request(base + path + query, method=method,
                                 headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        raise ClientError(f"HTTP {exc.code}: {_detail(exc)}", code=str(exc.code)) from None
    except OSError as exc:  # URLError, timeouts, refused connections
        reason = getattr(exc, "reason", exc)
        import ssl

        if isinstance(reason, ssl.SSLError):  # a certificate that does not verify: final
            raise ClientError(f"TLS with {base} failed: {reason}", code="tls") from None
        raise ClientError(f"cannot reach {base}: {reason}", code="unreachable") from None
    try:
        return json.loads(body)
    except ValueError:
        raise ClientError(f"{base}{path} did not answer with JSON (is it an earshot server?)") \
            from None


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read()
    except OSError:
        return exc.reason or ""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if detail is None:
        detail = body.decode("utf-8", "replace").strip() or exc.reason
    return detail if isinstance(detail, str) else json.dumps(detail)
