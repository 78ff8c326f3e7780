"""FPS-SMC: filtering posterior sampling with sequential Monte Carlo, for linear operators.

Follows Dou & Song, "Diffusion posterior sampling for linear inverse problem solving: a filtering
perspective" (ICLR 2024; docs/solvers/fps_smc.md) on C-DPS's model (solvers/cdps.py, whose
module docstring defines every symbol below): C-DPS is this sampler with one particle and a
chain of its own, and the two share their code (this class subclasses ``CDPS``).

**Model.** A measurement chain y_S, ..., y_1, y_0 = y is drawn from y (y_S ~ N(sqrt(ab_S) y,
(1 - ab_S) rho^2 I), then the DDPM bridge y_{s-1} ~ q(y_{s-1} | y_s, y)), and treated as the
observations of a state-space model over x_S, ..., x_0: x_S ~ N(0, I) and, for the step from
level s to s - 1 (c, Sigma, b and x_t' of C-DPS, b = (1 - ab_{s-1}) A s(x_s)),
  p(x_{s-1} | x_s) = N(x_t', I / c),
  g(y_{s-1} | x_{s-1}, x_s) = N(y_{s-1}; A x_{s-1} + b, Sigma I).
At s = 1, ab_0 = 1 gives b = 0, Sigma = max(sigma_y, min_noise)^2 and a bridge of zero variance
(y_0 = y), so the last factor is the measurement likelihood p(y | x_0) itself (exact for
sigma_y >= min_noise). y_S is observed by nothing (b at S would need an x_{S+1}), so the initial
weights are uniform, as in the paper's algorithm.

**Proposal and weight.** The proposal is C-DPS's step, the fully adapted one:
q(x' | x_s) ∝ p(x' | x_s) g(y_{s-1} | x', x_s) exp(<f, x'>) = N(mu, Lambda^-1), with f the
ensemble's force (0 without one). Its incremental weight p g / q does not depend on x' except
through the force's tilt:
  log w = log N(y_{s-1} - b; A m, A A^T / c + Sigma I) + <f, x_t' - x'> + |f|^2 / (2 c),
  m = x_t' + f / c,
the predictive likelihood p(y_{s-1} | x_s) for f = 0. The quadratic form is solved by matrix-free
CG in measurement space ((A A^T / c + Sigma I) u = r with A A^T u = A(A^T u), started at r / Sigma,
exact on the complement of range(A); ``cg_iters`` iterations, exact in d_y + 1). The
log-determinant -log det(2 pi (A A^T / c + Sigma I)) / 2 is the same for every particle of one
problem at a given step (A and Sigma are the problem's), so it is dropped: weights are comparable
only within a problem, which is how the ensemble normalises them.

**One chain per problem.** Weights compare a problem's particles against the same y_{s-1}, so
every row of one problem must see the same chain: the chain's noise at level s (s = 0 for y_S)
is drawn from a generator seeded by ``particle_seed(problem seed ^ CHAIN_SALT, s)``, stateless,
so rows of a problem agree on any worker and in any batch. The problem seed of each row is kept
in ``extra[CHAIN_SEED]`` (int64) and moves with the row.

**Exactness.** As N grows the weighted particles converge to the model's law of x_0 given the
chain (checked against a Kalman filter on a Gaussian prior, tests/test_fps_smc.py). That is
p(x_0 | y) only insofar as the model is the true joint law of x and the chain: the model takes
each level's residual as fresh noise, so the measurement noise, the same at every level, is
counted once per level. The gap is small for small sigma_y and many steps and does not shrink
with N (measured in docs/solvers/fps_smc.md). CG with fewer than d_y + 1 iterations makes the
proposal and the weight approximate too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from operators import Operator
from operators.linalg import cg
from solvers.base import LOG_WEIGHT, Rows, State, Update, particle_seed
from solvers.cdps import CDPS, CDPSConfig
from solvers.cdps import SEED as CDPS_SEED
from solvers.preset import Preset
from solvers.registry import register

PAPER = "FPS-SMC (Dou & Song, ICLR 2024)"
CHAIN_SEED = "chain_seed"  # extra key: the problem seed of the row, which seeds its y chain
CHAIN_SALT = 0x46505343  # keeps the chain's streams apart from the particles' own


@dataclass(frozen=True)
class FPSSMCConfig(CDPSConfig):
    """FPS-SMC hyperparameters: C-DPS's (the model and the proposal are the same)."""


