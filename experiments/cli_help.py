"""Help text of ``dipswarm`` and of its benchmarks: defaults shown, descriptions taken from the
benchmark modules' docstrings, the benchmark list of ``dipswarm bench --help``.

Light on purpose: ``dipswarm bench --help`` reads the benchmarks' docstrings from their source
(``ast``), without importing them (and torch, Ray or MLflow with them).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import textwrap
from collections.abc import Mapping


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, unless the default is None or False or the
    help already names it; descriptions and epilogs are wrapped paragraph by paragraph (blank
    lines apart), and a line that starts with spaces (a list entry) keeps its own line, wrapped
    under its text."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        silent = default is None or default is False or default == argparse.SUPPRESS
        if action.option_strings and not silent and "default" not in text:
            text += " (default: %(default)s)"
        return text

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for paragraph in text.split("\n\n"):
            if not paragraph.startswith(" "):
                out.append(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                         subsequent_indent=indent))  # fmt: skip
                continue
            lines = []
            for line in paragraph.splitlines():  # "  name  text": wrapped under the text
                hanging = len(line) - len(re.sub(r"^\s*\S+\s+", "", line))
                lines.append(textwrap.fill(line, width, initial_indent=indent,
                                           subsequent_indent=indent + " " * hanging))  # fmt: skip
            out.append("\n".join(lines))
        return "\n\n".join(out)


def summary(doc: str | None) -> str:
    """The first paragraph of a docstring on one line, reST literals as plain text."""
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(first.replace("``", "").split())


def bench_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``dipswarm bench NAME``: its usage names the command, its description is
    the first paragraph of the benchmark module's docstring, its options show their defaults."""
    return argparse.ArgumentParser(
        prog=f"dipswarm bench {name}", description=summary(doc), formatter_class=HelpFormatter
    )


def module_summary(module: str) -> str:
    """``summary`` of a module's docstring, read from its source without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ""
    with open(spec.origin, encoding="utf-8") as source:
        return summary(ast.get_docstring(ast.parse(source.read())))


def listing(entries: Mapping[str, str]) -> str:
    """``name  text`` lines, the texts in one column (for an epilog)."""
    width = max(map(len, entries), default=0)
    return "\n".join(f"  {name.ljust(width)}  {text}" for name, text in entries.items())
