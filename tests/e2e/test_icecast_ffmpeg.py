"""The Icecast core against the real source client: ffmpeg's ``icecast://`` output.

A small socket loop here stands in for the server's listener (the glue comes with the new
ingest layer): it feeds what ffmpeg sends to :class:`IcecastConnection`, carries out its
actions, and decodes the body with :class:`StreamDecoder`. ffmpeg must stream to it in
both its modes (PUT with ``Expect: 100-continue``; the legacy ``SOURCE``), every byte must
arrive (no reset at the end), and the decode must be ffmpeg's own decode of those bytes.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from earshot.integrations.common import Close, DoorError, Send
from earshot.integrations.decode import StreamDecoder
from earshot.integrations.icecast import Body, IcecastConnection, SourceRequested
from helpers import require_tool

pytestmark = pytest.mark.slow
pytest.importorskip("av")

FIXTURE = Path(__file__).parents[1] / "fixtures" / "reading_16k.wav"
TOKEN = "s3cret"


@dataclass
class Received:
    request: object = None
    body: bytearray = field(default_factory=bytearray)
    blocks: list[np.ndarray] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    decoder: StreamDecoder | None = None
    error: str | None = None


def serve_one(listener: socket.socket, got: Received) -> None:
    conn, _ = listener.accept()
    conn.settimeout(0.05)
    c = IcecastConnection(now=time.monotonic())
    try:
        while True:
            now = time.monotonic()
            try:
                data = conn.recv(65536)
            except TimeoutError:
                data = None
            actions = c.tick(now) if data is None else (
                c.receive(data, now) if data else [])
            for a in actions:
                if isinstance(a, SourceRequested):
                    got.request = a.request
                    if a.request.token != TOKEN:
                        more = c.refuse(DoorError("unauthorized", "wrong token", status=401))
                    else:
                        got.decoder = StreamDecoder(a.request.format)
                        more = c.accept(time.monotonic())
                    actions.extend(more)
                elif isinstance(a, Body):
                    got.body += a.data
                    assert got.decoder is not None
                    got.blocks += got.decoder.feed(a.data)
                elif isinstance(a, Send):
                    assert isinstance(a.data, bytes)
                    got.sent.append(a.data)
                    conn.sendall(a.data)
                elif isinstance(a, Close):
                    return
            if data == b"":
                if got.decoder is not None:
                    got.blocks += got.decoder.close()
                return
    except Exception as exc:  # reported by the test
        got.error = repr(exc)
    finally:
        conn.close()


def push(tmp_path: Path, source: Path, url_args: list[str], password: str = TOKEN,
         mount: str = "kitchen") -> tuple[Received, subprocess.CompletedProcess[str]]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    got = Received()
    t = threading.Thread(target=serve_one, args=(listener, got), daemon=True)
    t.start()
    proc = subprocess.run(
        [require_tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-i", str(source),
         "-c", "copy", *url_args,
         f"icecast://source:{password}@127.0.0.1:{port}/{mount}?processors=vad,level"],
        capture_output=True, text=True, timeout=60)
    t.join(20)
    listener.close()
    assert got.error is None, got.error
    return got, proc


def ffmpeg_decode(data: bytes, fmt: str) -> np.ndarray:
    out = subprocess.run([require_tool("ffmpeg"), "-hide_banner", "-loglevel", "error",
                          "-f", fmt, "-i", "pipe:0", "-f", "f32le", "-"], input=data,
                         capture_output=True, check=True).stdout
    return np.frombuffer(out, "<f4")


def encoded(tmp_path: Path, name: str, *args: str) -> Path:
    out = tmp_path / name
    subprocess.run([require_tool("ffmpeg"), "-hide_banner", "-loglevel", "error", "-y",
                    "-t", "8", "-i", str(FIXTURE), *args, str(out)], check=True)
    return out


def test_ffmpeg_put_mp3_streams_every_byte_and_decodes_as_ffmpeg_does(
        tmp_path: Path) -> None:
    mp3 = encoded(tmp_path, "r.mp3", "-c:a", "libmp3lame", "-b:a", "64k")
    got, proc = push(tmp_path, mp3, ["-f", "mp3", "-ice_name", "Kitchen"])
    assert proc.returncode == 0, proc.stderr
    r = got.request
    assert r.method == "PUT" and r.name == "kitchen" and r.processors == ("vad", "level")
    assert r.ice["name"] == "Kitchen" and r.format == "mp3"
    assert got.sent == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    x = np.concatenate(got.blocks)[:, 0]
    body_ref = ffmpeg_decode(bytes(got.body), "mp3")
    assert x.shape == body_ref.shape and np.max(np.abs(x - body_ref)) < 1e-6
    # the reading ffmpeg decodes from the file, within one MP3 frame: a stream has no LAME
    # tag (its muxer cannot seek back to write it), so the codec's delay stays in front
    ref = ffmpeg_decode(mp3.read_bytes(), "mp3")
    lag = len(x) - len(ref)
    assert 0 <= lag <= 1152
    assert np.corrcoef(x[lag:], ref)[0, 1] > 0.999
    src, _ = sf.read(FIXTURE, dtype="float32", frames=len(ref))
    assert np.corrcoef(src, x[lag:lag + len(src)])[0, 1] > 0.98


def test_ffmpeg_legacy_source_ogg_opus_gets_no_response_and_loses_nothing(
        tmp_path: Path) -> None:
    ogg = encoded(tmp_path, "r.ogg", "-c:a", "libopus", "-b:a", "32k")
    got, proc = push(tmp_path, ogg, ["-f", "ogg", "-content_type", "audio/ogg",
                                     "-legacy_icecast", "1"])
    assert proc.returncode == 0, proc.stderr
    assert got.request.method == "SOURCE" and got.request.format == "ogg"
    assert got.sent == []  # ffmpeg never reads one: an unread 200 would reset its close
    x = np.concatenate(got.blocks)[:, 0]
    ref = ffmpeg_decode(bytes(got.body), "ogg")
    assert x.shape == ref.shape  # PyAV's libavcodec and the system's round apart by < 1e-6
    assert np.max(np.abs(x - ref)) < 1e-6
    file_ref = ffmpeg_decode(ogg.read_bytes(), "ogg")
    assert len(x) == len(file_ref)  # Ogg carries its own end: the same length exactly
    assert np.corrcoef(x, file_ref)[0, 1] > 0.99


def test_ffmpeg_with_a_wrong_password_is_told_401(tmp_path: Path) -> None:
    mp3 = encoded(tmp_path, "r.mp3", "-c:a", "libmp3lame", "-b:a", "64k")
    got, proc = push(tmp_path, mp3, ["-f", "mp3"], password="wrong")
    assert proc.returncode != 0
    assert "401" in proc.stderr
    assert got.sent[0].startswith(b"HTTP/1.0 401 Unauthorized\r\n")
    assert b'WWW-Authenticate: Basic realm="earshot"' in got.sent[0]
    assert got.body == bytearray()
