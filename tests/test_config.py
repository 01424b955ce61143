from __future__ import annotations

import pytest

from bgl.config import ConfigError, apply_overrides, from_dict, load


def test_defaults_are_the_papers():
    cfg = from_dict({})
    assert (cfg.optim.upper_lr, cfg.optim.upper_lr_min) == (3e-3, 5e-6)
    assert (cfg.optim.lower_lr, cfg.optim.lower_lr_min) == (3e-3, 3e-5)
    assert cfg.model.generator_width == 32 and cfg.optim.optimizer == "adam"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"solvr": {}}, "unknown key solvr"),
        ({"solver": {"kk": 2}}, "unknown key solver.kk"),
        ({"solver": {"k": "three"}}, "solver.k: expected an integer"),
        ({"solver": {"name": "tbgl", "k": 3}}, "solver.k: must be 1 unless"),
        ({"solver": {"name": "adam"}}, "solver.name: must be one of naive, tbgl, ibgl, aid, joint"),
        ({"optim": {"upper_lr": "fast"}}, "optim.upper_lr: expected a number"),
        ({"data": {"ratio_range": [1]}}, "data.ratio_range: expected a list of 2"),
        ({"data": {"crop": 48}}, "data.crop: must be a positive multiple of 32"),
        ({"train": 5}, "train: expected a mapping"),
        ({"data": {"lighting": "sunny"}}, "data.lighting: must be one of flat, shaded"),
        ({"model": {"freeze_generator": True}}, "model.freeze_generator: must be false unless"),
        ({"model": {"freeze_generator": "yes"}}, "model.freeze_generator: expected true/false"),
    ],
)
def test_bad_keys_and_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(data)


def test_yaml_scientific_notation_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  upper_lr: 3e-3\nsolver:\n  name: ibgl\n")
    cfg = load(path, ["solver.k=4", "data.ratio_range=[50, 100]", "name=abc"])
    assert cfg.optim.upper_lr == 3e-3 and cfg.solver.k == 4
    assert cfg.data.ratio_range == (50.0, 100.0) and cfg.name == "abc"
    with pytest.raises(ConfigError, match="unknown key solver.kay"):
        load(path, ["solver.kay=4"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["solver.k"])
    with pytest.raises(ConfigError, match="name is not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_load_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load(bad)


def test_flat_keys_for_tables():
    flat = from_dict({"task": {"options": {"width": 8}}}).flat()
    assert flat["solver.k"] == 1 and flat["task.options"] == {"width": 8}


@pytest.mark.parametrize("name", ["quickstart_run", "detect_run", "segment_run"])
def test_shipped_run_configs_load_and_build(name):
    """Each shipped run YAML validates, and its task and model build with its options."""
    from pathlib import Path

    from bgl.tasks import build_task

    cfg = load(Path(__file__).parent.parent / "studies" / f"{name}.yaml")
    task = build_task(cfg.task.name, **cfg.task.options)
    assert sum(p.numel() for p in task.build_lower().parameters()) > 0
