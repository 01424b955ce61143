"""bgl.analysis.query / plots: views over uneven trial files, summaries, SQL, Pareto, export."""

from __future__ import annotations

import csv
import json
import math
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from bgl.analysis.plots import plot_study
from bgl.analysis.query import (
    QueryError,
    ResultsError,
    StudyNotFoundError,
    export,
    list_studies,
    load_trials,
    metric_columns,
    open_study,
    pareto_front,
    parse_objectives,
    primary_metric,
    query,
    solver_summary,
    sort_rows,
)
from bgl.results.tables import trial_row, write_trial

PARAM_TYPES = {
    "solver.name": "categorical",
    "solver.k": "int",
    "solver.delta": "float",
    "optim.upper_lr": "float",
}
NAN = math.nan


def _history(
    psnr_final: float | None, steps: int = 4, diverge: bool = False, health: bool = False
) -> list[dict]:
    """Warm rows at step 0, bilevel rows after; `health`: the bilevel train rows also carry the
    lower-level health columns (what tbgl, ibgl and aid report; naive does not)."""
    rows: list[dict[str, Any]] = []
    for step in range(0, steps + 1, 2):
        phase = "warm" if step < 2 else "bilevel"
        rows.append(
            {"step": step, "kind": "train", "phase": phase, "elapsed_s": step * 0.5}
            | ({"warm_loss": 1.0 / (step + 1)} if phase == "warm" else {"lower_loss": 0.3})
            | (
                {"lower_grad_norm": 1.0 / step, "upper_lower_cos": 0.5, "ibgl_coef": 0.1 * step}
                if health and phase == "bilevel"
                else {}
            )
        )
        value = None if psnr_final is None else psnr_final - (steps - step)
        if diverge and step == steps:
            value = NAN
        rows.append(
            {"step": step, "kind": "eval", "phase": phase, "elapsed_s": step * 0.5, "psnr": value}
        )
    return rows


def _trial(
    study_dir: Path,
    study: str,
    trial_id: str,
    solver: str,
    *,
    psnr: float | None,
    peak_mib: float | None = 100.0,
    status: str = "completed",
    error: str | None = None,
    params: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    history: list[dict] | None = None,
    param_types: dict[str, str] | None = None,
) -> None:
    result: dict[str, Any] = {
        "bgl_final": True,
        "status": status,
        "error": error,
        "task": "enhance",
        "solver": solver,
        "seed": 0,
        "steps": 4,
        "best_metric": "psnr" if psnr is not None else None,
        "best_value": psnr,
        "wall_time_s": 1.5,
        "workers": 1,
        "device": "cpu:test",
    }
    if psnr is not None or status != "error":
        value = NAN if status == "diverged" or psnr is None else psnr
        result |= {"psnr": value, "final_psnr": value, "ssim": 0.5, "final_ssim": 0.5}
    if peak_mib is not None:
        result |= {"peak_memory_mib": peak_mib, "peak_memory_bytes": int(peak_mib * 2**20)}
    result |= extra or {}
    params = {"solver.name": solver, "optim.upper_lr": 1e-3} | (params or {})
    row = trial_row(study, trial_id, result, params=params)
    write_trial(study_dir, trial_id, row, history or [], param_types or PARAM_TYPES)


def make_results(root: Path) -> Path:
    """results/ with study `alpha` (6 uneven trials) and study `beta` (2 trials)."""
    results = root / "results"
    a = results / "alpha"
    _trial(a, "alpha", "t1", "naive", psnr=20.0, peak_mib=100.0, history=_history(20.0))
    _trial(
        a,
        "alpha",
        "t2",
        "ibgl",
        psnr=22.0,
        peak_mib=300.0,
        params={"solver.k": 2},
        extra={"health_warning": None},
        history=_history(22.0, health=True),
    )
    _trial(
        a,
        "alpha",
        "t3",
        "ibgl",
        psnr=21.0,
        peak_mib=150.0,
        params={"solver.k": 4},
        extra={"health_warning": "step 4: IBGL's coefficient is 40 (it started at 0.2)"},
        history=_history(21.0, health=True),
    )
    _trial(
        a,
        "alpha",
        "t4",
        "tbgl",
        psnr=23.0,
        peak_mib=400.0,
        params={"solver.delta": 0.01},
        extra={"lpips": 0.2, "final_lpips": 0.2},
        history=_history(23.0, health=True),
    )
    _trial(
        a,
        "alpha",
        "t5",
        "tbgl",
        psnr=None,
        status="diverged",
        peak_mib=90.0,
        error="lower loss became nan at step 4",
        params={"solver.delta": 0.05},
        history=_history(19.0, diverge=True),
    )
    # an error trial: no metrics, no history, and no solver.k/delta columns at all
    _trial(
        a,
        "alpha",
        "t6",
        "ibgl",
        psnr=None,
        status="error",
        peak_mib=None,
        error="Traceback (most recent call last):\nRuntimeError: worker died",
        param_types={"solver.name": "categorical", "optim.upper_lr": "float"},
    )
    b = results / "beta"
    _trial(b, "beta", "u1", "naive", psnr=15.0, history=_history(15.0))
    _trial(b, "beta", "u2", "tbgl", psnr=16.0, params={"solver.delta": 0.02})
    (results / "bench").mkdir()  # not a study: no trials folder
    return results


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the module's tests: they read it (export writes only under beta/export)."""
    return make_results(tmp_path_factory.mktemp("study"))


