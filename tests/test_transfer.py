"""Transfer studies (Table 3): the design and its validation, the table, and a real-Ray run."""

from __future__ import annotations

import copy
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from bgl.analysis.query import transfer_table
from bgl.cli import main
from bgl.config import ConfigError
from bgl.solvers import get_solver
from bgl.study.schema import load_study, parse_study
from bgl.study.transfer import trial_setup
from tests.conftest import TINY_STUDY_BASE

STUDIES = Path(__file__).resolve().parents[1] / "studies"
BASE = {k: v for k, v in copy.deepcopy(TINY_STUDY_BASE).items() if k != "task"}


def _study(tmp_path: Path | None = None, **transfer) -> dict:
    spec = {
        "source_tasks": ["enhance"],
        "source_solvers": ["naive", "ibgl"],
        "target_tasks": ["enhance"],
        "tasks": {"enhance": {"task": {"options": {"width": 4}}}},
        **transfer,
    }
    out = str(tmp_path / "results") if tmp_path else "results"
    return {"name": "tiny", "type": "transfer", "output_dir": out, "base": BASE, "transfer": spec}


def test_design_names_models_and_freezes_stage_one_generators():
    study = parse_study(_study(source_solvers=["naive", "tbgl", "ibgl"]))
    sources, targets = study.transfer.sources(), study.transfer.targets()
    assert [(t.model, t.strategy) for t in sources] == [
        ("M_a", "naive"),
        ("M_b", "tbgl"),
        ("M_c", "ibgl"),
    ]
    assert [t.key for t in targets] == ["M_a/enhance", "M_b/enhance", "M_c/enhance"]
    cfg, objectives, export = trial_setup(study, sources[2].identity(), "run")
    assert (cfg.solver.name, cfg.model.freeze_generator, objectives) == ("ibgl", False, ["psnr"])
    assert export == str(study.study_dir / "generators" / "M_c.pt")
    cfg, _, export = trial_setup(study, targets[1].identity(), "run")
    assert export is None and cfg.model.freeze_generator
    assert cfg.model.generator_checkpoint == str(study.study_dir / "generators" / "M_b.pt")
    assert (cfg.data.name, cfg.task.options["width"]) == ("synthetic", 4)
    # 32 px test images: NIQE cannot be scored, so by default it is left out (n/a), LOE kept
    assert cfg.task.options["metrics"] == ["psnr", "ssim", "loe"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"transfer": {"source_tasks": ["enhance"]}}, "transfer.source_solvers: required"),
        ({"transfer.source_solvers": ["adam"]}, "transfer.source_solvers: must be one of"),
        ({"transfer.target_tasks": ["paint"]}, "transfer.target_tasks: must be one of"),
        ({"transfer.sources": []}, "unknown key transfer.sources"),
        ({"transfer.tasks": {"paint": {}}}, "transfer.tasks.paint: unknown task"),
        ({"transfer.tasks": {"enhance": {"task": {"options": {"widht": 4}}}}}, "options.widht"),
        (
            {"transfer.tasks": {"enhance": {"data": {"crop": 48}}}},
            "transfer.tasks.enhance.data.crop",
        ),
        ({"transfer.target": {"train": {"steps": -1}}}, "transfer.target.train.steps"),
        ({"transfer.target": {"solver": {"name": "tbgl"}}}, "transfer.target.solver.name: set per"),
        ({"base": {**BASE, "task": {"name": "enhance"}}}, "base.task: set per trial"),
        ({"search": {"num_samples": 2}}, "search: a transfer study has no search"),
        ({"type": "ablation"}, "type: must be one of search, transfer"),
        ({"type": "search"}, "transfer: only a study of type: transfer"),
        (
            {"transfer.tasks": {"enhance": {"task": {"options": {"metrics": ["niqe"]}}}}},
            "transfer.tasks.enhance.task.options.metrics: NIQE needs",
        ),
    ],
)
def test_bad_transfer_study_names_the_key(change, message):
    data = _study()
    for key, value in change.items():
        if key.startswith("transfer."):
            data["transfer"][key.removeprefix("transfer.")] = value
        else:
            data[key] = value
    with pytest.raises(ConfigError, match=message):
        parse_study(data)


def test_transfer_table_layout_fills_cells_and_says_na():
    rows = [
        {"stage": "source", "model": "M_a", "source_task": "enhance", "strategy": "naive"},
        {"stage": "source", "model": "M_b", "source_task": "detect", "strategy": "ibgl"},
        {"stage": "target", "model": "M_a", "source_task": "enhance", "strategy": "naive",
         "target_task": "enhance", "status": "completed", "niqe": 4.5, "loe": 310.0},
        {"stage": "target", "model": "M_a", "source_task": "enhance", "strategy": "naive",
         "target_task": "segment", "status": "completed", "miou": 0.25},
        {"stage": "target", "model": "M_b", "source_task": "detect", "strategy": "ibgl",
         "target_task": "detect", "status": "diverged", "ap": None},
    ]  # fmt: skip
    table = transfer_table(rows)
    assert [(e["model"], e["basic_task"], e["strategy"]) for e in table] == [
        ("M_a", "Enhancement", "Naive"),
        ("M_b", "Detection", "IBGL"),
    ]
    a, b = table
    assert (a["EN NIQE↓"], a["EN LOE↓"], a["DE mAP↑"], a["SE mIoU↑"]) == (4.5, 310.0, None, 0.25)
    assert (b["EN NIQE↓"], b["DE mAP↑"]) == (None, "diverged")


