"""Archives in object storage end to end (issue 23): real processes only.

The S3 server is moto's standalone server (``moto_server``, tests/s3_helpers.py), started
on a free port: it speaks the S3 REST protocol with multipart uploads, Content-MD5 checks
and ranged GETs (``rclone serve s3`` was the alternative; its ranged GETs carry the whole
object's checksum, which botocore's response validation rejects). The gateways are
``earshot serve`` processes with data directories of their own (no shared filesystem), one
redis-server as the bus and one PostgreSQL database for the metadata, as in a cluster.
One moto server serves the module (its start-up is seconds); each test's gateways keep
their archives under a prefix of the bucket that is the test's alone.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from earshot.client import Reconnect
from earshot.storage.peaks import peaks
from helpers import CutProxy, ServerProcess, free_port, stream_file
from redis_helpers import RedisServer
from s3_helpers import BUCKET, MotoServer

pytestmark = pytest.mark.slow
RATE = 16000
PREFIX = "arch"  # (each test's own: arch-<its tmp_path's name>)


def noise(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, int(seconds * RATE),
                                                dtype=np.int16)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.stop()


class Cluster:
    """Gateways sharing a bus, a database and a bucket (under ``prefix``), each with its
    own data dir."""

    def __init__(self, tmp: Path, moto: MotoServer, bus: str, db: str, prefix: str) -> None:
        self.tmp, self.moto, self.bus, self.db, self.prefix = tmp, moto, bus, db, prefix
        self.started: list[ServerProcess] = []

    def gateway(self, name: str, *args: str, store: str | None = None,
                env: dict[str, str] | None = None) -> ServerProcess:
        gw = ServerProcess(self.tmp / name, "--bus", self.bus, "--db", self.db,
                           "--archive-store", store or f"s3://{BUCKET}/{self.prefix}", *args,
                           env={**self.moto.env(), **(env or {})})
        self.started.append(gw)
        return gw.start(timeout=40)

    def stop(self) -> None:
        for gw in self.started:
            gw.stop()


@pytest.fixture
def cluster(tmp_path: Path, moto: MotoServer, redis_server: RedisServer,
            pg_url: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, moto, redis_server.url, pg_url, f"{PREFIX}-{tmp_path.name}")
    yield c
    c.stop()


def health(gw: ServerProcess) -> dict[str, Any]:
    return dict(httpx.get(f"{gw.http}/healthz", timeout=10).json())


def wait_uploaded(gw: ServerProcess, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        store = health(gw)["archive_store"]
        if store["backlog_files"] == 0 and store["uploaded_files"] > 0:
            return dict(store)
        assert time.monotonic() < deadline, store
        time.sleep(0.1)


def local_parts(gw: ServerProcess, sid: str) -> list[str]:
    return sorted(p.name for p in (gw.data_dir / "streams").glob(f"{sid}.*")
                  if re.search(r"\.(wav|flac|ogg)$", p.name))


def wait_removed(gw: ServerProcess, sid: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while local_parts(gw, sid):
        assert time.monotonic() < deadline, local_parts(gw, sid)
        time.sleep(0.1)


def wav(body: bytes) -> np.ndarray:
    return np.asarray(sf.read(io.BytesIO(body), dtype="int16")[0])


def read_metric(gw: ServerProcess, name: str) -> float:
    text = httpx.get(f"{gw.http}/metrics", timeout=10).text
    m = re.search(rf"^{name}(?:_total)? ([0-9.e+]+)$", text, re.M)
    assert m, name
    return float(m.group(1))


def bucket_names(cluster: Cluster) -> set[str]:
    """The objects under this test's prefix."""
    out = cluster.moto.raw().list_objects_v2(Bucket=BUCKET,
                                             Prefix=f"{cluster.prefix}/streams/")
    return {o["Key"].rsplit("/", 1)[-1] for o in out.get("Contents", [])}


