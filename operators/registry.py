"""Operator registry: ``build(name, **params)`` and ``available()``."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
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


def parameters(name: str) -> list[str]:
    """The build parameters operator ``name`` accepts."""
    signature = inspect.signature(operator_class(name).__init__)
    return [p for p in signature.parameters if p != "self"]


def check_params(name: str, params: Mapping[str, Any], filled: tuple[str, ...] = ()) -> None:
    """Refuse unknown or missing build parameters of operator ``name`` without building it,
    naming the parameters it accepts (so a config fails before any work); ``filled`` names
    parameters the caller supplies later (e.g. ``shape`` from the data)."""
    signature = inspect.signature(operator_class(name).__init__)
    accepted = [p for p in signature.parameters.values() if p.name != "self"]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted):
        return
    names = [p.name for p in accepted]
    unknown = sorted(set(params) - set(names))
    missing = [
        p.name
        for p in accepted
        if p.default is inspect.Parameter.empty and p.name not in {*params, *filled}
    ]
    if unknown or missing:
        problem = (
            f"unknown parameter(s) {', '.join(unknown)}"
            if unknown
            else f"missing parameter(s) {', '.join(missing)}"
        )
        raise OperatorInputError(f"operator {name!r}: {problem}; parameters: {', '.join(names)}")


def build(name: str, **params: Any) -> Operator:
    """Build the operator ``name`` with keyword parameters (``shape``, ``sigma``, ...).

    The name and parameters are kept as ``operator.build_spec`` so that workers elsewhere can
    rebuild the same operator (its random parts then come from its ``state_dict`` buffers).
    Names, parameters and defaults: docs/operators.md.

    Example (CPU, milliseconds):

        >>> import torch, operators
        >>> op = operators.build("super_resolution", shape=(1, 8, 8), factor=2, sigma=0.0)
        >>> op.output_shape
        (1, 4, 4)
        >>> x = torch.zeros(2, 1, 8, 8)
        >>> y = op.measure(x, torch.Generator().manual_seed(0))
        >>> tuple(y.shape), op.loss(x, y).tolist()
        ((2, 1, 4, 4), [0.0, 0.0])
        >>> op.build_spec
        ('super_resolution', {'shape': (1, 8, 8), 'factor': 2, 'sigma': 0.0})
    """
    cls = operator_class(name)
    try:
        operator = cls(**params)
    except TypeError as err:
        raise OperatorInputError(f"operator {name!r}: {err}") from err
    operator.build_spec = (name, dict(params))
    return operator
