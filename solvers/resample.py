"""ReSample: hard data consistency with stochastic resampling (Song et al., ICLR 2024).

Follows the paper and its reference code (docs/solvers/resample.md). The state
``x`` is the VP-form variable z_t = sqrt(ab_t) (z0 + sigma_t n) of the prior's sampling space
(latent for latent priors; pixels for pixel priors, where encode/decode are the identity).
One ``step`` is one DDIM index i = T-1-k, going from level ab_t = ab(i) to ab_prev = ab(i-1):

1. DDIM (eta = 0) in the prior's EDM form: z0_hat = D(z_t / sqrt(ab_t), sigma_t), then
   out = sqrt(ab_prev) z0_hat + sqrt(1 - ab_prev) eps_hat, eps_hat = (z_t - sqrt(ab_t) z0_hat) /
   sqrt(1 - ab_t): exactly an Euler step of the probability-flow ODE from sigma_t to sigma_prev.
2. DPS-style correction with the norm not squared, per particle:
   z' = out - zeta_t (grad_{z_t} ||y - A(decode(z0_hat))|| - force), zeta_t = zeta * ab_t.
   ``force`` is thus an extra drift in z_t coordinates with the DPS step size zeta_t (so it
   has no effect when zeta = 0).
3. Hard data consistency when 0 < i <= T - floor(stage1_fraction T) and i % skip == 0: a
   ``lookahead``-evaluation unconditional DDIM look-ahead from z' gives z0_hat; then pixel
   optimisation (i >= floor(stage3_fraction T)): x = decode(z0_hat) minimised by AdamW on
   mean((A x - y)^2), or for linear A x = x0 - kappa A^+(A x0 - y) by CG, z0_y = encode(x);
   or latent optimisation (AdamW on z, same loss through decode, window early stop). Then
   stochastic resampling at ab = ab_prev with g = gamma (1 - ab_prev)/(1 - ab_t)(1 - ab_t/ab_prev):
   z = (g sqrt(ab) z0_y + (1 - ab) z') / (g + 1 - ab) + sqrt(1 / (1/g + 1/(1 - ab))) eps.
4. After the last index: z0 = z / sqrt(ab(final)), a final latent optimisation, then decode;
   the final state ``x`` holds that clean latent.

``state.x0`` (image space) is decode(z0_hat) of the step, decode(z0_y) after a hard-consistency
event, and the final image after the last index.

All optimisations run per particle: the loss is a sum of per-particle losses, and the AdamW
here (``adamw_minimise``, same update as ``torch.optim.AdamW``) keeps per-element moments and a
per-particle mask of stopped particles, so early stopping never couples particles. Each particle
uses its own measurement and operator (``Rows``), so a batch may hold several problems.

Reference quirks kept optional or not copied (documented, not silent): the reference's "Tweedie"
estimate is (z_t - (1 - ab_t) eps_hat) / sqrt(ab_t) (``x0_estimate="reference"``; the default
is the true Tweedie mean D); its DPS norm is over the whole batch (here per particle); its
look-ahead applies the DDIM coefficients of the previous index (here those of the level).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from operators import LinearOperator, Operator
from solvers.base import (
    Rows,
    SolverInputError,
    State,
    Update,
    measurement_rows,
    particle_randn,
)
from solvers.config import SolverConfigError, choice, hyper
from solvers.preset import Preset
from solvers.priors.base import Prior
from solvers.registry import register
from solvers.vp_grid import (
    VPGridConfig,
    VPGridSolver,
    bad_rows,
    ddim_levels,
    level_sigma,
    zero_rows,
)


# -- per-particle AdamW --------------------------------------------------------------------------
def adamw_minimise(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    lr: float,
    max_iters: int,
    tol: float,
    window: int = 0,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise each row's loss from ``start`` with AdamW; returns (x, iterations, non-finite).

    ``loss_fn(x, rows)`` gives the losses (R,) of rows ``rows`` (R,) whose values are ``x``
    (R, ...); it is called on the still-active rows only. One row's update equals
    ``torch.optim.AdamW``'s; moments are per element and rows stop independently, in the
    reference's order: after the step of iteration j a row stops if its loss before the step
    was < ``tol`` or, with ``window`` > 0 and j >= window, if the loss of iteration j - window
    was smaller. Rows whose iterate, loss or gradient turns non-finite stop and are reported.
    """
    x = start.detach().clone()
    m = torch.zeros_like(x)
    v = torch.zeros_like(x)
    n = x.shape[0]
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    broken = bad_rows(x)
    active &= ~broken
    iterations = torch.zeros(n, dtype=torch.long, device=x.device)
    history = torch.zeros(max(window, 1), n, dtype=x.dtype, device=x.device)
    b1, b2 = betas
    for j in range(max_iters):
        if not bool(active.any()):
            break
        rows = active.nonzero().flatten()
        with torch.enable_grad():
            xr = x[rows].requires_grad_(True)
            value = loss_fn(xr, rows)
            (grad_rows,) = torch.autograd.grad(value.sum(), xr)
        loss = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        loss[rows] = value.detach()
        grad = torch.zeros_like(x)
        grad[rows] = grad_rows
        failed = active & (~torch.isfinite(loss) | bad_rows(grad))
        broken |= failed
        active &= ~failed
        mask = active.view(-1, *([1] * (x.dim() - 1)))
        m = torch.where(mask, b1 * m + (1 - b1) * grad, m)
        v = torch.where(mask, b2 * v + (1 - b2) * grad * grad, v)
        t = j + 1
        denom = (v.sqrt() / math.sqrt(1 - b2**t)) + eps
        stepped = x * (1 - lr * weight_decay) - (lr / (1 - b1**t)) * m / denom
        x = torch.where(mask, stepped, x)
        iterations += active.long()
        stop = loss < tol
        if window > 0:
            slot = j % window
            if j >= window:
                stop |= history[slot] < loss
            history[slot] = loss
        active &= ~stop
    x = torch.where(broken.view(-1, *([1] * (x.dim() - 1))), torch.full_like(x, math.nan), x)
    return x, iterations, broken


