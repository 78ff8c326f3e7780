"""Reports of finished runs: tables like the seeds' (task x method, mean ± std), image grids
and a PSNR-vs-NFE plot; and reports of ``dipswarm tune`` studies.

Inputs are the per-image ``results.csv`` of one or several output folders (layout written by
``experiments/runner.py``) or the final metrics the runner logs to MLflow. One module per job:
``load`` (results.csv, MLflow), ``tables`` (aggregation and Markdown), ``plots``, ``grids``,
``set_metrics`` (FID and KID over the images of a run), ``documents`` (report.md/.csv/.html
from a list of sections), ``study`` (best trials, parameter
importance) and ``cli`` (``dipswarm report``; also ``python -m experiments.report OUTPUT``).
"""

from experiments.report.cli import main
from experiments.report.documents import write_report
from experiments.report.grids import OVERVIEW_HEIGHT, image_grid, overview_grid
from experiments.report.load import load_many, load_mlflow, load_results
from experiments.report.plots import plot_psnr_vs_nfe
from experiments.report.set_metrics import set_metrics
from experiments.report.study import STUDY_FILE, find_studies, write_study_report
from experiments.report.tables import METRICS, display_table, markdown_table, summary_table

__all__ = [
    "METRICS",
    "OVERVIEW_HEIGHT",
    "STUDY_FILE",
    "display_table",
    "find_studies",
    "image_grid",
    "load_many",
    "load_mlflow",
    "load_results",
    "main",
    "markdown_table",
    "overview_grid",
    "plot_psnr_vs_nfe",
    "set_metrics",
    "summary_table",
    "write_report",
    "write_study_report",
]
