"""The lower-level health figure of `bgl results plot`, solver labels and colours from the
registry in bgl.analysis, and `bgl results show` naming a trial's health warning."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import bgl.analysis.plots as plots_module
import bgl.analysis.query as query_module
from bgl.analysis.plots import HEALTH_PANELS, _colour, health_figure, plot_study, swept_params
from bgl.analysis.query import load_history, load_trials, solver_label, transfer_table
from bgl.solvers.registry import SOLVERS
from tests.test_results_cli import run
from tests.test_results_query import _trial, png_size

TYPES = {
    "solver.name": "categorical",
    "solver.k": "int",
    "solver.delta": "float",
    "solver.iterations": "int",
    "optim.upper_lr": "float",
}
WARNING = "step 6: IBGL's coefficient is 120 (it started at 0.5): Eq. 9 degrades"


def _history(
    *, health: bool, aid: bool = False, coef: float = 0.5, naive: bool = False
) -> list[dict[str, Any]]:
    """A warm row, then bilevel train rows (with the health columns when `health`; naive's
    exactly-zero coupling ratio when `naive`) and evals."""
    rows: list[dict[str, Any]] = [
        {"step": 0, "kind": "train", "phase": "warm", "elapsed_s": 0.0, "warm_loss": 1.0}
    ]
    for step in (2, 4, 6):
        row: dict[str, Any] = {"step": step, "kind": "train", "phase": "bilevel", "lower_loss": 0.3}
        if health:
            row |= {
                "lower_grad_norm": 10.0 ** (-step),  # decades: the log axis
                "upper_lower_cos": 0.2 * step / 6,
                "ibgl_coef": coef * 10 ** (step / 2),  # explodes: the symlog axis
                "coupling_ratio": 10 ** (-step / 3),
            }
        if naive:
            row["coupling_ratio"] = 0.0  # no line on the log axis
        if aid:
            row |= {"aid_residual": 1e-3, "aid_products": 5.0}
        rows.append(row)
        rows.append({"step": step, "kind": "eval", "phase": "bilevel", "psnr": 18.0 + step})
    return rows


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Study `gamma`: ibgl (warned), aid, a diverged tbgl, a naive trial and an ibgl run from
    before the health columns (both without them); study `delta`: naive only."""
    results = tmp_path_factory.mktemp("health") / "results"
    g = results / "gamma"
    common: dict[str, Any] = {"param_types": TYPES}
    _trial(g, "gamma", "i1", "ibgl", psnr=24.0, params={"solver.k": 2},
           extra={"health_warning": WARNING}, history=_history(health=True), **common)  # fmt: skip
    _trial(g, "gamma", "a1", "aid", psnr=25.0, params={"solver.k": 3, "solver.iterations": 5},
           extra={"health_warning": None}, history=_history(health=True, aid=True, coef=-0.5),
           **common)  # fmt: skip
    _trial(g, "gamma", "b1", "tbgl", psnr=None, status="diverged", error="nan",
           params={"solver.delta": 0.01}, history=_history(health=True), **common)  # fmt: skip
    _trial(g, "gamma", "n1", "naive", psnr=20.0, history=_history(health=False, naive=True),
           **common)  # fmt: skip
    _trial(g, "gamma", "old", "ibgl", psnr=21.0, params={"solver.k": 4},
           history=_history(health=False), **common)  # fmt: skip
    _trial(results / "delta", "delta", "n2", "naive", psnr=19.0, history=_history(health=False))
    return results


def test_health_figure_panels_lines_and_skipped_trials(results: Path) -> None:
    drawn = health_figure(load_trials(results, "gamma"), load_history(results, "gamma"))
    assert not isinstance(drawn, str)
    assert drawn.trials == ["a1", "i1", "b1"]  # by solver, then id
    assert drawn.skipped == ["n1", "old"]  # history, but none of the health columns
    assert drawn.lines == {column: 3 for column, _, _ in HEALTH_PANELS}
    assert drawn.scales == {
        "lower_grad_norm": "log",
        "upper_lower_cos": "linear",
        "ibgl_coef": "symlog",  # changes sign (aid's is negative) and spans decades
        "coupling_ratio": "log",
    }
    axes = drawn.figure.axes
    assert len(axes) == 4
    assert [ax.get_yscale() for ax in axes] == ["log", "linear", "symlog", "log"]
    # the cos panel also has the health monitor's ±limit lines
    assert [len(ax.get_lines()) for ax in axes] == [3, 3 + 2, 3, 3]
    colours = [line.get_color() for line in axes[0].get_lines()]
    assert colours == [SOLVERS[s].colour for s in ("aid", "ibgl", "tbgl")]
    styles = [line.get_linestyle() for line in axes[0].get_lines()]
    assert styles == ["-", "-", "--"]  # the diverged tbgl trial is dashed
    legend = axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["AID", "IBGL", "TBGL"]
    assert "1 with a health warning" in drawn.figure.get_suptitle()


