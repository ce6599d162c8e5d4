"""Keep credentials out of logs and error messages.

:func:`redact` blanks ``?token=…`` (and ``resume_token``, ``access_token``) query values,
``Authorization: Bearer …`` values, ``"token": "…"`` JSON fields and any literal secret it
is given. :class:`RedactFilter` applies it to every log record (message, arguments and the
formatted traceback), and :func:`uvicorn_log_config` installs it on every handler of
``earshot serve``: uvicorn's access log, its error log and earshot's own loggers.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable
from typing import Any

MASK = "[redacted]"
_KEYS = r"(?:token|resume_token|access_token|api_key|apikey|password)"
_PATTERNS = [
    # ?token=T / &resume_token=T in URLs, request lines and query strings
    (re.compile(rf"([?&;]{_KEYS}=)[^&\s\"'#;]*", re.IGNORECASE), rf"\1{MASK}"),
    # Authorization: Bearer T / Basic T, and a bare "Bearer T"
    (re.compile(r"(authorization[\"']?\s*[:=,]\s*[\"']?\w+\s+|\bbearer\s+)[A-Za-z0-9._~+/=-]+",
                re.IGNORECASE), rf"\1{MASK}"),
    # "token": "T" in JSON (and Python reprs: 'token': 'T')
    (re.compile(rf"([\"']{_KEYS}[\"']\s*:\s*)([\"'])(?:(?!\2).)*\2", re.IGNORECASE),
     rf"\1\2{MASK}\2"),
]


_MARKERS = ("token", "bearer", "authorization", "api_key", "apikey", "password", "basic")


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo masked (``redis://u:***@host/0``), for
    messages and logs; a URL without one is returned as it is."""
    scheme, sep, rest = url.partition("://")
    authority = rest.split("/", 1)[0]
    if not sep or "@" not in authority:
        return url
    userinfo, _, tail = rest.partition("@")
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}:***@{tail}" if colon else url


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every credential it carries replaced by ``[redacted]``."""
    for secret in secrets:
        if secret and len(secret) >= 3 and secret in text:  # (1-2 chars would mask all)
            text = text.replace(secret, MASK)
    lower = text.lower()
    if any(m in lower for m in _MARKERS):  # (most lines carry none: skip the regexes)
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
    return text


class RedactFilter(logging.Filter):
    """A handler filter that redacts each record in place (it never drops one)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s)

    def _clean(self, value: Any) -> Any:
        if value is None or isinstance(value, int | float):
            return value  # (kept as they are for %d and %f)
        if isinstance(value, str):
            return redact(value, self.secrets)
        if isinstance(value, bytes | bytearray):
            return redact(bytes(value).decode("utf-8", "replace"), self.secrets)
        if isinstance(value, tuple | list):
            return type(value)(self._clean(v) for v in value)
        opcode, data = getattr(value, "opcode", None), getattr(value, "data", None)
        if opcode is not None and isinstance(data, bytes | bytearray):
            # a websockets frame (logged at debug level): its own repr cuts the text in the
            # middle, which could leave half a token behind; redact the whole text first
            name = getattr(opcode, "name", str(opcode))
            if name != "TEXT":
                return f"{name} [{len(data)} bytes]"
            text = redact(bytes(data).decode("utf-8", "replace"), self.secrets)
            shown = text if len(text) <= 300 else text[:300] + "..."
            return f"TEXT {shown!r} [{len(data)} bytes]"
        return redact(str(value), self.secrets)  # rendered now, as %s would

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg, self.secrets)
        else:  # an object logged as the message: render it now, then redact
            record.msg = redact(str(record.msg), self.secrets)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._clean(v) for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


def uvicorn_log_config(level: str = "info", secrets: Iterable[str] = ()) -> dict[str, Any]:
    """uvicorn's logging configuration with :class:`RedactFilter` on every handler, and
    handlers for earshot's own loggers (at ``level``) and the root (libraries, WARNING)
    so that they go through it too."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["filters"] = {"redact": {"()": RedactFilter, "secrets": tuple(secrets)}}
    for handler in cfg["handlers"].values():
        handler.setdefault("filters", []).append("redact")
    cfg["loggers"]["earshot"] = {"handlers": ["default"], "level": level.upper(),
                                 "propagate": False}
    # everything else (libraries) at WARNING, as Python's last-resort handler had it
    cfg["root"] = {"handlers": ["default"], "level": "WARNING"}
    return cfg
