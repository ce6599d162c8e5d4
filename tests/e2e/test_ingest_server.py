"""End-to-end ingest against a real server process: exact archives, f32, compat mode, REST."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from earshot.client import Publisher, send_file
from helpers import ServerProcess

pytestmark = pytest.mark.slow


def archive_of(server: ServerProcess, stream: str) -> Path:
    rec = httpx.get(f"{server.http}/api/streams/{stream}").json()
    return server.data_dir / rec["path"]


def write_noise_wav(path: Path, rate: int, channels: int, seconds: float,
                    seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((int(rate * seconds), channels)) * 5000).astype("<i2")
    x[:5] = [32767] * channels  # full-scale samples survive untouched
    x[5:10] = [-32768] * channels
    sf.write(path, x, rate, subtype="PCM_16")
    return x


async def wait_state(server: ServerProcess, stream: str, state: str, timeout: float = 10) -> dict:
    async with httpx.AsyncClient() as http:
        for _ in range(int(timeout / 0.05)):
            rec = (await http.get(f"{server.http}/api/streams/{stream}")).json()
            if rec.get("state") == state:
                return rec
            await asyncio.sleep(0.05)
    raise AssertionError(f"stream {stream} never reached {state}: {rec}")


def test_cli_send_pcm16_is_bit_exact_and_served_with_range(
        shared_server: ServerProcess, tmp_path: Path) -> None:
    src = tmp_path / "take.wav"
    x = write_noise_wav(src, 44100, 2, 2.5)
    out = subprocess.run(
        [sys.executable, "-m", "earshot.cli", "send", str(src), "--url", shared_server.url,
         "--name", "take one", "-q"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    stream = out.stdout.split()[1].rstrip(":")
    assert f"/api/streams/{stream}/audio" in out.stdout
    path = archive_of(shared_server, stream)
    y, rate = sf.read(path, dtype="int16")
    assert rate == 44100 and y.shape == x.shape and np.array_equal(y, x)

    rec = httpx.get(f"{shared_server.http}/api/streams/{stream}").json()
    assert (rec["name"], rec["frames"], rec["channels"], rec["state"], rec["format"]) == (
        "take one", len(x), 2, "finished", "s16")
    whole = httpx.get(f"{shared_server.http}/api/streams/{stream}/audio")
    assert whole.status_code == 200 and whole.headers["content-type"] == "audio/wav"
    assert whole.content == path.read_bytes()
    assert "take_one" in whole.headers["content-disposition"]
    part = httpx.get(f"{shared_server.http}/api/streams/{stream}/audio",
                     headers={"Range": "bytes=44-1043"})
    assert part.status_code == 206 and part.content == path.read_bytes()[44:1044]
    assert part.headers["content-range"] == f"bytes 44-1043/{path.stat().st_size}"


async def test_f32_within_one_lsb_saturates_and_reports_non_finite(
        shared_server: ServerProcess) -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, 16000).astype(np.float32)
    x[100:110] = 3.5
    x[200:210] = -7.0
    x[300] = np.nan
    x[301] = np.inf
    x[302] = -np.inf
    async with Publisher(shared_server.url, rate=16000, format="f32") as pub:
        collector = asyncio.create_task(collect(pub))
        for i in range(0, len(x), 320):
            await pub.send(x[i:i + 320])
    events = await collector  # events() ends once the stream has stopped
    assert events[0]["type"] == "ready" and events[-1]["type"] == "stopped"
    assert events[-1]["offset"] == len(x)
    warnings = {e["code"]: e for e in events if e["type"] == "warning"}
    assert warnings["non_finite"]["count"] == 3
    assert warnings["clipped"]["count"] == 20
    assert sum(1 for e in events if e["type"] == "warning") == 2  # each reported once
    y = sf.read(archive_of(shared_server, pub.stream_id), dtype="float32")[0]
    assert len(y) == len(x)
    expected = np.clip(np.nan_to_num(x, nan=0, posinf=0, neginf=0), -1, 1)
    assert np.max(np.abs(y - expected)) <= 1 / 32768
    assert np.all(y[100:110] == 32767 / 32768) and np.all(y[200:210] == -1.0)
    assert np.all(y[300:303] == 0)


async def collect(pub: Publisher) -> list[dict]:
    return [e async for e in pub.events()]


async def test_compat_mode_raw_float32_to_query_rate(shared_server: ServerProcess) -> None:
    x = np.sin(2 * np.pi * 440 * np.arange(24000) / 16000).astype("<f4") * 0.5
    async with connect(shared_server.url + "?rate=16000") as ws:
        for i in range(0, len(x), 4096):  # ScriptProcessor-sized buffers, no start message
            await ws.send(x[i:i + 4096].tobytes())
        ready = json.loads(await ws.recv())
    assert ready["type"] == "ready" and ready["rate"] == 16000 and ready["format"] == "f32"
    rec = await wait_state(shared_server, ready["stream"], "finished")
    assert rec["frames"] == len(x)
    y = sf.read(shared_server.data_dir / rec["path"], dtype="float32")[0]
    assert np.max(np.abs(y - x)) <= 1 / 32768


async def test_python_file_sender_multichannel_fast(shared_server: ServerProcess,
                                                    tmp_path: Path) -> None:
    src = tmp_path / "f.flac"
    x = write_noise_wav(tmp_path / "tmp.wav", 16000, 3, 1.0)
    sf.write(src, x, 16000, subtype="PCM_16", format="FLAC")
    result = await send_file(shared_server.url, src)
    assert result["frames"] == len(x) and result["format"] == "s16"
    y = sf.read(archive_of(shared_server, result["stream"]), dtype="int16")[0]
    assert np.array_equal(y, x)


def test_rest_listing_pagination_delete_and_errors(shared_server: ServerProcess,
                                                   tmp_path: Path) -> None:
    ids = []
    for i in range(3):
        src = tmp_path / f"{i}.wav"
        write_noise_wav(src, 8000, 1, 0.2, seed=i)
        ids.append(asyncio.run(send_file(shared_server.url, src))["stream"])
    page = httpx.get(f"{shared_server.http}/api/streams", params={"limit": 2}).json()
    assert len(page["streams"]) == 2 and page["total"] >= 3 and page["next"]
    assert [s["id"] for s in page["streams"]] == ids[::-1][:2]  # newest first
    page2 = httpx.get(page["next"]).json()
    assert page2["offset"] == 2 and ids[0] in [s["id"] for s in page2["streams"]]

    path = archive_of(shared_server, ids[0])
    assert httpx.delete(f"{shared_server.http}/api/streams/{ids[0]}").status_code == 204
    assert not path.exists()
    assert httpx.get(f"{shared_server.http}/api/streams/{ids[0]}").status_code == 404
    assert httpx.get(f"{shared_server.http}/api/streams/..%2F..%2Fetc").status_code == 404
    assert httpx.get(f"{shared_server.http}/api/streams?limit=0").status_code == 422

    health = httpx.get(f"{shared_server.http}/healthz").json()
    assert health["status"] == "ok" and health["asr"]["available"] is True
    assert health["asr"]["engine"] == "pocketsphinx" and "--asr-model" in health["asr"]["hint"]
    metrics = httpx.get(f"{shared_server.http}/metrics").text
    assert "earshot_frames_in_total" in metrics and "earshot_ack_latency_seconds_bucket" in metrics
    assert httpx.get(f"{shared_server.http}/docs").status_code == 200


async def test_live_stream_cannot_be_deleted_and_is_downloadable(
        shared_server: ServerProcess) -> None:
    x = (np.arange(8000) % 200 - 100).astype("<i2")
    async with Publisher(shared_server.url, rate=8000, format="s16") as pub:
        await pub.send(x)
        await pub.wait_acked(timeout=10)
        async with httpx.AsyncClient() as http:
            r = await http.delete(f"{shared_server.http}/api/streams/{pub.stream_id}")
            assert r.status_code == 409 and "live" in r.json()["detail"]
            live = await http.get(f"{shared_server.http}/api/streams/{pub.stream_id}/audio")
            rec = (await http.get(f"{shared_server.http}/api/streams/{pub.stream_id}")).json()
        assert rec["state"] == "live" and rec["frames"] == 8000
        got = np.frombuffer(live.content[44:], "<i2")
        assert np.array_equal(got, x)  # header patched to what was on disk


def test_sync_publisher_for_plain_scripts(shared_server: ServerProcess) -> None:
    from earshot.client import SyncPublisher

    x = (np.arange(16000) % 300 - 150).astype("<i2")
    with SyncPublisher(shared_server.url, rate=16000, format="s16", name="sync",
                       processors=["level"]) as pub:
        for i in range(0, len(x), 1600):
            pub.send(x[i:i + 1600])
    assert pub.acked == len(x)
    rec = httpx.get(f"{shared_server.http}/api/streams/{pub.stream_id}").json()
    assert (rec["name"], rec["frames"], rec["state"]) == ("sync", len(x), "finished")
    assert np.array_equal(sf.read(shared_server.data_dir / rec["path"], dtype="int16")[0], x)
