"""Read a study's Parquet results with DuckDB: views, summaries, SQL, Pareto fronts, export.

A study folder holds `trials/<trial_id>.parquet` (one row per trial) and
`history/<trial_id>.parquet` (one row per log/eval point). Trial files can differ in their
columns (conditional parameters, task metrics), so every read unions them by name. In the
`trials` and `history` views a floating-point NaN reads as NULL: the worker writes NaN for
"no value" (a failed trial's objective), and DuckDB would otherwise sort NaN above every number.

```python
con = open_study("results", "quickstart")
con.sql("SELECT solver, max(psnr) FROM trials GROUP BY solver").fetchall()
query("results", "SELECT study, count(*) FROM trials GROUP BY study")  # every study
pareto_front(rows, [("psnr", "max"), ("peak_memory_mib", "min")])
transfer_table(rows)  # a transfer study: Table 3's rows M_a, M_b, ...
export("results", "quickstart", "csv", "exports/quickstart")
```
"""

from __future__ import annotations

import glob
import json
import math
import os
import stat
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from bgl.results.report import BUDGET_COLUMNS
from bgl.results.tables import HISTORY, TRIALS

STATUSES = ("completed", "diverged", "stopped", "error")
EXPORT_FORMATS = ("csv", "json", "parquet")
# metrics tasks report, in the order a table shows them when a study has no `best_metric`
KNOWN_METRICS = ("psnr", "ssim", "map", "miou", "psnr_generator", "psnr_input")
#: what the platform itself measures about a run: costs, minimised
COST_COLUMNS = (
    "wall_time_s",
    "trial_wall_s",
    "peak_memory_mib",
    "peak_memory_bytes",
    "steps",
    *BUDGET_COLUMNS,
)
_EMPTY_HISTORY = (
    "SELECT NULL::VARCHAR AS study, NULL::VARCHAR AS trial_id, NULL::VARCHAR AS solver, "
    "NULL::BIGINT AS step, NULL::VARCHAR AS kind, NULL::VARCHAR AS phase, "
    "NULL::DOUBLE AS elapsed_s WHERE false"
)

#: text columns that a file where every value is null stores as DOUBLE (see `_create_view`)
_TEXT_COLUMNS = ("error", "health_warning")

Objectives = Sequence[tuple[str, str]]


class ResultsError(ValueError):
    """A results folder, study or query problem, with a message meant for the user."""


class StudyNotFoundError(ResultsError, FileNotFoundError):
    """The results folder or the study folder does not exist (the message names the path)."""


class QueryError(ResultsError):
    """DuckDB rejected the SQL; the message is DuckDB's."""


# -- locating studies ---------------------------------------------------------------------


def study_path(results_dir: str | Path, study: str) -> Path:
    """The study's folder; raises StudyNotFoundError naming the missing path."""
    root = _results_root(results_dir)
    folder = root / study
    if not study or "/" in study or study in (".", ".."):
        raise StudyNotFoundError(f"invalid study name {study!r}")
    if not folder.is_dir():
        known = ", ".join(_study_names(root)) or "none"
        raise StudyNotFoundError(f"study {study!r} not found: {folder} (studies here: {known})")
    if not any((folder / TRIALS).glob("*.parquet")):
        raise StudyNotFoundError(
            f"study {study!r} has no finished trials yet: no {folder / TRIALS}/*.parquet"
        )
    return folder


def _results_root(results_dir: str | Path) -> Path:
    root = Path(results_dir).expanduser().resolve()
    if not root.is_dir():
        raise StudyNotFoundError(f"results folder not found: {root}")
    return root


def _study_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / TRIALS).is_dir())


# -- connections ----------------------------------------------------------------------------


