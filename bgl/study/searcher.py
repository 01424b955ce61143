"""Tune's OptunaSearch, made safe to kill and resume: the Optuna journal is the searcher's state.

Upstream, a restored OptunaSearch trusts its pickled state (`searcher-state-*.pkl`), which Tune
copies to the study folder without atomicity: a driver killed at the wrong moment leaves it
half-written (EOFError on restore) or older than the journal, and then a result replayed for a
trial the journal already holds as finished crashes the resume (`UpdateFinishedTrialError`).
`StudySearch` instead:

- tags every Optuna trial with the Tune trial that runs it (`tune_trial_id`), and rebuilds its
  trial map from those tags on restore (an unreadable state file is only a warning);
- never updates an Optuna trial that is already finished;
- adopts, before asking Optuna for a new trial, a RUNNING trial that nobody runs (untagged by
  `bgl.study.reconcile` when its Tune trial was lost with the driver), so no ask is wasted and the
  journal ends with exactly the study's trials;
- stops at `target` trials in the journal (the whole study's size, every experiment included),
  whatever Tune's restored counters say;
- limits concurrency itself (Tune's ConcurrencyLimiter keeps its own list of live trials, which
  a resume can leave stale: a slot held forever by a trial that no longer exists).
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from bgl.study.journal import TUNE_TRIAL_ATTR

log = logging.getLogger(__name__)


class StudySearch(OptunaSearch):
    def __init__(
        self, *args: Any, target: int | None = None, max_concurrent: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._target = target
        self._max_concurrent = max_concurrent

    # --- asking -----------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials and self._ot_study is not None:
            live = len(set(self._ot_trials) - self._completed_trials)
            if self._max_concurrent and live >= self._max_concurrent:
                return None
            trial = self._next_trial()
            if trial is None:
                return Searcher.FINISHED
            trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            self._ot_trials[trial_id] = trial
        return super().suggest(trial_id)

    def _next_trial(self) -> Any:
        import optuna
        from optuna.trial import TrialState

        trials = self._ot_study.get_trials(deepcopy=False)
        running = {t._trial_id for t in self._ot_trials.values()}
        for t in trials:
            if (
                t.state == TrialState.RUNNING
                and t.user_attrs.get(TUNE_TRIAL_ATTR) is None
                and t._trial_id not in running
            ):
                log.info("Optuna trial %d, left unrun by a stopped driver, is run now", t.number)
                return optuna.Trial(self._ot_study, t._trial_id)
        asked = sum(t.state != TrialState.WAITING for t in trials)
        if self._target is not None and asked >= self._target:
            return None
        return self._ot_study.ask()

    # --- telling ----------------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._settled(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if not self._settled(trial_id):
            super().on_trial_complete(trial_id, result=result, error=error)

    def _settled(self, trial_id: str) -> bool:
        """True when Optuna must not hear of this trial: unknown, or already finished."""
        trial = self._ot_trials.get(trial_id)
        if trial is None:
            log.warning("trial %s has no Optuna trial; its result is not told", trial_id)
            return True
        if trial_id in self._completed_trials:
            return True
        state = self._ot_study._storage.get_trial(trial._trial_id).state
        if state.is_finished():
            self._completed_trials.add(trial_id)
            return True
        return False

    # --- restoring --------------------------------------------------------------------------
    def restore_from_dir(self, checkpoint_dir: str) -> None:
        built = dict(self.__dict__)
        try:
            super().restore_from_dir(checkpoint_dir)
        except Exception as exc:  # noqa: BLE001 - the journal holds everything we need
            log.warning(
                "searcher state in %s unreadable (%s: %s); rebuilt from the Optuna journal",
                checkpoint_dir,
                type(exc).__name__,
                exc,
            )
            self.__dict__.clear()
            self.__dict__.update(built)
        self.resync()

    def resync(self) -> None:
        """Rebuild the Tune-trial -> Optuna-trial map and the finished set from the journal."""
        import optuna

        self._ot_study = optuna.load_study(
            study_name=self._ot_study.study_name, storage=self._storage, sampler=self._sampler
        )
        self._ot_trials, self._completed_trials = {}, set()
        for t in self._ot_study.get_trials(deepcopy=False):
            tune_id = t.user_attrs.get(TUNE_TRIAL_ATTR)
            if tune_id is None:
                continue
            self._ot_trials[tune_id] = optuna.Trial(self._ot_study, t._trial_id)
            if t.state.is_finished():
                self._completed_trials.add(tune_id)
