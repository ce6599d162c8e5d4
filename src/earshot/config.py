"""Server settings. Read from the command line and ``EARSHOT_*`` variables only at the edge."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from earshot.audio import ARCHIVE_FORMATS
from earshot.errors import ConfigError

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the server needs to know. Durations in seconds, sizes in bytes."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("earshot-data")
    token: str | None = None
    no_auth: bool = False
    archive_format: str = "wav"
    fsync: bool = False
    ack_interval: float = 0.1
    header_interval: float = 1.0
    max_message_bytes: int = 1 << 20
    compat: bool = True
    processors: tuple[str, ...] = field(default_factory=tuple)
    max_lag: float = 10.0
    drain_timeout: float = 10.0
    asr_model: str | None = None
    asr_engine: str | None = None  # None: pocketsphinx, or faster-whisper given a model
    asr_device: str = "cpu"
    asr_compute_type: str = "default"
    asr_language: str | None = None
    asr_beam_size: int = 5
    asr_workers: int = 1
    asr_threads: int = 0
    asr_batch: int = 0  # most utterances decoded in one call: 0 the engine's, 1 no batching
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.archive_format not in ARCHIVE_FORMATS:
            raise ConfigError(
                f"archive format {self.archive_format!r} is not one of {', '.join(ARCHIVE_FORMATS)}"
            )
        if not 0.005 <= self.ack_interval <= 5:
            raise ConfigError("ack interval must be between 0.005 and 5 seconds")
        if self.max_message_bytes < 1024:
            raise ConfigError("max message size must be at least 1024 bytes")

    def check_exposure(self) -> None:
        """Refuse to listen beyond loopback without a token unless --no-auth was given."""
        if self.host not in LOOPBACK and not self.token and not self.no_auth:
            raise ConfigError(
                f"refusing to listen on {self.host} without a token: set --token "
                "(or EARSHOT_TOKEN), or pass --no-auth to run open on purpose"
            )


def _convert(value: str, kind: Any) -> Any:
    if kind in (bool, "bool"):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if kind in (int, "int"):
        return int(value)
    if kind in (float, "float"):
        return float(value)
    if kind in (Path, "Path"):
        return Path(value)
    if "tuple" in str(kind):  # lists are ';'-separated (',' carries processor options)
        return tuple(p.strip() for p in value.split(";") if p.strip())
    return value


def env_overrides(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``EARSHOT_<FIELD>`` variables as typed keyword arguments for :class:`Settings`."""
    env = os.environ if env is None else env
    out: dict[str, Any] = {}
    for f in fields(Settings):
        key = "EARSHOT_" + f.name.upper()
        if key in env:
            try:
                out[f.name] = _convert(env[key], f.type)
            except ValueError as exc:
                raise ConfigError(f"{key}={env[key]!r}: {exc}") from None
    return out
