"""The errors of calls: one class, a stable machine-readable ``code`` on each."""

from __future__ import annotations

import operator
from typing import SupportsIndex

from earshot.errors import EarshotError

__all__ = ["RoomError", "integer"]


class RoomError(EarshotError):
    """A room operation that cannot be done; ``code`` is stable (for the wire and the JS):

    ``invalid_room`` (a room name that breaks the rules), ``invalid_name`` (a participant
    name that does), ``room_full``, ``name_taken`` (seated already, and not resuming),
    ``already_seated`` (that stream holds another seat), ``too_many_rooms``,
    ``room_ended``, ``no_room``, ``not_in_room``, ``bad_stream`` (a stream id, rate or
    offset that is not one), ``bad_event`` (not a VAD event), ``bad_limits``,
    ``bad_audio`` (samples or settings of the wrong shape, type or value), ``bad_time``
    (a time that is not finite or goes backwards), ``bad_transcript`` (a final without
    the fields of one), ``bad_relay`` (bytes that are not a relay message between
    gateways), ``room_unreachable`` (the room is held by another gateway that did not
    answer).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def integer(name: str, value: object, *, code: str = "bad_audio",
            minimum: int | None = None) -> int:
    """``value`` as an int (bool, float and str are refused), at least ``minimum``; else a
    :class:`RoomError` with ``code`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise RoomError(code, f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise RoomError(code, f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and v < minimum:
        rule = "positive" if minimum == 1 else f">= {minimum}"
        raise RoomError(code, f"{name} must be {rule}, got {v}")
    return v
