"""The configuration table of the docs (docs/configuration.md), generated, not hand-written.

Today its source is the ``earshot serve`` argparse parser (``earshot.cli.build_parser()``)
for the options and their help, and :class:`earshot.config.Settings` for the defaults, the
``EARSHOT_*`` variables and the TOML keys (see ``earshot.config``: a setting's variable is
``EARSHOT_`` + its field name in capitals, its TOML key the field name). When settings carry
their own metadata, only :func:`config_rows` changes.

    python scripts/config_table.py        # print the table
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, fields
from typing import Any

FIELD_OF_DEST = {"processor": "processors"}  # argparse dest -> Settings field, where they differ


@dataclass(frozen=True)
class ConfigRow:
    """One ``earshot serve`` option as the docs' table shows it."""

    flags: tuple[str, ...]  # "--port"; the first is the long form
    env: str | None  # "EARSHOT_PORT"
    toml_key: str | None  # "port" (None: not in the config file)
    default: str  # as text; "" when unset
    allowed: str  # range or choices; "" when any text
    help: str


def _serve_parser() -> argparse.ArgumentParser:
    from earshot.cli import build_parser

    parser = build_parser()
    # argparse has no public way to list a parser's actions: _actions is what everyone reads
    for action in parser._actions:
        if isinstance(action.choices, dict) and "serve" in action.choices:  # the subcommands
            serve: argparse.ArgumentParser = action.choices["serve"]
            return serve
    raise LookupError("earshot's parser has no 'serve' command")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return " ".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _allowed(action: argparse.Action) -> str:
    from earshot.ranges import Range

    if action.choices:
        return ", ".join(str(c) for c in action.choices)
    if isinstance(action.type, Range):
        return action.type.describe()
    if action.nargs == 0:  # store_true
        return "flag"
    if action.type in (int, float):
        return "an integer" if action.type is int else "a number"
    return ""  # text, or a parser of its own whose help says what it takes


def config_rows() -> list[ConfigRow]:
    """Every ``earshot serve`` option, in the order of ``earshot serve --help``."""
    from earshot.config import Settings

    defaults: dict[str, Any] = {}
    for f in fields(Settings):
        if f.default is not MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not MISSING:
            defaults[f.name] = f.default_factory()
    rows = []
    for action in _serve_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        name = FIELD_OF_DEST.get(action.dest, action.dest)
        in_settings = name in defaults
        flags = tuple(sorted(action.option_strings, key=lambda s: (not s.startswith("--"), s)))
        rows.append(ConfigRow(
            flags=flags,
            env="EARSHOT_" + name.upper() if in_settings or name == "config" else None,
            toml_key=name if in_settings else None,
            default=_text(defaults.get(name)),
            allowed=_allowed(action),
            help=" ".join((action.help or "").split()),
        ))
    return rows


def file_only_keys() -> list[tuple[str, str]]:
    """Settings that only the config file (and their ``EARSHOT_*`` variable) can set."""
    from earshot.config import FILE_ONLY_KEYS, Settings

    out = []
    for f in fields(Settings):
        if f.name in FILE_ONLY_KEYS:
            out.append((f.name, _text(f.default)))
    return out


def _cell(text: str) -> str:
    """Help text in a table cell: ``|`` ends a cell, ``[a][b]`` would be a link reference."""
    return text.replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")


def config_table() -> str:
    """The Markdown table of :func:`config_rows`, and the file-only keys under it."""
    lines = ["| option | environment | TOML key | default | allowed | what |",
             "|---|---|---|---|---|---|"]
    for r in config_rows():
        lines.append("| " + " | ".join([
            ", ".join(f"`{f}`" for f in r.flags),
            f"`{r.env}`" if r.env else "",
            f"`{r.toml_key}`" if r.toml_key else "",
            f"`{_cell(r.default)}`" if r.default else "",
            _cell(r.allowed),
            _cell(r.help),
        ]) + " |")
    extra = file_only_keys()
    if extra:
        lines += ["", "Settings with no command-line option (config file or environment only): "
                  + ", ".join(f"`{k}` (`EARSHOT_{k.upper()}`, default `{v}`)" for k, v in extra)
                  + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_table())
