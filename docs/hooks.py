"""MkDocs hook: tables generated from the code, so the pages cannot drift from it.

A page writes a marker on a line of its own and the build replaces it:

- ``<!-- hyperparameters: NAME -->``: every field of solver NAME's typed config with its
  default, allowed range or options, and source (``solvers.config``);
  the tables are built by ``experiments.catalog``, which ``dipswarm show`` prints too;
- ``<!-- presets: NAME -->``: solver NAME's registered presets with the backbone and task
  they were tuned for, their overrides and source (``solvers.preset.Preset``);
- ``<!-- operator-parameters: NAME -->``: the build parameters of operator NAME with their
  defaults (its constructor's signature).

An unknown name fails the build, so a renamed solver or operator shows up in ``mkdocs build
--strict`` (tests/test_docs.py).
"""

from __future__ import annotations

import re
from typing import Any

from mkdocs.exceptions import PluginError

from experiments.catalog import hyperparameters, operator_parameters, presets

MARKER = re.compile(r"^<!-- (hyperparameters|presets|operator-parameters): (\w+) -->$", re.M)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Replace every marker of the page by its generated table."""

    def table(match: re.Match[str]) -> str:
        kind, name = match.groups()
        try:
            return TABLES[kind](name)
        except (KeyError, ValueError) as err:
            raise PluginError(f"{page.file.src_path}: {match.group(0)}: {err}") from err

    return MARKER.sub(table, markdown)


TABLES = {
    "hyperparameters": hyperparameters,
    "presets": presets,
    "operator-parameters": operator_parameters,
}
