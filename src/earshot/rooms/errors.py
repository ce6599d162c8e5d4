"""The errors of calls: one class, a stable machine-readable ``code`` on each."""

from __future__ import annotations

from earshot.errors import EarshotError

__all__ = ["RoomError"]


class RoomError(EarshotError):
    """A room operation that cannot be done; ``code`` is stable (for the wire and the JS):

    ``invalid_room`` (a room name that breaks the rules), ``invalid_name`` (a participant
    name that does), ``room_full``, ``name_taken``, ``too_many_rooms``, ``room_ended``,
    ``not_in_room``, ``bad_audio`` (samples of the wrong shape, type or value),
    ``bad_time`` (a time that is not finite or goes backwards).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
