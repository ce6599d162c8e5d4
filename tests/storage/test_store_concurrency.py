"""Segment numbers and event claims stay unique when threads and processes race for them,
on SQLite (one WAL file, busy timeout) and PostgreSQL alike."""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter

from storage_helpers import hammer, record

from earshot.storage.metadata import MetadataStore, open_store

ROUNDS = 100


def test_threads_share_one_store(store: MetadataStore) -> None:
    """REST handlers and the event loop call one store object from many threads."""
    store.create(record("t"))
    n_threads, rounds = 8, 40
    barrier = threading.Barrier(n_threads)
    numbers: list[int] = []
    won: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            barrier.wait(30)
            mine, claims = [], []
            for i in range(rounds):
                mine.append(store.allocate_segment("t"))
                if store.claim_event("t", f"k{i}"):
                    claims.append(i)
                store.get("t")
            with lock:
                numbers.extend(mine)
                won.extend(claims)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sorted(numbers) == list(range(n_threads * rounds))
    assert sorted(won) == list(range(rounds))  # every key won exactly once


def test_two_processes_allocate_and_claim_without_duplicates(store_target: str) -> None:
    """Two processes on one SQLite file (or one PostgreSQL database), released together by a
    barrier: no number handed out twice, every event claimed by exactly one of them, and
    no 'database is locked'."""
    setup = open_store(store_target)
    setup.create(record("p"))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [ctx.Process(target=hammer, args=(store_target, "p", ROUNDS, barrier, out))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert all(isinstance(r, tuple) for r in results), results  # an error string otherwise
    numbers = [n for r in results for n in r[0]]
    assert sorted(numbers) == list(range(2 * ROUNDS))
    for r in results:
        assert r[0] == sorted(r[0])  # each process sees its own numbers rise
    claims = Counter(k for r in results for k in r[1])
    assert sorted(claims) == list(range(ROUNDS)) and set(claims.values()) == {1}
    # the database agrees: the counter moved past every number, once per allocation
    assert setup.allocate_segment("p") == 2 * ROUNDS
    assert [setup.claim_event("p", f"vad:speech_end:{i}") for i in (0, ROUNDS - 1, ROUNDS)
            ] == [False, False, True]
    setup.close()
