"""`bgl results compare` (groups over seeds, paired differences) and `bgl results importance`
(Optuna importances from the journal), each checked against an independent computation."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from scipy import stats

from bgl.analysis.compare import compare_groups
from bgl.analysis.query import load_trials
from tests.test_results_cli import run
from tests.test_results_query import _trial, png_size

NAIVE = {0: 20.0, 1: 20.5, 2: 19.8, 3: 20.2}
IBGL = {0: 21.0, 1: 21.9, 2: 20.1, 3: 21.4}
# messy: ibgl lacks seed 3 and has seed 5; tbgl has one completed seed and one diverged; aid ran
# twice the steps
MESSY_IBGL = {0: 21.0, 1: 21.9, 2: 20.1, 5: 22.0}


def _seeded(study_dir: Path, solver: str, values: dict[int, float], **extra: Any) -> None:
    for seed, value in values.items():
        trial_id = f"{solver}_s{seed}"
        _trial(
            study_dir, study_dir.name, trial_id, solver, psnr=value, extra={"seed": seed} | extra
        )


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compare") / "results"
    clean = root / "clean"
    _seeded(clean, "naive", NAIVE)
    _seeded(clean, "ibgl", IBGL)
    messy = root / "messy"
    _seeded(messy, "naive", NAIVE)
    _seeded(messy, "ibgl", MESSY_IBGL)
    _seeded(messy, "tbgl", {0: 20.7})
    _trial(messy, "messy", "tbgl_s1", "tbgl", psnr=None, status="diverged", extra={"seed": 1})
    _seeded(messy, "aid", {0: 20.9, 1: 21.1}, steps=8)
    return root


def _independent_t(values: list[float]) -> tuple[float, float]:
    x = np.array(values)
    sem = x.std(ddof=1) / math.sqrt(len(x))
    return stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sem)


def test_interval_and_paired_test_match_an_independent_computation(results: Path) -> None:
    result = compare_groups(load_trials(results, "clean"), "psnr")
    assert (result["metric"], result["mode"], result["baseline"]) == ("psnr", "max", "naive")
    assert result["comparable"] is True and result["notes"] == []
    naive, ibgl = result["groups"]
    assert (naive["group"], ibgl["group"]) == ("naive", "ibgl")  # the baseline first
    for group, values in ((naive, NAIVE), (ibgl, IBGL)):
        x = list(values.values())
        assert group["n"] == 4
        assert group["mean"] == pytest.approx(np.mean(x))
        assert group["std"] == pytest.approx(np.std(x, ddof=1))
        assert (group["ci_low"], group["ci_high"]) == pytest.approx(_independent_t(x))
    (diff,) = result["differences"]
    d = np.array([IBGL[s] - NAIVE[s] for s in range(4)])
    t_stat = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))  # paired t by hand
    assert diff["n_pairs"] == 4 and diff["n_unmatched"] == 0
    assert diff["mean_diff"] == pytest.approx(d.mean())
    assert (diff["ci_low"], diff["ci_high"]) == pytest.approx(_independent_t(list(d)))
    assert diff["p_value"] == pytest.approx(2 * stats.t.sf(abs(t_stat), d.size - 1))
    x, y = [IBGL[s] for s in range(4)], [NAIVE[s] for s in range(4)]
    assert diff["p_value"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
    assert diff["excludes_zero"] is True  # ibgl is ahead on every seed


def test_bootstrap_is_a_seeded_percentile_interval(results: Path) -> None:
    rows = load_trials(results, "clean")
    first = compare_groups(rows, "psnr", bootstrap=500)
    assert first == compare_groups(rows, "psnr", bootstrap=500)  # fixed seed: same numbers
    assert first["interval"] == "bootstrap" and first["bootstrap_seed"] == 0
    x = np.array(list(NAIVE.values()))
    means = x[np.random.default_rng(0).integers(0, 4, size=(500, 4))].mean(axis=1)
    naive = first["groups"][0]
    assert (naive["ci_low"], naive["ci_high"]) == pytest.approx(np.percentile(means, [2.5, 97.5]))


def test_not_comparable_groups_are_noted(results: Path) -> None:
    result = compare_groups(load_trials(results, "messy"), "psnr")
    assert result["comparable"] is False
    groups = {g["group"]: g for g in result["groups"]}
    assert result["groups"][0]["group"] == "naive"
    tbgl = groups["tbgl"]
    assert tbgl["n"] == 1 and tbgl["std"] is None and tbgl["ci_low"] is None
    assert tbgl["failed"]["diverged"] == 1
    diffs = {d["group"]: d for d in result["differences"]}
    ibgl = diffs["ibgl"]
    assert ibgl["n_pairs"] == 3 and ibgl["n_unmatched"] == 2
    assert ibgl["unmatched"] == {"group": [5], "baseline": [3]}
    d = [MESSY_IBGL[s] - NAIVE[s] for s in range(3)]
    assert ibgl["mean_diff"] == pytest.approx(np.mean(d))
    assert (ibgl["ci_low"], ibgl["ci_high"]) == pytest.approx(_independent_t(d))
    assert diffs["tbgl"]["n_pairs"] == 1 and diffs["tbgl"]["p_value"] is None
    notes = "\n".join(result["notes"])
    assert "failed trials left out: TBGL: 1 diverged" in notes
    assert "TBGL: n=1, no interval" in notes
    unmatched = "IBGL vs Naive: seeds without a partner left out of the pairing (2 trials): "
    assert unmatched + "IBGL seed 5; Naive seed 3" in notes
    assert "budgets differ: steps" in notes and "AID 8" in notes


def test_group_by_any_column_and_a_chosen_baseline(results: Path) -> None:
    rows = load_trials(results, "messy")
    result = compare_groups(rows, "psnr", by="steps", baseline=8)
    assert result["baseline"] == 8 and [g["group"] for g in result["groups"]] == [8, 4]
    (diff,) = result["differences"]  # a seed's trials in one group are averaged, then paired
    by_seed = {s: np.mean([NAIVE[s], MESSY_IBGL[s], 20.7][: 3 if s == 0 else 2]) for s in (0, 1)}
    aid = {0: 20.9, 1: 21.1}
    assert diff["n_pairs"] == 2 and diff["mean_diff"] == pytest.approx(
        np.mean([by_seed[s] - aid[s] for s in (0, 1)])
    )
    assert any("several trials per seed (seed 0 ×3, seed 1 ×2" in n for n in result["notes"])
    with pytest.raises(ValueError, match="--by seed: groups are paired seed by seed"):
        compare_groups(rows, "psnr", by="seed")
    with pytest.raises(ValueError, match="--baseline nope: no such solver"):
        compare_groups(rows, "psnr", baseline="nope")
    with pytest.raises(ValueError, match="--by param.solver.nope: no such trial column"):
        compare_groups(rows, "psnr", by="param.solver.nope")


def test_cli_formats_parse(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["results", "--results-dir", str(results), "compare"]
    code, out, err = run([*base, "messy", "--format", "json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["study"] == "messy" and data["comparable"] is False
    assert data["mode"] == "max" and data["notes"] and "note: " in err  # notes kept off stdout
    code, out, _ = run([*base, "clean", "--format", "csv"], capsys)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["group"] for r in rows] == ["naive", "ibgl"]
    assert rows[0]["mean_diff"] == "" and float(rows[1]["p_value"]) == pytest.approx(
        stats.ttest_rel(list(IBGL.values()), list(NAIVE.values())).pvalue
    )
    assert float(rows[0]["n"]) == 4 and rows[1]["baseline"] == "naive"
    code, out, _ = run([*base, "messy", "--format", "markdown"], capsys)
    assert code == 0
    lines = out.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[1].startswith("|---") and len(table) == 2 + 4
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert all(len(c) == len(cells[0]) for c in cells)
    assert cells[2][0] == "Naive" and cells[2][4] == "—"
    assert any(line.startswith("- note: ") for line in lines)
    code, out, _ = run([*base, "messy"], capsys)
    assert code == 0 and "paired difference to Naive" in out and "note: " in out


def test_cli_plot_and_errors(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["results", "--results-dir", str(results), "compare"]
    code, out, _ = run([*base, "messy", "--plot"], capsys)
    path = results.resolve() / "messy" / "plots" / "compare_psnr_by_solver.png"
    assert code == 0 and f"wrote {path}" in out
    width, height = png_size(path)
    assert width >= 300 and height >= 200
    code, _, err = run([*base, "nope"], capsys)
    assert code == 2 and "study 'nope' not found" in err
    code, _, err = run([*base, "clean", "--metric", "nope"], capsys)
    assert code == 2 and "--metric nope: no such trial column" in err


# -- importance -----------------------------------------------------------------------------


def _objective(trial: optuna.Trial) -> float | tuple[float, float]:
    x = trial.suggest_float("solver.delta", 1e-3, 1.0, log=True)
    k = trial.suggest_int("solver.k", 1, 8)
    name = trial.suggest_categorical("solver.name", ["ibgl", "tbgl"])
    psnr = 20 + 3 * math.log10(x) ** 2 + 0.1 * k + (name == "ibgl")
    trial.set_user_attr("tune_trial_id", f"t{trial.number}")  # what bgl's searcher tags
    if trial.number == 3:
        return math.nan  # a failed trial: Optuna records it as FAIL
    if len(trial.study.directions) > 1:
        return psnr, 100.0 * k
    return psnr


def _journal_study(results: Path, name: str, n: int, directions: list[str]) -> optuna.Study:
    """A study written by Optuna itself where bgl keeps it: <results>/<study>/optuna.journal."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    folder = results / name
    folder.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=directions,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.optimize(_objective, n_trials=n)
    return study


