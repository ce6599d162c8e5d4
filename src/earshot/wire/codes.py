"""Every error code, warning code and WebSocket close code earshot speaks, in one place.

Codes are :class:`enum.StrEnum` members, so they compare equal to the strings on the wire
(``Code.STORAGE_FULL == "storage_full"``) and serialize as them. What a client should do
after each one is said here once:

* :data:`FATAL_CLOSE` — the error codes after which the connection cannot go on, with the
  close code the server sends;
* :data:`RETRYABLE` — reconnect and resume the stream; :data:`BUSY` — of those, the busy
  server's refusals: back off longer (jittered), without an attempt limit;
* everything else is final for the stream.

The page's JavaScript reads the same tables from ``/web/codes.json``, generated from this
module (:func:`codes_json`; ``python -m earshot.wire.codes`` prints it) and checked by a
test to be up to date.
"""

from __future__ import annotations

import enum
import json
from typing import Any


class Close(enum.IntEnum):
    """WebSocket close codes: 1000-1013 are RFC 6455's, 44xx mirror HTTP statuses."""

    NORMAL = 1000
    GOING_AWAY = 1001  # shutting_down: the server restarts; resume shortly
    INVALID_PAYLOAD = 1007  # a text message that is not UTF-8
    POLICY = 1008  # refused by the connection guard (rate limits, origins)
    TOO_BIG = 1009  # message_too_large
    INTERNAL = 1011  # internal: resume to go on
    TRY_AGAIN_LATER = 1013  # server_full, storage_full: back off and retry
    BAD_REQUEST = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    NOT_FOUND = 4404
    CONFLICT = 4409


class Code(enum.StrEnum):
    """Error and warning codes (the ``code`` of ``error`` and ``warning`` messages)."""

    # -- the ingest protocol ----------------------------------------------------------------
    INVALID_JSON = "invalid_json"  # a text message that is not a JSON object
    UNKNOWN_TYPE = "unknown_type"  # a message type the endpoint does not take
    BAD_START = "bad_start"  # a start field out of its type or range
    BAD_STOP = "bad_stop"
    ALREADY_STARTED = "already_started"
    NOT_STARTED = "not_started"  # audio or stop before a successful start
    AFTER_STOP = "after_stop"  # audio after stop (ignored)
    MESSAGE_TOO_LARGE = "message_too_large"
    UNSUPPORTED_FORMAT = "unsupported_format"
    UNSUPPORTED_RATE = "unsupported_rate"
    UNSUPPORTED_CHANNELS = "unsupported_channels"
    BAD_OPUS = "bad_opus"  # a packet libopus cannot decode
    GAP = "gap"  # the client would continue past what the server holds
    # -- credentials and streams ------------------------------------------------------------
    UNAUTHORIZED = "unauthorized"  # no credentials, or wrong ones
    FORBIDDEN = "forbidden"  # credentials that do not grant this
    BAD_RESUME_TOKEN = "bad_resume_token"
    UNKNOWN_STREAM = "unknown_stream"
    STREAM_FINISHED = "stream_finished"
    STREAM_BUSY = "stream_busy"  # held by another gateway that did not let go
    RESUME_MISMATCH = "resume_mismatch"  # a resume with another rate or channel count
    SUPERSEDED = "superseded"  # this stream was resumed by another connection
    # -- the server's state -----------------------------------------------------------------
    INTERNAL = "internal"
    SHUTTING_DOWN = "shutting_down"
    SERVER_FULL = "server_full"
    STORAGE_FULL = "storage_full"
    RATE_LIMITED = "rate_limited"
    HOST_NOT_ALLOWED = "host_not_allowed"  # a Host header other than the server's names
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"  # a browser origin not allowed to connect
    # -- subscribers and workers ------------------------------------------------------------
    BAD_EVENT = "bad_event"
    UNEXPECTED_BINARY = "unexpected_binary"
    # -- calls (server/rooms; the cores' RoomError codes that reach the wire) ---------------
    INVALID_ROOM = "invalid_room"  # a room name that breaks the rules
    INVALID_NAME = "invalid_name"  # a participant name that does
    ROOM_FULL = "room_full"
    NAME_TAKEN = "name_taken"  # seated already, and not resuming
    ALREADY_SEATED = "already_seated"  # that stream holds another seat
    TOO_MANY_ROOMS = "too_many_rooms"
    ROOM_ENDED = "room_ended"
    NO_ROOM = "no_room"
    NOT_IN_ROOM = "not_in_room"
    ROOM_UNREACHABLE = "room_unreachable"  # held by another gateway that did not answer
    HELD_ELSEWHERE = "held_elsewhere"  # a room's call under way on another gateway
    # -- events about a stream (errors and warnings) ----------------------------------------
    PROCESSOR_FAILED = "processor_failed"
    PROCESSOR_UNAVAILABLE = "processor_unavailable"
    PROCESSOR_TIMEOUT = "processor_timeout"
    FILTER_UNAVAILABLE = "filter_unavailable"
    SEGMENT_FAILED = "segment_failed"
    PARTIAL_FRAME = "partial_frame"
    LENGTH_IGNORED = "length_ignored"
    NON_FINITE = "non_finite"
    CLIPPED = "clipped"


