"""Recognise events a takeover replays, so that users see each one once (pure, no I/O).

Delivery on the bus is at-least-once: a worker that takes a stream over replays it from
the last entry the previous worker acknowledged, and a fresh processor finds the same
things again. Every event has an identity — (stream, processor, stream time) — and a
:class:`Deduper` per (stream, processor) keeps what was already delivered:

* ``speech_start`` / ``speech_end`` pair up: a start is new only outside speech and after
  the last delivered end; an end only inside speech and after the last delivered end. A
  replayed utterance is therefore dropped whole, and an utterance the previous worker had
  started but not ended gets exactly one end (whose ``start`` is the replay's: the one
  thing a takeover may move, by the VAD's window at most).
* final ``transcript``: new only when it ends after the last delivered final; interims of
  already finalized speech are dropped too.
* any other event stamped ``t`` (``level``, ``spectrogram``, a user's processor): new only
  when later than the last one of its type delivered.
* events without ``t``, and ``lag``, ``dropped``, ``error``, ``warning``: always delivered.

The state is a small JSON-able dict (``state()`` / ``Deduper(state)``), kept on the bus so
that the next worker continues it.
"""

from __future__ import annotations

from typing import Any

ALWAYS = frozenset({"lag", "dropped", "error", "warning"})
EPS = 1e-6


class Deduper:
    def __init__(self, state: dict[str, Any] | None = None) -> None:
        s = state or {}
        self.in_speech: bool = bool(s.get("in_speech", False))
        self.last_end: float = float(s.get("last_end", -1.0))
        self.last_final: float = float(s.get("last_final", -1.0))
        self.hwm: dict[str, float] = {k: float(v) for k, v in (s.get("hwm") or {}).items()}
        self.changed = False

    def state(self) -> dict[str, Any]:
        return {"in_speech": self.in_speech, "last_end": self.last_end,
                "last_final": self.last_final, "hwm": dict(self.hwm)}

    def admit(self, event: dict[str, Any]) -> bool:
        """True when ``event`` is new (and remember it); False for a replayed one."""
        kind = event.get("type")
        t = event.get("t")
        if kind in ALWAYS or not isinstance(t, int | float) or isinstance(t, bool):
            return True
        if kind == "speech_start":
            if self.in_speech or t <= self.last_end + EPS:
                return False
            self.in_speech = True
        elif kind == "speech_end":
            end = float(event.get("end", t))
            if not self.in_speech or end <= self.last_end + EPS:
                return False
            self.in_speech, self.last_end = False, end
        elif kind == "transcript":
            end = float(event.get("end", t))
            if end <= self.last_final + EPS:
                return False
            if event.get("final"):
                self.last_final = end
        else:
            key = str(kind)
            if t <= self.hwm.get(key, -1.0) + EPS:
                return False
            self.hwm[key] = float(t)
        self.changed = True
        return True

    def filter(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if self.admit(e)]
