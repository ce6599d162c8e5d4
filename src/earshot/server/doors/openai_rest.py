"""OpenAI's speech-to-text REST API on earshot's main port: ``POST /v1/audio/transcriptions``,
``GET /v1/models``, ``POST /v1/audio/translations`` (501). The glue of
:mod:`earshot.integrations.openai_rest`: the key from ``Authorization: Bearer`` (the SDK's
``api_key``), the multipart form read (up to the upload limit) and checked, the file
decoded with PyAV into an ordinary earshot stream (as fast as it decodes, paced so no
processor skips audio), its finals rendered in the format asked for, or sent as
Server-Sent Events as each arrives (``stream=true``)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from earshot.integrations.common import (
    Action,
    Audio,
    DoorError,
    Event,
    Finalize,
    OpenStream,
    Stop,
    is_stream_error,
    is_transcript,
)
from earshot.integrations.decode import frame_to_block
from earshot.integrations.openai_rest import (
    TranscriptionRequest,
    TranscriptStream,
    check_upload,
    error_response,
    models_body,
    parse_transcription_form,
    render,
    too_large,
    translation_unsupported,
    unauthorized,
)
from earshot.server.auth import AuthError, Principal, Scope, authenticate
from earshot.server.doors import multipart
from earshot.server.doors.runner import DoorRunner
from earshot.server.streams.hub import Hub

router = APIRouter(tags=["openai"])
FORM_SLACK = 64 * 1024  # the form's other fields and boundaries, beyond the file
PACE_SECONDS = 4.0  # audio fed between waits for the processors to catch up
_NAME = re.compile(r"[^\w.-]+")


def answer(exc: DoorError) -> Response:
    status, headers, body = error_response(exc)
    return Response(body, status_code=status, headers=headers)


def bearer(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return None


def principal_of(request: Request) -> Principal:
    """The key as the SDK gives it (``Authorization: Bearer``), or a 401/403 DoorError."""
    token = bearer(request.headers)
    try:
        principal = authenticate(request.app.state.settings.security, token)
        principal.require(Scope.PUBLISH)
    except AuthError as exc:
        if exc.status == 401:
            raise unauthorized(token is not None) from None
        raise DoorError("forbidden", exc.message, status=403) from None
    return principal


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it passes ``limit`` bytes."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + FORM_SLACK:
        raise too_large(limit)
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit + FORM_SLACK:
            raise too_large(limit, len(buf))
    return bytes(buf)


def upload_limit(request: Request) -> int:
    limit: int = request.app.state.settings.doors.upload_limit
    return limit


async def read_form(request: Request) -> tuple[TranscriptionRequest, multipart.Part]:
    limit = upload_limit(request)
    boundary = multipart.boundary_of(request.headers.get("content-type"))
    parts = multipart.parse(await read_body(request, limit), boundary)
    fields = [(p.name, p.data.decode("utf-8", "replace")) for p in parts
              if p.name != "file" and p.filename is None]
    file = next((p for p in parts if p.name == "file"), None)
    req = parse_transcription_form(fields, has_file=file is not None)
    assert file is not None
    check_upload(file.data[:64], len(file.data), limit=limit)
    return req, file


# --- decoding a file ---------------------------------------------------------------------


class FileDecoder:
    """A whole file in memory → float32 blocks at its own rate (PyAV, seekable, so MP4/M4A
    with the index at the end decode too). :meth:`take` returns about ``seconds`` of audio
    (run it in a thread); an empty list is the end."""

    def __init__(self, data: bytes) -> None:
        import av

        try:
            self._container = av.open(io.BytesIO(data), mode="r")
        except Exception as exc:
            raise DoorError("invalid_file", "the file could not be decoded as audio ("
                            f"{' '.join(str(exc).split())[:160]})", status=400,
                            param="file") from None
        if not self._container.streams.audio:
            self._container.close()
            raise DoorError("invalid_file", "the file has no audio", status=400, param="file")
        self._frames = self._decode()
        self.rate: int | None = None
        self.channels: int | None = None

    def _decode(self) -> Iterator[np.ndarray]:
        import av

        stream = self._container.streams.audio[0]
        resampler: Any = None
        layout = None
        for frame in self._container.decode(stream):
            if self.rate is None:
                self.rate, layout = frame.sample_rate, frame.layout.name
                self.channels = len(frame.layout.channels)
            elif (frame.sample_rate, frame.layout.name) != (self.rate, layout):
                if resampler is None:
                    resampler = av.AudioResampler(format="flt", layout=layout, rate=self.rate)
                for f in resampler.resample(frame):
                    yield frame_to_block(f)
                continue
            yield frame_to_block(frame)

    def take(self, seconds: float) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        n = 0
        try:
            for block in self._frames:
                if len(block):
                    out.append(block)
                    n += len(block)
                if self.rate and n >= seconds * self.rate:
                    break
        except Exception as exc:
            raise DoorError("invalid_file", "the file could not be decoded as audio ("
                            f"{' '.join(str(exc).split())[:160]})", status=400,
                            param="file") from None
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._container.close()


# --- one transcription ---------------------------------------------------------------------


def stream_name(filename: str | None) -> str:
    stem = (filename or "").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    stem = _NAME.sub("-", stem).strip("-.")[:64]
    return stem or "openai-transcription"


class Transcription:
    """One upload as an earshot stream: feed it, collect its finals."""

    def __init__(self, hub: Hub, principal: Principal, req: TranscriptionRequest,
                 file: multipart.Part) -> None:
        self.hub = hub
        self.req = req
        self.file = file
        self.finals: list[Event] = []
        self.error: DoorError | None = None
        self.duration = 0.0
        self.stream: str | None = None
        self.stopped = asyncio.Event()
        self.news: asyncio.Queue[Event | None] = asyncio.Queue()  # finals, then None
        self.runner = DoorRunner(hub, principal, self.on_event, name=stream_name(file.filename))

    def on_event(self, e: Event) -> list[Action]:
        if is_transcript(e) and e.get("final"):
            self.finals.append(dict(e))
            self.news.put_nowait(dict(e))
        elif is_stream_error(e) and self.error is None:
            status = 503 if e.get("code") in ("busy", "storage_full", "shutting_down") else 500
            if e.get("code") in ("unauthorized", "forbidden"):
                status = 403
            self.error = DoorError(str(e.get("code") or "server_error"),
                                   str(e.get("message") or "the stream failed"), status=status)
        elif e.get("type") == "ready":
            self.stream = str(e.get("stream"))
        elif e.get("type") == "stopped":
            self.duration = float(e.get("duration") or 0.0)
            self.stopped.set()
        return []

    async def run(self) -> None:
        """Decode, feed, stop; every final is in :attr:`finals` when it returns."""
        try:
            await self._run()
        finally:
            await self.runner.finish()
            self.news.put_nowait(None)

    async def _run(self) -> None:
        dec = FileDecoder(self.file.data)
        try:
            blocks = await asyncio.to_thread(dec.take, 0.5)
            if not blocks:
                raise DoorError("invalid_file", "the file holds no audio", status=400,
                                param="file")
            assert dec.rate is not None and dec.channels is not None
            req = self.req
            client = {"dialect": "openai", "model": req.model,
                      "filename": (self.file.filename or "")[:200]}
            await self.runner.perform([OpenStream(
                "f32", dec.rate, dec.channels, processors=("asr",), language=req.language,
                client=client, prompt=req.prompt)])
            await self.runner.settled()
            if self.error is not None:
                raise self.error
            live = self.runner.live
            assert live is not None
            fed = 0
            while blocks:
                for b in blocks:
                    await self.runner.perform([Audio(np.ascontiguousarray(
                        b, dtype="<f4").tobytes())])
                    fed += len(b)
                if fed >= PACE_SECONDS * dec.rate:
                    fed = 0
                    await self.hub.caught_up(live)
                if self.error is not None:
                    raise self.error
                blocks = await asyncio.to_thread(dec.take, PACE_SECONDS / 4)
        finally:
            await asyncio.to_thread(dec.close)
            if self.runner.live is not None:
                # every final in (the stop waits for the finalize's answer, which comes
                # after the finals asked for before it), then the stream ends
                await self.runner.perform([Finalize(), Stop()])
                await self.runner.settled()
        if self.error is not None:
            raise self.error


@router.post("/v1/audio/transcriptions", summary="OpenAI speech-to-text (docs: doors.md)")
async def transcriptions(request: Request) -> Response:
    try:
        principal = principal_of(request)
        req, file = await read_form(request)
    except DoorError as exc:
        return answer(exc)
    hub: Hub = request.app.state.hub
    job = Transcription(hub, principal, req, file)
    if req.stream:
        return StreamingResponse(_events(job), media_type=TranscriptStream.content_type)
    try:
        await job.run()
    except DoorError as exc:
        return answer(exc)
    finals = sorted(job.finals, key=lambda f: (f.get("segment") or 0, f.get("start") or 0))
    content_type, body = render(req, finals, duration=job.duration)
    headers = {"x-earshot-stream": job.stream} if job.stream else {}
    return Response(body, media_type=content_type, headers=headers)


async def _events(job: Transcription) -> AsyncIterator[bytes]:
    sse = TranscriptStream()
    task = asyncio.create_task(job.run())
    try:
        while True:
            final = await job.news.get()
            if final is None:
                break
            chunk = sse.on_final(final)
            if chunk:
                yield chunk
        try:
            await task
        except DoorError as exc:
            yield sse.error(exc)
            return
        yield sse.done()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


@router.post("/v1/audio/translations", summary="OpenAI translations: 501 (docs: doors.md)")
async def translations(request: Request) -> Response:
    try:
        principal_of(request)
    except DoorError as exc:
        return answer(exc)
    asr = request.app.state.capabilities.get("asr", {})
    return answer(translation_unsupported(str(asr.get("engine") or "none")))


@router.get("/v1/models", summary="OpenAI models: what the engine offers (docs: doors.md)")
async def models(request: Request) -> Response:
    try:
        principal_of(request)
    except DoorError as exc:
        return answer(exc)
    asr = request.app.state.capabilities.get("asr", {})
    offered = [str(asr["model"])] if asr.get("available") and asr.get("model") else []
    import json

    return Response(json.dumps(models_body(offered, int(time.time()))),
                    media_type="application/json")
