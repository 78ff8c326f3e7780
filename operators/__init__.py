"""Forward operators A, measurement noise and matrix-free linear algebra (docs/operators.md).

``operators.build(name, **params)`` makes an operator; ``operators.available()`` lists names;
``operators.stack_rows(per_problem, rows)`` serves a batch holding the rows of several problems.
Defaults follow the DAPS/ReSample protocol (docs/operators.md): images of shape
(3, 256, 256) in [-1, 1], noise sigma 0.05.
"""

from operators.base import LinearOperator, Operator, OperatorInputError
from operators.registry import available, build, check_params, operator_class, parameters
from operators.stacked import StackedOperator, stack_rows

__all__ = [
    "LinearOperator",
    "Operator",
    "OperatorInputError",
    "StackedOperator",
    "available",
    "build",
    "check_params",
    "operator_class",
    "parameters",
    "stack_rows",
]
