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
    "priors": "experiments.benchmarks.priors",
}


def _bench(args: argparse.Namespace) -> None:
    module = importlib.import_module(BENCHMARKS[args.name])
    module.main(args.options)


def _train_prior(args: argparse.Namespace) -> None:
    import torch

    from experiments.train_prior import refresh_card, train_prior

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.evaluate_only:
        card = refresh_card(args.name, args.out)
    else:
        card = train_prior(args.name, args.out, steps=args.steps)
    print(f"saved {args.name} to {args.out}; model card: {args.out}/README.md")
    for row in card["denoising_mse"]:
        print(f"  sigma {row['sigma']}: denoising MSE {row['model']} (Wiener {row['wiener']})")


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

    from experiments.train_prior import PRESETS

    train = commands.add_parser(
        "train-prior",
        help="train one of the small shipped priors and write its model card",
        description="Train a shipped-prior preset on its built-in training split, save it in "
        "the diffusers format and write its model card with held-out figures.",
    )
    train.add_argument("name", choices=sorted(PRESETS), help="which preset")
    train.add_argument("--out", required=True, help="output folder (created)")
    train.add_argument("--steps", type=int, default=None, help="override the training steps")
    train.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    train.add_argument(
        "--evaluate-only",
        action="store_true",
        help="re-measure the model card of an already trained prior in --out",
    )
    train.set_defaults(handler=_train_prior)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dipswarm`` console script."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    args.handler(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
