"""Delivering a spool (:mod:`earshot.client.spool`) to the server.

Each server stream of a spool entry is one :class:`~earshot.client.protocol.PublisherProtocol`
whose buffer is a :class:`~earshot.client.buffer.SpoolBuffer` (the entry's frames from the
stream's origin on), run by :func:`earshot.client.connection.deliver`:

* :func:`deliver_entry` sends one entry: it creates its stream on first contact (or resumes
  the one the entry remembers), sends every frame the server lacks, read from disk, sends
  ``stop`` once capture has ended, and marks the entry stopped when ``stopped`` confirms the
  count. If the spool dropped audio of the entry (a full spool), the stream in flight is
  stopped as it is and the rest goes to a new stream.
* :func:`flush` delivers every entry no other process holds, oldest first
  (``earshot spool DIR --flush``).

``Publisher(url, ..., spool=DIR)`` (:class:`earshot.client.Publisher`) captures into the spool
and delivers with these, the spool's older entries first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ssl import SSLContext
from typing import Any, cast

from earshot.audio import WireFormat
from earshot.client.buffer import SpoolBuffer
from earshot.client.connection import Endpoint, deliver
from earshot.client.protocol import Done, Failed, PublisherProtocol, Reconnect, Resume
from earshot.client.spool import Dropped, Spool, SpoolEntry

__all__ = ["FOREVER", "deliver_entry", "entry_protocol", "flush"]

#: a spool waits out any outage: no bound on attempts, busy servers included
FOREVER = Reconnect(attempts=None, first_attempts=None, busy_attempts=None)


def entry_protocol(entry: SpoolEntry, *, server: str, reconnect: Reconnect = FOREVER,
                   spool: Spool | None = None,
                   on_dropped: Callable[[list[Dropped]], None] | None = None,
                   origin: int | None = None, resume: Resume | None = None,
                   client_info: dict[str, Any] | None = None, language: str | None = None,
                   max_message_frames: int | None = None,
                   ready_timeout: float = 10.0) -> PublisherProtocol:
    """The core for the server stream of ``entry`` that begins at entry frame ``origin``
    (default: the entry's current one), resuming the stream the entry remembers.

    With ``spool``, :meth:`~PublisherProtocol.send` appends to the entry (capture);
    without, the core only delivers."""
    buffer = SpoolBuffer(entry, spool=spool, origin=origin, on_dropped=on_dropped)
    if resume is None and origin is None and entry.stream_id is not None:
        resume = Resume(entry.stream_id, entry.resume_token or "")
    info = {**(client_info or {"agent": "earshot-python"}), "spool": entry.id,
            # wall time of this stream's first frame (it may reach the server hours later)
            "captured_at": float(entry.meta.get("created", 0)) + buffer.origin / entry.rate}
    return PublisherProtocol(
        rate=entry.rate, channels=entry.channels, format=cast(WireFormat, entry.format),
        name=entry.name, processors=entry.processors, language=language, client_info=info,
        buffer=buffer, resume=resume, reconnect=reconnect, server=server,
        max_message_frames=max_message_frames, ready_timeout=ready_timeout)


async def _finish_stream(endpoint: Endpoint, entry: SpoolEntry, stream: str, token: str,
                         origin: int, reconnect: Reconnect, wake: asyncio.Event) -> None:
    """Stop an earlier server stream of ``entry`` (before a drop gap) as it is."""
    core = entry_protocol(entry, server=endpoint.url, reconnect=reconnect, origin=origin,
                          resume=Resume(stream, token), ready_timeout=endpoint.open_timeout)
    outcome = await deliver(core, endpoint, wake=wake)
    if isinstance(outcome, Failed):
        raise outcome.error
    entry.finished(stream, outcome.frames)


async def deliver_entry(url: str, entry: SpoolEntry, *, token: str | None = None,
                        reconnect: Reconnect = FOREVER,
                        on_event: Callable[[dict[str, Any]], None] | None = None,
                        ssl: SSLContext | None = None, open_timeout: float = 10.0,
                        wake: asyncio.Event | None = None,
                        protocol: PublisherProtocol | None = None,
                        client_info: dict[str, Any] | None = None,
                        language: str | None = None) -> str | None:
    """Deliver one entry (already locked by the caller) to the end; return its last stream
    id (None if it held nothing to send). Raises :class:`~earshot.errors.ClientError` when
    the server refuses for good.

    While capture goes on (same process), new frames are sent as they are appended: the
    capturer sets ``wake``. ``protocol`` is the capturer's core for this entry (see
    :func:`entry_protocol`), used for the entry's current stream; ``client_info`` and
    ``language`` go into the ``start`` of the streams it begins."""
    endpoint = Endpoint(url, token, ssl, open_timeout)
    wake = wake if wake is not None else asyncio.Event()
    while True:
        for sid, rtok, origin in entry.finish:
            await _finish_stream(endpoint, entry, sid, rtok, int(origin), reconnect, wake)
        if entry.closed and entry.stream_id is None and entry.written <= entry.origin:
            entry.meta["stopped"] = True
            return None  # nothing left to send (all dropped, or an empty capture)
        if entry.delivered:
            return entry.stream_id
        core = protocol
        if core is None or core.outcome is not None or core.buffer.cut:
            core = entry_protocol(entry, server=url, reconnect=reconnect,
                                  client_info=client_info, language=language,
                                  ready_timeout=open_timeout)
        protocol = None
        outcome = await deliver(core, endpoint, wake=wake, on_event=on_event)
        if isinstance(outcome, Failed):
            raise outcome.error
        if core.buffer.cut:  # audio was dropped under this stream: it ended as it was
            if core.stream_id is not None:
                entry.finished(core.stream_id, outcome.frames)
            continue
        assert isinstance(outcome, Done) and outcome.frames is not None
        entry.mark_stopped(outcome.frames)
        return core.stream_id


async def flush(spool: Spool, url: str, *, token: str | None = None,
                reconnect: Reconnect | None = None,
                on_delivered: Callable[[SpoolEntry, str | None], None] | None = None,
                skip: Callable[[SpoolEntry], None] | None = None,
                ssl: SSLContext | None = None) -> list[str]:
    """Deliver every entry this process can take, oldest first; return the stream ids.

    Entries another process holds (a running capture) are left to it (``skip``)."""
    done: list[str] = []
    for entry in spool.entries():
        if not entry.try_lock():
            if skip is not None:
                skip(entry)
            continue
        try:
            if not entry.closed:
                entry.close_capture()  # its capturer is gone (killed, crashed, rebooted)
            sid = await deliver_entry(url, entry, token=token, ssl=ssl,
                                      reconnect=reconnect or Reconnect(attempts=30))
            if on_delivered is not None:
                on_delivered(entry, sid)
            if sid:
                done.append(sid)
            entry.remove()
        finally:
            entry.unlock()
    return done

