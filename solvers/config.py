"""Typed solver hyperparameters: every field carries its default, search range and source.

``hyper(default, low, high, log=False, source=...)`` declares a field; ``SolverConfig``
validates ranges on construction and exposes ``search_space()`` for the search layer, so that
each hyperparameter is declared in exactly one place (docs/solvers/index.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple


class SolverConfigError(ValueError):
    """A hyperparameter outside its allowed values; the message names the field and range."""


@dataclass(frozen=True)
class Range:
    """Allowed and searched interval of a numeric hyperparameter."""

    low: float
    high: float
    log: bool = False
    source: str = ""


def hyper(default: Any, low: float, high: float, log: bool = False, source: str = "") -> Any:
    """A numeric dataclass field with its range (inclusive) and where its default comes from."""
    return field(default=default, metadata={"range": Range(low, high, log, source)})


def choice(default: str, options: tuple[str, ...], source: str = "") -> Any:
    """A categorical dataclass field."""
    return field(default=default, metadata={"choices": options, "source": source})


class Order(NamedTuple):
    """Two fields whose values must be ordered: ``low <= high``, or ``low < high`` if strict."""

    low: str
    high: str
    strict: bool = False
    why: str = ""


@dataclass(frozen=True)
class SolverConfig:
    """Base of every solver's config: validated on construction.

    ``orders`` lists the pairs of fields that must be ordered; a subclass extends its parent's.
    """

    orders: ClassVar[tuple[Order, ...]] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if "range" in f.metadata:
                r: Range = f.metadata["range"]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise SolverConfigError(
                        f"{type(self).__name__}.{f.name} must be a number in "
                        f"[{r.low:g}, {r.high:g}], got {value!r}"
                    )
                if not r.low <= value <= r.high:
                    raise SolverConfigError(
                        f"{type(self).__name__}.{f.name} = {value!r} is out of range; allowed "
                        f"[{r.low:g}, {r.high:g}]"
                    )
                if isinstance(f.default, int) and not isinstance(f.default, bool):
                    if int(value) != value:
                        raise SolverConfigError(
                            f"{type(self).__name__}.{f.name} must be an integer, got {value!r}"
                        )
                    object.__setattr__(self, f.name, int(value))
            elif "choices" in f.metadata and value not in f.metadata["choices"]:
                raise SolverConfigError(
                    f"{type(self).__name__}.{f.name} = {value!r}; allowed: "
                    f"{', '.join(map(repr, f.metadata['choices']))}"
                )
        for order in self.orders:
            low, high = getattr(self, order.low), getattr(self, order.high)
            if low > high or (order.strict and low == high):
                relation = "must be below" if order.strict else "must not exceed"
                why = f": {order.why}" if order.why else ""
                raise SolverConfigError(
                    f"{type(self).__name__}.{order.low} = {low:g} {relation} "
                    f"{order.high} = {high:g}{why}"
                )

    @classmethod
    def from_overrides(cls, base: SolverConfig | None = None, **overrides: Any) -> SolverConfig:
        """A config from ``base`` (or the defaults) with ``overrides``; unknown names fail."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise SolverConfigError(
                f"{cls.__name__} has no field(s) {', '.join(unknown)}; fields: "
                f"{', '.join(sorted(names))}"
            )
        values = dataclasses.asdict(base) if base is not None else {}
        return cls(**{**values, **overrides})

    @classmethod
    def search_space(cls) -> dict[str, Range | tuple[str, ...]]:
        """Declared ranges of the numeric fields and options of the categorical ones."""
        space: dict[str, Range | tuple[str, ...]] = {}
        for f in dataclasses.fields(cls):
            if "range" in f.metadata:
                space[f.name] = f.metadata["range"]
            elif "choices" in f.metadata:
                space[f.name] = f.metadata["choices"]
        return space
