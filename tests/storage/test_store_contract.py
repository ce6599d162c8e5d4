"""The MetadataStore contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest
from storage_helpers import record

from earshot.errors import DuplicateStream, StorageError, StreamNotFound
from earshot.storage.metadata import MetadataStore, PartRecord, SegmentRecord


def seg(sid: str, n: int, start: int = 0, end: int = 16000) -> SegmentRecord:
    return SegmentRecord(sid, n, start, end, 16000, f"streams/{sid}.segments/{n:04d}.wav", 5.0)


def test_streams_page_update_state_delete(store: MetadataStore) -> None:
    for i in range(5):
        store.create(record(f"id{i}", created=100.0 + i))
    page, total = store.list(limit=2, offset=1)
    assert total == 5 and [r.id for r in page] == ["id3", "id2"]
    store.update("id1", frames=32000, state="finished", ended=123.5)
    rec = store.get("id1")
    assert (rec.frames, rec.state, rec.ended, rec.duration, rec.client) == (
        32000, "finished", 123.5, 2.0, {"agent": "t"})
    assert "token_hash" not in rec.public()
    assert {r.id for r in store.with_state("live")} == {"id0", "id2", "id3", "id4"}
    assert [r.id for r in store.with_state("finished")] == ["id1"]
    store.delete("id1")
    with pytest.raises(StreamNotFound):
        store.get("id1")
    with pytest.raises(ValueError, match="bogus"):
        store.update("id0", bogus=1)
    assert store.list(limit=10, offset=0)[1] == 4


def test_record_fields_round_trip_exactly(store: MetadataStore) -> None:
    client = {"agent": "edge/1.2", "ip": "10.0.0.7", "tags": ["a", "ü"], "n": 3, "x": None}
    rec = record("rt", created=1764600000.123456, name=None, format="f32",
                 archive_format="flac", rate=48000, channels=2, client=client,
                 frames=48000 * 3600 * 13)  # past 2^31 frames: bigint in PostgreSQL
    store.create(rec)
    assert store.get("rt") == rec
    store.update("rt", client={"agent": "new"}, name="renamed")
    got = store.get("rt")
    assert (got.client, got.name, got.frames) == ({"agent": "new"}, "renamed", rec.frames)


def test_duplicate_stream_id_is_refused(store: MetadataStore) -> None:
    store.create(record("dup"))
    with pytest.raises(DuplicateStream, match="dup"):
        store.create(record("dup", name="other"))
    assert store.get("dup").name == "name-dup"  # the first one is untouched
    assert isinstance(DuplicateStream("x"), StorageError)


def test_allocate_segment_counts_per_stream_and_survives_reopen(
        store: MetadataStore, store_target: str) -> None:
    from earshot.storage.metadata import open_store

    store.create(record("a"))
    store.create(record("b"))
    assert [store.allocate_segment("a") for _ in range(3)] == [0, 1, 2]
    assert store.allocate_segment("b") == 0
    assert store.allocate_segment("a") == 3
    with pytest.raises(StreamNotFound):
        store.allocate_segment("nope")
    other = open_store(store_target)  # another process's view: the counter is in the db
    try:
        assert other.allocate_segment("a") == 4
    finally:
        other.close()
    assert store.allocate_segment("a") == 5


def test_segments_are_stored_in_order_and_numbers_are_unique(store: MetadataStore) -> None:
    store.create(record("s"))
    for n in (store.allocate_segment("s") for _ in range(3)):
        store.add_segment(seg("s", n, n * 16000, n * 16000 + 8000))
    got = store.segments("s")
    assert [(g.n, g.start, g.end, g.path) for g in got] == [
        (0, 0, 8000, "streams/s.segments/0000.wav"), (1, 16000, 24000,
        "streams/s.segments/0001.wav"), (2, 32000, 40000, "streams/s.segments/0002.wav")]
    assert got[1].public()["duration"] == 0.5
    with pytest.raises(StorageError, match="segment 1 is stored already"):
        store.add_segment(seg("s", 1))
    with pytest.raises(StreamNotFound):
        store.add_segment(seg("missing", 0))
    assert store.segments("missing") == []


def test_claim_event_is_true_once_per_stream_and_key(store: MetadataStore) -> None:
    store.create(record("c"))
    store.create(record("d"))
    assert store.claim_event("c", "vad:speech_end:123456") is True
    assert store.claim_event("c", "vad:speech_end:123456") is False
    assert store.claim_event("c", "vad:speech_end:123457") is True
    assert store.claim_event("d", "vad:speech_end:123456") is True  # keys are per stream
    with pytest.raises(StreamNotFound):
        store.claim_event("missing", "k")
    store.delete("c")  # claims go with the stream
    store.create(record("c"))
    assert store.claim_event("c", "vad:speech_end:123456") is True


def test_archive_parts_are_claimed_once_and_recorded_when_uploaded(
        store: MetadataStore) -> None:
    store.create(record("p"))
    assert store.parts("p") == []
    assert store.add_part("p", 1, 48000, "gw-a") is True
    assert store.add_part("p", 1, 96000, "gw-b") is False  # taken: the caller picks 2
    assert store.add_part("p", 2, 96000, "gw-b") is True
    store.part_uploaded(PartRecord("p", 0, 0, "gw-a", "streams/p.wav", 96044, 48000, "ab" * 32,
                                   "etag0", 7.5))
    store.part_uploaded(PartRecord("p", 1, 999, "gw-a", "streams/p.part0001.wav", 100, 28,
                                   "cd" * 32, "etag1", 8.5))
    got = store.parts("p")
    assert [(r.n, r.start, r.gateway, r.name, r.size, r.frames, r.uploaded) for r in got] == [
        (0, 0, "gw-a", "streams/p.wav", 96044, 48000, 7.5),
        (1, 48000, "gw-a", "streams/p.part0001.wav", 100, 28, 8.5),  # its start kept
        (2, 96000, "gw-b", None, None, None, None)]
    with pytest.raises(StreamNotFound):
        store.add_part("missing", 1, 0)
    store.delete("p")  # parts go with the stream
    store.create(record("p"))
    assert store.parts("p") == []


def test_transcripts_are_idempotent_by_segment(store: MetadataStore) -> None:
    store.create(record("t"))
    words = [{"word": "héllo", "start": 1.0, "end": 1.4, "probability": 0.9}]
    store.add_transcript("t", {"segment": 1, "start": 4.0, "end": 5.0, "text": "second"})
    store.add_transcript("t", {"segment": 0, "start": 1.0, "end": 2.0, "text": "first",
                               "words": words})
    store.add_transcript("t", {"segment": 1, "start": 4.0, "end": 5.5, "text": "second, fixed",
                               "words": []})
    assert store.transcripts("t") == [
        {"segment": 0, "start": 1.0, "end": 2.0, "text": "first", "words": words},
        {"segment": 1, "start": 4.0, "end": 5.5, "text": "second, fixed", "words": []}]
    with pytest.raises((KeyError, ValueError, TypeError)):
        store.add_transcript("t", {"segment": "x", "start": 0, "end": 1, "text": ""})
    store.delete("t")
    assert store.transcripts("t") == []


def test_postgres_store_reconnects_after_its_connections_are_killed(pg_url: str) -> None:
    """What a PostgreSQL restart does to a gateway's pool: every server process serving it
    is terminated; the next calls get checked, fresh connections and succeed."""
    import psycopg

    from earshot.storage.metadata import open_store

    store = open_store(pg_url)
    store.create(record("r"))
    assert store.allocate_segment("r") == 0
    dbname = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)).fetchone()
    assert killed is not None and killed[0] >= 1
    assert store.allocate_segment("r") == 1
    assert store.get("r").id == "r"
    store.close()
