"""The runnable examples in the docstrings of the main entry points pass (doctest).

Each example is part of the API reference (docs/api/); running them here keeps them true.
"""

from __future__ import annotations

import doctest
from collections.abc import Callable

import pytest

import ensemble
import operators
import search
import solvers


def _run_examples(obj: Callable, name: str) -> None:
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(obj, name, globs={})
    examples = sum(len(t.examples) for t in tests)
    assert examples >= 3, f"{name} has no runnable example in its docstring"
    output: list[str] = []
    for test in tests:
        runner.run(test, out=output.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(output)
    assert result.attempted == examples


@pytest.mark.parametrize(
    ("obj", "name"),
    [
        (operators.build, "operators.build"),
        (solvers.build, "solvers.build"),
        (ensemble.run, "ensemble.run"),
    ],
)
def test_docstring_example(obj: Callable, name: str) -> None:
    _run_examples(obj, name)


@pytest.mark.ray
@pytest.mark.slow
def test_search_tune_example(ray_session) -> None:
    _run_examples(search.tune, "search.tune")
