"""The client package stands alone: it imports nothing of the server, has no import cycles,
imports no other module's private names, and every module imports on its own."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import earshot.client

CLIENT = Path(earshot.client.__file__).parent
SERVER_SIDE = ("earshot.server", "earshot.cluster", "earshot.processors")


def modules() -> dict[str, Path]:
    return {("earshot.client" if p.stem == "__init__" else f"earshot.client.{p.stem}"): p
            for p in sorted(CLIENT.glob("*.py"))}


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """Every import in the file, at any depth (lazy ones too): (module, names, line)."""
    out: list[tuple[str, list[str], int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}:{node.lineno}: a relative import")
    return out


def test_the_client_imports_nothing_of_the_server() -> None:
    bad = [f"{name}:{line} imports {mod}" for name, path in modules().items()
           for mod, _, line in imports(path)
           if any(mod == s or mod.startswith(s + ".") for s in SERVER_SIDE)]
    assert bad == []
    assert len(modules()) >= 14  # (the walk found the package)


def test_no_client_module_imports_a_private_name() -> None:
    bad = [f"{name}:{line} imports {n} from {mod}" for name, path in modules().items()
           for mod, names, line in imports(path) for n in names
           if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
    assert bad == []


def test_no_import_cycles_inside_the_client() -> None:
    graph = {name: {mod for mod, _, _ in imports(path) if mod in modules() and mod != name}
             for name, path in modules().items()}
    # the package's __init__ re-exports; importing a submodule runs it first, so only the
    # edges between submodules can form a cycle
    graph = {n: deps - {"earshot.client"} for n, deps in graph.items() if n != "earshot.client"}
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join((*path, node))}"
        if node in done:
            return
        for dep in sorted(graph[node]):
            visit(dep, (*path, node))
        done.add(node)

    for node in graph:
        visit(node, ())
    assert graph["earshot.client.publisher"] >= {"earshot.client.protocol",
                                                 "earshot.client.connection"}
    assert "earshot.client.publisher" not in graph["earshot.client.spooled"]


def test_every_client_module_imports_alone_without_the_server_stack() -> None:
    probe = f"""
import importlib, json, sys
names = {sorted(modules())!r}
loaded = {{}}
for name in names:
    for m in [m for m in sys.modules if m == "earshot" or m.startswith("earshot.")]:
        del sys.modules[m]
    importlib.import_module(name)
    loaded[name] = sorted(m for m in sys.modules if m.startswith("earshot."))
heavy = [m for m in ("fastapi", "starlette", "uvicorn", "onnxruntime", "av") if m in sys.modules]
print(json.dumps({{"loaded": loaded, "heavy": heavy}}))
"""
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert set(result["loaded"]) == set(modules())
    for name, loaded in result["loaded"].items():
        server = [m for m in loaded if m.startswith(SERVER_SIDE)]
        assert server == [], f"{name} pulls in {server}"
    assert result["heavy"] == []
