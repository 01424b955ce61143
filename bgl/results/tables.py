"""The study results tables: one Parquet file per trial part, written as each trial ends.

`results/<study>/trials/<trial_id>.parquet`: one row per trial -- ids, status (completed,
diverged, stopped, error) and error reason, task, solver, every searched hyperparameter typed
(null where a conditional one does not apply), final and best metrics, wall times, peak memory,
workers, device, seed, git commit, library versions and the full config as JSON. A transfer
study's rows also say stage (source/target), model (M_a, ...), source_task, strategy, target_task.
`results/<study>/history/<trial_id>.parquet`: (trial, step, kind, phase, metrics...).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from bgl.results.parquet import rows_to_table, write_table
from bgl.results.report import FINAL_KEY, REPLAYED_KEY, TRIAL_END_KEY

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

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


# -- terminal tables ------------------------------------------------------------------------
# Every table bgl prints fits the console: a default view keeps its essential columns and adds
# the others, by priority, while they fit; `--wide` (WIDE_WIDTH) shows every column.

#: the console width of `--wide` and of output that is not a terminal (pipes, files)
WIDE_WIDTH = 400
#: short headers of the parameters and columns every study has (`lr_F`: F's, the upper level's)
SHORT_NAMES = {
    "optim.upper_lr": "lr_F",
    "optim.lower_lr": "lr_G",
    "optim.warm_lr": "lr_warm",
    "optim.upper_lr_min": "lr_F_min",
    "optim.lower_lr_min": "lr_G_min",
    "solver.name": "solver",
    "task.name": "task",
    "data.name": "data",
    "peak_memory_mib": "MiB",
    "wall_time_s": "wall s",
}


def short_names(names: Sequence[str]) -> dict[str, str]:
    """Short headers for columns or parameter paths (`param.solver.k` -> `k`): the last part
    of the path, or the whole path where two would read alike."""
    bare = {n: n.removeprefix("param.") for n in names}
    short = {n: SHORT_NAMES.get(b, b.rsplit(".", 1)[-1]) for n, b in bare.items()}
    counts: dict[str, int] = {}
    for s in short.values():
        counts[s] = counts.get(s, 0) + 1
    return {n: short[n] if counts[short[n]] == 1 else bare[n] for n in names}


@dataclass
class Column:
    """One column of a fitted table. `rank` 0: always shown; larger ranks are shown, lowest
    first (then left to right), while the table still fits the console."""

    header: str
    cells: list[str] = field(default_factory=list)
    rank: int = 0
    justify: str = "right"
    style: str | None = None


def fit_table(
    columns: Sequence[Column],
    width: int | None,
    console: Console | None = None,
    *,
    more: str = "",
    **table: Any,
) -> Table:
    """A rich Table of the rank-0 columns and the others that fit `width` (None: all).

    Cells wrap, then fold: no header or value is cut with an ellipsis even where the rank-0
    columns alone are wider than the console. `more`, where columns were left out, is added to
    the caption (e.g. "more columns: --wide"). `table` goes to `rich.table.Table`."""
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    def build(chosen: Sequence[Column], probe: bool) -> Table:
        out = Table(**table) if not probe else Table(**{**table, "title": None, "caption": None})
        for c in chosen:
            justify: Any = c.justify
            out.add_column(c.header, justify=justify, style=c.style, overflow="fold")
        rows = [[widest[id(c)] for c in chosen]] if probe else zip(*(c.cells for c in chosen))
        for row in rows:
            out.add_row(*row)
        return out

    if width is None:
        return build(columns, probe=False)
    widest: dict[int, str] = {}
    for c in columns:  # a column is as wide as its widest line: measure one row of those
        lines = [line for cell in c.cells for line in cell.split("\n")]
        widest[id(c)] = max(lines, key=lambda s: Text.from_markup(s).cell_len, default="")
    console = console or Console(width=width, file=io.StringIO())
    options = console.options.update_width(2**20)  # measure the natural width, unclamped
    chosen = {id(c) for c in columns if c.rank == 0}
    for c in sorted((c for c in columns if c.rank > 0), key=lambda c: c.rank):
        trial = [x for x in columns if id(x) in chosen or x is c]
        if Measurement.get(console, options, build(trial, probe=True)).maximum <= width:
            chosen.add(id(c))
    if more and len(chosen) < len(columns):
        table["caption"] = "; ".join(x for x in (table.get("caption"), more) if x)
    return build([c for c in columns if id(c) in chosen], probe=False)


def natural_width(table: Table, console: Console | None = None) -> int:
    """How wide `table` prints where nothing squeezes it (to choose a layout that fits)."""
    from rich.console import Console
    from rich.measure import Measurement

    console = console or Console(width=WIDE_WIDTH, file=io.StringIO())
    options = console.options.update_width(2**20)
    return Measurement.get(console, options, table).maximum
