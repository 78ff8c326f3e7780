"""Ray Tune and Optuna parts of a study; importing this module imports both (search.tune does,
lazily).

- ``Searcher``: ``OptunaSearch`` that records each trial's Tune id as an Optuna user attribute,
  reports intermediate values at the objective's own step (not Tune's iteration counter), and
  tells Optuna PRUNED, not COMPLETE, for trials that ASHA stopped early (their last value is a
  low-fidelity one). Restored after a kill, it reconciles Tune's saved state with the journal.
- ``MLflowTrials``: a Tune callback on the driver writing one MLflow child run per trial.
- ``make_sampler``: TPE (default), GP, CMA-ES or random, seeded.
"""

from __future__ import annotations

import os
import re
from typing import Any

import optuna
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from search import tracking
from search.objective import FAILED_KEY, FINAL_KEY, TRACEBACK_KEY

TRIAL_ATTR = "tune_trial_id"
CUT_OFF_ATTR = "search_cut_off"  # on Optuna trials that a killed driver left running
CUT_OFF = "cut off: the study's driver was killed before Tune saved this trial"
SAMPLERS = ("tpe", "gp", "cmaes", "random")


def make_sampler(sampler: str | optuna.samplers.BaseSampler, seed: int) -> Any:
    """An Optuna sampler by name (seeded), or ``sampler`` itself if it is one already."""
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    if sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if sampler == "cmaes":  # the cmaes package is a dependency
        return optuna.samplers.CmaEsSampler(seed=seed)
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


class Searcher(OptunaSearch):
    """``OptunaSearch`` aware of the objective's step key and final-result marker."""

    def __init__(self, *args: Any, step_key: str, **kwargs: Any) -> None:
        self.step_key = step_key
        super().__init__(*args, **kwargs)

    def suggest(self, trial_id: str) -> dict | None:
        """Optuna's suggestion, with the Tune trial id stored on the Optuna trial."""
        config = super().suggest(trial_id)
        self._ot_trials[trial_id].set_user_attr(TRIAL_ATTR, trial_id)
        return config

    def restore(self, checkpoint_path: str) -> None:
        """Tune's saved searcher, reconciled with the journal, which is ahead of it when the
        driver was killed (SIGKILL): Optuna writes every report and tell at once, Tune saves its
        state only every few seconds.

        - A trial that Tune will run again (unfinished in its state) but that the journal holds
          as finished keeps its Optuna record: the re-run's reports and tell are not sent
          (Optuna refuses updates of a finished trial).
        - A journal trial still RUNNING that Tune's state does not hold (asked for after Tune's
          last save) would stay RUNNING forever: it is told FAIL, marked ``CUT_OFF_ATTR``.
        """
        super().restore(checkpoint_path)
        finished = {t.number for t in self._ot_study.trials if t.state.is_finished()}
        known = set()
        for trial_id, ot_trial in self._ot_trials.items():
            known.add(ot_trial.number)
            if ot_trial.number in finished:
                self._completed_trials.add(trial_id)
        running = self._ot_study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
        for lost in (t for t in running if t.number not in known):
            self._ot_study._storage.set_trial_user_attr(lost._trial_id, CUT_OFF_ATTR, CUT_OFF)
            self._ot_study.tell(lost.number, state=optuna.trial.TrialState.FAIL)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Record an intermediate value at the objective's step (final ones are told)."""
        if result.get(FINAL_KEY) or FAILED_KEY in result or trial_id in self._completed_trials:
            return
        self._ot_trials[trial_id].report(float(result[self.metric]), int(result[self.step_key]))

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """COMPLETE with the final value, FAIL on failure, PRUNED when stopped before the end
        (nothing for a trial whose Optuna record is finished already)."""
        if trial_id in self._completed_trials:
            return
        if result and FAILED_KEY in result:
            result, error = None, True
        stopped = not error and bool(result) and not result.get(FINAL_KEY)
        if not stopped:
            super().on_trial_complete(trial_id, result, error)
            return
        ot_trial = self._ot_trials[trial_id]
        if self.metric in result:  # the result that made ASHA stop never went through on_result
            ot_trial.report(float(result[self.metric]), int(result[self.step_key]))
        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


