"""``dipswarm report`` (or ``python -m experiments.report``): its arguments and entry point."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from experiments.cli_help import HelpFormatter
from experiments.report.documents import write_report
from experiments.report.load import load_many, load_mlflow
from experiments.report.study import find_studies, write_study_report

DESCRIPTION = "Reports of finished runs: tables, image grids and a PSNR-vs-NFE plot."


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``dipswarm report``."""
    parser = argparse.ArgumentParser(
        prog="dipswarm report", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "outputs", nargs="*", help="output folder(s) of finished runs, or study folder(s)"
    )
    parser.add_argument("--out", help="where to write the report (default: the one OUTPUT)")
    parser.add_argument("--experiment", help="read this MLflow experiment instead of results.csv")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: sqlite OUT/mlflow.db)"
    )
    parser.add_argument(
        "--study",
        action="append",
        metavar="DIR",
        help="also report a study of dipswarm tune: its folder, or a folder of studies "
        "(repeatable; written into each study folder)",
    )
    return parser


def _inputs(args: argparse.Namespace) -> tuple[Path, pd.DataFrame | None]:
    """(report folder, rows or None to read the folder's own results) from the arguments."""
    if args.out is None and len(args.outputs) != 1:
        raise SystemExit("dipswarm report: give one OUTPUT folder, or --out with several")
    out = Path(args.out if args.out is not None else args.outputs[0])
    if args.experiment:
        uri = args.tracking_uri or f"sqlite:///{out.resolve()}/mlflow.db"
        return out, load_mlflow(uri, args.experiment)
    if len(args.outputs) > 1 or (args.outputs and Path(args.outputs[0]) != out):
        return out, load_many(args.outputs)
    return out, None


def _holds_study(folder: str) -> bool:
    """Whether ``folder`` is a study of dipswarm tune (or holds some) rather than a run."""
    if (Path(folder) / "results.csv").is_file():
        return False
    try:
        return bool(find_studies(folder))
    except FileNotFoundError:
        return False


def main(argv: list[str] | None = None) -> None:
    """Write the report of the given run(s) and study(ies) and print their tables."""
    args = build_parser().parse_args(argv)
    studies = [o for o in args.outputs if _holds_study(o)]  # a study given as an OUTPUT
    args.outputs = [o for o in args.outputs if o not in studies]
    args.study = [*(args.study or []), *studies]
    for folder in args.study:
        for study_dir in find_studies(folder):
            study_paths = write_study_report(study_dir)
            print(study_paths["md"].read_text(encoding="utf-8"))
            print("wrote " + ", ".join(str(p) for p in study_paths.values()))
    if args.study and not args.outputs and args.out is None:
        return
    out, df = _inputs(args)
    paths = write_report(out, df)
    print(paths["md"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
