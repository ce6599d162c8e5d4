"""Every error and close code is written once (earshot.wire.codes) and read from there."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from earshot.wire import codes
from earshot.wire.codes import BUSY, FATAL_CLOSE, RETRYABLE, Close, Code, final_close

SRC = Path(codes.__file__).resolve().parents[1]
CALLS = {"ProtocolError", "error_message", "refuse", "fail", "kick", "Refusal"}


def test_the_pages_codes_json_is_generated_from_the_enums() -> None:
    committed = (SRC / "web" / "codes.json").read_text()
    assert committed == codes.render(), "run: python -m earshot.wire.codes > " \
                                        "src/earshot/web/codes.json"
    data = json.loads(committed)
    assert data["close"]["TRY_AGAIN_LATER"] == 1013
    assert set(data["retryable"]) == {str(c) for c in RETRYABLE}


def test_the_tables_agree() -> None:
    assert BUSY <= RETRYABLE <= set(FATAL_CLOSE)
    assert all(isinstance(v, Close) for v in FATAL_CLOSE.values())
    assert Code.STORAGE_FULL == "storage_full" and json.dumps(Code.GAP) == '"gap"'
    assert [c for c in (4400, 4401, 1008, 1009) if not final_close(c)] == []
    assert [c for c in (1000, 1001, 1011, 1013, None) if final_close(c)] == []


def _code_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """String literals given as an error code: first argument of the calls above (after an
    HTTP status for Refusal), or the value of a "code" key in a dict display."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in CALLS and node.args:
                args = node.args[1:] if name == "Refusal" else node.args
                first = args[0] if args else None
                # a conditional picks one of two codes: both branches count
                choices = [first.body, first.orelse] if isinstance(first, ast.IfExp) \
                    else [first]
                found += [(node.lineno, c.value) for c in choices
                          if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if (isinstance(k, ast.Constant) and k.value == "code"
                        and isinstance(v, ast.Constant) and isinstance(v.value, str)):
                    found.append((node.lineno, v.value))
    return found


def test_no_module_spells_a_code_as_a_bare_string() -> None:
    bare = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "codes.py":
            continue
        for line, value in _code_literals(ast.parse(path.read_text(), str(path))):
            bare.append(f"{path.relative_to(SRC)}:{line}: {value!r}")
    assert bare == [], "use earshot.wire.codes.Code:\n" + "\n".join(bare)
