"""Stream audio over HTTP: ``GET /api/streams/{id}/audio`` (whole, or ``?start=S&end=E``)
and ``/api/sources/{name}/audio``: the HTTP side of storage.ranges and storage.parts.

Every reader goes through the archive's parts (storage/parts.py), so a stream rotated into
parts reads as one file: one offset space, one WAV out."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from fastapi.responses import Response, StreamingResponse

from earshot.errors import StorageError
from earshot.storage import parts as P
from earshot.storage.metadata import StreamRecord
from earshot.storage.ranges import RangeError, frame_range, stitch_plan


def content_disposition(filename: str) -> str:
    """``attachment`` with ``filename`` twice (RFC 6266): an ASCII fallback (anything else,
    quotes, backslashes and controls made ``_``) and the exact name as RFC 5987
    ``filename*=UTF-8''…``. Header values are Latin-1: a raw non-Latin name was a 500, and
    a raw ``"`` could end the quoted name early."""
    from urllib.parse import quote

    fallback = re.sub(r'[^\x20-\x7e]|["\\]', "_", filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def start_time(rec: StreamRecord) -> float:
    """Wall time of a stream's first frame: its ``client.captured_at`` when that is a
    finite number (spooled streams carry it), else when the server created it."""
    try:
        t = float((rec.client or {}).get("captured_at", rec.created))
    except (TypeError, ValueError):
        return rec.created
    return t if math.isfinite(t) and 0 <= t < 1e11 else rec.created


def _load(path: Path) -> list[P.Part]:
    try:
        parts = P.load(path)
        P.kind(parts)
    except FileNotFoundError:
        raise HTTPException(410, f"the archive {path.name} is gone") from None
    except StorageError as exc:
        raise HTTPException(409, str(exc)) from None
    return parts


def range_response(path: Path, start: float | None, end: float | None,
                   filename: str, parts: list[P.Part] | None = None) -> Response:
    """A streamed WAV of the range with ``X-Earshot-Range: first-frame end-frame``; 400
    for a bad range, 416 for one beyond the archive. Across parts as one archive
    (``parts``: already loaded, e.g. some in the object store)."""
    parts = _load(path) if parts is None else parts
    encoding, rate, channels = P.kind(parts)
    try:
        first, stop = frame_range(start, end, rate, P.total_frames(parts))
    except RangeError as exc:
        raise HTTPException(416 if exc.beyond else 400, str(exc)) from None
    length = (stop - first) * parts[0].frame_bytes
    head = P.wav_header(encoding, rate, channels, length)
    name = f"{Path(filename).stem}-{first}-{stop}.wav"
    headers = {"Content-Disposition": content_disposition(name),
               "X-Earshot-Range": f"{first} {stop}",
               "Content-Length": str(len(head) + length)}

    def body() -> Iterator[bytes]:
        yield head
        yield from P.iter_frames(parts, first, stop)

    return StreamingResponse(body(), media_type="audio/wav", headers=headers)


_BYTES = re.compile(r"^bytes=(\d*)-(\d*)$")


def byte_range(range_header: str | None, size: int,
               headers: dict[str, str]) -> tuple[int, int, int]:
    """A single HTTP ``Range: bytes=`` of a body of ``size`` bytes: ``(lo, hi, status)``,
    bytes ``[lo, hi)``, Content-Range and Content-Length set in ``headers``; 416 when it
    cannot be satisfied."""
    lo, hi = 0, size  # bytes [lo, hi)
    status = 200
    m = _BYTES.match((range_header or "").strip())
    if m and (m.group(1) or m.group(2)):
        if m.group(1):
            lo = int(m.group(1))
            hi = min(size, int(m.group(2)) + 1) if m.group(2) else size
        else:  # the last N bytes
            lo = max(0, size - int(m.group(2)))
        if lo >= size or hi <= lo:
            raise HTTPException(416, "range not satisfiable",
                                headers={"Content-Range": f"bytes */{size}"})
        status = 206
        headers["Content-Range"] = f"bytes {lo}-{hi - 1}/{size}"
    headers["Content-Length"] = str(hi - lo)
    return lo, hi, status


def remote_file_response(obj: P.RemoteFile, filename: str, media: str,
                         range_header: str | None) -> Response:
    """A one-file archive that is only in the object store, byte for byte as it was
    uploaded; a ``Range`` is one ranged GET of exactly those bytes."""
    headers = {"Content-Disposition": content_disposition(filename),
               "Accept-Ranges": "bytes"}
    lo, hi, status = byte_range(range_header, obj.size, headers)
    return StreamingResponse(obj.iter_range(lo, hi), status_code=status, media_type=media,
                             headers=headers)


def whole_response(path: Path, filename: str, range_header: str | None,
                   parts: list[P.Part] | None = None) -> Response:
    """The whole archive of a stream rotated into parts, as one WAV (RF64 past 4 GiB),
    stitched on the fly; a single HTTP ``Range: bytes=`` is honoured (206)."""
    parts = _load(path) if parts is None else parts
    encoding, rate, channels = P.kind(parts)
    fb = parts[0].frame_bytes
    frames = P.total_frames(parts)
    data_len = frames * fb
    head = P.wav_header(encoding, rate, channels, data_len)
    size = len(head) + data_len
    headers = {"Content-Disposition": content_disposition(f"{Path(filename).stem}.wav"),
               "Accept-Ranges": "bytes", "X-Earshot-Parts": str(len(parts))}
    lo, hi, status = byte_range(range_header, size, headers)

    def body() -> Iterator[bytes]:
        if lo < len(head):
            yield head[lo:min(hi, len(head))]
        d0, d1 = max(0, lo - len(head)), hi - len(head)  # data bytes [d0, d1)
        if d1 <= d0:
            return
        f0, f1 = d0 // fb, -(-d1 // fb)
        skip, left = d0 - f0 * fb, d1 - d0
        for chunk in P.iter_frames(parts, f0, f1):
            if skip:
                chunk, skip = chunk[skip:], max(0, skip - len(chunk))
            chunk = chunk[:left]
            left -= len(chunk)
            if chunk:
                yield chunk
            if left <= 0:
                return

    return StreamingResponse(body(), status_code=status, media_type="audio/wav",
                             headers=headers)


def named(store: Any, name: str) -> list[StreamRecord]:
    """Every stream called ``name``. The store has no index by name: it is paged through
    (fine for one device's day)."""
    records: list[StreamRecord] = []
    offset = 0
    while True:
        page, total = store.list(limit=500, offset=offset)
        records += [r for r in page if r.name == name]
        offset += len(page)
        if not page or offset >= total:
            return records


def source_times(t_from: str, t_to: str) -> tuple[float, float]:
    """``from`` and ``to`` (ISO 8601; UTC when no zone is given) as Unix times; 400 if
    either is not one."""
    import datetime as dt

    try:
        a, b = (dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (t_from, t_to))
    except ValueError:
        raise HTTPException(400, "'from' and 'to' must be ISO 8601 times") from None
    a, b = (t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in (a, b))
    return a.timestamp(), b.timestamp()


def source_response(name: str, streams: list[tuple[StreamRecord, Path]], t_from: float,
                    t_to: float, loader: Callable[[StreamRecord, Path], list[P.Part]] | None
                    = None) -> Response:
    """``GET /api/sources/{name}/audio?from=ISO&to=ISO``: every WAV archive of the streams
    named ``name`` (their records and archive paths, live archives' headers already
    synced by the caller, on the event loop) on one wall-clock timeline, silence where
    nothing was captured; the gaps (seconds from ``from``) in ``X-Earshot-Gaps``, the
    streams in ``X-Earshot-Streams``. Reads files: run it in a thread."""
    import json

    if not streams:
        raise HTTPException(404, f"no streams named {name!r}")
    archives: dict[str, list[P.Part]] = {}
    spans = []
    for rec, path in streams:
        if path.suffix != ".wav" or (loader is None and not path.exists()):
            continue  # FLAC/Ogg archives are not stitched (yet)
        try:
            parts = P.load(path) if loader is None else loader(rec, path)
        except (OSError, StorageError):
            continue
        if any(p.path.suffix != ".wav" for p in parts):
            continue
        archives[rec.id] = parts
        start = start_time(rec)
        spans.append((rec.id, start, P.total_frames(parts)))
    try:
        kinds = {P.kind(ps) for ps in archives.values()}
    except StorageError:
        kinds = set()
    if len(kinds) != 1:
        raise HTTPException(409, f"the WAV archives named {name!r} differ in format "
                                 f"({sorted(kinds)}) or there are none")
    encoding, rate, channels = kinds.pop()
    try:
        pieces, gaps = stitch_plan(spans, t_from, t_to, rate)
    except RangeError as exc:
        raise HTTPException(400, str(exc)) from None
    if not any(p.key for p in pieces):  # never a window of silence alone (115 MB an hour)
        raise HTTPException(404, f"no audio of {name!r} between 'from' and 'to'")
    fb = next(iter(archives.values()))[0].frame_bytes
    length = sum(p.frames for p in pieces) * fb
    head = P.wav_header(encoding, rate, channels, length)

    def body() -> Iterator[bytes]:
        yield head
        for p in pieces:
            if p.key is None:
                left = p.frames * fb
                while left:
                    n = min(left, 1 << 16)
                    yield bytes(n)
                    left -= n
                continue
            yield from P.iter_frames(archives[p.key], p.src, p.src + p.frames)

    used = sorted({p.key for p in pieces if p.key})
    headers = {"Content-Length": str(len(head) + length),
               "X-Earshot-Gaps": json.dumps([[round(g0, 6), round(g1, 6)] for g0, g1 in gaps]),
               "X-Earshot-Streams": ",".join(used),
               "Content-Disposition": content_disposition(f"{name[:60]}.wav")}
    return StreamingResponse(body(), media_type="audio/wav", headers=headers)
