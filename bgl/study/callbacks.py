"""Driver-side Tune callbacks: Parquet rows as each trial ends, and a live rich table.

Both run in the driver, so results land in the study folder even on a cluster without shared
storage. They are picklable (Tune stores callbacks with the experiment for `--resume`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from bgl.results.report import FINAL_KEY, TRIAL_END_KEY
from bgl.results.tables import (
    WIDE_WIDTH,
    Column,
    fit_table,
    has_row,
    short_names,
    trial_row,
    write_trial,
)
from bgl.study import faults
from bgl.study.schema import StudyConfig
from bgl.study.space import drop_inapplicable

log = logging.getLogger(__name__)


class ParquetResults(Callback):
    """Writes `trials/<id>.parquet` and `history/<id>.parquet` when a trial's last report comes.

    The row is written on the trial's final report (`TRIAL_END_KEY`), before Tune tells the
    searcher the trial is complete: a trial finished in the Optuna journal always has its row,
    whenever the driver is killed. A row, once written, is never written again (a resumed
    study replays finished trials without touching their files).
    """

    def __init__(self, study: StudyConfig) -> None:
        self.study = study
        self.study_name = study.name
        self.study_dir = Path(study.study_dir)
        self.param_types = {p.path: p.type for p in study.params}
        self.param_types.setdefault("solver.name", "categorical")
        self.param_types.setdefault("task.name", "categorical")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        if result.get(TRIAL_END_KEY):
            self.record(trial.trial_id, result, trial.config)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.record(trial.trial_id, dict(trial.last_result or {}), trial.config)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = error_text(trial)
        if self.record(trial.trial_id, dict(trial.last_result or {}), trial.config, "error", error):
            log.warning(
                "trial %s failed: %s", trial.trial_id, error.splitlines()[-1] if error else ""
            )

    def record(
        self,
        trial_id: str,
        result: dict[str, Any],
        config: dict[str, Any] | None,
        status: str | None = None,
        error: str | None = None,
        replace: bool = False,
    ) -> bool:
        """Write the trial's row and history unless it has a row already (`replace`: write it
        anyway; only a reconciliation repairing an error row does); True if written."""
        if has_row(self.study_dir, trial_id) and not replace:
            return False
        history = json.loads(result.get("history_json") or "[]")
        params = drop_inapplicable(self.study, dict(config or {}))
        row = trial_row(
            self.study_name, trial_id, result, status=status, error=error, params=params
        )
        write_trial(self.study_dir, trial_id, row, history, self.param_types)
        return True


class CheckpointWindowMark(Callback):
    """Fault injection (only with `BGL_FAULT_DIR` set): marks the `checkpoint` event in the
    driver, and holds there when it is the configured kill point, in the window where a killed
    driver loses a restorable checkpoint: Tune has registered a trial's new checkpoint and its
    retention deleted the one the saved experiment state still names, and the state naming the
    new one has not reached the study folder.

    Tune calls `on_checkpoint` before it registers the checkpoint (the trial's latest is still
    the one the saved state names) and `get_state` while it saves its state: after the state file
    is written to the driver's staging folder, before that folder is copied to storage. Only
    windows where that latest checkpoint is gone are marked, so `checkpoint:1` is the study's
    first real hazard, whatever the scores.
    """

    def __init__(self, study: StudyConfig) -> None:
        self.study_name = study.name
        self._pending: list[tuple[str, str | None]] = []

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        named = trial.checkpoint.path if trial.checkpoint is not None else None
        self._pending.append((trial.trial_id, named))

    def get_state(self) -> dict | None:
        pending, self._pending = self._pending, []
        for trial_id, named in pending:
            if named is not None and not Path(named).exists():
                faults.mark("checkpoint", f"{self.study_name}-{trial_id}")
        return None


class PendingWatch(Callback):
    """Says, once per trial, when a trial has waited `resources.pending_warn_s` to start, and
    what for (its resources against the cluster's), instead of a silent wait."""

    def __init__(self, study: StudyConfig) -> None:
        self.after_s = study.resources.pending_warn_s
        self._since: dict[str, float] = {}
        self._warned: set[str] = set()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        for t in trials:
            if t.status != "PENDING":
                self._since.pop(t.trial_id, None)
                continue
            since = self._since.setdefault(t.trial_id, now)
            if now - since >= self.after_s and t.trial_id not in self._warned:
                self._warned.add(t.trial_id)
                log.warning(
                    "trial %s has waited %.0f s to start: it needs %s; the cluster has %s "
                    "(free: %s). Lower resources.* in the study YAML, or add nodes",
                    t.trial_id,
                    now - since,
                    _demand(t),
                    _resources(total=True),
                    _resources(total=False),
                )


def _demand(trial: Any) -> str:
    try:
        bundles = trial.placement_group_factory.bundles
    except Exception:  # noqa: BLE001 - only for the message
        return "its resources"
    total: dict[str, float] = {}
    for bundle in bundles:
        for key, value in bundle.items():
            total[key] = total.get(key, 0.0) + value
    return ", ".join(f"{k} {v:g}" for k, v in sorted(total.items()))


def _resources(total: bool) -> str:
    import ray

    if not ray.is_initialized():
        return "unknown"
    found = ray.cluster_resources() if total else ray.available_resources()
    keys = [k for k in ("CPU", "GPU") if k in found] or sorted(found)[:4]
    return ", ".join(f"{k} {found[k]:g}" for k in keys) or "nothing"


class LiveTable(Callback):
    """A rich table of trials, refreshed as results arrive, that fits the terminal: trial,
    status, solver, step and the metric always; the searched parameters (short headers: `k`,
    `lr_F`) while they fit. `wide`: every column at full length (400 columns)."""

    def __init__(self, study: StudyConfig, wide: bool = False) -> None:
        self.metric = study.objectives[0].metric
        # the solver column already says solver.name
        self.params = [
            p.path for p in study.params if p.type != "constant" and p.path != "solver.name"
        ]
        self.wide = wide
        self._live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_live": None}

    def setup(self, **info: Any) -> None:
        console = Console(width=WIDE_WIDTH) if self.wide else Console()
        self._live = Live(console=console, refresh_per_second=2, transient=False)
        self._live.start()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._live is not None:
            self._live.update(self._table(trials))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._live is not None:
            self._live.update(self._table(trials))
            self._live.stop()
            self._live = None

    def _table(self, trials: list, width: int | None = None) -> Table:
        """The table at `width` columns (default: the live console's; `wide`: every column)."""
        if width is None and not self.wide:
            width = self._live.console.width if self._live is not None else None
        names = short_names(self.params)
        headers = {p: names[p] if not self.wide else p for p in self.params}
        cols = [
            Column("trial", justify="left"),
            Column("status", justify="left"),
            Column("solver", justify="left"),
            *(Column(headers[p], rank=1 if i < 2 else 2) for i, p in enumerate(self.params)),
            Column("step"),
            Column(self.metric),
        ]
        for t in trials:
            cfg, res = t.config or {}, t.last_result or {}
            metric = res.get(self.metric)
            status = res.get("status", t.status) if res.get(FINAL_KEY) else t.status
            # a trial's last report (the run summary) says `steps`; its evaluations say `step`
            step = res.get("step", res.get("steps"))
            cells = [
                t.trial_id,
                str(status).lower(),
                str(cfg.get("solver.name", "")),
                *[_short(cfg.get(p)) for p in self.params],
                "" if step is None else str(step),
                "" if metric is None else f"{metric:.4f}",
            ]
            for col, cell in zip(cols, cells):
                col.cells.append(escape(cell))
        return fit_table(cols, None if self.wide else width, title="trials")


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def error_text(trial: Any) -> str:
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
