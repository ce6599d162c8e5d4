"""Make the real-speech fixture for the speech-to-text tests (deterministic).

Joins the five LibriVox clips of Debian's ``pocketsphinx-testdata`` package (a human
reading Jane Austen's *Sense and Sensibility*, chapter 1; LibriVox recordings are in the
public domain) into one 16 kHz mono PCM16 file, with digital silence between them (1.0 to
1.6 s, as between sentences in conversation) and around them, and writes beside it:

* ``librivox_16k.json``: each clip's transcription (from the package, ``<s>``/``</s>``
  dropped) with its speech interval in frames and seconds, and the whole text. The interval
  is where the clip's 10 ms energy first and last rises above ``THRESHOLD_DB`` dBFS (its
  background noise is about -45 dBFS), so the "end of speech" latencies are measured from
  the last audible sound, not from the clip's trailing noise.
* ``librivox_16k.LICENSE.md``: where it comes from and its licence.

Usage: ``apt-get install pocketsphinx-testdata && python scripts/make_librivox_fixture.py``
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

SOURCE = Path("/usr/share/pocketsphinx/test/data/librivox")
OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
NAME = "librivox_16k"
RATE = 16000
THRESHOLD_DB = -35.0
#: silence before each clip, then after the last one (seconds)
GAPS = (0.8, 1.2, 1.6, 1.0, 1.4, 1.5)

LICENSE = """\
# librivox_16k.wav: licence and source

Five clips of a human (a LibriVox volunteer) reading chapter 1 of Jane Austen's *Sense and
Sensibility*, joined with silence between them by `scripts/make_librivox_fixture.py`.

- Source: Debian's `pocketsphinx-testdata` package,
  `/usr/share/pocketsphinx/test/data/librivox/` (files
  `sense_and_sensibility_01_austen_64kb-{0870,0880,0890,0920,0930}.wav` and their
  `transcription`), which CMU Sphinx took from the LibriVox recording
  <https://librivox.org/sense-and-sensibility-by-jane-austen/>.
- Licence: **public domain**. LibriVox recordings are released into the public domain
  (<https://librivox.org/pages/public-domain/>); the novel (1811) is in the public domain.
  The transcriptions ship with pocketsphinx's test data (BSD-2-Clause, Carnegie Mellon
  University).
"""


def speech_interval(x: np.ndarray) -> tuple[int, int]:
    """First and last frame of the 10 ms blocks louder than THRESHOLD_DB."""
    block = RATE // 100
    n = x.size // block
    e = np.square(x[: n * block].astype(np.float64).reshape(n, block)).mean(axis=1)
    loud = np.flatnonzero(10 * np.log10(e + 1e-12) > THRESHOLD_DB)
    if loud.size == 0:
        raise SystemExit("make_librivox_fixture: a clip has no speech above the threshold")
    return int(loud[0]) * block, int(loud[-1] + 1) * block


def main() -> None:
    if not SOURCE.is_dir():
        sys.exit(f"make_librivox_fixture: {SOURCE} not found "
                 "(apt-get install pocketsphinx-testdata)")
    texts: dict[str, str] = {}
    for line in (SOURCE / "transcription").read_text().splitlines():
        m = re.fullmatch(r"\s*<s>\s*(.*?)\s*</s>\s*\((\S+)\)\s*", line)
        if m:
            texts[m.group(2)] = m.group(1)
    ids = (SOURCE / "fileids").read_text().split()
    if len(ids) + 1 != len(GAPS):
        sys.exit(f"make_librivox_fixture: expected {len(GAPS) - 1} clips, found {len(ids)}")
    parts: list[np.ndarray] = []
    speech = []
    pos = 0
    for gap, clip in zip(GAPS, ids, strict=False):
        silence = np.zeros(round(gap * RATE), np.int16)
        parts.append(silence)
        pos += silence.size
        x, rate = sf.read(SOURCE / f"{clip}.wav", dtype="int16")
        if rate != RATE or x.ndim != 1:
            sys.exit(f"make_librivox_fixture: {clip}.wav is not 16 kHz mono")
        a, b = speech_interval(x.astype(np.float32) / 32768.0)
        speech.append({"clip": clip, "text": texts[clip], "start": pos + a, "end": pos + b,
                       "start_s": round((pos + a) / RATE, 6), "end_s": round((pos + b) / RATE, 6)})
        parts.append(x)
        pos += x.size
    parts.append(np.zeros(round(GAPS[-1] * RATE), np.int16))
    audio = np.concatenate(parts)
    OUT.mkdir(parents=True, exist_ok=True)
    sf.write(OUT / f"{NAME}.wav", audio, RATE, subtype="PCM_16")
    meta = {"rate": RATE, "frames": int(audio.size), "duration_s": round(audio.size / RATE, 6),
            "voice": "human (LibriVox reader), Sense and Sensibility ch. 1",
            "licence": "public domain (LibriVox); see librivox_16k.LICENSE.md",
            "text": " ".join(s["text"] for s in speech), "speech": speech}
    (OUT / f"{NAME}.json").write_text(json.dumps(meta, indent=2) + "\n")
    (OUT / f"{NAME}.LICENSE.md").write_text(LICENSE)
    print(f"wrote {OUT / NAME}.wav ({audio.size} frames, {audio.size / RATE:.2f} s), "
          f"{NAME}.json and {NAME}.LICENSE.md")


if __name__ == "__main__":
    main()
