"""Terminal output for the command line (rich), the same on a terminal and in a pipe."""

from __future__ import annotations

import os
from typing import Any

# Wide enough that nothing real wraps; rich would otherwise assume 80 columns off a terminal
# and hard-wrap paths and URLs mid-word in logs and pipes.
_UNWRAPPED = 100_000


def console(*, stderr: bool = False, **kw: Any) -> Any:
    """A ``rich.console.Console`` that does not hard-wrap when it is not on a terminal
    (unless ``COLUMNS`` says how wide to be)."""
    from rich.console import Console

    c = Console(stderr=stderr, **kw)
    if not c.is_terminal and "COLUMNS" not in os.environ and "width" not in kw:
        c = Console(stderr=stderr, width=_UNWRAPPED, soft_wrap=True, **kw)
    return c
