"""SegmentTask: data, losses, evaluation, BatchNorm in bilevel steps, training, eval command."""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from bgl.cli.eval import add_eval_segment_command
from bgl.config import DataConfig, from_dict
from bgl.data.splits import build_splits
from bgl.data.synthetic_street import STREET_CLASSES, SyntheticStreet
from bgl.metrics.segmentation import IOU_KEYS
from bgl.models.generator import build_generator
from bgl.solvers import SOLVER_NAMES, BilevelProblem, get_solver, hypergradient
from bgl.study.schema import load_study
from bgl.tasks import build_task
from bgl.tasks.segment import SegmentTask, segmentation_loss
from bgl.train.checkpoint import load_checkpoint, save_checkpoint
from bgl.train.loop import Trainer

STUDIES = Path(__file__).resolve().parents[1] / "studies"
STREET_KEYS = {
    f"iou_{k}"
    for k in (
        "road",
        "sidewalk",
        "building",
        "pole",
        "traffic_sign",
        "vegetation",
        "sky",
        "person",
        "car",
    )
}


def _config(tmp_path, solver: str = "ibgl", **train):
    return from_dict(
        {
            "name": "seg",
            "seed": 0,
            "output_dir": str(tmp_path / "results"),
            "task": {"name": "segment", "options": {"width": 4}},
            "model": {"generator_width": 4},
            "data": {
                "name": "synthetic_street",
                "train_size": 8,
                "val_size": 4,
                "select_size": 4,
                "test_size": 4,
                "crop": 32,
                "batch_size": 2,
                "val_batch_size": 2,
                "eval_batch_size": 4,
            },
            "solver": {"name": solver, "k": 2 if get_solver(solver).takes_k else 1},
            "optim": {"optimizer": "sgd", "upper_lr": 1e-3, "lower_lr": 1e-2},
            "train": {
                "warm_steps": 1,
                "steps": 2,
                "eval_every": 2,
                "log_every": 1,
                "checkpoint_every": 3,
                "device": "cpu",
                **train,
            },
        }
    )


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def street():
    return SyntheticStreet(6, size=32, seed=1)


def _batch(dataset, idx):
    return {k: torch.stack([dataset[i][k] for i in idx]) for k in dataset[0]}


def _buffers(*modules):
    return {f"{i}.{k}": v.clone() for i, m in enumerate(modules) for k, v in m.named_buffers()}


# -- data ------------------------------------------------------------------------------------


def test_synthetic_street_items_and_determinism(street):
    item = street[0]
    assert item["raw"].shape == (4, 16, 16) and item["rgb"].shape == (3, 32, 32)
    assert item["labels"].shape == (32, 32) and item["labels"].dtype == torch.int64
    assert item["ratio"].shape == ()
    labels = street.tensors()["labels"]
    assert set(labels.unique().tolist()) <= {*STREET_CLASSES, 255}
    assert len(set(labels.unique().tolist()) & set(STREET_CLASSES)) >= 6
    assert 0 <= item["raw"].min() and item["raw"].max() <= 1
    # sample i depends on (seed, i) only
    again = SyntheticStreet(3, size=32, seed=1)
    for key in item:
        assert torch.equal(again[2][key], street[2][key])
    other = SyntheticStreet(3, size=32, seed=2)
    assert not torch.equal(other[0]["labels"], street[0]["labels"])
    with pytest.raises(ValueError, match="multiple of 32"):
        SyntheticStreet(2, size=48)


def test_synthetic_street_is_registered():
    cfg = DataConfig(name="synthetic_street", train_size=3, val_size=2, test_size=2, crop=32)
    splits = build_splits(cfg)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 2, 2]
    assert not torch.equal(splits["train"][0]["labels"], splits["val"][0]["labels"])


# -- task ------------------------------------------------------------------------------------


def test_task_registry_and_options():
    task = build_task("segment", width=4, depth=101, output_stride=8)
    assert isinstance(task, SegmentTask)
    assert (task.name, task.primary_metric, task.mode) == ("segment", "miou", "max")
    assert task.build_lower().backbone.layer3[22] is not None
    for bad in ({"depth": 34}, {"output_stride": 4}, {"width": 0}, {"dropout": 1.0}):
        with pytest.raises(ValueError):
            SegmentTask(**bad)
    with pytest.raises(ValueError, match="width 64"):
        SegmentTask(width=4, backbone_weights="x.pth")
    with pytest.raises(FileNotFoundError):
        SegmentTask(backbone_weights="/nonexistent/resnet50.pth")


