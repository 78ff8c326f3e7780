"""Experiments: configs, datasets, metrics, tracking, runner, reports and the CLI (DESIGN.md)."""
