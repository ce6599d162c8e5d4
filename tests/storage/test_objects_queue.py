"""The upload queue's pure core (earshot.storage.objects.queue): time passed in, no I/O."""

from __future__ import annotations

import random

import pytest

from earshot.storage.objects.queue import Backoff, UploadJob, UploadQueue


def job(name: str, size: int = 100, tag: object = None) -> UploadJob:
    return UploadJob(name=name, path=f"/data/{name}", size=size, tag=tag)


def queue(concurrency: int = 2, **backoff: float) -> UploadQueue:
    return UploadQueue(concurrency=concurrency, backoff=Backoff(**backoff),
                       rng=random.Random(7))


def test_backoff_doubles_up_to_the_cap_with_jitter_below_the_nominal_delay() -> None:
    b = Backoff(base=1.0, factor=2.0, cap=60.0, jitter=0.2)
    assert [b.delay(n, 0.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert b.delay(3, 0.999) == pytest.approx(4 * (1 - 0.2 * 0.999))
    assert b.delay(0, 0.5) == 0.0
    assert b.delay(10_000, 0.0) == 60.0  # no overflow for a store down for days


def test_jobs_come_out_in_order_within_the_concurrency() -> None:
    q = queue(concurrency=2)
    for i in range(4):
        q.add(job(f"f{i}", size=10 * (i + 1)), now=float(i))
    assert len(q) == 4 and q.backlog_bytes() == 100
    assert q.take(10.0) == job("f0", 10)
    assert q.take(10.0) == job("f1", 20)
    assert q.take(10.0) is None  # both slots busy
    assert q.next_due(10.0) is None  # (the driver waits for an upload to end)
    q.succeeded("f0", 11.0)
    assert q.take(11.0) == job("f2", 30)
    r = q.report(11.0)
    assert r["backlog_files"] == 3 and r["backlog_bytes"] == 90 and r["in_flight"] == 2
    assert r["uploaded_files"] == 1 and r["uploaded_bytes"] == 10
    assert r["oldest_seconds"] == 10.0  # f1, queued at 1.0


def test_a_failure_is_retried_after_its_backoff_and_others_go_first() -> None:
    q = queue(concurrency=1, base=2.0, factor=2.0, cap=100.0, jitter=0.0)
    q.add(job("a"), 0.0)
    q.add(job("b"), 0.0)
    assert q.take(0.0) == job("a")
    assert q.failed("a", 1.0, "unreachable") == 2.0
    assert q.take(1.0) == job("b")  # "a" waits for its backoff
    q.succeeded("b", 1.5)
    assert q.take(1.5) is None and q.next_due(1.5) == pytest.approx(1.5)
    assert q.take(3.0) == job("a")
    assert q.failed("a", 3.0, "unreachable") == 4.0  # doubled
    assert q.take(6.9) is None
    r = q.report(6.9)
    assert r["retrying"] == 1 and r["max_attempts"] == 2 and r["failures"] == 2
    assert r["last_error"] == "a: unreachable" and r["last_error_age"] == pytest.approx(3.9)
    assert q.take(7.0) == job("a")
    q.succeeded("a", 7.5)
    assert len(q) == 0 and q.report(8.0)["backlog_bytes"] == 0


def test_an_hour_without_the_store_keeps_every_job_and_adding_never_refuses() -> None:
    q = queue(concurrency=2, base=1.0, factor=2.0, cap=300.0, jitter=0.2)
    now, added = 0.0, 0
    while now < 3600.0:  # a part closes every 10 s; every attempt fails
        q.add(job(f"p{added:04d}", size=1000), now)
        added += 1
        while (j := q.take(now)) is not None:
            assert q.failed(j.name, now, "connection refused") <= 300.0
        now += 10.0
    r = q.report(now)
    assert r["backlog_files"] == added == 360 and r["backlog_bytes"] == 360_000
    assert r["dropped"] == 0 and r["oldest_seconds"] == pytest.approx(3600.0)
    # the store is back: everything goes, each within one backoff cap
    uploaded = set()
    t_end = now + 3600.0
    while len(q) and now < t_end:
        while (j := q.take(now)) is not None:
            q.succeeded(j.name, now)
            uploaded.add(j.name)
        wait = q.next_due(now)
        now += wait if wait is not None and wait > 0 else 0.01
    assert len(uploaded) == 360 and len(q) == 0
    assert now < 3600.0 + 301.0  # every job was due again within the cap


def test_a_permanent_failure_drops_the_job_and_counts_it() -> None:
    q = queue()
    q.add(job("gone"), 0.0)
    assert q.take(0.0) == job("gone")
    assert q.failed("gone", 1.0, "the file is gone", permanent=True) == 0.0
    assert len(q) == 0
    r = q.report(1.0)
    assert r["dropped"] == 1 and r["last_error"] == "gone: the file is gone"


def test_adding_a_name_again_replaces_the_waiting_job_or_uploads_it_once_more() -> None:
    q = queue(concurrency=1)
    q.add(job("x", 10), 0.0)
    q.add(job("x", 20), 1.0)  # waiting: replaced, keeps its place
    assert len(q) == 1 and q.backlog_bytes() == 20
    assert q.take(1.0) == job("x", 20)
    q.add(job("x", 30), 2.0)  # in flight: once more afterwards
    q.succeeded("x", 3.0)
    assert q.take(3.0) == job("x", 30)
    q.succeeded("x", 4.0)
    assert len(q) == 0 and q.totals.uploaded == 2
    q.add(job("y"), 5.0)
    assert q.discard("y") and len(q) == 0 and q.take(5.0) is None


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        UploadQueue(concurrency=0)
    with pytest.raises(ValueError, match="size"):
        queue().add(job("neg", size=-1), 0.0)


def test_retry_now_brings_every_backed_off_job_forward_once_the_store_works() -> None:
    q = queue(concurrency=1, base=60.0, factor=2.0, cap=300.0, jitter=0.0)
    q.add(job("a"), 0.0)
    q.add(job("b"), 0.0)
    q.add(job("fresh"), 0.0)
    for name in ("a", "b"):
        assert q.take(0.0) == job(name)
        q.failed(name, 0.0, "unreachable")
    assert q.take(1.0) == job("fresh")
    q.succeeded("fresh", 1.0)
    assert q.take(10.0) is None and q.next_due(10.0) == pytest.approx(50.0)
    assert q.retry_now(10.0) == 2
    assert q.next_due(10.0) == 0.0
    assert q.take(10.0) == job("a")  # in their order, each once
    q.succeeded("a", 10.5)
    assert q.take(10.5) == job("b")
    q.succeeded("b", 11.0)
    assert q.take(11.0) is None and len(q) == 0 and q.retry_now(11.0) == 0
