"""Server settings, declared once (:mod:`earshot.config.groups`) and read from the command
line, ``EARSHOT_*`` variables and a TOML file only at the edge (:mod:`earshot.config.sources`,
:mod:`earshot.config.cli`).

    settings = merge_settings(load_config_file("earshot.toml"), env_overrides(), cli)
    settings.ingest.ack_interval, settings.archive.fsync, settings.asr.model

In tests, :meth:`Settings.of` takes flat keyword settings: ``Settings.of(ack_interval=0.5)``.
"""

from __future__ import annotations

from earshot.config.groups import (
    AUTO,
    GROUPS,
    LOG_LEVELS,
    LOOPBACK,
    AdmissionSettings,
    ArchiveSettings,
    AsrSettings,
    BusSettings,
    IngestSettings,
    MqttSettings,
    ProcessingSettings,
    RoomsSettings,
    SecuritySettings,
    ServerSettings,
    Settings,
    TlsSettings,
    max_streams_value,
    option,
    options,
    web_origins,
)
from earshot.config.meta import Option
from earshot.config.sources import (
    env_overrides,
    file_only_options,
    load_config_file,
    merge_settings,
    parse_config_file,
    settings_from_json,
    settings_to_json,
)

__all__ = [
    "AUTO",
    "GROUPS",
    "LOG_LEVELS",
    "LOOPBACK",
    "AdmissionSettings",
    "ArchiveSettings",
    "AsrSettings",
    "BusSettings",
    "IngestSettings",
    "MqttSettings",
    "Option",
    "ProcessingSettings",
    "RoomsSettings",
    "SecuritySettings",
    "ServerSettings",
    "Settings",
    "TlsSettings",
    "env_overrides",
    "file_only_options",
    "load_config_file",
    "max_streams_value",
    "merge_settings",
    "option",
    "options",
    "parse_config_file",
    "settings_from_json",
    "settings_to_json",
    "web_origins",
]
