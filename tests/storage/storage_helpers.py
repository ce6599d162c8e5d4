"""Shared by the store tests."""

from __future__ import annotations

from earshot.storage.metadata import StreamRecord


def record(sid: str, created: float = 100.0, **kw: object) -> StreamRecord:
    fields: dict = dict(id=sid, name=f"name-{sid}", created=created, format="s16",
                        archive_format="wav", rate=16000, channels=1,
                        path=f"streams/{sid}.wav", token_hash="h", client={"agent": "t"})
    fields.update(kw)
    return StreamRecord(**fields)


def hammer(target: str, stream: str, rounds: int, barrier: object | None,
           out: object) -> None:
    """One process's share of a race: allocate ``rounds`` segment numbers and claim the
    event keys ``k0..k{rounds-1}`` of ``stream``; puts (numbers, keys won) or an error on
    ``out``. Runs in a child process (multiprocessing, spawn)."""
    from earshot.storage.metadata import open_store

    try:
        store = open_store(target)
        try:
            if barrier is not None:
                barrier.wait(60)  # type: ignore[attr-defined]
            numbers, won = [], []
            for i in range(rounds):
                numbers.append(store.allocate_segment(stream))
                if store.claim_event(stream, f"vad:speech_end:{i}"):
                    won.append(i)
        finally:
            store.close()
        out.put((numbers, won))  # type: ignore[attr-defined]
    except Exception as exc:
        out.put(f"{type(exc).__name__}: {exc}")  # type: ignore[attr-defined]
