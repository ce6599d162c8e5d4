"""The page's latency probe (web/probe.js, used by the worklets with a Call's ``probe:
true``): under node, an onset is reported once per burst, at its first loud sample, and only
after a quiet block; the times it gives are the sample's own (captured before a microphone
callback, played after a speaker one)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

WEB = Path(__file__).resolve().parents[2] / "src" / "earshot" / "web"
NODE = shutil.which("node")


def run_node(blocks: list[list[float]], times: list[list[float]]) -> dict:
    module = json.dumps((WEB / "probe.js").as_uri())
    code = (
        "import { readFileSync } from 'node:fs';"
        f"const {{ OnsetProbe, blockTime }} = await import({module});"
        "const inp = JSON.parse(readFileSync(0, 'utf8'));"
        "const p = new OnsetProbe();"
        "const onsets = inp.blocks.map((b) => p.feed(Float32Array.from(b)));"
        "const t0 = Date.now();"
        "const times = inp.times.map(([i, n, sign]) => blockTime(i, n, 48000, sign) - t0);"
        "process.stdout.write(JSON.stringify({ onsets, times }));"
    )
    out = subprocess.run([NODE, "--input-type=module", "-e", code],  # type: ignore[list-item]
                         input=json.dumps({"blocks": blocks, "times": times}),
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(NODE is None, reason="node not installed")
def test_one_onset_per_burst_at_its_first_loud_sample() -> None:
    rng = np.random.default_rng(3)
    quiet = list(0.001 * rng.standard_normal(128))
    burst = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(128 * 4) / 48000)
    b1 = [0.0] * 40 + list(burst[:88])  # the onset starts 40 samples into the block
    blocks = [quiet, b1, list(burst[88:216]), list(burst[216:344]),
              [0.05] * 128,  # a tail between the thresholds: not quiet yet, no new onset
              list(burst[:128]),  # loud again without a quiet block between: not an onset
              quiet, list(burst[:128]), quiet]
    got = run_node(blocks, [])["onsets"]
    first = 40 + int(np.flatnonzero(np.abs(burst) > 0.1)[0])
    assert [o is not None for o in got] == [False, True, False, False, False, False, False,
                                            True, False]
    assert got[1]["index"] == first
    assert got[1]["peak"] == pytest.approx(float(np.max(np.abs(b1))), rel=1e-6)
    assert got[7]["index"] == first - 40


@pytest.mark.skipif(NODE is None, reason="node not installed")
def test_block_times_are_the_samples_own() -> None:
    # sample 28 of a 128-sample microphone block: captured 100 samples before the callback;
    # sample 48 of a speaker block: played 48 samples after it (ms; Date.now() is whole ms)
    t = run_node([], [[28, 128, -1], [48, 128, 1]])["times"]
    assert t[0] == pytest.approx(-100 / 48, abs=1.01)
    assert t[1] == pytest.approx(1.0, abs=1.01)
