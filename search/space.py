"""Search spaces: typed dimensions, built from declared ranges, turned into Optuna suggestions.

A space maps parameter names to dimensions: ``Float`` and ``Int`` (with optional log scale),
``Categorical`` and ``Fixed``. ``space_from_ranges`` builds one from declared ranges (objects
with ``.low``/``.high``/``.log`` such as ``solvers.config.Range``, or tuples) and option
tuples, with some fields fixed or narrowed. ``DefineByRun`` hands the space to Optuna as a
define-by-run function: Optuna samples the searched dimensions and ``Fixed`` values pass through
as constants, so they reach the objective, the trial table and MLflow without being searched.
Nothing here imports Optuna: the trial object is duck-typed.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any, Protocol

# Values Optuna can store for a categorical choice.
_CHOICE_TYPES = (type(None), bool, int, float, str)


class SpaceError(ValueError):
    """An invalid space or space edit; the message names the field and its declared range."""


@dataclass(frozen=True)
class _Interval:
    """[low, high] (inclusive), sampled uniformly or on a log scale: what Float and Int share."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        _check_bounds(self.low, self.high, self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a value of the dimension's kind inside the interval."""
        return self._of_kind(value) and self.low <= value <= self.high

    def describe(self) -> str:
        """The interval as text, for error messages."""
        return self._bounds() + (" (log)" if self.log else "")

    def _of_kind(self, value: Any) -> bool:
        return _is_number(value)

    def _bounds(self) -> str:
        return f"[{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Float(_Interval):
    """A real parameter in [low, high], sampled uniformly or on a log scale."""


@dataclass(frozen=True)
class Int(_Interval):
    """An integer parameter in [low, high] (inclusive), optionally on a log scale."""

    low: int
    high: int

    def __post_init__(self) -> None:
        if not (_is_integral(self.low) and _is_integral(self.high)):
            raise SpaceError(f"Int bounds must be integers, got [{self.low}, {self.high}]")
        super().__post_init__()
        object.__setattr__(self, "low", int(self.low))
        object.__setattr__(self, "high", int(self.high))

    def _of_kind(self, value: Any) -> bool:
        return _is_integral(value)

    def _bounds(self) -> str:
        return f"integers [{self.low}, {self.high}]"


