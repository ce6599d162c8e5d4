"""What the metadata stores keep, and the interface every store implements.

:class:`StreamRecord` and :class:`SegmentRecord` are the rows; :class:`MetadataStore` is
the interface (:class:`~earshot.storage.metadata.sqlite.SqliteStore`,
:class:`~earshot.storage.metadata.postgres.PostgresStore`); the helpers at the end are the
row logic both stores share.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from earshot.errors import StorageError, StreamNotFound

StreamState = Literal["live", "interrupted", "finished"]


@dataclass(slots=True)
class StreamRecord:
    id: str
    name: str | None
    created: float
    format: str  # wire sample format: s16 | f32
    archive_format: str
    rate: int
    channels: int
    path: str  # archive file, relative to the data directory
    token_hash: str
    frames: int = 0
    state: StreamState = "live"
    ended: float | None = None
    client: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.frames / self.rate

    def public(self) -> dict[str, Any]:
        """The record as served over REST (no secrets)."""
        d = asdict(self)
        d.pop("token_hash")
        d["duration"] = round(self.duration, 6)
        return d


@dataclass(slots=True)
class SegmentRecord:
    stream: str
    n: int
    start: int  # frames, at the stream's rate
    end: int
    rate: int
    path: str  # relative to the data directory
    created: float

    def public(self) -> dict[str, Any]:
        return {
            "segment": self.n, "start": self.start / self.rate, "end": self.end / self.rate,
            "duration": (self.end - self.start) / self.rate, "start_frame": self.start,
            "end_frame": self.end, "url": f"/api/streams/{self.stream}/segments/{self.n}/audio",
        }


@dataclass(slots=True)
class PartRecord:
    """One part of a stream's archive as the cluster knows it (issue 23): made when a
    gateway starts a part after the first, completed once the file is in the object store
    (``name``: its path relative to the data directory, also its key under the store's
    prefix; ``uploaded`` None until then)."""

    stream: str
    n: int
    start: int  # stream frame of its first frame
    gateway: str = ""
    name: str | None = None
    size: int | None = None
    frames: int | None = None
    sha256: str | None = None
    etag: str | None = None
    uploaded: float | None = None


#: the columns of the archive_parts table, in order
PART_COLUMNS = ("stream", "n", "start", "gateway", "name", "size", "frames", "sha256", "etag",
                "uploaded")


class MetadataStore(Protocol):
    """Stream metadata, segments, transcripts and event claims of a server or a cluster.

    Every method is short, synchronous and thread-safe (REST handlers call from a thread
    pool). Several processes, even on several machines (PostgreSQL), may share one store:
    whatever must be unique across them is made so by the database, never by process
    memory. Database failures raise :class:`~earshot.errors.StorageError`.
    """

    def create(self, rec: StreamRecord) -> None:
        """Insert a new stream. Raises :class:`~earshot.errors.DuplicateStream` if the id
        is taken (by any process): the caller retries with a new id."""
        ...

    def get(self, stream_id: str) -> StreamRecord:
        """One stream; :class:`~earshot.errors.StreamNotFound` if there is none."""
        ...

    def list(self, *, limit: int, offset: int) -> tuple[builtins.list[StreamRecord], int]:
        """A page of streams, newest first, and the total count."""
        ...

    def update(self, stream_id: str, **fields: Any) -> None:
        """Set fields of a stream (:class:`StreamRecord` names; ValueError for others)."""
        ...

    def delete(self, stream_id: str) -> None:
        """Remove a stream with its segments, transcripts and claimed events."""
        ...

    def with_state(self, state: StreamState) -> builtins.list[StreamRecord]: ...

    def allocate_segment(self, stream_id: str) -> int:
        """The next segment number of a stream, 0, 1, 2, …: an atomic counter in the
        database, so no two calls (in any processes) get the same number. Numbers are
        never handed out twice, even if the segment is then not stored (a gap).
        :class:`~earshot.errors.StreamNotFound` for an unknown stream."""
        ...

    def add_segment(self, seg: SegmentRecord) -> None:
        """Store a segment under a number from :meth:`allocate_segment`; StorageError if
        that number is stored already, StreamNotFound for an unknown stream."""
        ...

    def segments(self, stream_id: str) -> builtins.list[SegmentRecord]:
        """The segments of a stream in number order."""
        ...

    def claim_event(self, stream_id: str, key: str) -> bool:
        """Record an event identity, e.g. ``"vad:speech_end:123456"`` (processor, type,
        stream offset); True only for the first claim of that key by any process, False
        for every later one. This is how a cluster emits each segment, ``speech_end`` or
        final transcript once after a worker takeover replays audio. Claims are deleted
        with the stream. StreamNotFound for an unknown stream."""
        ...

    def add_transcript(self, stream_id: str, final: dict[str, Any]) -> None:
        """Store a final transcript, idempotent by (stream, segment): a later final of
        the same segment replaces it."""
        ...

    def transcripts(self, stream_id: str) -> builtins.list[dict[str, Any]]:
        """Stored finals in time order: segment, start, end, text, words."""
        ...

    def add_part(self, stream_id: str, n: int, start: int, gateway: str = "") -> bool:
        """Claim part ``n`` of a stream's archive, starting at stream frame ``start``: True
        for the first claim by any process, False if the part is known already (the
        caller picks the next number). StreamNotFound for an unknown stream."""
        ...

    def part_uploaded(self, part: PartRecord) -> None:
        """Record that a part's file is in the object store (its row made if need be; an
        existing row keeps its start)."""
        ...

    def parts(self, stream_id: str) -> builtins.list[PartRecord]:
        """The known parts of a stream's archive, in order."""
        ...

    def close(self) -> None: ...


#: the columns of the streams table, in order
COLUMNS = (
    "id", "name", "created", "format", "archive_format", "rate", "channels", "path",
    "token_hash", "frames", "state", "ended", "client",
)


def update_fields(fields: dict[str, Any], mark: str,
                   encode: Callable[[Any], Any]) -> tuple[str, list[Any]]:
    """``col=mark,…`` and the values of an update (names checked, ``client`` encoded)."""
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown stream fields: {sorted(unknown)}")
    if not fields:
        raise ValueError("no stream fields to update")
    values = [encode(v) if k == "client" else v for k, v in fields.items()]
    return ",".join(f"{k}={mark}" for k in fields), values


def transcript_values(final: dict[str, Any]) -> tuple[int, float, float, str, Any]:
    return (int(final["segment"]), float(final["start"]), float(final["end"]),
            str(final["text"]), final.get("words", []))


def segment_conflict(store: MetadataStore, seg: SegmentRecord) -> StorageError:
    try:
        store.get(seg.stream)
    except StreamNotFound as exc:
        return exc
    return StorageError(f"stream {seg.stream}: segment {seg.n} is stored already")
