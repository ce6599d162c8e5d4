"""The Python client: publish audio to an earshot server, survive drops, read its events.

This package imports nothing from :mod:`earshot.server` (the client-only install, ``pip
install earshot``, has no server dependencies). What lives here:

* :mod:`~earshot.client.publisher` — :class:`Publisher`, :class:`OpusPublisher`,
  :class:`SyncPublisher`, :func:`publish`, :func:`send_file`: the asyncio and threading
  layers around
* :mod:`~earshot.client.protocol` — the publisher's sans-I/O core (what to send, what to
  resend after a drop, when to back off or give up), run over WebSockets by
  :mod:`~earshot.client.connection`, keeping its audio in a buffer of
  :mod:`~earshot.client.buffer` (memory, Opus packets, or a spool entry);
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
    Resume,
    SyncPublisher,
    publish,
    send_file,
)

__all__ = ["OpusPublisher", "Publisher", "Reconnect", "Resume", "SyncPublisher", "publish",
           "send_file"]
