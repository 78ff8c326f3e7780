"""``solvers.schedules``: VP tables, respacing, poly-rho grids, one declaration per setting."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from solvers.config import SolverConfigError
from solvers.dps import DPSConfig, LatentDPSConfig
from solvers.schedules import (
    DDPMScheduleConfig,
    ScheduleError,
    adm_linear_alphas_cumprod,
    alphas_cumprod,
    even_timesteps,
    karras_sigmas,
    respace,
    uniform_timesteps,
    vp_sigmas,
)
from solvers.vp_grid import VPGridConfig


def test_linear_and_scaled_linear_tables() -> None:
    betas = 1 - alphas_cumprod(1000) / torch.cat(
        [torch.ones(1, dtype=torch.float64), alphas_cumprod(1000)[:-1]]
    )
    torch.testing.assert_close(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    scaled = alphas_cumprod(1000, 0.00085, 0.012, "scaled_linear")
    assert scaled.dtype == torch.float64
    assert float(1 - scaled[0]) == pytest.approx(0.00085)
    assert float(scaled[-1]) == pytest.approx(
        float(
            torch.prod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2)
        )
    )
    torch.testing.assert_close(adm_linear_alphas_cumprod(1000), alphas_cumprod(1000))
    assert float(
        1 - adm_linear_alphas_cumprod(250)[-1] / adm_linear_alphas_cumprod(250)[-2]
    ) == pytest.approx(0.08)
    torch.testing.assert_close(vp_sigmas(torch.tensor([0.5, 0.2])), torch.tensor([1.0, 2.0]))
    with pytest.raises(ScheduleError, match="beta_schedule"):
        alphas_cumprod(10, beta_schedule="cosine")
    with pytest.raises(ScheduleError, match="beta_start < beta_end"):
        alphas_cumprod(10, 0.02, 0.01)


def test_respacings() -> None:
    assert respace(1000, 1).tolist() == [999]
    assert respace(1000, 4).tolist() == [0, 333, 666, 999]
    assert respace(10, 10).tolist() == list(range(10))
    assert uniform_timesteps(1000, 10).tolist() == list(range(1, 1000, 100))
    assert uniform_timesteps(10, 10).tolist() == list(range(10))  # +1 would pass the end
    assert even_timesteps(1000, 4).tolist() == [249, 499, 749, 999]
    assert even_timesteps(3, 3).tolist() == [0, 1, 2]


def test_karras_grid_ends_and_errors() -> None:
    sigmas = karras_sigmas(5, 0.01, 80.0)
    assert sigmas[0] == 80.0 and sigmas[-2] == 0.01 and sigmas[-1] == 0.0 and len(sigmas) == 6
    assert karras_sigmas(1, 0.01, 80.0) == [80.0, 0.0]
    with pytest.raises(ScheduleError, match="steps"):
        karras_sigmas(0, 0.01, 80.0)
    with pytest.raises(ScheduleError, match="sigma_min"):
        karras_sigmas(3, 1.0, 0.5)


@pytest.mark.parametrize("name", ["beta_start", "beta_end", "train_steps"])
def test_ddpm_hyperparameters_are_declared_once(name: str) -> None:
    """DPS and the VP-grid solvers share one declaration (one range) of each DDPM setting."""
    ranges = {
        cls.__name__: {f.name: f for f in dataclasses.fields(cls)}[name].metadata["range"]
        for cls in (DDPMScheduleConfig, DPSConfig, LatentDPSConfig, VPGridConfig)
    }
    base = ranges.pop("DDPMScheduleConfig")
    for cls_name, r in ranges.items():
        assert (r.low, r.high, r.log) == (base.low, base.high, base.log), cls_name
    for cls in (DPSConfig, VPGridConfig):
        assert issubclass(cls, DDPMScheduleConfig) and name not in vars(cls)["__annotations__"]


def test_beta_order_is_checked_for_every_solver() -> None:
    for cls in (DPSConfig, VPGridConfig):
        with pytest.raises(
            SolverConfigError, match=rf"{cls.__name__}\.beta_start = 0\.03 must be below beta_end"
        ):
            cls(beta_start=0.03, beta_end=0.02)
        with pytest.raises(SolverConfigError, match="must be below"):
            cls(beta_start=0.02, beta_end=0.02)
