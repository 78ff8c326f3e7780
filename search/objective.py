"""The objective contract and its wrapper as a Ray Tune function trainable.

An objective is ``objective(config, report) -> dict | None``. It calls ``report(metrics)`` with
intermediate metrics while it works (each report holds the searched metric and, optionally, an
integer fidelity ``step``; without one the reports are counted 1, 2, ...), so that ASHA can
compare trials at equal steps and stop the poor ones. What it returns is merged into its last
report and reported once more as the final result, marked with ``FINAL_KEY`` at the same step;
a trial whose final result arrived is complete, one without it was stopped early. Scalar
tensors (``.item()``) are reported as Python numbers.

Failures are explicit and cheap. An exception in the objective, a report without the metric, or
a metric that is NaN, infinite or not a number ends the trial with a failure report: the metric
as NaN (Tune requires it in every result), ``FAILED_KEY`` with ``"Type: message"`` and
``TRACEBACK_KEY`` with the traceback, at the last step reached (a step ASHA has already seen, so
the scheduler ignores it). The searcher tells Optuna FAIL and the study goes on. The trial's
process is kept for the next trial: letting the exception reach Tune would mark the trial ERROR
but kill the process, and a new Tune trial process cost about 20 s on the loaded 2-core build
machine (Tune gives its trial actors a runtime env, so they never come from Ray's pool of
prestarted workers), plus re-importing torch and reloading models on real objectives. A NaN must
never reach Optuna's ``tell``: it would leave the trial RUNNING forever.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Callable, Mapping
from numbers import Real
from typing import Any

FINAL_KEY = "search_final"
FAILED_KEY = "search_failed"
TRACEBACK_KEY = "search_traceback"
TRACEBACK_LIMIT = 20_000

Report = Callable[[Mapping[str, Any]], None]
Objective = Callable[[dict[str, Any], Report], Mapping[str, Any] | None]

logger = logging.getLogger(__name__)


class ObjectiveError(RuntimeError):
    """A trial's report broke the contract (metric missing, NaN or infinite): the trial fails."""


class Reporter:
    """The ``report`` callable handed to the objective: checks each report and forwards it."""

    def __init__(self, metric: str, step_key: str, sink: Report) -> None:
        self.metric, self.step_key, self.sink = metric, step_key, sink
        self.count = 0
        self.last: dict[str, Any] | None = None

    def __call__(self, metrics: Mapping[str, Any]) -> None:
        """Report intermediate ``metrics`` (must hold the metric; the step defaults to a count)."""
        self.count += 1
        self._send({self.step_key: self.count, **metrics})

    def finish(self, returned: Mapping[str, Any] | None) -> dict[str, Any]:
        """Report the final result: the last report updated with what the objective returned."""
        if returned is not None and not isinstance(returned, Mapping):
            raise ObjectiveError(f"the objective must return a dict or None, got {returned!r}")
        if returned is None and self.last is None:
            raise ObjectiveError(f"the objective reported nothing and returned no '{self.metric}'")
        base = self.last if self.last is not None else {self.step_key: 1}
        final = {**base, **(returned or {}), FINAL_KEY: True}
        self._send(final)
        return final

    def fail(self, error: BaseException) -> dict[str, Any]:
        """Report ``error`` as the trial's end: metric NaN, message and traceback."""
        lines = str(error).strip().splitlines()
        trace = "".join(traceback.format_exception(error))
        result = {
            self.step_key: self.last[self.step_key] if self.last else 0,
            self.metric: math.nan,
            FAILED_KEY: f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": "),
            TRACEBACK_KEY: trace[-TRACEBACK_LIMIT:],
        }
        self.sink(result)
        return result

    def _send(self, result: dict[str, Any]) -> None:
        """Check ``result`` and pass it on; remember it as the last report."""
        result = {k: _scalar(v) for k, v in result.items()}
        step = result[self.step_key]
        if self.metric not in result:
            raise ObjectiveError(
                f"report at {self.step_key} {step} has no '{self.metric}' (keys: "
                f"{', '.join(sorted(result))})"
            )
        value = result[self.metric]
        if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
            raise ObjectiveError(
                f"'{self.metric}' = {value!r} at {self.step_key} {step}: the trial is recorded "
                "as failed"
            )
        if not isinstance(step, Real) or not float(step).is_integer():
            raise ObjectiveError(f"'{self.step_key}' must be an integer, got {step!r}")
        result[self.metric], result[self.step_key] = float(value), int(step)
        self.sink(result)
        self.last = {k: v for k, v in result.items() if k != FINAL_KEY}


def run_trial(config: dict[str, Any], *, objective: Objective, metric: str, step_key: str) -> None:
    """Tune function trainable: run ``objective`` on ``config`` with a checking reporter."""
    from ray import tune

    reporter = Reporter(metric, step_key, tune.report)
    try:
        reporter.finish(objective(dict(config), reporter))
    except Exception as error:  # recorded as a failed trial; the process serves the next one
        logger.warning("trial failed: %s", error, exc_info=error)
        reporter.fail(error)


def _scalar(value: Any) -> Any:
    """0-d tensors and numpy scalars as Python numbers (Tune rejects torch tensors)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(value, str):
        return value.item()
    return value
