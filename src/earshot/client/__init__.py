"""The Python client: publish audio to an earshot server, survive drops, read its events.

This package imports nothing from :mod:`earshot.server` (the client-only install, ``pip
install earshot``, has no server dependencies). What lives here:

* :mod:`~earshot.client.publisher` — :class:`Publisher`, :class:`OpusPublisher`,
  :class:`SyncPublisher`, :func:`publish`, :func:`send_file`;
* :mod:`~earshot.client.spool` and :mod:`~earshot.client.spooled` — store and forward;
* :mod:`~earshot.client.sources` — files (optionally paced in real time) and microphones;
* :mod:`~earshot.client.listen` and :mod:`~earshot.client.jitter` — hearing a live stream;
* :mod:`~earshot.client.subscriber` — the client side of ``/ws/subscribe``;
* :mod:`~earshot.client.rest`, :mod:`~earshot.client.transport`, :mod:`~earshot.client.urls`
  — REST calls, TLS and handshakes, server URLs.
"""

from earshot.client.publisher import (
    OpusPublisher,
    Publisher,
    Reconnect,
    SyncPublisher,
    publish,
    send_file,
)

__all__ = ["OpusPublisher", "Publisher", "Reconnect", "SyncPublisher", "publish", "send_file"]
