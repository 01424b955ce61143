"""`bgl study plan`: the trials a study will run, listed without starting (or importing) Ray."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from bgl.cli import main
from bgl.config import ConfigError
from bgl.study.preview import plan_trials
from bgl.study.schema import load_study, parse_study

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"
SHIPPED = {
    "quickstart": [],
    "search": [],
    "solver_ablation": [],
    "transfer": [],
    "paper_enhance": ["--set", "base.data.root=/x"],
}

# one interpreter plans every shipped study through the CLI, as a script would (JSON on stdout),
# then reports which ray modules it imported (none may be)
_SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from bgl.cli import main
    out = {}
    for name, extra in json.loads(sys.argv[1]).items():
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = main(["study", "plan", f"studies/{name}.yaml", *extra, "--format", "json"])
        out[name] = {"rc": rc, "stdout": buf.getvalue()}
    out["ray_modules"] = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def shipped() -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(SHIPPED)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _plan(shipped: dict, name: str) -> dict:
    entry = shipped[name]
    assert entry["rc"] == 0, entry["stdout"]
    return json.loads(entry["stdout"])  # the whole of stdout is the JSON document


def test_plan_never_imports_ray(shipped):
    assert shipped["ray_modules"] == []
    for name in SHIPPED:
        assert _plan(shipped, name)["num_trials"] > 0


def test_quickstart_is_a_grid_of_solvers_and_seeds_at_one_setting(shipped):
    plan = _plan(shipped, "quickstart")
    assert (plan["sampler"], plan["num_trials"]) == ("grid", 9)
    trials = plan["trials"]
    pairs = [(t["solver"], t["params"]["seed"]) for t in trials]
    assert sorted(pairs) == [(s, seed) for s in ("ibgl", "naive", "tbgl") for seed in (0, 1, 2)]
    for t in trials:  # k only where it is read
        assert t["settings"]["solver.k"] == (2 if t["solver"] == "ibgl" else 1)
        assert t["settings"]["total_steps"] == 225
    study = load_study(STUDIES / "quickstart.yaml")
    optims = {str(study.trial_config({"solver.name": s}).optim) for s in study.solvers}
    assert len(optims) == 1  # the same hyperparameters for every solver


def test_search_initial_points_then_tpe(shipped):
    plan = _plan(shipped, "search")
    assert (plan["sampler"], plan["num_trials"], plan["type"]) == ("tpe", 6, "search")
    assert plan["objectives"] == [{"metric": "psnr", "mode": "max"}]
    assert plan["resources"] == {
        "workers_per_trial": 1,
        "cpus_per_worker": 1.0,
        "gpus_per_worker": 0.0,
        "launcher": "in_trial",
        "max_concurrent_trials": 2,
    }
    trials = plan["trials"]
    assert [t["index"] for t in trials] == [1, 2, 3, 4, 5, 6]
    assert [t["kind"] for t in trials] == ["initial"] * 3 + ["sampled"] * 3
    assert [t["solver"] for t in trials[:3]] == ["naive", "tbgl", "ibgl"]
    naive, tbgl, ibgl = (t["settings"] for t in trials[:3])
    assert naive["solver.k"] == 1 and tbgl["solver.k"] == 1  # they take one lower step
    assert ibgl["solver.k"] == "1..4"  # drawn by TPE for IBGL
    assert naive["total_steps"] == 100 and naive["train.warm_steps"] == 60
    assert trials[1]["sampled"] == ["solver.delta", "optim.upper_lr", "optim.lower_lr"]
    assert "solver.k" not in trials[0]["sampled"] and "solver.delta" not in trials[0]["sampled"]
    drawn = trials[3]
    assert drawn["solver"] is None and "solver.name" in drawn["sampled"]
    assert drawn["settings"]["solver.k"] == {"naive": 1, "tbgl": 1, "ibgl": "1..4"}
    ranges = {s["path"]: s for s in plan["space"]}
    assert ranges["solver.k"]["range"] == "1..4" and ranges["solver.k"]["solvers"] == ["ibgl"]
    assert ranges["solver.delta"]["range"] == "0.001..0.1 log"
    assert ranges["solver.name"]["range"] == "[naive, tbgl, ibgl]"


def test_solver_ablation_is_the_whole_grid(shipped):
    """Equal lower-level work (naive at IBGL's and AID's k), joint included, TBGL's Adam unroll,
    AID's relative damping and trust region, eight seeds."""
    plan = _plan(shipped, "solver_ablation")
    trials = plan["trials"]
    solvers = ("naive", "tbgl", "ibgl", "aid", "joint")
    assert plan["num_trials"] == len(trials) == 40 and plan["sampler"] == "grid"
    assert {t["kind"] for t in trials} == {"grid"}
    assert Counter(t["solver"] for t in trials) == dict.fromkeys(solvers, 8)
    for solver in solvers:
        rows = [t for t in trials if t["solver"] == solver]
        assert sorted(t["params"]["seed"] for t in rows) == list(range(8))
        k = 3 if solver in ("naive", "ibgl", "aid") else 1
        assert {t["settings"]["solver.k"] for t in rows} == {k}
        assert {t["settings"]["total_steps"] for t in rows} == {500}  # 300 warm + 200
    by_solver = {t["solver"]: t["params"] for t in trials if t["params"]["seed"] == 0}
    assert by_solver["naive"] == {
        "task.name": "enhance", "solver.name": "naive", "seed": 0, "solver.k": 3,
    }  # fmt: skip
    tbgl, aid = by_solver["tbgl"], by_solver["aid"]
    assert tbgl["solver.delta"] == 0.01 and tbgl["solver.unroll"] == "optimizer"
    assert "solver.k" not in tbgl
    assert aid["solver.curvature"] == "gauss_newton" and aid["solver.iterations"] == 5
    assert aid["solver.damping_scale"] == "rayleigh" and aid["solver.coupling_max"] == 1.0
    assert set(by_solver["joint"]) == {"task.name", "solver.name", "seed"}


