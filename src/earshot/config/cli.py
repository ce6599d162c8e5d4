"""``earshot serve``'s options (and the ``--asr-*`` options ``earshot worker`` shares),
generated from the settings' metadata: one argparse group per settings group, each option's
help ending with its default, its range and its variable::

    --ack-interval SECONDS   seconds of audio per ack while the server has headroom
                             (default 0.1; 0.005-5 seconds; env EARSHOT_ACK_INTERVAL)

Options the user did not give are absent from the namespace (``argparse.SUPPRESS``), so
:func:`cli_overrides` returns only what the command line says, to be layered over the
environment and the file (:func:`earshot.config.merge_settings`).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from typing import Any, Protocol

from earshot.config.groups import GROUPS, group_of
from earshot.config.meta import Option
from earshot.errors import ConfigError

CONFIG_HELP = ("TOML settings file (or EARSHOT_CONFIG); options and EARSHOT_* variables "
               "override it")


def option_help(opt: Option) -> str:
    """The help of ``opt``'s flag: its text, then (default; range; env VAR)."""
    notes = []
    default = opt.default_text()
    if default:
        notes.append(f"default {default}")
    if opt.short_allowed():
        notes.append(opt.short_allowed())
    notes.append(f"env {opt.env}")
    text = opt.help
    if re.search(r"\((0|unset|none):[^()]*\)$", text):  # "(0: off; default 100; env ...)"
        return f"{text[:-1]}; {'; '.join(notes)})"
    return f"{text} ({'; '.join(notes)})"


class _Type:
    """argparse ``type`` of one option: its parser, then its range (exit 2 with the reason,
    ``argument --port: must be an integer from 1 to 65535, not 80000``)."""

    def __init__(self, opt: Option) -> None:
        self.opt = opt
        self.__name__ = opt.flat  # (argparse names the type in some messages)

    def __call__(self, text: str) -> Any:
        opt = self.opt
        try:
            value = opt.meta.parse(text) if opt.meta.parse is not None else opt.from_word(text)
        except (ValueError, ConfigError) as exc:  # (a parser of its own may say ConfigError)
            raise argparse.ArgumentTypeError(str(exc)) from None
        problem = opt.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value


class Adds(Protocol):
    """An argparse parser or argument group: what options are added to."""

    def add_argument(self, *flags: str, **kw: Any) -> argparse.Action: ...


def add_option(parser: Adds, opt: Option, *, help: str | None = None) -> None:
    """``opt``'s flag on ``parser`` (a parser or an argument group)."""
    flag = opt.flag
    if flag is None:
        raise ValueError(f"{opt.flat} has no command-line option")
    text = (help or option_help(opt)).replace("%", "%%")
    kw: dict[str, Any] = {"dest": opt.flat, "default": argparse.SUPPRESS, "help": text}
    if opt.kind.base is bool:
        if opt.default:  # (a flag that is on by default can only be turned off)
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            parser.add_argument(flag, action="store_const", const=True, **kw)
        return
    if opt.meta.choices:
        kw["choices"] = list(opt.meta.choices)
    elif opt.kind.base is not tuple:
        kw["type"] = _Type(opt)
    if opt.meta.metavar is not None:
        kw["metavar"] = opt.meta.metavar
    if opt.meta.nargs == "append":
        kw["action"] = "append"
    elif opt.meta.nargs is not None:
        kw["nargs"] = opt.meta.nargs
    parser.add_argument(flag, **kw)


def add_settings_options(parser: argparse.ArgumentParser,
                         groups: Iterable[str] = GROUPS) -> None:
    """The options of ``groups`` on ``parser``, one argument group each."""
    for name in groups:
        opts = [o for o in group_of(name) if o.flag is not None]
        if not opts:
            continue
        section = parser.add_argument_group(GROUPS[name].TITLE)
        for opt in opts:
            add_option(section, opt)


def cli_overrides(args: argparse.Namespace, groups: Iterable[str] = GROUPS) -> dict[str, Any]:
    """The settings of ``groups`` that the command line gave, as flat settings."""
    given = vars(args)
    out: dict[str, Any] = {}
    for name in groups:
        for opt in group_of(name):
            if opt.flag is None or opt.flat not in given:
                continue
            value = given[opt.flat]
            if opt.kind.base is tuple:
                value = tuple(value) if isinstance(value, list | tuple) else (value,)
            out[opt.flat] = value
    return out
