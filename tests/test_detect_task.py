"""DetectTask: synthetic faces, losses through both levels, Trainer with every solver, eval."""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from bgl.cli.eval import add_eval_detect_command
from bgl.data.splits import build_splits
from bgl.data.synthetic_faces import SyntheticFaces
from bgl.metrics.detection import average_precision, pr_curve
from bgl.models.generator import build_generator
from bgl.study.schema import load_study
from bgl.tasks import build_task
from bgl.train.loop import Trainer

STUDIES = Path(__file__).resolve().parent.parent / "studies"


pytestmark = pytest.mark.usefixtures("single_thread")


def _detect_config(tiny_config, **sections):
    base = {
        "task": {"name": "detect", "options": {"width_mult": 0.0625}},
        "model": {"generator_width": 4},
        "data": {
            "name": "synthetic_faces",
            "crop": 64,
            "train_size": 8,
            "val_size": 4,
            "select_size": 4,
            "test_size": 4,
            "max_boxes": 8,
        },
    }
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return tiny_config(**base)


def test_synthetic_faces_items_and_boxes():
    data = SyntheticFaces(40, size=64, seed=3, max_boxes=6)
    again = SyntheticFaces(3, size=64, seed=3, max_boxes=6)
    item = data[1]
    assert item["raw"].shape == (4, 32, 32) and item["rgb"].shape == (3, 64, 64)
    assert item["boxes"].shape == (6, 4) and item["num_boxes"].dtype == torch.int64
    assert torch.equal(again[1]["boxes"], item["boxes"])  # sample i depends on (seed, i) only
    inside_sum = outside_sum = 0.0
    for i in range(len(data)):
        it = data[i]
        n = int(it["num_boxes"])
        assert 1 <= n <= 4 and torch.all(it["boxes"][n:] == -1)
        boxes = it["boxes"][:n]
        assert torch.all(boxes[:, 2:] > boxes[:, :2]) and boxes.min() >= 0 and boxes.max() <= 64
        mask = torch.zeros(64, 64, dtype=torch.bool)
        for x1, y1, x2, y2 in boxes.round().long().tolist():
            mask[y1:y2, x1:x2] = True
        luma = it["rgb"].mean(0)
        inside_sum += luma[mask].mean().item()
        outside_sum += luma[~mask].mean().item()
    assert inside_sum / len(data) > 3 * outside_sum / len(data)  # bright faces, dark scenes
    with pytest.raises(ValueError, match="max_boxes"):
        SyntheticFaces(2, max_boxes=3)


def test_registered_splits_give_detection_batches(tiny_config):
    cfg = _detect_config(tiny_config)
    splits = build_splits(cfg.data)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 4, 4]
    assert splits["train"][0]["boxes"].shape == (8, 4)
    assert not torch.equal(splits["train"][0]["rgb"], splits["val"][0]["rgb"])


def test_losses_reach_both_levels_and_l1_term():
    torch.manual_seed(0)
    task = build_task("detect", width_mult=0.0625, l1_weight=2.0)
    upper, lower = build_generator(4), task.build_lower()
    data = SyntheticFaces(2, size=64)
    batch = torch.utils.data.default_collate([data[0], data[1]])
    omega, theta = list(upper.parameters()), list(lower.parameters())
    for loss in (task.lower_loss(upper, lower, batch), task.upper_loss(upper, lower, batch)):
        grads = torch.autograd.grad(loss, omega + theta, allow_unused=True)
        assert all(g is not None for g in grads)
        assert grads[0].abs().sum() > 0 and grads[len(omega)].abs().sum() > 0
    with torch.no_grad():
        x = upper(batch["raw"])
        expected = task.lower_loss(upper, lower, batch) + 2.0 * (x - batch["rgb"]).abs().mean()
        assert task.upper_loss(upper, lower, batch).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="l1_weight"):
        build_task("detect", l1_weight=-1.0)


def test_evaluate_contract_and_eval_mode_restored():
    torch.manual_seed(0)
    task = build_task("detect", width_mult=0.0625)
    upper, lower = build_generator(4), task.build_lower()
    data = SyntheticFaces(4, size=64)
    batches = [torch.utils.data.default_collate([data[i] for i in range(j, j + 2)]) for j in (0, 2)]
    metrics, curve = task.evaluate_curve(upper, lower, batches)
    assert {"ap", "upper_loss", "lower_loss", "recall"} <= set(metrics)
    assert upper.training and lower.training
    detections = [task.predict(upper, lower, b) for b in batches]
    flat = [d for per_batch in detections for d in per_batch]
    gts = [data[i]["boxes"][: int(data[i]["num_boxes"])] for i in range(4)]
    assert metrics["ap"] == pytest.approx(average_precision(pr_curve(flat, gts)))
    assert curve.num_gt == sum(len(g) for g in gts)
    assert metrics == task.evaluate(upper, lower, batches)


