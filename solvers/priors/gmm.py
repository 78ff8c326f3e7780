"""Gaussian-mixture prior with an analytic denoiser and an exact linear-Gaussian posterior.

The project's ground truth for solver correctness (docs/gmm_benchmark.md): with a
mixture prior sum_i w_i N(mu_i, std^2 I) the EDM/VE denoiser E[x0 | x0 + sigma n] is analytic,
and under y = A x0 + sigma_y eps the posterior is again a mixture with one shared covariance.
``mcgdiff_problem`` builds the benchmark instances of MCGdiff (Cardoso et al., "Monte Carlo
guided diffusion for Bayesian linear inverse problems", ICLR 2024), reused by DCPS, MGPS and
DDSMC; ``default_gmm_prior`` is their prior (``solvers.priors.load("gmm")``).
``LinearDecoderPrior`` is the same mixture seen through an invertible affine decoder: a
latent prior whose exact posterior is known, for testing latent solvers.

All densities and conditionals are computed in float64 and returned in the input's dtype.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from operators.base import Operator
from operators.matrix import MatrixOperator
from operators.random import make_generator
from operators.registry import build as build_operator
from solvers.priors.base import Prior, PriorInputError, check_finite_range, sigma_view

# Largest noise level accepted by ``denoise``: far above the spread of any benchmark mixture
# (|mu| <= 16 sqrt(d)), and still harmless in float64 (variances ~1e8).
GMM_SIGMA_MAX = 1e4
# MCGdiff benchmark: the 5x5 grid {-16, -8, 0, 8, 16}^2 tiled over coordinate pairs.
MCGDIFF_GRID = (-2, -1, 0, 1, 2)
MCGDIFF_SPACING = 8.0
# The mixture weights depend on d only: they come from a generator seeded WEIGHT_SEED_BASE + d,
# a stream apart from the instance seeds (which are small integers in practice).
WEIGHT_SEED_BASE = 0x5EED_0000
# The latent variant's decoder depends on d only too (generator seeded DECODER_SEED_BASE + d).
DECODER_SEED_BASE = 0xDEC0_0000
_F64 = torch.float64


class GaussianMixture(Prior):
    """p(x0) = sum_i w_i N(x0; mu_i, std^2 I) on vectors of shape (d,), with an exact denoiser.

    ``means`` (K, d) and ``weights`` (K,) (normalised here) are buffers, so ``to()`` moves them;
    they keep the floating dtype given (float32 if not floating). ``sigma_min`` is 0 (the
    denoiser is exact at every noise level, ``denoise(x, 0) == x``) and ``sigma_max`` is
    ``GMM_SIGMA_MAX``.
    """

    def __init__(self, means: torch.Tensor, weights: torch.Tensor, std: float = 1.0) -> None:
        means = torch.as_tensor(means)
        weights = torch.as_tensor(weights)
        if means.dim() != 2 or weights.shape != (means.shape[0],) or means.shape[0] == 0:
            raise PriorInputError(
                f"{type(self).__name__}: means must have shape (K, d) and weights (K,), got "
                f"{tuple(means.shape)} and {tuple(weights.shape)}"
            )
        dtype = means.dtype if means.is_floating_point() else torch.float32
        w = weights.to(_F64)
        if not bool(torch.isfinite(means).all()) or not bool(torch.isfinite(w).all()):
            raise PriorInputError(f"{type(self).__name__}: means and weights must be finite")
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise PriorInputError(
                f"{type(self).__name__}: weights must be >= 0 with a positive sum, got {w.tolist()}"
            )
        super().__init__((means.shape[1],), 0.0, GMM_SIGMA_MAX)
        self.std = check_finite_range(float(std), "std")
        self.register_buffer("means", means.detach().to(dtype).clone())
        self.register_buffer("weights", (w / w.sum()).to(dtype))

    # -- the denoiser and the noised marginal -----------------------------------------------------
    def _logits(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised log responsibilities (B, K) and the marginal variance (B, 1), float64.

        log w_i - ||x - mu_i||^2 / (2 v) with v = std^2 + sigma^2; the squared distances are
        expanded (no (B, K, d) tensor), which is accurate in float64 at the benchmark's scales.
        """
        x64 = x.to(_F64)
        mu = self.means.to(_F64)
        v = (self.std**2 + sigma.to(_F64) ** 2).unsqueeze(1)
        sq = (x64.pow(2).sum(1, keepdim=True) - 2 * x64 @ mu.T + mu.pow(2).sum(1)).clamp_min(0)
        return self.weights.to(_F64).log() - sq / (2 * v), v

    def _mean_residual(
        self, x: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x - sum_i r_i(x) mu_i and v, both float64: the denoiser and the score are built on it."""
        logits, v = self._logits(x, sigma)
        r = torch.softmax(logits, dim=1)
        return x.to(_F64) - r @ self.means.to(_F64), v

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        # sum_i r_i (mu_i + std^2 (x - mu_i) / v) = x - (sigma^2 / v) (x - sum_i r_i mu_i):
        # exactly x at sigma = 0, and no cancellation at small sigma.
        residual, v = self._mean_residual(x, sigma)
        s2 = sigma_view(sigma.to(_F64), 2) ** 2
        return (x.to(_F64) - (s2 / v) * residual).to(x.dtype)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """grad log p_sigma(x) = -(x - sum_i r_i mu_i) / (std^2 + sigma^2), also at sigma = 0.

        Equal to the inherited Tweedie form (D(x, sigma) - x) / sigma^2 for sigma > 0, where it
        would lose precision at small sigma and be undefined at sigma = 0.
        """
        sigma_b = self.check(x, sigma)
        self.nfe += 1
        residual, v = self._mean_residual(x, sigma_b)
        return (-residual / v).to(x.dtype)

    def log_prob(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        """log p_sigma(x) of the noised marginal sum_i w_i N(x; mu_i, (std^2 + sigma^2) I), (B,).

        Differentiable in ``x``; computed in float64 and returned in x's dtype.
        """
        sigma_b = self.check(x, sigma)
        logits, v = self._logits(x, sigma_b)
        norm = 0.5 * self.shape[0] * torch.log(2 * math.pi * v.squeeze(1))
        return (torch.logsumexp(logits, dim=1) - norm).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | int) -> torch.Tensor:
        """n prior draws (n, d) from an explicit generator (or int seed), in the means' dtype."""
        return _sample_mixture(self.means, self.weights, self.std, n, generator).to(
            self.means.dtype
        )

    # -- the exact posterior ---------------------------------------------------------------------
    def posterior(self, operator: Operator, y: torch.Tensor) -> GaussianMixturePosterior:
        """Exact posterior over the sampling space given y = A x0 + sigma_y eps (``matrix`` A).

        ``y`` is one measurement, shape (d_y,) or (1, d_y).
        """
        A, sigma_y, y64 = _linear_gaussian(operator, y, self.shape, type(self).__name__)
        return _mixture_posterior(
            self.means.to(_F64), self.weights.to(_F64), self.std, A, sigma_y, y64
        )

    def extra_repr(self) -> str:
        return f"components={self.means.shape[0]}, d={self.shape[0]}, std={self.std}"


class SimulatedLatencyMixture(GaussianMixture):
    """A SIMULATION for scheduling benchmarks: the mixture, whose every denoiser or score call
    first sleeps ``a + b * rows`` seconds, the latency model of a GPU-bound network call.

    Values (and ``nfe``) are those of ``GaussianMixture`` exactly; only the time changes, so a
    cluster of CPU-only processes behaves like one whose workers wait on a GPU
    (``experiments/benchmarks/cluster_scaling.py``; docs/benchmarks.md, ``cluster_scaling``).
    ``latency`` = (a, b): seconds per call and per row, finite and >= 0.
    """

    def __init__(
        self,
        means: torch.Tensor,
        weights: torch.Tensor,
        latency: Sequence[float],
        std: float = 1.0,
    ) -> None:
        super().__init__(means, weights, std)
        pair = tuple(latency) if isinstance(latency, Sequence) else ()
        if len(pair) != 2 or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            for v in pair
        ):
            raise PriorInputError(
                f"latency must be [a, b]: seconds per call and per row, finite and >= 0, got "
                f"{latency!r}"
            )
        self.latency = (float(pair[0]), float(pair[1]))

    def call_seconds(self, rows: int) -> float:
        """The simulated time of one call on ``rows`` rows: a + b * rows."""
        return self.latency[0] + self.latency[1] * rows

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        time.sleep(self.call_seconds(x.shape[0]))
        return super()._denoise(x, sigma)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        time.sleep(self.call_seconds(x.shape[0]))
        return super().score(x, sigma)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, latency={self.latency} (simulated)"


