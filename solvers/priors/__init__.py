"""Prior (denoiser) adapters behind one EDM-form contract (docs/priors.md).

``load(spec)`` builds a prior; ``resolve(spec)`` checks a spec without reading weights.
"""

from solvers.priors.base import Prior, PriorInputError, PriorLoadError, PriorSpecError
from solvers.priors.loading import PriorSource, available, load, resolve

__all__ = [
    "Prior",
    "PriorInputError",
    "PriorLoadError",
    "PriorSource",
    "PriorSpecError",
    "available",
    "load",
    "resolve",
]
