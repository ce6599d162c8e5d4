"""G.711 μ-law and A-law to 16-bit linear PCM (ITU-T G.711), by table: one byte a sample.

Telephony audio as Deepgram (``encoding=mulaw|alaw``) and OpenAI Realtime
(``audio/pcmu``, ``audio/pcma``) clients send it, usually at 8 kHz. The tables are built from
the standard's segment formulas; they agree with CPython's ``audioop.ulaw2lin`` /
``alaw2lin`` on all 256 codes.
"""

from __future__ import annotations

import numpy as np


def _mulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype("<i2")


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8,
                         ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype("<i2")


MULAW_TABLE = _mulaw_table()
ALAW_TABLE = _alaw_table()


def mulaw_to_s16(data: bytes | bytearray | memoryview) -> np.ndarray:
    """μ-law bytes → int16 samples (one per byte)."""
    return MULAW_TABLE[np.frombuffer(data, dtype=np.uint8)]


def alaw_to_s16(data: bytes | bytearray | memoryview) -> np.ndarray:
    """A-law bytes → int16 samples (one per byte)."""
    return ALAW_TABLE[np.frombuffer(data, dtype=np.uint8)]
