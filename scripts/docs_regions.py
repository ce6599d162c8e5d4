"""Generated regions of the docs: text between ``<!-- generated:NAME -->`` and
``<!-- /generated:NAME -->`` in docs/*.md is written by a generator, never by hand.

NAME is ``config`` (the configuration table, scripts/config_table.py), ``metrics`` (the
gateway's Prometheus metrics, scripts/metrics_table.py), ``client-options`` (what a start
may set of each processor, earshot.processors.schema) or ``bench.TABLE`` (a benchmark
table, scripts/bench_tables.py). The docs build fills the regions as it renders
(docs/hooks.py), and the committed pages are kept up to date so they read right on GitHub
too (tests/docs/ checks it):

    python scripts/docs_regions.py           # rewrite the regions of docs/*.md in place
    python scripts/docs_regions.py --check   # exit 1 if a page is out of date
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tables import TABLES
from config_table import config_table
from metrics_table import metrics_table


def client_options_table() -> str:
    """What a start may set of each built-in processor (earshot.processors.schema)."""
    from earshot.processors.schema import ASR, LEVEL, SPECTROGRAM, VAD, schema_table

    return schema_table({"level": LEVEL, "spectrogram": SPECTROGRAM, "vad": VAD, "asr": ASR})


DOCS = Path(__file__).resolve().parents[1] / "docs"
REGION = re.compile(r"(<!-- generated:([\w.-]+) -->\n)(.*?)(<!-- /generated:\2 -->)", re.S)


def generators() -> dict[str, Callable[[], str]]:
    out: dict[str, Callable[[], str]] = {"config": config_table, "metrics": metrics_table,
                                         "client-options": client_options_table}
    out.update({f"bench.{name}": fn for name, fn in TABLES.items()})
    return out


def fill(text: str, source: str = "page") -> str:
    """``text`` with every generated region written afresh; an unknown NAME is an error."""
    gens = generators()

    def one(m: re.Match[str]) -> str:
        name = m.group(2)
        if name not in gens:
            raise KeyError(f"{source}: no generator for region {name!r} (known: {sorted(gens)})")
        return f"{m.group(1)}{gens[name]().rstrip()}\n{m.group(4)}"

    return REGION.sub(one, text)


def regions(text: str) -> list[str]:
    return [m.group(2) for m in REGION.finditer(text)]


def main(argv: list[str]) -> int:
    stale = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        new = fill(text, str(page))
        if new != text:
            stale.append(page)
            if "--check" not in argv:
                page.write_text(new)
    for page in stale:
        verb = "out of date" if "--check" in argv else "rewrote"
        print(f"{verb}: {page.relative_to(DOCS.parent)}")
    return 1 if stale and "--check" in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