@pytest.fixture(scope="module")
def journals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = tmp_path_factory.mktemp("importance") / "results"
    _journal_study(root, "single", 16, ["maximize"])
    multi = _journal_study(root, "multi", 12, ["maximize", "minimize"])
    for t in multi.get_trials():  # rows for the trials, so the objectives get their names
        if t.state == optuna.trial.TrialState.COMPLETE:
            name = t.params["solver.name"]
            _trial(
                root / "multi",
                "multi",
                f"t{t.number}",
                name,
                psnr=t.values[0],
                peak_mib=t.values[1],
            )
    _journal_study(root, "tiny", 1, ["maximize"])
    return root


def _expected(results: Path, name: str, target: Any = None) -> dict[str, float]:
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    backend = JournalFileBackend(str(results / name / "optuna.journal"))
    study = optuna.load_study(study_name=name, storage=JournalStorage(backend))
    return get_param_importances(study, evaluator=PedAnovaImportanceEvaluator(), target=target)


@pytest.mark.filterwarnings("ignore:PedAnovaImportanceEvaluator computes")
def test_importance_matches_optuna(journals: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = journals / "single" / "optuna.journal"
    before = journal.read_bytes()
    base = ["results", "--results-dir", str(journals), "importance"]
    code, out, _ = run([*base, "single", "--format", "json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["evaluator"] == "PedAnovaImportanceEvaluator" and data["fallback"] is None
    assert data["complete"] == 15 and data["other_states"] == {"fail": 1}
    (objective,) = data["objectives"]
    assert objective["direction"] == "maximize"
    expected = _expected(journals, "single")
    assert objective["importances"] == pytest.approx(expected)
    assert list(objective["importances"]) == list(expected)  # most important first
    assert journal.read_bytes() == before  # read, never written
    assert sorted(p.name for p in journal.parent.iterdir()) == ["optuna.journal"]  # no lock

    code, out, _ = run([*base, "multi", "--format", "json"], capsys)
    assert code == 0
    data = json.loads(out)
    psnr, memory = data["objectives"]
    assert (psnr["name"], psnr["direction"]) == ("psnr", "maximize")
    assert (memory["name"], memory["direction"]) == ("peak_memory_mib", "minimize")
    # PED-ANOVA ranks low targets as good: a maximised objective is negated
    assert psnr["importances"] == pytest.approx(
        _expected(journals, "multi", lambda t: -t.values[0])
    )
    assert memory["importances"] == pytest.approx(
        _expected(journals, "multi", lambda t: t.values[1])
    )

    code, out, _ = run([*base, "single"], capsys)
    assert code == 0 and "PedAnovaImportanceEvaluator over 15 complete trials" in out
    top = next(iter(expected))
    line = next(line for line in out.splitlines() if f"│ {top} " in line)
    assert f"{expected[top]:.3f}" in line


def test_importance_errors_and_fallback(
    journals: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["results", "--results-dir", str(journals), "importance"]
    code, _, err = run([*base, "nope"], capsys)
    assert code == 2 and "study 'nope' not found" in err
    code, _, err = run([*base, "tiny"], capsys)
    assert code == 2 and "has 1 complete trial" in err and "at least 2" in err
    (journals / "grid" / "trials").mkdir(parents=True)
    code, _, err = run([*base, "grid"], capsys)
    assert code == 2 and "has no Optuna journal" in err

    def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(optuna.importance.PedAnovaImportanceEvaluator, "evaluate", broken)
    code, out, err = run([*base, "single", "--format", "json"], capsys)
    if code == 0:  # scikit-learn installed: fANOVA took over
        data = json.loads(out)
        assert data["evaluator"] == "FanovaImportanceEvaluator"
        assert "PED-ANOVA failed: RuntimeError: broken on purpose" in data["fallback"]
    else:  # without scikit-learn both fail, and the error says so
        assert code == 2 and "broken on purpose" in err and "fANOVA fallback failed" in err


def test_cli_compare_carries_power_and_equivalence(
    results: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bgl.analysis.power import minimal_detectable_effect

    base = ["results", "--results-dir", str(results), "compare", "clean"]
    code, out, _ = run([*base, "--format", "json", "--margin", "0.5"], capsys)
    assert code == 0
    data = json.loads(out)
    (diff,) = data["differences"]
    d = np.array([IBGL[s] - NAIVE[s] for s in sorted(NAIVE)])
    assert data["margin"] == 0.5
    assert diff["mde"] == pytest.approx(minimal_detectable_effect(d.std(ddof=1), 4))
    assert diff["verdict"].startswith("differs by +0.975 [")  # the interval excludes 0
    code, out, _ = run(base, capsys)
    assert code == 0 and "MDE" in out and "differs by" in out


def test_plan_says_how_many_seeds_a_pilot_needs(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from bgl.analysis.power import seeds_needed

    study = tmp_path / "next.yaml"
    study.write_text(
        yaml.safe_dump(
            {"name": "next", "output_dir": str(results), "base": {"seed": 0},
             "search": {"sampler": "grid", "metric": "psnr", "mode": "max",
                        "solvers": ["naive", "ibgl"], "params": {"seed": {"choices": [0, 1]}}}}
        )
    )  # fmt: skip
    from bgl.cli import main

    def plan(*extra: str) -> tuple[int, str]:
        code = main(["study", "plan", str(study), *extra])
        return code, capsys.readouterr().out

    code, out = plan("--detect", "0.3", "--pilot", "clean", "--format", "json")
    assert code == 0
    (row,) = json.loads(out)["detect"]
    d = np.array([IBGL[s] - NAIVE[s] for s in sorted(NAIVE)])
    assert row["group"] == "IBGL" and row["pilot_pairs"] == 4
    assert row["seeds_needed"] == seeds_needed(d.std(ddof=1), 0.3)
    code, out = plan("--detect", "0.3", "--pilot", "clean")
    assert code == 0 and "seeds needed" in "".join(out.split("\n"))
    assert plan("--detect", "0.3")[0] != 0
