"""LatentDAPS-HMC with measurement-error optimisation (Kim 2025, "Ours").

LatentDAPS (Zhang et al., CVPR 2025) with HMC, plus a few Adam iterations on the latent that
minimise ||A(decode(z)) - y||^2 (per particle, summed) applied to the MCMC output z0_y in the
annealing steps ``opt_start <= i < opt_end`` (Kim 2025: 15..45 of 50, after ReSample's "latter
two thirds"), before the renoising. Adam acts elementwise, so particles stay independent; a
particle whose latent or decoded image turns non-finite is stopped as in DAPS. Latent priors only.

Presets: ``ldm_hmc_opt{5,15,30}/<task>`` (the LDM HMC rows of the DAPS table with 5 / 15 / 30
iterations, as in Kim 2025's tables) and ``gmm/latent_hmc_opt`` for the Gaussian-mixture benchmark.
The Adam step size is not given by Kim 2025; the default is ReSample's latent-optimisation 5e-3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from operators import Operator
from solvers.config import Order, choice, hyper
from solvers.daps import (
    DAPS,
    GMM_PRESETS,
    LATENT_SCHEDULE,
    LDM_HMC,
    TASKS,
    DAPSConfig,
    finite_rows,
    hmc_fields,
    where_rows,
)
from solvers.preset import Preset
from solvers.registry import register

_SEED = "Kim 2025 (LD_HMC + measurement-error optimisation)"
_BOX = LDM_HMC["inpaint_box"]


@dataclass(frozen=True)
class DAPSOptConfig(DAPSConfig):
    """Defaults: DAPS-100 latent schedule, the LDM HMC box-inpainting row, 5 Adam iterations."""

    annealing_steps: int = hyper(50, 1, 5000, source="DAPS-100 latent schedule")
    sigma_max: float = hyper(10.0, 1e-2, 1e4, log=True, source="DAPS-100 latent schedule")
    ode_steps: int = hyper(2, 1, 100, source="DAPS-100 latent schedule")
    ode_end_sigma: float = hyper(0.001, 1e-5, 10.0, log=True, source="DAPS-100 latent schedule")
    mcmc: str = choice("hmc", ("langevin", "hmc"), source=f"{_SEED}: LatentDAPS with HMC")
    mcmc_steps: int = hyper(_BOX[0], 1, 1000, source="LDM HMC table, inpaint box")
    lr: float = hyper(_BOX[1], 1e-8, 10.0, log=True, source="LDM HMC table, inpaint box")
    lr_min_ratio: float = hyper(_BOX[2], 1e-3, 1.0, log=True, source="LDM HMC table, inpaint box")
    momentum: float = hyper(_BOX[3], 0.0, 1.0, source="LDM HMC table, inpaint box")
    opt_start: int = hyper(15, 0, 5000, source=f"{_SEED}: steps 15..45 of 50")
    opt_end: int = hyper(45, 0, 5000, source=f"{_SEED}: steps 15..45 of 50 (exclusive end)")
    opt_iterations: int = hyper(5, 0, 2000, source=f"{_SEED}: 5 / 15 / 30 per step")
    opt_lr: float = hyper(
        5e-3, 1e-6, 1.0, log=True, source="ReSample latent optimisation lr; Kim 2025 gives none"
    )

    orders = (*DAPSConfig.orders, Order("opt_start", "opt_end"))


def _opt_presets() -> dict[str, Preset]:
    table: dict[str, Preset] = {}
    for iterations in (5, 15, 30):
        for task in TASKS:
            table[f"ldm_hmc_opt{iterations}/{task}"] = Preset(
                overrides={
                    **LATENT_SCHEDULE,
                    **hmc_fields(LDM_HMC[task]),
                    "opt_iterations": iterations,
                },
                backbone="latent",
                task=task,
                source=f"{_SEED}: the LDM HMC row of the DAPS table, {iterations} iterations",
            )
    return table


# The GMM benchmark: gmm/latent_hmc with the optimisation window at the same fractions of the
# run as Kim 2025 (15..45 of 50) and a step small against the posterior spread (unit-variance
# components), so that it sharpens the measurement fit without collapsing the posterior.
GMM_OPT_PRESET = Preset(
    overrides={
        **GMM_PRESETS["gmm/latent_hmc"].overrides,
        "opt_start": 300,
        "opt_end": 900,
        "opt_iterations": 5,
        "opt_lr": 0.01,
    },
    backbone="latent",
    task="matrix",
    source="gmm/latent_hmc of DAPS, the window at Kim 2025's fractions (docs/gmm_benchmark.md)",
)


@register(presets={**_opt_presets(), "gmm/latent_hmc_opt": GMM_OPT_PRESET})
class DAPSOpt(DAPS):
    """LatentDAPS-HMC with Adam on ||A(decode(z)) - y||^2 after the MCMC in chosen steps."""

    name = "daps_opt"
    config_class = DAPSOptConfig
    latent = True

    def _refine(
        self, operator: Operator, y: torch.Tensor, x0y: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        assert isinstance(c, DAPSOptConfig)
        bad = torch.zeros(x0y.shape[0], dtype=torch.bool, device=x0y.device)
        if not c.opt_start <= k < c.opt_end or c.opt_iterations == 0:
            return x0y, bad
        z = x0y.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=c.opt_lr)
        last = z.detach().clone()
        for _ in range(c.opt_iterations):
            optimizer.zero_grad()
            with torch.enable_grad():
                loss, bad_image = self._measurement_error(operator, z, y)
                loss.sum().backward()
            optimizer.step()
            with torch.no_grad():
                bad = bad | bad_image | ~finite_rows(z)
                z.copy_(where_rows(bad, last, z))
                last = z.detach().clone()
        return z.detach(), bad
