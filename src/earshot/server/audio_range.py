"""``GET /api/streams/{id}/audio?start=S&end=E``: the HTTP side of storage.ranges."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from fastapi.responses import Response, StreamingResponse

from earshot.storage.ranges import (
    RangeError,
    WavRange,
    encoded_range,
    iter_range,
    stitch_plan,
    wav_range,
)
from earshot.storage.wav import header, parse_layout


def range_response(path: Path, start: float | None, end: float | None,
                   filename: str) -> Response:
    """A streamed WAV of the range with ``X-Earshot-Range: first-frame end-frame``; 400
    for a bad range, 416 for one beyond the archive."""
    try:
        if path.suffix == ".wav":
            plan = wav_range(path, start, end)
            first, stop = plan.start, plan.end
        else:
            body, first, stop = encoded_range(path, start, end)
    except RangeError as exc:
        raise HTTPException(416 if exc.beyond else 400, str(exc)) from None
    name = f"{Path(filename).stem}-{first}-{stop}.wav"
    headers = {"Content-Disposition": f'attachment; filename="{name}"',
               "X-Earshot-Range": f"{first} {stop}"}
    if path.suffix == ".wav":
        headers["Content-Length"] = str(plan.content_length)
        return StreamingResponse(iter_range(path, plan), media_type="audio/wav",
                                 headers=headers)
    return Response(body, media_type="audio/wav", headers=headers)


def source_response(hub: Any, name: str, t_from: str, t_to: str) -> Response:
    """``GET /api/sources/{name}/audio?from=ISO&to=ISO``: every WAV archive of the streams
    named ``name`` on one wall-clock timeline, silence where nothing was captured; the
    gaps (seconds from ``from``) in ``X-Earshot-Gaps``, the streams in
    ``X-Earshot-Streams``."""
    import datetime as dt
    import json
    import os

    try:
        a, b = (dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (t_from, t_to))
    except ValueError:
        raise HTTPException(400, "'from' and 'to' must be ISO 8601 times") from None
    a, b = (t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in (a, b))
    records, offset = [], 0
    while True:  # the store has no index by name: page through (fine for one device's day)
        page, total = hub.store.list(limit=500, offset=offset)
        records += [r for r in page if r.name == name]
        offset += len(page)
        if not page or offset >= total:
            break
    if not records:
        raise HTTPException(404, f"no streams named {name!r}")
    layouts: dict[str, Any] = {}
    spans = []
    for rec in records:
        live = hub.live.get(rec.id)
        if live is not None:
            live.archive.sync()
        path = hub.path_of(rec)
        if path.suffix != ".wav" or not path.exists():
            continue  # FLAC/Ogg archives are not stitched (yet)
        with open(path, "rb") as f:
            layout = parse_layout(f.read(4096))
            held = (os.fstat(f.fileno()).st_size - layout.data_start) // layout.frame_bytes
        layouts[rec.id] = (path, layout)
        start = float((rec.client or {}).get("captured_at", rec.created))
        spans.append((rec.id, start, held))
    kinds = {(lay.encoding, lay.rate, lay.channels) for _, lay in layouts.values()}
    if len(kinds) != 1:
        raise HTTPException(409, f"the WAV archives named {name!r} differ in format "
                                 f"({sorted(kinds)}) or there are none")
    encoding, rate, channels = kinds.pop()
    try:
        pieces, gaps = stitch_plan(spans, a.timestamp(), b.timestamp(), rate)
    except RangeError as exc:
        raise HTTPException(400, str(exc)) from None
    fb = next(iter(layouts.values()))[1].frame_bytes
    length = sum(p.frames for p in pieces) * fb

    def body() -> Iterator[bytes]:
        yield header(encoding, rate, channels, length)
        for p in pieces:
            if p.key is None:
                left = p.frames * fb
                while left:
                    n = min(left, 1 << 16)
                    yield bytes(n)
                    left -= n
                continue
            path, lay = layouts[p.key]
            plan = WavRange(b"", lay.data_start + p.src * fb, p.frames * fb, p.src,
                            p.src + p.frames, rate)
            parts = iter_range(path, plan)
            next(parts)  # its (empty) header
            yield from parts

    used = sorted({p.key for p in pieces if p.key})
    headers = {"Content-Length": str(len(header(encoding, rate, channels)) + length),
               "X-Earshot-Gaps": json.dumps([[round(g0, 6), round(g1, 6)] for g0, g1 in gaps]),
               "X-Earshot-Streams": ",".join(used),
               "Content-Disposition": f'attachment; filename="{name[:60]}.wav"'}
    return StreamingResponse(body(), media_type="audio/wav", headers=headers)
