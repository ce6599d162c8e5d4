"""After a crash: repair every archive left open, so its stream can be resumed."""

from __future__ import annotations

import logging
from pathlib import Path

from earshot.cluster.bus.base import Bus
from earshot.errors import StorageError
from earshot.storage.finalize import FINAL_SUFFIX
from earshot.storage.metadata import MetadataStore
from earshot.storage.parts import recover as recover_parts

log = logging.getLogger("earshot.hub")


async def recover(store: MetadataStore, bus: Bus, data_dir: Path) -> list[str]:
    """Repair the archive of every stream the store says is live (every part of it,
    storage/parts.py); those streams become ``interrupted`` (resumable). On a shared bus,
    streams another live gateway holds are left alone. Returns the repaired streams."""
    repaired = []
    for rec in store.with_state("live"):
        if await bus.held_elsewhere(rec.id):
            continue
        path = data_dir / rec.path
        try:
            frames = recover_parts(path, rec.archive_format)
        except (OSError, StorageError) as exc:
            done = path.with_suffix(FINAL_SUFFIX.get(rec.archive_format, ".wav"))
            if done != path and done.exists():  # finalized, but the row was not updated
                store.update(rec.id, state="finished", path=str(done.relative_to(data_dir)))
                continue
            log.error("stream %s: cannot repair %s: %s", rec.id, path, exc)
            store.update(rec.id, state="interrupted")
            continue
        store.update(rec.id, frames=frames, state="interrupted")
        log.warning("stream %s: repaired archive after a crash, %d frames", rec.id, frames)
        repaired.append(rec.id)
    return repaired
