"""``dipswarm list`` and ``dipswarm show`` (issue 18 item 11): real content from the registries,
one-line errors with the choices for unknown names, built-in configs in ``run --help``."""

from __future__ import annotations

import pytest

import solvers
from experiments.cli import main
from solvers.daps import DAPSConfig


def _out(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_list_names_every_registered_thing(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _out(capsys, ["list", "solvers"]).splitlines()
    assert [line.split()[0] for line in lines] == solvers.available()
    assert "Decoupled Annealing Posterior Sampling" in next(ln for ln in lines if "daps " in ln)
    assert "super_resolution" in _out(capsys, ["list", "operators"])
    assert "digits" in _out(capsys, ["list", "priors"]).split()
    configs = _out(capsys, ["list", "configs"])
    assert "demo" in configs.split() and "`dipswarm demo`" in configs
    assert "smc" in _out(capsys, ["list", "benchmarks"]).split()


def test_show_solver_prints_defaults_ranges_presets(capsys: pytest.CaptureFixture[str]) -> None:
    text = _out(capsys, ["show", "solver", "daps"])
    lr = DAPSConfig.__dataclass_fields__["lr"]
    assert f"| `lr` | `{lr.default:.6g}` |" in text
    for preset in solvers.presets("daps"):
        assert f"| `{preset}` |" in text
    assert "backbone: pixel and latent" in text and "docs/configuration.md" in text
    weighted = _out(capsys, ["show", "solver", "fps_smc"])
    assert "weighted (SMC log-weights): yes" in weighted


def test_unknown_names_one_line_with_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["show", "solver", "dapz"])
    message = str(exit_.value.code)
    assert "\n" not in message and "unknown solver 'dapz'" in message and "daps" in message
    with pytest.raises(SystemExit) as exit_:
        main(["list", "solverz"])
    assert exit_.value.code == 2
    assert "invalid choice: 'solverz'" in capsys.readouterr().err


def test_run_help_names_builtin_configs_and_settings_page(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "tune_gmm" in text and "demo" in text and "docs/configuration.md" in text
