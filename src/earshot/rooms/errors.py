"""The errors of calls: one class, a stable machine-readable ``code`` on each."""

from __future__ import annotations

from earshot.errors import EarshotError

__all__ = ["RoomError"]


class RoomError(EarshotError):
    """A room operation that cannot be done; ``code`` is stable (for the wire and the JS):

    ``invalid_room`` (a room name that breaks the rules), ``invalid_name`` (a participant
    name that does), ``room_full``, ``name_taken`` (seated already, and not resuming),
    ``already_seated`` (that stream holds another seat), ``too_many_rooms``,
    ``room_ended``, ``no_room``, ``not_in_room``, ``bad_stream`` (a stream id, rate or
    offset that is not one), ``bad_event`` (not a VAD event), ``bad_limits``,
    ``bad_audio`` (samples or settings of the wrong shape, type or value), ``bad_time``
    (a time that is not finite or goes backwards), ``bad_transcript`` (a final without
    the fields of one).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