def test_loss_is_pixel_cross_entropy_with_ignore():
    torch.manual_seed(0)
    logits = torch.randn(2, 19, 8, 8)
    labels = torch.randint(0, 19, (2, 8, 8))
    labels[0, :4] = 255
    expected = F.cross_entropy(logits, labels, ignore_index=255)
    assert segmentation_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    # an all-ignored batch gives 0, not NaN, and still has a graph
    logits.requires_grad_(True)
    value = segmentation_loss(logits, torch.full((2, 8, 8), 255))
    assert value.item() == 0.0 and value.requires_grad


def test_losses_and_evaluate_contract(street):
    torch.manual_seed(0)
    task = SegmentTask(width=4)
    upper, lower = build_generator(4), task.build_lower()
    batch = _batch(street, [0, 1])
    lower_value = task.lower_loss(upper, lower, batch)
    assert lower_value.ndim == 0 and torch.isfinite(lower_value)
    assert task.upper_loss(upper, lower, batch).item() == pytest.approx(lower_value.item())
    warm = task.warm_loss(upper, lower, batch)
    rgb_term = F.l1_loss(upper(batch["raw"]), batch["rgb"])
    assert warm.item() == pytest.approx(
        task.lower_loss(upper, lower, batch).item() + rgb_term.item(), rel=1e-5
    )
    lower.train()
    metrics = task.evaluate(upper, lower, [_batch(street, [0, 1, 2]), _batch(street, [3, 4, 5])])
    assert lower.training  # mode restored
    assert {"miou", "upper_loss", "lower_loss", "pixel_accuracy"} <= set(metrics)
    assert set(metrics) & set(IOU_KEYS) <= set(IOU_KEYS)
    assert all(math.isfinite(v) for v in metrics.values())
    assert 0.0 <= metrics["miou"] <= 1.0
    with pytest.raises(ValueError, match="no batches"):
        task.evaluate(upper, lower, [])


# -- BatchNorm inside bilevel steps ----------------------------------------------------------


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_hypergradient_leaves_batchnorm_statistics_alone(street, solver):
    torch.manual_seed(0)
    task = SegmentTask(width=4)
    upper, lower = build_generator(4), task.build_lower()
    upper.train(), lower.train()
    problem = BilevelProblem(upper, lower, task.lower_loss, task.upper_loss)
    train_batch, val_batch = _batch(street, [0, 1]), _batch(street, [2, 3])
    with torch.no_grad():  # non-trivial statistics; and proof that a train-mode pass moves them
        before_warmup = _buffers(lower)
        task.lower_loss(upper, lower, train_batch)
    assert not torch.equal(
        before_warmup["0.aspp.project.1.running_mean"], lower.aspp.project[1].running_mean
    )
    buffers = _buffers(upper, lower)
    params = [p.detach().clone() for p in (*upper.parameters(), *lower.parameters())]
    h1 = hypergradient(solver, problem, train_batch, val_batch, lower_lr=0.1, delta=0.01)
    after = _buffers(upper, lower)
    assert after.keys() == buffers.keys()
    for key, value in buffers.items():
        assert torch.equal(after[key], value), key  # running_mean/var and num_batches_tracked
    for p, saved in zip((*upper.parameters(), *lower.parameters()), params):
        assert torch.equal(p, saved)
    assert lower.training and all(m.training for m in lower.modules())
    # deterministic (no dropout): the same call gives the same hypergradient
    h2 = hypergradient(solver, problem, train_batch, val_batch, lower_lr=0.1, delta=0.01)
    for a, b in zip(h1, h2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in h1)