def open_study(
    results_dir: str | Path, study: str, *, sealed: bool = False
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with views `trials` and `history` over one study
    (`sealed`: tables read in, then no file access at all; see `_seal`)."""
    folder = study_path(results_dir, study)
    return _connect(folder / TRIALS / "*.parquet", folder / HISTORY / "*.parquet", sealed)


def open_results(results_dir: str | Path, *, sealed: bool = False) -> duckdb.DuckDBPyConnection:
    """Views `trials` and `history` spanning every study under `results_dir` (column `study`)."""
    root = _results_root(results_dir)
    if not any(root.glob(f"*/{TRIALS}/*.parquet")):
        raise StudyNotFoundError(f"no study results under {root} (no */{TRIALS}/*.parquet)")
    return _connect(root / "*" / TRIALS / "*.parquet", root / "*" / HISTORY / "*.parquet", sealed)


def _connect(
    trials_glob: Path, history_glob: Path, sealed: bool = False
) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    relation = "TABLE" if sealed else "VIEW"
    try:
        _create_view(con, TRIALS, trials_glob, relation)
        if glob.glob(str(history_glob)):
            _create_view(con, HISTORY, history_glob, relation)
        else:
            con.execute(f"CREATE {relation} {HISTORY} AS {_EMPTY_HISTORY}")
        if sealed:
            _seal(con)
    except duckdb.Error as exc:
        con.close()
        raise ResultsError(f"cannot read {trials_glob.parent.parent}: {exc}") from exc
    return con


def _seal(con: duckdb.DuckDBPyConnection) -> None:
    """No file access from here on (no COPY ... TO, no read_csv('/etc/passwd'), no ATTACH),
    and the setting locked so SQL cannot switch it back: a user's query reads the tables and
    nothing else. Exports go through `export`."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _create_view(
    con: duckdb.DuckDBPyConnection, name: str, pattern: Path, relation: str = "VIEW"
) -> None:
    source = f"read_parquet({_literal(str(pattern))}, union_by_name=true, hive_partitioning=false)"
    described = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
    replace = []
    for column, kind, *_ in described:
        ident = quote_ident(column)
        if column in _TEXT_COLUMNS:  # all-null in a file -> written as DOUBLE; it is text
            replace.append(f"CAST({ident} AS VARCHAR) AS {ident}")
        elif kind in ("DOUBLE", "FLOAT"):
            replace.append(f"CASE WHEN isnan({ident}) THEN NULL ELSE {ident} END AS {ident}")
    select = f"* REPLACE ({', '.join(replace)})" if replace else "*"
    con.execute(f"CREATE {relation} {name} AS SELECT {select} FROM {source}")


def quote_ident(name: str) -> str:
    """A DuckDB identifier (column names like `param.solver.k` need quotes)."""
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# -- queries --------------------------------------------------------------------------------


def query(results_dir: str | Path, sql: str, study: str | None = None) -> pa.Table:
    """Run SQL over `trials`/`history` (one study's, or every study's); an Arrow table back.

    Read-only: the tables are read in first, then the connection is sealed (`_seal`), so the
    SQL cannot read or write any other file. A statement that returns nothing gives an empty
    table.
    """
    con = (
        open_study(results_dir, study, sealed=True)
        if study
        else open_results(results_dir, sealed=True)
    )
    try:
        return _run(con, sql)
    finally:
        con.close()


