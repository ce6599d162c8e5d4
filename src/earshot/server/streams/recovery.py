"""After a crash: repair every archive left open, so its stream can be resumed; find the
archives whose database row was lost (a power cut between the file's creation and the
row's commit, or a database restored from an older backup) and register them again."""

from __future__ import annotations

import logging
import re
import secrets
import time
from pathlib import Path

from earshot.cluster.bus.base import Bus
from earshot.errors import StorageError, StreamNotFound
from earshot.storage import parts as P
from earshot.storage.finalize import FINAL_SUFFIX
from earshot.storage.metadata import MetadataStore, StreamRecord
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


#: part 0 of an archive in streams/: ``ID.wav`` (live or WAV), ``ID.flac``, ``ID.ogg``
ARCHIVE_NAME = re.compile(r"^([0-9a-z]{6,40})\.(wav|flac|ogg)$")
SETTLE_S = 5.0  # files younger than this may be a stream being created right now


def orphans(store: MetadataStore, data_dir: Path, now: float | None = None) -> list[Path]:
    """Part 0 of every archive in ``streams/`` that has no database row (oldest first)."""
    now = time.time() if now is None else now
    found = []
    for path in sorted((data_dir / "streams").iterdir()):
        m = ARCHIVE_NAME.match(path.name)
        if m is None or not path.is_file():
            continue
        try:
            if now - path.stat().st_mtime < SETTLE_S:
                continue
            store.get(m.group(1))
        except StreamNotFound:
            found.append(path)
        except OSError:
            continue
    return found


def register_orphans(store: MetadataStore, data_dir: Path) -> list[str]:
    """Register every archive :func:`orphans` finds: a WAV as ``interrupted`` (repaired;
    its resume token is lost with the row, so it is kept, listed and served, not resumed),
    a FLAC or Ogg archive as ``finished``. Returns their ids."""
    done = []
    for path in orphans(store, data_dir):
        sid = path.name.split(".", 1)[0]
        try:
            if path.suffix == ".wav":
                recover_parts(path, "wav")
            parts = P.load(path)
            encoding, rate, channels = P.kind(parts)
            frames = P.total_frames(parts)
        except (OSError, StorageError) as exc:
            log.error("archive %s has no database row and cannot be read: %s", path, exc)
            continue
        fmt = path.suffix[1:] if path.suffix != ".wav" else (
            "wav-f32" if encoding == "float32" else "wav")
        st = path.stat()
        rec = StreamRecord(
            id=sid, name=None, created=st.st_mtime - frames / rate, format=(
                "f32" if encoding == "float32" else "s16"), archive_format=fmt, rate=rate,
            channels=channels, path=str(path.relative_to(data_dir)),
            token_hash=secrets.token_hex(32),  # (matches no token: not resumable)
            frames=frames, state="interrupted" if path.suffix == ".wav" else "finished",
            ended=None if path.suffix == ".wav" else st.st_mtime,
            client={"recovered": "the archive was found without its database row"})
        try:
            store.create(rec)
        except StorageError as exc:
            log.error("cannot register archive %s: %s", path, exc)
            continue
        log.warning("stream %s: archive found without its database row; registered again "
                    "(%s, %d frames)", sid, rec.state, frames)
        done.append(sid)
    return done
