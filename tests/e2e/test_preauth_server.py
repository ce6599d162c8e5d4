"""Pre-auth limits on a real ``earshot serve`` over TLS (issue 19, item 5): a client that
never finishes its request head is closed at ``--header-timeout``; one that does, and a
WebSocket upgraded from it, are not."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hardening_helpers import TlsServer, client_context, make_ca, make_server_cert
from websockets.asyncio.client import connect

from helpers import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    tmp = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = make_ca(tmp, "earshot-test")
    cert, key = make_server_cert(tmp, ca_cert, ca_key)
    srv = TlsServer(tmp_path_factory.mktemp("tls") / "data", ca, "--certfile", str(cert),
                    "--keyfile", str(key), "--header-timeout", "0.5")
    srv.start()
    yield srv, ca
    srv.stop()


def tls_socket(port: int, ca: Path) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return client_context(ca).wrap_socket(raw, server_hostname="localhost")


def test_a_request_head_that_never_ends_is_closed(tls_server: tuple[ServerProcess, Path]
                                                  ) -> None:
    srv, ca = tls_server
    slow = tls_socket(srv.port, ca)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")  # no blank line, ever
    began = time.monotonic()
    assert slow.recv(100) == b""  # closed by the server (the socket's own timeout is 10 s)
    assert time.monotonic() - began < 5
    silent = tls_socket(srv.port, ca)  # nothing at all after the handshake
    assert silent.recv(100) == b""
    whole = tls_socket(srv.port, ca)  # a request in time is answered, and kept alive
    whole.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert whole.recv(100).startswith(b"HTTP/1.1 200")
    for s in (slow, silent, whole):
        s.close()


async def test_an_upgraded_websocket_outlives_the_head_deadline(
        tls_server: tuple[ServerProcess, Path]) -> None:
    srv, ca = tls_server
    url = f"wss://127.0.0.1:{srv.port}/ws/subscribe?stream=*"
    async with connect(url, ssl=client_context(ca), server_hostname="localhost") as ws:
        assert json.loads(await ws.recv())["type"] == "subscribed"
        await asyncio.sleep(1.5)  # three head deadlines
        await ws.ping()
        assert ws.close_code is None
