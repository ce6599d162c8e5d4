"""Bearer-token checks shared by the WebSocket and REST routes."""

from __future__ import annotations

import hmac
from collections.abc import Mapping


def presented_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token a request carries: ``Authorization: Bearer T`` or ``?token=T``."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return query.get("token")


def token_ok(expected: str | None, presented: str | None) -> bool:
    """True when no token is configured, or the presented one matches (constant time)."""
    if not expected:
        return True
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())
