"""Dependencies present or refused up front (issue 19, item 4): a missing Opus library is
told at ``start`` (or at subscribe), never raised inside another connection's path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import earshot.codec.opus as opus
from earshot.errors import MissingDependency, ProtocolError
from earshot.server.testing import Gateway
from earshot.wire.ingest import Limits, parse_start
from helpers import RecordingOwner


def no_av() -> Any:
    raise MissingDependency("Opus support needs PyAV (which bundles libopus): pip install av")


def test_what_is_missing_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    assert opus.encoder_missing() is None and opus.decoder_missing() is None  # (this venv)
    monkeypatch.setattr(opus, "import_av", no_av)
    assert "pip install av" in (opus.encoder_missing() or "")
    assert opus.decoder_missing() is None  # libopus itself (the system's) still decodes
    monkeypatch.setattr(opus, "_libopus", lambda: None)
    assert "pip install av" in (opus.decoder_missing() or "")


async def test_an_opus_start_is_refused_up_front_without_a_decoder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(opus, "import_av", no_av)
    monkeypatch.setattr(opus, "_libopus", lambda: None)
    async with Gateway(tmp_path) as gw:
        s = parse_start({"type": "start", "format": "opus", "rate": 48000}, Limits())
        with pytest.raises(ProtocolError) as exc:
            await gw.hub.open(s, RecordingOwner())
        assert exc.value.code == "unsupported_format" and "pip install av" in exc.value.message
        assert gw.hub.live == {} and gw.store.list(limit=5, offset=0)[1] == 0


async def test_a_missing_encoder_never_fails_the_publisher(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Were an ``audio=opus`` listener to get in anyway (it is refused at subscribe), the
    publisher's batch path leaves the relay out and goes on."""
    def no_encoder(*a: Any, **k: Any) -> Any:
        raise MissingDependency("this PyAV build has no libopus encoder: pip install av")

    monkeypatch.setattr(opus, "OpusEncoder", no_encoder)
    async with Gateway(tmp_path) as gw:
        owner = RecordingOwner()
        s = parse_start({"type": "start", "format": "s16", "rate": 16000, "processors": []},
                        Limits())
        live, _, _ = await gw.hub.open(s, owner)
        gw.bus.subscribe(live.id, audio="opus")
        for _ in range(3):
            gw.hub.add_audio(live, np.ones(1600, "<i2").tobytes(), 1600)
            await gw.hub.flush(live)
        assert owner.acks == [1600, 3200, 4800] and owner.kicked == []
