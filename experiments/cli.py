"""The ``dipswarm`` command line.

Subcommands grow with the project; each has ``--help``. Heavy imports happen inside the
subcommand that needs them, so ``dipswarm --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments.cli_help import HelpFormatter, listing, module_summary

# benchmark name -> module with a ``main(argv)`` function
BENCHMARKS: dict[str, str] = {
    "operators": "experiments.benchmarks.operators",
    "priors": "experiments.benchmarks.priors",
    "gmm": "experiments.benchmarks.gmm",
    "image_tasks": "experiments.benchmarks.image_tasks",
    "solver_overhead": "experiments.benchmarks.solver_overhead",
    "ensemble_gmm": "experiments.benchmarks.ensemble_gmm",
    "ensemble_scaling": "experiments.benchmarks.ensemble_scaling",
    "tracking_overhead": "experiments.benchmarks.tracking_overhead",
    "search": "experiments.benchmarks.search",
    "image_batches": "experiments.benchmarks.image_batches",
    "cluster_scaling": "experiments.benchmarks.cluster_scaling",
    "lookahead": "experiments.benchmarks.lookahead",
    "smc": "experiments.benchmarks.smc",
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


CONFIGS = Path(__file__).resolve().parent / "configs"


# exit status of run and demo when the run finished but some image failed (errors.log says why)
EXIT_IMAGES_FAILED = 3
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), run, demo and tune alike
EXIT_CODES = (
    "Exit status: 0 every image finished; 1 the config, the output folder or a worker could "
    f"not start the run (one line says why); 2 bad arguments; {EXIT_IMAGES_FAILED} the run "
    f"finished but some image failed (see OUTPUT/errors.log); {EXIT_INTERRUPTED} interrupted "
    "(Ctrl-C): finished images are kept, --resume continues."
)


def _run(args: argparse.Namespace) -> int:
    from ensemble.backends import WorkerStartError
    from experiments.config import ConfigError, load_config

    try:
        config = load_config(_config_path(args.config), _with_address(args))
        return _run_and_summarise(config, args.resume, not args.no_progress)
    except (ConfigError, FileExistsError, WorkerStartError) as err:  # one line, no traceback
        raise SystemExit(f"dipswarm run: {err}") from None


def _demo(args: argparse.Namespace) -> int:
    from ensemble.backends import WorkerStartError
    from experiments.config import ConfigError, load_config

    overrides = [f"output={_demo_output(args.output, args.resume)}", *args.overrides]
    try:
        config = load_config(CONFIGS / "demo.yaml", overrides)
        print(
            f"dipswarm demo: prior {config.prior!r}, {len(config.tasks)} tasks x "
            f"{len(config.methods)} methods x {config.data.images} test images -> {config.output}"
        )
        return _run_and_summarise(config, resume=args.resume, progress=True)
    except (ConfigError, FileExistsError, WorkerStartError) as err:  # one line, no traceback
        raise SystemExit(f"dipswarm demo: {err}") from None


DEMOS, DEMO_STAMP = Path("dipswarm-demo"), "%Y%m%d-%H%M%S"  # demo folders: DEMOS/<stamp>


def _demo_output(output: str | None, resume: bool) -> Path:
    """The demo's output folder: ``--output``; else, with ``--resume``, the latest
    dipswarm-demo/<stamp> under the working directory (said on the console); else a new one."""
    if output is not None:
        return Path(output).resolve()
    demos = DEMOS.resolve()
    if not resume:
        return demos / time.strftime(DEMO_STAMP)
    stamps = sorted(p for p in demos.glob("*") if p.is_dir() and _is_stamp(p.name))
    if not stamps:
        raise SystemExit(
            f"dipswarm demo --resume: no earlier demo under {demos}; run dipswarm demo first, "
            "or pass --output DIR to resume a demo written elsewhere"
        )
    print(f"dipswarm demo: resuming {stamps[-1]} (the latest demo; --output DIR for another)")
    return stamps[-1]


def _is_stamp(name: str) -> bool:
    try:
        time.strptime(name, DEMO_STAMP)
    except ValueError:
        return False
    return True


def _run_and_summarise(config: Any, resume: bool, progress: bool) -> int:
    """Run, print the summary; the exit status (``EXIT_IMAGES_FAILED`` if an image failed)."""
    from experiments.report import load_results, markdown_table, summary_table
    from experiments.runner import run_experiment
    from experiments.tracking import Tracker

    began = time.perf_counter()
    output = run_experiment(config, resume=resume, progress=progress)
    results = load_results(output)
    print()
    print(markdown_table(summary_table(results)))
    print(f"\nfinished in {time.perf_counter() - began:.0f} s")
    warmup = results["warmup_seconds"].sum() if "warmup_seconds" in results else 0.0
    print(f"warm-up:  {warmup:.1f} s (worker start, prior loading; not in seconds per image)")
    print(f"results:  {output / 'results.csv'}  (report: {output / 'report.md'})")
    print(f"images:   {output / 'images'}  (overview grids per task and method)")
    failed = int((results["status"] != "ok").sum())
    if failed:
        print(f"failed:   {failed} image(s); see {output / 'errors.log'}")
    if config.tracking.enabled:
        tracker = Tracker(config.tracking.uri, config.tracking.experiment, output, enabled=True)
        print(f"browse:   {tracker.ui_command()}")
        if url := tracker.runs_url():
            print(f"runs:     {url}  (the experiment's runs in that UI)")
    return EXIT_IMAGES_FAILED if failed else 0


def _list(args: argparse.Namespace) -> None:
    from experiments.catalog import names

    print(listing(names(args.kind)))


SHOWN = ("solver", "operator", "config")


def _show(args: argparse.Namespace) -> None:
    """``dipswarm show solver|operator|config NAME``; an unknown name: one line with the choices."""
    from experiments.catalog import operator_parameters, solver_card

    try:
        if args.kind == "solver":
            print(solver_card(args.name))
        elif args.kind == "operator":
            print(f"{args.name} build parameters:\n{operator_parameters(args.name)}")
        else:
            print(_config_path(args.name).read_text(encoding="utf-8"), end="")
    except (KeyError, ValueError) as err:  # SolverInputError, unknown operator
        raise SystemExit(f"dipswarm show: {err.args[0] if err.args else err}") from None


def _tune(args: argparse.Namespace) -> int:
    from experiments.config import ConfigError
    from experiments.tune_config import load_tune_config
    from experiments.tuning import run_study
    from search import Fixed

    overrides = [*_with_address(args), *(["search.resume=true"] if args.resume else [])]
    try:
        config = load_tune_config(_config_path(args.config), overrides)
        kind = "GMM instances" if config.gmm else f"{config.experiment.data.split} images"
        searched = [k for k, d in config.space.items() if not isinstance(d, Fixed)]
        print(
            f"dipswarm tune: study {config.name!r}, {config.method.name} ({config.method.solver})"
            f", {config.search.num_samples} trials x {config.steps} {kind}, "
            f"{config.search.metric} ({config.search.mode}); searching {', '.join(searched)}"
        )
        outcome = run_study(config, progress=not args.no_progress)
    except ConfigError as err:
        raise SystemExit(f"dipswarm tune: {err}") from None
    print()
    print(outcome.summary())
    if outcome.result.interrupted:  # Ray Tune stopped the study on Ctrl-C and saved it
        print(_interrupted(args), file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _interrupted(args: argparse.Namespace) -> str:
    """The line after Ctrl-C: what is kept and, for run, demo and tune, how to continue."""
    if args.command not in ("run", "demo", "tune"):
        return f"dipswarm {args.command}: interrupted"
    words = [*args.argv, *([] if "--resume" in args.argv else ["--resume"])]
    kept = "finished trials are kept" if args.command == "tune" else "finished images are kept"
    return f"dipswarm {args.command}: interrupted; {kept}; continue: dipswarm {shlex.join(words)}"


def _with_address(args: argparse.Namespace) -> list[str]:
    """The overrides, with ``--address`` as ``ensemble.address`` (after them, so it wins)."""
    return [*args.overrides, *([f"ensemble.address={args.address}"] if args.address else [])]


def _config_path(name: str) -> Path:
    """A config file path, or the name of a YAML preset in experiments/configs/."""
    path = Path(name)
    if path.is_file():
        return path
    preset = CONFIGS / (name if name.endswith(".yaml") else f"{name}.yaml")
    if preset.is_file():
        return preset
    presets = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
    raise SystemExit(f"dipswarm: no config file {name!r}; built-in configs: {presets}")


def _builtin_configs() -> str:
    """The ``run --help`` lines naming the built-in configs and where the settings are."""
    from experiments.catalog import CONFIG_DOCS

    names = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
    return (
        f"Built-in configs (dipswarm list configs; dipswarm show config NAME): {names}. "
        f"Every setting, ensemble ones included (workers, cpus_per_worker, select_k, repulsion, "
        f"smc, steering, pruning, ...), with its default: {CONFIG_DOCS}."
    )


def _config_command(
    commands: Any,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    resume: str,
    progress: str,
    **texts: str,
) -> None:
    """A subcommand on a config (run, tune): its ``help``, ``description`` and ``epilog``
    texts, the config, overrides, --resume, --no-progress and --verbose arguments and its
    handler."""
    parser = commands.add_parser(name, formatter_class=HelpFormatter, **texts)
    parser.set_defaults(handler=handler)
    parser.add_argument("config", help="YAML file, or the name of a built-in config")
    parser.add_argument(
        "overrides", nargs="*", default=[], help="optional field.path=value overrides"
    )
    parser.add_argument("--resume", action="store_true", help=resume)
    parser.add_argument(
        "--address",
        metavar="ADDRESS",
        help="a Ray cluster to run on: 'auto' (the cluster this node belongs to) or "
        "'ray://HEAD:10001' (Ray Client); the same as the override ensemble.address=ADDRESS",
    )
    parser.add_argument("--no-progress", action="store_true", help=progress)
    _verbose_option(parser)


def _verbose_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's, Ray Tune's and Optuna's own messages (quiet otherwise)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``dipswarm`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="dipswarm",
        description="Diffusion-prior posterior sampling for imaging inverse problems.",
        formatter_class=HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    benchmarks = {name: module_summary(module) for name, module in sorted(BENCHMARKS.items())}
    bench = commands.add_parser(
        "bench",
        help="run a benchmark and print its table",
        description="Run a benchmark; options after the name go to the benchmark itself "
        "(dipswarm bench NAME --help lists them).",
        epilog=f"benchmarks:\n\n{listing(benchmarks)}",
        formatter_class=HelpFormatter,
    )
    bench.add_argument(
        "name", choices=sorted(BENCHMARKS), metavar="NAME", help="which benchmark (below)"
    )
    bench.add_argument("options", nargs=argparse.REMAINDER, help="options of the benchmark")
    bench.set_defaults(handler=_bench)

    _config_command(
        commands,
        "run",
        _run,
        resume="skip images already finished",
        progress="no progress bar",
        help="run an experiment config (dataset x tasks x methods)",
        description="Run an ExperimentConfig from YAML; overrides are dotted field paths, e.g. "
        "ensemble.particles=8 methods.daps.overrides.mcmc_steps=50 data.images=10.",
        epilog=f"{_builtin_configs()}\n\n{EXIT_CODES}",
    )

    _config_command(
        commands,
        "tune",
        _tune,
        resume="continue the stored study",
        progress="no progress lines",
        help="search a method's hyperparameters on validation data (Ray Tune + Optuna + ASHA)",
        description="Run a hyperparameter study from a tune config: an experiment config with "
        "one task and one method on data.split=val plus a search: section (or a GMM config), "
        "e.g. experiments/configs/tune_daps_digits.yaml. Overrides are dotted paths into both, "
        "e.g. search.num_samples=8 search.narrow.lr=[1.0e-5,1.0e-3] data.images=2. Prints "
        "progress, the best config, its YAML preset (for dipswarm run) and how to browse the "
        "study in MLflow and optuna-dashboard.",
        epilog=f"Exit status: 0 the study ran; 1 the config could not start it (one line says "
        f"why); 2 bad arguments; {EXIT_INTERRUPTED} interrupted (Ctrl-C): finished trials are "
        "kept, --resume continues.",
    )

    demo = commands.add_parser(
        "demo",
        help="the main job: a small ensemble experiment on a shipped prior (minutes on a CPU)",
        description="Run experiments/configs/demo.yaml: a shipped digit prior, three seed "
        "tasks, DAPS as one chain and as a 4-particle Ray ensemble with repulsion and pruning; "
        "prints the results table, where the images are and how to browse the runs in MLflow.",
        epilog=EXIT_CODES,
        formatter_class=HelpFormatter,
    )
    demo.add_argument(
        "overrides", nargs="*", default=[], help="optional field.path=value overrides"
    )
    demo.add_argument("--output", default=None, help="output folder (default: a new one)")
    demo.add_argument(
        "--resume",
        action="store_true",
        help="continue --output's run, or without --output the latest dipswarm-demo/<stamp>",
    )
    _verbose_option(demo)
    demo.set_defaults(handler=_demo)

    from experiments.catalog import CONFIG_DOCS, KINDS

    lister = commands.add_parser(
        "list",
        help="list the solvers, priors, operators, built-in configs or benchmarks",
        description="List what a config can name, one per line with its description; "
        "dipswarm show solver NAME for a solver's hyperparameters and presets.",
        formatter_class=HelpFormatter,
    )
    lister.add_argument("kind", choices=KINDS, metavar="KIND", help=f"one of {', '.join(KINDS)}")
    lister.set_defaults(handler=_list)
    show = commands.add_parser(
        "show",
        help="a solver's hyperparameters (default, range, source) and presets; an operator's "
        "parameters; a built-in config",
        description="Show one solver (what it supports, every hyperparameter with its default, "
        "allowed range and source, its presets with their overrides and source), one operator "
        f"(build parameters) or one built-in config (its YAML). Ensemble settings: {CONFIG_DOCS}.",
        formatter_class=HelpFormatter,
    )
    show.add_argument("kind", choices=SHOWN, metavar="KIND", help=f"one of {', '.join(SHOWN)}")
    show.add_argument("name", help="its name (dipswarm list solvers|operators|configs)")
    show.set_defaults(handler=_show)

    commands.add_parser(  # dispatched to experiments.report.main, which has its own parser
        "report",
        help="tables, grids and plots of finished runs (dipswarm report --help for options)",
        description="Write report.md / .csv / .html, psnr_vs_nfe.png and overview.png for "
        "output folders of dipswarm run, or for an MLflow experiment. Options: OUTPUT [OUTPUT "
        "...] [--out DIR] [--experiment NAME] [--tracking-uri URI].",
    )

    from experiments.train_prior import PRESETS

    train = commands.add_parser(
        "train-prior",
        help="train one of the small shipped priors and write its model card",
        description="Train a shipped-prior preset on its built-in training split, save it in "
        "the diffusers format and write its model card with held-out figures.",
        formatter_class=HelpFormatter,
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
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:  # the report has its own parser (and --help)
        from experiments.report import main as report_main

        report_main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    args.argv = argv
    if getattr(args, "verbose", False):
        from ensemble.ray_runtime import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:  # one line instead of the traceback, and how to continue
        print(f"\n{_interrupted(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
