"""Driver-side Tune callbacks: Parquet rows as each trial ends, and a live rich table.

Both run in the driver, so results land in the study folder even on a cluster without shared
storage. They are picklable (Tune stores callbacks with the experiment for `--resume`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from bgl.results.tables import trial_row, write_trial
from bgl.study.schema import StudyConfig
from bgl.study.space import drop_inapplicable

log = logging.getLogger(__name__)


class ParquetResults(Callback):
    """Writes `trials/<id>.parquet` and `history/<id>.parquet` as soon as a trial ends."""

    def __init__(self, study: StudyConfig) -> None:
        self.study = study
        self.study_name = study.name
        self.study_dir = Path(study.study_dir)
        self.param_types = {p.path: p.type for p in study.params}
        self.param_types.setdefault("solver.name", "categorical")
        self.param_types.setdefault("task.name", "categorical")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = dict(trial.last_result or {})
        history = json.loads(result.get("history_json") or "[]")
        row = trial_row(self.study_name, trial.trial_id, result, params=self._params(trial))
        write_trial(self.study_dir, trial.trial_id, row, history, self.param_types)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = _error_text(trial)
        row = trial_row(
            self.study_name,
            trial.trial_id,
            dict(trial.last_result or {}),
            status="error",
            error=error,
            params=self._params(trial),
        )
        write_trial(self.study_dir, trial.trial_id, row, [], self.param_types)
        log.warning("trial %s failed: %s", trial.trial_id, error.splitlines()[-1] if error else "")

    def _params(self, trial: Any) -> dict[str, Any]:
        return drop_inapplicable(self.study, dict(trial.config or {}))


class LiveTable(Callback):
    """A rich table of trials, refreshed as results arrive."""

    def __init__(self, study: StudyConfig) -> None:
        self.metric = study.objectives[0].metric
        self.params = [p.path for p in study.params if p.type != "constant"]
        self._live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_live": None}

    def setup(self, **info: Any) -> None:
        self._live = Live(console=Console(), refresh_per_second=2, transient=False)
        self._live.start()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._live is not None:
            self._live.update(self._table(trials))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._live is not None:
            self._live.update(self._table(trials))
            self._live.stop()
            self._live = None

    def _table(self, trials: list) -> Table:
        table = Table(title="trials")
        for col in ("trial", "status", "solver", *self.params, "step", self.metric):
            table.add_column(col, justify="right")
        for t in trials:
            cfg, res = t.config or {}, t.last_result or {}
            metric = res.get(self.metric)
            table.add_row(
                t.trial_id,
                str(res.get("status", t.status)).lower()
                if res.get("bgl_final")
                else t.status.lower(),
                str(cfg.get("solver.name", "")),
                *[_short(cfg.get(p)) for p in self.params],
                str(res.get("step", "")),
                "" if metric is None else f"{metric:.4f}",
            )
        return table


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _error_text(trial: Any) -> str:
    try:
        error = trial.get_error()
        if error is not None:
            return str(error)
    except Exception:  # noqa: BLE001 - best effort: the error file is the fallback
        pass
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        return Path(path).read_text()[-4000:]
    return "unknown error"
