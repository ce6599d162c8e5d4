"""The configuration table of the docs (docs/configuration.md), generated, not hand-written.

Its source is the settings' metadata (:mod:`earshot.config.groups`: each setting declared
once with its help, default, range or choices, flag, variable and TOML keys), the same
metadata that generates ``earshot serve``'s options (:mod:`earshot.config.cli`), so the
table cannot drift from ``earshot serve --help`` (tests/docs/ compares the two).

    python scripts/config_table.py        # print the table
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigRow:
    """One ``earshot serve`` option as the docs' table shows it."""

    flags: tuple[str, ...]  # "--port"; the first is the long form
    env: str | None  # "EARSHOT_PORT"
    toml_key: str | None  # "port" (None: not in the config file)
    path: str | None  # "server.port": the settings attribute, and the TOML dotted key
    default: str  # as text; "" when unset
    allowed: str  # range or choices; "" when any text
    help: str


def config_rows() -> list[ConfigRow]:
    """``--config``, then every setting with an option, in the order of ``earshot serve
    --help`` (group by group)."""
    from earshot.config import options
    from earshot.config.cli import CONFIG_HELP

    rows = [ConfigRow(("--config",), "EARSHOT_CONFIG", None, None, "", "", CONFIG_HELP)]
    for opt in options():
        if opt.flag is None:
            continue
        rows.append(ConfigRow(
            flags=(opt.flag,), env=opt.env, toml_key=opt.flat, path=opt.path,
            default=opt.default_text(), allowed=opt.allowed(), help=" ".join(opt.help.split()),
        ))
    return rows


def file_only_rows() -> list[ConfigRow]:
    """Settings that only the config file (and their ``EARSHOT_*`` variable) can set."""
    from earshot.config import file_only_options

    return [ConfigRow((), opt.env, opt.flat, opt.path, opt.default_text(), opt.allowed(),
                      " ".join(opt.help.split())) for opt in file_only_options()]


def _cell(text: str) -> str:
    """Help text in a table cell: ``|`` ends a cell, ``[a][b]`` would be a link reference."""
    return text.replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")


def _toml(row: ConfigRow) -> str:
    if row.toml_key is None:
        return ""
    if row.path is None or row.path == row.toml_key:
        return f"`{row.toml_key}`"
    return f"`{row.toml_key}` or `{row.path}`"


def config_table() -> str:
    """The Markdown table of :func:`config_rows`, and the file-only keys under it."""
    lines = ["| option | environment | TOML key | default | allowed | what |",
             "|---|---|---|---|---|---|"]
    for r in config_rows():
        lines.append("| " + " | ".join([
            ", ".join(f"`{f}`" for f in r.flags),
            f"`{r.env}`" if r.env else "",
            _toml(r),
            f"`{_cell(r.default)}`" if r.default else "",
            _cell(r.allowed),
            _cell(r.help),
        ]) + " |")
    extra = file_only_rows()
    if extra:
        lines += ["", "Settings with no command-line option (config file or environment only):",
                  ""]
        lines += [f"- {_toml(r)} (`{r.env}`, default `{r.default}`, {_cell(r.allowed)}): "
                  f"{_cell(r.help)}" for r in extra]
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_table())
