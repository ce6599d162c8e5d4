"""The server's settings: frozen, typed groups, each field declared once with
:func:`~earshot.config.meta.setting` (help, range or choices, parser, names).

Code reads them by group (``settings.ingest.ack_interval``, ``settings.archive.fsync``);
:meth:`Settings.of` builds them from flat keyword settings (``ack_interval=0.5``), the form
the command line, the environment, the config file and JSON all produce. Building checks
every value against its field's rules (:meth:`Option.problem`), in one place; nothing is
assigned after construction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from earshot.audio import ARCHIVE_FORMATS
from earshot.config.meta import Option, options_of, setting
from earshot.errors import ConfigError
from earshot.ranges import COUNT, PORT, POSITIVE_INT, SECONDS, SECONDS_OR_ZERO, Range, parse_size

AUTO = "auto"  # --max-streams auto: admit while the measured headroom allows
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
SIZE = "a size (64M, 1G or bytes)"
WEEK = 7 * 86400


def count_or_auto(what: str) -> Callable[[object], int | str]:
    """A parser of a count that may also be ``auto`` (the server decides)."""

    def parse(value: object) -> int | str:
        if isinstance(value, str):
            text = value.strip().lower()
            if text == AUTO:
                return AUTO
            try:
                return int(text)
            except ValueError:
                raise ConfigError(f"{what} must be a count or 'auto', not {value!r}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{what} must be a count or 'auto', not {value!r}")

    parse.__doc__ = f"{what}: a count, or 'auto'"
    return parse


#: ``--max-streams``: a count, or ``auto`` (admit while the measured headroom allows)
max_streams_value = count_or_auto("max streams")
#: ``--asr-workers``: a count, or ``auto`` (one per core)
workers_value = count_or_auto("asr workers")


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


class Group:
    """A settings group: checks its fields when built (see :meth:`check`)."""

    TITLE: ClassVar[str]  # its section of ``earshot serve --help``
    PREFIX: ClassVar[str] = ""  # of its fields' flat names ("asr_")

    def __post_init__(self) -> None:
        for opt in group_options(type(self)):
            value = getattr(self, opt.name)
            problem = opt.problem(value)
            if problem is None and opt.meta.normalize is not None and value is not None:
                norm = opt.meta.normalize(value)  # (raises ConfigError saying why)
                if norm != value:
                    problem = f"must be written {norm!r}, not {value!r}"
            if problem is not None:
                raise ConfigError(f"{opt.label} {problem}")
        self.check()

    def check(self) -> None:
        """Rules between fields of the group (each field's own rules are checked already)."""


_GROUP_OPTIONS: dict[str, tuple[Option, ...]] = {}


def group_options(cls: type[Group]) -> tuple[Option, ...]:
    """The options of a group class, in declaration order (worked out once)."""
    key = cls.__qualname__
    if key not in _GROUP_OPTIONS:
        name = next(n for n, c in GROUPS.items() if c is cls)
        _GROUP_OPTIONS[key] = tuple(options_of(name, cls, cls.PREFIX))
    return _GROUP_OPTIONS[key]


@dataclass(frozen=True, kw_only=True)
class ServerSettings(Group):
    TITLE: ClassVar[str] = "server"

    host: str = setting("127.0.0.1", "address to listen on (beyond loopback needs --token "
                        "or --no-auth)", example="localhost")
    port: int = setting(8000, "port to listen on", range=PORT)
    data_dir: Path = setting(Path("earshot-data"),  # noqa: RUF009 - a Path is immutable
                             "archives and metadata (streams/, earshot.db)", metavar="DIR",
                             example="/var/lib/earshot")
    db: str | None = setting(None, "metadata database: postgresql://user@host/dbname (pip "
                             "install 'earshot[postgres]') or an SQLite path",
                             metavar="URL", default_text="DATA_DIR/earshot.db", redact="url",
                             example="postgresql://earshot:secret@db/earshot")
    log_level: str = setting("info", "how much the server logs", choices=LOG_LEVELS,
                             example="debug")
    processes: int = setting(1, "gateway processes sharing the port (needs --bus)",
                             range=Range(int, 1, 64), metavar="N")


@dataclass(frozen=True, kw_only=True)
class SecuritySettings(Group):
    TITLE: ClassVar[str] = "security (docs: security.md)"

    token: str | None = setting(None, "require this bearer token on every request",
                                redact="all", example="s3cret-token")
    no_auth: bool = setting(False, "allow listening beyond loopback without a token")
    web_origins: tuple[str, ...] = setting(
        ("*",), "sites allowed to import /web/earshot.js: '*', 'none', or comma-separated "
        "origins such as https://app.example.com", metavar="ORIGINS", normalize=web_origins,
        example="https://app.example.com")
    allowed_origins: tuple[str, ...] = setting(
        (), "also accept WebSocket handshakes from these browser origins (e.g. "
        "https://app.example.com; '*' for any; repeatable)", nargs="append",
        metavar="ORIGIN[,ORIGIN]", example="https://app.example.com")
    forwarded_allow_ips: str | None = setting(
        None, "trust X-Forwarded-For/-Proto from these proxy addresses (comma-separated IPs "
        "or networks; unset: from none)", metavar="IPS", example="127.0.0.1")
    conn_rate: float = setting(100.0, "new WebSocket connections per second per client "
                               "address (0: off)", range=Range(float, 0), metavar="PER_SECOND")
    conn_burst: int = setting(1000, "new WebSocket connections per client address allowed "
                              "at once", range=POSITIVE_INT, metavar="N")
    auth_fail_rate: float = setting(0.2, "failed authentications per second per address, "
                                    "refill (0: off)", range=Range(float, 0),
                                    metavar="PER_SECOND")
    auth_fail_burst: int = setting(20, "failed authentications per address allowed at once",
                                   range=POSITIVE_INT, metavar="N")
    token_secret: str | None = setting(
        None, "sign and verify scoped tokens (earshot token create) with this secret "
        "(default: derived from --token, so changing --token voids them)", redact="all",
        metavar="SECRET", example="another-long-secret")
    auth_timeout: float = setting(10.0, "close an ingest connection (4401) that has not "
                                  "started a stream with valid credentials by then",
                                  range=Range(float, 0.1, 3600, unit="seconds"),
                                  metavar="SECONDS")
    max_preauth: int = setting(256, "WebSocket connections not yet authenticated, in total",
                               range=POSITIVE_INT, metavar="N")
    max_preauth_per_address: int = setting(32, "WebSocket connections not yet authenticated, "
                                           "per client address", range=POSITIVE_INT,
                                           metavar="N")
    header_timeout: float = setting(10.0, "close a connection whose first request head (after "
                                    "the TLS handshake) is not in by then",
                                    range=Range(float, 0.1, 600, unit="seconds"),
                                    metavar="SECONDS")


@dataclass(frozen=True, kw_only=True)
class TlsSettings(Group):
    TITLE: ClassVar[str] = "TLS (docs: security.md)"

    certfile: str | None = setting(None, "TLS certificate chain (PEM): serve https:// and "
                                   "wss://", metavar="PEM", example="/etc/earshot/cert.pem")
    keyfile: str | None = setting(None, "TLS private key (PEM) for --certfile", metavar="PEM",
                                  example="/etc/earshot/key.pem")

    def check(self) -> None:
        if bool(self.certfile) != bool(self.keyfile):
            raise ConfigError("TLS needs both --certfile and --keyfile")


@dataclass(frozen=True, kw_only=True)
class ArchiveSettings(Group):
    TITLE: ClassVar[str] = "archive"

    format: str = setting("wav", "archive encoding: wav = PCM16, wav-f32, flac (lossless, "
                          "at stop), ogg = Ogg Opus (at stop)", flat="archive_format",
                          choices=ARCHIVE_FORMATS, example="flac")
    part: float = setting(3600.0, "start a new archive part every SECONDS of audio (0: one "
                          "file, at most 4 GiB)", flat="archive_part",
                          range=Range(float, 0, WEEK, unit="seconds"), metavar="SECONDS")
    fsync: bool = setting(False, "fsync before every ack (power-loss safe)")
    header_interval: float = setting(1.0, "seconds between updates of a live archive's "
                                     "header (the length readers and crash repair see)",
                                     flag=None, range=SECONDS)
    store: str | None = setting(None, "put finished archives and closed parts in object "
                                "storage: s3://BUCKET/PREFIX (any S3-compatible service; "
                                "endpoint, region and keys from AWS_* variables; pip install "
                                "'earshot[s3]'; docs: deploy.md)", flat="archive_store",
                                metavar="URL", example="s3://my-bucket/earshot")
    store_endpoint: str | None = setting(None, "the object store's URL (default: "
                                         "AWS_ENDPOINT_URL, else AWS S3)",
                                         flat="archive_store_endpoint", metavar="URL",
                                         example="http://minio:9000")
    store_region: str | None = setting(None, "the object store's region (default: AWS_REGION)",
                                       flat="archive_store_region", metavar="REGION",
                                       example="eu-central-1")
    store_access_key_id: str | None = setting(
        None, "the object store's access key id (default: AWS_ACCESS_KEY_ID)",
        flat="archive_store_access_key_id", flag=None, example="AKIAEXAMPLE")
    store_secret_access_key: str | None = setting(
        None, "the object store's secret key (default: AWS_SECRET_ACCESS_KEY)",
        flat="archive_store_secret_access_key", flag=None, redact="all",
        example="wJalrXUtnFEMI-EXAMPLE-KEY")
    keep_local: float = setting(3600.0, "seconds an uploaded archive or closed part stays in "
                                "the data directory (0: removed once uploaded and verified)",
                                flat="archive_keep_local", range=Range(float, 0, WEEK * 52,
                                                                       unit="seconds"),
                                metavar="SECONDS")


@dataclass(frozen=True, kw_only=True)
class IngestSettings(Group):
    TITLE: ClassVar[str] = "ingest"

    ack_interval: float = setting(0.1, "seconds of audio per ack while the server has "
                                  "headroom", range=Range(float, 0.005, 5, unit="seconds"),
                                  metavar="SECONDS")
    ack_interval_max: float = setting(0.25, "under load, batches (acks, level events) "
                                      "stretch up to this, and a stream nobody receives "
                                      "live is batched this long (at or below "
                                      "--ack-interval: a fixed cadence)",
                                      range=Range(float, 0.005, 5, unit="seconds"),
                                      metavar="SECONDS")
    max_message_bytes: int = setting(1 << 20, "largest accepted WebSocket message",
                                     range=Range(int, 1024, unit="bytes"), parse=parse_size,
                                     noun=SIZE, metavar="SIZE", default_text="1M")
    compat: bool = setting(True, "compatibility mode: accept raw audio with no start message, "
                           "the format in the URL (?rate=48000&format=f32)", flag=None)

    @property
    def ack_interval_ceiling(self) -> float:
        """The longest ack interval under load: ``ack_interval_max``, or ``ack_interval``
        when that is larger (an ``--ack-interval`` above the default max fixes the cadence)."""
        return max(self.ack_interval, self.ack_interval_max)


@dataclass(frozen=True, kw_only=True)
class ProcessingSettings(Group):
    TITLE: ClassVar[str] = "processors (docs: processors.md, cleanup.md)"

    processors: tuple[str, ...] = setting(
        (), "offer this processor and run it on every stream by default (repeatable): a "
        "built-in (level, spectrogram, vad, asr) or package.module:Class, with options: "
        "vad,threshold=0.6 (unset: the built-ins, level on every stream)", flag="--processor",
        nargs="append", metavar="SPEC", example="level")
    filters: tuple[str, ...] = setting(
        (), "voice cleanup of streams whose start names no filters, for listeners and "
        "--filter-processors (the archive stays raw): gain:db=6, agc[:target=-20], "
        "denoise[:level=2] (needs 'earshot[cleanup]')", nargs="+", metavar="SPEC",
        example="gain:db=6")
    filter_processors: tuple[str, ...] = setting(
        ("asr", "vad"), "processors that get the filtered audio (none: give the option "
        "alone)", nargs="*", metavar="NAME", example="vad")
    max_lag: float = setting(10.0, "seconds a processor may fall behind before it skips "
                             "audio", range=SECONDS, metavar="SECONDS")
    drain_timeout: float = setting(10.0, "seconds processors get to finish after a stream "
                                   "stops (and the server to drain on SIGTERM)",
                                   range=SECONDS_OR_ZERO, metavar="SECONDS")
    max_processors: int = setting(8, "processors one stream's start may name (duplicates "
                                  "merged); more: bad_start", range=Range(int, 1, 64),
                                  metavar="N")

    def check(self) -> None:
        if self.filters:
            from earshot.dsp.cleanup import parse_filters

            parse_filters(self.filters)  # FilterError (a ConfigError) names the bad one


@dataclass(frozen=True, kw_only=True)
class AsrSettings(Group):
    TITLE: ClassVar[str] = ("speech-to-text (built in: pocketsphinx, English; far better: "
                            "pip install 'earshot[asr]' and --asr-model small.en)")
    PREFIX: ClassVar[str] = "asr_"

    model: str | None = setting(None, "faster-whisper model name (downloaded on first use "
                                "where there is internet) or local model directory",
                                metavar="NAME_OR_DIR", example="small.en")
    engine: str | None = setting(None, "pocketsphinx (unset, without --asr-model), "
                                 "faster-whisper (unset, with it), package.module:Class, or "
                                 "none (off)", metavar="ENGINE", example="faster-whisper")
    device: str = setting("cpu", "where models run", choices=("cpu", "cuda", "auto"),
                          example="auto")
    compute_type: str = setting("default", "e.g. int8, float16 ('default': the model's own)",
                                metavar="TYPE", example="int8")
    language: str | None = setting(None, "e.g. en (unset: detect)", metavar="LANG",
                                   example="en")
    beam_size: int = setting(5, "beam size for finals", range=POSITIVE_INT, metavar="N")
    workers: int | str = setting(AUTO, "decodes at once (pocketsphinx: decoder processes); "
                                 "auto: one per core", range=POSITIVE_INT, literals=(AUTO,),
                                 parse=workers_value, metavar="N|auto", example="2")
    threads: int = setting(0, "CPU threads per decode (0: the library's default)",
                           range=COUNT, metavar="N")
    batch: int = setting(0, "most streams' utterances decoded in one call (0: the engine's, "
                         "8 for faster-whisper; 1: off)", range=COUNT, metavar="N")
    final: str = setting("whole", "pocketsphinx finals: whole (each finished utterance "
                         "decoded again in one pass: fewer errors) or incremental (the "
                         "interims' decoder finished: sooner, less CPU)",
                         choices=("whole", "incremental"), example="incremental")


@dataclass(frozen=True, kw_only=True)
class AdmissionSettings(Group):
    TITLE: ClassVar[str] = ("admission control (new publishers past a limit get "
                            "'server_full', close 1013, and retry; resumes always get in)")

    max_streams: int | str = setting(0, "publishers held at once per gateway process (0: no "
                                     "limit); auto: admit while the measured headroom "
                                     "allows (--max-cpu)", range=COUNT, literals=(AUTO,),
                                     parse=max_streams_value, metavar="N|auto",
                                     example=AUTO)
    max_cpu: float = setting(0.8, "with --max-streams auto: the event loop's CPU kept under "
                             "this, new streams included",
                             range=Range(float, 0, 64, lo_open=True, unit="cores"),
                             metavar="CORES")
    max_subscribers: int = setting(0, "live /ws/subscribe connections at once; past it "
                                   "'server_full', 1013 (0: no limit)", range=COUNT,
                                   metavar="N")
    rest_rate: float = setting(100.0, "REST requests per second per client address (0: off)",
                               range=Range(float, 0), metavar="PER_SECOND")
    rest_burst: int = setting(500, "REST requests per client address allowed at once",
                              range=POSITIVE_INT, metavar="N")
    max_rest_requests: int = setting(64, "REST requests in flight at once; past it 429 "
                                     "'rate_limited' (0: no limit)", range=COUNT, metavar="N")
    max_rest_per_client: int = setting(8, "REST requests one client address may have in "
                                       "flight at once; past it 429 (0: no limit)",
                                       range=COUNT, metavar="N")
    rest_send_timeout: float = setting(30.0, "seconds a REST client may read nothing of a "
                                       "response before it is abandoned (0: never)",
                                       range=SECONDS_OR_ZERO, metavar="SECONDS")
    max_loop_lag: float = setting(0.5, "refuse new streams while the smoothed event-loop "
                                  "lag exceeds this (0: off)", range=SECONDS_OR_ZERO,
                                  metavar="SECONDS")
    max_ack_latency: float = setting(1.0, "refuse new streams while the smoothed ack latency "
                                     "exceeds this (0: off)", range=SECONDS_OR_ZERO,
                                     metavar="SECONDS")
    min_free_space: int = setting(64 << 20, "free space kept on the data dir: below it new "
                                  "streams get 'storage_full' (1013), held ones go on (0: "
                                  "off)", range=Range(int, 0, unit="bytes"), parse=parse_size,
                                  noun=SIZE, metavar="SIZE", default_text="64M",
                                  example="1M")


@dataclass(frozen=True, kw_only=True)
class BusSettings(Group):
    TITLE: ClassVar[str] = "scale-out (pip install 'earshot[redis]')"

    url: str | None = setting(None, "redis://HOST:PORT/DB: put audio and events on Redis "
                              "Streams; processors then run in `earshot worker --bus` "
                              "processes", flat="bus", metavar="URL", redact="url",
                              example="redis://:secret@127.0.0.1:6379/0")
    retention: float = setting(60.0, "seconds of audio kept on the Redis log",
                               flat="bus_retention", range=Range(float, 1, WEEK, unit="seconds"),
                               metavar="SECONDS")

    def check(self) -> None:
        if self.url is not None and not self.url.startswith(("redis://", "rediss://",
                                                             "unix://")):
            raise ConfigError(f"--bus {self.url!r}: use redis://HOST:PORT/DB")


@dataclass(frozen=True, kw_only=True)
class MqttSettings(Group):
    TITLE: ClassVar[str] = "MQTT (docs: mqtt.md)"

    url: str | None = setting(None, "publish events to an MQTT broker: mqtt://[USER:PASS@]"
                              "HOST:1883[/PREFIX] or mqtts://HOST:8883[/PREFIX][?cafile=PEM] "
                              "(topics PREFIX/<stream name or id>/<event type>; PREFIX "
                              "earshot)", flat="mqtt", metavar="URL", redact="url",
                              example="mqtt://earshot:secret@127.0.0.1:1883/site")

    def check(self) -> None:
        if self.url is not None:
            from earshot.integrations.mqtt import parse_mqtt_url

            parse_mqtt_url(self.url)  # a bad URL fails at start, saying why


@dataclass(frozen=True, kw_only=True)
class DoorsSettings(Group):
    TITLE: ClassVar[str] = "protocol doors: OpenAI, Deepgram, Wyoming, Icecast (docs: doors.md)"

    upload_limit: int = setting(25 << 20, "largest file POST /v1/audio/transcriptions takes",
                                range=Range(int, 1024, unit="bytes"), parse=parse_size,
                                noun=SIZE, metavar="SIZE", default_text="25M")
    wyoming: str | None = setting(None, "serve Wyoming speech-to-text (Home Assistant) on "
                                  "this address: tcp://HOST:PORT", metavar="URL",
                                  example="tcp://0.0.0.0:10300")
    wyoming_allow: tuple[str, ...] = setting(
        ("127.0.0.0/8", "::1/128"), "client addresses (CIDR) the Wyoming listener takes "
        "(it has no credentials)", nargs="+", metavar="CIDR", example="192.168.1.0/24")
    icecast: str | None = setting(None, "take Icecast sources (ffmpeg icecast://, BUTT, "
                                  "liquidsoap) on this address: HOST:PORT", metavar="ADDR",
                                  example="0.0.0.0:8010")

    def check(self) -> None:
        import ipaddress

        for cidr in self.wyoming_allow:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"--wyoming-allow {cidr!r}: not an address or a CIDR "
                                  "block (192.168.1.0/24)") from None
        if self.wyoming is not None and not self.wyoming.startswith("tcp://"):
            raise ConfigError(f"--wyoming {self.wyoming!r}: use tcp://HOST:PORT")


