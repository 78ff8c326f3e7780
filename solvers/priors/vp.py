"""VP/DDPM networks in the EDM denoiser form (Karras et al. 2022, Table 1 "VP" column).

A DDPM network sees x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n at an integer step t. The same
noise level in VE form is sigma_t = sqrt((1 - abar_t) / abar_t), and x_t = x / sqrt(1 + sigma^2)
for x = x0 + sigma n. Given sigma we find the (fractional) step t by interpolating
log sigma_t over the model's own alphas_cumprod table, feed x / sqrt(1 + sigma^2), and turn the
prediction (epsilon, v or sample) into E[x0 | x].
"""

from __future__ import annotations

import torch
from torch import nn

from solvers.priors.base import Prior, PriorInputError, sigma_view

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_MODES = ("continuous", "nearest")


class VPDenoiser(Prior):
    """Wraps ``network(x_t, t) -> prediction`` trained on a VP schedule ``alphas_cumprod``."""

    def __init__(
        self,
        network: nn.Module,
        alphas_cumprod: torch.Tensor,
        shape: tuple[int, ...],
        prediction_type: str = "epsilon",
        timestep_mode: str = "continuous",
        sigma_max: float | None = None,
    ) -> None:
        """``sigma_max`` caps the noise range the prior accepts (default: the table's top),
        for networks that are unreliable at the highest noise levels of their schedule."""
        if prediction_type not in PREDICTION_TYPES:
            raise PriorInputError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
            )
        if timestep_mode not in TIMESTEP_MODES:
            raise PriorInputError(
                f"timestep_mode must be one of {TIMESTEP_MODES}, got {timestep_mode!r}"
            )
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if abar.numel() < 2 or not bool(((abar > 0) & (abar < 1)).all()):
            raise PriorInputError("alphas_cumprod must hold at least 2 values in (0, 1)")
        log_sigmas = 0.5 * torch.log((1 - abar) / abar)
        if not bool((log_sigmas[1:] > log_sigmas[:-1]).all()):
            raise PriorInputError("alphas_cumprod must decrease strictly with the timestep")
        table_max = float(log_sigmas[-1].exp())
        if sigma_max is not None and not float(log_sigmas[0].exp()) < sigma_max <= table_max:
            raise PriorInputError(
                f"sigma_max must lie in ({float(log_sigmas[0].exp()):g}, {table_max:g}], "
                f"the model's noise range; got {sigma_max}"
            )
        super().__init__(
            shape, float(log_sigmas[0].exp()), table_max if sigma_max is None else sigma_max
        )
        self.network = network
        self.prediction_type = prediction_type
        self.timestep_mode = timestep_mode
        self.register_buffer("log_sigmas", log_sigmas, persistent=False)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional DDPM step whose noise level is ``sigma`` (float64, shape (B,))."""
        log_sigma = sigma.to(torch.float64).log().clamp(self.log_sigmas[0], self.log_sigmas[-1])
        upper = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, len(self.log_sigmas) - 1)
        lo, hi = self.log_sigmas[upper - 1], self.log_sigmas[upper]
        t = (upper - 1) + (log_sigma - lo) / (hi - lo)
        return t.round() if self.timestep_mode == "nearest" else t

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma_view(sigma, x.dim())
        scale = 1.0 / torch.sqrt(1.0 + s**2)  # sqrt(abar)
        t = self.timestep(sigma).to(x.dtype)
        out = self.network(x * scale, t)
        if self.prediction_type == "epsilon":
            return x - s * out
        if self.prediction_type == "sample":
            return out
        # v = sqrt(abar) eps - sqrt(1 - abar) x0  =>  x0 = sqrt(abar) x_t - sqrt(1 - abar) v
        return scale * (x * scale) - (s * scale) * out
