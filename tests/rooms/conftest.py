"""Shared fixtures for the calls tests: two voices, as float32 mono at 16 kHz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _read(name: str) -> np.ndarray:
    x, rate = sf.read(FIXTURES / name, dtype="float32")
    assert rate == 16000 and x.ndim == 1
    return x


@pytest.fixture(scope="session")
def speech() -> np.ndarray:
    """9.5 s: three phrases with digital silence between them (espeak-ng)."""
    return _read("speech_16k.wav")


@pytest.fixture(scope="session")
def reading() -> np.ndarray:
    """28.4 s of another voice reading (Festival)."""
    return _read("reading_16k.wav")
