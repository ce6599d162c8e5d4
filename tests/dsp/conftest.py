"""Shared helpers for the DSP tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="session")
def speech_truth() -> dict[str, Any]:
    return json.loads((FIXTURES / "speech_16k.json").read_text())


@pytest.fixture(scope="session")
def speech_16k() -> np.ndarray:
    x, rate = sf.read(FIXTURES / "speech_16k.wav", dtype="float32")
    assert rate == 16000 and x.ndim == 1
    return x


@pytest.fixture(scope="session")
def speech_48k() -> np.ndarray:
    x, rate = sf.read(FIXTURES / "speech_48k.wav", dtype="float32")
    assert rate == 48000 and x.ndim == 1
    return x
