"""Forward operators A, measurement noise and matrix-free linear algebra (docs/operators.md).

``operators.build(name, **params)`` makes an operator; ``operators.available()`` lists names.
Defaults follow the DAPS/ReSample protocol (docs/operators.md): images of shape
(3, 256, 256) in [-1, 1], noise sigma 0.05.
"""

from operators.base import LinearOperator, Operator, OperatorInputError
from operators.registry import available, build, check_params, operator_class

__all__ = [
    "LinearOperator",
    "Operator",
    "OperatorInputError",
    "available",
    "build",
    "check_params",
    "operator_class",
]
