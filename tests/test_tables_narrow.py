"""Every table bgl prints to a terminal is legible at 80 columns (issue 17): no line wider than
the console, no cell cut with an ellipsis, the essential headers and values present; `--wide`
brings back every column with its full name."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from bgl.cli.eval import row_tables
from bgl.cli.results import add_results_command
from bgl.results.report import FINAL_KEY
from bgl.results.tables import Column, fit_table, short_names
from bgl.study.callbacks import LiveTable
from tests.test_results_query import make_results

WIDTH = 80


def _console(width: int = WIDTH) -> Console:
    return Console(width=width, record=True, file=io.StringIO(), color_system=None)


def _text(*renderables: Any, width: int = WIDTH) -> str:
    console = _console(width)
    for r in renderables:
        console.print(r)
    return console.export_text()


def _legible(text: str, width: int = WIDTH) -> None:
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, max(lines, key=len)
    assert "…" not in text


def _row(text: str, first: str) -> dict[str, str]:
    """The cells of the table row starting with `first`, by header (single-line headers)."""
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith(f"│ {first} "))
    above = lines[: lines.index(row)]
    header = next(line for line in reversed(above) if line.startswith("┃"))
    names = [c.strip() for c in header.split("┃")[1:-1]]
    return dict(zip(names, [c.strip() for c in row.split("│")[1:-1]]))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results(tmp_path_factory.mktemp("narrow"))


def run(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> str:
    """`bgl results ...` in an 80-column terminal (rich reads COLUMNS)."""
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    parser = argparse.ArgumentParser(prog="bgl")
    add_results_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_results_show_fits_80_columns(
    results: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["results", "--results-dir", str(results), "show", "alpha"]
    out = run([*argv, "--pareto", "psnr:max,peak_memory_mib:min"], capsys, monkeypatch)
    _legible(out)
    t2 = _row(out, "t2")  # trials table: short headers, the metric to 1e-4, the step
    assert t2["solver"] == "ibgl" and t2["status"] == "completed"
    assert t2["psnr"] == "22.0000" and t2["step"] == "4" and t2["k"] == "2"
    assert "solver.k" not in out.split("per solver")[0]  # the short header, not the path
    for solver in ("naive", "ibgl", "tbgl"):
        assert f"│ {solver} " in out
    assert _row(out, "ibgl")["best psnr"] == "22.0000"  # per-solver summary
    assert "Pareto front (psnr max, peak_memory_mib min): 4 trials" in out
    assert "more columns: --wide" in out

    wide = run([*argv, "--wide"], capsys, monkeypatch)
    row = _row(wide, "t2")  # the full table: every column, full names
    assert row["solver.k"] == "2" and row["solver.delta"] == "-"
    assert row["peak MiB"] == "300" and row["wall s"] == "1.5" and row["steps"] == "4"
    assert "mean peak MiB" in wide and "more columns" not in wide
    assert max(len(line) for line in wide.splitlines()) > WIDTH


def test_list_compare_query_importance_fit_80_columns(
    results: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["results", "--results-dir", str(results)]
    out = run([*base, "list"], capsys, monkeypatch)
    _legible(out)
    alpha = _row(out, "alpha")
    assert alpha["trials"] == "6" and alpha["completed"] == "4" and alpha["best"] == "23.0000"
    assert "last modified" in run([*base, "list", "--wide"], capsys, monkeypatch)

    out = run([*base, "compare", "alpha"], capsys, monkeypatch)
    _legible(out)
    assert _row(out, "IBGL")["mean"] == "21.5000" and "95% CI" in out and "p (t)" in out

    out = run([*base, "query", "select * from trials", "--study", "alpha"], capsys, monkeypatch)
    _legible(out)  # 40-odd columns: a `column | value` table per row
    assert "row 6" in out and "│ trial_id" in out and "as one table: --wide" in out
    out = run([*base, "query", "select solver, max(psnr) as best from trials group by solver"
               " order by solver", "--study", "alpha"], capsys, monkeypatch)  # fmt: skip
    _legible(out)
    assert _row(out, "tbgl")["best"] == "23"


def test_importance_table_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bgl.analysis.importance as importance

    found = {
        "objectives": [
            {"name": "psnr", "direction": "maximize", "importances": {"optim.upper_lr": 0.7}},
            {"name": "peak_memory_mib", "direction": "minimize", "importances": {"seed": 0.2}},
        ],
        "evaluator": "PED-ANOVA",
        "complete": 30,
        "other_states": {},
        "fallback": None,
    }
    monkeypatch.setattr(importance, "param_importances", lambda *_: found)
    out = run(["results", "importance", "x"], capsys, monkeypatch)
    _legible(out)
    assert "optim.upper_lr" in out and "0.700" in out and "psnr (maximize)" in out


def _study() -> Any:
    params = [
        SimpleNamespace(path="solver.name", type="categorical"),
        SimpleNamespace(path="seed", type="categorical"),
        SimpleNamespace(path="solver.k", type="int"),
        SimpleNamespace(path="solver.delta", type="constant"),
        SimpleNamespace(path="optim.upper_lr", type="float"),
        SimpleNamespace(path="optim.lower_lr", type="float"),
    ]
    return SimpleNamespace(objectives=[SimpleNamespace(metric="psnr")], params=params)


def _trials() -> list[Any]:
    """A finished trial (its last report is the run summary: `steps`, not `step`), a running
    one (an evaluation: `step`) and a pending one (no result yet)."""
    config = {"seed": 0, "solver.k": 2, "optim.upper_lr": 1e-3, "optim.lower_lr": 3e-3}
    final = {FINAL_KEY: True, "status": "completed", "steps": 225, "psnr": 19.81234}
    return [
        SimpleNamespace(
            trial_id="e6c1f_00000",
            status="TERMINATED",
            config={**config, "solver.name": "naive"},
            last_result=final,
        ),
        SimpleNamespace(
            trial_id="e6c1f_00001",
            status="RUNNING",
            config={**config, "solver.name": "tbgl", "seed": 1},
            last_result={"step": 150, "phase": "warm", "psnr": 18.5},
        ),
        SimpleNamespace(
            trial_id="e6c1f_00002",
            status="PENDING",
            config={**config, "solver.name": "ibgl", "seed": 2},
            last_result=None,
        ),
    ]


def test_live_table_fits_80_columns_and_shows_the_final_step() -> None:
    live = LiveTable(_study())
    out = _text(live._table(_trials(), WIDTH))
    _legible(out)
    done, running = _row(out, "e6c1f_00000"), _row(out, "e6c1f_00001")
    assert done["status"] == "completed" and done["solver"] == "naive"
    assert done["step"] == "225" and done["psnr"] == "19.8123"  # the summary's step count
    assert running["step"] == "150" and running["status"] == "running"
    assert _row(out, "e6c1f_00002")["status"] == "pending"
    assert done["lr_F"] == "0.001" and done["k"] == "2" and done["seed"] == "0"

    narrow = _text(live._table(_trials(), 60), width=60)  # a narrower terminal: fewer params
    _legible(narrow, 60)
    assert _row(narrow, "e6c1f_00000")["step"] == "225" and "lr_G" not in narrow

    wide = LiveTable(_study(), wide=True)
    out = _text(wide._table(_trials()), width=400)
    assert "optim.upper_lr" in out and "optim.lower_lr" in out and "solver.k" in out


def test_eval_rows_split_into_blocks_that_fit() -> None:
    from bgl.metrics.segmentation import TABLE2_HEADERS

    cells = [(h, f"{50 + i:.1f}") for i, h in enumerate(TABLE2_HEADERS)] + [("mIoU", "61.2")]
    method = "segment_run (IBGL)"
    tables = row_tables("segment_run: acdc test split, 8 images (step 300)", method, cells, 80)
    out = _text(*tables)
    _legible(out)
    assert len(tables) > 1 and out.count(method) == len(tables)
    for header, value in cells:
        assert header in out and value in out
    assert len(row_tables("t", method, cells, None)) == 1  # --wide: one table


def test_study_plan_fits_80_columns() -> None:
    from bgl.cli.study import _print_plan
    from bgl.study.preview import plan_trials
    from bgl.study.schema import load_study

    console = _console()
    _print_plan(plan_trials(load_study("studies/search.yaml", [])), out=console)
    out = console.export_text()
    _legible(out)
    assert "sampled: solver.k" in out and "warm+steps" in out


def test_fit_table_keeps_rank_0_and_folds_rather_than_cuts() -> None:
    cols = [
        Column("trial", ["a_very_long_trial_identifier_" * 3]),
        Column("psnr", ["20.1234"]),
        Column("optional", ["x" * 30], rank=1),
    ]
    out = _text(fit_table(cols, 40, more="more columns: --wide"), width=40)
    _legible(out, 40)
    assert "psnr" in out and "optional" not in out and "more columns" in out
    assert short_names(["param.solver.k", "param.optim.upper_lr"]) == {
        "param.solver.k": "k",
        "param.optim.upper_lr": "lr_F",
    }
    assert short_names(["param.a.k", "param.b.k"]) == {"param.a.k": "a.k", "param.b.k": "b.k"}


def test_study_run_wide_reaches_the_live_table(tmp_path: Path) -> None:
    """`bgl study run --wide` passes live="wide" down to the callbacks."""
    from bgl.study.experiment import _callbacks
    from bgl.study.schema import parse_study

    study = parse_study({"name": "s", "output_dir": str(tmp_path), "search": {"num_samples": 1}})

    def tables(live: object) -> list[LiveTable]:
        return [c for c in _callbacks(study, live) if isinstance(c, LiveTable)]

    assert [t.wide for t in tables("wide")] == [True]
    assert [t.wide for t in tables(True)] == [False]
    assert tables(False) == []