@dataclass(frozen=True, kw_only=True)
class RoomsSettings(Group):
    TITLE: ClassVar[str] = "calls (docs: calls.md)"

    max_rooms: int = setting(100, "rooms (calls) held at once per gateway; past it a new "
                             "room is refused with 'too_many_rooms'",
                             range=Range(int, 1, 100_000), metavar="N")
    seats: int = setting(8, "participants per room; past it 'room_full'", flat="room_seats",
                         range=Range(int, 1, 64), metavar="N")
    grace: float = setting(30.0, "seconds an empty room lives on before it ends (a join "
                           "in that time keeps it)", flat="room_grace",
                           range=Range(float, 0, 86400, unit="seconds"), metavar="SECONDS")
    seat_grace: float = setting(10.0, "seconds a dropped participant's seat waits for them "
                                "to resume it", range=Range(float, 0, 3600, unit="seconds"),
                                metavar="SECONDS")


GROUPS: dict[str, type[Group]] = {
    "server": ServerSettings, "security": SecuritySettings, "tls": TlsSettings,
    "archive": ArchiveSettings, "ingest": IngestSettings, "processing": ProcessingSettings,
    "asr": AsrSettings, "admission": AdmissionSettings, "bus": BusSettings,
    "mqtt": MqttSettings, "doors": DoorsSettings, "rooms": RoomsSettings,
}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything the server needs to know, by group. Durations in seconds, sizes in bytes.

    Build it with :meth:`of` from flat keyword settings (``Settings.of(port=9000,
    ack_interval=0.5)``), or from groups (``Settings(ingest=IngestSettings(...))``)."""

    server: ServerSettings = ServerSettings()
    security: SecuritySettings = SecuritySettings()
    tls: TlsSettings = TlsSettings()
    archive: ArchiveSettings = ArchiveSettings()
    ingest: IngestSettings = IngestSettings()
    processing: ProcessingSettings = ProcessingSettings()
    asr: AsrSettings = AsrSettings()
    admission: AdmissionSettings = AdmissionSettings()
    bus: BusSettings = BusSettings()
    mqtt: MqttSettings = MqttSettings()
    doors: DoorsSettings = DoorsSettings()
    rooms: RoomsSettings = RoomsSettings()

    def __post_init__(self) -> None:
        if self.server.processes > 1 and self.bus.url is None:
            raise ConfigError("--processes needs a shared bus: add --bus redis://HOST:PORT/DB")

    @classmethod
    def of(cls, **flat: Any) -> Settings:
        """Settings from flat keyword settings (``ack_interval=0.5``; the names of the
        ``EARSHOT_*`` variables and flat TOML keys); the rest default. Values are coerced
        (lists to tuples, text to paths, ``"64M"`` to bytes) and checked."""
        by_group: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
        index = options_by_flat()
        for key, value in flat.items():
            opt = index.get(key)
            if opt is None:
                raise ConfigError(f"unknown setting {key!r}")
            by_group[opt.group][opt.name] = opt.coerce(value)
        groups: dict[str, Any] = {name: GROUPS[name](**kw) for name, kw in by_group.items()}
        return cls(**groups)

    def replace(self, **flat: Any) -> Settings:
        """A copy with some flat settings changed (``settings.replace(port=9001)``)."""
        return Settings.of(**{**self.flat(), **flat})

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (``{"ack_interval": 0.1, ...}``)."""
        return {opt.flat: getattr(getattr(self, opt.group), opt.name) for opt in options()}

    def changed(self) -> dict[str, Any]:
        """The settings that differ from their defaults, by flat name."""
        return {k: v for k, v in self.flat().items() if v != options_by_flat()[k].default}

    def check_exposure(self) -> None:
        """Refuse to listen beyond loopback without a token unless --no-auth was given."""
        if (self.server.host not in LOOPBACK and not self.security.token
                and not self.security.token_secret and not self.security.no_auth):
            raise ConfigError(
                f"refusing to listen on {self.server.host} without a token: set --token "
                "(or EARSHOT_TOKEN), or pass --no-auth to run open on purpose"
            )


@cache
def options() -> tuple[Option, ...]:
    """Every setting, group by group in the order of :class:`Settings`."""
    out: list[Option] = []
    for f in fields(Settings):
        out += group_options(GROUPS[f.name])
    return tuple(out)


@cache
def options_by_flat() -> dict[str, Option]:
    return {opt.flat: opt for opt in options()}


def option(flat: str) -> Option:
    """The setting of a flat name (``"ack_interval"``); KeyError when there is none."""
    return options_by_flat()[flat]


def group_of(name: str) -> Iterator[Option]:
    """The settings of one group (``"asr"``)."""
    return iter(group_options(GROUPS[name]))
