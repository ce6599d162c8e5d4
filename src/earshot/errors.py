"""One rooted exception tree for everything earshot raises on purpose."""

from __future__ import annotations


class EarshotError(Exception):
    """Root of every error earshot raises deliberately."""


class ProtocolError(EarshotError):
    """A peer broke the wire protocol. ``code`` is the stable machine-readable error code."""

    def __init__(self, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.code = code  # an earshot.wire.codes.Code (a str)
        self.message = message
        self.extra = extra  # more fields of the error message (``frames`` of a finished one)


class StorageError(EarshotError):
    """The archive or the metadata store failed or holds something unexpected."""


class StorageFull(StorageError):
    """The data directory's disk is full (or below ``--min-free-space``)."""


class StreamNotFound(StorageError):
    """No stream with that id."""


class DuplicateStream(StorageError):
    """A stream with that id exists already (ids are unique by the database); retry with
    a new id."""


class ConfigError(EarshotError):
    """Invalid configuration (options, environment variables, processor specs)."""


class MissingDependency(EarshotError):
    """An optional extra is needed but not installed; the message says how to install it."""


class ClientError(EarshotError):
    """The Python client could not do what was asked (server refused, unreachable, gave up)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        from earshot.redact import redact  # (a URL in the message may carry ?token=)

        super().__init__(redact(message))
        self.code = code


class ProcessorError(EarshotError):
    """A processor could not be loaded or configured."""
