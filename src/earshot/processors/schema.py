"""What a client may choose of a processor: each option's type and range (a sans-I/O core).

A processor class declares the options a ``start`` message may set in ``client_options``
(name → :class:`Opt`); every other option of its constructor is **server-only** (set with
``earshot serve --processor NAME,key=value``, never by a client). A processor that declares
none takes no options from clients at all. The ranges are chosen so that no client choice
costs the server more than a few MiB or a few hundred events per second per stream.

:func:`check_processors` applies the schema to a start's ``processors`` list: each option
checked (a ``bad_start`` error naming the field, e.g. ``processors[1].options.mels``),
duplicates merged (one entry per name, later options overriding earlier ones, in the order
of first appearance), and at most ``max_processors`` per stream.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from earshot.errors import ProtocolError
from earshot.wire.codes import Code


@dataclass(frozen=True, slots=True)
class Opt:
    """One option a client may set: ``kind`` (int, float, str or bool), an inclusive range
    (numbers) or a length limit (strings); ``nullable``: ``null`` is accepted too."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    nullable: bool = False
    max_chars: int = 35
    doc: str = ""

    def describe(self) -> str:
        if self.kind is bool:
            text = "true or false"
        elif self.kind is str:
            text = f"a string of at most {self.max_chars} characters"
        else:
            noun = "an integer" if self.kind is int else "a number"
            text = f"{noun} from {self.lo:g} to {self.hi:g}"
        return text + (" or null" if self.nullable else "")

    def check(self, field: str, value: Any) -> Any:
        """The value, normalized (an int for a float option becomes a float); raises
        :class:`ProtocolError` (``bad_start``) naming ``field`` when it does not fit."""
        if value is None and self.nullable:
            return None
        ok = False
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is str:
            ok = isinstance(value, str) and 0 < len(value) <= self.max_chars \
                and value.isprintable()
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if self.kind is int and isinstance(value, float):
                ok = False
            else:
                v = float(value)
                ok = math.isfinite(v) and (self.lo is None or v >= self.lo) \
                    and (self.hi is None or v <= self.hi)
                if ok and self.kind is float:
                    value = v
        if not ok:
            raise ProtocolError(Code.BAD_START,
                                f"'{field}' must be {self.describe()}, got {_show(value)}")
        return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_processors(requested: tuple[Any, ...] | None, schemas: Mapping[str, Any],
                     max_processors: int) -> tuple[Any, ...] | None:
    """A start's ``processors`` checked against ``schemas`` (processor name → its
    ``client_options``, None for a processor that takes none) and merged; names not in
    ``schemas`` (not offered here) pass through, for the caller to warn about."""
    if requested is None:
        return None
    merged: dict[str, dict[str, Any]] = {}
    for i, item in enumerate(requested):
        options: Any
        if isinstance(item, str):
            ref, options = item, {}
        else:
            ref, options = item.get("name"), item.get("options") or {}
            if not isinstance(ref, str):
                raise ProtocolError(Code.BAD_START, f"'processors[{i}].name' must be a string")
            if not isinstance(options, dict):
                raise ProtocolError(Code.BAD_START,
                                    f"'processors[{i}].options' must be an object")
        checked: dict[str, Any] = {}
        if options and ref in schemas:
            schema = schemas[ref]
            if not schema:
                raise ProtocolError(Code.BAD_START,
                                    f"'processors[{i}].options': processor {ref!r} takes no "
                                    "options from clients (its options are the server's)")
            for key, value in options.items():
                opt = schema.get(key)
                field = f"processors[{i}].options.{key}"
                if opt is None:
                    raise ProtocolError(
                        Code.BAD_START,
                        f"'{field}' is not an option a client may set for {ref!r} "
                        f"(it may set: {', '.join(sorted(schema))})")
                checked[key] = opt.check(field, value)
        elif options:
            checked = dict(options)  # not offered here: refused with a warning later
        merged.setdefault(ref, {}).update(checked)
    if len(merged) > max_processors:
        raise ProtocolError(Code.BAD_START,
                            f"'processors' may name at most {max_processors} processors per "
                            f"stream (duplicates merged), got {len(merged)}")
    return tuple(ref if not opts else {"name": ref, "options": opts}
                 for ref, opts in merged.items())


# -- the built-ins' schemas (the classes point here; docs/protocol.md lists them) ----------

MS = "milliseconds"
LEVEL = {
    "interval": Opt(float, 0.01, 10.0, doc="seconds between readings"),
    "clip_level": Opt(float, 0.5, 1.0, doc="a sample at or above this counts as clipped"),
}
SPECTROGRAM = {
    "mels": Opt(int, 1, 256, doc="mel bands"),
    "win_ms": Opt(float, 5.0, 100.0, doc="window, " + MS),
    "hop_ms": Opt(float, 5.0, 1000.0, doc="hop, " + MS),
    "floor_db": Opt(float, -200.0, 0.0, doc="dB mapped to 0"),
    "ceil_db": Opt(float, -100.0, 100.0, doc="dB mapped to 255"),
    "max_frames": Opt(int, 1, 500, doc="frames per event at most"),
}
VAD = {
    "threshold": Opt(float, 0.0, 1.0, doc="speech probability that starts speech"),
    "neg_threshold": Opt(float, 0.0, 1.0, nullable=True, doc="probability that ends it"),
    "min_speech_ms": Opt(float, 0.0, 10_000.0, doc="shortest speech, " + MS),
    "min_silence_ms": Opt(float, 0.0, 10_000.0, doc="silence that ends speech, " + MS),
    "pad_ms": Opt(float, 0.0, 2_000.0, doc="padding around speech, " + MS),
    "refine_db": Opt(float, 0.0, 120.0, nullable=True, doc="end refinement, dB"),
}
ASR = {
    "interim_interval": Opt(float, 0.1, 10.0, doc="seconds between interim transcripts"),
    "max_utterance": Opt(float, 1.0, 60.0, doc="longest utterance, seconds"),
    "threshold": VAD["threshold"],
    "min_silence_ms": VAD["min_silence_ms"],
    "min_speech_ms": VAD["min_speech_ms"],
    "pad_ms": VAD["pad_ms"],
    "lag_warning": Opt(float, 0.1, 60.0, doc="seconds behind before a lag warning"),
    "language": Opt(str, max_chars=35, nullable=True, doc="language tag, e.g. en-US"),
    "lead_in": Opt(float, 0.0, 1.0, doc="seconds of audio before speech given to the model"),
}


def schema_table(schemas: Mapping[str, Mapping[str, Opt]]) -> str:
    """The schema as a Markdown table (for docs/protocol.md; a test keeps them equal)."""
    rows = ["| processor | option | accepted | meaning |", "|---|---|---|---|"]
    for name, schema in schemas.items():
        for key, opt in schema.items():
            rows.append(f"| `{name}` | `{key}` | {opt.describe()} | {opt.doc} |")
    return "\n".join(rows)
