"""Bad input at every door, each answered its own protocol's way, while a native stream
runs beside them: OpenAI (401 JSON, 415 not audio, 413 past the upload limit, 400 a bad
field), Realtime (401), Deepgram (401 wrong key, 400 ``encoding=foo``), Wyoming (a header
that is not JSON, a payload length past the limit: an ``error`` event and a close),
Icecast (401 with ``WWW-Authenticate``, 400 for a PUT without a content type); and a
Deepgram client (authenticated by the browser's subprotocol) that sends nothing is closed
after 10 s as Deepgram does (1011, ``NET-0001``, after ``Metadata``). None leaves a stream or
a file behind, and the native stream stays exact."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from helpers import FIXTURES, ServerProcess, free_port, stream_file

pytestmark = pytest.mark.slow
TOKEN = "bad-secret"
LIMIT = 64 * 1024


def wav_bytes(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * 16000), np.int16), 16000, format="WAV",
             subtype="PCM_16")
    return buf.getvalue()


def openai_errors(http: str) -> list[tuple[int, dict]]:
    url = f"{http}/v1/audio/transcriptions"
    good = {"authorization": f"Bearer {TOKEN}"}
    out = []
    for headers, files, data in (
            ({"authorization": "Bearer wrong"}, {"file": ("a.wav", wav_bytes(1))},
             {"model": "whisper-1"}),
            (good, {"file": ("a.txt", b"plain text, not audio " * 10)}, {"model": "whisper-1"}),
            (good, {"file": ("a.wav", wav_bytes(5))}, {"model": "whisper-1"}),
            (good, {"file": ("a.wav", wav_bytes(1))}, {"model": "whisper-1",
                                                       "response_format": "docx"})):
        r = httpx.post(url, headers=headers, files=files, data=data, timeout=30)
        out.append((r.status_code, r.json()["error"]))
    return out


async def refused(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        async with connect(url, additional_headers=headers or {}):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def tcp(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_bad_input_at_every_door_beside_a_native_stream(
        server_factory: Callable[..., ServerProcess]) -> None:
    wy, ice = free_port(), free_port()
    server = server_factory("--token", TOKEN, "--upload-limit", str(LIMIT),
                            "--wyoming", f"tcp://127.0.0.1:{wy}", "--icecast", f"127.0.0.1:{ice}")
    x, _ = sf.read(FIXTURES / "reading_16k.wav", dtype="int16", frames=16000 * 5)
    ws = f"ws://127.0.0.1:{server.port}"

    async def idle() -> tuple[int, str, list[str]]:
        """Deepgram's idle close: the browser's subprotocol auth (echoed), then silence."""
        async with connect(f"{ws}/v1/listen?encoding=linear16&sample_rate=16000",
                           subprotocols=["token", TOKEN]) as c:  # type: ignore[list-item]
            assert c.subprotocol == "token"
            got: list[str | bytes] = []
            with contextlib.suppress(ConnectionClosed):  # no audio, no KeepAlive: 10 s
                async for m in c:
                    got.append(m)
            assert c.close_code is not None and c.close_reason is not None
            return c.close_code, c.close_reason, [json.loads(m)["type"] for m in got]

    async def run() -> tuple[object, dict]:
        idle_task = asyncio.create_task(idle())
        native = asyncio.create_task(stream_file(
            f"{server.url}?token={TOKEN}", x, 16000, processors=["level"], realtime=True,
            name="native"))
        await asyncio.sleep(0.3)
        got: dict = {"openai": await asyncio.to_thread(openai_errors, server.http)}
        got["realtime"] = await refused(f"{ws}/v1/realtime?intent=transcription",
                                        {"Authorization": "Bearer wrong"})
        got["deepgram"] = [
            await refused(f"{ws}/v1/listen?encoding=linear16&sample_rate=16000",
                          {"Authorization": "Token wrong"}),
            await refused(f"{ws}/v1/listen?encoding=foo&sample_rate=16000",
                          {"Authorization": f"Token {TOKEN}"})]
        got["wyoming"] = [await asyncio.to_thread(tcp, wy, b"not json\n"),
                          await asyncio.to_thread(
                              tcp, wy, b'{"type": "audio-chunk", "payload_length": 99999999}\n')]
        got["icecast"] = [
            await asyncio.to_thread(tcp, ice, b"PUT /x HTTP/1.1\r\nContent-Type: audio/mpeg\r\n"
                                    b"Authorization: Basic c291cmNlOndyb25n\r\n\r\n"),
            await asyncio.to_thread(tcp, ice, b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n")]
        pub, _events, _ = await native
        got["idle"] = await asyncio.wait_for(idle_task, 20)
        return pub, got

    pub, got = asyncio.run(run())
    (s401, e401), (s415, e415), (s413, e413), (s400, e400) = got["openai"]
    assert (s401, e401["code"], e401["type"]) == (401, "invalid_api_key", "invalid_request_error")
    assert (s415, e415["param"]) == (415, "file")
    assert (s413, e413["code"]) == (413, "file_too_large")
    assert (s400, e400["param"]) == (400, "response_format")
    assert got["realtime"] == 401
    assert got["deepgram"] == [401, 400]
    for answer, code in zip(got["wyoming"], ("bad_header", "payload_too_large"), strict=True):
        header, data = answer.split(b"\n", 1)
        assert json.loads(header)["type"] == "error" and json.loads(data)["code"] == code
    auth, no_type = got["icecast"]
    assert auth.startswith(b"HTTP/1.0 401 ") and b'WWW-Authenticate: Basic realm="earshot"' in auth
    assert no_type.startswith(b"HTTP/1.0 400 ")
    code, reason, messages = got["idle"]
    assert code == 1011 and "net0001" in reason and messages == ["Metadata"]

    headers = {"authorization": f"Bearer {TOKEN}"}
    streams = httpx.get(f"{server.http}/api/streams", headers=headers).json()["streams"]
    assert [s["name"] for s in streams] == ["native"] and streams[0]["state"] == "finished"
    files = sorted(p.name for p in (server.data_dir / "streams").iterdir())
    assert files == [f"{pub.stream_id}.wav"]  # type: ignore[attr-defined]
    y, _ = sf.read(server.data_dir / streams[0]["path"], dtype="int16")
    assert np.array_equal(x, y)
