"""Which speech-to-text engine and model a server runs, from its settings.

* no ``--asr-model`` and no ``--asr-engine``: PocketSphinx with its bundled US English model
  (installed with earshot: speech-to-text works out of the box);
* ``--asr-model`` without ``--asr-engine``: faster-whisper (the recommended engine);
* ``--asr-engine pocketsphinx|faster-whisper|package.module:Class`` chooses explicitly;
  ``--asr-engine none`` turns speech-to-text off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from earshot.asr.engine import (
    ENGINES,
    EngineConfig,
    is_incremental,
    is_two_pass,
    load_engine,
)
from earshot.errors import ConfigError, MissingDependency

if TYPE_CHECKING:
    from earshot.asr.scheduler import AsrScheduler, JobResult
    from earshot.config import Settings

log = logging.getLogger("earshot.asr")

DEFAULT_ENGINE = "pocketsphinx"
RECOMMENDED = "faster-whisper"
OFF = "none"
#: said wherever the default engine is in use (start-up log, /healthz, the page)
WHISPER_HINT = ("a Whisper model gives far better accuracy: pip install 'earshot[asr]' and "
                "start the server with --asr-model small.en (or a local model directory)")
OFF_REASON = "speech-to-text is turned off (--asr-engine none)"


@dataclass(frozen=True, slots=True)
class AsrChoice:
    engine: str  # a name in ENGINES or package.module:Class, or "none"
    model: str | None
    implicit: bool  # chosen by default, not asked for


def choose(settings: Settings) -> AsrChoice:
    """The engine and model ``settings`` ask for (no loading)."""
    engine = (settings.asr.engine or "").strip()
    model = (settings.asr.model or "").strip() or None
    if engine.lower() == OFF:
        return AsrChoice(OFF, None, False)
    if not engine:
        if model is None:
            from earshot.asr.pocketsphinx import DEFAULT_MODEL

            return AsrChoice(DEFAULT_ENGINE, DEFAULT_MODEL, True)
        return AsrChoice(RECOMMENDED, model, False)
    if engine == DEFAULT_ENGINE and model is None:
        from earshot.asr.pocketsphinx import DEFAULT_MODEL

        model = DEFAULT_MODEL
    if model is None:
        raise ConfigError(f"speech-to-text engine {engine!r} needs --asr-model "
                          "(a model name or a local model directory)")
    if engine not in ENGINES and ":" not in engine:
        raise ConfigError(f"speech-to-text engine {engine!r} is not one of "
                          f"{', '.join([*ENGINES, OFF])} nor package.module:Class")
    return AsrChoice(engine, model, False)


@dataclass(slots=True)
class LoadedAsr:
    """What :func:`load_asr` found: the scheduler (None: unavailable) and what to report."""

    scheduler: AsrScheduler | None
    choice: AsrChoice
    reason: str | None = None  # why unavailable

    def report(self) -> dict[str, Any]:
        """The ``asr`` part of /healthz."""
        if self.scheduler is None:
            return {"available": False, "reason": self.reason or OFF_REASON}
        engine = self.scheduler.engine
        out: dict[str, Any] = {
            "available": True,
            "engine": getattr(engine, "name", self.choice.engine),
            "model": self.choice.model,
            "default": self.choice.implicit,
            "languages": list(getattr(engine, "languages", None) or []) or None,
            "incremental": is_incremental(engine),
            "two_pass": is_two_pass(engine),
            "batch": self.scheduler.max_batch,
            "workers": self.scheduler.workers,
        }
        if self.choice.engine == DEFAULT_ENGINE:
            out["hint"] = WHISPER_HINT
        return out


def asr_workers(value: int | str) -> int:
    """``--asr-workers``: ``auto`` is one per core this process may use."""
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            return max(1, os.cpu_count() or 1)
    return max(1, int(value))


def load_asr(settings: Settings,
             observe: Callable[[JobResult, bool], None] | None = None) -> LoadedAsr:
    """Load the configured engine and its scheduler.

    The default engine missing is not fatal (speech-to-text is then unavailable, with the
    reason); an engine or model asked for that cannot be loaded raises ConfigError or
    MissingDependency, so the server fails at start with a clear message.
    """
    from earshot.asr.scheduler import AsrScheduler

    choice = choose(settings)
    if choice.engine == OFF:
        return LoadedAsr(None, choice, OFF_REASON)
    assert choice.model is not None
    workers = asr_workers(settings.asr.workers)
    cfg = EngineConfig(model=choice.model, device=settings.asr.device,
                       compute_type=settings.asr.compute_type, language=settings.asr.language,
                       beam_size=settings.asr.beam_size, threads=settings.asr.threads,
                       workers=workers,
                       two_pass=settings.asr.final == "whole")
    try:
        engine = load_engine(cfg, choice.engine)
    except MissingDependency as exc:
        if not choice.implicit:
            raise
        log.warning("speech-to-text unavailable: %s", exc)
        return LoadedAsr(None, choice, f"{exc}; or {WHISPER_HINT}")
    batch: bool | int = settings.asr.batch if settings.asr.batch else True
    return LoadedAsr(AsrScheduler(engine, workers=workers, observe=observe,
                                  batch=batch), choice)