# -- the solver ----------------------------------------------------------------------------------
PAPER = "ReSample (Song et al., ICLR 2024) App. C.1 / reference code"


@dataclass(frozen=True)
class ReSampleConfig(VPGridConfig):
    """ReSample hyperparameters; defaults are the paper/reference values for natural images."""

    steps: int = hyper(500, 2, 10000, log=True, source=f"{PAPER}: T = 500 DDIM")
    zeta: float = hyper(0.5, 0.0, 100.0, source=f"{PAPER}: DPS step 0.5 * alpha_bar_t (Tab. 13)")
    x0_estimate: str = choice(
        "tweedie", ("tweedie", "reference"), source="ours: Tweedie; 'reference' = code's formula"
    )
    stage1_fraction: float = hyper(1 / 3, 0.0, 1.0, source=f"{PAPER}: splits = 3")
    stage3_fraction: float = hyper(1 / 3, 0.0, 1.0, source=f"{PAPER}: splits = 3")
    skip: int = hyper(10, 1, 1000, log=True, source=f"{PAPER}: every 10 indices")
    lookahead: int = hyper(5, 1, 100, log=True, source=f"{PAPER}: inter_timesteps = 5")
    pixel_solver: str = choice("adam", ("adam", "cg"), source=f"{PAPER}: Adam; CG for CT (B.1)")
    pixel_lr: float = hyper(1e-2, 1e-5, 1.0, log=True, source=f"{PAPER}: AdamW lr 1e-2")
    pixel_iters: int = hyper(2000, 1, 100000, log=True, source=f"{PAPER}: 2000 iterations")
    pixel_tol: float = hyper(1e-6, 0.0, 1e3, source=f"{PAPER}: eps**2 = 1e-6 (paper tau 1e-4)")
    pixel_kappa: float = hyper(0.9, 0.0, 1.0, source=f"{PAPER} App. B.1 / C.2: kappa 0.9")
    pixel_cg_iters: int = hyper(50, 1, 10000, log=True, source=f"{PAPER} App. C.2: 50 CG")
    latent_lr: float = hyper(5e-3, 1e-5, 1.0, log=True, source=f"{PAPER}: AdamW lr 5e-3")
    latent_iters: int = hyper(500, 1, 100000, log=True, source=f"{PAPER}: 500 iterations")
    latent_tol: float = hyper(1e-6, 0.0, 1e3, source=f"{PAPER}: eps**2 = 1e-6")
    latent_window: int = hyper(200, 0, 100000, source=f"{PAPER}: 200-iteration window")
    weight_decay: float = hyper(0.01, 0.0, 1.0, source="torch.optim.AdamW default (reference)")
    gamma: float = hyper(40.0, 1e-3, 1e5, log=True, source=f"{PAPER}: gamma = 40")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage1_fraction + self.stage3_fraction > 1.0 + 1e-12:
            raise SolverConfigError(
                f"ReSampleConfig: stage1_fraction + stage3_fraction = "
                f"{self.stage1_fraction + self.stage3_fraction:g} must be <= 1"
            )