@dataclass(frozen=True)
class Categorical:
    """One of a few options (None, bool, int, float or str: what Optuna can store)."""

    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        choices = tuple(self.choices)
        if not choices:
            raise SpaceError("Categorical needs at least one choice")
        bad = [c for c in choices if not isinstance(c, _CHOICE_TYPES)]
        if bad:
            raise SpaceError(f"Categorical choices must be None/bool/int/float/str, got {bad!r}")
        object.__setattr__(self, "choices", choices)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the choices."""
        return value in self.choices

    def describe(self) -> str:
        """The options as text, for error messages."""
        return "one of " + ", ".join(map(repr, self.choices))


@dataclass(frozen=True)
class Fixed:
    """A constant: passed to the objective and recorded, never searched."""

    value: Any

    def contains(self, value: Any) -> bool:
        """Whether ``value`` equals the constant."""
        return value == self.value

    def describe(self) -> str:
        """The constant as text, for error messages."""
        return f"fixed at {self.value!r}"


Dimension = Float | Int | Categorical | Fixed
Space = Mapping[str, Dimension]


class RangeLike(Protocol):
    """A declared numeric range (``solvers.config.Range`` fits)."""

    low: float
    high: float


class SuggestTrial(Protocol):
    """The part of ``optuna.Trial`` that a define-by-run function uses."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        """Sample a float."""

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        """Sample an integer."""

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        """Sample a choice."""


def space_from_ranges(
    ranges: Mapping[str, Any],
    fix: Mapping[str, Any] | None = None,
    narrow: Mapping[str, Any] | None = None,
    integers: Collection[str] = (),
) -> dict[str, Dimension]:
    """A space from declared ranges, with some fields fixed and others narrowed.

    ``ranges`` values may be a ``Dimension``; an object with ``.low``, ``.high`` (and optionally
    ``.log``) such as ``solvers.config.Range``; a numeric tuple ``(low, high)`` or ``(low, high,
    log)``; or a tuple of options (categorical; numeric options need an explicit
    ``Categorical``). Names in ``integers`` become ``Int`` dimensions. ``fix`` maps fields to a
    value inside their declared range; ``narrow`` maps numeric fields to a sub-interval
    ``(low, high)`` or ``(low, high, log)`` and categorical fields to a subset of their options.
    Anything outside the declared range raises ``SpaceError`` naming the field and the range.
    """
    fix, narrow = dict(fix or {}), dict(narrow or {})
    declared = {name: _dimension(name, spec, name in integers) for name, spec in ranges.items()}
    _check_names(declared, fix, "fix")
    _check_names(declared, narrow, "narrow")
    _check_names(declared, dict.fromkeys(integers), "integers")
    both = sorted(set(fix) & set(narrow))
    if both:
        raise SpaceError(f"field(s) {', '.join(both)} are both fixed and narrowed; choose one")
    space = dict(declared)
    for name, value in fix.items():
        if not declared[name].contains(value):
            raise SpaceError(
                f"cannot fix {name} = {value!r}: outside its declared range "
                f"{declared[name].describe()}"
            )
        space[name] = Fixed(value)
    for name, sub in narrow.items():
        space[name] = _narrowed(name, declared[name], sub)
    return space


def validate_point(space: Space, point: Mapping[str, Any]) -> dict[str, Any]:
    """A starting point checked against ``space``, without its fixed entries (Optuna samples
    only the searched dimensions; unspecified ones are sampled)."""
    unknown = sorted(set(point) - set(space))
    if unknown:
        raise SpaceError(f"point {dict(point)} has unknown field(s) {', '.join(unknown)}")
    searched = {}
    for name, value in point.items():
        if not space[name].contains(value):
            raise SpaceError(f"point value {name} = {value!r} is outside {space[name].describe()}")
        if not isinstance(space[name], Fixed):
            searched[name] = value
    return searched


@dataclass(frozen=True)
class DefineByRun:
    """The space as an Optuna define-by-run function (picklable, for Tune's saved state)."""

    space: Mapping[str, Dimension]

    def __call__(self, trial: SuggestTrial) -> dict[str, Any]:
        """Suggest every searched dimension on ``trial``; return the fixed values."""
        constants = {}
        for name, dim in self.space.items():
            if isinstance(dim, Float):
                trial.suggest_float(name, dim.low, dim.high, log=dim.log)
            elif isinstance(dim, Int):
                trial.suggest_int(name, dim.low, dim.high, log=dim.log)
            elif isinstance(dim, Categorical):
                trial.suggest_categorical(name, dim.choices)
            else:
                constants[name] = dim.value
        return constants


def check_space(space: Mapping[str, Any]) -> dict[str, Dimension]:
    """``space`` as a dict after checking that every value is a ``Dimension``."""
    bad = sorted(name for name, dim in space.items() if not isinstance(dim, Dimension))
    if bad:
        raise SpaceError(
            f"space field(s) {', '.join(bad)} are not Float/Int/Categorical/Fixed; build the "
            "space with search.space_from_ranges or wrap constants in search.Fixed"
        )
    if all(isinstance(dim, Fixed) for dim in space.values()):
        raise SpaceError("the space has nothing to search: every field is Fixed")
    return dict(space)


def _dimension(name: str, spec: Any, integer: bool) -> Dimension:
    """The declared dimension of one field."""
    if isinstance(spec, Dimension):
        return spec
    if hasattr(spec, "low") and hasattr(spec, "high"):
        bounds = (spec.low, spec.high, bool(getattr(spec, "log", False)))
    elif _is_numeric_range(spec):
        bounds = (spec[0], spec[1], bool(spec[2]) if len(spec) == 3 else False)
    elif isinstance(spec, tuple | list):
        return _build(name, Categorical, tuple(spec))
    else:
        raise SpaceError(
            f"field {name}: cannot read a range from {spec!r}; give (low, high[, log]), an "
            "object with .low/.high/.log, a tuple of options or a search dimension"
        )
    return _build(name, Int if integer else Float, *bounds)


def _narrowed(name: str, declared: Dimension, sub: Any) -> Dimension:
    """``declared`` narrowed to ``sub``; an error names the field if ``sub`` leaves it."""
    if isinstance(declared, Categorical):
        options = tuple(sub) if isinstance(sub, tuple | list) else (sub,)
        outside = [o for o in options if o not in declared.choices]
        if outside:
            raise SpaceError(
                f"cannot narrow {name} to {options!r}: {outside!r} not in its declared options "
                f"{declared.describe()}"
            )
        return _build(name, Categorical, options)
    if isinstance(declared, Fixed) or not _is_numeric_range(sub):
        raise SpaceError(
            f"cannot narrow {name} ({declared.describe()}) with {sub!r}; give (low, high[, log])"
        )
    log = bool(sub[2]) if len(sub) == 3 else declared.log
    narrowed = _build(name, type(declared), sub[0], sub[1], log)
    if not (declared.contains(narrowed.low) and declared.contains(narrowed.high)):
        raise SpaceError(
            f"cannot narrow {name} to [{narrowed.low:g}, {narrowed.high:g}]: outside its declared "
            f"range {declared.describe()}"
        )
    return narrowed


def _build(name: str, cls: type, *args: Any) -> Dimension:
    """``cls(*args)`` with errors prefixed by the field name."""
    try:
        return cls(*args)
    except SpaceError as err:
        raise SpaceError(f"field {name}: {err}") from None


def _check_names(declared: Mapping[str, Any], edits: Mapping[str, Any], what: str) -> None:
    """Raise if ``edits`` names fields that are not declared."""
    unknown = sorted(set(edits) - set(declared))
    if unknown:
        raise SpaceError(
            f"{what}: unknown field(s) {', '.join(unknown)}; declared: "
            f"{', '.join(sorted(declared))}"
        )


def _check_bounds(low: Any, high: Any, log: bool) -> None:
    """Finite numeric bounds with low <= high, positive on a log scale."""
    if not all(_is_number(b) and math.isfinite(b) for b in (low, high)):
        raise SpaceError(f"bounds must be finite numbers, got [{low}, {high}]")
    if low > high:
        raise SpaceError(f"low must not exceed high, got [{low}, {high}]")
    if log and low <= 0:
        raise SpaceError(f"a log-scale range needs low > 0, got [{low}, {high}]")


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_integral(value: Any) -> bool:
    return _is_number(value) and float(value).is_integer()


def _is_numeric_range(spec: Any) -> bool:
    """``(low, high)`` or ``(low, high, log)`` with numeric bounds and a bool log flag."""
    return (
        isinstance(spec, tuple | list)
        and len(spec) in (2, 3)
        and _is_number(spec[0])
        and _is_number(spec[1])
        and (len(spec) == 2 or isinstance(spec[2], bool))
    )
