"""Server settings. Read from the command line and ``EARSHOT_*`` variables only at the edge."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from earshot.audio import ARCHIVE_FORMATS
from earshot.errors import ConfigError
from earshot.ranges import COUNT, PORT, POSITIVE_INT, SECONDS, SECONDS_OR_ZERO, Range

AUTO = "auto"  # --max-streams auto: admit while the measured headroom allows

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# Allowed values of numeric settings (the command line checks the same ranges); a field
# added later gets its range here.
RANGES: dict[str, Range] = {
    "port": PORT,
    "header_interval": SECONDS,
    "archive_part": Range(float, 0, 7 * 86400, unit="seconds"),
    "max_lag": SECONDS,
    "drain_timeout": SECONDS_OR_ZERO,
    "asr_beam_size": POSITIVE_INT,
    "asr_workers": POSITIVE_INT,
    "asr_threads": COUNT,
    "max_streams": COUNT,
    "max_loop_lag": SECONDS_OR_ZERO,
    "max_ack_latency": SECONDS_OR_ZERO,
    "min_free_space": COUNT,
    "max_cpu": Range(float, 0, 64, lo_open=True, unit="cores"),
    "max_subscribers": COUNT,
    "rest_rate": Range(float, 0),
    "rest_burst": POSITIVE_INT,
    "max_rest_requests": COUNT,
    "asr_batch": COUNT,
}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the server needs to know. Durations in seconds, sizes in bytes."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("earshot-data")
    token: str | None = None
    no_auth: bool = False
    archive_format: str = "wav"
    archive_part: float = 3600.0  # seconds of audio per archive part; 0: one file (4 GiB max)
    fsync: bool = False
    ack_interval: float = 0.1  # seconds of audio per ack while the event loop has headroom
    ack_interval_max: float = 0.25  # under load batches stretch up to this (server/cadence.py)
    header_interval: float = 1.0
    max_message_bytes: int = 1 << 20
    compat: bool = True
    processors: tuple[str, ...] = field(default_factory=tuple)
    # voice cleanup (earshot.dsp.cleanup): filters of streams whose start names none, and
    # the processors that get the filtered audio (the others, and the archive, get it raw)
    filters: tuple[str, ...] = field(default_factory=tuple)
    filter_processors: tuple[str, ...] = ("asr", "vad")
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
    db: str | None = None  # metadata: postgresql://… or an SQLite path (<data_dir>/earshot.db)
    asr_batch: int = 0  # most utterances decoded in one call: 0 the engine's, 1 no batching
    log_level: str = "info"
    bus: str | None = None  # None: in-process; redis://host:port/db: Redis Streams
    bus_retention: float = 60.0  # seconds of audio kept on the Redis log
    processes: int = 1  # gateway processes (needs a shared bus)
    mqtt: str | None = None  # mqtt[s]://[user:pass@]host:port[/prefix]: publish events there
    web_origins: tuple[str, ...] = ("*",)  # CORS for /web/* (earshot.js on other sites)
    # admission control (server/admission.py); 0 turns a limit off
    max_streams: int | str = 0  # publishers held at once (per gateway process), or "auto"
    max_cpu: float = 0.8  # --max-streams auto: the event loop's CPU (cores) kept under this
    max_loop_lag: float = 0.5  # smoothed event-loop lag beyond which new streams wait
    max_ack_latency: float = 1.0  # smoothed ack latency beyond which new streams wait
    min_free_space: int = 64 << 20  # bytes kept free on the data dir: new streams wait below
    # hardening (earshot.server.http.guard, TLS, proxies): see the README's "Security" section
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    forwarded_allow_ips: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    conn_rate: float = 100.0
    conn_burst: int = 1000
    auth_fail_rate: float = 0.2
    auth_fail_burst: int = 20
    # subscribers and REST have limits of their own (publishers never lose slots to them)
    max_subscribers: int = 0  # live /ws/subscribe connections at once (0: no limit)
    rest_rate: float = 100.0  # REST requests per second per client address (0: off)
    rest_burst: int = 500
    max_rest_requests: int = 64  # REST requests in flight at once (0: no limit)

    def __post_init__(self) -> None:
        if self.archive_format not in ARCHIVE_FORMATS:
            raise ConfigError(
                f"archive format {self.archive_format!r} is not one of {', '.join(ARCHIVE_FORMATS)}"
            )
        if not 0.005 <= self.ack_interval <= 5:
            raise ConfigError("ack interval must be between 0.005 and 5 seconds")
        if not 0.005 <= self.ack_interval_max <= 5:
            raise ConfigError("--ack-interval-max must be between 0.005 and 5 seconds")
        if self.ack_interval_max < self.ack_interval:  # (an --ack-interval above the
            self.ack_interval_max = self.ack_interval  # default max fixes the cadence)
        if self.bus is not None and not self.bus.startswith(("redis://", "rediss://",
                                                            "unix://")):
            raise ConfigError(f"--bus {self.bus!r}: use redis://HOST:PORT/DB")
        if not 1 <= self.bus_retention <= 7 * 86400:
            raise ConfigError("bus retention must be between 1 second and 7 days")
        if not 1 <= self.processes <= 64:
            raise ConfigError("--processes must be between 1 and 64")
        if self.processes > 1 and self.bus is None:
            raise ConfigError("--processes needs a shared bus: add --bus redis://HOST:PORT/DB")
        if self.mqtt is not None:
            from earshot.integrations.mqtt import parse_mqtt_url

            parse_mqtt_url(self.mqtt)  # a bad URL fails at start, saying why
        if self.max_message_bytes < 1024:
            raise ConfigError("max message size must be at least 1024 bytes")
        object.__setattr__(self, "max_streams", max_streams_value(self.max_streams))
        for name, allowed in RANGES.items():
            if name == "max_streams" and self.max_streams == AUTO:
                continue
            problem = allowed.problem(getattr(self, name))
            if problem is not None:
                raise ConfigError(f"{name.replace('_', ' ')} {problem}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log level {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        object.__setattr__(self, "web_origins", web_origins(self.web_origins))
        from earshot.dsp.cleanup import parse_filters

        parse_filters(self.filters)  # FilterError (a ConfigError) names the bad one
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("TLS needs both --certfile and --keyfile")

    def check_exposure(self) -> None:
        """Refuse to listen beyond loopback without a token unless --no-auth was given."""
        if self.host not in LOOPBACK and not self.token and not self.no_auth:
            raise ConfigError(
                f"refusing to listen on {self.host} without a token: set --token "
                "(or EARSHOT_TOKEN), or pass --no-auth to run open on purpose"
            )


def max_streams_value(value: object) -> int | str:
    """``--max-streams``: a count, or ``auto`` (admit while the measured headroom allows)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"max streams must be a count or 'auto', not {value!r}") from None
    return value  # type: ignore[return-value]  # a number: RANGES checks it


