"""What a setting is, written once: :func:`setting` declares a field of a settings group
with its help, range or choices, parser and names; :class:`Option` is that field as the
command line, the environment, the config file, JSON and the docs see it.

From one declaration::

    ack_interval: float = setting(0.1, "seconds of audio per ack while the server has "
                                  "headroom", range=Range(float, 0.005, 5, unit="seconds"))

come ``--ack-interval SECONDS`` (its help ending "(default 0.1; 0.005-5 seconds; env
EARSHOT_ACK_INTERVAL)"), ``EARSHOT_ACK_INTERVAL``, the TOML keys ``ack_interval`` and
``ingest.ack_interval``, the range check (:meth:`Option.problem`) and the docs' table row.

Everything here is pure: text or TOML values in, typed values or a reason out.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from earshot.errors import ConfigError
from earshot.ranges import Range

T = TypeVar("T")
META_KEY = "earshot"
ENV_PREFIX = "EARSHOT_"
TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off", ""})
Nargs = Literal["append", "+", "*"]
Redact = Literal["", "all", "url"]


@dataclass(frozen=True, slots=True)
class Meta:
    """A setting's description. Only ``help`` is required; the rest has sensible defaults."""

    help: str
    flat: str = ""  # env suffix, TOML key, flag base: "" = the group's prefix + field name
    flag: str | None = ""  # "" = --flat-with-dashes; None = no command-line option
    range: Range | None = None
    choices: tuple[str, ...] = ()
    literals: tuple[str, ...] = ()  # words allowed besides the range ("auto")
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None  # text → value, when not the type's own
    normalize: Callable[[Any], Any] | None = None  # a valid value's one spelling
    nargs: Nargs | None = None  # lists on the command line: repeated, or several values
    noun: str | None = None  # what it takes, for the docs ("a size (64M, 1G or bytes)")
    default_text: str | None = None  # the default as people write it ("64M")
    example: str | None = None  # a valid non-default value, as typed on the command line
    redact: Redact = ""  # "all": a secret; "url": a URL whose password is a secret


def setting(default: T, help: str, **meta: Any) -> T:
    """A settings-group field: its default and its :class:`Meta` (see there)."""
    return field(default=default, metadata={META_KEY: Meta(help, **meta)})


