"""Where settings come from, each as flat keyword settings (``{"ack_interval": 0.5}``):
``EARSHOT_*`` variables (:func:`env_overrides`), a TOML file (:func:`parse_config_file`),
the command line (:mod:`earshot.config.cli`) and JSON (:func:`settings_to_json`, for the
gateway processes of ``--processes N``). :func:`merge_settings` layers them.

Every name comes from the settings' metadata (:mod:`earshot.config.groups`): a variable is
``EARSHOT_`` + a setting's flat name in capitals; a TOML key is the flat name
(``ack_interval = 0.5``) or the group and field (``[ingest] ack_interval = 0.5``, or the
dotted ``archive.format = "flac"``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from earshot.config.groups import GROUPS, Settings, group_of, options, options_by_flat
from earshot.config.meta import Option
from earshot.errors import ConfigError
from earshot.redact import MASK, redact_url


def env_overrides(env: Mapping[str, str] | None = None, *,
                  groups: Iterable[str] | None = None) -> dict[str, Any]:
    """``EARSHOT_<SETTING>`` variables (of ``groups``, or all) as typed flat settings (lists
    ``;``-separated). Types only; ranges are checked when the settings are built."""
    env = os.environ if env is None else env
    wanted = None if groups is None else set(groups)
    out: dict[str, Any] = {}
    for opt in options():
        if opt.env in env and (wanted is None or opt.group in wanted):
            try:
                out[opt.flat] = opt.from_text(env[opt.env])
            except (ValueError, ConfigError) as exc:
                raise ConfigError(f"{opt.env}={env[opt.env]!r}: {exc}") from None
    return out


# -- the configuration file (``--config`` / ``EARSHOT_CONFIG``) ----------------------------
def file_only_options() -> list[Option]:
    """Settings with no command-line option (the file and the environment set them)."""
    return [opt for opt in options() if opt.flag is None]


def parse_config_file(text: str, source: str = "config file") -> dict[str, Any]:
    """The text of a TOML config file as typed flat settings.

    Keys are the flat names (``data_dir``), or group tables (``[server] data_dir``, where a
    field's flat name works too: ``[asr] model`` or ``[asr] asr_model``). An unknown key, a
    setting given twice or a value of the wrong type is a :class:`ConfigError` naming it."""
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    flat = options_by_flat()
    out: dict[str, Any] = {}
    spelt: dict[str, str] = {}  # flat name -> the key it was given as

    def take(opt: Option, key: str, value: Any) -> None:
        if opt.flat in out:
            raise ConfigError(f"{source}: {opt.flat!r} is given twice "
                              f"({spelt[opt.flat]!r} and {key!r})")
        try:
            out[opt.flat] = opt.from_toml(value)
        except ConfigError as exc:
            raise ConfigError(f"{source}: config key {key!r} {exc}") from None
        spelt[opt.flat] = key

    for key, value in data.items():
        if key in GROUPS and isinstance(value, dict):
            members = {o.name: o for o in group_of(key)}
            members.update({o.flat: o for o in group_of(key)})
            for sub, subvalue in value.items():
                if sub not in members:
                    raise ConfigError(f"{source}: unknown key {key + '.' + sub!r}"
                                      f"{_hint(sub, members)} (the [{key}] keys: "
                                      f"{', '.join(o.name for o in group_of(key))})")
                take(members[sub], f"{key}.{sub}", subvalue)
        elif key in flat:
            take(flat[key], key, value)
        else:
            raise ConfigError(f"{source}: unknown key {key!r}{_hint(key, {**flat, **GROUPS})}")
    return out


def _hint(key: str, known: Mapping[str, Any]) -> str:
    fixed = key.replace("-", "_")
    if fixed != key and fixed in known:
        return f" (did you mean {fixed!r}?)"
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
    return Settings.of(**{**(file or {}), **(env or {}), **(cli or {})})


# -- JSON (the gateway processes of --processes N rebuild the same Settings) ---------------
def settings_to_json(settings: Settings, *, redact: bool = False) -> str:
    """Every setting by its flat name, as JSON; ``redact``: secrets masked (for logs)."""
    out: dict[str, Any] = {}
    for opt in options():
        value = opt.to_json(getattr(getattr(settings, opt.group), opt.name))
        if redact and value is not None:
            value = _redacted(opt, value)
        out[opt.flat] = value
    return json.dumps(out)


def settings_from_json(text: str) -> Settings:
    """The inverse of :func:`settings_to_json` (not of a redacted one)."""
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ConfigError("settings JSON must be an object")
    return Settings.of(**raw)


def _redacted(opt: Option, value: Any) -> Any:
    if opt.meta.redact == "all":
        return MASK
    if opt.meta.redact == "url" and isinstance(value, str):
        return redact_url(value)
    return value


