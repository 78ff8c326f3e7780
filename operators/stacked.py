"""Rows of several problems in one batch: each row uses its own problem's operator.

A solver batch may hold the particles of several images; where the operators of those images
differ in their random parts (a per-image random mask or motion kernel), ``stack_rows`` makes
one operator whose row r applies the operator of problem ``row_part[r]``. Each problem's rows
go through that problem's operator as one sub-batch, so a row's value is what the problem's own
operator gives on the same rows (docs/operators.md). The layout (which row belongs to which
problem) is structure, like a shape; the random parts stay in the problems' operators, whose
buffers make up the ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from operators.base import LinearOperator, Operator, OperatorInputError


def stack_rows(operators: Sequence[Operator], rows_per_problem: int | Sequence[int]) -> Operator:
    """One operator for a batch of ``len(operators)`` problems laid out one after the other.

    ``rows_per_problem``: the rows (particles) of every problem, or a count per problem; problem
    p owns the next ``rows_per_problem[p]`` rows. The operators must agree in kind, shapes and
    noise level. One operator shared by every problem is returned as it is.
    """
    parts = list(operators)
    if not parts:
        raise OperatorInputError("stack_rows: give at least one operator")
    if isinstance(rows_per_problem, int) and not isinstance(rows_per_problem, bool):
        counts = [rows_per_problem] * len(parts)
    else:
        counts = [int(c) for c in rows_per_problem]
    if len(counts) != len(parts) or any(c < 1 for c in counts):
        raise OperatorInputError(
            f"stack_rows: rows_per_problem must be a positive count, or one per operator "
            f"({len(parts)}), got {rows_per_problem!r}"
        )
    if all(part is parts[0] for part in parts):
        return parts[0]
    row_part = [p for p, count in enumerate(counts) for _ in range(count)]
    return stacked(parts, row_part)


def stacked(parts: Sequence[Operator], row_part: Sequence[int]) -> StackedOperator:
    """A ``StackedOperator`` (its linear variant when every part is linear)."""
    linear = all(isinstance(part, LinearOperator) for part in parts)
    return (StackedLinearOperator if linear else StackedOperator)(parts, row_part)


class StackedOperator(Operator):
    """Row r applies ``parts[row_part[r]]``; acts on batches of exactly ``row_count`` rows."""

    def __init__(self, parts: Sequence[Operator], row_part: Sequence[int]) -> None:
        parts = list(parts)
        if not parts or not all(isinstance(part, Operator) for part in parts):
            raise OperatorInputError("stack_rows: the problems' operators must be Operators")
        first = parts[0]
        for part in parts[1:]:
            if (part.name, part.input_shape, part.output_shape, part.sigma) != (
                first.name,
                first.input_shape,
                first.output_shape,
                first.sigma,
            ):
                raise OperatorInputError(
                    f"stack_rows: every problem's operator must have the same name, shapes and "
                    f"sigma; got {first.name} {first.input_shape}->{first.output_shape} "
                    f"sigma={first.sigma} and {part.name} {part.input_shape}->"
                    f"{part.output_shape} sigma={part.sigma}"
                )
        if any(isinstance(part, StackedOperator) for part in parts):
            raise OperatorInputError("stack_rows: stack the problems' own operators, not stacks")
        super().__init__(first.input_shape, first.sigma)
        self.name = first.name
        self.output_shape = first.output_shape
        self.parts = nn.ModuleList(parts)
        self.row_part = tuple(int(p) for p in row_part)
        if not self.row_part or not all(0 <= p < len(parts) for p in self.row_part):
            raise OperatorInputError(
                f"stack_rows: every row must name one of the {len(parts)} problems, got "
                f"{list(self.row_part)}"
            )
        self.row_count = len(self.row_part)
        groups: dict[int, list[int]] = {}
        for row, p in enumerate(self.row_part):
            groups.setdefault(p, []).append(row)
        self._groups = sorted(groups.items())
        order = [row for _, rows in self._groups for row in rows]
        # rows in problem order need no gather afterwards (the usual contiguous layout)
        self._inverse = None if order == list(range(self.row_count)) else _inverse(order)
        # per device: the row indices of each problem and the gather back to row order
        self._on_device: dict[torch.device, tuple[list[torch.Tensor], torch.Tensor | None]] = {}

    # -- rows ------------------------------------------------------------------------------------
    def take_rows(self, index: Sequence[int] | torch.Tensor) -> Operator:
        """The operator of rows ``index`` (indices or a boolean mask), in that order: itself for
        all rows in order, the problem's own operator when they all belong to one problem."""
        if isinstance(index, torch.Tensor):
            index = index.nonzero().flatten() if index.dtype == torch.bool else index.flatten()
            index = index.tolist()
        index = [int(i) for i in index]
        if index == list(range(self.row_count)):
            return self
        chosen = [self.row_part[i] for i in index]
        if not chosen:
            raise OperatorInputError(f"{self.name}: take_rows needs at least one row")
        if all(p == chosen[0] for p in chosen):
            return self.parts[chosen[0]]
        return stacked(list(self.parts), chosen)

    def row_groups(self) -> list[tuple[Operator, torch.Tensor | None]]:
        index, _ = self._layout(_module_device(self))
        return [(self.parts[p], rows) for (p, _), rows in zip(self._groups, index, strict=True)]

    def _layout(self, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        if device not in self._on_device:
            index = [
                torch.tensor(rows, dtype=torch.long, device=device) for _, rows in self._groups
            ]
            inverse = None if self._inverse is None else self._inverse.to(device)
            self._on_device[device] = (index, inverse)
        return self._on_device[device]

    def _check_rows(self, t: torch.Tensor, what: str) -> None:
        if t.shape[0] != self.row_count:
            raise OperatorInputError(
                f"{self.name}: this operator holds the rows of {len(self.parts)} problems and "
                f"acts on batches of exactly {self.row_count} rows; {what} has {t.shape[0]} "
                "(use take_rows(index) for some of the rows)"
            )

    def _by_problem(self, t: torch.Tensor, apply: str) -> torch.Tensor:
        """``getattr(part, apply)`` on each problem's rows, reassembled in row order."""
        index, inverse = self._layout(t.device)
        values = [
            getattr(self.parts[p], apply)(t[rows])
            for (p, _), rows in zip(self._groups, index, strict=True)
        ]
        out = torch.cat(values)
        return out if inverse is None else out[inverse]

    # -- the contract ----------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_rows(x, "x")
        return self._by_problem(x, "_forward")

    def measure(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Each problem's ``measure`` on its rows, problem after problem, all drawing from
        ``generator``: as measuring the problems in turn with their own operators."""
        self.check_input(x)
        self._check_rows(x, "x")
        index, inverse = self._layout(x.device)
        values = [
            self.parts[p].measure(x[rows], generator)
            for (p, _), rows in zip(self._groups, index, strict=True)
        ]
        out = torch.cat(values)
        return out if inverse is None else out[inverse]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, problems={len(self.parts)}, rows={self.row_count}"


class StackedLinearOperator(StackedOperator, LinearOperator):
    """A ``StackedOperator`` of linear operators: adds the row-wise adjoint."""

    def _adjoint(self, v: torch.Tensor) -> torch.Tensor:
        self._check_rows(v, "v")
        return self._by_problem(v, "_adjoint")


def _inverse(order: list[int]) -> torch.Tensor:
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return inverse


def _module_device(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
