#!/usr/bin/env python3
"""Where the VAD's time goes in a ``py-spy record --format raw`` profile of a server.

Counts samples (each thread sampled separately, so 100 % = one busy thread for the whole
recording) of:

* the VAD off the loop: stacks through the batcher thread (``VadBatcher._work``) or, on
  code without it, through ``Vad.process`` on the executor threads; split by leaf frame;
* the VAD's share of the event loop thread: its resampler (``Converter.convert``), the
  runner (``ProcessorRunner``), the batcher hand-off (``submit``/``_deliver``) and
  ``Vad`` itself.

    python benchmarks/pyspy_vad_summary.py benchmarks/results/profile-100.raw.txt
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

LINE = re.compile(r":\d+\)")

LOOP_PARTS = [
    ("level meter (inline on the loop; not the VAD)", "Level."),
    ("48 → 16 kHz resampling (soxr, Converter.convert)", "resample_chunk"),
    ("batcher hand-off (submit, _deliver)", "VadBatcher.submit"),
    ("batcher hand-off (submit, _deliver)", "_deliver (earshot/processors/vad_batch.py)"),
    ("Vad processor on the loop (events, checkpoint)", "Vad."),
    ("runner (queue, task, merge)", "ProcessorRunner"),
]


def summarize(path: Path, top: int) -> dict:
    off_loop: collections.Counter[str] = collections.Counter()
    loop_parts: collections.Counter[str] = collections.Counter()
    samples = 0
    main_busy = 0
    for line in path.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        if not stack:
            continue
        n = int(n_s)
        frames = [LINE.sub(")", f) for f in stack.split(";")]
        samples += n
        joined = ";".join(frames)
        if "VadBatcher._work" in joined or ("Vad.process" in joined and "_worker" in joined):
            off_loop[frames[-1]] += n
            continue
        if "Thread._bootstrap" in frames[0]:
            continue  # other pool threads (idle ones are not recorded)
        main_busy += n
        for label, needle in LOOP_PARTS:
            if needle in joined:
                loop_parts[label] += n
                break
    vad_total = sum(off_loop.values())
    return {
        "samples": samples,
        "main_thread_samples": main_busy,
        "vad_off_loop_samples": vad_total,
        "vad_off_loop_top": [(k, v, round(100 * v / max(vad_total, 1), 1))
                             for k, v in off_loop.most_common(top)],
        "loop_vad_parts_pct_of_main": {k: round(100 * v / max(main_busy, 1), 1)
                                       for k, v in loop_parts.most_common()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    s = summarize(args.raw, args.top)
    print(f"{args.raw}: {s['samples']} samples; main thread {s['main_thread_samples']}, "
          f"VAD off the loop {s['vad_off_loop_samples']}\n")
    print("| VAD off the loop: leaf frame | samples | % |\n|:---|---:|---:|")
    for k, v, p in s["vad_off_loop_top"]:
        print(f"| `{k}` | {v} | {p} |")
    print("\n| VAD on the event loop thread | % of its busy samples |\n|:---|---:|")
    for k, p in s["loop_vad_parts_pct_of_main"].items():
        print(f"| {k} | {p} |")
    if args.json:
        args.json.write_text(json.dumps(s, indent=1) + "\n")


if __name__ == "__main__":
    main()
