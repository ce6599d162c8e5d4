"""Rooms across gateways (``--bus redis://…``): a thin adapter around :class:`RoomService`.

**Who holds a room.** The first gateway that seats someone in ``ROOM`` takes the key
``{prefix}room:ROOM:holder`` (its gateway name; ``SET NX``, expiring after ``lease_ttl``
and renewed every third of it while the room lives, deleted when it ends). The room (its
seats, clock, events, mixer and timer: an ordinary :class:`RoomService` room) lives there,
and its mix is made there. A holder key whose gateway no longer listens on its channel (it
died) is taken over by the next join.

**Remote seats.** A gateway that gets a ``/ws/call`` join for a room held elsewhere keeps
the participant's stream local (archive, processors, acks, resume: an ordinary stream of
that gateway) and reaches the room over Redis pub/sub, each gateway listening on its own
channel ``{prefix}gateway:NAME`` (:mod:`earshot.rooms.relay` frames the messages):

* ``check`` and ``join`` are requests answered by the holder (timeout ``timeout``): its
  refusals (``room_full``, ``name_taken``...) come back as the same errors;
* the participant's audio goes to the holder as it arrives (its stream offset and the
  samples as archived), and ``mute``, ``speech`` (the stream's VAD), ``leave`` (a stop,
  or a lost connection: the seat waits for a resume as on one gateway), ``alive`` (every
  second: a seat not heard of for ``lost_after`` seconds counts as a lost connection);
* on the holder a remote seat is a :class:`~earshot.server.rooms.service.Member` whose
  connection (:class:`RemoteListener`) publishes its mix packets and room messages to the
  participant's gateway, which hands them to the call session. The room mixes remote and
  local seats the same way.

Pub/sub is lossy and unbuffered, like the live mix it carries; the archive stays whole on
the participant's gateway. What a relayed seat adds to mouth-to-ear latency is measured in
``benchmarks/bench_calls.py --two-gateways`` (docs/calls.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from earshot.cluster.bus.keys import Keys
from earshot.rooms.errors import RoomError
from earshot.rooms.relay import RelayMessage, decode, encode, pcm
from earshot.server.rooms.service import RoomService

__all__ = ["RelayedSession", "RemoteListener", "RemoteSeat", "RoomRelay"]

log = logging.getLogger("earshot.rooms.relay")

# Renew the key if it is ours or free; delete it only if it is ours.
_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RelayedSession(Protocol):
    """What the relay needs of a call session whose room is held elsewhere."""

    def post_bytes(self, data: bytes) -> None: ...

    def relay_post(self, message: dict[str, Any]) -> None: ...


class RemoteListener:
    """On the holder: the connection of a seat whose participant is on another gateway."""

    def __init__(self, relay: RoomRelay, gateway: str, room: str, participant: str,
                 conn: str) -> None:
        self.relay, self.gateway = relay, gateway
        self.room, self.participant, self.conn = room, participant, conn
        self.last_seen = time.monotonic()

    def post(self, message: dict[str, Any]) -> None:
        self.relay.send(self.gateway, RelayMessage("post", self.room, self.participant,
                                                   self.conn, fields={"message": message}))

    def post_bytes(self, data: bytes) -> None:
        self.relay.send(self.gateway, RelayMessage("mix", self.room, self.participant,
                                                   self.conn, data=bytes(data)))


@dataclass(eq=False)
class RemoteSeat:
    """On the participant's gateway: a call session's seat in a room held on ``holder``."""

    relay: RoomRelay
    holder: str
    room: str
    participant: str
    conn: str = field(default_factory=lambda: secrets.token_hex(8))
    seated: bool = False

    def _msg(self, kind: Any, /, **fields: Any) -> RelayMessage:
        return RelayMessage(kind, self.room, self.participant, self.conn, fields=fields)

    async def check(self, *, resume: bool) -> None:
        await self.relay.request(self.holder, self._msg("check", resume=resume))

    async def join(self, session: RelayedSession, *, stream: str, rate: int, channels: int,
                   offset: int, key: str | None, mix: str) -> dict[str, Any]:
        self.relay.sessions[self.conn] = session
        try:
            reply = await self.relay.request(self.holder, self._msg(
                "join", stream=stream, rate=rate, channels=channels, offset=offset, key=key,
                mix=mix))
        except RoomError:
            self.relay.sessions.pop(self.conn, None)
            raise
        self.seated = True
        self.relay.seats[self.conn] = self
        state = reply.get("state")
        return dict(state) if isinstance(state, dict) else {"room": self.room}

    def audio(self, offset: int, fmt: str, channels: int, data: bytes) -> None:
        self.relay.send(self.holder, RelayMessage("audio", self.room, self.participant,
                                                  self.conn, offset=offset, format=fmt,
                                                  channels=channels, data=data))

    def mute(self, muted: bool) -> None:
        self.relay.send(self.holder, self._msg("mute", muted=muted))

    def speech(self, kind: str, t: float) -> None:
        self.relay.send(self.holder, self._msg("speech", kind=kind, t=t))

    def leave(self, *, lost: bool) -> None:
        if self.seated:
            self.relay.send(self.holder, self._msg("leave", lost=lost))
        self.seated = False
        self.relay.seats.pop(self.conn, None)
        self.relay.sessions.pop(self.conn, None)


class RoomRelay:
    """This gateway's side of rooms across gateways; see the module docstring."""

    def __init__(self, service: RoomService, url: str, keys: Keys, name: str, *,
                 lease_ttl: float = 5.0, timeout: float = 3.0, lost_after: float = 5.0,
                 client: Any = None) -> None:
        self.service = service
        self.url, self.keys, self.name = url, keys, name
        self.lease_ttl, self.timeout, self.lost_after = lease_ttl, timeout, lost_after
        self.redis: Any = client
        self.sessions: dict[str, RelayedSession] = {}  # conn -> local session (not holder)
        self.seats: dict[str, RemoteSeat] = {}  # conn -> seated remote seat (not holder)
        self.listeners: dict[str, RemoteListener] = {}  # conn -> remote seat (holder)
        self._claimed: dict[str, float] = {}  # rooms whose key we took -> when
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        self.dropped = 0  # messages not sent (Redis down) or refused on arrival

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self, *, wait: float = 5.0) -> None:
        """Start listening (waiting up to ``wait`` seconds for the subscription)."""
        if self.redis is None:
            from earshot.cluster.bus.redis import redis_module

            self.redis = redis_module().from_url(self.url, decode_responses=False,
                                                 socket_connect_timeout=2)
        self._tasks = [asyncio.create_task(f(), name=f"earshot-relay-{f.__name__}")
                       for f in (self._listen, self._send_loop, self._lease_loop)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), wait)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        if self.redis is not None:
            with contextlib.suppress(Exception):
                for room in list(self._claimed):
                    await self.redis.eval(_RELEASE, 1, self.keys.room_holder(room), self.name)
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    # -- where a room is held ----------------------------------------------------------------
    async def locate(self, room: str) -> str | None:
        """``None`` when ``room`` is (or now becomes) held here, else its holder's name.
        Redis out of reach: held here (a call on one gateway still works)."""
        if room in self.service.names():
            return None
        key = self.keys.room_holder(room)
        try:
            for _ in range(3):
                if await self.redis.set(key, self.name, nx=True,
                                        px=int(self.lease_ttl * 1000)):
                    self._claimed[room] = time.monotonic()
                    return None
                raw = await self.redis.get(key)
                if raw is None:
                    continue  # it just expired: try again
                holder = str(raw.decode())
                if holder == self.name:
                    self._claimed[room] = time.monotonic()
                    return None
                listening = await self.redis.pubsub_numsub(self.keys.gateway(holder))
                if listening and int(listening[0][1]) > 0:
                    return holder
                # its gateway is gone: its claim goes with it
                await self.redis.eval(_RELEASE, 1, key, holder)
        except Exception as exc:
            log.warning("room %s: cannot reach the bus to find its holder (%s); held here",
                        room, exc)
            return None
        raise RoomError("room_unreachable", f"cannot settle which gateway holds room {room!r}")

    async def holder_of(self, room: str) -> str | None:
        """The gateway holding ``room`` if it is not this one (None: here, or nowhere)."""
        if room in self.service.names():
            return None
        try:
            raw = await self.redis.get(self.keys.room_holder(room))
        except Exception:
            return None
        holder: str | None = None if raw is None else str(raw.decode())
        return None if holder == self.name else holder

    async def state(self, room: str, holder: str) -> dict[str, Any]:
        """The room's state, asked of its holder."""
        reply = await self.request(holder, RelayMessage("state", room, "", ""))
        state = reply.get("state")
        if not isinstance(state, dict):
            raise RoomError("room_unreachable", f"gateway {holder} sent no state of {room!r}")
        return state

    # -- sending -------------------------------------------------------------------------
    def send(self, gateway: str, m: RelayMessage) -> None:
        """Queue ``m`` for ``gateway`` (sent in order by one task)."""
        self._outbox.append((self.keys.gateway(gateway), encode(m)))
        self._wake.set()

    async def request(self, gateway: str, m: RelayMessage) -> dict[str, Any]:
        """Send a request, wait for its reply: the fields of the reply, or the holder's
        refusal raised as the same :class:`RoomError`."""
        req = secrets.token_hex(8)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[req] = fut
        fields = {**m.fields, "req": req, "reply_to": self.name}
        self.send(gateway, RelayMessage(m.kind, m.room, m.participant, m.conn, fields=fields))
        try:
            reply = await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            raise RoomError("room_unreachable", f"room {m.room!r} is held by gateway "
                            f"{gateway}, which did not answer") from None
        finally:
            self._replies.pop(req, None)
        error = reply.get("error")
        if isinstance(error, dict):
            raise RoomError(str(error.get("code", "room_unreachable")),
                            str(error.get("message", "refused by the room's gateway")))
        return reply

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                batch: list[tuple[str, bytes]] = []
                while self._outbox and len(batch) < 256:
                    batch.append(self._outbox.popleft())
                try:
                    if len(batch) == 1:
                        await self.redis.publish(*batch[0])
                    else:
                        pipe = self.redis.pipeline(transaction=False)
                        for channel, data in batch:
                            pipe.publish(channel, data)
                        await pipe.execute()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.dropped += len(batch)
                    log.warning("relay: %d messages not sent: %s", len(batch), exc)
                    await asyncio.sleep(0.2)

    # -- receiving -----------------------------------------------------------------------
    async def _listen(self) -> None:
        channel = self.keys.gateway(self.name)
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                self._subscribed.set()
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self._handle(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("relay: listening on %s failed (%s); again in 0.5 s", channel,
                            exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _handle(self, data: bytes) -> None:
        try:
            m = decode(data)
        except RoomError as exc:
            self.dropped += 1
            log.warning("relay: dropped a message: %s", exc)
            return
        try:
            self._dispatch(m)
        except RoomError as exc:
            log.info("relay: room %s, %s: %s refused: %s", m.room, m.participant, m.kind,
                     exc)
        except Exception:
            log.exception("relay: room %s: handling %s failed", m.room, m.kind)

    def _dispatch(self, m: RelayMessage) -> None:
        kind = m.kind
        # -- to the participant's gateway ------------------------------------------------
        if kind == "mix":
            session = self.sessions.get(m.conn)
            if session is not None:
                session.post_bytes(m.data)
            return
        if kind == "post":
            session = self.sessions.get(m.conn)
            message = m.fields.get("message")
            if session is not None and isinstance(message, dict):
                session.relay_post(message)
            return
        if kind == "reply":
            fut = self._replies.get(str(m.fields.get("req")))
            if fut is not None and not fut.done():
                fut.set_result(m.fields)
            return
        # -- to the holder ------------------------------------------------------------------
        service = self.service
        listener = self.listeners.get(m.conn)
        if listener is not None:
            listener.last_seen = time.monotonic()
        if kind == "audio":
            if listener is not None:
                service.audio(m.room, m.participant, m.offset, pcm(m))
        elif kind in ("check", "join", "state"):
            self._answer(m)
        elif kind == "mute" and listener is not None:
            service.mute(m.room, m.participant, bool(m.fields.get("muted")))
        elif kind == "speech" and listener is not None:
            t = m.fields.get("t")
            if isinstance(t, int | float):
                service.speech(m.room, m.participant, str(m.fields.get("kind")), float(t))
        elif kind == "leave" and listener is not None:
            del self.listeners[m.conn]
            service.leave(m.room, m.participant, listener, lost=bool(m.fields.get("lost")))

    def _answer(self, m: RelayMessage) -> None:
        reply_to = m.fields.get("reply_to")
        if not isinstance(reply_to, str):
            return
        out: dict[str, Any] = {"req": m.fields.get("req")}
        try:
            out["state"] = self._request(m, reply_to)
        except RoomError as exc:
            out["error"] = {"code": exc.code, "message": exc.message}
        self.send(reply_to, RelayMessage("reply", m.room, m.participant, m.conn, fields=out))

    def _request(self, m: RelayMessage, gateway: str) -> dict[str, Any] | None:
        service, f = self.service, m.fields
        if m.kind == "state":
            return service.snapshot(m.room, stats=True)
        if m.kind == "check":
            service.check(m.room, m.participant, resume=bool(f.get("resume")))
            return None
        listener = RemoteListener(self, gateway, m.room, m.participant, m.conn)
        key = f.get("key")
        state = service.join(m.room, m.participant, stream=str(f.get("stream")),
                             rate=f.get("rate"),  # type: ignore[arg-type]  # checked there
                             channels=f.get("channels"),  # type: ignore[arg-type]
                             offset=f.get("offset"),  # type: ignore[arg-type]
                             key=key if isinstance(key, str) else None, conn=listener,
                             mix="s16" if f.get("mix") == "s16" else "opus")
        self.listeners[m.conn] = listener
        self._claimed.setdefault(m.room, time.monotonic())
        return state

    # -- leases and liveness -----------------------------------------------------------------
    async def _lease_loop(self) -> None:
        period = min(1.0, self.lease_ttl / 3)
        while True:
            await asyncio.sleep(period)
            try:
                await self._lease_pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("relay: lease renewal failed: %s", exc)

    async def _lease_pass(self) -> None:
        now = time.monotonic()
        live = set(self.service.names())
        # the holder's side: seats whose gateway went quiet count as lost connections
        for conn, listener in list(self.listeners.items()):
            if listener.room not in live:
                del self.listeners[conn]
            elif now - listener.last_seen > self.lost_after:
                del self.listeners[conn]
                self.service.leave(listener.room, listener.participant, listener, lost=True)
        # the participant's side: tell each holder its seats are still here
        for seat in list(self.seats.values()):
            self.send(seat.holder, RelayMessage("alive", seat.room, seat.participant,
                                                seat.conn))
        # the keys of the rooms held here
        for room in live:
            self._claimed.setdefault(room, now)
        for room, since in list(self._claimed.items()):
            key = self.keys.room_holder(room)
            if room in live or now - since < 2 * self.lease_ttl:  # a join on its way
                await self.redis.eval(_RENEW, 1, key, self.name,
                                      int(self.lease_ttl * 1000))
            else:  # the room ended here
                del self._claimed[room]
                await self.redis.eval(_RELEASE, 1, key, self.name)
