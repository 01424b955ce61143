"""`bgl results compare --per budget|wall`: every trial read off its own learning curve at the
compute level all trials reached, against values computed by hand from the written histories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bgl.analysis.budget import at_equal_budget
from bgl.analysis.query import load_history, load_trials
from tests.test_results_cli import run
from tests.test_results_query import _trial

# per solver: the evaluations' cumulative passes and wall seconds; naive is 2.25x cheaper
PASSES = {"naive": [0, 100, 200], "ibgl": [0, 150, 300, 450]}
SECONDS = {"naive": [0.0, 1.0, 2.0], "ibgl": [0.0, 1.5, 3.0, 4.5]}


def _psnr(solver: str, seed: int, i: int) -> float:
    return 10.0 + 3.0 * i + (0.5 if solver == "ibgl" else 0.0) + 0.1 * seed


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("budget") / "results"
    for solver, passes in PASSES.items():
        for seed in range(3):
            history = [
                {"step": 10 * i, "kind": "eval", "phase": "bilevel", "passes": p,
                 "elapsed_s": SECONDS[solver][i], "psnr": _psnr(solver, seed, i)}
                for i, p in enumerate(passes)
            ]  # fmt: skip
            final = history[-1]["psnr"]
            _trial(
                root / "study", "study", f"{solver}_s{seed}", solver, psnr=final,
                extra={"seed": seed, "steps": 10 * (len(passes) - 1)}, history=history,
            )  # fmt: skip
    _trial(root / "study", "study", "old_s0", "tbgl", psnr=30.0, extra={"seed": 0})  # no history
    return root


def test_values_are_read_at_the_smallest_final_budget(results: Path) -> None:
    trials, history = load_trials(results, "study"), load_history(results, "study")
    rows, notes = at_equal_budget(trials, history, "psnr", "passes")
    by_id = {r["trial_id"]: r for r in rows}
    for seed in range(3):  # level 200: naive's last evaluation, IBGL's at 150 passes
        assert by_id[f"naive_s{seed}"]["psnr"] == pytest.approx(_psnr("naive", seed, 2))
        assert by_id[f"ibgl_s{seed}"]["psnr"] == pytest.approx(_psnr("ibgl", seed, 1))
        assert by_id[f"ibgl_s{seed}"]["at_passes"] == 150
    assert by_id["old_s0"]["psnr"] is None  # no curve: left out, not compared at its final
    assert notes[0].startswith("compared at equal compute: 200 passes of F and G")
    assert "75%-100% of the level" in notes[0]
    assert "1 completed trial(s) without passes" in notes[1]
    # the trial rows themselves are untouched
    assert {t["trial_id"]: t["psnr"] for t in trials}["ibgl_s0"] == _psnr("ibgl", 0, 3)


def test_cli_compares_at_equal_budget_and_wall_time(results: Path, capsys) -> None:
    code, out, _ = run(
        ["results", "compare", "study", "--per", "budget", "--format", "json",
         "--results-dir", str(results)], capsys,
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    groups = {g["group"]: g for g in result["groups"]}
    assert result["per"] == "budget" and result["baseline"] == "naive"
    assert groups["naive"]["mean"] == pytest.approx(
        np.mean([_psnr("naive", s, 2) for s in range(3)])
    )
    assert groups["ibgl"]["mean"] == pytest.approx(np.mean([_psnr("ibgl", s, 1) for s in range(3)]))
    (diff,) = [d for d in result["differences"] if d["group"] == "ibgl"]
    assert diff["mean_diff"] == pytest.approx(0.5 - 3.0)  # cheaper naive wins at equal compute
    assert not any(n.startswith("budgets differ") for n in result["notes"])  # equalised
    # at their finals the steps differ and compare says so
    code, out, _ = run(
        ["results", "compare", "study", "--format", "json", "--results-dir", str(results)], capsys
    )
    assert any(n.startswith("budgets differ: steps") for n in json.loads(out)["notes"])
    code, out, _ = run(
        ["results", "compare", "study", "--per", "wall", "--results-dir", str(results)], capsys
    )
    assert code == 0 and "at equal training time" in out and "2.0 s of training" in out
