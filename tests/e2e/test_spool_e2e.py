"""Store-and-forward end to end: real `earshot stream --spool` / `earshot spool` processes,
real servers that are absent, killed and restarted, archives compared sample by sample."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from earshot.client import Publisher
from earshot.client.spool import Spool, SpoolFull
from helpers import FIXTURES, ServerProcess, free_port

pytestmark = pytest.mark.slow


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "earshot.cli", *args]


def clip(tmp_path: Path, name: str, start_s: float, seconds: float) -> tuple[Path, np.ndarray]:
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="int16")
    part = x[int(start_s * rate): int((start_s + seconds) * rate)]
    path = tmp_path / name
    sf.write(path, part, rate, subtype="PCM_16")
    return path, part


def spool_status(spool: Path) -> dict:
    if not spool.exists():  # the capturing process has not created it yet
        return {"entries": []}
    r = subprocess.run(cli("spool", str(spool), "--json"), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_for(pred: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def streams(server: ServerProcess) -> list[dict]:
    page = httpx.get(server.http + "/api/streams", params={"limit": 500}).json()
    return sorted(page["streams"], key=lambda s: s["created"])


def archive(server: ServerProcess, stream_id: str) -> np.ndarray:
    rec = httpx.get(f"{server.http}/api/streams/{stream_id}").json()
    return sf.read(server.data_dir / rec["path"], dtype="int16")[0]


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def test_offline_from_the_start_kill9_then_flush_gives_the_file_exactly(
        tmp_path: Path, server_factory: Callable[..., ServerProcess]) -> None:
    f, x = clip(tmp_path, "take.wav", 1.0, 3.0)
    spool = tmp_path / "spool"
    port = free_port()  # nobody listens here yet
    url = f"ws://127.0.0.1:{port}/ws"
    proc = spawn(cli("stream", "--file", str(f), "--spool", str(spool), "--url", url, "-q",
                     "--name", "pi"), tmp_path / "stream.log")
    try:
        def captured() -> bool:
            entries = spool_status(spool)["entries"]
            return bool(entries) and entries[0]["captured_frames"] == len(x) \
                and entries[0]["state"] == "delivering"  # capture ended, still trying
        wait_for(captured, 60, "the whole file in the spool")
        assert proc.poll() is None  # still waiting for a server, not given up
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    st = spool_status(spool)
    (entry,) = st["entries"]
    assert (entry["state"], entry["stream"], entry["pending_frames"]) == ("ended", None, len(x))
    assert entry["bytes"] == len(x) * 2
    server = server_factory(port=port)
    r = subprocess.run(cli("spool", str(spool), "--flush", "--url", url), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    (s,) = streams(server)
    assert s["name"] == "pi" and s["state"] == "finished" and s["frames"] == len(x)
    assert f"delivered as stream {s['id']}" in r.stdout
    assert np.array_equal(archive(server, s["id"]), x)
    assert spool_status(spool)["entries"] == []
    assert [p for p in spool.iterdir() if not p.name.startswith(".")] == []


def test_an_outage_in_the_middle_of_a_stream(
        tmp_path: Path, server_factory: Callable[..., ServerProcess]) -> None:
    f, x = clip(tmp_path, "take.wav", 0.0, 6.0)
    spool = tmp_path / "spool"
    server = server_factory()
    proc = spawn(cli("stream", "--file", str(f), "--spool", str(spool), "--url", server.url,
                     "-q"), tmp_path / "stream.log")
    try:
        wait_for(lambda: any(s["frames"] > 16000 for s in streams(server)), 30, "audio")
        server.kill9()  # the server vanishes mid-stream...
        time.sleep(2.5)  # ...for a while, capture goes on into the spool
        waiting = spool_status(spool)["entries"][0]
        assert waiting["stream"] is not None and waiting["pending_frames"] > 16000
        server.start()
        assert proc.wait(90) == 0, (tmp_path / "stream.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    (s,) = streams(server)
    assert s["state"] == "finished" and s["frames"] == len(x)
    assert np.array_equal(archive(server, s["id"]), x)
    assert spool_status(spool)["entries"] == []


def test_a_restarted_stream_delivers_its_spool_first(
        tmp_path: Path, server_factory: Callable[..., ServerProcess]) -> None:
    f1, x1 = clip(tmp_path, "one.wav", 0.0, 4.0)
    f2, x2 = clip(tmp_path, "two.wav", 5.0, 2.0)
    spool = tmp_path / "spool"
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    first = spawn(cli("stream", "--file", str(f1), "--spool", str(spool), "--url", url, "-q",
                      "--name", "first"), tmp_path / "one.log")
    try:
        wait_for(lambda: (e := spool_status(spool)["entries"]) != []
                 and e[0]["captured_frames"] > 16000, 30, "capture")
    finally:
        first.send_signal(signal.SIGKILL)  # killed in the middle of capturing
        first.wait(10)
    (left,) = spool_status(spool)["entries"]
    assert left["state"] == "interrupted"
    kept = left["captured_frames"]
    assert 16000 < kept < len(x1)
    server = server_factory(port=port)
    second = subprocess.run(cli("stream", "--file", str(f2), "--spool", str(spool), "--url",
                                url, "-q", "--name", "second"),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    a, b = streams(server)
    assert (a["name"], b["name"]) == ("first", "second")  # the spool's stream was first
    assert a["state"] == b["state"] == "finished"
    assert np.array_equal(archive(server, a["id"]), x1[:kept])  # what was captured, exactly
    assert np.array_equal(archive(server, b["id"]), x2)
    assert spool_status(spool)["entries"] == []


async def test_publisher_spool_drop_oldest_then_deliver(
        tmp_path: Path, server_factory: Callable[..., ServerProcess]) -> None:
    rate = 16000
    port = free_port()
    sp = Spool(tmp_path / "spool", max_bytes=3 * rate * 2, segment_seconds=1.0)
    pub = await Publisher(f"ws://127.0.0.1:{port}/ws", rate=rate, format="s16",
                          spool=sp, name="full").start()
    x = (np.random.default_rng(7).uniform(-0.3, 0.3, 5 * rate) * 32767).astype(np.int16)
    for i in range(0, len(x), 320):
        await pub.send(x[i:i + 320])  # nobody listens: everything goes to the spool
    lost = sum(d.frames for d in pub.dropped)
    assert lost == 2 * rate  # 5 s into a 3 s spool: the 2 oldest 1 s segments
    assert sp.status()["entries"][0]["dropped_frames"] == lost
    server = server_factory(port=port)
    frames = await pub.stop(timeout=60)
    assert frames == 3 * rate
    (s,) = streams(server)
    assert np.array_equal(archive(server, s["id"]), x[lost:])  # the newest audio, exactly


async def test_publisher_spool_when_full_stop(tmp_path: Path, shared_server: ServerProcess,
                                              ) -> None:
    rate = 16000
    url = f"ws://127.0.0.1:{free_port()}/ws"
    sp = Spool(tmp_path / "spool", max_bytes=rate * 2, when_full="stop",
               segment_seconds=0.5)
    pub = await Publisher(url, rate=rate, format="s16", spool=sp).start()
    x = np.ones(320, np.int16)
    with pytest.raises(SpoolFull):
        for _ in range(100):
            await pub.send(x)
    assert pub.offset == rate  # exactly what fits
    await pub.close()
    sp.close()
    r = subprocess.run(cli("spool", str(tmp_path / "spool"), "--flush", "--url",
                           shared_server.url), capture_output=True, text=True, timeout=60,
                       env={**os.environ})
    assert r.returncode == 0, r.stdout + r.stderr
    sid = r.stdout.split("as stream ")[1].split()[0]
    assert np.array_equal(archive(shared_server, sid), np.ones(rate, np.int16))


def test_earshot_stream_when_full_stop_delivers_what_fit_and_exits_1(
        tmp_path: Path, shared_server: ServerProcess) -> None:
    f, x = clip(tmp_path, "take.wav", 0.0, 3.0)
    r = subprocess.run(cli("stream", "--file", str(f), "--spool", str(tmp_path / "spool"),
                           "--spool-size", "40K", "--when-full", "stop", "--url",
                           shared_server.url, "-q", "--name", "full-stop"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "is full" in r.stderr and "capture stopped" in r.stderr
    (s,) = [s for s in streams(shared_server) if s["name"] == "full-stop"]
    assert s["state"] == "finished"
    fit = 40 * 1024 // 2  # the one segment being written is never deleted
    assert np.array_equal(archive(shared_server, s["id"]), x[:fit])
    assert spool_status(tmp_path / "spool")["entries"] == []


async def test_drops_while_connected_split_into_ordered_streams_that_account_for_everything(
        tmp_path: Path, shared_server: ServerProcess) -> None:
    """Capture far faster than delivery into a tiny spool, connected: every stream the
    server ends up with is an exact, contiguous slice of the input, in order, and the
    slices plus the reported drops are the whole input."""
    rate = 16000
    sp = Spool(tmp_path / "spool", max_bytes=rate * 2 // 2, segment_seconds=0.1)
    name = f"burst-{time.monotonic_ns()}"
    pub = await Publisher(shared_server.url, rate=rate, format="s16", spool=sp,
                          name=name).start()
    x = (np.arange(60000) - 30000).astype(np.int16)  # every frame tells where it is from
    import asyncio

    for i in range(0, len(x), 320):
        await pub.send(x[i:i + 320])
        if i >= 24000 and i % 6400 == 0:  # the first 1.5 s in one go: drops are certain
            await asyncio.sleep(0.01)  # then let the network make some progress now and then
    await pub.stop(timeout=90)
    dropped = sum(d.frames for d in pub.dropped)
    assert dropped > 0
    got = [s for s in streams(shared_server) if s["name"] == name]
    assert got and all(s["state"] == "finished" for s in got), [s["state"] for s in got]
    pos = 0
    total = 0
    for s in got:  # in creation order
        y = archive(shared_server, s["id"])
        if len(y) == 0:
            continue
        first = int(y[0]) + 30000
        assert first >= pos
        assert np.array_equal(y, x[first:first + len(y)])
        pos = first + len(y)
        total += len(y)
    assert pos == len(x)  # the newest audio always arrives
    # 'dropped' counts frames deleted before they were acknowledged: some of those may
    # still have reached the server (in flight), none is missing from the count
    assert total <= len(x) <= total + dropped


def test_flush_exit_codes_unreachable_and_held_by_a_capture(
        tmp_path: Path, shared_server: ServerProcess) -> None:
    sp = Spool(tmp_path / "spool")
    held = sp.create(format="s16", rate=16000, channels=1, name="held")  # locked by us
    sp.append(held, np.zeros(1600, np.int16).tobytes())
    other = Spool(tmp_path / "spool").create(format="s16", rate=16000, channels=1)
    other.append(np.ones(1600, np.int16).tobytes())
    other.close_capture()
    other.close_files()
    other.unlock()
    r = subprocess.run(cli("spool", str(tmp_path / "spool"), "--flush", "--url",
                           f"ws://127.0.0.1:{free_port()}/ws", "--retries", "1"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "cannot reach" in r.stderr, r.stderr
    assert spool_status(tmp_path / "spool")["entries"][1]["pending_frames"] == 1600  # kept
    r = subprocess.run(cli("spool", str(tmp_path / "spool"), "--flush", "--url",
                           shared_server.url), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"held by a running capture: {held.id}" in r.stderr
    assert "1600 frames (0.10 s) delivered" in r.stdout
    (left,) = spool_status(tmp_path / "spool")["entries"]
    assert (left["entry"], left["state"]) == (held.id, "capturing")
    sp.close()
