"""REST routes: list, inspect, download (with Range) and delete streams; health; metrics."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, cast

import anyio
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from earshot import __version__
from earshot.errors import StorageError, StreamNotFound
from earshot.server.auth import (
    MAX_TTL,
    SIGNED_URL_TTL,
    AuthError,
    Principal,
    Scope,
    authenticate_request,
    mint,
    secret_of,
)
from earshot.server.http.audio_range import (
    content_disposition,
    named,
    range_response,
    remote_file_response,
    source_response,
    source_times,
    whole_response,
)
from earshot.server.streams.hub import Hub
from earshot.storage import parts as P
from earshot.storage.archive import MEDIA_TYPES
from earshot.storage.metadata import StreamRecord
from earshot.storage.parts import is_rotated
from earshot.storage.peaks import peaks

STREAM_ID = re.compile(r"^[0-9a-z]{6,40}$")


def hub_of(request: Request) -> Hub:
    return cast(Hub, request.app.state.hub)


def require_token(request: Request) -> Principal:
    """Who sent the request (:func:`earshot.server.auth.authenticate_request`): 401 when
    nobody, 403 for a signed URL of another path; each route then checks its scope."""
    try:
        principal = authenticate_request(request.app.state.settings.security, request.headers,
                                         request.query_params, request.url.path)
    except AuthError as exc:
        raise _refusal(exc) from None
    request.state.principal = principal
    return principal


def _refusal(exc: AuthError) -> HTTPException:
    headers = {"WWW-Authenticate": 'Bearer realm="earshot"'} if exc.status == 401 else None
    return HTTPException(exc.status, exc.message, headers=headers)


def need(request: Request, scope: Scope, name: str | None = None) -> Principal:
    """The request's principal, if it grants ``scope`` on a stream called ``name``; 403
    otherwise (``name=ANY``: the scope for some names, as a listing needs)."""
    principal: Principal = request.state.principal
    if name is ANY:
        if scope in principal.scopes or Scope.ADMIN in principal.scopes:
            return principal
        name = None
    try:
        principal.require(scope, name=name)
    except AuthError as exc:
        raise _refusal(exc) from None
    return principal


ANY = "\0any"
PrincipalDep = Annotated[Principal, Depends(require_token)]
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
    principal = need(request, Scope.LISTEN, ANY)
    records, total = hub.store.list(limit=limit, offset=offset)
    items = [hub.record(r.id).public() if hub.is_live(r.id) else r.public() for r in records
             if principal.allows(Scope.LISTEN, name=r.name)]  # (a names grant: its own)
    for item in items:  # what the client said of itself: in the stream's own record only,
        client = item.pop("client", None)  # but for the door it came through (docs/doors.md)
        if isinstance(client, dict) and isinstance(d := client.get("dialect"), str):
            item["client"] = {"dialect": d[:40]}
    nxt = None
    if offset + limit < total:
        nxt = str(request.url.include_query_params(limit=limit, offset=offset + limit))
    return {"streams": items, "total": total, "limit": limit, "offset": offset, "next": nxt}


@api.get("/streams/{stream_id}", summary="One stream's metadata")
async def get_stream(stream_id: str, hub: HubDep, request: Request) -> dict[str, Any]:
    rec = _record(hub, stream_id)
    need(request, Scope.LISTEN, rec.name)
    out: dict[str, Any] = rec.public()
    out["audio_url"] = f"/api/streams/{rec.id}/audio"
    return out


async def archive_parts(hub: Hub, rec: StreamRecord) -> list[P.Part] | None:
    """With an archive store (server/streams/objects.py): the archive's parts, each on the
    local disk or in the object store; None without one (the local readers as they are).
    410 when part 0 is nowhere, 409 when a part is not uploaded yet, 503 when the store
    does not answer."""
    objects = hub.objects
    if objects is None:
        return None
    from earshot.storage.objects import ObjectStoreError

    try:
        parts = await asyncio.to_thread(objects.parts, rec)
        P.kind(parts)
    except FileNotFoundError:
        raise HTTPException(410, f"the archive of stream {rec.id} is gone") from None
    except ObjectStoreError as exc:
        raise HTTPException(409 if exc.reason == "missing" else 503, exc.message) from None
    except StorageError as exc:
        raise HTTPException(409, str(exc)) from None
    return parts


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
    need(request, Scope.LISTEN, rec.name)
    hub.sync_archive(rec.id)  # make the header match what is on disk right now
    path = hub.path_of(rec)
    one: P.RemoteFile | None = None
    if hub.objects is not None and start is None and end is None:
        one = await asyncio.to_thread(hub.objects.single_remote, rec)
    parts = await archive_parts(hub, rec) if one is None else None
    if parts is None and one is None and not path.exists():
        raise HTTPException(410, f"the archive of stream {rec.id} is gone")
    if parts is not None and len(parts) == 1:
        path = parts[0].path if isinstance(parts[0].path, Path) else path
    media = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
    stem = re.sub(r"(?a)[^\w.-]+", "_", re.sub(r"\.\w{1,5}$", "", rec.name or ""))[:60].strip("._")
    filename = f"{stem + '-' if stem else ''}{rec.id}{path.suffix}"
    if start is not None or end is not None:  # ?start=S&end=E: that range as a WAV
        return range_response(path, start, end, filename, parts)
    if one is None and parts is not None and len(parts) == 1 \
            and not isinstance(parts[0].path, Path):
        one = parts[0].path
    if one is not None:  # in the object store only: its bytes; a Range is one ranged GET
        filename = f"{stem + '-' if stem else ''}{rec.id}{one.suffix}"
        return remote_file_response(one, filename, MEDIA_TYPES.get(
            one.suffix, "application/octet-stream"), request.headers.get("range"))
    if parts is not None and len(parts) > 1:
        return whole_response(path, filename, request.headers.get("range"), parts)
    if is_rotated(path):  # parts: one WAV stitched on the fly (RF64 past 4 GiB)
        return whole_response(path, filename, request.headers.get("range"))
    return FileResponse(path, media_type=media, filename=filename)


@api.get("/sources/{name}/audio", summary="All streams of one name, stitched by wall clock",
         response_class=FileResponse)
async def get_source_audio(name: str, hub: HubDep, request: Request,
                           from_: Annotated[str, Query(alias="from")], to: str) -> Response:
    need(request, Scope.LISTEN, name)
    t_from, t_to = source_times(from_, to)
    streams = []
    for rec in named(hub.store, name):  # live state is read here, on the event loop
        if hub.is_live(rec.id):
            hub.sync_archive(rec.id)
            rec = hub.record(rec.id)
        streams.append((rec, hub.path_of(rec)))
    objects = hub.objects
    loader = (lambda rec, _path: objects.parts(rec)) if objects is not None else None
    return await asyncio.to_thread(source_response, name, streams, t_from, t_to, loader)


@api.get("/streams/{stream_id}/peaks", summary="Waveform peaks for drawing: min/max per column")
async def get_peaks(stream_id: str, hub: HubDep, request: Request,
                    width: Annotated[int, Query(ge=1, le=4000)] = 800) -> dict[str, Any]:
    rec = _record(hub, stream_id)
    need(request, Scope.LISTEN, rec.name)
    hub.sync_archive(rec.id)
    path = hub.path_of(rec)
    parts = await archive_parts(hub, rec)
    if parts is None and not path.exists():
        raise HTTPException(410, f"the archive of stream {rec.id} is gone")
    try:
        lo, hi, frames = await asyncio.to_thread(peaks, path, width, parts=parts)
    except FileNotFoundError:
        raise HTTPException(410, f"the archive of stream {rec.id} is gone") from None
    except StorageError as exc:  # e.g. being finalized (storage/parts.py)
        raise HTTPException(409, str(exc)) from None
    return {"stream": rec.id, "width": width, "duration": frames / rec.rate,
            "min": lo, "max": hi}


@api.get("/streams/{stream_id}/segments", summary="Speech segments found by the VAD")
async def list_segments(stream_id: str, hub: HubDep, request: Request) -> dict[str, Any]:
    rec = _record(hub, stream_id)
    need(request, Scope.LISTEN, rec.name)
    return {"stream": rec.id, "segments": [s.public() for s in hub.store.segments(rec.id)]}


@api.get("/streams/{stream_id}/segments/{n}/audio", summary="One speech segment as WAV",
         response_class=FileResponse)
async def get_segment_audio(stream_id: str, n: int, hub: HubDep,
                            request: Request) -> Response:
    rec = _record(hub, stream_id)
    need(request, Scope.LISTEN, rec.name)
    seg = next((s for s in hub.store.segments(rec.id) if s.n == n), None)
    if seg is None:
        raise HTTPException(404, f"stream {rec.id} has no segment {n}")
    path = hub.settings.server.data_dir / seg.path
    if not path.exists() and hub.objects is not None:  # cut on another gateway: the same
        parts = await archive_parts(hub, rec)         # frames, read from the archive
        return segment_response(rec, seg.start, seg.end, parts or [])
    if not path.exists():
        raise HTTPException(410, f"segment {n} of stream {rec.id} is gone")
    return FileResponse(path, media_type="audio/wav", filename=f"{rec.id}-segment{n:04d}.wav")


def segment_response(rec: StreamRecord, start: int, end: int, parts: list[P.Part]) -> Response:
    """A segment as the WAV :func:`earshot.storage.segments.cut` makes of it: frames
    ``[start, end)`` of the archive."""
    from fastapi.responses import StreamingResponse

    encoding, rate, channels = P.kind(parts)
    end = min(end, P.total_frames(parts))
    if end <= start:
        raise HTTPException(410, f"the segment [{start}, {end}) of {rec.id} is not in its archive")
    length = (end - start) * parts[0].frame_bytes
    head = P.wav_header(encoding, rate, channels, length)

    def body() -> Iterator[bytes]:
        yield head
        yield from P.iter_frames(parts, start, end)

    return StreamingResponse(body(), media_type="audio/wav", headers={
        "Content-Length": str(len(head) + length),
        "Content-Disposition": content_disposition(f"{rec.id}-segment.wav")})


@api.get("/streams/{stream_id}/transcript",
         summary="Final transcripts: JSON, or ?format=srt|vtt|txt",
         responses={200: {"content": {"application/json": {}, "application/x-subrip": {},
                                      "text/vtt": {}, "text/plain": {}}}})
async def get_transcript(stream_id: str, hub: HubDep, request: Request,
                   format: Annotated[str, Query(pattern="^(json|srt|vtt|txt)$")] = "json"
                   ) -> Response:
    from earshot.asr.export import FORMATS

    rec = _record(hub, stream_id)
    need(request, Scope.LISTEN, rec.name)
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

    need(request, Scope.ADMIN)
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
async def list_replays(hub: HubDep, request: Request) -> dict[str, Any]:
    need(request, Scope.ADMIN)
    return {"replays": hub.replays.list(), "recent": list(hub.replays.recent)}


@api.post("/streams/{stream_id}/links",
          summary="Short-lived signed URLs of the stream's audio and transcript (for <audio>)")
async def signed_links(stream_id: str, hub: HubDep, request: Request) -> dict[str, Any]:
    rec = _record(hub, stream_id)
    need(request, Scope.LISTEN, rec.name)
    secret = secret_of(request.app.state.settings.security)
    paths = {"audio": f"/api/streams/{rec.id}/audio",
             "transcript": f"/api/streams/{rec.id}/transcript"}
    if secret is None:  # an open server: the plain URLs open
        return {**paths, "expires": None}
    now = time.time()
    return {**{k: f"{p}?sig={mint(secret, [Scope.LISTEN], ttl=SIGNED_URL_TTL, path=p, now=now)}"
               for k, p in paths.items()},
            "expires": int(now) + int(SIGNED_URL_TTL)}


class TokenRequest(BaseModel):
    scope: list[Scope] = Field(min_length=1, description="publish, listen, worker, admin")
    names: str | None = Field(None, max_length=200, description="a glob of stream names")
    processors: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None, max_length=64, description="worker: the processor kinds it may post events of")
    ttl: float = Field(3600.0, gt=0, le=MAX_TTL, description="seconds until it expires")
    subject: str = Field("token", max_length=200, description="who it is for (the sub claim)")


@api.post("/tokens", summary="Mint a scoped token (admin only)")
async def create_token(body: TokenRequest, request: Request) -> dict[str, Any]:
    need(request, Scope.ADMIN)
    secret = secret_of(request.app.state.settings.security)
    if secret is None:
        raise HTTPException(409, "this server has no --token or --token-secret to sign with")
    now = time.time()
    token = mint(secret, body.scope, ttl=body.ttl, names=body.names,
                 processors=body.processors, subject=body.subject, now=now)
    return {"token": token, "expires": int(now) + max(1, round(body.ttl))}


@api.delete("/streams/{stream_id}", status_code=204, summary="Delete a stream and its files")
async def delete_stream(stream_id: str, hub: HubDep, request: Request) -> Response:
    need(request, Scope.ADMIN)
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
    store = hub.objects.report() if hub.objects is not None else None
    if store is not None and store["degraded"]:
        status = "degraded"
    return {"status": status, "version": __version__, "live_streams": len(hub.live_info("*")),
            "bus": bus, "admission": hub.admission_report(), "ingest": hub.ingest_report(),
            "storage": hub.space.report(), "archive_store": store,
            "rest": rest_report(request), **caps}


def rest_report(request: Request) -> dict[str, Any] | None:
    """The REST limits (server/guard.py) and where they stand, for /healthz."""
    guard = getattr(request.app.state, "guard", None)
    return guard.report() if guard is not None else None


@ops.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(require_token)])
async def metrics(request: Request) -> Response:
    need(request, Scope.ADMIN)
    hub = getattr(request.app.state, "hub", None)
    if hub is not None:  # the load gauges as of now (an idle gateway's probe is asleep)
        hub.refresh_gauges()
    data = await anyio.to_thread.run_sync(generate_latest, request.app.state.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
