"""Study YAML validation (before Ray starts) and the conditional Optuna space."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from bgl.config import ConfigError
from bgl.study.schema import load_study, parse_study
from bgl.study.space import define_by_run, drop_inapplicable

STUDIES = Path(__file__).resolve().parents[1] / "studies"


def _study(**search):
    return {
        "name": "s",
        "base": {"task": {"options": {"width": 4}}},
        "search": {"solvers": ["naive", "tbgl", "ibgl"], **search},
    }


@pytest.mark.parametrize(
    "name",
    [
        "quickstart", "search", "solver_ablation", "paper_enhance", "paper_detect",
        "paper_segment", "positive_control", "positive_control_channels", "enhance_control",
    ],
)  # fmt: skip
def test_shipped_studies_load(name):
    study = load_study(STUDIES / f"{name}.yaml", ["base.data.root=/data/somewhere"])
    equal_work = name in ("solver_ablation", "enhance_control")  # naive at the others' k
    for solver in study.solvers:
        cfg = study.trial_config({"solver.name": solver})
        if solver == "naive" and not equal_work:  # one lower step unless a study asks for more
            assert cfg.solver.k == 1
            assert all(p.applies_to("naive") is False for p in study.params if p.path == "solver.k")
        if solver == "naive" and equal_work:
            assert cfg.solver.k == 3


def test_search_study_loads():
    study = load_study(STUDIES / "search.yaml")
    assert study.solvers == ["naive", "tbgl", "ibgl"] and study.num_samples >= 3
    assert {p.path for p in study.params} >= {"solver.k", "solver.delta", "optim.upper_lr"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "s", "serach": {}}, "unknown key serach"),
        (
            _study(params={"optim.upper_lr": {"type": "float", "low": 1e-2, "high": 1e-3}}),
            "search.params.optim.upper_lr: empty range",
        ),
        (
            _study(params={"optim.uper_lr": {"type": "float", "low": 1e-4, "high": 1e-3}}),
            "search.params.optim.uper_lr: unknown key optim.uper_lr",
        ),
        (
            _study(params={"solver.k": {"type": "int", "low": 1, "high": 3, "solvers": ["tbgl"]}}),
            "search.params.solver.k.solvers: solver.k applies to naive, ibgl, aid only",
        ),
        (_study(num_samples="many"), "search.num_samples: expected a number"),
        (_study(solvers=["adam"]), "search.solvers: must be one of naive, tbgl, ibgl"),
        (
            _study(sampler="grid", params={"optim.upper_lr": {"low": 1e-4, "high": 1e-3}}),
            "sampler grid takes only choices",
        ),
        (
            _study(
                objectives=[
                    {"metric": "psnr", "mode": "max"},
                    {"metric": "peak_memory_mib", "mode": "min"},
                ],
                scheduler={"name": "asha"},
            ),
            "ASHA needs a single objective",
        ),
        ({"name": "s", "base": {"solver": {"kk": 1}}}, "base.unknown key solver.kk"),
        (
            {"name": "s", "resources": {"workers_per_trial": 2, "launcher": "in_trial"}},
            "resources.launcher: in_trial runs exactly one worker",
        ),
        (
            {"name": "s", "resources": {"workers_per_trial": "two"}},
            "resources.workers_per_trial: expected an integer",
        ),
    ],
)
def test_bad_study_names_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_study(data)


def test_conditional_space_samples_k_only_for_ibgl_and_delta_only_for_tbgl():
    study = parse_study(
        _study(
            params={
                "solver.k": {"type": "int", "low": 1, "high": 5, "solvers": ["ibgl"]},
                "solver.delta": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
                "optim.upper_lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "data.batch_size": 2,
            }
        )
    )
    space = define_by_run(study)
    seen = {}
    opt = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = opt.ask()
        constants = space(trial)
        params = {**trial.params, **constants}
        seen.setdefault(params["solver.name"], set()).update(params)
        assert constants["data.batch_size"] == 2
        cfg = study.trial_config(params)
        assert cfg.solver.name == params["solver.name"]
        if params["solver.name"] == "ibgl":
            assert 1 <= cfg.solver.k <= 5
    assert "solver.k" in seen["ibgl"] and "solver.delta" not in seen["ibgl"]
    assert "solver.delta" in seen["tbgl"] and "solver.k" not in seen["tbgl"]
    assert not {"solver.k", "solver.delta"} & seen["naive"]
    assert study.trial_config({"solver.name": "naive"}).solver.k == 1
    # without `solvers:`, k applies to every solver that reads it: naive included
    every = parse_study(_study(params={"solver.k": {"type": "int", "low": 1, "high": 5}}))
    assert every.params[0].solvers == ["naive", "ibgl", "aid"]
    # grid points carry every parameter: the inapplicable ones are dropped per trial
    assert drop_inapplicable(study, {"solver.name": "naive", "solver.k": 3}) == {
        "solver.name": "naive"
    }


def test_base_file_and_overrides(tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"model": {"generator_width": 4}}))
    (tmp_path / "study.yaml").write_text(
        yaml.safe_dump({"name": "s", "base_file": "run.yaml", "search": {"num_samples": 2}})
    )
    study = load_study(tmp_path / "study.yaml", ["search.num_samples=5"])
    assert study.num_samples == 5 and study.base["model"]["generator_width"] == 4


def test_aid_keys_are_conditional_searchable_and_validated():
    study = parse_study(
        {
            "name": "s",
            "base": {"task": {"options": {"width": 4}}},
            "search": {
                "solvers": ["ibgl", "aid"],
                "params": {
                    "solver.k": {"type": "int", "low": 1, "high": 4},
                    "solver.iterations": "default",
                    "solver.method": "default",
                    "solver.damping": {"value": 0.01},
                },
            },
        }
    )
    specs = {p.path: p for p in study.params}
    assert specs["solver.iterations"].type == "int" and specs["solver.iterations"].high == 20
    assert specs["solver.method"].choices == ["cg", "neumann"]
    assert specs["solver.k"].solvers == ["naive", "ibgl", "aid"]  # the solvers that read k
    assert specs["solver.damping"].solvers == ["aid"]
    space = define_by_run(study)
    seen: dict[str, set] = {}
    opt = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = opt.ask()
        constants = space(trial)
        params = {**trial.params, **constants}
        seen.setdefault(params["solver.name"], set()).update(params)
        cfg = study.trial_config(params)
        if cfg.solver.name == "aid":
            assert 1 <= cfg.solver.iterations <= 20 and cfg.solver.damping == 0.01
    assert {"solver.iterations", "solver.method", "solver.damping"} <= seen["aid"]
    assert not {"solver.iterations", "solver.method", "solver.damping"} & seen["ibgl"]


@pytest.mark.parametrize(
    "params,message",
    [
        ({"solver.method": {"choices": ["cg", "lbfgs"]}}, "solver.method: must be one of cg"),
        ({"solver.iterations": {"value": 0}}, "solver.iterations: must be at least 1"),
        (
            {"solver.iterations": {"type": "int", "low": 1, "high": 5, "solvers": ["ibgl"]}},
            "solver.iterations applies to aid only",
        ),
        ({"optim.upper_lr": "default"}, "search.params.optim.upper_lr: 'default' names"),
    ],
)
def test_bad_aid_search_names_the_key(params, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_study(
            {"name": "s", "base": {}, "search": {"solvers": ["ibgl", "aid"], "params": params}}
        )


def test_solvers_command_lists_the_registry(capsys):
    import json

    from bgl.cli import main
    from bgl.solvers import SOLVER_NAMES

    assert main(["solvers", "--format", "json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in listing] == list(SOLVER_NAMES)
    aid = next(s for s in listing if s["name"] == "aid")
    assert aid["takes_k"] and aid["keys"]["iterations"]["default"] == 10
    assert aid["keys"]["method"]["search"]["choices"] == ["cg", "neumann"]
    naive, joint = (next(s for s in listing if s["name"] == n) for n in ("naive", "joint"))
    assert list(naive["keys"]) == ["k"] and naive["takes_k"] and not naive["joint"]
    assert joint["keys"] == {} and joint["joint"] and not joint["takes_k"]