# Presets: the paper's settings and a CPU-sized one (no backbone or task: they fit any), and the
# one tuned on the exact-posterior GMM benchmark.
RESAMPLE_PRESETS: dict[str, Preset] = {
    "paper": Preset(
        overrides={"steps": 500},
        source=f"{PAPER} C.1 (LDM-VQ-4 FFHQ/CelebA-HQ/LSUN, natural images): the defaults",
    ),
    # T = 1000, stages t > 750 / 300 < t <= 750 / t <= 300, CG pixel step with kappa 0.9 and
    # 50 iterations.
    "ct": Preset(
        overrides={
            "steps": 1000,
            "stage1_fraction": 0.25,
            "stage3_fraction": 0.3,
            "pixel_solver": "cg",
            "pixel_kappa": 0.9,
            "pixel_cg_iters": 50,
        },
        source=f"{PAPER} C.2 (CT, LDM fine-tuned)",
    ),
    # Tuned on d = 8, d_y 1-4, pixel and LinearDecoderPrior beds (instances 0-3 tuned, 3-4 held
    # out): the image-scale step sizes are far too small for mixture components 8 apart; exact
    # CG projection for the linear A; stop the latent fit at about the noise power (MSE 0.1); a
    # stronger DPS step (zeta 8 best on d = 8, 16 better on d = 80 but unstable for large
    # sigma_y, 64 diverges).
    "gmm": Preset(
        overrides={
            "steps": 500,
            "skip": 20,
            "lookahead": 2,
            "zeta": 8.0,
            "pixel_solver": "cg",
            "pixel_kappa": 1.0,
            "pixel_cg_iters": 50,
            "latent_lr": 0.1,
            "latent_iters": 300,
            "latent_window": 50,
            "latent_tol": 0.1,
        },
        task="matrix",
        source="GMM benchmark tuning, pixel and latent beds (docs/gmm_benchmark.md)",
    ),
    # 50 DDIM steps keep 17 events (10 pixel, 7 latent) with skip 2.
    "cpu": Preset(
        overrides={
            "steps": 50,
            "skip": 2,
            "lookahead": 2,
            "pixel_iters": 300,
            "latent_iters": 100,
            "latent_window": 40,
        },
        source="ours: reduced for CPU",
    ),
}