class MLflowTrials(Callback):
    """One MLflow child run per trial under the study's parent run, written from the driver.

    Restored (a resumed study), it leaves out the trials whose child run had ended already:
    Tune runs such a trial again when a killed driver finished it after Tune's last save.
    """

    def __init__(self, uri: str, experiment_id: str, parent_id: str, step_key: str) -> None:
        self.uri, self.experiment_id, self.parent_id = uri, experiment_id, parent_id
        self.step_key = step_key
        self._runs: dict[str, str] = {}
        self._client: Any = None
        self._recorded: set[str] | None = set()  # trials not logged again; None: not read yet

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the Tuner: settings only, no client and no run handles."""
        return {**self.__dict__, "_client": None, "_runs": {}, "_recorded": None}

    @property
    def client(self) -> Any:
        """The MLflow client, created on first use."""
        if self._client is None:
            self._client = tracking.client(self.uri)
        return self._client

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Open the trial's child run (a restarted trial gets a fresh one)."""
        if self._skip(trial):
            return
        self._runs[trial.trial_id] = tracking.start_child(
            self.client, self.experiment_id, self.parent_id, trial.trial_id, trial.config
        )

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        """Log the report's metrics at its step."""
        if self._skip(trial):
            return
        metrics = {k: v for k, v in result.items() if k != self.step_key}
        tracking.log_result(self.client, self._run(trial), metrics, int(result[self.step_key]))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """End the run: completed if the final result arrived, failed if the objective failed,
        otherwise stopped early."""
        if self._skip(trial):
            return
        last = trial.last_result
        if FAILED_KEY in last:
            run_id = self._take(trial)
            tracking.end_child(self.client, run_id, "failed", last[FAILED_KEY], last[TRACEBACK_KEY])
            return
        status = "completed" if last.get(FINAL_KEY) else "stopped"
        tracking.end_child(self.client, self._take(trial), status)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """End the run FAILED with the error (Tune-level errors: the trial process died)."""
        if self._skip(trial):
            return
        text = _error_text(trial)
        tracking.end_child(self.client, self._take(trial), "failed", last_error_line(text), text)

    def _skip(self, trial: Any) -> bool:
        """Whether the trial's child run ended before this driver (nothing more is logged)."""
        if self._recorded is None:
            self._recorded = tracking.ended_trials(self.client, self.parent_id)
        return trial.trial_id in self._recorded

    def _take(self, trial: Any) -> str:
        """The trial's run id, forgotten by this callback (the run is ending)."""
        run_id = self._run(trial)
        del self._runs[trial.trial_id]
        return run_id

    def _run(self, trial: Any) -> str:
        """The trial's run id, opening a run if this driver has none for it yet."""
        if trial.trial_id not in self._runs:
            self.on_trial_start(0, [], trial)
        return self._runs[trial.trial_id]


def _error_text(trial: Any) -> str | None:
    """The trial's error trace: Tune writes it to the trial's local folder first."""
    path = trial.error_file
    if path and os.path.exists(path):
        with open(path) as f:
            return f.read()
    return trial.get_error()


def last_error_line(text: Any) -> str:
    """The last non-empty line of an error text or exception (``Type: message``)."""
    if text is None:
        return ""
    if isinstance(text, BaseException):
        cause = getattr(text, "cause", None) or text
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return ""
    kind, sep, message = lines[-1].partition(": ")
    if sep and re.fullmatch(r"[\w.]+", kind):  # "pkg.module.Error: ..." -> "Error: ..."
        return f"{kind.rsplit('.', 1)[-1]}: {message}"
    return lines[-1]