# -- views and listing ----------------------------------------------------------------------


def test_views_union_by_name_and_nan_reads_as_null(results: Path) -> None:
    con = open_study(results, "alpha")
    rows = con.sql(
        'SELECT trial_id, status, psnr, lpips, "param.solver.k", "param.solver.delta", error '
        "FROM trials ORDER BY trial_id"
    ).fetchall()
    assert [r[0] for r in rows] == ["t1", "t2", "t3", "t4", "t5", "t6"]
    by_id = {r[0]: r for r in rows}
    assert by_id["t2"][4] == 2 and by_id["t1"][4] is None and by_id["t6"][4] is None
    assert by_id["t4"][3] == pytest.approx(0.2) and by_id["t1"][3] is None
    assert by_id["t5"][2] is None  # NaN objective of the diverged trial -> NULL
    assert by_id["t6"][6].endswith("worker died") and by_id["t1"][6] is None
    # NaN would otherwise sort above every number
    best = con.execute(
        "SELECT trial_id FROM trials ORDER BY psnr DESC NULLS LAST LIMIT 1"
    ).fetchone()
    assert best == ("t4",)
    history = con.execute("SELECT count(*), count(DISTINCT trial_id) FROM history").fetchone()
    assert history == (5 * 6, 5)  # t6 has no history
    con.close()


def test_list_studies_counts(results: Path) -> None:
    studies = {s["study"]: s for s in list_studies(results)}
    assert set(studies) == {"alpha", "beta"}
    a = studies["alpha"]
    assert (a["trials"], a["completed"], a["diverged"], a["errored"]) == (6, 4, 1, 1)
    assert a["metric"] == "psnr" and a["mode"] == "max"
    assert a["best"] == 23.0 and a["best_trial"] == "t4"
    assert a["last_modified"].year >= 2024
    assert studies["beta"]["trials"] == 2 and studies["beta"]["best"] == 16.0


def test_query_one_study_and_all_studies(results: Path) -> None:
    table = query(
        results,
        "SELECT solver, max(psnr) AS best FROM trials GROUP BY solver ORDER BY solver",
        study="alpha",
    )
    assert table.to_pylist() == [
        {"solver": "ibgl", "best": 22.0},
        {"solver": "naive", "best": 20.0},
        {"solver": "tbgl", "best": 23.0},
    ]
    everything = query(results, "SELECT study, count(*) AS n FROM trials GROUP BY 1 ORDER BY 1")
    assert everything.to_pylist() == [{"study": "alpha", "n": 6}, {"study": "beta", "n": 2}]
    hist = query(results, "SELECT DISTINCT study FROM history ORDER BY 1")
    assert hist.column("study").to_pylist() == ["alpha", "beta"]
    # a statement that returns nothing (SET is refused: the configuration is locked)
    assert query(results, "CREATE TEMP VIEW scratch AS SELECT 1 AS x").num_rows == 0


