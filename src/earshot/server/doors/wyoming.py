"""Wyoming (Home Assistant's speech-to-text protocol) on its own port (``--wyoming
tcp://HOST:PORT``). The glue of :mod:`earshot.integrations.wyoming`: the peer checked
against ``--wyoming-allow`` (the protocol carries no credentials; refused peers are
closed at once, with the reason logged), bytes through :class:`WyomingReader` to
:class:`WyomingSession`, each request an ordinary stream named ``wyoming-<peer address>``."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from typing import Any
from urllib.parse import urlsplit

from earshot import __version__
from earshot.config import Settings
from earshot.integrations.common import DoorError
from earshot.integrations.wyoming import AsrModelInfo, WyomingInfo, WyomingReader, WyomingSession
from earshot.server.auth import Principal, Scope
from earshot.server.doors.runner import DoorRunner
from earshot.server.streams.hub import Hub

log = logging.getLogger("earshot.doors.wyoming")
READ_BYTES = 64 * 1024
#: what a Wyoming client may do: publish (it has no credentials; the address list decides)
WYOMING = Principal("wyoming", frozenset({Scope.PUBLISH}))


class TcpTransport:
    """A door's messages as bytes on a TCP connection (``close`` ignores code and reason)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer

    async def send(self, data: str | bytes) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def close(self, code: int, reason: str) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def address(url: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` → (host, port)."""
    parts = urlsplit(url)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise ValueError(f"--wyoming {url!r}: use tcp://HOST:PORT")
    return parts.hostname, parts.port


def info_of(capabilities: dict[str, Any]) -> WyomingInfo:
    asr = capabilities.get("asr", {})
    model = str(asr.get("model") or "earshot")
    languages = tuple(asr.get("languages") or ("en",))
    return WyomingInfo(models=(AsrModelInfo(model, languages, description=str(
        asr.get("engine") or "earshot"), version=__version__),), version=__version__)


def allowed(peer: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in n for n in networks)


async def serve_connection(hub: Hub, info: WyomingInfo, networks: list[Any],
                           reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    host = str(peer[0]) if isinstance(peer, tuple) else "unknown"
    if not allowed(host, networks):
        log.warning("wyoming: refused %s: not in --wyoming-allow (%s)", host,
                    " ".join(str(n) for n in networks))
        writer.close()
        return
    name = "wyoming-" + host.replace(":", "-")
    session = WyomingSession(info, name=name, client={"peer": host})
    runner = DoorRunner(hub, WYOMING, session.on_event, TcpTransport(writer), name=name)
    framing = WyomingReader()
    try:
        while not runner.closed:
            data = await reader.read(READ_BYTES)
            if not data:
                break
            try:
                events = framing.feed(data)
            except DoorError as exc:
                log.warning("wyoming: %s: %s (closing)", host, exc.message)
                await runner.perform(session.fail(exc))
                break
            for event in events:
                await runner.perform(session.receive(event))
        # the client closed its side: answer what it asked before going
        await runner.settled()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    except Exception:
        log.exception("wyoming connection failed")
    finally:
        await runner.finish()
        writer.close()


async def start(settings: Settings, hub: Hub, capabilities: dict[str, Any]) -> asyncio.Server:
    url = settings.doors.wyoming
    assert url is not None
    host, port = address(url)
    networks = [ipaddress.ip_network(c, strict=False) for c in settings.doors.wyoming_allow]
    info = info_of(capabilities)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(hub, info, networks, reader, writer)

    server = await asyncio.start_server(handle, host, port,
                                        reuse_port=settings.server.processes > 1)
    log.info("wyoming on tcp://%s:%d (clients from %s)", host, port,
             " ".join(settings.doors.wyoming_allow))
    return server
