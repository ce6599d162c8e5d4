"""No module reaches into another module's private state.

An attribute access ``obj._name`` (``obj`` not ``self`` or ``cls``) is allowed only when
``_name`` is defined in the same module (a class cooperating with its own kind, such as a
batch function over several instances); and no module imports a private name (``from m
import _x``) from another. Dunder names are public protocol and always allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import earshot

SRC = Path(earshot.__file__).resolve().parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined_here(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, attributes set on self/cls or
    anything else, class-level assignments, slots."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ = ("_buf", ...)
    return {n for n in names if _private(n)}


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    own = _defined_here(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if node.attr not in own:
                out.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("earshot"):
            out += [f"{node.lineno}: from {node.module} import {a.name}"
                    for a in node.names if _private(a.name)]
    return out


def test_no_module_reads_another_modules_private_state() -> None:
    found = [f"{p.relative_to(SRC.parent)}:{v}" for p in sorted(SRC.rglob("*.py"))
             for v in violations(p)]
    assert found == [], "private state read across modules:\n" + "\n".join(found)


def test_the_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("from earshot.x import _y\n\ndef f(bus):\n    return len(bus._outbox)\n")
    assert violations(bad) == ["1: from earshot.x import _y", "4: ._outbox"]
    ok = tmp_path / "ok.py"
    ok.write_text("class A:\n    def __init__(self):\n        self._n = 1\n\n"
                  "    def same(self, other):\n        return other._n + self.__class__._n\n")
    assert violations(ok) == []
