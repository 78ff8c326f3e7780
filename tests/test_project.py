"""Project-level checks: layering, light imports, lint, the CLI entry point."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["operators", "solvers", "ensemble", "search", "experiments"]
IMPORT = re.compile(r"^\s*(?:from|import)\s+(\w+)", re.MULTILINE)


@pytest.mark.parametrize("layer", LAYERS)
def test_lower_layers_never_import_higher_ones(layer):
    forbidden = set(LAYERS[LAYERS.index(layer) + 1 :])
    if layer == "search":  # search is generic: it knows nothing of images or solvers
        forbidden |= {"operators", "solvers", "ensemble"}
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (ROOT / layer).rglob("*.py")
        for name in IMPORT.findall(path.read_text())
        if name in forbidden
    ]
    assert offenders == []


def test_importing_operators_solvers_and_ensemble_stays_light():
    code = (
        "import sys, operators, solvers, solvers.priors, ensemble; "
        "heavy = [m for m in ('ray', 'mlflow', 'diffusers', 'transformers', 'lpips') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_ruff_is_clean():
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--quiet", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_help_lists_the_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0
    for command in ("bench", "run", "demo", "report", "train-prior"):
        assert command in out.stdout


def test_cli_rejects_an_unknown_benchmark_with_the_choices():
    out = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "bench", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "operators" in out.stderr


def test_attaching_to_a_cluster_ships_the_packages_and_run_takes_an_address() -> None:
    from ensemble.ray_runtime import PACKAGES, code_runtime_env
    from experiments.cli import _with_address, build_parser
    from experiments.config import load_config

    env = code_runtime_env()
    folders = [Path(p) for p in env["py_modules"]]
    assert [f.name for f in folders] == list(PACKAGES)
    assert all((f / "__init__.py").is_file() for f in folders)
    assert (folders[1] / "priors" / "weights" / "digits" / "dipswarm_prior.json").is_file()

    args = build_parser().parse_args(["run", "demo", "ensemble.particles=2", "--address", "auto"])
    assert _with_address(args) == ["ensemble.particles=2", "ensemble.address=auto"]
    config = load_config(ROOT / "experiments" / "configs" / "demo.yaml", _with_address(args))
    assert all(config.method_ensemble(m).address == "auto" for m in config.methods)
