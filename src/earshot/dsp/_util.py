"""Small helpers shared by the DSP cores."""

from __future__ import annotations

import numpy as np

from earshot.errors import ProcessorError


def as_mono(samples: np.ndarray) -> np.ndarray:
    """Return ``samples`` as a contiguous 1-D float32 array (no copy if already one)."""
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def check_rate(rate: int) -> int:
    """Validate a sample rate."""
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or rate <= 0:
        raise ProcessorError(f"sample rate must be a positive integer, got {rate!r}")
    return int(rate)


def check_offset(offset: int) -> int:
    """Validate a starting frame offset."""
    if isinstance(offset, bool) or not isinstance(offset, int | np.integer) or offset < 0:
        raise ProcessorError(f"offset must be a non-negative integer, got {offset!r}")
    return int(offset)
