"""Prior (denoiser) adapters behind one EDM-form contract (DESIGN.md, "Prior")."""

from solvers.priors.base import Prior, PriorInputError

__all__ = ["Prior", "PriorInputError"]