def test_trainer_steps_update_statistics_only_in_the_lower_step(tmp_path):
    trainer = Trainer(_config(tmp_path, "tbgl"))
    bns = [m for m in trainer.lower.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    train_batch, val_batch = next(trainer.train_stream), next(trainer.val_stream)
    before = _buffers(trainer.lower)
    trainer.upper_step(train_batch, val_batch, lower_lr=0.01)
    for key, value in _buffers(trainer.lower).items():
        assert torch.equal(value, before[key]), key  # TBGL's 4 extra passes left no trace
    trainer.lower_step(train_batch)
    assert all(int(m.num_batches_tracked) == 1 for m in bns)  # exactly one normal pass
    assert not torch.equal(bns[0].running_mean, before["0.backbone.bn1.running_mean"])


# -- training --------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_trainer_trains_segmentation_with_each_solver(tmp_path, solver):
    trainer = Trainer(_config(tmp_path, solver))
    summary = trainer.fit(run_dir=tmp_path / "run")
    evals = [r for r in trainer.history if r["kind"] == "eval"]
    assert summary["steps"] == 3 and len(evals) == 3
    assert summary["best"]["metric"] == "miou"
    assert set(summary["final"]) >= {"miou", "upper_loss", "lower_loss"}
    assert set(summary["final"]) & STREET_KEYS
    # the lower steps and the warm step each ran G once in train mode
    bn = trainer.lower.backbone.bn1
    k = 2 if get_solver(solver).takes_k else 1
    assert int(bn.num_batches_tracked) == 1 + 2 * k


@pytest.mark.slow
def test_short_training_raises_miou(tmp_path):
    cfg = from_dict(
        {
            "name": "seg-learn",
            "seed": 1,
            "task": {"name": "segment", "options": {"width": 8, "warm_generator_weight": 10.0}},
            "model": {"generator_width": 8},
            "data": {
                "name": "synthetic_street",
                "train_size": 32,
                "val_size": 8,
                "test_size": 16,
                "crop": 32,
                "batch_size": 4,
                "val_batch_size": 4,
                "eval_batch_size": 16,
            },
            "solver": {"name": "naive"},
            "optim": {
                "optimizer": "adam",
                "upper_lr": 1e-2,
                "lower_lr": 1e-2,
                "schedule": "constant",
            },
            "train": {
                "warm_steps": 90,
                "steps": 10,
                "eval_every": 100,
                "log_every": 50,
                "device": "cpu",
            },
        }
    )
    trainer = Trainer(cfg)
    trainer.fit()
    evals = [r for r in trainer.history if r["kind"] == "eval"]
    before, after = evals[0]["miou"], evals[-1]["miou"]
    assert after > before + 0.15, (before, after)
    assert evals[-1]["pixel_accuracy"] > evals[0]["pixel_accuracy"] + 0.3


# -- eval command and study ------------------------------------------------------------------


def test_eval_segment_command(tmp_path):
    trainer = Trainer(_config(tmp_path, "naive", steps=1))
    trainer.fit()
    checkpoint = trainer.save(tmp_path / "checkpoint.pt")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_eval_segment_command(sub)
    out = tmp_path / "row.json"
    args = parser.parse_args(
        ["segment", "--checkpoint", str(checkpoint), "--test-size", "3", "--batch-size", "2",
         "--device", "cpu", "--json", str(out)]
    )  # fmt: skip
    text = io.StringIO()
    assert args.func(args, Console(file=text, width=200)) == 0
    printed = text.getvalue()
    header = next(line for line in printed.splitlines() if "RO" in line and "BI" in line)
    columns = header.split()
    # Table 2 heads building/bus BU and truck/train TR: those four are headed by their names
    want = "RO SI building WA FE PO TL TS VE TE SK PE RI CA truck bus train MO BI mIoU"
    assert columns[1:] == want.split()
    row = json.loads(out.read_text())
    assert row["images"] == 3 and set(row["iou"]) == set(IOU_KEYS)
    assert row["iou"]["iou_wall"] is None  # no wall in the synthetic streets
    trainer.test_set = SyntheticStreet(3, size=32, seed=2)  # the split --test-size 3 builds
    assert row["miou"] == pytest.approx(trainer.evaluate()["test_miou"], abs=1e-9)
    assert f"{100 * row['miou']:.1f}" in printed
    # a checkpoint of another task is refused, naming the task
    state = load_checkpoint(checkpoint)
    state["config"]["task"] = {"name": "enhance", "options": {"width": 4}}
    other = save_checkpoint(state, tmp_path / "enhance.pt")
    bad = parser.parse_args(["segment", "--checkpoint", str(other), "--device", "cpu"])
    with pytest.raises(ValueError, match="not 'segment'"):
        bad.func(bad, Console(file=io.StringIO()))


def test_paper_segment_study_loads():
    study = load_study(STUDIES / "paper_segment.yaml", ["base.data.root=/data/somewhere"])
    assert [(o.metric, o.mode) for o in study.objectives] == [("miou", "max")]
    for solver in study.solvers:
        cfg = study.trial_config({"solver.name": solver})
        assert cfg.task.name == "segment" and cfg.data.name == "acdc"
        assert cfg.data.batch_size == 5
        assert (cfg.optim.optimizer, cfg.optim.lower_lr) == ("sgd", 0.1)
