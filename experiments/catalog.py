"""What the registries hold, as text: the tables of the docs pages (docs/hooks.py) and of
``dipswarm list`` / ``dipswarm show``, from one code path so they cannot disagree.

Solver tables come from the typed config dataclass (each field's default and its ``hyper()``
range or choices with their source) and the registered presets; operator tables from the
operator's constructor signature.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIG_DOCS = "docs/configuration.md"  # every experiment and ensemble setting, with defaults


def cell(value: Any) -> str:
    """A value as Markdown table text (pipes escaped, floats short)."""
    if isinstance(value, float):
        text = "inf" if math.isinf(value) else f"{value:.6g}"
    elif isinstance(value, dict):
        text = ", ".join(f"{k}={cell(v)}" for k, v in value.items()) or "(defaults)"
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
            allowed = f"[{cell(r.low)}, {cell(r.high)}]" + (" log" if r.log else "")
            source = r.source
        elif "choices" in f.metadata:
            allowed = ", ".join(f"`{c}`" for c in f.metadata["choices"])
            source = f.metadata.get("source", "")
        else:
            allowed, source = "", ""
        rows.append(f"| `{f.name}` | `{cell(f.default)}` | {allowed} | {cell(source)} |")
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
            f"{cell(dict(preset.overrides))} | {cell(preset.source)} |"
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
        default = "required" if p.default is inspect.Parameter.empty else f"`{cell(p.default)}`"
        rows.append(f"| `{p.name}` | {default} |")
    return "\n".join(rows)


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


def names(kind: str) -> dict[str, str]:
    """``dipswarm list KIND``: name -> one-line description for solvers, priors, operators,
    configs (experiments/configs/*.yaml) or benchmarks."""
    if kind == "solvers":
        import solvers

        return {n: _first_line(solvers.solver_class(n)) for n in solvers.available()}
    if kind == "priors":
        from solvers.priors import available

        return dict.fromkeys(available(), "")
    if kind == "operators":
        import operators

        return {n: _first_line(operators.operator_class(n)) for n in operators.available()}
    if kind == "configs":
        return {p.stem: _config_comment(p) for p in sorted(CONFIGS.glob("*.yaml"))}
    if kind == "benchmarks":
        from experiments.cli import BENCHMARKS
        from experiments.cli_help import module_summary

        return {n: module_summary(m) for n, m in sorted(BENCHMARKS.items())}
    raise ValueError(f"unknown kind {kind!r}; choices: {', '.join(KINDS)}")


KINDS = ("solvers", "priors", "operators", "configs", "benchmarks")


def _config_comment(path: Path) -> str:
    """The first sentence of a YAML config's leading comment block (its description)."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        words.append(line.lstrip("#").strip())
    text = " ".join(" ".join(words).split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def solver_card(name: str) -> str:
    """``dipswarm show solver NAME``: description, what it supports, hyperparameters, presets."""
    import solvers

    cls = solvers.solver_class(name)
    backbone = {None: "pixel and latent", True: "latent only", False: "pixel only"}[cls.latent]
    return "\n".join(
        [
            f"{name}: {_first_line(cls)}",
            "",
            f"backbone: {backbone}; operators: {'linear only' if cls.linear_only else 'any'}; "
            f"weighted (SMC log-weights): {'yes' if cls.weighted else 'no'}",
            "",
            "hyperparameters:",
            hyperparameters(name),
            "",
            "presets:",
            presets(name),
            "",
            f"use: methods.NAME.solver={name} methods.NAME.preset=PRESET "
            "methods.NAME.overrides.FIELD=VALUE; ensemble settings (particles, repulsion, "
            f"smc, steering, pruning, ...): {CONFIG_DOCS}",
        ]
    )