def web_origins(values: tuple[str, ...] | list[str] | str) -> tuple[str, ...]:
    """Origins allowed to load ``/web/*`` (comma or ``;`` separated): ``*`` for any, ``none``
    for no other site, else ``scheme://host[:port]`` each."""
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        out += [p.strip().lower() for p in re.split(r"[,;\s]+", item) if p.strip()]
    if out in (["none"], []):
        return ()
    for origin in out:
        if origin != "*" and not re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/\s?#]+", origin):
            raise ConfigError(f"web origin {origin!r} is not '*', 'none' or "
                              "scheme://host[:port] (no path, no trailing slash)")
    return ("*",) if "*" in out else tuple(dict.fromkeys(out))


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


def settings_to_json(settings: Settings) -> str:
    """For the gateway processes of ``--processes N``, which rebuild the same Settings."""
    import json

    out = {}
    for f in fields(Settings):
        v = getattr(settings, f.name)
        out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
    return json.dumps(out)


def settings_from_json(text: str) -> Settings:
    import json

    raw = json.loads(text)
    kinds = {f.name: f.type for f in fields(Settings)}
    for name, value in list(raw.items()):
        kind = str(kinds.get(name))
        if value is not None and "Path" in kind:
            raw[name] = Path(value)
        elif isinstance(value, list):
            raw[name] = tuple(value)
    return Settings(**raw)


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
    if text == "int | str":  # max_streams: a count or "auto"
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(f"{where} must be an integer or \"auto\", not {value!r}")
        return value
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
