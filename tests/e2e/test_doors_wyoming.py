"""Wyoming through ``earshot serve --wyoming``, spoken to by the real ``wyoming`` package's
``AsyncTcpClient`` (as Home Assistant uses it) in its own pinned environment: ``describe``
answered at once, one request per sentence gets its words, a streaming client's
``transcript-chunk``\\ s join into the ``transcript``, ten concurrent connections are all
answered; a malformed header and an oversized payload get an ``error`` and a close; a peer
outside ``--wyoming-allow`` is closed at once; each request is an archived stream of
exactly the audio sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from clientenv import client_env

from earshot.asr.wer import wer
from helpers import FIXTURES, ServerProcess, free_port

pytestmark = pytest.mark.slow
READING = json.loads((FIXTURES / "reading_16k.json").read_text())
SENTENCES = READING["speech"]
CONCURRENT = 10


async def from_other_address(port: int) -> bytes:
    """A client connecting from 127.0.0.2 (outside the allowed 127.0.0.1/32): what it is
    told before the connection ends (b"" for nothing)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=("127.0.0.2", 0))
    try:  # the server closes at once: what we wrote may meet a closed socket (a reset)
        writer.write(b'{"type": "describe"}\n')
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        data = b""  # closed, as with an end of file: nothing was said
    writer.close()
    return data


def test_wyoming_client_through_earshot(server_factory: Callable[..., ServerProcess],
                                        tmp_path: Path) -> None:
    env = client_env("wyoming")
    port = free_port()
    server = server_factory("--token", "wy-secret", "--wyoming", f"tcp://127.0.0.1:{port}",
                            "--wyoming-allow", "127.0.0.1/32")
    x, _ = sf.read(FIXTURES / "reading_16k.wav", dtype="int16")
    pcm = tmp_path / "reading.pcm"
    pcm.write_bytes(x.tobytes())
    out = env.run("wyoming_live.py", {
        "host": "127.0.0.1", "port": port, "pcm": str(pcm), "concurrent": CONCURRENT,
        "sentences": [[s["start_s"], s["end_s"]] for s in SENTENCES]}, timeout=180)

    assert out["describe_ms"] < 100
    assert out["describe"]["streaming"] is True
    assert out["describe"]["models"] == [["en-us", ["en"]]]
    for r, truth in zip(out["requests"], SENTENCES[:3], strict=True):
        assert r["types"][-1] == "transcript" and wer(truth["text"], r["text"]) <= 0.15
    s = out["streaming"]
    assert s["types"][0] == "transcript-start" and s["types"][-2:] == ["transcript",
                                                                       "transcript-stop"]
    assert "".join(s["chunks"]) == s["text"]
    truth = SENTENCES[3]["text"] + " " + SENTENCES[4]["text"]
    assert wer(truth, s["text"]) <= 0.15
    assert len(out["concurrent"]) == CONCURRENT
    heard = [r.get("text", "") for r in out["concurrent"]]
    score = wer(" ".join(SENTENCES[i % len(SENTENCES)]["text"] for i in range(CONCURRENT)),
                " ".join(heard))
    print(f"\nWER wyoming (10 concurrent requests): {score:.3f}")
    assert score <= 0.15 and all(heard)
    assert '"code": "bad_header"' in out["malformed"]
    assert '"code": "payload_too_large"' in out["too_long"]
    assert asyncio.run(from_other_address(port)) == b""  # closed, nothing said

    headers = {"authorization": "Bearer wy-secret"}
    streams = httpx.get(f"{server.http}/api/streams", params={"limit": 50},
                        headers=headers).json()["streams"]
    assert len(streams) == 3 + 1 + CONCURRENT
    assert {s["state"] for s in streams} == {"finished"}
    assert {s["name"] for s in streams} == {"wyoming-127.0.0.1"}
    assert {s["client"]["dialect"] for s in streams} == {"wyoming"}
    first = min(streams, key=lambda s: s["created"])
    a, b = SENTENCES[0]["start_s"] - 0.3, SENTENCES[0]["end_s"] + 0.3
    y, rate = sf.read(server.data_dir / first["path"], dtype="int16")
    assert rate == 16000 and np.array_equal(y, x[round(a * 16000):round(b * 16000)])
    log = server.log.read_text()
    assert "wyoming: refused 127.0.0.2: not in --wyoming-allow" in log
