"""The table of a gateway's own Prometheus metrics (docs/operations.md), generated from the
metrics the server registers (``earshot.server.metrics.Metrics``), with their help text.

    python scripts/metrics_table.py
"""

from __future__ import annotations


def metrics_rows() -> list[tuple[str, str, str]]:
    """(name as exported, type, help) of every metric of ``Metrics``, in registration order."""
    from earshot.server.metrics import Metrics

    rows = []
    for family in Metrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        rows.append((name, family.type, " ".join(family.documentation.split())))
    return rows


def metrics_table() -> str:
    lines = ["| metric | type | what |", "|---|---|---|"]
    for name, kind, text in metrics_rows():
        cell = text.replace("|", "\\|")
        lines.append(f"| `{name}` | {kind} | {cell} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(metrics_table())
