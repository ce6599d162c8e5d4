"""REST routes: list, inspect, download (with Range) and delete streams; health; metrics."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from earshot import __version__
from earshot.errors import StorageError, StreamNotFound
from earshot.server.auth import presented_token, token_ok
from earshot.server.http.audio_range import (
    content_disposition,
    named,
    range_response,
    source_response,
    source_times,
    whole_response,
)
from earshot.server.streams.hub import Hub
from earshot.storage.archive import MEDIA_TYPES
from earshot.storage.parts import is_rotated
from earshot.storage.peaks import peaks

STREAM_ID = re.compile(r"^[0-9a-z]{6,40}$")


def hub_of(request: Request) -> Hub:
    return request.app.state.hub  # type: ignore[no-any-return]


def require_token(request: Request) -> None:
    expected = request.app.state.settings.security.token
    if not token_ok(expected, presented_token(request.headers, request.query_params)):
        raise HTTPException(
            401, "missing or wrong token", headers={"WWW-Authenticate": 'Bearer realm="earshot"'}
        )


HubDep = Annotated[Hub, Depends(hub_of)]
api = APIRouter(prefix="/api", tags=["streams"], dependencies=[Depends(require_token)])
ops = APIRouter(tags=["operations"])


def _record(hub: Hub, stream_id: str) -> Any:
    if not STREAM_ID.match(stream_id):
        raise HTTPException(404, f"no stream {stream_id!r}")
    try:
        return hub.record(stream_id)
    except StreamNotFound:
        raise HTTPException(404, f"no stream {stream_id!r}") from None


@api.get("/streams", summary="List streams, newest first")
async def list_streams(
    request: Request,
    hub: HubDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1 << 40)] = 0,
) -> dict[str, Any]:
    records, total = hub.store.list(limit=limit, offset=offset)
    items = [hub.record(r.id).public() if hub.is_live(r.id) else r.public() for r in records]
    for item in items:  # what the client said of itself: in the stream's own record only
        item.pop("client", None)
    nxt = None
    if offset + limit < total:
        nxt = str(request.url.include_query_params(limit=limit, offset=offset + limit))
    return {"streams": items, "total": total, "limit": limit, "offset": offset, "next": nxt}


@api.get("/streams/{stream_id}", summary="One stream's metadata")
async def get_stream(stream_id: str, hub: HubDep) -> dict[str, Any]:
    rec = _record(hub, stream_id)
    out: dict[str, Any] = rec.public()
    out["audio_url"] = f"/api/streams/{rec.id}/audio"
    return out


@api.get(
    "/streams/{stream_id}/audio",
    summary="The stream's archive (WAV, or FLAC when so configured); supports HTTP Range",
    response_class=FileResponse,
)
async def get_audio(stream_id: str, hub: HubDep, request: Request,
              start: Annotated[float | None, Query(ge=0, le=1e9, allow_inf_nan=False,
                                                   description="stream seconds")] = None,
              end: Annotated[float | None, Query(gt=0, le=1e9, allow_inf_nan=False,
                                                 description="stream seconds")] = None,
              ) -> Response:
    rec = _record(hub, stream_id)
    hub.sync_archive(rec.id)  # make the header match what is on disk right now
    path = hub.path_of(rec)
    if not path.exists():
        raise HTTPException(410, f"the archive of stream {rec.id} is gone")
    media = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
    stem = re.sub(r"(?a)[^\w.-]+", "_", re.sub(r"\.\w{1,5}$", "", rec.name or ""))[:60].strip("._")
    filename = f"{stem + '-' if stem else ''}{rec.id}{path.suffix}"
    if start is not None or end is not None:  # ?start=S&end=E: that range as a WAV
        return range_response(path, start, end, filename)
    if is_rotated(path):  # parts: one WAV stitched on the fly (RF64 past 4 GiB)
        return whole_response(path, filename, request.headers.get("range"))
    return FileResponse(path, media_type=media, filename=filename)


@api.get("/sources/{name}/audio", summary="All streams of one name, stitched by wall clock",
         response_class=FileResponse)
async def get_source_audio(name: str, hub: HubDep,
                           from_: Annotated[str, Query(alias="from")], to: str) -> Response:
    t_from, t_to = source_times(from_, to)
    streams = []
    for rec in named(hub.store, name):  # live state is read here, on the event loop
        if hub.is_live(rec.id):
            hub.sync_archive(rec.id)
            rec = hub.record(rec.id)
        streams.append((rec, hub.path_of(rec)))
    return await asyncio.to_thread(source_response, name, streams, t_from, t_to)


@api.get("/streams/{stream_id}/peaks", summary="Waveform peaks for drawing: min/max per column")
async def get_peaks(stream_id: str, hub: HubDep,
                    width: Annotated[int, Query(ge=1, le=4000)] = 800) -> dict[str, Any]:
    rec = _record(hub, stream_id)
    hub.sync_archive(rec.id)
    path = hub.path_of(rec)
    if not path.exists():
        raise HTTPException(410, f"the archive of stream {rec.id} is gone")
    try:
        lo, hi, frames = await asyncio.to_thread(peaks, path, width)
    except FileNotFoundError:
        raise HTTPException(410, f"the archive of stream {rec.id} is gone") from None
    except StorageError as exc:  # e.g. being finalized (storage/parts.py)
        raise HTTPException(409, str(exc)) from None
    return {"stream": rec.id, "width": width, "duration": frames / rec.rate,
            "min": lo, "max": hi}


@api.get("/streams/{stream_id}/segments", summary="Speech segments found by the VAD")
async def list_segments(stream_id: str, hub: HubDep) -> dict[str, Any]:
    rec = _record(hub, stream_id)
    return {"stream": rec.id, "segments": [s.public() for s in hub.store.segments(rec.id)]}


@api.get("/streams/{stream_id}/segments/{n}/audio", summary="One speech segment as WAV",
         response_class=FileResponse)
async def get_segment_audio(stream_id: str, n: int, hub: HubDep) -> FileResponse:
    rec = _record(hub, stream_id)
    seg = next((s for s in hub.store.segments(rec.id) if s.n == n), None)
    if seg is None:
        raise HTTPException(404, f"stream {rec.id} has no segment {n}")
    path = hub.settings.server.data_dir / seg.path
    if not path.exists():
        raise HTTPException(410, f"segment {n} of stream {rec.id} is gone")
    return FileResponse(path, media_type="audio/wav", filename=f"{rec.id}-segment{n:04d}.wav")


@api.get("/streams/{stream_id}/transcript",
         summary="Final transcripts: JSON, or ?format=srt|vtt|txt",
         responses={200: {"content": {"application/json": {}, "application/x-subrip": {},
                                      "text/vtt": {}, "text/plain": {}}}})
async def get_transcript(stream_id: str, hub: HubDep,
                   format: Annotated[str, Query(pattern="^(json|srt|vtt|txt)$")] = "json"
                   ) -> Response:
    from earshot.asr.export import FORMATS

    rec = _record(hub, stream_id)
    media, render = FORMATS[format]
    body = render(hub.store.transcripts(rec.id))
    headers = {}
    if format != "json":
        headers["Content-Disposition"] = content_disposition(f"{rec.id}.{format}")
    return Response(body, media_type=media, headers=headers)


@api.post("/streams/{stream_id}/replay",
          summary="Run a processor over a finished stream's archive; its events and segments "
                  "(?format=ndjson: streamed as they come, with progress)",
          responses={200: {"content": {"application/json": {}, "application/x-ndjson": {}}}})
async def replay_stream(stream_id: str, hub: HubDep, request: Request,
                        processor: Annotated[str, Query(min_length=1, max_length=200)],
                        format: Annotated[str | None, Query(pattern="^(json|ndjson)$")] = None,
                        ) -> Any:
    from fastapi.responses import StreamingResponse

    from earshot.errors import ProcessorError
    from earshot.server.streams.replay import prepare

    rec = _record(hub, stream_id)
    try:
        job = prepare(hub, rec.id, processor)
    except ProcessorError as exc:
        raise HTTPException(400, str(exc)) from None
    except StorageError as exc:
        raise HTTPException(409, str(exc)) from None
    if format == "ndjson" or (format is None and "application/x-ndjson"
                              in request.headers.get("accept", "")):
        return StreamingResponse(hub.replays.ndjson(job, request.is_disconnected),
                                 media_type="application/x-ndjson")
    try:
        return await hub.replays.collect(job)
    except StorageError as exc:
        raise HTTPException(409, str(exc)) from None


@api.get("/replays", summary="Replays running on this gateway, with their progress (and the "
                             "last ones to end)")
async def list_replays(hub: HubDep) -> dict[str, Any]:
    return {"replays": hub.replays.list(), "recent": list(hub.replays.recent)}


@api.delete("/streams/{stream_id}", status_code=204, summary="Delete a stream and its files")
async def delete_stream(stream_id: str, hub: HubDep) -> Response:
    rec = _record(hub, stream_id)
    try:
        await hub.check_deletable(rec.id)
        hub.delete(rec.id)
    except StorageError as exc:
        raise HTTPException(409, str(exc)) from None
    return Response(status_code=204)


@ops.get("/healthz", summary="Liveness and capabilities")
async def healthz(request: Request, hub: HubDep) -> dict[str, Any]:
    caps: dict[str, Any] = request.app.state.capabilities
    bus = hub.bus.health()
    status = "ok" if bus["state"] == "ok" else "degraded"
    if hub.check_space() != "ok":
        status = "degraded"
    return {"status": status, "version": __version__, "live_streams": len(hub.live_info("*")),
            "bus": bus, "admission": hub.admission_report(), "ingest": hub.ingest_report(),
            "storage": hub.space.report(),
            "rest": rest_report(request), **caps}


def rest_report(request: Request) -> dict[str, Any] | None:
    """The REST limits (server/guard.py) and where they stand, for /healthz."""
    guard = getattr(request.app.state, "guard", None)
    return guard.report() if guard is not None else None


@ops.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(require_token)])
def metrics(request: Request) -> Response:
    data = generate_latest(request.app.state.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
