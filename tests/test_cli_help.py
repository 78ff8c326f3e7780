"""Every ``dipswarm`` subcommand's and benchmark's ``--help``: its usage line names the command
as typed, its description is a complete sentence, every option has help and shows its default,
``dipswarm bench --help`` lists every benchmark, and ``dipswarm run`` alone asks for the config
only (the overrides are optional)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re

import pytest

from experiments import cli
from experiments.cli_help import HelpFormatter, module_summary
from experiments.report.cli import build_parser as report_parser


class _CapturedError(Exception):
    """Raised instead of parsing: the parser a benchmark built."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _benchmark_parser(name: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser ``dipswarm bench NAME`` builds (captured at ``parse_args``, before any work)."""

    def capture(self: argparse.ArgumentParser, *_: object, **__: object) -> None:
        raise _CapturedError(self)

    module = importlib.import_module(cli.BENCHMARKS[name])  # what `dipswarm bench` runs
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_CapturedError) as caught:
        module.main(["--help"])
    monkeypatch.undo()
    return caught.value.parser


def _subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    root = cli.build_parser()
    (commands,) = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    parsers = {"": root, **dict(commands.choices)}
    parsers["report"] = report_parser()  # `dipswarm report` is dispatched to its own parser
    return parsers


def _check(parser: argparse.ArgumentParser, usage: str) -> None:
    text = parser.format_help()
    assert text.startswith(f"usage: {usage} "), text.splitlines()[0]
    assert parser.prog == usage
    description = parser.description or ""
    assert re.search(r"[.?!)]$", description), f"{usage}: description {description!r}"
    assert issubclass(parser.formatter_class, HelpFormatter), usage
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        assert action.help and action.help.strip(), f"{usage}: {action.dest} has no help"
        default = action.default
        if action.option_strings and default not in (None, False, argparse.SUPPRESS):
            shown = parser._get_formatter()._expand_help(action)
            assert "default" in shown, f"{usage}: {action.dest} hides its default {default!r}"


def test_subcommands_help(capsys: pytest.CaptureFixture[str]) -> None:
    for name, parser in _subcommand_parsers().items():
        _check(parser, f"dipswarm {name}".strip())
    bench = _subcommand_parsers()["bench"].format_help()
    for name, module in cli.BENCHMARKS.items():
        first = module_summary(module).split()[:3]
        assert re.search(rf"\n  {name} +{re.escape(' '.join(first))}", bench), name
    with pytest.raises(SystemExit) as stop:
        cli.main(["run"])
    assert stop.value.code == 2
    message = capsys.readouterr().err
    assert "required: config" in message and "overrides" not in message.splitlines()[-1]


@pytest.mark.parametrize("name", sorted(cli.BENCHMARKS))
def test_benchmark_help(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    parser = _benchmark_parser(name, monkeypatch)
    _check(parser, f"dipswarm bench {name}")
    assert parser.description == module_summary(cli.BENCHMARKS[name])  # as listed by bench
    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as stop:
        parser.parse_args(["--help"])
    assert stop.value.code == 0 and f"usage: dipswarm bench {name}" in out.getvalue()