class LinearDecoderPrior(GaussianMixture):
    """A latent test bed: z ~ GaussianMixture(means, weights, std), image = decode(z) = D z + b.

    ``D`` (d, d) must be invertible; ``encode(x) = D^-1 (x - b)``. Solvers sample z through the
    same analytic denoiser while the operator acts on decoded images; ``posterior`` gives the
    exact posterior over z (a mixture again: y - A b = (A D) z + noise), and its
    ``pushforward(D, b)`` the posterior over images.
    """

    is_latent = True

    def __init__(
        self,
        means: torch.Tensor,
        weights: torch.Tensor,
        decoder: torch.Tensor,
        bias: torch.Tensor | None = None,
        std: float = 1.0,
    ) -> None:
        super().__init__(means, weights, std)
        d = self.shape[0]
        D = torch.as_tensor(decoder).to(_F64)
        b = torch.zeros(d, dtype=_F64) if bias is None else torch.as_tensor(bias).to(_F64)
        if D.shape != (d, d) or b.shape != (d,):
            raise PriorInputError(
                f"LinearDecoderPrior: decoder must have shape ({d}, {d}) and bias ({d},), got "
                f"{tuple(D.shape)} and {tuple(b.shape)}"
            )
        svals = torch.linalg.svdvals(D)
        if not bool(torch.isfinite(svals).all()) or float(svals[-1]) <= 1e-12 * float(svals[0]):
            raise PriorInputError("LinearDecoderPrior: decoder must be a finite invertible matrix")
        dtype = self.means.dtype
        self.register_buffer("decoder", D.to(dtype))
        self.register_buffer("decoder_inverse", torch.linalg.inv(D).to(dtype))
        self.register_buffer("bias", b.to(dtype))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """D z + b for a batch (B, d); differentiable."""
        self._check_vectors(z, "z")
        return z @ self.decoder.to(z.dtype).T + self.bias.to(z.dtype)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """D^-1 (x - b) for a batch (B, d)."""
        self._check_vectors(image, "image")
        return (image - self.bias.to(image.dtype)) @ self.decoder_inverse.to(image.dtype).T

    def posterior(self, operator: Operator, y: torch.Tensor) -> GaussianMixturePosterior:
        """Exact posterior over the latent z given y = A decode(z) + sigma_y eps."""
        A, sigma_y, y64 = _linear_gaussian(operator, y, self.shape, type(self).__name__)
        D, b = self.decoder.to(A), self.bias.to(A)
        return _mixture_posterior(
            self.means.to(_F64), self.weights.to(_F64), self.std, A @ D, sigma_y, y64 - A @ b
        )

    def _check_vectors(self, t: torch.Tensor, what: str) -> None:
        if t.dim() != 2 or t.shape[1] != self.shape[0]:
            raise PriorInputError(
                f"LinearDecoderPrior: {what} must have shape (batch, {self.shape[0]}), got "
                f"{tuple(t.shape)}"
            )


