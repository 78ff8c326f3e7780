"""MkDocs hook: tables generated from the code, so the pages cannot drift from it.

A page writes a marker on a line of its own and the build replaces it:

- ``<!-- hyperparameters: NAME -->``: every field of solver NAME's typed config with its
  default, allowed range or options, and source (``solvers.config``);
- ``<!-- presets: NAME -->``: solver NAME's registered presets with the backbone and task
  they were tuned for, their overrides and source (``solvers.preset.Preset``);
- ``<!-- operator-parameters: NAME -->``: the build parameters of operator NAME with their
  defaults (its constructor's signature).

An unknown name fails the build, so a renamed solver or operator shows up in ``mkdocs build
--strict`` (tests/test_docs.py).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from typing import Any

from mkdocs.exceptions import PluginError

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


def _cell(value: Any) -> str:
    """A value as Markdown table text (pipes escaped, floats short)."""
    if isinstance(value, float):
        text = "inf" if math.isinf(value) else f"{value:.6g}"
    elif isinstance(value, dict):
        text = ", ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "(defaults)"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def hyperparameters(name: str) -> str:
    """Solver ``name``'s config fields: default, range or options, source."""
    import solvers

    config = solvers.solver_class(name).config_class
    rows = ["| field | default | allowed | source |", "|---|---|---|---|"]
    for f in dataclasses.fields(config):
        if "range" in f.metadata:
            r = f.metadata["range"]
            allowed = f"[{_cell(r.low)}, {_cell(r.high)}]" + (" log" if r.log else "")
            source = r.source
        elif "choices" in f.metadata:
            allowed = ", ".join(f"`{c}`" for c in f.metadata["choices"])
            source = f.metadata.get("source", "")
        else:
            allowed, source = "", ""
        rows.append(f"| `{f.name}` | `{_cell(f.default)}` | {allowed} | {_cell(source)} |")
    return "\n".join(rows)


def presets(name: str) -> str:
    """Solver ``name``'s presets: backbone, task, overrides, source."""
    import solvers

    table = solvers.presets(name)
    if not table:
        return "This solver has no presets."
    rows = ["| preset | backbone | task | overrides | source |", "|---|---|---|---|---|"]
    for key, preset in sorted(table.items()):
        rows.append(
            f"| `{key}` | {preset.backbone or 'any'} | {preset.task or 'any'} | "
            f"{_cell(dict(preset.overrides))} | {_cell(preset.source)} |"
        )
    return "\n".join(rows)


def operator_parameters(name: str) -> str:
    """Operator ``name``'s build parameters and defaults."""
    import operators

    signature = inspect.signature(operators.operator_class(name).__init__)
    rows = ["| parameter | default |", "|---|---|"]
    for p in signature.parameters.values():
        if p.name == "self":
            continue
        default = "required" if p.default is inspect.Parameter.empty else f"`{_cell(p.default)}`"
        rows.append(f"| `{p.name}` | {default} |")
    return "\n".join(rows)


TABLES = {
    "hyperparameters": hyperparameters,
    "presets": presets,
    "operator-parameters": operator_parameters,
}
