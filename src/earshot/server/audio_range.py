"""``GET /api/streams/{id}/audio?start=S&end=E``: the HTTP side of storage.ranges."""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException
from fastapi.responses import Response, StreamingResponse

from earshot.storage.ranges import RangeError, encoded_range, iter_range, wav_range


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
