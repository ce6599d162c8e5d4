"""What the clients share about connecting: TLS contexts and handshake refusals.

* :func:`client_ssl` — the :class:`ssl.SSLContext` for ``wss://``/``https://``: the system
  trust store by default, or only the CA certificates of ``--cafile FILE``.
* :func:`ws_options` — the keyword arguments for ``websockets.connect`` (``ssl`` only for
  ``wss://`` URLs, where websockets would otherwise build its own context).
* :func:`handshake_refusal` — a WebSocket handshake answered with an HTTP error (403 origin
  or host refused, 429 rate limited, 401, ...) as an earshot error code, message and
  ``Retry-After``; certificate failures as the code ``tls``.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from earshot.errors import ClientError, ConfigError

__all__ = ["Refusal", "check_server_tls", "client_ssl", "handshake_refusal", "ws_options"]


def client_ssl(cafile: str | Path | None = None) -> ssl.SSLContext:
    """A verifying TLS context: the system's CA store, or only ``cafile`` (PEM) if given."""
    try:
        return ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"cannot load CA certificates from {cafile}: {exc}",
                          code="tls") from None


def check_server_tls(certfile: str | None, keyfile: str | None) -> None:
    """Load ``--certfile``/``--keyfile`` once at start, so a wrong path or a key that does
    not match the certificate is a clear :class:`ConfigError`, not a traceback."""
    if not certfile:
        return
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {certfile} with key {keyfile}: "
                          f"{exc}") from None


def ws_options(url: str, context: ssl.SSLContext | None) -> dict[str, Any]:
    """``ssl=`` for a ``wss://`` URL when a context is given (websockets refuses it for
    ``ws://``)."""
    if context is not None and url.lower().startswith("wss://"):
        return {"ssl": context}
    return {}


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    message: str
    retry_after: float | None = None
    status: int | None = None  # HTTP status (None: not an HTTP answer)

    @property
    def retryable(self) -> bool:
        """Worth trying again later: rate limited, overloaded, or a proxy's 5xx while the
        server restarts. Refused origins, hosts, paths and certificates are final."""
        return self.status is not None and (self.status == 429 or self.status >= 500)


def handshake_refusal(exc: BaseException) -> Refusal | None:
    """The server's reason for refusing a handshake, if ``exc`` is such a refusal."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Refusal("tls", f"TLS certificate not trusted: {exc.verify_message or exc} "
                              "(give the server's CA with --cafile)")
    from websockets.exceptions import InvalidStatus

    if not isinstance(exc, InvalidStatus):
        return None
    response = exc.response
    status = response.status_code
    body: dict[str, Any] = {}
    try:
        parsed = json.loads(response.body or b"{}")
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    default = {401: "unauthorized", 403: "forbidden", 404: "not_found",
               429: "rate_limited", 503: "server_full"}.get(status, f"http_{status}")
    code = str(body.get("code") or default)
    message = str(body.get("message") or body.get("detail") or f"HTTP {status}")
    retry_after: float | None = None
    header = response.headers.get("Retry-After")
    if isinstance(body.get("retry_after"), int | float):
        retry_after = float(body["retry_after"])
    elif header and header.strip().isdecimal():
        retry_after = float(header)
    return Refusal(code, f"HTTP {status}: {message}", retry_after, status)