async def test_a_stream_recorded_on_one_gateway_reads_back_from_the_other(
        cluster: Cluster) -> None:
    """Gateway A records (1 s parts), uploads, removes its copy; gateway B serves the whole
    archive, ranges, a byte Range (ranged GETs, bytes counted), peaks and the source."""
    a = cluster.gateway("a", "--archive-part", "1", "--archive-keep-local", "0")
    b = cluster.gateway("b")
    sent = noise(3.5, 1)
    pub, _, _ = await stream_file(a.url, sent, RATE, processors=[], realtime=False,
                                  name="mic-a")
    sid = pub.stream_id
    wait_uploaded(a)
    wait_removed(a, sid)  # A's local copy is gone: every read below is from the bucket
    assert bucket_names(cluster) >= {f"{sid}.wav", f"{sid}.part0001.wav",
                                          f"{sid}.part0002.wav", f"{sid}.part0003.wav"}
    whole = httpx.get(f"{b.http}/api/streams/{sid}/audio", timeout=30)
    assert whole.status_code == 200 and whole.headers["x-earshot-parts"] == "4"
    assert np.array_equal(wav(whole.content), sent)
    r = httpx.get(f"{b.http}/api/streams/{sid}/audio", params={"start": 1.25, "end": 2.5},
                  timeout=30)
    assert r.headers["x-earshot-range"] == "20000 40000"
    assert np.array_equal(wav(r.content), sent[20000:40000])
    got, fetched = await ranged(b, sid, 30000, 30999)  # inside part 1
    assert got == whole.content[30000:31000]
    assert fetched <= 1000 + 2 * 4096, fetched  # the range, two parts' headers: not 32 KB
    p = httpx.get(f"{b.http}/api/streams/{sid}/peaks", params={"width": 50}, timeout=30).json()
    truth = cluster.tmp / "truth.wav"
    sf.write(truth, sent, RATE, subtype="PCM_16")
    lo, hi, frames = peaks(truth, 50)
    assert (p["min"], p["max"], p["duration"]) == (lo, hi, frames / RATE)
    rec = httpx.get(f"{b.http}/api/streams/{sid}", timeout=10).json()
    t0 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec["created"] - 2))
    t1 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec["created"] + 8))
    src = httpx.get(f"{b.http}/api/sources/mic-a/audio", params={"from": t0, "to": t1},
                    timeout=30)
    assert src.status_code == 200 and src.headers["x-earshot-streams"] == sid
    out = wav(src.content)
    at = int(np.flatnonzero(out != 0)[0])
    assert np.array_equal(out[at:at + len(sent)], sent)

    one = noise(10, 2)  # a one-file archive (no rotation) of 320 KB, recorded on B and
    pub, _, _ = await stream_file(b.url, one, RATE, processors=[], realtime=False)
    wait_uploaded(b)  # read from A, which never had it: a Range is one ranged GET
    got, fetched = await ranged(a, pub.stream_id, 100_000, 101_999)
    assert fetched == 2000  # exactly the bytes asked for
    whole = httpx.get(f"{a.http}/api/streams/{pub.stream_id}/audio", timeout=30)
    assert "x-earshot-parts" not in whole.headers  # the object itself, byte for byte
    assert np.array_equal(wav(whole.content), one) and got == whole.content[100_000:102_000]

    d = httpx.delete(f"{b.http}/api/streams/{sid}", timeout=30)  # from the other gateway:
    assert d.status_code == 204  # its objects go with it
    deadline = time.monotonic() + 20
    while any(n.startswith(sid) for n in bucket_names(cluster)):
        assert time.monotonic() < deadline, bucket_names(cluster)
        time.sleep(0.1)
    assert httpx.get(f"{a.http}/api/streams/{sid}/audio", timeout=30).status_code == 404


async def ranged(gw: ServerProcess, sid: str, lo: int, hi: int) -> tuple[bytes, float]:
    """A ``Range: bytes=lo-hi`` read and the bytes the gateway fetched from the store."""
    before = read_metric(gw, "earshot_archive_store_read_bytes")
    r = httpx.get(f"{gw.http}/api/streams/{sid}/audio", headers={"Range": f"bytes={lo}-{hi}"},
                  timeout=30)
    assert r.status_code == 206, r.text
    return r.content, read_metric(gw, "earshot_archive_store_read_bytes") - before