#: error code → close code, for errors after which the connection cannot go on (keyed by
#: Code members, which are looked up by their strings too)
FATAL_CLOSE: dict[str, Close] = {
    Code.NOT_STARTED: Close.BAD_REQUEST,
    Code.BAD_OPUS: Close.BAD_REQUEST,
    Code.GAP: Close.BAD_REQUEST,
    Code.RESUME_MISMATCH: Close.BAD_REQUEST,
    Code.MESSAGE_TOO_LARGE: Close.TOO_BIG,
    Code.UNAUTHORIZED: Close.UNAUTHORIZED,
    Code.FORBIDDEN: Close.FORBIDDEN,
    Code.BAD_RESUME_TOKEN: Close.FORBIDDEN,
    Code.UNKNOWN_STREAM: Close.NOT_FOUND,
    Code.STREAM_FINISHED: Close.CONFLICT,
    Code.SUPERSEDED: Close.CONFLICT,
    Code.INTERNAL: Close.INTERNAL,
    Code.SHUTTING_DOWN: Close.GOING_AWAY,
    Code.SERVER_FULL: Close.TRY_AGAIN_LATER,
    Code.STORAGE_FULL: Close.TRY_AGAIN_LATER,
}

#: error codes after which a client should reconnect and resume (everything else is final)
RETRYABLE = frozenset({Code.INTERNAL, Code.SHUTTING_DOWN, Code.SERVER_FULL,
                       Code.STORAGE_FULL})
#: retryable refusals of a busy server: clients back off longer (jittered), without a limit
BUSY = frozenset({Code.SHUTTING_DOWN, Code.SERVER_FULL, Code.STORAGE_FULL})
#: close codes after which a client must not reconnect (with every 44xx)
FINAL_CLOSES = frozenset({Close.POLICY, Close.TOO_BIG})


def final_close(code: int | None) -> bool:
    """A close code after which reconnecting cannot help (every 44xx, 1008, 1009)."""
    return code is not None and (4400 <= code < 4500 or code in FINAL_CLOSES)


_CODE_VALUES = frozenset(str(c) for c in Code)


def metric_code(code: object) -> str:
    """A metric label for an event's ``code``: the code when it is one of :class:`Code`,
    else ``"other"`` (label values come from this fixed set, whatever a client sends)."""
    return code if isinstance(code, str) and code in _CODE_VALUES else "other"


def codes_json() -> dict[str, Any]:
    """The tables above for the page's JavaScript (``/web/codes.json``)."""
    return {
        "close": {c.name: int(c) for c in Close},
        "codes": [str(c) for c in Code],
        "fatal": {str(k): int(v) for k, v in FATAL_CLOSE.items()},
        "retryable": sorted(str(c) for c in RETRYABLE),
        "busy": sorted(str(c) for c in BUSY),
        "final_closes": sorted(int(c) for c in FINAL_CLOSES),
    }


def render() -> str:
    """``codes.json`` as committed under ``earshot/web/``."""
    return json.dumps(codes_json(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
