"""Shared by the store tests."""

from __future__ import annotations

from earshot.storage.metadata import StreamRecord


def record(sid: str, created: float = 100.0, **kw: object) -> StreamRecord:
    fields: dict = dict(id=sid, name=f"name-{sid}", created=created, format="s16",
                        archive_format="wav", rate=16000, channels=1,
                        path=f"streams/{sid}.wav", token_hash="h", client={"agent": "t"})
    fields.update(kw)
    return StreamRecord(**fields)