async def test_closed_parts_go_up_while_live_and_a_dead_store_loses_nothing(
        cluster: Cluster) -> None:
    """Parts are in the bucket while the stream is live; with the store unreachable (a
    proxy in front of it refusing), uploads fail and are retried, /healthz and /metrics say
    so, ingest goes on; the store back, the backlog drains and the archive reads back
    exactly from the other gateway."""
    async with CutProxy(cluster.moto.port) as proxy:
        a = await asyncio.to_thread(  # (the proxy runs on this loop)
            cluster.gateway, "a", "--archive-part", "0.5",
            env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"})
        b = await asyncio.to_thread(cluster.gateway, "b")
        sent = noise(5, 3)
        task = asyncio.create_task(stream_file(a.url, sent, RATE, processors=[],
                                               realtime=True, block_s=0.05))
        await asyncio.sleep(1.8)
        names = await asyncio.to_thread(bucket_names, cluster)
        assert len(names) >= 2, names  # parts 0 and 1 closed and uploaded while live
        proxy.targets = (free_port(),)  # the store is unreachable from here on
        proxy.cut()
        await asyncio.sleep(2.0)
        h = await asyncio.to_thread(health, a)
        assert h["status"] == "degraded" and h["archive_store"]["state"] == "unreachable", h
        assert h["archive_store"]["failures"] >= 1 and h["archive_store"]["backlog_files"] >= 1
        assert await asyncio.to_thread(read_metric, a,
                                       "earshot_archive_store_backlog_files") >= 1
        pub, _, _ = await task  # ingest never waited on the store
        assert pub.acked == len(sent)
        proxy.targets = (cluster.moto.port,)  # back
        store = await asyncio.to_thread(wait_uploaded, a, 90)
    assert store["failures"] >= 1 and store["dropped"] == 0
    sid = pub.stream_id
    assert {f"{sid}.part{n:04d}.wav" for n in range(1, 10)} <= bucket_names(cluster)
    r = httpx.get(f"{b.http}/api/streams/{sid}/audio", timeout=30)
    assert r.headers["x-earshot-parts"] == "10"
    assert np.array_equal(wav(r.content), sent)
    assert health(a)["status"] == "ok"


async def test_a_killed_gateway_s_stream_continues_on_the_other(cluster: Cluster) -> None:
    """Gateway A killed (-9) mid-stream: the client resumes on B, which continues the
    archive in a new part from the shared log's end. A's live part stays on A's disk (B
    answers 409 for the whole archive meanwhile) and is uploaded when A is back; then the
    archive read from B equals what the client sent. (The recovery path exercised: the old
    part uploaded by its gateway on its return, the offset from the bus's retained log.)"""
    a = cluster.gateway("a", "--archive-part", "3600")
    b = cluster.gateway("b")
    sent = noise(4, 4)
    async with CutProxy(a.port, b.port) as lb:
        task = asyncio.create_task(stream_file(
            lb.url, sent, RATE, processors=[], realtime=True, block_s=0.05,
            reconnect=Reconnect(initial=0.2, maximum=1.0)))
        await asyncio.sleep(1.5)
        a.kill9()
        pub, _, _ = await task
    sid = pub.stream_id
    assert pub.reconnects >= 1
    wait_uploaded(b)
    r = httpx.get(f"{b.http}/api/streams/{sid}/audio", timeout=30)
    assert r.status_code == 409 and "not in the object store yet" in r.text
    a.start(timeout=40)  # back: its start-up scan uploads the part it was writing
    deadline = time.monotonic() + 60
    while (r := httpx.get(f"{b.http}/api/streams/{sid}/audio", timeout=30)).status_code != 200:
        assert time.monotonic() < deadline, r.text
        await asyncio.sleep(0.2)
    assert r.headers["x-earshot-parts"] == "2"
    assert np.array_equal(wav(r.content), sent)


async def test_bad_stores_are_clear_at_start_up_and_ingest_goes_on(
        cluster: Cluster, tmp_path: Path) -> None:
    """A bucket that does not exist, an endpoint that refuses, keys the store refuses: a
    clear error at start-up in /healthz (degraded), and a stream is still recorded exactly;
    a malformed URL stops the server before it listens."""
    refused = f"http://127.0.0.1:{free_port()}"
    iam = MotoServer(tmp_path / "moto-iam", iam=True).start()  # checks keys (s3_helpers.py)
    wrong = {"AWS_ENDPOINT_URL": iam.endpoint, "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1",
             "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    try:
        for name, args, env, store, state in (
                ("nobucket", (), None, "s3://no-such-bucket/x", "no_bucket"),
                ("refused", ("--archive-store-endpoint", refused), None, f"s3://{BUCKET}/x",
                 "unreachable"),
                ("wrongkeys", (), wrong, f"s3://{BUCKET}", "bad_credentials")):
            gw = cluster.gateway(name, *args, store=store, env=env)
            deadline = time.monotonic() + 30
            while (h := health(gw))["archive_store"]["state"] == "unknown":  # (being checked)
                assert time.monotonic() < deadline, h
                time.sleep(0.1)
            assert h["status"] == "degraded" and h["archive_store"]["state"] == state, h
            assert h["archive_store"]["error"], h
            sent = noise(1, 5)
            pub, _, _ = await stream_file(gw.url, sent, RATE, processors=[], realtime=False)
            assert pub.acked == len(sent)
            r = httpx.get(f"{gw.http}/api/streams/{pub.stream_id}/audio", timeout=30)
            assert np.array_equal(wav(r.content), sent)  # from the local disk
            gw.stop()
    finally:
        iam.stop()
    bad = ServerProcess(tmp_path / "bad", "--archive-store", "s3://Bad_Bucket/x")
    with pytest.raises(RuntimeError, match="not a valid bucket name"):
        bad.start()