@register(presets=RESAMPLE_PRESETS)
class ReSample(VPGridSolver):
    """ReSample (Song et al., ICLR 2024) for latent priors, and pixel priors (identity codec)."""

    name = "resample"
    config_class = ReSampleConfig
    latent = None  # latent priors, and pixel priors through the identity codec
    config: ReSampleConfig

    # -- stage boundaries --------------------------------------------------------------------
    def dc_event(self, index: int) -> bool:
        """Whether hard data consistency runs after DDIM index ``index``."""
        c, T = self.config, self.config.steps
        last = T - math.floor(c.stage1_fraction * T + 1e-9)
        return 0 < index <= last and index % c.skip == 0

    def latent_stage(self, index: int) -> bool:
        """Whether an event at ``index`` optimises the latent (stage 3) rather than pixels."""
        return index < math.floor(self.config.stage3_fraction * self.config.steps + 1e-9)

    def resample_weight(self, index: int) -> float:
        """g = gamma (1 - ab_prev) / (1 - ab_t) (1 - ab_t / ab_prev) of index ``index``."""
        a_t, a_prev = float(self.levels[index + 1]), float(self.levels[index])
        return self.config.gamma * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)

    # -- the contract ------------------------------------------------------------------------
    def check_problem(self, prior: Prior, operator: Operator, y: torch.Tensor) -> None:
        super().check_problem(prior, operator, y)
        if self.config.pixel_solver == "cg" and not operator.is_linear:
            raise SolverInputError(
                f"resample: pixel_solver='cg' needs a linear operator; {operator.name} is not "
                "(use pixel_solver='adam')"
            )

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        prior = self.prior
        assert prior is not None
        self.levels = ddim_levels(prior, self.config, self.config.steps)
        like = torch.empty(len(indices), *prior.shape, dtype=prior.dtype, device=prior.device)
        x = particle_randn(generators, like)
        with torch.no_grad():
            x0 = self.decode(torch.zeros_like(x))
        return State(
            x=x,
            x0=x0,
            generators=generators,
            indices=indices,
            status=torch.zeros(len(indices), dtype=torch.long, device=x.device),
            y=y.to(device=x.device, dtype=x.dtype),
        )

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The prior's decoder, or the identity for a pixel prior."""
        assert self.prior is not None
        return self.prior.decode(z) if self.prior.is_latent else z

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """The prior's encoder, or the identity for a pixel prior."""
        assert self.prior is not None
        return self.prior.encode(image) if self.prior.is_latent else image

    def _update(self, rows: Rows, k: int) -> Update:
        """DDIM index T-1-k: DDIM + DPS correction (+ hard consistency, resampling, final)."""
        index = self.config.steps - 1 - k
        z, x0, broken = self._advance(
            rows.x, rows.y, index, rows.force, rows.generators, rows.operator
        )
        z = torch.where(broken.view(-1, *([1] * (z.dim() - 1))), math.nan, z)
        x0 = torch.where(broken.view(-1, *([1] * (x0.dim() - 1))), math.nan, x0)
        return Update(z, x0)

    # -- one DDIM index on the active particles ------------------------------------------------
    def _advance(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        index: int,
        force: torch.Tensor | None,
        gens: list[torch.Generator],
        operator: Operator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.config
        a_t, a_prev = float(self.levels[index + 1]), float(self.levels[index])
        with torch.enable_grad():
            zr = z.detach().requires_grad_(c.zeta > 0)
            estimate, eps_hat = self._estimate(zr, a_t)
            broken = bad_rows(estimate)
            image = self.decode(zero_rows(estimate, broken))
            out = math.sqrt(a_prev) * estimate + math.sqrt(1 - a_prev) * eps_hat
            if c.zeta > 0:
                residual = (operator(zero_rows(image, broken)) - y).flatten(1)
                norms = torch.linalg.vector_norm(residual, dim=1)
                (grad,) = torch.autograd.grad(norms.sum(), zr)
                broken |= bad_rows(grad)
                drift = grad if force is None else grad - force
                out = out - c.zeta * a_t * drift
        z_new, x0 = out.detach(), image.detach()
        broken |= bad_rows(z_new)
        if self.dc_event(index):
            z_new, x0, failed = self._hard_consistency(z_new, y, index, gens, broken, operator)
            broken |= failed
        if index == 0:
            z_new, x0, failed = self._final(z_new, y, broken, operator)
            broken |= failed
        return z_new, x0, broken

    def _estimate(self, z: torch.Tensor, ab: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(z0 estimate, eps_hat) at VP level ``ab``: Tweedie D or the reference's formula."""
        assert self.prior is not None
        denoised = self.prior.denoise(z / math.sqrt(ab), level_sigma(self.prior, ab))
        eps_hat = (z - math.sqrt(ab) * denoised) / math.sqrt(1 - ab)
        if self.config.x0_estimate == "reference":
            return (z - (1 - ab) * eps_hat) / math.sqrt(ab), eps_hat
        return denoised, eps_hat

    def _hard_consistency(
        self,
        z_prime: torch.Tensor,
        y: torch.Tensor,
        index: int,
        gens: list[torch.Generator],
        broken: torch.Tensor,
        operator: Operator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.config
        z = zero_rows(z_prime, broken)
        with torch.no_grad():
            for j in range(min(c.lookahead, index)):
                level = float(self.levels[index - j])
                estimate, eps_hat = self._estimate(z, level)
                if j < min(c.lookahead, index) - 1:
                    prev = float(self.levels[index - j - 1])
                    z = math.sqrt(prev) * estimate + math.sqrt(1 - prev) * eps_hat
            broken = broken | bad_rows(estimate)
            estimate = zero_rows(estimate, broken)
        if self.latent_stage(index):
            z0_y, failed = self.optimise_latent(estimate, y, operator)
        else:
            with torch.no_grad():
                image, failed = self.optimise_pixels(self.decode(estimate), y, operator)
                z0_y = self.encode(zero_rows(image, failed))
        broken = broken | failed
        ab = float(self.levels[index])
        g = self.resample_weight(index)
        noise = particle_randn(gens, z_prime)
        z_new = self.stochastic_resample(z0_y, z_prime, ab, g, noise)
        with torch.no_grad():
            x0 = self.decode(zero_rows(z0_y, broken))
        return z_new, x0, broken

    @staticmethod
    def stochastic_resample(
        z0_y: torch.Tensor, z_prime: torch.Tensor, ab: float, g: float, noise: torch.Tensor
    ) -> torch.Tensor:
        """(g sqrt(ab) z0_y + (1 - ab) z') / (g + 1 - ab) + sqrt(1/(1/g + 1/(1 - ab))) noise."""
        mean = (g * math.sqrt(ab) * z0_y + (1 - ab) * z_prime) / (g + 1 - ab)
        return mean + math.sqrt(1.0 / (1.0 / g + 1.0 / (1 - ab))) * noise

    def _final(
        self, z: torch.Tensor, y: torch.Tensor, broken: torch.Tensor, operator: Operator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z0 = zero_rows(z, broken) / math.sqrt(float(self.levels[0]))
        z0, failed = self.optimise_latent(z0, y, operator)
        broken = broken | failed
        with torch.no_grad():
            return z0, self.decode(zero_rows(z0, broken)), broken

    # -- hard data consistency solvers ---------------------------------------------------------
    @staticmethod
    def _mse(
        image: torch.Tensor, y: torch.Tensor, operator: Operator, rows: torch.Tensor
    ) -> torch.Tensor:
        """mean((A x - y)^2) per row of ``image``, the rows ``rows`` of ``operator``/``y``'s
        batch."""
        return (
            (operator.take_rows(rows)(image) - measurement_rows(y, rows)).flatten(1).pow(2).mean(1)
        )

    def optimise_pixels(
        self, image: torch.Tensor, y: torch.Tensor, operator: Operator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """argmin_x mean((A x - y)^2) from ``image``: AdamW, or x0 - kappa A^+(A x0 - y) by CG.

        ``operator``: that of the rows (default: the run's)."""
        c = self.config
        op = self.operator if operator is None else operator
        assert op is not None
        if c.pixel_solver == "cg":
            assert isinstance(op, LinearOperator)
            correction = op.pseudo_inverse(op(image) - y, max_iter=c.pixel_cg_iters)
            out = image - c.pixel_kappa * correction
            return out, bad_rows(out)
        out, _, broken = adamw_minimise(
            lambda x, rows: self._mse(x, y, op, rows),
            image,
            c.pixel_lr,
            c.pixel_iters,
            c.pixel_tol,
            0,
            c.weight_decay,
        )
        return out, broken

    def optimise_latent(
        self, z: torch.Tensor, y: torch.Tensor, operator: Operator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """argmin_z mean((A decode(z) - y)^2) from ``z`` by AdamW with the window early stop.

        ``operator``: that of the rows (default: the run's)."""
        c = self.config
        op = self.operator if operator is None else operator
        assert op is not None
        out, _, broken = adamw_minimise(
            lambda v, rows: self._mse(self.decode(v), y, op, rows),
            z,
            c.latent_lr,
            c.latent_iters,
            c.latent_tol,
            c.latent_window,
            c.weight_decay,
        )
        return out, broken
