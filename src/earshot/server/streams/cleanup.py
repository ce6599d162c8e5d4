"""Voice cleanup on the server: which filters a stream gets, and for whom.

A stream's filters are its ``start``'s ``filters`` list, or the server's ``--filters``
(``Settings.filters``) when the start names none (``"filters": []`` asks for none). The
filtered audio (:class:`~earshot.dsp.cleanup.AlignedCleanup`, stamped with stream time) goes
to relay listeners (PCM and Opus) and to the processors named by ``--filter-processors``
(default ``asr`` and ``vad``); the other processors and the archive get what the client sent.
A filter whose library is missing is left out with a ``warning`` (``filter_unavailable``,
naming the extra to install); the stream goes on.
"""

from __future__ import annotations

from typing import Any

from earshot.config import Settings
from earshot.dsp.cleanup import AlignedCleanup, FilterSpec, check_available, parse_filters
from earshot.errors import MissingDependency
from earshot.processors.base import Event
from earshot.wire.codes import Code


def open_cleanup(settings: Settings, requested: tuple[FilterSpec, ...] | None, rate: int,
                 channels: int, offset: int) -> tuple[AlignedCleanup | None, list[Event]]:
    """The stream's filter chain (None without filters) and warnings for its client."""
    specs = parse_filters(settings.processing.filters) if requested is None else requested
    warnings: list[Event] = []
    usable = []
    for spec in specs:
        try:
            check_available([spec])
        except MissingDependency as exc:
            warnings.append({"type": "warning", "code": Code.FILTER_UNAVAILABLE,
                             "filter": spec.name, "message": f"{exc}; the stream goes on "
                                                             f"without the {spec.name} filter"})
            continue
        usable.append(spec)
    if not usable:
        return None, warnings
    return AlignedCleanup(usable, rate, channels, offset), warnings


def filtered_processors(settings: Settings, cleanup: Any) -> frozenset[str]:
    """Names of the processors that get the filtered audio (none without filters)."""
    return frozenset(settings.processing.filter_processors) if cleanup is not None else frozenset()
