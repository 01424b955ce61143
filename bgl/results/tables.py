"""The study results tables: one Parquet file per trial part, written as each trial ends.

`results/<study>/trials/<trial_id>.parquet`: one row per trial -- ids, status (completed,
diverged, stopped, error) and error reason, task, solver, every searched hyperparameter typed
(null where a conditional one does not apply), final and best metrics, wall times, peak memory,
workers, device, seed, git commit, library versions and the full config as JSON. A transfer
study's rows also say stage (source/target), model (M_a, ...), source_task, strategy, target_task.
`results/<study>/history/<trial_id>.parquet`: (trial, step, kind, phase, metrics...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from bgl.results.parquet import rows_to_table, write_table
from bgl.results.report import FINAL_KEY, REPLAYED_KEY, TRIAL_END_KEY

TRIALS = "trials"
HISTORY = "history"
#: the study's Optuna journal (written by the study driver, read by `bgl results importance`)
OPTUNA_JOURNAL = "optuna.journal"
#: user attribute of an Optuna trial: the Tune trial that runs it (= the row's trial_id)
TUNE_TRIAL_ATTR = "tune_trial_id"
#: Tune-config key of a designed (not searched) trial's identity, e.g. a transfer study's
#: {stage, model, source_task, strategy, target_task}; its fields become columns of the row
DESIGN_KEY = "transfer"
_ARROW = {"int": pa.int64(), "float": pa.float64(), "categorical": None, "constant": None}


def trial_row(
    study: str,
    trial_id: str,
    result: dict[str, Any],
    *,
    status: str | None = None,
    error: str | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Flatten a trial's last result (a worker's final report, or an intermediate one)."""
    skip = {"history_json", "params_json", "config", FINAL_KEY, TRIAL_END_KEY, REPLAYED_KEY}
    row: dict[str, Any] = {"study": study, "trial_id": trial_id}
    final = bool(result.get(FINAL_KEY))
    row["status"] = status or (result.get("status", "completed") if final else "stopped")
    row["error"] = error if error is not None else result.get("error")
    for key, value in result.items():
        if key in skip or key in row or isinstance(value, dict | list):
            continue
        row[key if final or key.startswith(("final_", "best_")) else f"last_{key}"] = value
    if params is None and result.get("params_json"):
        params = json.loads(result["params_json"])
    for key, value in (params or {}).items():
        if key == DESIGN_KEY and isinstance(value, dict):
            row.update(value)  # a designed trial's identity: plain columns
        else:
            row[f"param.{key}"] = value
    return row


def trial_table(row: dict[str, Any], param_types: dict[str, str]) -> pa.Table:
    """One-row table with searched parameters typed by their spec (nulls keep their type)."""
    table = rows_to_table([row])
    if "error" in table.column_names:  # a string column even when null, for every trial file
        i = table.column_names.index("error")
        table = table.set_column(i, "error", pa.array([row.get("error")], type=pa.string()))
    for path, kind in param_types.items():
        name = f"param.{path}"
        arrow = _ARROW.get(kind)
        value = row.get(name)
        if arrow is None and value is not None:
            continue
        arrow = arrow or pa.string()
        column = pa.array([_cast(value, arrow)], type=arrow)
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, column)
        else:
            table = table.append_column(name, column)
    return table


def write_trial(
    study_dir: Path,
    trial_id: str,
    row: dict[str, Any],
    history: Sequence[dict[str, Any]],
    param_types: dict[str, str],
) -> None:
    """Atomically write the trial's row and history (history first: a row implies history)."""
    if history:
        rows = [
            {"study": row["study"], "trial_id": trial_id, "solver": row.get("solver"), **h}
            for h in history
        ]
        write_table(rows_to_table(rows), study_dir / HISTORY / f"{trial_id}.parquet")
    write_table(trial_table(row, param_types), study_dir / TRIALS / f"{trial_id}.parquet")


def finished_trials(study_dir: Path) -> set[str]:
    """Ids of the trials that have a row: the study's finished trials."""
    return {p.stem for p in (study_dir / TRIALS).glob("*.parquet")}


def has_row(study_dir: Path, trial_id: str) -> bool:
    return (study_dir / TRIALS / f"{trial_id}.parquet").exists()


def read_row(study_dir: Path, trial_id: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    return pq.read_table(study_dir / TRIALS / f"{trial_id}.parquet").to_pylist()[0]


def _cast(value: Any, arrow: pa.DataType) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if pa.types.is_integer(arrow):
        return int(value)
    if pa.types.is_floating(arrow):
        return float(value)
    return str(value)