def test_transfer_sources_then_targets(shipped):
    plan = _plan(shipped, "transfer")
    trials = plan["trials"]
    assert plan["type"] == "transfer" and plan["num_trials"] == 16
    assert plan["resources"]["gpus_per_worker"] == 1.0
    sources, targets = trials[:4], trials[4:]
    assert [(t["model"], t["source_task"], t["strategy"]) for t in sources] == [
        ("M_a", "detect", "joint"),  # the paper's naive: end-to-end learning
        ("M_b", "detect", "ibgl"),
        ("M_c", "enhance", "joint"),
        ("M_d", "enhance", "ibgl"),
    ]
    assert {t["stage"] for t in sources} == {1} and {t["stage"] for t in targets} == {2}
    assert [t["settings"]["solver.k"] for t in sources] == [1, 3, 1, 3]
    assert sources[0]["settings"]["data.name"] == "darkface"
    assert sources[0]["settings"]["total_steps"] == 120_000
    assert [(t["model"], t["target_task"]) for t in targets] == [
        (m, task) for m in ("M_a", "M_b", "M_c", "M_d") for task in ("enhance", "detect", "segment")
    ]
    assert {t["settings"]["solver.k"] for t in targets} == {1}  # F frozen: one step
    assert {t["settings"]["total_steps"] for t in targets} == {50_000}
    assert targets[2]["objective"]["metric"] == "miou"


def test_paper_enhance_needs_its_root_and_plans_twelve(shipped, capsys):
    plan = _plan(shipped, "paper_enhance")
    trials = plan["trials"]
    assert plan["num_trials"] == 12
    assert [t["kind"] for t in trials] == ["initial"] * 3 + ["sampled"] * 9
    assert trials[2]["params"]["solver.k"] == 80 and trials[2]["settings"]["solver.k"] == 80
    assert trials[3]["settings"]["solver.k"] == {"naive": 1, "tbgl": 1, "ibgl": 80}
    assert main(["study", "plan", str(STUDIES / "paper_enhance.yaml")]) == 2
    assert "base.data.root" in capsys.readouterr().out


def test_table_and_set_overrides(capsys):
    path = str(STUDIES / "search.yaml")
    assert main(["study", "plan", path, "--set", "search.num_samples=8"]) == 0
    out = capsys.readouterr().out
    assert "trials: 8" in out and "sampled by tpe" in out and "in_trial" in out
    assert main(["study", "plan", str(STUDIES / "solver_ablation.yaml")]) == 0
    out = capsys.readouterr().out
    assert "trials: 40" in out and "gauss_newton" in out
    study = load_study(path, ["search.num_samples=2"])
    assert [t["solver"] for t in plan_trials(study)["trials"]] == ["naive", "tbgl"]


def test_bad_study_names_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nbase: {task: {options: {width: 4}}}\n"
        "search: {params: {optim.upper_lr: {type: float, low: 1.0e-2, high: 1.0e-3}}}\n"
    )
    assert main(["study", "plan", str(bad), "--format", "json"]) == 2
    assert "search.params.optim.upper_lr" in capsys.readouterr().out


def _study(**search):
    return parse_study(
        {
            "name": "s",
            "base": {"task": {"options": {"width": 4}}, "train": {"warm_steps": 2, "steps": 3}},
            "search": {"solvers": ["naive", "ibgl"], **search},
        }
    )


def test_initial_points_are_checked_and_unused_keys_shown():
    with pytest.raises(ConfigError, match=r"search.initial\[1\].solver.name: 'aid'"):
        plan_trials(
            _study(num_samples=2, initial=[{"solver.name": "naive"}, {"solver.name": "aid"}])
        )
    study = _study(
        num_samples=2,
        initial=[{"solver.name": "naive", "solver.k": 4, "solver.delta": 0.5, "train.steps": 9}],
        params={"solver.k": {"type": "int", "low": 1, "high": 5}},
    )
    first, second = plan_trials(study)["trials"]
    assert first["ignored"] == ["solver.delta", "train.steps"]  # naive is never asked for delta
    assert first["settings"]["solver.k"] == 4  # naive takes k lower steps where a study says so
    assert first["settings"]["train.steps"] == 3
    assert second["kind"] == "sampled" and "ignored" not in second


def test_grid_order_matches_tune():
    """The plan's grid is Tune's: same points, same order, the grid repeated num_samples times."""
    pytest.importorskip("ray")
    from ray.tune.search.variant_generator import generate_variants

    from bgl.study.space import drop_inapplicable, grid_space

    study = parse_study(
        {
            "name": "g",
            "base": {"task": {"options": {"width": 4}}},
            "search": {
                "sampler": "grid",
                "num_samples": 2,
                "solvers": ["naive", "ibgl", "aid"],
                "params": {"seed": {"choices": [0, 1]}, "solver.k": {"choices": [2, 3]}},
            },
        }
    )
    tune = [
        drop_inapplicable(study, c)
        for _ in range(2)
        for _, c in generate_variants(grid_space(study))
    ]
    rows = plan_trials(study)["trials"]
    assert [r["params"] for r in rows] == tune and len(rows) == 2 * 3 * 2 * 2
    assert [r["sample"] for r in rows] == [1] * 12 + [2] * 12