def test_errors_name_the_path_and_show_duckdb_message(results: Path, tmp_path: Path) -> None:
    with pytest.raises(StudyNotFoundError, match=r"study 'nope' not found: .*results/nope"):
        open_study(results, "nope")
    with pytest.raises(StudyNotFoundError, match="alpha, beta"):
        query(results, "SELECT 1", study="nope")
    missing = tmp_path / "elsewhere"
    with pytest.raises(StudyNotFoundError, match=f"results folder not found: {missing}"):
        list_studies(missing)
    (tmp_path / "r" / "empty" / "trials").mkdir(parents=True)
    with pytest.raises(StudyNotFoundError, match="no finished trials yet"):
        open_study(tmp_path / "r", "empty")
    with pytest.raises(StudyNotFoundError, match="no study results under"):
        query(tmp_path / "r", "SELECT 1")
    with pytest.raises(QueryError, match="SQL failed: .*no_such_column"):
        query(results, "SELECT no_such_column FROM trials", study="alpha")
    with pytest.raises(QueryError, match="Parser Error"):
        query(results, "SELEC 1")
    assert issubclass(StudyNotFoundError, FileNotFoundError)
    assert issubclass(QueryError, ValueError)


def test_column_roles_and_summaries(results: Path) -> None:
    rows = load_trials(results, "alpha")
    assert primary_metric(rows) == "psnr"
    assert metric_columns(rows, "psnr")[:2] == ["psnr", "ssim"]
    assert "lpips" in metric_columns(rows)
    order = [r["trial_id"] for r in sort_rows(rows, "psnr")]
    assert order[:4] == ["t4", "t2", "t3", "t1"] and set(order[4:]) == {"t5", "t6"}
    assert [r["trial_id"] for r in sort_rows(rows, "peak_memory_mib")][:2] == ["t5", "t1"]
    summary = {s["solver"]: s for s in solver_summary(rows, "psnr")}
    assert summary["ibgl"]["trials"] == 3 and summary["ibgl"]["error"] == 1
    assert summary["ibgl"]["best"] == 22.0 and summary["ibgl"]["mean"] == pytest.approx(21.5)
    assert summary["tbgl"]["diverged"] == 1 and summary["tbgl"]["best_trial"] == "t4"
    assert parse_objectives("psnr:max, peak_memory_mib") == [
        ("psnr", "max"),
        ("peak_memory_mib", "min"),
    ]
    with pytest.raises(ResultsError):
        parse_objectives("psnr:up")


# -- Pareto ---------------------------------------------------------------------------------


def _brute_force_front(rows: list[dict], objectives: list[tuple[str, str]]) -> set[str]:
    ok = [
        r
        for r in rows
        if r["status"] == "completed"
        and all(r[m] is not None and np.isfinite(r[m]) for m, _ in objectives)
    ]
    if not ok:
        return set()
    sign = np.array([1.0 if mode == "max" else -1.0 for _, mode in objectives])
    values = np.array([[r[m] for m, _ in objectives] for r in ok]) * sign
    front = set()
    for i, r in enumerate(ok):
        dominated = ((values >= values[i]).all(axis=1) & (values > values[i]).any(axis=1)).any()
        if not dominated:
            front.add(r["trial_id"])
    return front


def test_pareto_small_example(results: Path) -> None:
    rows = load_trials(results, "alpha")
    front = pareto_front(rows, [("psnr", "max"), ("peak_memory_mib", "min")])
    # t4 best psnr, t3 beats t2 (less memory, less psnr), t1 least memory; t5 diverged
    assert [r["trial_id"] for r in front] == ["t4", "t2", "t3", "t1"]
    front = pareto_front(rows, [("psnr", "max"), ("ssim", "max")])
    assert [r["trial_id"] for r in front] == ["t4"]


@pytest.mark.parametrize("seed", range(8))
def test_pareto_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    n_obj = rng.choice([2, 3])
    objectives = [(f"m{j}", rng.choice(["max", "min"])) for j in range(n_obj)]
    rows = []
    for i in range(rng.randint(1, 60)):
        row: dict[str, Any] = {
            "trial_id": f"t{i}",
            "status": rng.choice(["completed"] * 5 + ["diverged", "error"]),
        }
        for metric, _ in objectives:
            value: Any = float(rng.randint(0, 6))  # small grid: many ties and equal points
            roll = rng.random()
            value = None if roll < 0.05 else NAN if roll < 0.1 else value
            row[metric] = value
        rows.append(row)
    front = pareto_front(rows, objectives)
    assert {r["trial_id"] for r in front} == _brute_force_front(rows, objectives)
    first, mode = objectives[0]
    values = [r[first] for r in front]
    assert values == sorted(values, reverse=mode == "max")


# -- export ---------------------------------------------------------------------------------


