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
    asr_engine: str = "faster-whisper"
    asr_device: str = "cpu"
    asr_compute_type: str = "default"
    asr_language: str | None = None
    asr_beam_size: int = 5
    asr_workers: int = 1
    asr_threads: int = 0
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


# -- configuration file (``--config`` / ``EARSHOT_CONFIG``) --------------------------------
FILE_ONLY_KEYS = frozenset({"header_interval", "compat"})  # no command-line option


def _file_value(name: str, value: Any, kind: Any) -> Any:
    """One TOML value checked against its field's type (TOML already has the scalars)."""
    where = f"config key {name!r}"
    text = str(kind)
    if "tuple" in text:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, not {value!r}")
        return tuple(value)
    if value is None:
        raise ConfigError(f"{where}: TOML has no null; leave the key out instead")
    if kind in (bool, "bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if kind in (int, "int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, not {value!r}")
        return value
    if kind in (float, "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, not {value!r}")
    return Path(value) if "Path" in text else value


def parse_config_file(text: str, source: str = "config file") -> dict[str, Any]:
    """The text of a TOML config file as typed keyword arguments for :class:`Settings`.

    Keys are the option names with underscores (``data_dir``); an unknown key, or a value of
    the wrong type, is a :class:`ConfigError` naming it."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    known = {f.name: f.type for f in fields(Settings)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            hint = f" (did you mean {key.replace('-', '_')!r}?)" if "-" in key else ""
            raise ConfigError(f"{source}: unknown key {key!r}{hint}")
        try:
            out[key] = _file_value(key, value, known[key])
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read and parse a TOML config file (I/O at the edge, parsing in :func:`parse_config_file`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    return parse_config_file(text, str(p))


def merge_settings(file: Mapping[str, Any] | None = None, env: Mapping[str, Any] | None = None,
                   cli: Mapping[str, Any] | None = None) -> Settings:
    """Settings from the three layers: command line over environment over file (pure)."""
    return Settings(**{**(file or {}), **(env or {}), **(cli or {})})
