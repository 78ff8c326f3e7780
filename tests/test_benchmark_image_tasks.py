"""The image-task benchmark (experiments/benchmarks/image_tasks.py) on one image, tiny settings.

Checks real values: the naive baselines against direct computations, the metrics of a run
against experiments.metrics, a tiny DAPS run against the data fit of the prior-free start, and
the CSV and tables that ``main`` writes. LPIPS runs with the random AlexNet (cheaper to build
than VGG) so that the suite stays fast.
"""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch
import torch.nn.functional as F

import solvers
from experiments import image_presets, metrics
from experiments.benchmarks import image_tasks
from experiments.data import load_builtin_split
from experiments.image_presets import SETTINGS, build_operator


@pytest.fixture(autouse=True)
def _cheap_lpips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_tasks, "LPIPS_NET", "alex")


@pytest.fixture(scope="module")
def digit() -> torch.Tensor:
    return load_builtin_split("digits", "test").images[:1]


def _measure(task: str, x: torch.Tensor, sigma: float = image_presets.SIGMA_Y):
    operator = build_operator(task, sigma=sigma)
    return operator, image_tasks.measurements(operator, x, seed=0)[0]


def test_settings_build_valid_solvers_for_every_task() -> None:
    for setting in SETTINGS:
        for task in setting.tasks:
            preset, overrides = setting.resolve(task)
            solver = solvers.build(setting.solver, preset, **overrides)
            if setting.solver == "daps" and setting.prior == "pixel":
                assert solver.config.sigma_max <= 20.0  # the shipped pixel priors stop at 20
    cdps = next(s for s in SETTINGS if s.solver == "cdps")
    assert set(cdps.tasks) == set(image_presets.LINEAR_TASKS)


def test_measurements_are_seeded_per_image(digit: torch.Tensor) -> None:
    operator = build_operator("gaussian_blur")
    images = digit.expand(2, -1, -1, -1)
    first, second = image_tasks.measurements(operator, images, seed=3)
    again = image_tasks.measurements(operator, images, seed=3)[0]
    assert torch.equal(first, again)
    noise = (first - operator(digit)).flatten()
    assert noise.std().item() == pytest.approx(image_presets.SIGMA_Y, rel=0.1)
    assert not torch.equal(first, second)  # same image, different noise


def test_bicubic_baseline_and_its_metrics_match_direct_computation(digit: torch.Tensor) -> None:
    operator, y = _measure("super_resolution", digit)
    assert y.shape == (1, 1, 8, 8)
    direct = F.interpolate(y, size=(32, 32), mode="bicubic", align_corners=False).clamp(-1, 1)
    (record,) = image_tasks.run_baselines("super_resolution", operator, digit, [y])
    row = record.rows[0]
    assert row["psnr"] == pytest.approx(float(metrics.psnr(direct, digit)), abs=1e-9)
    assert row["ssim"] == pytest.approx(float(metrics.ssim(direct, digit)), abs=1e-9)
    assert row["measurement_loss"] == pytest.approx(float(operator.loss(direct, y)), rel=1e-6)
    assert 15.0 < row["psnr"] < 40.0 and row["nfe"] == 0.0