@dataclass(frozen=True, slots=True)
class Kind:
    """A field's type, from its annotation: the base type, optional or not."""

    base: type  # bool, int, float, str, Path or tuple (of str)
    optional: bool = False
    words: bool = False  # ``int | str``: a number or one of Meta.literals

    @classmethod
    def of(cls, hint: Any) -> Kind:
        args = typing.get_args(hint)
        origin = typing.get_origin(hint)
        if origin in (Union, types.UnionType):
            rest = tuple(a for a in args if a is not type(None))
            if len(rest) == 1:
                return cls(cls.of(rest[0]).base, optional=True)
            if set(rest) == {int, str}:
                return cls(int, words=True)
            raise TypeError(f"unsupported settings type {hint!r}")
        if origin is tuple:
            if args != (str, ...):
                raise TypeError(f"settings lists are tuple[str, ...], not {hint!r}")
            return cls(tuple)
        if hint in (bool, int, float, str, Path):
            return cls(hint)
        raise TypeError(f"unsupported settings type {hint!r}")

    def noun(self) -> str:
        return {bool: "true or false", int: "an integer", float: "a number", str: "text",
                Path: "a path", tuple: "a list of text"}[self.base]


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: where it lives (``group.name``), its names and its rules."""

    group: str  # the Settings attribute of its group: "ingest"
    name: str  # the field in the group: "ack_interval"
    flat: str  # "ack_interval": EARSHOT_ACK_INTERVAL, TOML key, --ack-interval
    kind: Kind
    default: Any
    meta: Meta

    # -- names --------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """``ingest.ack_interval``: the attribute path, and the TOML dotted key."""
        return f"{self.group}.{self.name}"

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flat.upper()

    @property
    def flag(self) -> str | None:
        if self.meta.flag is None:
            return None
        return self.meta.flag or "--" + self.flat.replace("_", "-")

    @property
    def label(self) -> str:
        """How messages name it: ``ack interval``."""
        return self.flat.replace("_", " ")

    @property
    def help(self) -> str:
        return self.meta.help

    # -- descriptions -------------------------------------------------------------------
    def default_text(self) -> str:
        """The default as text ("" when unset)."""
        if self.meta.default_text is not None:
            return self.meta.default_text
        if isinstance(self.default, bool) and self.flag is None:  # as the file writes it
            return "true" if self.default else "false"
        return value_text(self.default)

    def allowed(self) -> str:
        """The values it takes, for the docs: the range, the choices, or the type."""
        if self.meta.choices:
            return ", ".join(self.meta.choices)
        words = " or ".join(repr(w).replace("'", '"') for w in self.meta.literals)
        if self.meta.range is not None:
            text = self.meta.range.describe(self.meta.noun)
            return f"{text}, or {words}" if words else text
        if self.kind.base is bool:
            return "flag" if self.flag else "true or false"
        return self.meta.noun or ("" if self.kind.base in (str, Path, tuple)
                                  else self.kind.noun())

    def short_allowed(self) -> str:
        """The range in a few words, for ``--help`` ("" when the choices or type say it)."""
        if self.meta.range is None:
            return ""
        text = self.meta.range.short()
        return f"{text}, or {' or '.join(self.meta.literals)}" if self.meta.literals else text

    def sample(self) -> str:
        """A valid value other than the default, as typed on the command line: the declared
        ``example``, another choice, the other truth value, or a number in range (twice the
        default, one more, or an end of the range). Tests start servers with these."""
        if self.meta.example is not None:
            return self.meta.example
        if self.meta.choices:
            return next(c for c in self.meta.choices if c != self.default)
        if self.kind.base is bool:
            return "false" if self.default else "true"
        r = self.meta.range
        if r is not None and isinstance(self.default, int | float):
            d = self.default
            for cand in (d * 2, d + 1, r.lo, r.hi):
                if cand is None:
                    continue
                value = int(cand) if r.kind is int else float(cand)
                if value != d and r.problem(value) is None:
                    return str(value)
        raise ValueError(f"setting {self.flat}: no sample value; declare one with example=")

    # -- values -------------------------------------------------------------------------
    def from_text(self, text: str, *, list_sep: str = ";") -> Any:
        """A value from text (an environment variable; lists split on ``list_sep``).
        Types only: the range is checked when the settings are built. ValueError says why."""
        if self.kind.base is tuple:
            return tuple(p.strip() for p in text.split(list_sep) if p.strip())
        if self.meta.parse is not None:
            return self.meta.parse(text)
        return self.from_word(text)

    def from_word(self, text: str) -> Any:
        """One value of its type from one word (a command-line value, an env value)."""
        base = self.kind.base
        t = text.strip()
        if base is bool:
            if t.lower() in TRUE:
                return True
            if t.lower() in FALSE:
                return False
            raise ValueError(f"must be true or false (1/0, yes/no, on/off), not {text!r}")
        if base in (int, float):
            try:
                return int(t) if base is int else float(t)
            except ValueError:
                raise ValueError(f"must be {self.kind.noun()}, not {text!r}") from None
        if base is Path:
            return Path(t)
        return text

    def from_toml(self, value: Any) -> Any:
        """A TOML value checked against the type (TOML already has the scalars)."""
        base = self.kind.base
        if base is tuple:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"must be a list of strings, not {value!r}")
            return tuple(value)
        if isinstance(value, str) and self.meta.parse is not None:  # "64M", "auto"
            try:
                return self.meta.parse(value)
            except (ValueError, ConfigError) as exc:
                raise ConfigError(str(exc)) from None
        if base is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"must be true or false, not {value!r}")
            return value
        if base is int:
            if isinstance(value, bool) or not isinstance(value, int):
                words = ' or "' + '" or "'.join(self.meta.literals) + '"' \
                    if self.meta.literals else ""
                raise ConfigError(f"must be an integer{words}, not {value!r}")
            return value
        if base is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"must be a number, not {value!r}")
            return float(value)
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, not {value!r}")
        return Path(value) if base is Path else value

    def coerce(self, value: Any) -> Any:
        """A Python value in its canonical form: lists as tuples, text as a Path, ints as
        floats, text through the parser ("64M", "AUTO"), then normalized."""
        base = self.kind.base
        if value is None:
            return None
        if base is tuple:
            if isinstance(value, str):
                value = (value,)
            if isinstance(value, list | tuple):
                value = tuple(value)
        elif isinstance(value, str) and self.meta.parse is not None:
            try:
                value = self.meta.parse(value)
            except ValueError as exc:
                raise ConfigError(f"{self.label} {exc}") from None
        elif base is Path and isinstance(value, str):
            value = Path(value)
        elif base is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.meta.normalize is not None and self.problem(value) is None:
            value = self.meta.normalize(value)
        return value

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed here ("must be ..., not ..."), or None."""
        if value is None:
            return None if self.kind.optional else f"must be {self.kind.noun()}, not None"
        if isinstance(value, str) and value in self.meta.literals:
            return None
        if self.meta.choices:
            if value not in self.meta.choices:
                return f"{value!r} is not one of {', '.join(self.meta.choices)}"
            return None
        if self.meta.range is not None:
            problem = self.meta.range.problem(value)
            if problem is not None and self.meta.noun:
                return f"must be {self.meta.range.describe(self.meta.noun)}, not {value!r}"
            return problem
        base = self.kind.base
        if base is tuple:
            ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
        elif base is float:
            ok = (isinstance(value, int | float) and not isinstance(value, bool)
                  and math.isfinite(value))
        elif base is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, base)
        return None if ok else f"must be {self.kind.noun()}, not {value!r}"

    def to_json(self, value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return list(value)
        return value


def value_text(value: Any) -> str:
    """A value as the docs and ``--help`` show it: ``on``, ``asr vad``, ``3600``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return " ".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def options_of(group: str, cls: type, prefix: str = "") -> list[Option]:
    """The options of one settings-group dataclass, in declaration order."""
    from dataclasses import fields

    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        meta = f.metadata.get(META_KEY)
        if not isinstance(meta, Meta):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting()")
        out.append(Option(group, f.name, meta.flat or prefix + f.name, Kind.of(hints[f.name]),
                          _default(f), meta))
    return out


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise TypeError(f"setting {f.name} has no default")
