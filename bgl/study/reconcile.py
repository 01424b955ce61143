"""Before a resumed study restarts: make its three records agree.

A study's progress is written in three places by one driver — bgl's Parquet rows, the Optuna
journal, Tune's experiment state — and a driver killed at any moment leaves them at different
points. The rule: a trial finished in any record is finished in all of them.

- Tune holds a trial as TERMINATED or ERROR but it has no row: its row is written from Tune's
  last result (or its error file).
- Optuna holds a trial as finished but it has no row: a row is written from Tune's last result
  when Tune has a final one, else as failed ("its result was lost with the driver").
- A row exists but Optuna still holds the trial RUNNING: Optuna is told (complete with the row's
  objectives, or failed with the row's status).
- Optuna holds a trial RUNNING that no restored Tune trial will run (the driver died between
  Optuna's ask and Tune's save): it is untagged, and the next trial Tune asks for adopts it
  (`StudySearch`), so no Optuna trial is left RUNNING and none is asked twice.
- A trial that has a row but that Tune will restart is *replayed*: the trainable reports the
  recorded result without training, and neither the row nor Optuna is touched again.
- A trial whose newest whole checkpoint holds its end report trained to its end: a missing row
  is written from that report, and an error row (a restore that failed, a driver that died as
  the report travelled) is replaced by it; the trial is then replayed. Optuna keeps a trial it
  was told failed as failed (a finished Optuna trial cannot be updated): its sampler does not
  learn from it, the tables hold it completed.
- Before Tune restores, its saved state is repaired so that no trial restores from a checkpoint
  that retention deleted (`bgl.study.tune_state`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgl.results.report import FINAL_KEY, REPLAYED_KEY, TRIAL_END_KEY
from bgl.results.tables import finished_trials, read_row
from bgl.study.journal import JOURNAL, TUNE_TRIAL_ATTR, load_trials, open_journal
from bgl.study.schema import StudyConfig
from bgl.study.tune_state import end_report, repair_checkpoints, torn_state_file

log = logging.getLogger(__name__)

FINISHED_IN_TUNE = ("TERMINATED", "ERROR")
#: Optuna user attribute of a trial failed by reconciliation: why
FAIL_REASON_ATTR = "fail_reason"


@dataclass
class Reconciled:
    """What a resume found, and what Tune must be given to restart."""

    rows: set[str] = field(default_factory=set)  # trial ids with a row (finished)
    tune_trials: dict[str, str] | None = None  # Tune trial id -> status; None: state unusable
    replay: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> report to replay
    rows_written: int = 0
    rows_repaired: int = 0  # error rows replaced by the end report of a trial that ended
    optuna_told: int = 0
    optuna_released: int = 0
    checkpoints_repointed: int = 0
    restarted: int = 0  # unfinished trials with no whole checkpoint left

    @property
    def tune_usable(self) -> bool:
        return self.tune_trials is not None

    def summary(self) -> str:
        return (
            f"{len(self.rows)} finished trials; {self.rows_written} rows recovered, "
            f"{self.rows_repaired} error rows repaired, {self.optuna_told} Optuna trials "
            f"closed, {self.optuna_released} released to be run, {len(self.replay)} to replay, "
            f"{self.checkpoints_repointed} trials repointed to a checkpoint that exists, "
            f"{self.restarted} restarted from scratch"
        )


def load_tune_trials(tune_dir: Path) -> list[Any] | None:
    """Tune's trials as its newest experiment state holds them; None if that state is unusable
    (missing, or half-written by a killed driver)."""
    if not tune_dir.is_dir():
        return None
    torn = torn_state_file(tune_dir)
    if torn is not None:
        log.warning("Tune state in %s unusable (%s is cut short)", tune_dir, torn.name)
        return None
    from ray.tune import ExperimentAnalysis

    try:
        return list(ExperimentAnalysis(str(tune_dir)).trials)
    except Exception as exc:  # noqa: BLE001 - any unreadable state means: do not restore it
        log.warning("Tune state in %s unusable (%s: %s)", tune_dir, type(exc).__name__, exc)
        return None


def reconcile(study: StudyConfig, tune_dir: Path | None) -> Reconciled:
    """Make rows, journal and Tune state agree for `study` (see the module docstring)."""
    from bgl.study.callbacks import ParquetResults, error_text

    study_dir = study.study_dir
    writer = ParquetResults(study)
    out = Reconciled()
    trials = load_tune_trials(tune_dir) if tune_dir is not None else None
    by_id = {t.trial_id: t for t in trials or []}
    if trials is not None:
        out.tune_trials = {t.trial_id: str(t.status) for t in trials}
    rows = finished_trials(study_dir)

    # the trial trained to its end (its final checkpoint holds the report): a row from it
    for t in trials or []:
        erred = (
            t.trial_id in rows
            and t.status == "ERROR"
            and read_row(study_dir, t.trial_id).get("status") == "error"
        )
        if t.trial_id in rows and not erred:
            continue
        report = end_report(tune_dir / t.storage.trial_dir_name)  # trials came from tune_dir
        if report is None or report.get("status") != "completed":
            continue
        writer.record(t.trial_id, {**report, TRIAL_END_KEY: True}, t.config, replace=erred)
        out.rows_repaired += erred
        out.rows_written += not erred
        rows.add(t.trial_id)
        if erred:
            log.info("trial %s: its error row replaced by its end report", t.trial_id)

    # Tune says finished, no row
    for t in trials or []:
        if t.trial_id in rows:
            continue
        result = dict(t.last_result or {})
        if result.get(TRIAL_END_KEY):
            written = writer.record(t.trial_id, result, t.config)
        elif t.status in FINISHED_IN_TUNE:
            error = error_text(t) if t.status == "ERROR" else "the trial ended without a report"
            written = writer.record(t.trial_id, result, t.config, "error", error)
        else:
            continue
        out.rows_written += written
        rows.add(t.trial_id)

    journal = study_dir / JOURNAL
    if journal.exists() and study.sampler != "grid":
        _reconcile_journal(study, out, rows, by_id, writer)

    out.rows = rows
    if trials is not None:
        repair = repair_checkpoints(tune_dir, rows)
        out.checkpoints_repointed = len(repair.repointed)
        out.restarted = len(repair.restarted)
        for t in trials:
            if t.trial_id in rows and t.status not in FINISHED_IN_TUNE:
                out.replay[t.trial_id] = _replay_report(study, read_row(study_dir, t.trial_id))
    return out


def _reconcile_journal(
    study: StudyConfig, out: Reconciled, rows: set[str], by_id: dict[str, Any], writer: Any
) -> None:
    from optuna.trial import TrialState

    storage = open_journal(study.study_dir)
    for ot in load_trials(storage, study.name):
        tune_id = ot.user_attrs.get(TUNE_TRIAL_ATTR)
        if ot.state.is_finished():
            if tune_id is None or tune_id in rows:
                continue
            t = by_id.get(tune_id)
            result = dict(t.last_result or {}) if t is not None else {}
            config = t.config if t is not None else ot.params
            if result.get(FINAL_KEY):
                written = writer.record(tune_id, result, config)
            else:
                lost = "its result was lost with the driver"
                written = writer.record(tune_id, result, config, "error", lost)
            out.rows_written += written
            rows.add(tune_id)
        elif ot.state == TrialState.RUNNING:
            if tune_id is not None and tune_id in rows:
                _tell_from_row(storage, ot, read_row(study.study_dir, tune_id), study)
                out.optuna_told += 1
            elif tune_id is None or out.tune_trials is None or tune_id not in out.tune_trials:
                if tune_id is not None:
                    storage.set_trial_user_attr(ot._trial_id, TUNE_TRIAL_ATTR, None)
                out.optuna_released += 1


def _tell_from_row(storage: Any, ot: Any, row: dict[str, Any], study: StudyConfig) -> None:
    from optuna.trial import TrialState

    values = [row.get(o.metric) for o in study.objectives]
    finite = all(isinstance(v, int | float) and math.isfinite(v) for v in values)
    if row.get("status") == "completed" and finite:
        values = [float(v) for v in values]
        storage.set_trial_state_values(ot._trial_id, TrialState.COMPLETE, values)
        return
    reason = row.get("error") or row.get("status") or "failed"
    storage.set_trial_user_attr(ot._trial_id, FAIL_REASON_ATTR, str(reason)[-500:])
    storage.set_trial_state_values(ot._trial_id, TrialState.FAIL)


def _replay_report(study: StudyConfig, row: dict[str, Any]) -> dict[str, Any]:
    """The result a replayed trial reports: its objectives and status, marked final."""
    report: dict[str, Any] = {FINAL_KEY: True, TRIAL_END_KEY: True, REPLAYED_KEY: True}
    report["status"] = row.get("status")
    for o in study.objectives:
        value = row.get(o.metric)
        report[o.metric] = float(value) if isinstance(value, int | float) else math.nan
    report["history_json"] = json.dumps([])
    return report
