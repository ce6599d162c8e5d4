"""Finding processors by name or import path, with keyword options.

A spec is a built-in name (``"level"``), an import path (``"mypkg.mod:MyVad"``), or either
with options: ``{"name": "vad", "options": {"threshold": 0.6}}`` in a ``start`` message,
``vad,threshold=0.6`` on the command line.

Clients may only name processors the server offers: the built-ins and those given to
``earshot serve --processor``. An import path from a client is never imported on its say-so.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from earshot.errors import ProcessorError
from earshot.processors.base import Processor
from earshot.processors.builtin.level import Level
from earshot.processors.builtin.spectrogram import Spectrogram
from earshot.processors.builtin.vad import Vad
from earshot.processors.schema import check_processors

BUILTINS: dict[str, type[Processor]] = {"level": Level, "spectrogram": Spectrogram, "vad": Vad}


@dataclass(frozen=True)
class ProcessorSpec:
    """A processor class and the options to build it with."""

    cls: type[Processor]
    options: Mapping[str, Any] = field(default_factory=dict)
    ref: str = ""  # how it was named: builtin name or import path

    @property
    def name(self) -> str:
        return self.cls.name

    def make(self) -> Processor:
        try:
            return self.cls(**self.options)
        except TypeError as exc:
            raise ProcessorError(f"bad options for processor {self.name!r}: {exc}") from None


def import_processor(path: str) -> type[Processor]:
    """``"package.module:Class"`` → the class, checked to be a Processor.

    Modules are also looked for in the current directory, as uvicorn does for app specs, so
    ``earshot serve --processor examples.melprint:MelPrint`` works from a checkout (the
    ``earshot`` script's own directory is on the path, not the one it was run from). Only
    paths given by whoever runs the server or worker get here, never a client's.
    """
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ProcessorError(f"processor path {path!r} must look like 'package.module:Class'")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ProcessorError(f"cannot import {module_name!r} for processor {path!r}: {exc}") \
            from None
    obj = getattr(module, attr, None)
    if not (inspect.isclass(obj) and issubclass(obj, Processor)):
        raise ProcessorError(f"{path!r} is not a subclass of earshot.processors.Processor")
    return obj


def parse_cli_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``"vad,threshold=0.6,pad_ms=50"`` → ("vad", {"threshold": 0.6, "pad_ms": 50})."""
    ref, *pairs = [p.strip() for p in text.split(",") if p.strip()]
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ProcessorError(f"processor option {pair!r} must be key=value")
        try:
            options[key] = json.loads(raw)
        except ValueError:
            options[key] = raw
    return ref, options


def resolve(ref: str, options: Mapping[str, Any] | None = None, *,
            allow_import: bool = True) -> ProcessorSpec:
    if ref in BUILTINS:
        cls = BUILTINS[ref]
    elif ":" in ref and allow_import:
        cls = import_processor(ref)
    else:
        raise ProcessorError(f"unknown processor {ref!r}; built-ins: {', '.join(BUILTINS)}")
    spec = ProcessorSpec(cls, dict(options or {}), ref)
    spec.make()  # fail now, not per stream, on bad options
    return spec


class Registry:
    """The processors a server offers, and its defaults.

    ``extra`` adds processors that need the server's resources (``asr`` with its shared
    model); ``unavailable`` names processors that exist but cannot run here, with why.
    """

    def __init__(self, configured: list[str] | tuple[str, ...] = (), *,
                 extra: dict[str, type[Processor]] | None = None,
                 unavailable: dict[str, str] | None = None) -> None:
        self.unavailable = dict(unavailable or {})
        known = {**BUILTINS, **(extra or {})}
        self.defaults: list[ProcessorSpec] = []
        for c in configured:
            ref, options = parse_cli_spec(c)
            if ref in self.unavailable:
                raise ProcessorError(f"cannot offer {ref!r}: {self.unavailable[ref]}")
            if ref in known:
                spec = ProcessorSpec(known[ref], options, ref)
                spec.make()
            else:
                spec = resolve(ref, options)
            self.defaults.append(spec)
        self.offered: dict[str, type[Processor]] = known
        for spec in self.defaults:
            self.offered[spec.ref] = spec.cls
            self.offered.setdefault(spec.name, spec.cls)
        if not configured:
            self.defaults = [resolve("level")]

    def check_start(self, requested: tuple[Any, ...] | None,
                    max_processors: int) -> tuple[Any, ...] | None:
        """A start's ``processors`` checked against each offered processor's client
        schema and merged (:func:`earshot.processors.schema.check_processors`); raises
        :class:`~earshot.errors.ProtocolError` (``bad_start``) naming the field."""
        schemas = {ref: cls.client_options for ref, cls in self.offered.items()}
        return check_processors(requested, schemas, max_processors)

    def for_start(self, requested: tuple[Any, ...] | None) -> tuple[list[ProcessorSpec],
                                                                     list[str]]:
        """Specs for a start's ``processors`` (None: the defaults), and problems found."""
        if requested is None:
            return list(self.defaults), []
        specs, problems = [], []
        for item in requested:
            ref, options = (item, {}) if isinstance(item, str) else (
                item.get("name", ""), item.get("options") or {})
            cls = self.offered.get(ref)
            if cls is None and ref in self.unavailable:
                problems.append(f"processor {ref!r} is unavailable: {self.unavailable[ref]}")
                continue
            if cls is None:
                problems.append(f"processor {ref!r} is not offered by this server "
                                f"(offered: {', '.join(sorted(self.offered))})")
                continue
            if not isinstance(options, dict):
                problems.append(f"options of processor {ref!r} must be an object")
                continue
            default = next((s for s in self.defaults if s.ref == ref), None)
            merged = {**(default.options if default else {}), **options}
            spec = ProcessorSpec(cls, merged, ref)
            try:
                spec.make()
            except ProcessorError as exc:
                problems.append(str(exc))
                continue
            specs.append(spec)
        return specs, problems