def _expected(results: Path, table: str) -> list[dict[str, Any]]:
    order = "trial_id, step, kind DESC" if table == "history" else "trial_id"
    return query(results, f"SELECT * FROM {table} ORDER BY {order}", study="alpha").to_pylist()


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-12)
    return a == b


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_round_trip(results: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "exported"
    paths = export(results, "alpha", fmt, out)
    assert paths == [out / f"trials.{fmt}", out / f"history.{fmt}"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    for table, path in zip(["trials", "history"], paths):
        expected = _expected(results, table)
        if fmt == "parquet":
            back = pq.read_table(path).to_pylist()
        elif fmt == "json":
            back = json.loads(path.read_text())
        else:
            with path.open(newline="") as f:
                back = list(csv.DictReader(f))
        assert len(back) == len(expected) > 0
        assert list(back[0]) == list(expected[0])  # same columns, same order
        for got, want in zip(back, expected):
            for key, value in want.items():
                if fmt == "csv":  # text: compare through the expected value's type
                    text = got[key]
                    if value is None:
                        assert text == "", (table, key, text)
                    elif isinstance(value, bool):
                        assert text == str(value).lower()
                    elif isinstance(value, int | float):
                        assert _same(float(text), float(value)), (table, key)
                    else:
                        assert text == str(value), (table, key)
                else:
                    assert _same(got[key], value), (table, key, got[key], value)


def test_export_default_folder_and_bad_format(results: Path) -> None:
    paths = export(results, "beta", "csv")
    assert paths[0] == results.resolve() / "beta" / "export" / "trials.csv"
    assert list_studies(results)[1]["trials"] == 2  # the export folder is not read as trials
    with pytest.raises(ResultsError, match="csv, json, parquet"):
        export(results, "beta", "xlsx")
    with pytest.raises(StudyNotFoundError, match="nope"):
        export(results, "nope", "csv")


# -- plots ----------------------------------------------------------------------------------


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert data[12:16] == b"IHDR"
    assert len(data) > 2000
    return struct.unpack(">II", data[16:24])


def test_plots_written_as_png(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "plots"
    report = plot_study(results, "alpha", out, pareto=[("psnr", "max"), ("peak_memory_mib", "min")])
    names = sorted(p.name for p in report.paths)
    assert names == [
        "alpha-health.png",
        "pareto.png",
        "psnr_curves.png",
        "psnr_vs_delta.png",
        "psnr_vs_k.png",
    ]
    assert report.notes == []
    for path in report.paths:
        width, height = png_size(path)
        assert width >= 300 and height >= 200


def test_plots_skip_absent_data_with_a_note(results: Path, tmp_path: Path) -> None:
    # beta: no IBGL trial, TBGL trial without history; alpha's t6 (all null) never crashes
    report = plot_study(results, "beta", tmp_path / "b", pareto=[("psnr", "max")])
    assert sorted(p.name for p in report.paths) == ["psnr_curves.png", "psnr_vs_delta.png"]
    notes = " | ".join(report.notes)
    assert "skipped psnr vs k" in notes and "Pareto plot: it needs two objectives" in notes
    assert "skipped lower-level health plot" in notes  # beta's history has no health columns
    assert not (tmp_path / "b" / "beta-health.png").exists()
    report = plot_study(results, "alpha", tmp_path / "c", metric="lpips")
    # lpips: only tbgl t4 has it, and no history or IBGL trial does; health needs no metric
    assert [p.name for p in report.paths] == ["lpips_vs_delta.png", "alpha-health.png"]
    assert len(report.notes) == 2


def test_metric_direction_comes_from_what_defines_the_metric() -> None:
    from bgl.analysis.query import metric_mode

    assert [metric_mode(m) for m in ("psnr", "ssim", "lpips", "niqe", "brisque", "loe")] == [
        "max",
        "max",
        "min",
        "min",
        "min",
        "min",
    ]  # fmt: skip  (MetricSpec.direction)
    assert metric_mode("ap") == "max" and metric_mode("miou") == "max"  # the tasks' own modes
    assert metric_mode("final_lpips") == "min" and metric_mode("psnr_generator") == "max"
    assert metric_mode("wall_time_s") == "min" and metric_mode("lower_loss") == "min"
    # what the trials recorded for the metric they tracked wins
    rows = [{"best_metric": "score", "best_mode": "min"}]
    assert metric_mode("score", rows) == "min" and metric_mode("score") == "max"
