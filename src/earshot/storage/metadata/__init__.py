"""Stream metadata behind a small interface: SQLite (the default) and PostgreSQL.

Another database can be added by implementing :class:`MetadataStore`
(:mod:`earshot.storage.metadata.records`). Calls are short and synchronous: the server
makes them only at stream start, stop, periodic progress updates, segments, final
transcripts and REST requests — never per audio message. The schema is versioned
(:mod:`earshot.storage.metadata.migrate`); :func:`open_store` picks the store a ``--db``
value names. SQLite is in :mod:`earshot.storage.metadata.sqlite`, PostgreSQL in
:mod:`earshot.storage.metadata.postgres` (the ``postgres`` extra).
"""

from __future__ import annotations

from pathlib import Path

from earshot.errors import ConfigError, StorageError
from earshot.redact import redact_url as redact
from earshot.storage.metadata.records import (
    MetadataStore,
    PartRecord,
    SegmentRecord,
    StreamRecord,
    StreamState,
)
from earshot.storage.metadata.sqlite import SqliteStore

__all__ = ["MetadataStore", "PartRecord", "SegmentRecord", "SqliteStore", "StreamRecord",
           "StreamState", "open_store", "redact"]


def open_store(target: str | Path, *, fsync: bool = False) -> MetadataStore:
    """The metadata store a ``--db`` value names.

    ``postgresql://…`` (or ``postgres://…``, any libpq URL) opens a :class:`PostgresStore`
    (``pip install 'earshot[postgres]'``); ``sqlite:///relative/path``,
    ``sqlite:////absolute/path`` or a plain file path an :class:`SqliteStore`. Schema
    migrations run on opening. Raises :class:`~earshot.errors.ConfigError` for a URL of
    another kind, a server that cannot be reached or a file that cannot be opened, and
    :class:`~earshot.errors.MissingDependency` without the PostgreSQL extra. ``fsync``
    (the server's ``--fsync``): SQLite runs ``synchronous=FULL``.
    """
    if isinstance(target, Path):
        return _open_sqlite(target, fsync)
    text = target.strip()
    scheme, sep, rest = text.partition("://")
    if not text:
        raise ConfigError("empty database URL: use postgresql://…, sqlite:///path or a path")
    if not sep:
        return _open_sqlite(Path(text), fsync)
    scheme = scheme.lower()
    if scheme in ("postgresql", "postgres"):
        from earshot.storage.metadata.postgres import PostgresStore

        return PostgresStore(text)
    if scheme == "sqlite":
        if not rest.startswith("/") or not rest[1:]:
            raise ConfigError(f"bad SQLite URL {text!r}: use sqlite:///relative/path or "
                              "sqlite:////absolute/path")
        return _open_sqlite(Path(rest[1:]), fsync)
    raise ConfigError(f"unsupported database URL {redact(text)!r}: use "
                      "postgresql://user@host:port/dbname, sqlite:///path or a file path")


def _open_sqlite(path: Path, full_sync: bool = False) -> SqliteStore:
    try:
        return SqliteStore(path, full_sync=full_sync)
    except StorageError as exc:
        raise ConfigError(str(exc)) from None
