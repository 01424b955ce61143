"""`results` sub-commands, wired the way bgl.cli wires them: parser -> args.func(args)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bgl.cli.results import add_results_command
from tests.test_results_query import make_results, png_size

_TRIAL = re.compile(r"^│ t\d+ ")  # a trial row of a rich table (ids t1, t2, ...)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="bgl")
    sub = parser.add_subparsers(dest="command", required=True)
    add_results_command(sub)
    args = parser.parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results(tmp_path_factory.mktemp("cli"))


def test_list(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["results", "--results-dir", str(results), "list"], capsys)
    assert code == 0
    alpha = next(line for line in out.splitlines() if "alpha" in line)
    cells = [c.strip() for c in alpha.split("│") if c.strip()]
    assert cells[:6] == ["alpha", "6", "4", "1", "0", "1"]  # trials completed diverged ...
    assert "psnr (max)" in alpha and "23.0000" in alpha and "t4" in alpha
    assert "beta" in out and "bench" not in out


def test_results_dir_after_the_sub_command(
    results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["results", "list", "--results-dir", str(results)], capsys)
    assert code == 0 and "alpha" in out


def test_show(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["results", "--results-dir", str(results), "show", "alpha"], capsys)
    assert code == 0
    assert "alpha: 6 trials (4 completed, 1 diverged, 1 error)" in out
    assert "best 23.0000 (t4, tbgl)" in out
    lines = out.splitlines()
    trial_lines = [line for line in lines if _TRIAL.match(line)]
    assert [line.split()[1] for line in trial_lines] == ["t4", "t2", "t3", "t1", "t5", "t6"]
    t2 = next(line for line in trial_lines if "│ t2 " in line)
    cells = [c.strip() for c in t2.split("│")[1:-1]]
    header = next(line for line in lines if line.startswith("┃ trial"))
    names = [c.strip() for c in header.split("┃")[1:-1]]
    row = dict(zip(names, cells))
    assert row["solver"] == "ibgl" and row["solver.k"] == "2" and row["solver.delta"] == "-"
    assert row["psnr"] == "22.0000" and row["peak MiB"] == "300" and row["wall s"] == "1.5"
    assert "optim.upper_lr" not in names  # one value in every trial: listed as a constant
    assert "constant: optim.upper_lr=0.001" in out
    t6 = dict(zip(names, [c.strip() for c in trial_lines[-1].split("│")[1:-1]]))
    assert t6["status"] == "error" and t6["psnr"] == "-" and t6["peak MiB"] == "-"
    assert "t6 error: RuntimeError: worker died" in out
    assert "t5 diverged: lower loss became nan at step 4" in out
    # per-solver summary
    ibgl = next(line for line in lines if line.startswith("│ ibgl"))
    cells = [c.strip() for c in ibgl.split("│")[1:-1]]
    assert cells[:6] == ["ibgl", "3", "2", "0", "0", "1"]
    assert cells[6:9] == ["22.0000", "21.5000", "t2"]
    # psnr and peak memory are both there: the Pareto view is offered
    assert "--pareto psnr:max,peak_memory_mib:min" in out


def test_show_sort_top_and_pareto(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["results", "--results-dir", str(results), "show", "alpha"]
    code, out, _ = run([*argv, "--sort", "peak_memory_mib", "--top", "2"], capsys)
    assert code == 0
    trial_lines = [line for line in out.splitlines() if _TRIAL.match(line)]
    assert [line.split()[1] for line in trial_lines] == ["t5", "t1"]
    assert "top 2 of 6" in out
    code, out, _ = run([*argv, "--pareto", "psnr:max,peak_memory_mib:min"], capsys)
    assert code == 0
    front = out[out.index("Pareto front (psnr max, peak_memory_mib min): 4 trials") :]
    ids = [line.split()[1] for line in front.splitlines() if _TRIAL.match(line)]
    assert ids == ["t4", "t2", "t3", "t1"]
    code, _, err = run([*argv, "--sort", "nope"], capsys)
    assert code == 2 and "--sort nope: no such column" in err


def test_show_multi_objective_study_prints_the_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = make_results(tmp_path)
    journal = {"op_code": 0, "study_name": "alpha", "directions": [2, 1]}
    (results / "alpha" / "optuna.journal").write_text(json.dumps(journal) + "\n")
    code, out, _ = run(["results", "--results-dir", str(results), "show", "alpha"], capsys)
    assert code == 0 and "Pareto front (psnr max, peak_memory_mib min): 4 trials" in out


def test_query_formats(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["results", "--results-dir", str(results), "query"]
    sql = 'SELECT trial_id, "param.solver.k" AS k, psnr FROM trials ORDER BY trial_id'
    code, out, _ = run([*base, sql, "--study", "alpha", "--format", "csv"], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["trial_id"] for r in rows] == ["t1", "t2", "t3", "t4", "t5", "t6"]
    assert rows[1] == {"trial_id": "t2", "k": "2", "psnr": "22.0"}
    assert rows[4]["psnr"] == "" and rows[0]["k"] == ""
    code, out, _ = run([*base, sql, "--study", "alpha", "--format", "json"], capsys)
    data = json.loads(out)
    assert data[3] == {"trial_id": "t4", "k": None, "psnr": 23.0}
    assert data[4]["psnr"] is None
    code, out, _ = run(
        [*base, "SELECT study, count(*) AS n FROM trials GROUP BY 1 ORDER BY 1"], capsys
    )
    assert code == 0
    assert [line.split()[1:4:2] for line in out.splitlines() if line.startswith("│")] == [
        ["alpha", "6"],
        ["beta", "2"],
    ]
    assert "2 rows" in out


def test_query_error_shows_duckdb_message(
    results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["results", "--results-dir", str(results), "query", "SELECT bogus FROM trials"]
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert "SQL failed" in err and "Binder Error" in err and "bogus" in err


def test_missing_study_and_folder(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["show", "nope"], ["export", "nope", "--format", "csv"], ["plot", "nope"]):
        code, _, err = run(["results", "--results-dir", str(results), *command], capsys)
        assert code == 2
        assert "study 'nope' not found" in err and str(results / "nope") in err.replace("\n", "")
    missing = tmp_path / "no-results"
    code, _, err = run(["results", "--results-dir", str(missing), "list"], capsys)
    assert code == 2 and f"results folder not found: {missing}" in err.replace("\n", "")


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    out_dir = tmp_path / "out"
    argv = ["results", "--results-dir", str(results), "export", "alpha", "--format", fmt]
    code, out, _ = run([*argv, "-o", str(out_dir)], capsys)
    assert code == 0 and f"wrote {out_dir / f'trials.{fmt}'}" in out
    trials = out_dir / f"trials.{fmt}"
    if fmt == "parquet":
        ids = pq.read_table(trials).column("trial_id").to_pylist()
        assert pq.read_table(out_dir / "history.parquet").num_rows == 30
    elif fmt == "json":
        ids = [r["trial_id"] for r in json.loads(trials.read_text())]
    else:
        ids = [r["trial_id"] for r in csv.DictReader(trials.open(newline=""))]
    assert ids == ["t1", "t2", "t3", "t4", "t5", "t6"]


def test_plot(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["results", "--results-dir", str(results), "plot", "beta", "-o", str(tmp_path)]
    code, out, _ = run([*argv, "--pareto", "psnr:max,peak_memory_mib:min"], capsys)
    assert code == 0
    assert "note: skipped psnr vs k" in out
    for name in ("psnr_vs_delta.png", "psnr_curves.png", "pareto.png"):
        assert f"wrote {tmp_path / name}" in out
        png_size(tmp_path / name)
    assert not (tmp_path / "psnr_vs_k.png").exists()
