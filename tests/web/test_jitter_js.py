"""The page's jitter buffer (web/jitter.js) makes exactly the decisions of earshot's Python
one (earshot.client.jitter): the same schedule of arrivals and playout ticks goes through both,
under node, and every pop and every counter must match."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from earshot.client.jitter import JitterBuffer, JitterError

HERE = Path(__file__).resolve().parent
WEB = HERE.parents[1] / "src" / "earshot" / "web"
NODE = shutil.which("node")
RATE, FRAME = 48000, 960


def schedule(seed: int, seconds: float = 12.0) -> list[list]:
    """Arrivals with jitter, bursts, loss, duplicates, reordering, a stall, a sender jump."""
    rng = random.Random(seed)
    steps: list[tuple[float, int, list]] = []
    n = int(seconds / 0.02)
    jump = 0
    for k in range(n):
        t_send = k * 0.02
        if abs(t_send - 7.0) < 1e-9:
            jump = 5 * RATE  # the sender skips five seconds ahead: a discontinuity
        if rng.random() < 0.03:
            continue  # lost
        delay = 0.03 + rng.expovariate(1 / 0.015)
        if 3.0 <= t_send < 3.4:
            delay += 3.4 - t_send  # a 400 ms outage, then a burst
        if 9.0 <= t_send < 10.5:
            delay += 1.6  # a stall longer than max_delay: the buffer pre-buffers again
        offset = k * FRAME + jump
        steps.append((t_send + delay, 0, ["push", offset, FRAME, t_send + delay]))
        if rng.random() < 0.02:
            steps.append((t_send + delay + 0.05, 0, ["push", offset, FRAME,
                                                     t_send + delay + 0.05]))
    for k in range(int((seconds + 2.5) / 0.02)):
        t = 0.005 + k * 0.02
        steps.append((t, 1, ["pop", t]))
    steps.sort(key=lambda s: (s[0], s[1]))
    return [s[2] for s in steps]


def python_replay(steps: list[list]) -> dict:
    jb = JitterBuffer(RATE, FRAME)
    pops = []
    for s in steps:
        if s[0] == "push":
            jb.push(s[1], s[2], s[1], s[3])
        else:
            p = jb.pop(s[1])
            pops.append([p.offset, p.kind, p.media_offset, p.skipped, p.payload])
    return {"pops": pops, "stats": dataclasses.asdict(jb.stats)}


def node_replay(steps: list[list], tmp_path: Path) -> dict:
    if NODE is None:
        pytest.skip("node not installed")
    module = tmp_path / "jitter.mjs"  # node 20 loads ES modules by extension
    module.write_bytes((WEB / "jitter.js").read_bytes())
    out = subprocess.run([NODE, str(HERE / "jitter_replay.mjs"), module.as_uri()],
                         input=json.dumps({"rate": RATE, "frame": FRAME, "steps": steps}),
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_js_jitter_buffer_matches_python(seed: int, tmp_path: Path) -> None:
    steps = schedule(seed)
    py, js = python_replay(steps), node_replay(steps, tmp_path)
    assert len(js["pops"]) == len(py["pops"])
    for i, (a, b) in enumerate(zip(py["pops"], js["pops"], strict=True)):
        assert a == b, f"pop {i}: python {a}, js {b}"
    kinds = {p[1] for p in py["pops"]}
    assert kinds == {"audio", "concealed", "waiting"}  # the schedule exercises every path
    for key, value in py["stats"].items():
        assert js["stats"][camel(key)] == pytest.approx(value), key
    assert py["stats"]["accelerated_frames"] > 0 and py["stats"]["late"] > 0
    assert py["stats"]["duplicates"] > 0 and py["stats"]["lost_frames"] > 0


def test_js_jitter_buffer_refuses_what_python_refuses(tmp_path: Path) -> None:
    if NODE is None:
        pytest.skip("node not installed")
    with pytest.raises(JitterError, match="exactly 960"):
        JitterBuffer(RATE, FRAME).push(0, FRAME - 1, None, 0.0)
    module = tmp_path / "jitter.mjs"
    module.write_bytes((WEB / "jitter.js").read_bytes())
    script = f"""
      const {{ JitterBuffer }} = await import({json.dumps(module.as_uri())});
      const errors = [];
      for (const f of [() => new JitterBuffer(48000, 960).push(0, 959, null, 0),
                       () => {{ const j = new JitterBuffer(48000, 960); j.push(0, 960, 0, 0);
                                j.push(100, 960, 0, 0); }},
                       () => new JitterBuffer(48000, 960).push(-960, 960, null, 0),
                       () => new JitterBuffer(48000, 960, {{ minDelay: 2, maxDelay: 1 }})])
        try {{ f(); errors.push(null); }} catch (e) {{ errors.push(e.name + ": " + e.message); }}
      console.log(JSON.stringify(errors));"""
    out = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True,
                         text=True, timeout=60, check=True)
    errors = json.loads(out.stdout)
    assert all(e and e.startswith("JitterError") for e in errors), errors
    assert "exactly 960" in errors[0] and "off the packet grid" in errors[1]
