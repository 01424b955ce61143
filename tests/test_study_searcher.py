"""StudySearch and the driver lock, on real Optuna journals (no Ray cluster needed)."""

from __future__ import annotations

import copy
import pickle

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from bgl.config import ConfigError
from bgl.study.journal import TUNE_TRIAL_ATTR, driver_lock, open_journal
from bgl.study.searcher import StudySearch


def _space(trial):
    trial.suggest_float("x", 0.0, 1.0)


def _searcher(tmp_path, cls=StudySearch, **kwargs):
    return cls(
        space=_space,
        metric="psnr",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        storage=open_journal(tmp_path),
        study_name="s",
        **kwargs,
    )


def _states(tmp_path):
    study = optuna.load_study(study_name="s", storage=open_journal(tmp_path))
    return [(t.state, t.user_attrs.get(TUNE_TRIAL_ATTR)) for t in study.trials]


def test_tags_trials_adopts_an_orphan_and_stops_at_target(tmp_path):
    search = _searcher(tmp_path, target=3)
    assert "x" in search.suggest("a")
    # an ask whose Tune trial was lost with the driver: RUNNING, nobody's
    optuna.load_study(study_name="s", storage=open_journal(tmp_path)).ask()
    config = search.suggest("b")  # adopts the orphan rather than asking a third time
    assert _states(tmp_path) == [(TrialState.RUNNING, "a"), (TrialState.RUNNING, "b")]
    study = optuna.load_study(study_name="s", storage=open_journal(tmp_path))
    orphan_x = study.trials[1].params["x"]
    assert config["x"] == orphan_x
    search.on_trial_complete("a", {"psnr": 1.0})
    search.on_trial_complete("b", {"psnr": 2.0})
    assert "x" in search.suggest("c")
    search.on_trial_complete("c", {"psnr": 3.0})
    assert search.suggest("d") == Searcher.FINISHED  # 3 trials in the journal: the target
    assert [s for s, _ in _states(tmp_path)] == [TrialState.COMPLETE] * 3


def test_concurrency_limit_counts_unfinished_trials(tmp_path):
    search = _searcher(tmp_path, max_concurrent=1)
    assert search.suggest("a") is not None
    assert search.suggest("b") is None  # "a" still runs
    search.on_trial_complete("a", {"psnr": 1.0})
    assert search.suggest("b") is not None


def test_a_finished_trial_is_never_updated(tmp_path):
    # upstream: a result replayed for a trial the journal holds as finished crashes the resume
    plain = _searcher(tmp_path / "plain", cls=OptunaSearch)
    plain.suggest("a")
    plain._ot_study.tell(plain._ot_trials["a"], 1.0)
    with pytest.raises(UpdateFinishedTrialError):
        plain.on_trial_result("a", {"psnr": 1.0, "training_iteration": 1})

    search = _searcher(tmp_path)
    search.suggest("a")
    search._ot_study.tell(search._ot_trials["a"], 1.0)  # e.g. told by reconciliation
    search.on_trial_result("a", {"psnr": 5.0, "training_iteration": 1})
    search.on_trial_complete("a", {"psnr": 5.0})
    assert _states(tmp_path) == [(TrialState.COMPLETE, "a")]
    study = optuna.load_study(study_name="s", storage=open_journal(tmp_path))
    assert study.trials[0].value == 1.0 and study.trials[0].intermediate_values == {}


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_restore_rebuilds_from_the_journal_when_the_state_file_is_unusable(tmp_path, damage):
    search = _searcher(tmp_path)
    pristine = pickle.loads(pickle.dumps(search))  # what Tune unpickles from the tuner
    search.suggest("a")
    search.suggest("b")
    search.on_trial_complete("a", {"psnr": 1.0})
    state = tmp_path / "state"
    state.mkdir()
    search.save_to_dir(str(state))
    (saved,) = state.glob("searcher-state-*.pkl")
    if damage == "truncated":
        saved.write_bytes(saved.read_bytes()[:40])
    else:
        saved.unlink()
    restored = copy.copy(pristine)
    restored.restore_from_dir(str(state))
    assert set(restored._ot_trials) == {"a", "b"}
    assert restored._completed_trials == {"a"}
    restored.on_trial_complete("b", {"psnr": 2.0})
    restored.on_trial_complete("a", {"psnr": 9.0})  # finished: ignored
    study = optuna.load_study(study_name="s", storage=open_journal(tmp_path))
    assert [t.value for t in study.trials] == [1.0, 2.0]


def test_driver_lock_removes_a_stale_journal_lock_and_refuses_a_second_driver(tmp_path):
    stale = tmp_path / "optuna.journal.lock"
    stale.symlink_to(tmp_path / "optuna.journal")  # what a killed driver leaves
    with driver_lock(tmp_path):
        assert not stale.is_symlink()
        with pytest.raises(ConfigError, match="being run by pid"):
            with driver_lock(tmp_path):
                pass
    with driver_lock(tmp_path):  # released
        pass
