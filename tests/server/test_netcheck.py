"""The port check before ``earshot serve`` starts (server/netcheck.py)."""

from __future__ import annotations

import socket

import pytest

from earshot.errors import ConfigError
from earshot.server.netcheck import check_bindable


def test_port_check_names_a_busy_port_and_an_unknown_host() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: "
                                              "Address already in use"):
            check_bindable("127.0.0.1", port)
    check_bindable("127.0.0.1", port)  # free again
    with pytest.raises(ConfigError, match="unknown host"):
        check_bindable("no-such-host.invalid", port)
