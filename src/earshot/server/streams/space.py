"""Free space on the data directory's filesystem: a core (numbers and time passed in).

- ``ok``: new streams are admitted.
- ``low``: free space is below ``--min-free-space``; new streams are refused with
  ``storage_full`` (close 1013) before the disk is actually full, while the streams held
  (and resumes) go on into the reserve.
- ``full``: a write failed for lack of space (ENOSPC, EDQUOT); that stream was told
  ``storage_full`` (1013) and left resumable; new streams and resumes are refused until the
  free space is back above the reserve (at least 1 MiB), which is noticed by itself.

Transitions are logged once each (one clear line, not a traceback per write).
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

OK, LOW, FULL = "ok", "low", "full"
STATES = (OK, LOW, FULL)
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
RECOVER_MIN = 1 << 20  # after a failed write, space counts as back from 1 MiB (or the reserve)

log = logging.getLogger("earshot.storage")


def is_no_space(exc: BaseException) -> bool:
    """An OSError for a full disk or quota, or a database error saying so (SQLite)."""
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        return True
    text = str(exc).lower()
    return "disk is full" in text or "no space left" in text or "quota exceeded" in text


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


@dataclass
class Space:
    """What the hub knows of the data directory's free space."""

    min_free: int = 0
    where: str = ""
    free: int | None = None
    state: str = OK
    checked: float = -1e9
    period: float = 1.0  # seconds between statvfs calls

    def due(self, now: float) -> bool:
        return now - self.checked >= self.period

    def update(self, free: int, now: float) -> str:
        """A fresh measurement; returns the state (logging a change)."""
        self.free, self.checked = free, now
        before = self.state
        if before == FULL:
            if free >= max(self.min_free, RECOVER_MIN):
                self.state = LOW if free < self.min_free else OK
        else:
            self.state = LOW if free < self.min_free else OK
        if self.state != before:
            if self.state == LOW:
                log.error("storage low on %s: %s free, below --min-free-space %s; refusing "
                          "new streams until space is freed", self.where, mib(free),
                          mib(self.min_free))
            elif self.state == OK:
                log.warning("storage: space is back on %s (%s free); admitting new streams",
                            self.where, mib(free))
        return self.state

    def write_failed(self, what: str) -> None:
        """A write found the disk full."""
        if self.state != FULL:
            log.error("storage full on %s (%s): streams are told storage_full and stay "
                      "resumable; new streams are refused until space is freed",
                      self.where, what)
        self.state = FULL

    def refusal(self, *, resume: bool) -> str | None:
        """Why a start is refused now, or None. Resumes go on while the disk is just low."""
        if self.state == FULL:
            return f"the server's disk is full ({self.where}); try again later"
        if self.state == LOW and not resume:
            return (f"the server's disk is nearly full ({mib(self.free or 0)} free, below its "
                    f"reserve of {mib(self.min_free)}); try again later")
        return None

    def report(self) -> dict[str, object]:
        return {"state": self.state, "free_bytes": self.free, "min_free_bytes": self.min_free}
