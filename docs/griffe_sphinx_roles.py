"""A griffe extension for the API pages (mkdocs.yml): earshot's docstrings use Sphinx roles
(``:class:`earshot.spool.Spool```), which Markdown would show as ``:class:`` followed by
code; here they become plain code spans."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|data|exc|obj|const):`~?([^`]+)`")


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)
