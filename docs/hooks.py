"""MkDocs hooks (mkdocs.yml ``hooks:``): the generated regions of each page (the configuration
table, the benchmark tables) are written afresh as the site is built, by
scripts/docs_regions.py, so the site never shows a stale table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from docs_regions import fill


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    return fill(markdown, page.file.src_uri)