def test_shipped_transfer_study_is_the_papers_design():
    study = load_study(STUDIES / "transfer.yaml")
    t = study.transfer
    # the paper's Table 3 rows: M_a = DE/naive, M_b = DE/IBGL, M_c = EN/naive, M_d = EN/IBGL,
    # its "naive" being end-to-end learning: bgl's `joint`
    assert [(s.model, s.source_task, s.strategy) for s in t.sources()] == [
        ("M_a", "detect", "joint"),
        ("M_b", "detect", "ibgl"),
        ("M_c", "enhance", "joint"),
        ("M_d", "enhance", "ibgl"),
    ]
    assert get_solver("joint").joint and not get_solver("naive").joint
    assert t.target_tasks == ["enhance", "detect", "segment"]
    # a detection source trains with the paper's detection optimiser, enhancement with Adam
    by_task = {s.source_task: s for s in t.sources() if s.strategy == "ibgl"}
    for task, optimizer, lower_lr in (("detect", "sgd", 5e-4), ("enhance", "adam", 3e-3)):
        cfg, _, _ = study.transfer_trial(by_task[task].identity(), f"src-{task}")
        assert (cfg.optim.optimizer, cfg.optim.lower_lr) == (optimizer, lower_lr)


def test_a_target_of_another_task_trains_on_the_frozen_source_generator(tmp_path):
    """Stage 2 across tasks, in-process: enhancement's F frozen under segmentation."""
    from bgl.train.loop import Trainer

    tasks = {
        "enhance": {"task": {"options": {"width": 4}}},
        "segment": {"task": {"options": {"width": 4}}},
    }
    study = parse_study(
        _study(tmp_path, source_solvers=["naive"], target_tasks=["segment"], tasks=tasks)
    )
    (source,) = study.transfer.sources()
    cfg, _, export = trial_setup(study, source.identity(), "source")
    trained = Trainer(cfg)
    trained.fit()
    trained.save(export)
    (target,) = study.transfer.targets()
    cfg, objectives, _ = trial_setup(study, target.identity(), "target")
    assert (cfg.task.name, cfg.data.name, objectives) == ("segment", "synthetic_street", ["miou"])
    trainer = Trainer(cfg)
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["generator"] == "frozen"
    assert 0 <= summary["final"]["miou"] <= 1
    omega = trained.upper.state_dict()
    assert all(torch.equal(omega[k], v) for k, v in trainer.upper.state_dict().items())


@pytest.mark.slow
def test_transfer_study_runs_both_stages_and_resumes_without_rerunning(tmp_path, capsys):
    data = _study(tmp_path)
    data["resources"] = {
        "workers_per_trial": 1,
        "cpus_per_worker": 1,
        "max_concurrent_trials": 2,
        "launcher": "in_trial",
    }
    data["logging"] = {"tensorboard": False}
    path = tmp_path / "transfer.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["study", "run", str(path), "--no-live"]) == 0

    folder = tmp_path / "results" / "tiny"
    rows = [pq.read_table(p).to_pylist()[0] for p in sorted((folder / "trials").glob("*.parquet"))]
    by_key = {(r["stage"], r["model"]): r for r in rows}
    assert set(by_key) == {(s, m) for s in ("source", "target") for m in ("M_a", "M_b")}
    assert all(r["status"] == "completed" for r in rows)
    source, target = by_key["source", "M_b"], by_key["target", "M_b"]
    assert (source["strategy"], source["solver"], source["generator"]) == (
        "ibgl",
        "ibgl",
        "trained",
    )
    assert (target["target_task"], target["generator"]) == ("enhance", "frozen")
    assert target["generator_checkpoint"].endswith("generators/M_b.pt")
    assert target["loe"] >= 0 and "niqe" not in target  # 32 px: NIQE left out
    generator = torch.load(folder / "generators" / "M_b.pt", weights_only=True)
    assert generator["config"]["solver"]["name"] == "ibgl"

    capsys.readouterr()
    argv = ["results", "--results-dir", str(tmp_path / "results"), "show", "transfer", "tiny"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Table 3" in out and "EN LOE↓" in out and "DE mAP↑" in out
    (row,) = [line for line in out.splitlines() if "M_a" in line]
    assert "Enhancement" in row and "Naive" in row
    assert row.count("n/a") == 3  # NIQE (32 px), detection and segmentation not run

    written = {p: p.stat().st_mtime_ns for p in (folder / "trials").glob("*.parquet")}
    assert main(["study", "run", str(path), "--no-live"]) == 2  # would overwrite: refused
    assert main(["study", "run", str(path), "--resume", "--no-live"]) == 0  # both stages done
    assert {p: p.stat().st_mtime_ns for p in (folder / "trials").glob("*.parquet")} == written