class GaussianMixturePosterior:
    """sum_i w_i N(m_i, S): a mixture with one shared full covariance, held in float64.

    Attributes ``means`` (K, d), ``weights`` (K,), ``covariance`` (d, d).
    """

    def __init__(
        self, means: torch.Tensor, weights: torch.Tensor, covariance: torch.Tensor
    ) -> None:
        self.means = means.to(_F64)
        self.weights = weights.to(_F64)
        self.covariance = 0.5 * (covariance + covariance.T).to(_F64)
        self._chol = torch.linalg.cholesky(self.covariance)
        # P = S^-1 = W W^T, so that (x - m)^T P (x - m) = ||(x - m) W||^2.
        self._whiten = torch.linalg.cholesky(torch.cholesky_inverse(self._chol))
        self._log_det = 2 * self._chol.diagonal().log().sum()

    @property
    def mean(self) -> torch.Tensor:
        """The mixture's mean sum_i w_i m_i, shape (d,)."""
        return self.weights @ self.means

    @property
    def total_covariance(self) -> torch.Tensor:
        """The mixture's covariance S + sum_i w_i (m_i - mean)(m_i - mean)^T, shape (d, d)."""
        centred = self.means - self.mean
        return self.covariance + centred.T @ (self.weights[:, None] * centred)

    def sample(self, n: int, generator: torch.Generator | int) -> torch.Tensor:
        """n exact posterior draws (n, d), float64, from an explicit generator (or int seed)."""
        return _sample_mixture(self.means, self.weights, self._chol, n, generator)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior log-density at a batch x (B, d), float64, shape (B,)."""
        u = x.to(self.means.device, _F64) @ self._whiten
        c = self.means @ self._whiten
        sq = (u.pow(2).sum(1, keepdim=True) - 2 * u @ c.T + c.pow(2).sum(1)).clamp_min(0)
        d = self.means.shape[1]
        norm = 0.5 * (d * math.log(2 * math.pi) + self._log_det)
        return torch.logsumexp(self.weights.log() - 0.5 * sq, dim=1) - norm

    def pushforward(
        self, matrix: torch.Tensor, bias: torch.Tensor | None = None
    ) -> GaussianMixturePosterior:
        """The law of ``matrix @ x + bias`` (an invertible square matrix keeps a density)."""
        M = matrix.to(self.means)
        means = self.means @ M.T
        if bias is not None:
            means = means + bias.to(self.means)
        return GaussianMixturePosterior(means, self.weights, M @ self.covariance @ M.T)


@dataclass
class GMMProblem:
    """One benchmark instance: y = operator(x_star) + noise under a Gaussian-mixture prior.

    ``y`` has shape (1, d_y) and ``x_star`` (1, d) (batches of one, as ``operator.measure``
    returns them). ``posterior`` is over the prior's sampling space: x for a plain mixture, z for
    a ``LinearDecoderPrior`` (then ``x_star = prior.decode(z_star)``).
    """

    prior: GaussianMixture
    operator: MatrixOperator
    y: torch.Tensor
    x_star: torch.Tensor
    posterior: GaussianMixturePosterior


def mcgdiff_means(d: int) -> torch.Tensor:
    """The 25 MCGdiff means (25, d): (8 i, 8 j) tiled d/2 times; row 5 (i + 2) + (j + 2)."""
    if d <= 0 or d % 2:
        raise PriorInputError(f"mcgdiff: d must be a positive even number, got {d}")
    pairs = [(MCGDIFF_SPACING * i, MCGDIFF_SPACING * j) for i in MCGDIFF_GRID for j in MCGDIFF_GRID]
    return torch.tensor(pairs, dtype=_F64).repeat(1, d // 2)


def mcgdiff_weights(d: int) -> torch.Tensor:
    """randn(25)^2 normalised, drawn once per d (generator seeded WEIGHT_SEED_BASE + d)."""
    gen = make_generator(WEIGHT_SEED_BASE + d)
    w = torch.randn(len(MCGDIFF_GRID) ** 2, generator=gen, dtype=_F64) ** 2
    return w / w.sum()


def random_decoder(d: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """An invertible D = Q1 diag(s) Q2 (s ~ U(0.5, 2), Q orthogonal) and b ~ N(0, I), float64."""
    q1, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=_F64))
    q2, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=_F64))
    s = 0.5 + 1.5 * torch.rand(d, generator=generator, dtype=_F64)
    return q1 @ torch.diag(s) @ q2, torch.randn(d, generator=generator, dtype=_F64)


def default_gmm_prior(
    d: int = 8,
    *,
    latent: bool = False,
    dtype: torch.dtype | str = torch.float64,
    device: torch.device | str | None = None,
    latency: Sequence[float] | None = None,
) -> GaussianMixture:
    """The MCGdiff prior for dimension d, what ``solvers.priors.load("gmm", d=...)`` builds.

    It depends on d only (not on the instance seed), so a worker rebuilds it from its spec.
    ``latent=True`` wraps the same mixture in a ``LinearDecoderPrior`` whose decoder comes from
    ``random_decoder`` with a generator seeded ``DECODER_SEED_BASE + d``. ``latency=[a, b]``
    (pixel mixture only) builds a ``SimulatedLatencyMixture``: the same values, each network call
    sleeping a + b x rows seconds (a simulated GPU, for scheduling benchmarks).
    """
    means, weights = mcgdiff_means(d), mcgdiff_weights(d)
    if latency is not None:
        if latent:
            raise PriorInputError("latency simulates the pixel mixture only; drop latent=True")
        prior: GaussianMixture = SimulatedLatencyMixture(means, weights, latency)
    elif latent:
        decoder, bias = random_decoder(d, make_generator(DECODER_SEED_BASE + d))
        prior = LinearDecoderPrior(means, weights, decoder, bias)
    else:
        prior = GaussianMixture(means, weights)
    return prior.to(device=device, dtype=_resolve_dtype(dtype))


def mcgdiff_problem(
    d: int,
    d_y: int,
    seed: int,
    *,
    latent: bool = False,
    dtype: torch.dtype | str = torch.float64,
    device: torch.device | str | None = None,
) -> GMMProblem:
    """The MCGdiff benchmark instance ``seed`` for dimensions (d, d_y).

    Recipe (docs/gmm_benchmark.md): the prior ``default_gmm_prior(d)`` (25 unit-covariance
    components at ``mcgdiff_means(d)`` with ``mcgdiff_weights(d)``); then, from a CPU generator
    seeded ``seed`` and in this order: A0 ~ N(0, 1) (d_y, d) with SVD U S V^T, s = U(0, 1)^d_y
    sorted in decreasing order (the SVD's order), A = U diag(s) V^T[:d_y]; sigma_y =
    U(0, 1) max(s); x_star from the prior; y = A x_star + sigma_y eps. With ``latent=True`` the
    prior is ``default_gmm_prior(d, latent=True)``, the prior draw is z_star and
    x_star = decode(z_star): A, sigma_y, z_star and eps equal those of the plain instance.
    Everything is built in float64 and then cast to ``dtype``/``device``; the posterior is exact
    for the cast operator and y.
    """
    if d_y <= 0 or d_y > d:
        raise PriorInputError(f"mcgdiff: d_y must lie in [1, d] = [1, {d}], got {d_y}")
    prior = default_gmm_prior(d, latent=latent)
    gen = make_generator(seed)
    U, _, Vh = torch.linalg.svd(torch.randn(d_y, d, generator=gen, dtype=_F64), full_matrices=False)
    s = torch.rand(d_y, generator=gen, dtype=_F64).sort(descending=True).values
    A = U @ torch.diag(s) @ Vh
    sigma_y = float(torch.rand((), generator=gen, dtype=_F64)) * float(s[0])
    x_star = prior.sample(1, gen)
    eps = torch.randn(1, d_y, generator=gen, dtype=_F64)
    if latent:
        x_star = prior.decode(x_star)
    y = x_star @ A.T + sigma_y * eps
    dtype = _resolve_dtype(dtype)
    prior = prior.to(device=device, dtype=dtype)
    operator = build_operator("matrix", A=A.to(device=device, dtype=dtype), sigma=sigma_y)
    y = y.to(device=device, dtype=dtype)
    return GMMProblem(
        prior=prior,
        operator=operator,
        y=y,
        x_star=x_star.to(device=device, dtype=dtype),
        posterior=prior.posterior(operator, y),
    )


# -- helpers ------------------------------------------------------------------------------------
def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating torch dtype from itself or its name ("float32", "torch.float64")."""
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise PriorInputError(f"dtype must name a floating-point torch dtype, got {dtype!r}")
    return resolved


def _linear_gaussian(
    operator: Operator, y: torch.Tensor, shape: tuple[int, ...], who: str
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """A (float64), sigma_y and y (d_y,) float64 of a ``matrix`` operator, or a clear error."""
    if not isinstance(operator, MatrixOperator):
        raise PriorInputError(
            f"{who}.posterior is exact only for a linear `matrix` operator "
            f"(operators.build('matrix', A=..., sigma=...)); got {type(operator).__name__}"
        )
    if operator.sigma == 0.0:
        raise PriorInputError(
            f"{who}.posterior needs measurement noise sigma > 0 (with sigma = 0 the posterior is "
            "degenerate on {x : A x = y}); build the operator with sigma > 0"
        )
    if operator.input_shape != shape:
        raise PriorInputError(
            f"{who}.posterior: the operator acts on shape {operator.input_shape} but the prior's "
            f"images have shape {shape}"
        )
    y = operator.check_measurement(y)
    if y.shape[0] != 1:
        raise PriorInputError(
            f"{who}.posterior takes one measurement, shape (d_y,) or (1, d_y); got {tuple(y.shape)}"
        )
    return operator.A.to(_F64), operator.sigma, y[0].to(operator.A.device, _F64)


def _mixture_posterior(
    means: torch.Tensor,
    weights: torch.Tensor,
    std: float,
    A: torch.Tensor,  # noqa: N803 (A as in papers)
    sigma_y: float,
    y: torch.Tensor,
) -> GaussianMixturePosterior:
    """Bayes for prior sum_i w_i N(mu_i, std^2 I) and y = A x + sigma_y eps (all float64).

    S = (I / std^2 + A^T A / sigma_y^2)^-1, m_i = S (mu_i / std^2 + A^T y / sigma_y^2),
    w~_i ∝ w_i N(y; A mu_i, sigma_y^2 I + std^2 A A^T) (docs/gmm_benchmark.md with std = 1).
    """
    means, weights = means.to(A.device), weights.to(A.device)
    d, d_y = A.shape[1], A.shape[0]
    v, s2 = sigma_y**2, std**2
    precision = torch.eye(d, dtype=_F64, device=A.device) / s2 + A.T @ A / v
    S = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    post_means = (means / s2 + (A.T @ y) / v) @ S  # S is symmetric
    C = v * torch.eye(d_y, dtype=_F64, device=A.device) + s2 * A @ A.T
    L = torch.linalg.cholesky(C)
    white = torch.linalg.solve_triangular(L, (y - means @ A.T).T, upper=False)  # (d_y, K)
    log_evidence = -0.5 * white.pow(2).sum(0) - L.diagonal().log().sum()
    log_w = weights.log() + log_evidence
    return GaussianMixturePosterior(post_means, torch.softmax(log_w, dim=0), S)


def _sample_mixture(
    means: torch.Tensor,
    weights: torch.Tensor,
    scale: torch.Tensor | float,
    n: int,
    generator: torch.Generator | int,
) -> torch.Tensor:
    """n draws of sum_i w_i N(m_i, scale scale^T) (or scale^2 I for a number), float64.

    Drawn on the generator's device and then moved to the means' device, so a seed gives the
    same samples anywhere.
    """
    gen = make_generator(generator)
    src = gen.device
    idx = torch.multinomial(weights.to(src, _F64), n, replacement=True, generator=gen)
    noise = torch.randn(n, means.shape[1], generator=gen, device=src, dtype=_F64)
    noise = noise @ scale.to(src, _F64).T if isinstance(scale, torch.Tensor) else scale * noise
    x = means.to(src, _F64)[idx] + noise
    return x.to(means.device)
