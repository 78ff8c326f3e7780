"""Operator registry: ``build(name, **params)`` and ``available()``."""

from __future__ import annotations

import importlib
from typing import Any

from operators.base import Operator, OperatorInputError

# name -> "module:Class"; modules are imported on first use so that `import operators` stays light.
_REGISTRY: dict[str, str] = {
    "identity": "operators.pointwise:Identity",
    "hdr": "operators.pointwise:HighDynamicRange",
    "inpaint_box": "operators.masks:BoxInpainting",
    "inpaint_random": "operators.masks:RandomInpainting",
    "super_resolution": "operators.resize:SuperResolution",
    "gaussian_blur": "operators.convolution:GaussianBlur",
    "motion_blur": "operators.convolution:MotionBlur",
    "phase_retrieval": "operators.phase_retrieval:PhaseRetrieval",
    "nonlinear_blur": "operators.nonlinear_blur:NonlinearBlur",
    "matrix": "operators.matrix:MatrixOperator",
}


def available() -> list[str]:
    """Names accepted by ``build``."""
    return sorted(_REGISTRY)


def operator_class(name: str) -> type[Operator]:
    """The class behind a registered name."""
    if name not in _REGISTRY:
        raise OperatorInputError(
            f"unknown operator {name!r}; available operators: {', '.join(available())}"
        )
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build(name: str, **params: Any) -> Operator:
    """Build the operator ``name`` with keyword parameters (``shape``, ``sigma``, ...).

    The name and parameters are kept as ``operator.build_spec`` so that workers elsewhere can
    rebuild the same operator (its random parts then come from its ``state_dict`` buffers).
    """
    cls = operator_class(name)
    try:
        operator = cls(**params)
    except TypeError as err:
        raise OperatorInputError(f"operator {name!r}: {err}") from err
    operator.build_spec = (name, dict(params))
    return operator
