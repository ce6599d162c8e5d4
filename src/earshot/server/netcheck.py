"""Can the server listen where it was told to? Checked before anything is announced."""

from __future__ import annotations

import errno
import socket

from earshot.errors import ConfigError


def check_bindable(host: str, port: int) -> None:
    """Raise :class:`ConfigError` with the reason if ``host:port`` cannot be listened on
    (address in use, unknown host, an address not on this machine, a privileged port).

    Binds and closes at once, with ``SO_REUSEADDR`` as uvicorn does, so a port that only has
    connections in TIME_WAIT is not reported busy.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})") \
            from None
    for family, kind, proto, _, addr in dict.fromkeys(infos):  # asyncio binds every one
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(addr)
            except OSError as exc:
                why = exc.strerror or str(exc)
                if exc.errno == errno.EADDRINUSE:
                    why += " (another server is running there: stop it or choose another --port)"
                elif exc.errno == errno.EACCES and port < 1024:
                    why += " (ports below 1024 need root: choose --port 1024 or above)"
                raise ConfigError(f"cannot listen on {host}:{port}: {why}") from None
