"""Opus relay: a live stream encoded once for every Opus listener on this gateway."""

from __future__ import annotations

from typing import Any

import numpy as np

from earshot.cluster.bus import AudioItem


class OpusRelay:
    """Started when the first Opus listener asks; restarted when the audio jumps (resume)."""

    def __init__(self, stream: str, rate: int, channels: int) -> None:
        self.stream, self.rate, self.channels = stream, rate, channels
        self._enc: Any = None
        self._next_in = -1  # input offset the encoder expects next
        self._next_packet = 0  # stream offset of the next packet

    @staticmethod
    def supports(rate: int, channels: int) -> bool:
        from earshot.codec.opus import OPUS_RATES

        return rate in OPUS_RATES and channels <= 2

    def encode(self, samples: np.ndarray, first: int) -> AudioItem | None:
        """Packets for ``samples`` (float32, from frame ``first``), as one audio item."""
        from earshot.codec.opus import OpusEncoder, packet_samples

        if self._enc is None or self._next_in != first:
            self._enc = OpusEncoder(self.rate, self.channels, bitrate=32000)
            self._next_packet = first - self._enc.pre_skip
        packets = []
        pos = self._next_packet
        for p in self._enc.encode(samples):
            n = packet_samples(p, self.rate)
            packets.append((pos, n, p))
            pos += n
        self._next_in = first + len(samples)
        self._next_packet = pos
        if not packets:
            return None
        return AudioItem(self.stream, packets[0][0], self.rate, None, tuple(packets),
                         self.channels, self._enc.pre_skip)
