"""Progress lines of a running study (``dipswarm tune``): trials finished and the best value."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import TextIO


class StudyProgress:
    """Prints the study's progress (trials finished, best value so far) while it runs.

    A thread polls the study's Optuna journal every ``interval`` seconds and prints a line when
    something changed: ``search.tune`` takes no Tune callbacks, and its journal is the record
    that every finished trial reaches.
    """

    def __init__(
        self,
        study_dir: Path,
        metric: str,
        mode: str,
        total: int,
        interval: float = 2.0,
        stream: TextIO | None = None,
    ) -> None:
        self.study_dir, self.metric, self.mode, self.total = study_dir, metric, mode, total
        self.interval = interval
        self.stream = stream
        self._last: tuple | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> StudyProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """Print a progress line if the study's state changed since the last one."""
        try:
            state = self.state()
        except Exception:  # a journal being written; the next poll reads it whole
            return
        if state is None or state == self._last:
            return
        self._last = state
        print(self.describe(state), file=self.stream or sys.stdout, flush=True)

    def state(self) -> tuple | None:
        """(running, completed, stopped, failed, best value, best trial number) or None before
        the study is recorded."""
        meta_file = self.study_dir / "search_study.json"
        if not meta_file.is_file():
            return None
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        meta = json.loads(meta_file.read_text())
        storage = JournalStorage(JournalFileBackend(meta["optuna_journal"]))
        trials = optuna.load_study(study_name=meta["study_name"], storage=storage).get_trials(
            deepcopy=False
        )
        states = optuna.trial.TrialState
        count = {s: sum(t.state == s for t in trials) for s in states}
        complete = [t for t in trials if t.state == states.COMPLETE and t.value is not None]
        pick = max if self.mode == "max" else min
        best = pick(complete, key=lambda t: t.value) if complete else None
        return (
            count[states.RUNNING],
            count[states.COMPLETE],
            count[states.PRUNED],
            count[states.FAIL],
            None if best is None else best.value,
            None if best is None else best.number,
        )

    def describe(self, state: tuple) -> str:
        running, completed, stopped, failed, value, number = state
        finished = completed + stopped + failed
        best = "none yet" if value is None else f"{value:.5g} (trial #{number})"
        return (
            f"[tune] {finished}/{self.total} trials finished ({completed} completed, "
            f"{stopped} stopped early, {failed} failed; {running} running); best "
            f"{self.metric}: {best}"
        )