def test_fill_missing_keeps_observed_pixels_and_fills_constants() -> None:
    operator = build_operator("inpaint_box", sigma=0.0)
    x = torch.full((1, 1, 32, 32), 0.3)
    filled = image_tasks.fill_missing(operator(x), operator.mask)
    assert torch.allclose(filled, x, atol=1e-6)  # a constant is reproduced everywhere
    ramp = torch.linspace(-1, 1, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    y = build_operator("inpaint_random", sigma=0.0)(ramp)
    mask = build_operator("inpaint_random").mask
    filled = image_tasks.fill_missing(y, mask)
    assert torch.equal(filled[..., mask[0] > 0], ramp[..., mask[0] > 0])
    # Missing pixels of a ramp are interpolated from their neighbours (one-sided at the edges).
    error = (filled - ramp).abs()
    assert error.max() < 0.25 and error.mean() < 0.03


def test_phase_baseline_recovers_the_mean_brightness() -> None:
    operator = build_operator("phase_retrieval", sigma=0.0)
    x = torch.full((1, 1, 32, 32), -0.4)
    estimate = image_tasks.phase_constant(operator, operator(x))
    assert torch.allclose(estimate, x, atol=1e-5)


def test_hdr_and_nonlinear_baselines(digit: torch.Tensor) -> None:
    operator, y = _measure("hdr", digit)
    estimates = image_tasks.naive_baselines("hdr", operator, y)
    assert torch.equal(estimates["naive: y / 2"], y / 2)
    operator, y = _measure("nonlinear_blur", digit)
    assert y.shape == (1, 3, 32, 32)
    (estimate,) = image_tasks.naive_baselines("nonlinear_blur", operator, y).values()
    assert torch.allclose(estimate, y.mean(1, keepdim=True))


def test_repeat_to_rgb_runs_the_rgb_operator_on_the_repeated_image(digit: torch.Tensor) -> None:
    operator = build_operator("nonlinear_blur")
    assert not operator.is_linear and operator.input_shape == (1, 32, 32)
    with torch.no_grad():
        assert torch.equal(operator(digit), operator.inner(digit.expand(-1, 3, -1, -1)))


def test_flip_invariant_psnr_and_particle_means(digit: torch.Tensor) -> None:
    operator, y = _measure("phase_retrieval", digit)
    rotated = digit.flip(-2, -1)
    # The 180-degree rotation has the same Fourier magnitude, so only the extra column forgives it.
    assert torch.allclose(operator(rotated), operator(digit), atol=1e-5)
    row = metrics.image_metrics(rotated, digit, operator, y, flip=True)
    assert row["psnr_flip"] == float("inf") and row["psnr"] < 30
    pair = torch.cat([digit + 0.1, torch.zeros_like(digit)])  # two particles of one image
    row = metrics.image_metrics(pair, digit, operator, y, flip=False)
    each = metrics.psnr(pair, digit.expand_as(pair))
    assert row["psnr"] == pytest.approx(float(each.mean()), abs=1e-9)
    assert row["measurement_loss"] == pytest.approx(float(operator.loss(pair, y).mean()), rel=1e-6)
    assert "psnr_flip" not in row


def test_tiny_daps_run_fits_the_data_better_than_the_baseline(digit: torch.Tensor) -> None:
    from solvers.priors import load

    operator, y = _measure("inpaint_random", digit)
    base = next(s for s in SETTINGS if s.label == "daps-ula")
    tiny = dataclasses.replace(
        base, overrides={**base.overrides, "annealing_steps": 3, "ode_steps": 1, "mcmc_steps": 10}
    )
    record = image_tasks.run_solver(
        tiny, "inpaint_random", load("digits"), "digits", operator, digit, [y], 1, 0
    )
    row = record.rows[0]
    assert record.stopped == 0 and row["nfe"] == 3.0 and row["seconds"] > 0
    assert all(torch.isfinite(torch.tensor(v)) for v in row.values())
    # Even 3 annealing steps must fit the observed pixels far better than the zero image.
    zero_loss = float(operator.loss(torch.zeros_like(digit), y))
    assert row["measurement_loss"] < 0.1 * zero_loss
    assert row["psnr"] > float(metrics.psnr(torch.zeros_like(digit), digit))


def test_main_prints_tables_and_writes_csv(tmp_path, capsys, monkeypatch) -> None:
    base = next(s for s in SETTINGS if s.label == "daps-ula")
    tiny = dataclasses.replace(
        base, overrides={**base.overrides, "annealing_steps": 2, "ode_steps": 1, "mcmc_steps": 5}
    )
    monkeypatch.setattr(image_tasks, "SETTINGS", (tiny,))
    path = tmp_path / "rows.csv"
    argv = ["--images", "1", "--tasks", "super_resolution", "--solvers", "daps-ula"]
    image_tasks.main([*argv, "--csv", str(path)])
    out = capsys.readouterr().out
    assert "### super_resolution" in out and "| daps-ula | digits |" in out
    assert "naive: bicubic upsampling" in out and "LPIPS (random" in out
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["naive: bicubic upsampling", "daps-ula"]
    assert float(rows[1]["nfe"]) == 2.0
    psnr_cell = next(line for line in out.splitlines() if line.startswith("| daps-ula | digits |"))
    assert f"{float(rows[1]['psnr']):.2f} ± 0.00" in psnr_cell


def test_cdps_beats_bicubic_on_super_resolution_only_with_the_operator_relative_chain(
    digit: torch.Tensor,
) -> None:
    """Measured on this digit (cpu preset, 100 steps): 27.5 dB with rho = 0.1 ||A||, 25.7 dB
    for bicubic upsampling, and about 13 dB with the seed's rho = 1 (SR x4 has ||A||^2 = 1/16,
    so the seed's chain barely uses the measurement)."""
    from solvers.priors import load

    operator, y = _measure("super_resolution", digit)
    (bicubic,) = image_tasks.naive_baselines("super_resolution", operator, y).values()
    bicubic_psnr = float(metrics.psnr(bicubic, digit))
    psnr = {}
    seed_chain = {"chain_noise": 1.0, "chain_noise_units": "absolute"}
    for label, chain in (("default", {}), ("seed", seed_chain)):
        solver = solvers.build("cdps", "cpu", **chain)
        result = solver.sample(load("digits"), operator, y, n=1, seed=0)
        psnr[label] = float(metrics.psnr(result.samples, digit))
    assert psnr["default"] > bicubic_psnr + 1.0 > psnr["seed"] + 5.0, (psnr, bicubic_psnr)
