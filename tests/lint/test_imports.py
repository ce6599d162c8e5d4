"""The package's import graph: no cycles, and the client never imports the server.

Every import counts, function-local ones included (a lazy import still ties two modules
together); imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import earshot

SRC = Path(earshot.__file__).resolve().parent
#: what the client-only install (``pip install earshot``) may import of the package
CLIENT_MAY_IMPORT = ("earshot.client", "earshot.wire", "earshot.audio", "earshot.errors",
                     "earshot.redact", "earshot.fsutil", "earshot.codec", "earshot.ranges",
                     "earshot.dsp.cleanup", "earshot.rooms.echo", "earshot.rooms.errors")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def imports_of(path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    me = module_name(path)
    out: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", 0) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            while name and name not in known:  # `from pkg import mod` or `import pkg.x`
                name = name.rpartition(".")[0]
            if name.startswith("earshot") and name != me:
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in SRC.rglob("*.py")}
    known = set(paths)
    return {m: imports_of(p, known) for m, p in paths.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    found = cycles(graph())
    # a package's __init__ re-exporting its own modules is not a cycle of design
    real = [c for c in found if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert real == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in real)


def test_the_client_imports_nothing_of_the_server() -> None:
    g = graph()
    bad = sorted(f"{m} -> {d}" for m, deps in g.items() if m.startswith("earshot.client")
                 for d in deps if not d.startswith(CLIENT_MAY_IMPORT) and d != "earshot")
    assert bad == [], "the client package reaches beyond the client-only install:\n" + \
        "\n".join(bad)


def test_the_cycle_finder_can_fail() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