# GMM check (4 MCGdiff instances: d = 8 with d_y = 1, 2, 4 and d = 80 with d_y = 2; N = 256,
# systematic resampling by hand at ESS < N / 2): mean SW / floor for steps 20 / 50 / 100 was
# 7.9 / 8.5 / 10.4 (chain_noise 0.1) and 7.9 / 8.6 / 10.2 (0.03); 20 steps also cost the least.
FPS_SMC_PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        overrides={"steps": 100, "cg_iters": 10},
        source=f"ours: 100 ancestral steps, as {CDPS_SEED}'s cpu preset",
    ),
    "gmm": Preset(
        overrides={"steps": 20, "cg_iters": 10, "chain_noise": 0.03},
        task="matrix",
        source="ours: quick GMM check of steps x chain_noise, N = 256 (docs/solvers/fps_smc.md)",
    ),
}


@register(presets=FPS_SMC_PRESETS)
class FPSSMC(CDPS):
    """FPS-SMC (Dou & Song, ICLR 2024) on C-DPS's model: weighted, one y chain per problem."""

    name = "fps_smc"
    config_class = FPSSMCConfig
    weighted = True
    config: FPSSMCConfig

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        state = self._start(generators, indices, y)
        assert state.y is not None
        seeds = torch.tensor(self.row_seeds, dtype=torch.int64)
        y_like = state.y.expand(len(indices), *state.y.shape[1:])
        state.extra["y_t"] = self.chain_top(y_like, self.chain_draw(seeds, 0, y_like))
        state.extra[CHAIN_SEED] = seeds.to(state.x.device)
        state.extra[LOG_WEIGHT] = torch.zeros(
            len(indices), dtype=torch.float64, device=state.x.device
        )
        return state

    def _update(self, rows: Rows, k: int) -> Update:
        """Level s = S - k to s - 1: the problem's y_{s-1}, C-DPS's move, its weight."""
        s = self.config.steps - k
        op = self._linear(rows.operator)
        with torch.no_grad():
            mean, std = self.bridge_moments(rows.extra["y_t"], rows.y, s, op)
            y_prev = mean + std * self.chain_draw(rows.extra[CHAIN_SEED], s, mean)
            move = self.move(rows.x, y_prev, s, rows.generators, rows.force, op)
            log_w = self.log_weight_of(move.x_prime, move.target, move.x, s, op, rows.force)
        return Update(move.x, move.x0, {"y_t": y_prev}, log_weight=log_w)

    def chain_draw(self, seeds: torch.Tensor, s: int, like: torch.Tensor) -> torch.Tensor:
        """N(0, I) noise shaped like ``like``, the same for rows of one problem seed: level s of
        the problem's chain (one draw per distinct seed)."""
        distinct, row_of = torch.unique(seeds.cpu(), return_inverse=True)
        shape = tuple(like.shape[1:])
        draws = [
            torch.randn(
                shape,
                generator=torch.Generator().manual_seed(particle_seed(int(seed) ^ CHAIN_SALT, s)),
            )
            for seed in distinct.tolist()
        ]
        return torch.stack(draws)[row_of].to(device=like.device, dtype=like.dtype)

    def log_weight_of(
        self,
        x_prime: torch.Tensor,
        target: torch.Tensor,
        x_new: torch.Tensor,
        s: int,
        operator: Operator,
        force: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log w of each row (float64, up to the problem's constant), module docstring:
        log N(target; A m, A A^T / c + Sigma I) + <f, x_t' - x'> + |f|^2 / (2 c)."""
        op = self._linear(operator)
        c, sigma = self._precision(s, op, target)
        m = x_prime if force is None else x_prime + force / c
        r = target - op(m)

        def covariance(v: torch.Tensor) -> torch.Tensor:
            return op(op.adjoint(v)) / c + sigma * v

        u = cg(covariance, r, x0=r / sigma, tol=self.config.cg_tol, max_iter=self.config.cg_iters)
        log_w = -0.5 * (r * u).flatten(1).to(torch.float64).sum(1)
        if force is not None:
            tilt = force * (x_prime - x_new) + force**2 / (2 * c)
            log_w = log_w + tilt.flatten(1).to(torch.float64).sum(1)
        return log_w