def _run(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    try:
        relation = con.sql(sql)
        return relation.to_arrow_table() if relation is not None else pa.table({})
    except duckdb.PermissionException as exc:
        raise QueryError(
            "bgl results query is read-only: it reads the study tables `trials` and `history` "
            f"and no other file, and writes nothing (export with `bgl results export`): {exc}"
        ) from exc
    except duckdb.Error as exc:
        raise QueryError(f"SQL failed: {exc}") from exc


def fetch_rows(con: duckdb.DuckDBPyConnection, table: str = TRIALS) -> list[dict[str, Any]]:
    """Every row of a view as dicts (NULL -> None), trials ordered by id."""
    order = "trial_id, step, kind DESC" if table == HISTORY else "trial_id"
    return _run(con, f"SELECT * FROM {table} ORDER BY {order}").to_pylist()


def load_trials(results_dir: str | Path, study: str) -> list[dict[str, Any]]:
    con = open_study(results_dir, study)
    try:
        return fetch_rows(con, TRIALS)
    finally:
        con.close()


def load_history(results_dir: str | Path, study: str) -> list[dict[str, Any]]:
    con = open_study(results_dir, study)
    try:
        return fetch_rows(con, HISTORY)
    finally:
        con.close()


# -- column roles -----------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    """A finite real number (not None, NaN, inf or bool)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def columns_of(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def metric_mode(metric: str, rows: Sequence[Mapping[str, Any]] = ()) -> str:
    """Whether larger ("max") or smaller ("min") is better, from what defines the metric: the
    direction the trials recorded for the metric they tracked (`best_mode`), the metric's own
    `MetricSpec.direction` (image quality), the task whose primary metric it is; losses and the
    platform's costs (wall time, memory) are minimised. A prefix (final_, best_, last_) or an
    `_generator`/`_input` suffix names the same metric."""
    for row in rows:
        tracked = row.get("best_metric")
        if metric in (tracked, f"test_{tracked}") and row.get("best_mode") in ("max", "min"):
            return str(row["best_mode"])
    name = _base_metric(metric)
    if name in COST_COLUMNS or name.endswith("_loss") or name == "loss":
        return "min"
    from bgl.metrics.registry import METRICS
    from bgl.tasks import TASKS, task_class

    if name in METRICS:
        return METRICS[name].direction
    for task in TASKS:
        cls = task_class(task)
        if cls.primary_metric == name:
            return cls.mode
    return "max"


def _base_metric(column: str) -> str:
    name = column.lower()
    for prefix in ("final_", "best_", "last_", "test_"):
        name = name.removeprefix(prefix)
    for suffix in ("_generator", "_input"):
        name = name.removesuffix(suffix)
    return name


def primary_metric(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The metric the trials tracked as best (`best_metric`), else the first known metric."""
    named = Counter(r.get("best_metric") for r in rows if r.get("best_metric"))
    if named:
        return str(named.most_common(1)[0][0])
    columns = columns_of(rows)
    for metric in KNOWN_METRICS:
        if metric in columns and any(is_number(r.get(metric)) for r in rows):
            return metric
    return None


def reported_metric(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The metric a comparison reports by default: the test split's score of the tracked metric
    (`test_<metric>`) where the trials have it; the tracked metric itself (selection) in studies
    run before the selection split existed."""
    metric = primary_metric(rows)
    test = f"test_{metric}"
    if metric and any(is_number(r.get(test)) for r in rows):
        return test
    return metric


def metric_columns(rows: Sequence[Mapping[str, Any]], primary: str | None = None) -> list[str]:
    """Final metric columns with at least one value: `x` where `final_x` also exists."""
    columns = columns_of(rows)
    found = [c for c in columns if f"final_{c}" in columns or c in KNOWN_METRICS]
    if primary and primary in columns:
        found = [primary] + [c for c in found if c != primary]
    return [c for c in found if any(is_number(r.get(c)) for r in rows)]


def param_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return [c for c in columns_of(rows) if c.startswith("param.")]


def parse_objectives(spec: str) -> list[tuple[str, str]]:
    """`psnr:max,peak_memory_mib:min` -> [("psnr", "max"), ...]; a bare name infers its mode."""
    objectives = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        metric, _, mode = part.partition(":")
        mode = (mode or metric_mode(metric)).strip().lower()
        if mode not in ("max", "min"):
            raise ResultsError(f"objective {part!r}: mode must be max or min")
        objectives.append((metric.strip(), mode))
    if not objectives:
        raise ResultsError(
            f"no objectives in {spec!r} (expected e.g. psnr:max,peak_memory_mib:min)"
        )
    return objectives


def study_directions(results_dir: str | Path, study: str) -> list[str]:
    """The Optuna study's directions (`maximize`/`minimize`) from its journal, if readable."""
    journal = Path(results_dir) / study / "optuna.journal"
    try:
        with journal.open() as f:
            for line in f:
                entry = json.loads(line)
                if entry.get("op_code") == 0 and "directions" in entry:
                    names = {1: "minimize", 2: "maximize"}
                    return [names.get(d, "unknown") for d in entry["directions"]]
    except (OSError, ValueError):
        pass
    return []


# -- summaries ------------------------------------------------------------------------------


def best_trial(
    rows: Sequence[Mapping[str, Any]], metric: str, mode: str | None = None
) -> Mapping[str, Any] | None:
    """The completed trial with the best value of `metric` (None when no trial has one)."""
    mode = mode or metric_mode(metric, rows)
    scored = [r for r in rows if _completed(r) and is_number(r.get(metric))]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda r: float(r[metric]))


def sort_rows(
    rows: Sequence[Mapping[str, Any]], column: str, mode: str | None = None
) -> list[Mapping[str, Any]]:
    """Best first (by `mode`, else the column's own direction), rows without a value last."""
    mode = mode or metric_mode(column, rows)
    present = [r for r in rows if r.get(column) is not None and not _nan(r.get(column))]
    missing = [r for r in rows if r.get(column) is None or _nan(r.get(column))]
    try:
        ordered = sorted(present, key=lambda r: r[column], reverse=mode == "max")
    except TypeError:  # mixed types: compare as text
        ordered = sorted(present, key=lambda r: str(r[column]), reverse=mode == "max")
    return ordered + missing


def solver_summary(
    rows: Sequence[Mapping[str, Any]], metric: str | None, mode: str | None = None
) -> list[dict[str, Any]]:
    """Per solver: trial counts by status, best/mean metric over completed trials, means."""
    out = []
    for solver in sorted({str(r.get("solver")) for r in rows}):
        group = [r for r in rows if str(r.get("solver")) == solver]
        counts = Counter(r.get("status") for r in group)
        entry: dict[str, Any] = {
            "solver": solver,
            "trials": len(group),
            **{status: counts.get(status, 0) for status in STATUSES},
        }
        if metric:
            values = [float(r[metric]) for r in group if _completed(r) and is_number(r.get(metric))]
            best = best_trial(group, metric, mode)
            entry.update(
                metric=metric,
                best=best[metric] if best else None,
                best_trial=best["trial_id"] if best else None,
                mean=sum(values) / len(values) if values else None,
            )
        entry["mean_wall_s"] = _mean(r.get("wall_time_s") for r in group)
        entry["mean_peak_mib"] = _mean(peak_mib(r) for r in group)
        out.append(entry)
    return out


def peak_mib(row: Mapping[str, Any]) -> float | None:
    if is_number(row.get("peak_memory_mib")):
        return float(row["peak_memory_mib"])
    if is_number(row.get("peak_memory_bytes")):
        return float(row["peak_memory_bytes"]) / 2**20
    return None


def list_studies(results_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per study folder (one with a `trials/` folder), sorted by name.

    Keys: study, path, trials, completed, diverged, stopped, error (= errored), metric (the
    primary one) and its mode, best and best_trial (completed trials only), last_modified (the
    newest result file), disk_bytes (everything under the study folder: rows, Tune and Ray
    Train checkpoints), problem (why the study could not be read, else None).
    """
    root = _results_root(results_dir)
    out = []
    for name in _study_names(root):
        folder = root / name
        files = list((folder / TRIALS).glob("*.parquet")) + list(
            (folder / HISTORY).glob("*.parquet")
        )
        mtime = max((f.stat().st_mtime for f in files), default=folder.stat().st_mtime)
        entry: dict[str, Any] = {
            "study": name,
            "path": str(folder),
            "trials": 0,
            **{status: 0 for status in STATUSES},
            "metric": None,
            "mode": None,
            "best": None,
            "best_trial": None,
            "last_modified": datetime.fromtimestamp(mtime),
            "disk_bytes": disk_usage(folder),
        }
        if any((folder / TRIALS).glob("*.parquet")):
            try:
                rows = load_trials(root, name)
            except ResultsError as exc:  # one unreadable study does not hide the others
                entry["problem"] = str(exc)
                rows = []
            counts = Counter(r.get("status") for r in rows)
            entry["trials"] = len(rows)
            entry.update({status: counts.get(status, 0) for status in STATUSES})
            metric = primary_metric(rows)
            if metric:
                mode = metric_mode(metric, rows)
                best = best_trial(rows, metric, mode)
                entry.update(metric=metric, mode=mode)
                if best is not None:
                    entry.update(best=best[metric], best_trial=best["trial_id"])
        entry["errored"] = entry["error"]
        entry.setdefault("problem", None)
        out.append(entry)
    return out


def disk_usage(folder: Path) -> int:
    """Bytes of every regular file under `folder` (links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:  # removed while walking
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


# -- transfer (Table 3) ---------------------------------------------------------------------

#: Table 3's metric columns: (target task, metric columns tried in order, header)
TRANSFER_COLUMNS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("enhance", ("niqe",), "EN NIQE↓"),
    ("enhance", ("loe",), "EN LOE↓"),
    ("detect", ("ap", "map"), "DE mAP↑"),
    ("segment", ("miou",), "SE mIoU↑"),
)
TASK_LABELS = {"enhance": "Enhancement", "detect": "Detection", "segment": "Segmentation"}


def solver_label(name: Any) -> Any:
    """A solver's display name from the registry (`Solver.label`); an unknown name as is.
    (Imported here, not at the top: the registry brings torch, which listing studies avoids.)"""
    from bgl.solvers.registry import SOLVERS

    solver = SOLVERS.get(name) if isinstance(name, str) else None
    return solver.label if solver is not None else name


def is_transfer(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Rows of a transfer study (they carry stage and model columns)."""
    return any(r.get("stage") in ("source", "target") and r.get("model") for r in rows)


def transfer_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per trained model (M_a, ...): basic task, strategy, then Table 3's columns.

    A cell is the target trial's metric (a number), its status when it did not complete
    ('diverged', 'error', ...), or None where that target was not run or lacks the metric.
    `source_status` says how the model's own training ended.
    """
    if not is_transfer(rows):
        raise ResultsError("not a transfer study: its trials have no stage/model columns")
    models: dict[str, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: (str(r.get("model")), r.get("stage") != "source")):
        model = r.get("model")
        if not model:
            continue
        entry = models.setdefault(
            str(model),
            {
                "model": model,
                "basic_task": TASK_LABELS.get(r.get("source_task"), r.get("source_task")),
                "strategy": solver_label(r.get("strategy")),
                "source_status": None,
                **{header: None for *_, header in TRANSFER_COLUMNS},
            },
        )
        if r.get("stage") == "source":
            entry["source_status"] = r.get("status")
            continue
        for task, metrics, header in TRANSFER_COLUMNS:
            if r.get("target_task") != task or is_number(entry[header]):
                continue  # another task's column, or already filled by a completed trial
            if not _completed(r):
                entry[header] = r.get("status")
                continue
            value = next((r[m] for m in metrics if is_number(r.get(m))), None)
            entry[header] = float(value) if value is not None else None
    return [models[m] for m in sorted(models, key=_model_order)]


def _model_order(model: str) -> tuple[int, str]:
    suffix = model.removeprefix("M_")
    return (int(suffix), "") if suffix.isdigit() else (0, suffix)


# -- Pareto ---------------------------------------------------------------------------------


def dominates(a: Mapping[str, Any], b: Mapping[str, Any], objectives: Objectives) -> bool:
    """`a` is no worse than `b` in every objective and better in at least one."""
    better = False
    for metric, mode in objectives:
        x, y = float(a[metric]), float(b[metric])
        if mode == "min":
            x, y = -x, -y
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(
    rows: Sequence[Mapping[str, Any]], objectives: Objectives
) -> list[Mapping[str, Any]]:
    """Non-dominated completed trials (every objective a finite number), best first by the
    first objective. Ties are all kept."""
    for _, mode in objectives:
        if mode not in ("max", "min"):
            raise ResultsError(f"objective mode must be max or min, got {mode!r}")
    candidates = [
        r
        for r in rows
        if _completed(r) and all(is_number(r.get(metric)) for metric, _ in objectives)
    ]
    front = [r for r in candidates if not any(dominates(o, r, objectives) for o in candidates)]
    metric, mode = objectives[0]
    return sorted(front, key=lambda r: float(r[metric]), reverse=mode == "max")


# -- export ---------------------------------------------------------------------------------


def export(
    results_dir: str | Path, study: str, fmt: str, out_path: str | Path | None = None
) -> list[Path]:
    """Write `<out>/trials.<fmt>` and `<out>/history.<fmt>` (default out: `<study>/export`).

    csv has a header row; json is one array of objects per table; NULLs stay null. Each file
    is written under a temporary name and renamed, so a reader never sees half a file.
    """
    if fmt not in EXPORT_FORMATS:
        raise ResultsError(f"export format must be one of {', '.join(EXPORT_FORMATS)}: {fmt!r}")
    folder = study_path(results_dir, study)
    out = Path(out_path) if out_path is not None else folder / "export"
    out.mkdir(parents=True, exist_ok=True)
    options = {
        "csv": "FORMAT csv, HEADER true",
        "json": "FORMAT json, ARRAY true",
        "parquet": "FORMAT parquet",
    }[fmt]
    con = open_study(results_dir, study)
    staged: list[tuple[str, Path]] = []
    try:
        for table in (TRIALS, HISTORY):
            order = "trial_id, step, kind DESC" if table == HISTORY else "trial_id"
            fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{table}.", suffix=f".{fmt}.tmp")
            os.close(fd)
            staged.append((tmp, out / f"{table}.{fmt}"))
            con.execute(
                f"COPY (SELECT * FROM {table} ORDER BY {order}) TO {_literal(tmp)} ({options})"
            )
        for tmp, final in staged:
            os.replace(tmp, final)
    except duckdb.Error as exc:
        raise ResultsError(f"export of {study!r} to {out} failed: {exc}") from exc
    finally:
        con.close()
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
    return [final for _, final in staged]


# -- helpers --------------------------------------------------------------------------------


def _completed(row: Mapping[str, Any]) -> bool:
    return row.get("status", "completed") == "completed"


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _mean(values: Iterable[Any]) -> float | None:
    numbers = [float(v) for v in values if is_number(v)]
    return sum(numbers) / len(numbers) if numbers else None