def test_plot_study_writes_the_health_png(results: Path, tmp_path: Path) -> None:
    report = plot_study(results, "gamma", tmp_path)
    names = sorted(p.name for p in report.paths)
    assert names == [
        "gamma-health.png",
        "psnr_curves.png",
        "psnr_vs_iterations.png",  # searched by the aid trial: a numeric registry key
        "psnr_vs_k.png",
    ]
    # the one tbgl trial diverged
    assert report.notes == [
        "skipped psnr vs delta: no completed TBGL trial with param.solver.delta and psnr"
    ]
    width, height = png_size(tmp_path / "gamma-health.png")
    assert (width, height) == (700, 850)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_study_without_health_columns_gets_a_note(results: Path, tmp_path: Path) -> None:
    report = plot_study(results, "delta", tmp_path)
    assert not (tmp_path / "delta-health.png").exists()
    assert any(n.startswith("skipped lower-level health plot") for n in report.notes)
    # k is read by every solver that takes k steps: the note names them from the registry
    assert any("no completed Naive/IBGL/AID trial with param.solver.k" in n for n in report.notes)


def test_sweeps_cover_every_solver_reading_the_key(
    results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trials = load_trials(results, "gamma")
    assert swept_params(trials) == ["k", "delta", "iterations"]
    figures: list[Any] = []
    monkeypatch.setattr(plots_module, "save_figure", lambda fig, path: figures.append(fig) or path)
    plots_module.plot_vs_param(trials, "psnr", "k", tmp_path / "k.png")
    (ax,) = figures[0].axes
    # ibgl (i1 k=2, old k=4: a mean line) and aid (a1 k=3) both read solver.k
    texts = {t.get_text() for t in ax.get_legend().get_texts()}
    assert texts == {"IBGL trials", "IBGL mean", "AID trials"}
    assert "IBGL, AID; 3 trials" in ax.get_title()
    assert [t for t in ax.get_xticks()] == [2, 3, 4]
    assert "lower steps per upper step" in ax.get_xlabel()  # the registry's description


def test_labels_and_colours_from_the_registry() -> None:
    assert [solver_label(s) for s in ("naive", "tbgl", "ibgl", "aid")] == [
        "Naive", "TBGL", "IBGL", "AID",
    ]  # fmt: skip
    assert solver_label("unknown") == "unknown" and solver_label(None) is None
    assert {s: _colour(s, []) for s in SOLVERS} == {s: v.colour for s, v in SOLVERS.items()}
    # solvers the registry no longer knows get distinct colours no registered solver uses
    extra = [_colour(s, ["old1", "old2"]) for s in ("old1", "old2")]
    assert len(set(extra)) == 2 and not set(extra) & {v.colour for v in SOLVERS.values()}
    rows = [
        {"stage": "source", "model": "M_a", "source_task": "enhance", "strategy": "aid"},
        {"stage": "source", "model": "M_b", "source_task": "enhance", "strategy": "tbgl"},
    ]
    assert [e["strategy"] for e in transfer_table(rows)] == ["AID", "TBGL"]


def test_no_solver_names_hard_coded_in_analysis() -> None:
    for module in (plots_module, query_module):
        source = Path(module.__file__).read_text()
        quoted = re.findall(r"""["'](naive|tbgl|ibgl|aid)["']""", source)
        assert quoted == [], f"{module.__name__}: read bgl.solvers.registry instead"


def test_show_names_the_health_warning(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["results", "--results-dir", str(results), "show", "gamma"], capsys)
    assert code == 0
    assert f"i1 health warning: {WARNING}" in out
    assert out.count("health warning:") == 1  # a1's is null, the others have no column


def test_cli_plot_writes_the_health_png(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["results", "--results-dir", str(results), "plot", "gamma", "-o", str(tmp_path)]
    code, out, _ = run(argv, capsys)
    assert code == 0 and f"wrote {tmp_path / 'gamma-health.png'}" in out
