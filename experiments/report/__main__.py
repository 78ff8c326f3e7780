"""``python -m experiments.report OUTPUT``: the same as ``dipswarm report OUTPUT``."""

from experiments.report.cli import main

main()
