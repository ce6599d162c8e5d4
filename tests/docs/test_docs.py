"""The docs: the site builds with ``mkdocs build --strict`` (no broken link, page or anchor),
works without internet, its generated tables are up to date (the configuration table against
``earshot serve --help`` itself), and the README stays short with links that resolve."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

from config_table import config_rows
from docs_regions import fill, regions

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
EARSHOT = Path(sys.executable).with_name("earshot")  # the console script of this venv


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "NO_MKDOCS_2_WARNING": "1", "HOME": str(out)})
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-5000:]}"
    return out


def test_every_page_is_built_and_the_nav_is_complete(site: Path) -> None:
    for page in PAGES:
        html = site / page.relative_to(DOCS).with_suffix(".html")
        assert html.is_file(), f"{page.name} was not built"
    nav = (site / "index.html").read_text()
    for page in PAGES:  # every page is reachable from the navigation
        assert f'href="{page.relative_to(DOCS).with_suffix(".html")}"' in nav, page.name


def test_the_site_needs_no_internet(site: Path) -> None:
    external = re.compile(r"<(?:script|link|img|iframe)\b[^>]*?(?:src|href)=\"(?:https?:)?//",
                          re.I)
    for html in site.rglob("*.html"):
        text = html.read_text()
        assert not external.search(text), f"{html.name} loads {external.search(text)}"
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, html.name
    assert (site / "search" / "search_index.json").is_file()
    index = (site / "search" / "search_index.json").read_text()
    assert "compatibility mode" in index.lower()  # the protocol page is searchable


def test_the_client_api_is_generated_from_docstrings(site: Path) -> None:
    client = (site / "client.html").read_text()
    for name in ("earshot.client.Publisher", "earshot.client.SyncPublisher",
                 "earshot.client.spool.Spool", "earshot.client.sources.FileSource",
                 "earshot.client.listen.Listener", "earshot.client.jitter.JitterBuffer"):
        assert f'id="{name}"' in client, name
    # a docstring's own words, so the page shows the code's documentation, not just names
    assert "One resumable stream from this program to an earshot server" in client
    processors = (site / "processors.html").read_text()
    for name in ("earshot.processors.Processor", "earshot.processors.Chunk",
                 "earshot.testing.run_processor"):
        assert f'id="{name}"' in processors, name


def test_generated_regions_are_up_to_date() -> None:
    found = []
    for page in PAGES:
        text = page.read_text()
        found += regions(text)
        assert fill(text, page.name) == text, (
            f"docs/{page.name} is out of date: run python scripts/docs_regions.py")
    assert "config" in found and "metrics" in found
    assert sum(name.startswith("bench.") for name in found) >= 20


def _help_options() -> list[str]:
    out = subprocess.run([str(EARSHOT), "serve", "--help"], capture_output=True, text=True,
                         timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    options = re.findall(r"^\s{2}(-[-\w]+(?:, -[-\w]+)*)", out.stdout, re.M)
    flags = [f for group in options for f in group.split(", ")]
    return [f for f in flags if f not in ("-h", "--help")]


def _docs_table_options() -> list[str]:
    text = (DOCS / "configuration.md").read_text()
    m = re.search(r"<!-- generated:config -->\n(.*?)<!-- /generated:config -->", text, re.S)
    assert m, "docs/configuration.md has no generated configuration table"
    rows = [line for line in m.group(1).splitlines() if line.startswith("| `-")]
    return [f for row in rows for f in re.findall(r"`(-[-\w]+)`", row.split(" | ")[0])]


def test_the_configuration_table_matches_serve_help() -> None:
    from_help, in_docs = _help_options(), _docs_table_options()
    assert len(from_help) > 40
    assert sorted(in_docs) == sorted(from_help), (
        f"only in --help: {sorted(set(from_help) - set(in_docs))}; "
        f"only in the docs: {sorted(set(in_docs) - set(from_help))}")
    assert len(in_docs) == len(set(in_docs)), "an option is listed twice"


def test_the_configuration_rows_say_what_the_settings_say() -> None:
    from earshot.config import Settings, env_overrides

    rows = {r.flags[0]: r for r in config_rows()}
    assert rows["--port"].default == str(Settings().server.port)
    assert rows["--port"].allowed == "an integer from 1 to 65535"
    assert rows["--archive-format"].allowed == "wav, wav-f32, flac, ogg"
    assert rows["--archive-format"].path == "archive.format"
    assert rows["--processor"].env == "EARSHOT_PROCESSORS"
    assert rows["--processor"].toml_key == "processors"
    assert rows["--min-free-space"].default == "64M"
    assert rows["--config"].toml_key is None
    # each variable the table names is one the server reads, with the type the table implies
    for row in rows.values():
        if row.env and row.env != "EARSHOT_CONFIG" and row.default:
            parsed = env_overrides({row.env: row.default.replace(" ", ";")})
            assert row.toml_key in parsed, row.env


def test_the_readme_is_short_and_its_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 20_000
    for command in ("./run serve          # the server on http://127.0.0.1:8000",
                    "./run test           # the whole test suite",
                    './run test -m "not slow"', "./run test -m slow"):
        assert command in readme, command
    links = re.findall(r"\]\((docs/[^)#]+)(?:#([^)]+))?\)", readme)
    assert len(links) > 20
    for path, anchor in links:
        target = ROOT / path
        assert target.is_file(), path
        if anchor:
            slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", target.read_text(), re.M)}
            assert anchor in slugs, f"{path}#{anchor}"


def _slug(heading: str) -> str:
    """GitHub's and python-markdown's anchor for a plain heading."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"\s", "-", text)