@pytest.mark.parametrize(
    "solver",
    [
        {"name": "naive", "k": 1},
        {"name": "tbgl", "k": 1},
        {"name": "ibgl", "k": 2},
        {"name": "aid", "k": 2, "iterations": 2, "curvature": "gauss_newton", "damping": 0.01},
    ],
    ids=lambda s: s["name"],
)
def test_trainer_runs_every_solver(tiny_config, solver):
    cfg = _detect_config(
        tiny_config,
        solver=solver,
        train={"warm_steps": 1, "steps": 2, "eval_every": 3, "checkpoint_every": 10},
    )
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.upper.parameters()]
    summary = trainer.fit()
    assert summary["steps"] == 3 and summary["task"] == "detect"
    assert {"ap", "upper_loss", "lower_loss"} <= set(summary["final"])
    bilevel = [r for r in trainer.history if "hypergrad_norm" in r]
    assert len(bilevel) == 2 and all(r["hypergrad_norm"] > 0 for r in bilevel)
    assert any(not torch.equal(b, p) for b, p in zip(before, trainer.upper.parameters()))


@pytest.mark.slow
def test_short_training_raises_ap(tiny_config):
    """50 warm-start steps on synthetic faces: AP from ~0 to well above it."""
    cfg = _detect_config(
        tiny_config,
        data={"train_size": 32, "test_size": 32, "batch_size": 8, "eval_batch_size": 16},
        optim={"optimizer": "adam", "upper_lr": 3e-3, "lower_lr": 3e-3, "schedule": "constant"},
        solver={"name": "naive", "k": 1},
        train={"warm_steps": 50, "steps": 2, "eval_every": 100, "checkpoint_every": 100},
    )
    trainer = Trainer(cfg)
    trainer.fit()
    evals = [r for r in trainer.history if r["kind"] == "eval"]
    first, last = evals[0]["ap"], evals[-1]["ap"]
    assert first < 0.1
    assert last > first + 0.25, (first, last)  # measured: 0.001 -> 0.50


def test_eval_detect_command_writes_curve(tiny_config, tmp_path, capsys):
    cfg = _detect_config(tiny_config, train={"warm_steps": 1, "steps": 0, "eval_every": 5})
    checkpoint = Trainer(cfg).save(tmp_path / "run" / "checkpoint.pt")
    parser = argparse.ArgumentParser()
    add_eval_detect_command(parser.add_subparsers(dest="eval_task"))
    out = tmp_path / "eval"
    args = parser.parse_args(
        ["detect", "--checkpoint", str(checkpoint), "--test-size", "6", "--batch-size", "3"]
        + ["--device", "cpu", "--output-dir", str(out)]
    )
    assert args.func(args) == 0
    table = pq.read_table(out / "pr_curve.parquet").to_pylist()
    assert (out / "pr_curve.png").stat().st_size > 0
    assert {"rank", "score", "true_positive", "precision", "recall", "num_gt"} <= set(table[0])
    printed = capsys.readouterr().out
    assert "AP@0.5" in printed and "6 images" in printed
    scores = [r["score"] for r in table]
    assert scores == sorted(scores, reverse=True)
    tps = 0
    for i, row in enumerate(table, start=1):  # precision/recall consistent with the TP flags
        tps += row["true_positive"]
        assert row["precision"] == pytest.approx(tps / i)
        assert row["recall"] == pytest.approx(tps / row["num_gt"])


def test_eval_detect_rejects_other_tasks(tiny_config, tmp_path):
    checkpoint = Trainer(tiny_config()).save(tmp_path / "checkpoint.pt")
    parser = argparse.ArgumentParser()
    add_eval_detect_command(parser.add_subparsers(dest="eval_task"))
    args = parser.parse_args(["detect", "--checkpoint", str(checkpoint), "--device", "cpu"])
    with pytest.raises(ValueError, match="not 'detect'"):
        args.func(args)


def test_paper_detect_study_loads():
    study = load_study(STUDIES / "paper_detect.yaml", ["base.data.root=/data/DarkFace"])
    cfg = study.trial_config({"solver.name": "ibgl"})
    assert cfg.task.name == "detect" and cfg.data.name == "darkface"
    assert (cfg.optim.optimizer, cfg.optim.upper_lr, cfg.optim.lower_lr) == ("sgd", 3e-3, 5e-4)
    assert (cfg.optim.weight_decay, cfg.optim.momentum) == (5e-4, 0.9)
    assert (cfg.data.crop, cfg.data.batch_size) == (640, 8)
    (k,) = [p for p in study.params if p.path == "solver.k"]  # the paper's k, IBGL trials only
    assert (k.value, k.solvers) == (30, ["ibgl"])
    assert study.trial_config({"solver.name": "ibgl", "solver.k": 30}).solver.k == 30
    assert study.trial_config({"solver.name": "naive"}).solver.k == 1
    assert study.objectives[0].metric == "ap" and study.solvers == ["naive", "tbgl", "ibgl"]
    assert study.trial_config({"solver.name": "tbgl"}).solver.k == 1
    build_task(cfg.task.name, **{**cfg.task.options, "pretrained": None})  # options are valid
