"""PSLD: posterior sampling with latent diffusion (Latent-DPS plus the "gluing" term).

Rout, Raoof, Daras, Caramanis, Dimakis, Shakkottai, "Solving linear inverse problems provably
via posterior sampling with latent diffusion models", NeurIPS 2023 (Algorithm 2, "PSLD").
Latent priors (``encode``/``decode``), linear operators (docs/solvers/psld.md).

A Latent-DPS step (solvers/dps.py: DDIM/DDPM step in z, measurement term zeta grad ||r||)
plus a second correction that asks the latent estimate to be a fixed point of
decode -> replace the measured part by the data -> encode:

    z0_hat = D(z_k, s),  x_hat = decode(z0_hat)
    glued  = x_hat + A^+ (y - A x_hat)  =  A^+ y + (I - A^+ A) x_hat
    z_{k+1} = [Latent-DPS step] - gamma sqrt((1 + s^2)(1 + s'^2))
              grad_{z_k} ||z0_hat - encode(glued)||_2

The paper writes A^T y + (I - A^T A) x_hat, a projection when A A^T = I (inpainting masks);
for a general linear A its projection onto range(A^T) is A^+ A, and A^+ (y - A x_hat) is
computed by CG on the normal equations (``LinearOperator.pseudo_inverse``, ``cg_iters`` and
``cg_tol``; one iteration is exact for masks, where A^+ = A^T, so the two forms agree there).
As in the reference code (and the project's DPS), both terms use the norm, not the squared
norm of the paper's algorithm box, which is what its gamma and omega (our zeta) values were
run with, and each particle's norm is its own (the reference code takes one norm over the
batch). The reference code also adds fresh measurement noise to A x_hat inside the
measurement term; that is left out here. The factor sqrt((1 + s^2)(1 + s'^2)) makes the step
the VE image of the reference's step on the VP latent, as for Latent-DPS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from operators import LinearOperator, Operator
from solvers.base import Rows, SolverInputError, finite_rows, measurement_rows
from solvers.config import choice, hyper
from solvers.dps import STEP_RULES, LatentDPS, LatentDPSConfig
from solvers.preset import Preset
from solvers.priors.base import Prior
from solvers.registry import register
from solvers.schedules import BETA_SCHEDULES, beta_end_field, beta_start_field

CODE = "PSLD reference code (LituRout/PSLD, stable-diffusion/scripts/inverse.py)"


@dataclass(frozen=True)
class PSLDConfig(LatentDPSConfig):
    """PSLD: Latent-DPS's fields with the reference code's LDM defaults, plus the gluing
    weight ``gamma`` and the CG that applies A^+."""

    num_steps: int = hyper(1000, 1, 10000, log=True, source=f"{CODE}: ddim_steps 1000")
    zeta: float = hyper(
        0.1, 1e-3, 100.0, log=True, source=f"{CODE}: omega 0.1 (run/inverse_*_ldm.sh)"
    )
    step_rule: str = choice("constant", STEP_RULES, source=f"{CODE}: constant omega")
    eta: float = hyper(0.0, 0.0, 1.0, source=f"{CODE}: ddim_eta 0")
    beta_schedule: str = choice(
        "scaled_linear", BETA_SCHEDULES, source="LDM FFHQ config (docs/solvers/dps.md)"
    )
    beta_start: float = beta_start_field(0.0015, source="LDM FFHQ: linear_start")
    beta_end: float = beta_end_field(0.0195, source="LDM FFHQ: linear_end")
    gamma: float = hyper(
        0.1, 0.0, 100.0, source=f"{CODE}: gamma 0.1 (run/inverse_*_ldm.sh); 0 = Latent-DPS"
    )
    cg_iters: int = hyper(
        50, 1, 1000, log=True, source="ours: CG iterations of A^+ (1 is exact for masks)"
    )
    cg_tol: float = hyper(1e-6, 1e-14, 1e-2, log=True, source="ours: relative CG residual")


_SD = {"beta_start": 0.00085, "beta_end": 0.012}  # Stable Diffusion v1.5's scaled_linear table
PSLD_PRESETS: dict[str, Preset] = {
    "ldm": Preset(
        overrides={},
        backbone="latent",
        source=f"{CODE}: LDM FFHQ 256 runs (run/inverse_{{sr,rip,bip,gb,mb}}_ldm.sh), all tasks",
    ),
    "sd": Preset(
        overrides={"zeta": 1.0, **_SD},
        backbone="latent",
        source=f"{CODE}: Stable Diffusion v1.5 defaults (gamma 0.1, omega 1; run/inverse.sh, "
        "inverse_rip.sh, inverse_gb.sh, inverse_mb.sh)",
    ),
    "sd/inpaint_box": Preset(
        overrides={"zeta": 0.1, "gamma": 0.01, "num_steps": 50, **_SD},
        backbone="latent",
        task="inpaint_box",
        source=f"{CODE}: run/inverse_bip.sh (gamma 1e-2, omega 1e-1, 50 DDIM steps)",
    ),
    # The MCGdiff benchmark on its linear-decoder latent bed (docs/gmm_benchmark.md): Latent-DPS's
    # gmm grid (pixel DDPM table, ancestral steps) at 50 steps. Mean SW / floor on the tuning
    # instances 7000-7001 (all 6 cells, 300 samples), zeta 0.2: gamma 0 (Latent-DPS) 10.6,
    # 0.1 5.4, 0.2 7.2, 0.3 9.7, 0.5 13.8; zeta 0.3 gamma 0.2 8.7; zeta 0.1 gamma 1 25.1.
    "gmm": Preset(
        overrides={
            "num_steps": 50,
            "zeta": 0.2,
            "gamma": 0.1,
            "step_rule": "constant",
            "eta": 1.0,
            "beta_schedule": "linear",
            "beta_start": 1e-4,
            "beta_end": 0.02,
        },
        task="matrix",
        source="GMM sweep of zeta and gamma on tuning instances 7000-7001 (comment above)",
    ),
}


@register(presets=PSLD_PRESETS)
class PSLD(LatentDPS):
    """PSLD (Rout et al., NeurIPS 2023): Latent-DPS plus the gluing term, linear operators."""

    name = "psld"
    config_class = PSLDConfig
    linear_only = True

    def check_problem(self, prior: Prior, operator: Operator, y: torch.Tensor) -> None:
        super().check_problem(prior, operator, y)
        if not isinstance(operator, LinearOperator):
            raise SolverInputError(
                f"{self.name} needs a linear operator with an adjoint (operators.LinearOperator: "
                f"matrix, inpainting, super-resolution, blurs) for its gluing term A^+ (y - A x); "
                f"{operator.name} is not one"
            )

    def _correction(
        self, rows: Rows, x_in: torch.Tensor, x0: torch.Tensor, image: torch.Tensor, k: int
    ) -> torch.Tensor:
        """Latent-DPS's measurement step plus gamma sqrt((1 + s^2)(1 + s'^2)) times the gluing
        gradient (module docstring)."""
        glue = self.gluing_grad(rows.operator, rows.y, x0, image, x_in)
        return (
            super()._correction(rows, x_in, x0, image, k)
            + (self.config.gamma * self.vp_scale(k)) * glue
        )

    def glued_latent(
        self, operator: Operator, y: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        """encode(image + A^+ (y - A image)): the image with its measured part replaced by the
        data, encoded (rows of ``image``, ``operator`` and ``y`` correspond)."""
        prior, cfg = self.prior, self.config
        assert prior is not None and isinstance(operator, LinearOperator)
        residual = (y - operator(image)).expand(image.shape[0], *operator.output_shape)
        fill = operator.pseudo_inverse(residual, tol=cfg.cg_tol, max_iter=cfg.cg_iters)
        return prior.encode(image + fill)

    def gluing_grad(
        self,
        operator: Operator,
        y: torch.Tensor,
        z0: torch.Tensor,
        image: torch.Tensor,
        x: torch.Tensor,
    ) -> torch.Tensor:
        """grad_x ||z0_i - encode(glued_i)||_2 per particle (0 where the norm is 0; NaN for rows
        whose image is not finite, which get no operator or encoder call). ``z0`` = D(x) and
        ``image`` = decode(z0) must be in ``x``'s graph, which is kept for the next term."""
        ok = finite_rows(image)
        grad = torch.zeros_like(x)
        norm = torch.full((x.shape[0],), float("nan"), dtype=x.dtype, device=x.device)
        if bool(ok.any()):
            kept = ok.nonzero().flatten()
            gap = z0[ok] - self.glued_latent(
                operator.take_rows(kept), measurement_rows(y, kept), image[ok]
            )
            sq = gap.flatten(1).pow(2).sum(1)
            (grad,) = torch.autograd.grad(0.5 * sq.sum(), x, retain_graph=True)
            norm[ok] = sq.detach().sqrt()
        inv = torch.where(norm > 0, 1.0 / norm, torch.zeros_like(norm))
        inv = torch.where(ok, inv, torch.full_like(inv, float("nan")))
        return grad * inv.view(-1, *([1] * (x.dim() - 1)))
