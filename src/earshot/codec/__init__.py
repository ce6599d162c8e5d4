"""Compressed wire formats: Opus packets in and out (PyAV imported lazily)."""
