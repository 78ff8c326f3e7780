"""Prior (denoiser) adapters behind one EDM-form contract (DESIGN.md, "Prior")."""

from solvers.priors.base import Prior, PriorInputError
from solvers.priors.loading import PriorLoadError, available, load

__all__ = ["Prior", "PriorInputError", "PriorLoadError", "available", "load"]
