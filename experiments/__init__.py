"""Experiments: configs, data, metrics, tracking, runner, reports, CLI (docs/architecture.md)."""
