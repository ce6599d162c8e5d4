"""Cost of the metadata calls a gateway makes, SQLite against PostgreSQL, side by side.

    python benchmarks/bench_metadata.py [--rounds 300] [--admin postgresql://postgres@127.0.0.1/postgres]

Creates a PostgreSQL database of its own (dropped at the end) and an SQLite file in a temp
directory. Each round makes every call once on both stores, alternating which goes first,
so both see the same machine load. Prints a table (µs per call, p50/p99, and the
PostgreSQL/SQLite ratio) and appends it to benchmarks/results/metadata.jsonl. Then threads sharing
one store (REST handlers) race on allocate_segment, to show the pool at work.

Columns: SQLite (WAL, synchronous=NORMAL: no fsync per commit), PostgreSQL as shipped
(pool connections checked on checkout), without that check, and with
``synchronous_commit=off`` set through the URL (commits return before the WAL fsync).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psycopg

from earshot.storage.metadata import MetadataStore, SegmentRecord, StreamRecord, open_store
from earshot.storage.metadata.postgres import PostgresStore

RESULTS = Path(__file__).parent / "results" / "metadata.jsonl"


def record(sid: str) -> StreamRecord:
    return StreamRecord(id=sid, name="bench", created=time.time(), format="s16",
                        archive_format="wav", rate=16000, channels=1, path=f"streams/{sid}.wav",
                        token_hash="h", client={"agent": "bench", "ip": "127.0.0.1"})


def calls(store: MetadataStore, sid: str, i: int) -> dict[str, Callable[[], object]]:
    """One round of what a stream costs: start, progress, segments, claims, REST, stop."""

    def segment() -> None:
        n = store.allocate_segment(sid)
        store.add_segment(SegmentRecord(sid, n, 0, 16000, 16000, f"streams/{sid}/{n}.wav", 1.0))

    return {
        "create (stream start)": lambda: store.create(record(sid)),
        "update frames (progress)": lambda: store.update(sid, frames=16000 * i),
        "get (resume, REST)": lambda: store.get(sid),
        "allocate_segment + add_segment": segment,
        "claim_event": lambda: store.claim_event(sid, f"vad:speech_end:{i}"),
        "add_transcript (final)": lambda: store.add_transcript(
            sid, {"segment": 0, "start": 0.5, "end": 1.5, "text": "hello there", "words": []}),
        "list 50 (REST)": lambda: store.list(limit=50, offset=0),
        "update finished (stop)": lambda: store.update(sid, state="finished", ended=time.time()),
    }


def race(store: MetadataStore, sid: str, threads: int, per_thread: int) -> float:
    """Calls per second of allocate_segment from ``threads`` threads sharing ``store``."""
    store.create(record(sid))
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for _ in range(per_thread):
            store.allocate_segment(sid)

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    assert store.allocate_segment(sid) == threads * per_thread  # none lost, none doubled
    return threads * per_thread / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    dbname = f"earshot_bench_{secrets.token_hex(4)}"
    with psycopg.connect(args.admin, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    tmp = tempfile.TemporaryDirectory()
    try:
        url = args.admin.rsplit("/", 1)[0] + "/" + dbname
        stores = {"sqlite": open_store(Path(tmp.name) / "m.db"), "postgres": open_store(url),
                  "postgres-nocheck": PostgresStore(url, check=False),
                  "postgres-async-commit": open_store(
                      url + "?options=-c%20synchronous_commit%3Doff")}
        times: dict[str, dict[str, list[float]]] = {k: {} for k in stores}
        for i in range(args.rounds):
            kinds = list(stores)
            for kind in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:  # rotate the order
                for name, call in calls(stores[kind], f"{kind}-{i}", i).items():
                    t0 = time.perf_counter()
                    call()
                    times[kind].setdefault(name, []).append((time.perf_counter() - t0) * 1e6)
        rows = []
        print("µs per call, p50 / p99 (ratio of p50s to SQLite)")
        print(f"{'call':<32}" + "".join(f"{k:>26}" for k in stores))
        for name in times["sqlite"]:
            row: dict[str, object] = {"call": name}
            cells = []
            base = float(np.percentile(times["sqlite"][name], 50))
            for kind in stores:
                p50, p99 = (float(v) for v in np.percentile(times[kind][name], [50, 99]))
                row[kind] = {"p50_us": p50, "p99_us": p99, "ratio_p50": p50 / base}
                cells.append(f"{p50:.0f} / {p99:.0f} ({p50 / base:.1f}x)")
            rows.append(row)
            print(f"{name:<32}" + "".join(f"{c:>26}" for c in cells))
        races = {}
        for kind, store in stores.items():
            for n in (1, 4):
                races[f"{kind}_{n}_threads_per_s"] = race(store, f"race-{kind}-{n}", n, 200)
        print("allocate_segment calls/s from threads sharing one store: " + ", ".join(
            f"{k.replace('_per_s', '')} {v:.0f}" for k, v in races.items()))
        for s in stores.values():
            s.close()
        with RESULTS.open("a") as f:
            f.write(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "load_avg_1min": os.getloadavg()[0], "rounds": args.rounds,
                                "calls": rows, "race": races}) + "\n")
        print(f"appended to {RESULTS} (load average {os.getloadavg()[0]:.1f})")
    finally:
        tmp.cleanup()
        with psycopg.connect(args.admin, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


if __name__ == "__main__":
    main()
