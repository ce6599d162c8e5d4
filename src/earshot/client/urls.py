"""Server URLs as the clients spell them: ``ws://host:port/ws`` and its HTTP base."""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit, urlunsplit

DEFAULT_URL = "ws://127.0.0.1:8000/ws"


def http_base(url: str) -> str:
    """ws://host:port/ws → http://host:port"""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def ws_url(url: str, path: str, **query: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))
