"""The ``dipswarm`` command line.

Subcommands grow with the project; each has ``--help``. Heavy imports happen inside the
subcommand that needs them, so ``dipswarm --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# benchmark name -> module with a ``main(argv)`` function
BENCHMARKS: dict[str, str] = {
    "operators": "experiments.benchmarks.operators",
}


def _bench(args: argparse.Namespace) -> None:
    module = importlib.import_module(BENCHMARKS[args.name])
    module.main(args.options)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dipswarm`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="dipswarm",
        description="Diffusion-prior posterior sampling for imaging inverse problems.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = commands.add_parser(
        "bench",
        help="run a benchmark and print its table",
        description="Run a benchmark; options after the name go to the benchmark itself.",
    )
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="options of the benchmark")
    bench.set_defaults(handler=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dipswarm`` console script."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    args.handler(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
